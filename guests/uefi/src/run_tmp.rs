/// The multi-core phase. Takes the table, shares it, gives it back with the failure count.
pub fn run(table: Table, model: &mut Model, buffer: u64) -> (Table, usize) {
    let mut failures = 0;
    let mut table = table;
    let (frame_a, frame_b) = (buffer + 0x18_0000, buffer + 0x19_0000);
    let mp = match boot::get_handle_for_protocol::<MpServices>().and_then(boot::open_protocol_exclusive::<MpServices>) {
        Ok(mp) => mp,
        Err(_) => crate::fail("no MP services protocol"),
    };
    let count = mp
        .get_number_of_processors()
        .unwrap_or_else(|_| crate::fail("processor count"));
    let aps = (count.enabled - 1).min(MAX_CPUS - 1);
    crate::txp!("MP processors={} enabled={} aps={aps}", count.total, count.enabled);

    // The alias every core reads, and a reserve of table pages for commits made on an AP.
    let alias = Change::Map {
        va: ALIAS,
        pa: frame_a,
        size: PAGE,
        attributes: uefi_attr::WB | uefi_attr::XP,
    };
    table
        .map_aliased_memory_region(
            ALIAS,
            frame_a,
            PAGE,
            txpaging::MemoryAttributes::Writeback | txpaging::MemoryAttributes::ExecuteProtect,
        )
        .unwrap_or_else(|e| crate::fail(&alloc::format!("alias: {e}")));
    model.push(alias);
    table
        .allocator_mut()
        .fill_reserve(64)
        .unwrap_or_else(|e| crate::fail(&alloc::format!("reserve: {e}")));
    ROOT.store(table.root(), Ordering::SeqCst);
    BUFFER.store(buffer, Ordering::SeqCst);
    APIC_IDS[0].store(cpu::apic_id(), Ordering::SeqCst);
    ACTIVE[0].store(true, Ordering::SeqCst);

    let shared: Shared = SharedTable::with_shootdown(table, shootdown as Hook);
    TABLE.store(&shared as *const Shared as *mut Shared, Ordering::SeqCst);

    // SAFETY: a plain event, signalled by the MP services when every AP has returned.
    let finished = unsafe { boot::create_event(EventType::empty(), Tpl::CALLBACK, None, None) }
        .unwrap_or_else(|_| crate::fail("event"));
    // SAFETY: the event stays valid until closed below.
    let event = unsafe { finished.unsafe_clone() };
    if mp
        .startup_all_aps(false, ap_main, core::ptr::null_mut(), Some(event), None)
        .is_err()
    {
        crate::fail("StartupAllAPs");
    }
    if !wait(|| READY.load(Ordering::SeqCst) >= aps) {
        crate::fail(&alloc::format!(
            "only {} of {aps} APs came up",
            READY.load(Ordering::SeqCst)
        ));
    }
    for ap in 1..=aps {
        let seen = SEEN[ap].load(Ordering::SeqCst);
        crate::txp!(
            "AP index={ap} apic={} cr3_loaded=1 alias_frame={seen:#x}",
            APIC_IDS[ap].load(Ordering::SeqCst)
        );
        failures += usize::from(seen != frame_a);
    }

    // Shootdown rounds: APs read (caching the translation), the BSP remaps, APs read again.
    let rounds = |on: bool, tag: &str, model: &mut Model| {
        SHOOTDOWN_ON.store(on, Ordering::SeqCst);
        let (mut stale, mut reads, mut ran) = (0usize, 0usize, 0usize);
        for round in 0..ROUNDS {
            let (old, new) = if round % 2 == 0 {
                (frame_a, frame_b)
            } else {
                (frame_b, frame_a)
            };
            if !command_all(READ_ALIAS, aps) {
                crate::fail("APs did not read");
            }
            let change = Change::Map {
                va: ALIAS,
                pa: new,
                size: PAGE,
                attributes: uefi_attr::WB | uefi_attr::XP,
            };
            match shared.commit([crate::op_of(&change)]) {
                Ok(report) => ran += usize::from(report.shootdown_ran),
                Err(e) => crate::fail(&alloc::format!("shared commit: {e}")),
            }
            model.push(change);
            if !command_all(READ_ALIAS, aps) {
                crate::fail("APs did not read");
            }
            for ap in 1..=aps {
                reads += 1;
                let seen = SEEN[ap].load(Ordering::SeqCst);
                if seen != new {
                    stale += 1;
                    if on && stale <= 10 {
                        crate::txp!("MISMATCH phase=shootdown ap={ap} round={round} saw={seen:#x} expected={new:#x} old={old:#x}");
                    }
                }
            }
        }
        crate::txp!("{tag} rounds={ROUNDS} ap_reads={reads} stale={stale} hook_ran={ran}");
        stale
    };
    failures += rounds(true, "SHOOTDOWN", model);
    let stale_without = rounds(false, "NEGATIVE_SHOOTDOWN", model);
    SHOOTDOWN_ON.store(true, Ordering::SeqCst);
    if !command_all(FLUSH, aps) {
        crate::fail("APs did not flush");
    }
    cpu::reload_cr3();
    if stale_without == 0 {
        failures += 1;
        crate::txp!("MISMATCH negative control: no AP saw a stale frame without the shootdown");
    }
    for ap in 1..=aps {
        crate::txp!(
            "AP index={ap} frame_after_rounds={:#x}",
            SEEN[ap].load(Ordering::SeqCst)
        );
    }

    // The mapping service: every AP submits its requests while the BSP runs the batches.
    let expected = (aps * REQUESTS_PER_AP) as u64;
    let submitting = send(SUBMIT);
    let mut batches = 0;
    while SERVICE.stats().requests < expected {
        block_on(SERVICE.run_batch(&shared), 0);
        batches += 1;
    }
    if !all_done(submitting, aps) {
        crate::fail("APs did not finish submitting");
    }
    // The serial replay: the successful requests in queue order, into the model.
    let mut done: alloc::vec::Vec<(u64, usize, usize)> = alloc::vec::Vec::new();
    let mut failed = 0;
    for ap in 1..=aps {
        for k in 0..REQUESTS_PER_AP {
            let value = RESULTS[ap][k].load(Ordering::SeqCst);
            let must_fail = k == REQUESTS_PER_AP - 1;
            if value & FAILED != 0 {
                failed += 1;
                failures += usize::from(!must_fail);
            } else {
                failures += usize::from(must_fail);
                done.push((value, ap, k));
            }
        }
    }
    done.sort_unstable();
    for &(_, ap, k) in &done {
        for change in request(ap, k, buffer) {
            model.push(change);
        }
    }
    if DIRECT_COMMITS.load(Ordering::SeqCst) == 1 {
        model.push(Change::Map {
            va: WINDOWS + 0x1F_0000,
            pa: buffer,
            size: PAGE,
            attributes: uefi_attr::WB,
        });
    }
    // Compare every page of the windows and the shared page with the replay.
    let mut replay_mismatches = 0;
    let mut pages_compared = 0;
    let _ = shared.with_table(|table| {
        let spans = (0..=aps as u64)
            .map(|ap| (WINDOWS + ap * 0x20_0000, 0x20_0000))
            .chain([(SHARED_PAGE, PAGE)]);
        for (start, size) in spans {
            for va in (start..start + size).step_by(PAGE as usize) {
                pages_compared += 1;
                let got = table.translate(va).map(|(pa, attributes)| (pa, attributes.bits()));
                if got != model.expect(va) {
                    replay_mismatches += 1;
                    if replay_mismatches <= 10 {
                        crate::txp!(
                            "MISMATCH phase=service va={va:#x} table={got:x?} replay={:x?}",
                            model.expect(va)
                        );
                    }
                }
            }
        }
    });
    failures += replay_mismatches;
    let stats = SERVICE.stats();
    crate::txp!(
        "SERVICE requests={} failed={failed} batches={} commits={} runner_batches={batches} direct_ap_commits={} pages_compared={pages_compared} replay_mismatches={replay_mismatches}",
        stats.requests,
        stats.batches,
        stats.commits,
        DIRECT_COMMITS.load(Ordering::SeqCst)
    );
    // Every AP reads the page all of them remapped: the last request in queue order wins.
    let expected_shared = model.expect(SHARED_PAGE).map_or(0, |m| m.0);
    if !command_all(READ_SHARED, aps) {
        crate::fail("APs did not read the shared page");
    }
    for ap in 1..=aps {
        let seen = SEEN[ap].load(Ordering::SeqCst);
        crate::txp!("AP index={ap} shared_frame={seen:#x} expected={expected_shared:#x}");
        failures += usize::from(seen != expected_shared);
    }
    crate::txp!("SHOOTDOWNS total={}", SHOOTDOWNS.load(Ordering::SeqCst));

    // The APs go back to the firmware's table and return.
    if !command_all(EXIT, aps) {
        crate::fail("APs did not exit");
    }
    ACTIVE[0].store(false, Ordering::SeqCst);
    // SAFETY (both clones): the event stays valid until it is closed right after.
    let returned = wait(|| boot::check_event(unsafe { finished.unsafe_clone() }).unwrap_or(false));
    crate::txp!("MP aps_returned={}", u8::from(returned));
    failures += usize::from(!returned);
    let _ = boot::close_event(finished);
    TABLE.store(core::ptr::null_mut(), Ordering::SeqCst);
    (shared.into_inner(), failures)
}
