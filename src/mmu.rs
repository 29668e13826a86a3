//! The MMU interface: TLB invalidation and table installation, real or recorded.
//!
//! On bare-metal and UEFI targets the default is the real instruction set of the
//! architecture. Everywhere else (host tests, tools) it is [`RecordingMmu`], which only
//! counts and logs what it would have done, so tests can assert on it.

use alloc::vec::Vec;
use core::cell::RefCell;

use txpaging_txn::{Barrier, PtError, Tlb};

/// What an MMU is asked to program when a table is installed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InstallRequest {
    /// X64: load CR3 with `root`, after programming IA32_PAT with `pat`.
    X64 {
        /// Physical address of the root table.
        root: u64,
        /// 5-level paging (CR4.LA57 must already be set).
        five_level: bool,
        /// The IA32_PAT value matching the encoding.
        pat: u64,
        /// Set IA32_EFER.NXE so ExecuteProtect (NX) is honoured.
        nx: bool,
    },
    /// AArch64 (EL1&0 regime): program MAIR_EL1, TCR_EL1 and TTBR0_EL1 with these values
    /// (see `txpaging::aarch64` for the sequence).
    Aarch64 {
        /// The MAIR_EL1 value matching the encoding ([`MAIR_LAYOUT`](crate::aarch64::MAIR_LAYOUT)).
        mair: u64,
        /// The TCR_EL1 value: TTBR0 walks of the table's size and granule, TTBR1 walks off.
        tcr: u64,
        /// The TTBR0_EL1 value: the root table's physical address, ASID 0.
        ttbr0: u64,
    },
    /// AArch64 (non-VHE EL2 regime): program MAIR_EL2, TCR_EL2 and TTBR0_EL2 with these values
    /// (see `txpaging::aarch64` for the sequence; it ends with `TLBI ALLE2IS`).
    Aarch64El2 {
        /// The MAIR_EL2 value matching the encoding ([`MAIR_LAYOUT`](crate::aarch64::MAIR_LAYOUT)).
        mair: u64,
        /// The TCR_EL2 value ([`tcr_el2`](crate::aarch64::tcr_el2)): HCR_EL2.E2H = 0 layout,
        /// PS rather than IPS, RES1 bits 31 and 23.
        tcr: u64,
        /// The TTBR0_EL2 value: the root table's physical address.
        ttbr0: u64,
    },
}

/// TLB maintenance plus installing a table. Implemented by the real MMU of a target
/// and by [`RecordingMmu`].
pub trait Mmu: Tlb {
    /// Makes the table described by `request` the active one.
    fn install(&self, request: &InstallRequest) -> Result<(), PtError>;
}

/// One operation a [`RecordingMmu`] saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MmuOp {
    /// Invalidate the page at this canonical virtual address.
    InvalidatePage(u64),
    /// Invalidate all translations.
    InvalidateAll,
    /// An ordering barrier.
    Barrier(Barrier),
    /// Install a table.
    Install(InstallRequest),
}

/// An MMU that records what it is asked to do and does nothing else.
#[derive(Debug, Default)]
pub struct RecordingMmu {
    log: RefCell<Vec<MmuOp>>,
}

impl RecordingMmu {
    /// An empty recorder.
    pub const fn new() -> Self {
        Self {
            log: RefCell::new(Vec::new()),
        }
    }

    /// Everything recorded so far, oldest first.
    pub fn log(&self) -> Vec<MmuOp> {
        self.log.borrow().clone()
    }

    /// Returns and clears the log.
    pub fn take_log(&self) -> Vec<MmuOp> {
        core::mem::take(&mut *self.log.borrow_mut())
    }

    /// Number of single-page invalidations recorded.
    pub fn page_invalidations(&self) -> usize {
        self.log
            .borrow()
            .iter()
            .filter(|op| matches!(op, MmuOp::InvalidatePage(_)))
            .count()
    }

    /// Number of full invalidations recorded.
    pub fn full_invalidations(&self) -> usize {
        self.log
            .borrow()
            .iter()
            .filter(|op| matches!(op, MmuOp::InvalidateAll))
            .count()
    }

    fn push(&self, op: MmuOp) {
        self.log.borrow_mut().push(op);
    }
}

impl Tlb for RecordingMmu {
    fn invalidate_page(&self, va: u64) {
        self.push(MmuOp::InvalidatePage(va));
    }

    fn invalidate_all(&self) {
        self.push(MmuOp::InvalidateAll);
    }

    fn barrier(&self, barrier: Barrier) {
        self.push(MmuOp::Barrier(barrier));
    }
}

impl Mmu for RecordingMmu {
    fn install(&self, request: &InstallRequest) -> Result<(), PtError> {
        self.push(MmuOp::Install(*request));
        Ok(())
    }
}
