//! The table under test on AArch64: one type for both regimes, since the application learns
//! at run time whether AAVMF runs it at EL1 (EL1&0 regime, TTBR0_EL1) or EL2 (TTBR0_EL2).
//! Every method forwards to txpaging's table of that regime.

use core::fmt;

use txpaging::aarch64::{Aarch64Config, Aarch64Mmu, Aarch64PageTable, El1, El2};
use txpaging::{
    Committed, InstallRequest, MemoryAttributes, Op, PageTable, PagingType, Plan, PtError, Retired, TransactionalTable,
    TxnError,
};

use crate::mmu::{AppMmu, MmuState};
use crate::pages::FirmwarePages;

pub enum Table {
    El1(Aarch64PageTable<FirmwarePages, AppMmu<Aarch64Mmu<El1>>, El1>),
    El2(Aarch64PageTable<FirmwarePages, AppMmu<Aarch64Mmu<El2>>, El2>),
}

macro_rules! each {
    ($table:expr, $t:ident => $body:expr) => {
        match $table {
            Table::El1($t) => $body,
            Table::El2($t) => $body,
        }
    };
}

impl Table {
    /// An empty table of the regime of `el` (1 or 2).
    pub fn new(el: u64, paging_type: PagingType) -> Result<Self, PtError> {
        let config = Aarch64Config::detect();
        Ok(if el == 2 {
            Table::El2(Aarch64PageTable::with_regime(
                FirmwarePages::new(),
                paging_type,
                config,
                AppMmu::new(Aarch64Mmu::for_regime(El2)),
                El2,
            )?)
        } else {
            Table::El1(Aarch64PageTable::with_regime(
                FirmwarePages::new(),
                paging_type,
                config,
                AppMmu::new(Aarch64Mmu::for_regime(El1)),
                El1,
            )?)
        })
    }

    pub fn regime(&self) -> &'static str {
        each!(self, t => t.regime())
    }

    pub fn root(&self) -> u64 {
        each!(self, t => t.root())
    }

    pub fn table_pages(&self) -> usize {
        each!(self, t => t.table_pages())
    }

    pub fn install_request(&self) -> InstallRequest {
        each!(self, t => t.install_request())
    }

    /// The MMU's counters and invalidation switch.
    pub fn mmu_state(&self) -> &MmuState {
        each!(self, t => &t.mmu().state)
    }

    pub fn allocator(&self) -> &FirmwarePages {
        each!(self, t => t.allocator())
    }

    pub fn allocator_mut(&mut self) -> &mut FirmwarePages {
        each!(self, t => t.allocator_mut())
    }

    pub fn translate(&self, va: u64) -> Option<(u64, MemoryAttributes)> {
        each!(self, t => t.translate(va))
    }

    pub fn map_aliased_memory_region(
        &mut self,
        va: u64,
        pa: u64,
        size: u64,
        attributes: MemoryAttributes,
    ) -> Result<(), PtError> {
        each!(self, t => t.map_aliased_memory_region(va, pa, size, attributes))
    }

    pub fn protect_memory_region(&mut self, va: u64, size: u64, attributes: MemoryAttributes) -> Result<(), PtError> {
        each!(self, t => t.protect_memory_region(va, size, attributes))
    }

    /// Declares a range that a commit on the live table must never break (the code, stack
    /// and tables running it).
    pub fn pin_range(&mut self, address: u64, size: u64) -> Result<(), PtError> {
        each!(self, t => t.pin_range(address, size))
    }

    /// Removes every pinned range.
    pub fn unpin_all(&mut self) {
        each!(self, t => t.unpin_all())
    }
}

impl PageTable for Table {
    fn map_memory_region(&mut self, address: u64, size: u64, attributes: MemoryAttributes) -> Result<(), PtError> {
        each!(self, t => t.map_memory_region(address, size, attributes))
    }

    fn unmap_memory_region(&mut self, address: u64, size: u64) -> Result<(), PtError> {
        each!(self, t => t.unmap_memory_region(address, size))
    }

    fn install_page_table(&self) -> Result<(), PtError> {
        each!(self, t => t.install_page_table())
    }

    fn query_memory_region(&self, address: u64, size: u64) -> Result<MemoryAttributes, PtError> {
        each!(self, t => t.query_memory_region(address, size))
    }

    fn dump_page_tables(&self, address: u64, size: u64) {
        each!(self, t => t.dump_page_tables(address, size))
    }
}

impl TransactionalTable for Table {
    const BROADCAST_INVALIDATION: bool = true;

    fn plan_ops(&mut self, ops: impl IntoIterator<Item = Op>) -> Result<Plan, TxnError> {
        each!(self, t => t.plan_ops(ops))
    }

    fn commit_ops(&mut self, ops: impl IntoIterator<Item = Op>) -> Result<Committed, TxnError> {
        each!(self, t => t.commit_ops(ops))
    }

    fn release_retired(&mut self, retired: Retired) {
        each!(self, t => t.release_retired(retired))
    }

    fn query(&self, address: u64, size: u64) -> Result<MemoryAttributes, PtError> {
        each!(self, t => TransactionalTable::query(t, address, size))
    }

    fn dump_to(&self, out: &mut dyn fmt::Write, address: u64, size: u64) -> Result<(), PtError> {
        each!(self, t => TransactionalTable::dump_to(t, out, address, size))
    }
}
