//! AArch64 under AAVMF (virt), at EL1 or, with `virtualization=on`, at EL2: MAIR, TCR and
//! TTBR0 of the current EL; the PL011; semihosting exit; the vector-table probes; PSCI
//! secondaries whose TLBs the broadcast TLBI reaches.

pub mod cpu;
pub mod mp;
pub mod probe;
mod table;

use alloc::string::String;
use alloc::vec::Vec;
use core::arch::global_asm;

use txpaging::aarch64::foreign::{existing_regions, DEFAULT_MAX_TABLE_PAGES};
use txpaging::aarch64::{El1, El2};
use txpaging::{InstallRequest, MappedRegion, PageTable, PagingType};

pub use cpu::{disable_interrupts, restore_interrupts};
pub use table::Table;

use crate::mmu::MmuState;
use crate::pages::ReadOnlyPages;

pub const NAME: &str = "aarch64";

/// The MMU's counters and invalidation switch.
pub fn mmu_state(table: &Table) -> &MmuState {
    table.mmu_state()
}

/// This core's affinity (MPIDR_EL1 Aff0..Aff2).
pub fn cpu_id() -> u32 {
    cpu::mpidr() as u32
}

/// MMIO on virt that reads without side effects: the flash (read-array mode), the GIC
/// distributor's first 4 KiB (all of a GICv2 distributor, virt's default; the rest of its
/// 64 KiB window is unassigned there and a read is an external abort), the PL031 RTC and
/// the PCIe ECAM. Not the UART (a read pops a byte), fw_cfg (reads advance it), the GIC CPU
/// interface (IAR acknowledges) or PCI BARs (virtio's ISR clears on read).
pub const QUIET_MMIO: &[(u64, u64)] = &[
    (0x0, 0x0800_0000),
    (0x0800_0000, 0x0800_1000),
    (0x0901_0000, 0x0901_1000),
    (0x40_1000_0000, 0x40_2000_0000),
];
/// Nothing is taken to be unassigned: 64-bit BARs may sit anywhere above RAM.
pub const UNASSIGNED_FROM: u64 = u64::MAX;
/// Probed in every run besides the random addresses: inside the GIC distributor's 64 KiB
/// window but past the GICv2 distributor's 4 KiB of registers, where a read is an external
/// abort (ESR DFSC 0x10) on virt's default GICv2. A random probe landed there now and then
/// and failed the run while it counted as quiet MMIO.
pub const ALWAYS_PROBED: &[u64] = &[0x0800_1000, 0x0800_6000];

pub use cpu::{uart_get, uart_put};

pub fn ticks() -> u64 {
    cpu::counter()
}
/// QEMU virt's generic timer runs at 62.5 MHz.
pub const TICKS_PER_SECOND: u64 = 62_500_000;

/// Ends the run through semihosting: QEMU exits with 0x21 for a pass and 0x23 for a failure
/// (the statuses isa-debug-exit gives on X64; a plain 0 would also be a guest reset).
pub fn exit(pass: bool) -> ! {
    cpu::semihosting_exit(if pass { 0x21 } else { 0x23 })
}

/// `RET` (0xD65F03C0, Arm ARM C6.2.254) in every aligned word of `page`.
const RET: u32 = 0xD65F_03C0;

pub fn fill_with_returns(page: &mut [u8]) {
    for word in page.chunks_exact_mut(4) {
        word.copy_from_slice(&RET.to_le_bytes());
    }
}

/// The offset of an aligned `RET` word in `page`.
pub fn find_return(page: &[u8]) -> Option<usize> {
    page.chunks_exact(4)
        .position(|word| word == RET.to_le_bytes())
        .map(|index| index * 4)
}

/// Makes instructions written as data at `address` visible to instruction fetch: clean the
/// data cache to the point of unification, invalidate the instruction cache, DSB, ISB
/// (Arm ARM B2.4.4, "Concurrent modification and execution of instructions", and K11.5.2).
pub fn sync_instructions(address: u64, size: u64) {
    for line in (address..address + size).step_by(64) {
        // SAFETY: cache maintenance by VA on memory this application owns.
        unsafe { core::arch::asm!("dc cvau, {}", in(reg) line, options(nostack, preserves_flags)) };
    }
    // SAFETY: a barrier.
    unsafe { core::arch::asm!("dsb ish", options(nostack, preserves_flags)) };
    for line in (address..address + size).step_by(64) {
        // SAFETY: as above.
        unsafe { core::arch::asm!("ic ivau, {}", in(reg) line, options(nostack, preserves_flags)) };
    }
    // SAFETY: barriers.
    unsafe { core::arch::asm!("dsb ish", "isb", options(nostack, preserves_flags)) };
}

/// The firmware's registers at entry.
#[derive(Debug, Clone, Copy)]
pub struct Entry {
    pub el: u64,
    pub sctlr: u64,
    pub mair: u64,
    pub tcr: u64,
    pub ttbr0: u64,
}

impl Entry {
    pub fn read() -> Self {
        Self {
            el: cpu::current_el(),
            sctlr: cpu::read_sctlr(),
            mair: cpu::read_mair(),
            tcr: cpu::read_tcr(),
            ttbr0: cpu::read_ttbr0(),
        }
    }

    pub fn report(&self) {
        crate::txp!(
            "ENTRY el={} sctlr={:#x} mair={:#x} tcr={:#x} ttbr0={:#x}",
            self.el,
            self.sctlr,
            self.mair,
            self.tcr,
            self.ttbr0
        );
    }

    fn paging_type(&self) -> PagingType {
        // T0SZ (TCR_ELx[5:0]): 16 is 48 bits (4 levels), 25 is 39 bits (3 levels).
        if self.tcr & 0x3F >= 25 {
            PagingType::Paging3Level
        } else {
            PagingType::Paging4Level
        }
    }

    pub fn seed(&self) -> u64 {
        self.ttbr0 ^ ticks()
    }
}

/// The firmware's live table (TTBR0 of the current EL), read with txpaging's checked walk
/// under the firmware's MAIR: its mapped regions and a summary line.
pub fn adopt(entry: &Entry) -> Result<(Vec<MappedRegion>, String), String> {
    let root = entry.ttbr0 & 0x0000_FFFF_FFFF_F000;
    // SAFETY: TTBR0 holds the firmware's live table, identity mapped; nothing changes it
    // while this application reads it. The descriptors are checked, not trusted.
    let regions = unsafe {
        if entry.el == 2 {
            existing_regions(
                El2,
                root,
                entry.paging_type(),
                entry.mair,
                &ReadOnlyPages,
                DEFAULT_MAX_TABLE_PAGES,
            )
        } else {
            existing_regions(
                El1,
                root,
                entry.paging_type(),
                entry.mair,
                &ReadOnlyPages,
                DEFAULT_MAX_TABLE_PAGES,
            )
        }
    }
    .map_err(|e| alloc::format!("{e}"))?;
    let line = alloc::format!(
        "el={} regions={} mair={:#x} root={root:#x}",
        entry.el,
        regions.len(),
        entry.mair
    );
    Ok((regions, line))
}

/// A new, empty table of the current EL's regime and the firmware's VA size.
pub fn new_table(entry: &Entry) -> Result<Table, String> {
    Table::new(entry.el, entry.paging_type()).map_err(|e| alloc::format!("{e}"))
}

/// RAM the firmware's table does not map is mapped Writeback (AArch64 needs a cache type).
pub const RAM_CACHE: u64 = crate::model::uefi_attr::WB;

/// Installs `table` with the library's own install at the current EL and checks the
/// registers; failures.
pub fn install(table: &Table) -> usize {
    if let Err(error) = table.install_page_table() {
        crate::fail(&alloc::format!("install: {error}"));
    }
    let now = Entry::read();
    crate::txp!(
        "INSTALLED el={} regime={} mair={:#x} tcr={:#x} ttbr0={:#x} root={:#x} table_pages={}",
        now.el,
        table.regime(),
        now.mair,
        now.tcr,
        now.ttbr0,
        table.root(),
        table.table_pages()
    );
    let expected = table.install_request();
    let (mair, tcr, ttbr0) = match expected {
        InstallRequest::Aarch64 { mair, tcr, ttbr0 } => (mair, tcr, ttbr0),
        InstallRequest::Aarch64El2 { mair, tcr, ttbr0 } => (mair, tcr, ttbr0),
        _ => crate::fail("install request of another architecture"),
    };
    usize::from(now.mair != mair || now.tcr != tcr || now.ttbr0 != ttbr0)
}

/// Back to the firmware's table: TTBR0 first (the firmware's code is Normal memory under
/// either MAIR, while txpaging's Writeback index is Device under the firmware's), then MAIR
/// and TCR, then every translation of the regime invalidated; failures.
pub fn restore(entry: &Entry) -> usize {
    // SAFETY: the firmware's table is unchanged and maps everything it did at entry, under
    // a MAIR that keeps the running code Normal memory at every step.
    unsafe {
        cpu::write_ttbr0(entry.ttbr0);
        cpu::write_mair(entry.mair);
        cpu::write_tcr(entry.tcr);
    }
    cpu::flush_all();
    let now = Entry::read();
    crate::txp!(
        "RESTORED el={} mair={:#x} tcr={:#x} ttbr0={:#x}",
        now.el,
        now.mair,
        now.tcr,
        now.ttbr0
    );
    usize::from(now.mair != entry.mair || now.tcr != entry.tcr || now.ttbr0 != entry.ttbr0)
}

/// QEMU's monitor decodes no AArch64 table; the probes' `AT` walks compare the hardware's
/// walk with the model instead.
pub const MONITOR_CROSS_CHECK: bool = false;

/// A change that needs break-before-make (Arm ARM D8.14.1) on an entry mapping the code that
/// runs the commit would unmap that code mid-commit. txpaging refuses it when the range is
/// pinned: the page of this function and of the stack are pinned, a memory-type change of
/// the code page must fail with `PinnedRangeBreak` and leave its translation unchanged, and
/// a permission change on the pinned stack page (done in place, no break) must succeed.
/// Returns the failures.
pub fn pinned_ranges(table: &mut Table, model: &mut crate::model::Model) -> usize {
    use crate::model::{uefi_attr, Change};
    let code = pinned_ranges as *const () as u64 & !0xFFF;
    let marker = 0u64;
    let stack = &marker as *const u64 as u64 & !0xFFF;
    let pinned = table
        .pin_range(code, 0x1000)
        .and_then(|()| table.pin_range(stack, 0x1000));
    let before = table.translate(code);
    let attributes = before.map_or(0, |(_, a)| a.bits());
    let new_type = (attributes & !uefi_attr::CACHE) | uefi_attr::WT;
    let refused = table.protect_memory_region(code, 0x1000, txpaging::MemoryAttributes::from_bits_retain(new_type));
    let unchanged = table.translate(code) == before;
    let stack_attributes = model.expect(stack).map_or(0, |(_, a)| a & uefi_attr::ACCESS);
    let in_place = table.protect_memory_region(
        stack,
        0x1000,
        txpaging::MemoryAttributes::from_bits_retain(stack_attributes),
    );
    if in_place.is_ok() {
        model.push(Change::Protect {
            va: stack,
            size: 0x1000,
            attributes: stack_attributes,
        });
    }
    table.unpin_all();
    let ok = pinned.is_ok() && refused == Err(txpaging::PtError::PinnedRangeBreak) && unchanged && in_place.is_ok();
    crate::txp!(
        "PINNED code={code:#x} stack={stack:#x} memory_type_change={refused:?} translation_unchanged={} in_place_change_ok={}",
        u8::from(unchanged),
        u8::from(in_place.is_ok())
    );
    usize::from(!ok)
}

/// Drops every translation of the regime (on every core: TLBI ...IS).
pub fn flush_local() {
    cpu::flush_all();
}

/// Nothing to set for the probes on AArch64 (EL1/EL2 writes always honour AP[2]).
pub struct ProbeSetup;

impl ProbeSetup {
    pub fn enter() -> Self {
        Self
    }
}

global_asm!(
    r#"
    .text
    .global txp_call_on_stack
txp_call_on_stack:
    stp x29, x30, [sp, #-16]!
    mov x29, sp
    mov sp, x0
    blr x1
    mov sp, x29
    ldp x29, x30, [sp], #16
    ret
"#
);

extern "C" {
    fn txp_call_on_stack(top: u64, body: extern "C" fn() -> !) -> !;
}

extern "C" fn run_body() -> ! {
    crate::run()
}

/// Runs `crate::run` on the stack whose top is `top`.
///
/// # Safety
/// `top` must be the 16-byte aligned top of memory the application owns and no one else
/// uses, large enough for the run.
pub unsafe fn run_on_stack(top: u64) -> ! {
    // SAFETY: guaranteed by the caller; `run_body` never returns.
    unsafe { txp_call_on_stack(top, run_body) }
}
