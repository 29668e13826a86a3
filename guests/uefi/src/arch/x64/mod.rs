//! X64 under OVMF (q35): CR3, IA32_PAT and IA32_EFER; COM1; isa-debug-exit; the IDT probes;
//! MP services with a polled shootdown.

pub mod cpu;
pub mod mp;
pub mod probe;

use alloc::string::String;
use alloc::vec::Vec;
use core::arch::global_asm;

use txpaging::x64::existing::ExistingLayout;
use txpaging::x64::{X64Config, X64Mmu, X64PageTable};
use txpaging::{MappedRegion, PageTable, PagingType, RecordingMmu};

use crate::mmu::{AppMmu, MmuState};
use crate::pages::{FirmwarePages, ReadOnlyPages};

pub const NAME: &str = "x64";
/// The table under test.
pub type Table = X64PageTable<FirmwarePages, AppMmu<X64Mmu>>;

pub use cpu::{disable_interrupts, restore_interrupts};

/// The MMU's counters and invalidation switch.
pub fn mmu_state(table: &Table) -> &MmuState {
    &table.mmu().state
}

/// This CPU's local APIC ID.
pub fn cpu_id() -> u32 {
    cpu::apic_id()
}

/// Probed in every run besides the random addresses (none on q35).
pub const ALWAYS_PROBED: &[u64] = &[];

/// MMIO on q35 that reads without side effects: local APIC, IOAPIC, HPET, flash, ECAM.
pub const QUIET_MMIO: &[(u64, u64)] = &[
    (0xFEE0_0000, 0xFEE0_1000),
    (0xFEC0_0000, 0xFEC0_1000),
    (0xFED0_0000, 0xFED0_1000),
    (0xFFC0_0000, 0x1_0000_0000),
    (0xB000_0000, 0xC000_0000),
];
/// Above RAM and this, no device decodes addresses on this machine (no 64-bit BARs).
pub const UNASSIGNED_FROM: u64 = 0x1_0000_0000;

const COM1: u16 = 0x3F8;
const LINE_STATUS: u16 = COM1 + 5;

/// Sends one byte on COM1 (already set up by OVMF).
pub fn uart_put(byte: u8) {
    while cpu::inb(LINE_STATUS) & (1 << 5) == 0 {
        core::hint::spin_loop();
    }
    cpu::outb(COM1, byte);
}

/// A byte from COM1, if one came.
pub fn uart_get() -> Option<u8> {
    (cpu::inb(LINE_STATUS) & 1 != 0).then(|| cpu::inb(COM1))
}

/// The time-stamp counter, and about how fast QEMU's TCG advances it.
pub fn ticks() -> u64 {
    // SAFETY: RDTSC only reads the time-stamp counter.
    unsafe { core::arch::x86_64::_rdtsc() }
}
pub const TICKS_PER_SECOND: u64 = 2_000_000_000;

/// Ends the run through isa-debug-exit: QEMU exits with `(code << 1) | 1`, 0x21 for a pass.
pub fn exit(pass: bool) -> ! {
    cpu::qemu_exit(if pass { 0x10 } else { 0x11 })
}

/// Fills `page` with `ret` (0xC3).
pub fn fill_with_returns(page: &mut [u8]) {
    page.fill(0xC3);
}

/// The offset of a `ret` byte in `page`: any 0xC3 byte is a `ret` when jumped to.
pub fn find_return(page: &[u8]) -> Option<usize> {
    page.iter().position(|&b| b == 0xC3)
}

/// Instruction fetches see data stores at once on X64 (SDM Vol. 3A, 11.6).
pub fn sync_instructions(_address: u64, _size: u64) {}

/// The firmware's registers at entry.
#[derive(Debug, Clone, Copy)]
pub struct Entry {
    cr0: u64,
    cr3: u64,
    cr4: u64,
    pat: u64,
    efer: u64,
}

impl Entry {
    pub fn read() -> Self {
        Self {
            cr0: cpu::read_cr0(),
            cr3: cpu::read_cr3(),
            cr4: cpu::read_cr4(),
            pat: cpu::read_msr(cpu::IA32_PAT),
            efer: cpu::read_msr(cpu::IA32_EFER),
        }
    }

    pub fn report(&self) {
        crate::txp!(
            "ENTRY cr0={:#x} cr3={:#x} cr4={:#x} pat={:#x} efer={:#x} wp={}",
            self.cr0,
            self.cr3,
            self.cr4,
            self.pat,
            self.efer,
            u8::from(self.cr0 & cpu::CR0_WP != 0)
        );
    }

    fn paging_type(&self) -> PagingType {
        if self.cr4 & (1 << 12) != 0 {
            PagingType::Paging5Level
        } else {
            PagingType::Paging4Level
        }
    }

    /// A seed for the probe addresses that differs between boots.
    pub fn seed(&self) -> u64 {
        self.cr3 ^ ticks()
    }
}

/// The firmware's live table (CR3), adopted under the IA32_PAT in force: its mapped
/// regions and a summary line.
pub fn adopt(entry: &Entry) -> Result<(Vec<MappedRegion>, String), String> {
    let layout = ExistingLayout::current();
    // SAFETY: CR3 holds the firmware's live table, identity mapped; nothing changes it while
    // this application reads it (it only calls boot services that do not remap).
    let (firmware, summary) = unsafe {
        X64PageTable::from_existing_with_layout(
            entry.cr3 & 0x000F_FFFF_FFFF_F000,
            ReadOnlyPages,
            entry.paging_type(),
            X64Config::detect(),
            RecordingMmu::new(),
            layout,
        )
    }
    .map_err(|e| alloc::format!("{e}"))?;
    let regions: Vec<MappedRegion> = firmware.regions().collect();
    let line = alloc::format!(
        "tables={} leaves={} global_leaves={} regions={} max_phys_bits={} pat={:#x}",
        summary.table_pages,
        summary.leaves,
        summary.global_leaves,
        regions.len(),
        layout.max_phys_bits,
        layout.pat
    );
    Ok((regions, line))
}

/// A new, empty table in the firmware's paging mode.
pub fn new_table(entry: &Entry) -> Result<Table, String> {
    X64PageTable::with_mmu(
        FirmwarePages::new(),
        entry.paging_type(),
        X64Config::detect(),
        AppMmu::new(X64Mmu::new()),
    )
    .map_err(|e| alloc::format!("{e}"))
}

/// What the firmware's memory map calls data is mapped without a cache attribute on X64
/// (the PAT index the firmware uses, WB), and MMIO as `Uncached`.
pub const RAM_CACHE: u64 = 0;

/// Installs `table` with the library's own install and checks the registers; failures.
pub fn install(table: &Table) -> usize {
    if let Err(error) = table.install_page_table() {
        crate::fail(&alloc::format!("install: {error}"));
    }
    let now = Entry::read();
    crate::txp!(
        "INSTALLED cr3={:#x} pat={:#x} efer={:#x} root={:#x} table_pages={}",
        now.cr3,
        now.pat,
        now.efer,
        table.root(),
        table.table_pages()
    );
    let mut failures = 0;
    if now.cr3 & 0x000F_FFFF_FFFF_F000 != table.root() || now.pat != txpaging::x64::PAT_LAYOUT {
        failures += 1;
        crate::txp!("MISMATCH install registers");
    }
    if now.efer & (1 << 11) == 0 {
        failures += 1;
        crate::txp!("MISMATCH EFER.NXE clear after install");
    }
    failures
}

/// Back to the firmware's table and PAT; failures.
pub fn restore(entry: &Entry) -> usize {
    // SAFETY: the firmware's table is unchanged and maps everything it did at entry; its PAT
    // goes back first so no translation is cached with a mixed layout after the CR3 load.
    unsafe {
        cpu::write_msr(cpu::IA32_PAT, entry.pat);
        cpu::write_cr3(entry.cr3);
    }
    let now = Entry::read();
    crate::txp!("RESTORED cr3={:#x} pat={:#x}", now.cr3, now.pat);
    usize::from(now.cr3 != entry.cr3 || now.pat != entry.pat)
}

/// QEMU's monitor decodes X64 tables (`info tlb`, `info mem`).
pub const MONITOR_CROSS_CHECK: bool = true;

/// X64 changes entries in place (no break-before-make), so nothing is pinned.
pub fn pinned_ranges(_table: &mut Table, _model: &mut crate::model::Model) -> usize {
    0
}

/// Drops every translation this CPU cached.
pub fn flush_local() {
    cpu::reload_cr3();
}

/// CR0.WP set for the probes (supervisor writes honour read-only pages, SDM 4.6.1), put
/// back as the firmware had it on drop.
pub struct ProbeSetup(u64);

impl ProbeSetup {
    pub fn enter() -> Self {
        let cr0 = cpu::read_cr0();
        // SAFETY: WP only makes supervisor writes honour R/W; the probes expect that.
        unsafe { cpu::write_cr0(cr0 | cpu::CR0_WP) };
        Self(cr0)
    }
}

impl Drop for ProbeSetup {
    fn drop(&mut self) {
        // SAFETY: restores the firmware's CR0.
        unsafe { cpu::write_cr0(self.0) };
    }
}

global_asm!(
    r#"
    .text
    .global txp_call_on_stack
txp_call_on_stack:
    push rbp
    mov rbp, rsp
    mov rsp, rdi
    call rsi
    mov rsp, rbp
    pop rbp
    ret
"#
);

extern "sysv64" {
    fn txp_call_on_stack(top: u64, body: extern "sysv64" fn() -> !) -> !;
}

extern "sysv64" fn run_body() -> ! {
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
