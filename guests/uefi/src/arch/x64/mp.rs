//! Several cores on one table: the APs (started through the PI MP services protocol) load
//! the table's CR3 and IA32_PAT with txpaging's own `X64Mmu::install`, the BSP commits
//! through a `SharedTable` whose shootdown hook makes every other core invalidate, and the
//! APs submit requests to a `MappingService` that the BSP runs, concurrently.
//!
//! # Shootdown: a generation counter, not an IPI
//! While they share the table the APs run only this module's loop, with interrupts masked
//! by the firmware's MP procedure call, so they poll: the initiator publishes the flush
//! batch, bumps a generation and waits until every participating core has acknowledged it;
//! each core, whenever it polls (between commands, while it waits for a service result,
//! while it waits for the shootdown lock), issues the batch through txpaging's `X64Mmu`
//! and acknowledges. An IPI would need an interrupt handler on every AP and the local APIC
//! programmed behind the firmware's back, for the same guarantee here.
//!
//! The critical section is `crate::sync`'s.

use core::ffi::c_void;
use core::future::Future;
use core::sync::atomic::{AtomicBool, AtomicPtr, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use core::task::{Context, Poll, Waker};

use txpaging::service::MappingService;
use txpaging::x64::X64Mmu;
use txpaging::{FlushBatch, InstallRequest, Mmu, Op, SharedTable, Tlb, TxnError};
use uefi::boot::{self, EventType, Tpl};
use uefi::proto::pi::mp::MpServices;

use super::cpu;
use crate::arch::Table;
use crate::live::MAGIC;
use crate::model::{uefi_attr, Change, Model};

pub const MAX_CPUS: usize = 8;
const PAGE: u64 = 4096;
/// The alias every core reads: a page the shootdown rounds remap.
pub const ALIAS: u64 = crate::live::ALIAS + 0x4000_0000;
/// The AP request windows (one 2 MiB span per AP) and the page they all remap.
const WINDOWS: u64 = crate::live::ALIAS + 0x8000_0000;
pub const SHARED_PAGE: u64 = crate::live::ALIAS + 0xC000_0000;
/// Requests each AP submits; the last one of each AP must fail (protects an unmapped page).
pub const REQUESTS_PER_AP: usize = 12;
const ROUNDS: usize = 20;

type Hook = fn(&FlushBatch);
type Shared = SharedTable<Table, Hook>;

static SERVICE: MappingService<8, 4> = MappingService::new(8);

// ---- the shootdown ---------------------------------------------------------------------

static APIC_IDS: [AtomicU32; MAX_CPUS] = [const { AtomicU32::new(u32::MAX) }; MAX_CPUS];
static ACTIVE: [AtomicBool; MAX_CPUS] = [const { AtomicBool::new(false) }; MAX_CPUS];
static ACK: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];
static GENERATION: AtomicU64 = AtomicU64::new(0);
static SHOOT_LOCK: AtomicBool = AtomicBool::new(false);
static SHOOT_FULL: AtomicBool = AtomicBool::new(false);
static SHOOT_COUNT: AtomicUsize = AtomicUsize::new(0);
static SHOOT_PAGES: [AtomicU64; 64] = [const { AtomicU64::new(0) }; 64];
/// Off for the negative control: the hook then returns at once.
static SHOOTDOWN_ON: AtomicBool = AtomicBool::new(true);
static SHOOTDOWNS: AtomicU64 = AtomicU64::new(0);

fn my_index() -> usize {
    let me = cpu::apic_id();
    APIC_IDS
        .iter()
        .position(|id| id.load(Ordering::Relaxed) == me)
        .unwrap_or(0)
}

/// Issues the published batch on this core if a shootdown is pending for it.
fn honour(me: usize) {
    let generation = GENERATION.load(Ordering::SeqCst);
    if ACK[me].load(Ordering::SeqCst) >= generation {
        return;
    }
    let mmu = X64Mmu::new();
    if SHOOT_FULL.load(Ordering::SeqCst) {
        mmu.invalidate_all();
    } else {
        for page in &SHOOT_PAGES[..SHOOT_COUNT.load(Ordering::SeqCst)] {
            mmu.invalidate_page(page.load(Ordering::SeqCst));
        }
    }
    ACK[me].store(generation, Ordering::SeqCst);
}

/// The `SharedTable` hook: every other participating core issues `batch`; returns when
/// all have.
fn shootdown(batch: &FlushBatch) {
    if !SHOOTDOWN_ON.load(Ordering::SeqCst) {
        return;
    }
    let me = my_index();
    while SHOOT_LOCK
        .compare_exchange(false, true, Ordering::SeqCst, Ordering::SeqCst)
        .is_err()
    {
        honour(me);
        core::hint::spin_loop();
    }
    let pages: heapless_pages::Pages = batch.pages().collect();
    SHOOT_FULL.store(batch.is_full() || pages.overflowed, Ordering::SeqCst);
    for (slot, page) in SHOOT_PAGES.iter().zip(pages.pages.iter()) {
        slot.store(*page, Ordering::SeqCst);
    }
    SHOOT_COUNT.store(pages.len, Ordering::SeqCst);
    let generation = GENERATION.fetch_add(1, Ordering::SeqCst) + 1;
    ACK[me].store(generation, Ordering::SeqCst);
    for cpu in 0..MAX_CPUS {
        while ACTIVE[cpu].load(Ordering::SeqCst) && ACK[cpu].load(Ordering::SeqCst) < generation {
            core::hint::spin_loop();
        }
    }
    SHOOTDOWNS.fetch_add(1, Ordering::Relaxed);
    SHOOT_LOCK.store(false, Ordering::SeqCst);
}

/// Up to 64 pages of a batch without a heap (an AP must not call boot services).
mod heapless_pages {
    pub struct Pages {
        pub pages: [u64; 64],
        pub len: usize,
        pub overflowed: bool,
    }

    impl FromIterator<u64> for Pages {
        fn from_iter<I: IntoIterator<Item = u64>>(iter: I) -> Self {
            let mut pages = Self {
                pages: [0; 64],
                len: 0,
                overflowed: false,
            };
            for page in iter {
                if pages.len == 64 {
                    pages.overflowed = true;
                    break;
                }
                pages.pages[pages.len] = page;
                pages.len += 1;
            }
            pages
        }
    }
}

/// Polls `future` to completion on this core, honouring shootdowns between polls.
fn block_on<F: Future>(future: F, me: usize) -> F::Output {
    let mut future = core::pin::pin!(future);
    let mut context = Context::from_waker(Waker::noop());
    loop {
        honour(me);
        if let Poll::Ready(output) = future.as_mut().poll(&mut context) {
            return output;
        }
        core::hint::spin_loop();
    }
}

// ---- commands from the BSP to the APs ----------------------------------------------------

const READ_ALIAS: u64 = 1;
const FLUSH: u64 = 2;
const SUBMIT: u64 = 3;
const READ_SHARED: u64 = 4;
const EXIT: u64 = 5;

static COMMAND: AtomicU64 = AtomicU64::new(0);
static DONE: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];
static SEEN: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];
static JOINED: AtomicUsize = AtomicUsize::new(0);
static READY: AtomicUsize = AtomicUsize::new(0);
static ROOT: AtomicU64 = AtomicU64::new(0);
static TABLE: AtomicPtr<Shared> = AtomicPtr::new(core::ptr::null_mut());
static BUFFER: AtomicU64 = AtomicU64::new(0);
/// `[ap][request]`: the request's queue position, or `FAILED | error code`.
static RESULTS: [[AtomicU64; REQUESTS_PER_AP]; MAX_CPUS] =
    [const { [const { AtomicU64::new(0) }; REQUESTS_PER_AP] }; MAX_CPUS];
const FAILED: u64 = 1 << 63;
static DIRECT_COMMITS: AtomicU64 = AtomicU64::new(0);

fn read_frame(va: u64) -> u64 {
    // SAFETY: `va` is mapped to a frame of the buffer in the shared table (checked by the BSP
    // before it sends the command); reading its first qword has no side effect.
    let value = unsafe { (va as *const u64).read_volatile() };
    value ^ MAGIC
}

/// The ops of request `k` of AP `ap` (1-based).
pub fn request(ap: usize, k: usize, buffer: u64) -> alloc::vec::Vec<Change> {
    use uefi_attr::{RO, WB, XP};
    let window = WINDOWS + ap as u64 * 0x20_0000;
    let frame = buffer + ((ap * REQUESTS_PER_AP + k) as u64 % 500) * PAGE;
    let slot = window + (k / 3) as u64 * PAGE;
    match k % 3 {
        0 => alloc::vec![
            Change::Map {
                va: slot,
                pa: frame,
                size: PAGE,
                attributes: WB | XP
            },
            Change::Map {
                va: SHARED_PAGE,
                pa: frame,
                size: PAGE,
                attributes: WB | XP
            },
        ],
        1 => alloc::vec![Change::Protect {
            va: slot,
            size: PAGE,
            attributes: RO | XP
        }],
        _ if k == REQUESTS_PER_AP - 1 => alloc::vec![Change::Protect {
            va: window + 0x10_0000,
            size: PAGE,
            attributes: XP
        }],
        _ => alloc::vec![Change::Map {
            va: slot + 0x1_0000,
            pa: frame,
            size: 2 * PAGE,
            attributes: WB
        }],
    }
}

extern "efiapi" fn ap_main(_argument: *mut c_void) {
    let me = JOINED.fetch_add(1, Ordering::SeqCst) + 1;
    if me >= MAX_CPUS {
        return;
    }
    APIC_IDS[me].store(cpu::apic_id(), Ordering::SeqCst);
    let (entry_cr3, entry_pat) = (cpu::read_cr3(), cpu::read_msr(cpu::IA32_PAT));
    // The same table on this core, with txpaging's own install (IA32_PAT, EFER.NXE, CR3).
    let request = InstallRequest::X64 {
        root: ROOT.load(Ordering::SeqCst),
        five_level: false,
        pat: txpaging::x64::PAT_LAYOUT,
        nx: true,
    };
    if X64Mmu::new().install(&request).is_err() {
        return;
    }
    ACK[me].store(GENERATION.load(Ordering::SeqCst), Ordering::SeqCst);
    ACTIVE[me].store(true, Ordering::SeqCst);
    SEEN[me].store(read_frame(ALIAS), Ordering::SeqCst);
    READY.fetch_add(1, Ordering::SeqCst);
    let mut last = 0;
    loop {
        honour(me);
        let command = COMMAND.load(Ordering::SeqCst);
        let sequence = command >> 8;
        if sequence == last {
            core::hint::spin_loop();
            continue;
        }
        last = sequence;
        match command & 0xFF {
            READ_ALIAS => SEEN[me].store(read_frame(ALIAS), Ordering::SeqCst),
            READ_SHARED => SEEN[me].store(read_frame(SHARED_PAGE), Ordering::SeqCst),
            FLUSH => cpu::reload_cr3(),
            SUBMIT => submit_requests(me),
            EXIT => {
                ACTIVE[me].store(false, Ordering::SeqCst);
                honour(me);
                // SAFETY: back to the firmware's own table and PAT, which still map everything
                // this AP runs; its PAT first, so no translation mixes the layouts.
                unsafe {
                    cpu::write_msr(cpu::IA32_PAT, entry_pat);
                    cpu::write_cr3(entry_cr3);
                }
                DONE[me].store(sequence, Ordering::SeqCst);
                return;
            }
            _ => {}
        }
        DONE[me].store(sequence, Ordering::SeqCst);
    }
}

fn submit_requests(me: usize) {
    let buffer = BUFFER.load(Ordering::SeqCst);
    // SAFETY: the BSP keeps the shared table alive until every AP has exited.
    let shared = unsafe { &*TABLE.load(Ordering::SeqCst) };
    for k in 0..REQUESTS_PER_AP {
        let changes = request(me, k, buffer);
        let mut ops: heapless::Vec<Op, 4> = heapless::Vec::new();
        for change in &changes {
            let _ = ops.push(crate::op_of(change));
        }
        let result = block_on(SERVICE.submit(&ops), me);
        let value = match result {
            Ok(report) => report.sequence,
            Err(TxnError { error, .. }) => FAILED | error as u64,
        };
        RESULTS[me][k].store(value, Ordering::SeqCst);
    }
    // One commit straight through the shared table from this AP: its allocator takes a
    // reserved page (no boot services here) and its hook shoots down the BSP and the others.
    if me == 1 {
        let va = WINDOWS + 0x1F_0000;
        let ops = [Op::Map {
            va,
            pa: buffer,
            size: PAGE,
            attributes: txpaging::MemoryAttributes::Writeback,
        }];
        if shared.commit(ops).is_ok() {
            DIRECT_COMMITS.fetch_add(1, Ordering::SeqCst);
        }
    }
}

/// Sends `command` to every AP; returns its sequence number for [`all_done`].
fn send(command: u64) -> u64 {
    static SEQUENCE: AtomicU64 = AtomicU64::new(0);
    let sequence = SEQUENCE.fetch_add(1, Ordering::SeqCst) + 1;
    COMMAND.store(sequence << 8 | command, Ordering::SeqCst);
    sequence
}

/// Waits until every AP has done command `sequence` (honouring shootdowns).
fn all_done(sequence: u64, aps: usize) -> bool {
    wait(|| (1..=aps).all(|ap| DONE[ap].load(Ordering::SeqCst) >= sequence))
}

/// Sends `command` to every AP and waits until all have done it.
fn command_all(command: u64, aps: usize) -> bool {
    all_done(send(command), aps)
}

/// Spins (honouring shootdowns as the BSP) until `done`, for at most about 20 s.
fn wait(mut done: impl FnMut() -> bool) -> bool {
    // SAFETY: RDTSC only reads the time-stamp counter.
    let start = unsafe { core::arch::x86_64::_rdtsc() };
    loop {
        honour(0);
        if done() {
            return true;
        }
        // SAFETY: as above.
        if unsafe { core::arch::x86_64::_rdtsc() }.wrapping_sub(start) > 60_000_000_000 {
            return false;
        }
        core::hint::spin_loop();
    }
}

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
