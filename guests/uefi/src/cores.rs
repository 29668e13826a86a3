//! What the other cores do with the shared table, whatever the architecture: the commands
//! the BSP sends them, the alias they read, the remap rounds, and the requests they submit to
//! the `MappingService` (checked against a serial replay in queue order). Bringing the cores
//! up and keeping their TLBs coherent is `arch::mp`'s business.

use alloc::vec::Vec;
use core::future::Future;
use core::sync::atomic::{AtomicPtr, AtomicU64, AtomicUsize, Ordering};
use core::task::{Context, Poll, Waker};

use txpaging::service::MappingService;
use txpaging::{FlushBatch, Op, SharedTable, TxnError};

use crate::arch::{self, Table};
use crate::live::MAGIC;
use crate::model::{uefi_attr, Change, Model};

pub const MAX_CPUS: usize = 8;
const PAGE: u64 = 4096;
/// The alias every core reads: a page the remap rounds move between two frames.
pub const ALIAS: u64 = crate::live::ALIAS + 0x4000_0000;
/// The request windows (one 2 MiB span per core) and the page they all remap.
const WINDOWS: u64 = crate::live::ALIAS + 0x8000_0000;
pub const SHARED_PAGE: u64 = crate::live::ALIAS + 0xC000_0000;
/// Requests each secondary core submits; the last one must fail (it protects an unmapped page).
pub const REQUESTS_PER_AP: usize = 12;
const ROUNDS: usize = 20;

/// The shared table (its hook, where the architecture needs one, is `arch::mp`'s).
pub type Shared = SharedTable<Table, fn(&FlushBatch)>;

static SERVICE: MappingService<8, 4> = MappingService::new(8);

const READ_ALIAS: u64 = 1;
const FLUSH: u64 = 2;
const SUBMIT: u64 = 3;
const READ_SHARED: u64 = 4;
const EXIT: u64 = 5;

static COMMAND: AtomicU64 = AtomicU64::new(0);
/// `[core]`: the last command the core finished.
pub static DONE: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];
/// `[core]`: the frame the core last read through an alias.
pub static SEEN: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];
/// Cores that entered (numbering them 1, 2, ...) and cores ready on the shared table.
pub static JOINED: AtomicUsize = AtomicUsize::new(0);
pub static READY: AtomicUsize = AtomicUsize::new(0);
static TABLE: AtomicPtr<Shared> = AtomicPtr::new(core::ptr::null_mut());
static BUFFER: AtomicU64 = AtomicU64::new(0);
/// `[core][request]`: the request's queue position, or `FAILED | error code`.
static RESULTS: [[AtomicU64; REQUESTS_PER_AP]; MAX_CPUS] =
    [const { [const { AtomicU64::new(0) }; REQUESTS_PER_AP] }; MAX_CPUS];
const FAILED: u64 = 1 << 63;
static DIRECT_COMMITS: AtomicU64 = AtomicU64::new(0);

/// The frame a read through `va` reaches (each buffer page holds its address ^ MAGIC).
pub fn read_frame(va: u64) -> u64 {
    // SAFETY: `va` is mapped to a frame of the buffer in the shared table (the BSP maps it
    // before it sends the command); reading its first qword has no side effect.
    let value = unsafe { (va as *const u64).read_volatile() };
    value ^ MAGIC
}

/// Polls `future` to completion on this core, honouring shootdowns between polls.
fn block_on<F: Future>(future: F, me: usize) -> F::Output {
    let mut future = core::pin::pin!(future);
    let mut context = Context::from_waker(Waker::noop());
    loop {
        arch::mp::poll(me);
        if let Poll::Ready(output) = future.as_mut().poll(&mut context) {
            return output;
        }
        core::hint::spin_loop();
    }
}

// ---- commands from the BSP to the other cores -------------------------------------------

/// Runs commands on secondary core `me` until the BSP sends EXIT; returns that command's
/// sequence number (the caller stores it in `DONE` once it has left the table).
pub fn secondary_loop(me: usize) -> u64 {
    SEEN[me].store(read_frame(ALIAS), Ordering::SeqCst);
    READY.fetch_add(1, Ordering::SeqCst);
    let mut last = 0;
    loop {
        arch::mp::poll(me);
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
            FLUSH => arch::mp::flush_this_core(),
            SUBMIT => submit_requests(me),
            EXIT => return sequence,
            _ => {}
        }
        DONE[me].store(sequence, Ordering::SeqCst);
    }
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
pub fn send(command: u64) -> u64 {
    static SEQUENCE: AtomicU64 = AtomicU64::new(0);
    let sequence = SEQUENCE.fetch_add(1, Ordering::SeqCst) + 1;
    COMMAND.store(sequence << 8 | command, Ordering::SeqCst);
    sequence
}

/// Waits until every AP has done command `sequence` (honouring shootdowns).
pub fn all_done(sequence: u64, aps: usize) -> bool {
    wait(|| (1..=aps).all(|ap| DONE[ap].load(Ordering::SeqCst) >= sequence))
}

/// Sends `command` to every AP and waits until all have done it.
pub fn command_all(command: u64, aps: usize) -> bool {
    all_done(send(command), aps)
}

/// Spins (polling as the BSP) until `done`, for at most about 30 s.
pub fn wait(mut done: impl FnMut() -> bool) -> bool {
    let start = arch::ticks();
    loop {
        arch::mp::poll(0);
        if done() {
            return true;
        }
        if arch::ticks().wrapping_sub(start) > 30 * arch::TICKS_PER_SECOND {
            return false;
        }
        core::hint::spin_loop();
    }
}

/// How the BSP's phase makes invalidations reach the other cores, or (for the negative
/// control) not.
pub trait Coherence {
    /// The tag of the rounds' report line ("SHOOTDOWN" on X64, "BROADCAST" on AArch64).
    const TAG: &'static str;
    /// Turns the mechanism on (`true`) or off (`false`).
    fn set(&self, shared: &Shared, on: bool);
}

/// The BSP's side once `aps` cores run `secondary_loop` on `shared`: the alias they read
/// at start, remap rounds with the coherence mechanism and without it (the negative
/// control), the mapping service, the serial replay, and the page they all remapped.
/// Returns the failures.
pub fn bsp_phase<C: Coherence>(
    shared: &Shared,
    model: &mut Model,
    aps: usize,
    frames: (u64, u64),
    coherence: &C,
) -> usize {
    let mut failures = 0;
    let (frame_a, frame_b) = frames;
    let buffer = BUFFER.load(Ordering::SeqCst);
    for ap in 1..=aps {
        let seen = SEEN[ap].load(Ordering::SeqCst);
        crate::txp!("AP index={ap} table_loaded=1 alias_frame={seen:#x}");
        failures += usize::from(seen != frame_a);
    }

    // Remap rounds: the cores read (caching the translation), the BSP remaps, they read again.
    let rounds = |on: bool, tag: &str, model: &mut Model| {
        coherence.set(shared, on);
        let (mut stale, mut reads, mut hooks) = (0usize, 0usize, 0usize);
        for round in 0..ROUNDS {
            let (old, new) = if round % 2 == 0 {
                (frame_a, frame_b)
            } else {
                (frame_b, frame_a)
            };
            if !command_all(READ_ALIAS, aps) {
                crate::fail("the cores did not read");
            }
            let change = Change::Map {
                va: ALIAS,
                pa: new,
                size: PAGE,
                attributes: uefi_attr::WB | uefi_attr::XP,
            };
            match shared.commit([crate::op_of(&change)]) {
                Ok(report) => hooks += usize::from(report.shootdown_ran),
                Err(e) => crate::fail(&alloc::format!("shared commit: {e}")),
            }
            model.push(change);
            if !command_all(READ_ALIAS, aps) {
                crate::fail("the cores did not read");
            }
            for ap in 1..=aps {
                reads += 1;
                let seen = SEEN[ap].load(Ordering::SeqCst);
                if seen != new {
                    stale += 1;
                    if on && stale <= 10 {
                        crate::txp!(
                            "MISMATCH phase=remap ap={ap} round={round} saw={seen:#x} expected={new:#x} old={old:#x}"
                        );
                    }
                }
            }
        }
        crate::txp!("{tag} rounds={ROUNDS} ap_reads={reads} stale={stale} hook_ran={hooks}");
        stale
    };
    failures += rounds(true, C::TAG, model);
    let negative_tag = alloc::format!("NEGATIVE_{}", C::TAG);
    let stale_without = rounds(false, &negative_tag, model);
    coherence.set(shared, true);
    if !command_all(FLUSH, aps) {
        crate::fail("the cores did not flush");
    }
    arch::flush_local();
    if stale_without == 0 {
        failures += 1;
        crate::txp!("MISMATCH negative control: no core saw a stale frame without the invalidations");
    }

    // The mapping service: every core submits its requests while the BSP runs the batches.
    let expected = (aps * REQUESTS_PER_AP) as u64;
    let submitting = send(SUBMIT);
    let mut batches = 0;
    while SERVICE.stats().requests < expected {
        block_on(SERVICE.run_batch(shared), 0);
        batches += 1;
    }
    if !all_done(submitting, aps) {
        crate::fail("the cores did not finish submitting");
    }
    // The serial replay: the successful requests in queue order, into the model.
    let mut done: Vec<(u64, usize, usize)> = Vec::new();
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
    // Every page of the windows and the shared page equals the replay.
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
    // Every core reads the page all of them remapped: the last request in queue order wins.
    let expected_shared = model.expect(SHARED_PAGE).map_or(0, |m| m.0);
    if !command_all(READ_SHARED, aps) {
        crate::fail("the cores did not read the shared page");
    }
    for ap in 1..=aps {
        let seen = SEEN[ap].load(Ordering::SeqCst);
        crate::txp!("AP index={ap} shared_frame={seen:#x} expected={expected_shared:#x}");
        failures += usize::from(seen != expected_shared);
    }
    failures
}

/// Before the other cores start: maps the alias every core reads to the first of two buffer
/// frames the remap rounds alternate between, and fills the page allocator's reserve for
/// commits made on a core that must not call boot services. Returns the two frames.
pub fn prepare(table: &mut Table, model: &mut Model, buffer: u64) -> (u64, u64) {
    let (frame_a, frame_b) = (buffer + 0x18_0000, buffer + 0x19_0000);
    let attributes = uefi_attr::WB | uefi_attr::XP;
    table
        .map_aliased_memory_region(
            ALIAS,
            frame_a,
            PAGE,
            txpaging::MemoryAttributes::from_bits_retain(attributes),
        )
        .unwrap_or_else(|e| crate::fail(&alloc::format!("alias: {e}")));
    model.push(Change::Map {
        va: ALIAS,
        pa: frame_a,
        size: PAGE,
        attributes,
    });
    table
        .allocator_mut()
        .fill_reserve(64)
        .unwrap_or_else(|e| crate::fail(&alloc::format!("reserve: {e}")));
    (frame_a, frame_b)
}

/// Publishes what the secondaries need before they start: the shared table and the buffer.
pub fn publish(shared: &Shared, buffer: u64) {
    TABLE.store(shared as *const Shared as *mut Shared, Ordering::SeqCst);
    BUFFER.store(buffer, Ordering::SeqCst);
}

/// Tells the secondaries to leave and forgets the shared table; returns whether all
/// acknowledged.
pub fn dismiss(aps: usize) -> bool {
    let left = command_all(EXIT, aps);
    TABLE.store(core::ptr::null_mut(), Ordering::SeqCst);
    left
}
