//! Secondary cores on AArch64: AAVMF has no MP services, so the secondaries come up through
//! PSCI CPU_ON (DEN0022, 5.1.4) at an entry point of this application with the MMU off.
//! The entry programs the install request's MAIR, TCR and TTBR0 of the current EL (the
//! values `install_page_table` programmed on the BSP), invalidates its TLB, turns the MMU on
//! with the BSP's SCTLR and calls `secondary_main` on its own stack.
//!
//! No shootdown: txpaging's commits invalidate with `TLBI ...IS` (inner shareable, Arm ARM
//! D8.14.2), which reaches every core of the inner-shareable domain before the `DSB ISH`
//! that follows completes, without any interrupt. The negative control drops those TLBIs.
//! When they are done the secondaries turn themselves off (PSCI CPU_OFF).

use core::arch::global_asm;
use core::sync::atomic::{AtomicU64, Ordering};

use txpaging::InstallRequest;
use uefi::boot::{self, AllocateType};
use uefi::mem::memory_map::MemoryType;

use super::cpu;
use crate::arch::Table;
use crate::cores::{self, Shared, DONE, JOINED, MAX_CPUS, READY};
use crate::model::Model;

const PAGE: u64 = 4096;
const STACK_PAGES: usize = 16;
const PSCI_CPU_ON: u64 = 0xC400_0003;
const PSCI_CPU_OFF: u64 = 0x8400_0002;
const PSCI_AFFINITY_INFO: u64 = 0xC400_0004;

/// What a secondary's entry reads with the MMU off (the offsets are the asm's).
#[repr(C, align(64))]
struct Boot {
    stack_top: AtomicU64,
    mair: AtomicU64,
    tcr: AtomicU64,
    ttbr0: AtomicU64,
    sctlr: AtomicU64,
    vbar: AtomicU64,
}

static BOOT: [Boot; MAX_CPUS] = [const {
    Boot {
        stack_top: AtomicU64::new(0),
        mair: AtomicU64::new(0),
        tcr: AtomicU64::new(0),
        ttbr0: AtomicU64::new(0),
        sctlr: AtomicU64::new(0),
        vbar: AtomicU64::new(0),
    }
}; MAX_CPUS];

global_asm!(
    r#"
    .text
    .balign 4
    .global txp_secondary_entry
txp_secondary_entry:
    mov x19, x0
    mrs x1, CurrentEL
    cmp x1, #8
    b.eq 2f
    // EL1: FP/SIMD not trapped (CPACR_EL1.FPEN = 0b11), then the translation registers.
    mov x1, #(3 << 20)
    msr cpacr_el1, x1
    ldr x1, [x19, #8]
    msr mair_el1, x1
    ldr x1, [x19, #16]
    msr tcr_el1, x1
    ldr x1, [x19, #24]
    msr ttbr0_el1, x1
    ldr x1, [x19, #40]
    msr vbar_el1, x1
    isb
    tlbi vmalle1
    dsb nsh
    isb
    ldr x1, [x19, #32]
    msr sctlr_el1, x1
    isb
    b 3f
2:  // EL2 (E2H = 0): FP/SIMD not trapped (CPTR_EL2.TFP = 0, RES1 bits kept).
    mov x1, #0x33ff
    msr cptr_el2, x1
    ldr x1, [x19, #8]
    msr mair_el2, x1
    ldr x1, [x19, #16]
    msr tcr_el2, x1
    ldr x1, [x19, #24]
    msr ttbr0_el2, x1
    ldr x1, [x19, #40]
    msr vbar_el2, x1
    isb
    tlbi alle2
    dsb nsh
    isb
    ldr x1, [x19, #32]
    msr sctlr_el2, x1
    isb
3:  ldr x1, [x19, #0]
    mov sp, x1
    mov x0, x19
    bl txp_secondary_main
4:  wfi
    b 4b
"#
);

extern "C" {
    fn txp_secondary_entry();
}

/// A secondary, MMU on, on the shared table.
#[no_mangle]
extern "C" fn txp_secondary_main(_boot: *const Boot) -> ! {
    let me = JOINED.fetch_add(1, Ordering::SeqCst) + 1;
    let exit = cores::secondary_loop(me);
    DONE[me].store(exit, Ordering::SeqCst);
    // SAFETY: CPU_OFF powers this core down; it never returns on success.
    unsafe { cpu::psci(PSCI_CPU_OFF, 0, 0, 0) };
    loop {
        core::hint::spin_loop();
    }
}

/// Nothing to do between polls: invalidations are broadcast.
pub fn poll(_me: usize) {}

/// FLUSH: drop every translation of this core.
pub fn flush_this_core() {
    if cpu::current_el() == 2 {
        // SAFETY: local TLB maintenance only drops cached translations.
        unsafe {
            core::arch::asm!(
                "dsb nshst",
                "tlbi alle2",
                "dsb nsh",
                "isb",
                options(nostack, preserves_flags)
            )
        };
    } else {
        // SAFETY: as above.
        unsafe {
            core::arch::asm!(
                "dsb nshst",
                "tlbi vmalle1",
                "dsb nsh",
                "isb",
                options(nostack, preserves_flags)
            )
        };
    }
}

/// The broadcast TLBIs switched on and off (the negative control drops them).
struct Broadcast;

impl cores::Coherence for Broadcast {
    const TAG: &'static str = "BROADCAST";

    fn set(&self, shared: &Shared, on: bool) {
        let _ = shared.with_table(|table| super::mmu_state(table).set_dropping(!on));
    }
}

/// Cleans `size` bytes at `address` to the point of coherency, so a core with its MMU and
/// caches off reads them (Arm ARM D7.4.11 / B2.4.4).
fn clean_to_poc(address: u64, size: u64) {
    for line in (address & !63..address + size).step_by(64) {
        // SAFETY: cache maintenance by VA on memory this application owns.
        unsafe { core::arch::asm!("dc civac, {}", in(reg) line, options(nostack, preserves_flags)) };
    }
    // SAFETY: a barrier.
    unsafe { core::arch::asm!("dsb sy", options(nostack, preserves_flags)) };
}

/// The multi-core phase. Takes the table, shares it, gives it back with the failure count.
pub fn run(table: Table, model: &mut Model, buffer: u64) -> (Table, usize) {
    let mut table = table;
    let (frame_a, frame_b) = cores::prepare(&mut table, model, buffer);
    let (mair, tcr, ttbr0) = match table.install_request() {
        InstallRequest::Aarch64 { mair, tcr, ttbr0 } | InstallRequest::Aarch64El2 { mair, tcr, ttbr0 } => {
            (mair, tcr, ttbr0)
        }
        _ => crate::fail("install request of another architecture"),
    };
    let (sctlr, vbar) = (cpu::read_sctlr(), super::probe::vectors());
    let shared: Shared = Shared::new(table);
    cores::publish(&shared, buffer);

    // Bring up every core PSCI knows, from MPIDR 1 (QEMU virt: Aff0 = CPU number).
    let mut started = 0;
    for target in 1..MAX_CPUS as u64 {
        let slot = started + 1;
        let boot = &BOOT[slot];
        let stack = boot::allocate_pages(AllocateType::AnyPages, MemoryType::LOADER_DATA, STACK_PAGES)
            .unwrap_or_else(|_| crate::fail("secondary stack"));
        boot.stack_top
            .store(stack.as_ptr() as u64 + (STACK_PAGES as u64) * PAGE, Ordering::SeqCst);
        boot.mair.store(mair, Ordering::SeqCst);
        boot.tcr.store(tcr, Ordering::SeqCst);
        boot.ttbr0.store(ttbr0, Ordering::SeqCst);
        boot.sctlr.store(sctlr, Ordering::SeqCst);
        boot.vbar.store(vbar, Ordering::SeqCst);
        clean_to_poc(boot as *const Boot as u64, core::mem::size_of::<Boot>() as u64);
        // SAFETY: CPU_ON starts core `target` at the entry point with the MMU off; the entry
        // reads `boot` (cleaned to the point of coherency) and never returns to PSCI.
        let result = unsafe {
            cpu::psci(
                PSCI_CPU_ON,
                target,
                txp_secondary_entry as *const () as u64,
                boot as *const Boot as u64,
            )
        };
        match result {
            0 => started += 1,
            -2 => break, // INVALID_PARAMETERS: no such core
            other => crate::fail(&alloc::format!("PSCI CPU_ON {target:#x}: {other}")),
        }
    }
    crate::txp!(
        "MP conduit={} secondaries={started}",
        if cpu::current_el() == 2 { "smc" } else { "hvc" }
    );
    if !cores::wait(|| READY.load(Ordering::SeqCst) >= started) {
        crate::fail(&alloc::format!(
            "only {} of {started} secondaries came up",
            READY.load(Ordering::SeqCst)
        ));
    }
    let mut failures = cores::bsp_phase(&shared, model, started, (frame_a, frame_b), &Broadcast);

    // The secondaries leave and power off.
    if !cores::dismiss(started) {
        crate::fail("secondaries did not exit");
    }
    let off = cores::wait(|| {
        // SAFETY: AFFINITY_INFO only reports a core's power state (1: OFF).
        (1..=started as u64).all(|target| unsafe { cpu::psci(PSCI_AFFINITY_INFO, target, 0, 0) } == 1)
    });
    crate::txp!("MP aps_returned={}", u8::from(off));
    failures += usize::from(!off);
    (shared.into_inner(), failures)
}
