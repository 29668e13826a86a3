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
//! The critical section is `crate::sync`'s; the commands, the rounds and the service are
//! `crate::cores`'.

use core::ffi::c_void;
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};

use txpaging::x64::X64Mmu;
use txpaging::{FlushBatch, InstallRequest, Mmu, SharedTable, Tlb};
use uefi::boot::{self, EventType, Tpl};
use uefi::proto::pi::mp::MpServices;

use super::cpu;
use crate::arch::Table;
use crate::cores::{self, Shared, DONE, JOINED, MAX_CPUS, READY};
use crate::model::Model;

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

/// Between two polls of a waiting core: its pending shootdown.
pub fn poll(me: usize) {
    honour(me);
}

/// FLUSH: drop every translation of this core.
pub fn flush_this_core() {
    cpu::reload_cr3();
}

static ROOT: AtomicU64 = AtomicU64::new(0);

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
    let exit = cores::secondary_loop(me);
    ACTIVE[me].store(false, Ordering::SeqCst);
    honour(me);
    // SAFETY: back to the firmware's own table and PAT, which still map everything this AP
    // runs; its PAT first, so no translation mixes the layouts.
    unsafe {
        cpu::write_msr(cpu::IA32_PAT, entry_pat);
        cpu::write_cr3(entry_cr3);
    }
    DONE[me].store(exit, Ordering::SeqCst);
}

/// The shootdown hook switched on and off (the negative control).
struct Shootdown;

impl cores::Coherence for Shootdown {
    const TAG: &'static str = "SHOOTDOWN";

    fn set(&self, _shared: &Shared, on: bool) {
        SHOOTDOWN_ON.store(on, Ordering::SeqCst);
    }
}

/// The multi-core phase. Takes the table, shares it, gives it back with the failure count.
pub fn run(table: Table, model: &mut Model, buffer: u64) -> (Table, usize) {
    let mut table = table;
    let mp = match boot::get_handle_for_protocol::<MpServices>().and_then(boot::open_protocol_exclusive::<MpServices>) {
        Ok(mp) => mp,
        Err(_) => crate::fail("no MP services protocol"),
    };
    let count = mp
        .get_number_of_processors()
        .unwrap_or_else(|_| crate::fail("processor count"));
    let aps = (count.enabled - 1).min(MAX_CPUS - 1);
    crate::txp!("MP processors={} enabled={} aps={aps}", count.total, count.enabled);

    let (frame_a, frame_b) = cores::prepare(&mut table, model, buffer);
    ROOT.store(table.root(), Ordering::SeqCst);
    APIC_IDS[0].store(cpu::apic_id(), Ordering::SeqCst);
    ACTIVE[0].store(true, Ordering::SeqCst);

    let shared: Shared = SharedTable::with_shootdown(table, shootdown as fn(&FlushBatch));
    cores::publish(&shared, buffer);

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
    if !cores::wait(|| READY.load(Ordering::SeqCst) >= aps) {
        crate::fail(&alloc::format!(
            "only {} of {aps} APs came up",
            READY.load(Ordering::SeqCst)
        ));
    }
    let mut failures = cores::bsp_phase(&shared, model, aps, (frame_a, frame_b), &Shootdown);
    crate::txp!("SHOOTDOWNS total={}", SHOOTDOWNS.load(Ordering::SeqCst));

    // The APs go back to the firmware's table and return.
    if !cores::dismiss(aps) {
        crate::fail("APs did not exit");
    }
    ACTIVE[0].store(false, Ordering::SeqCst);
    // SAFETY (both clones): the event stays valid until it is closed right after.
    let returned = cores::wait(|| boot::check_event(unsafe { finished.unsafe_clone() }).unwrap_or(false));
    crate::txp!("MP aps_returned={}", u8::from(returned));
    failures += usize::from(!returned);
    let _ = boot::close_event(finished);
    (shared.into_inner(), failures)
}
