//! # txpaging
//!
//! Page tables for firmware, where every change is a transaction: X64 (4- and 5-level) and
//! AArch64 (4 KiB granule, 3- and 4-level) built, changed, inspected and installed through
//! the familiar [`PageTable`] API, with batched [`Transaction`]s underneath.
//!
//! ```
//! use txpaging::{MemoryAttributes, PageAllocator, PageTable, PagingType, PtError, X64PageTable};
//!
//! /// One table page: 4 KiB, aligned to 4 KiB as every page table must be.
//! #[repr(C, align(4096))]
//! struct Page([u8; 4096]);
//!
//! /// Table pages from the heap. A firmware allocator calls its page services instead
//! /// (see [`PageAllocator`]).
//! struct HeapPages;
//!
//! impl PageAllocator for HeapPages {
//!     fn allocate_page(&mut self, align: u64, size: u64) -> Result<u64, PtError> {
//!         // `Page` is 4 KiB aligned: enough for any alignment that divides 4 KiB.
//!         if size != 4096 || align == 0 || 4096 % align != 0 {
//!             return Err(PtError::InvalidParameter);
//!         }
//!         Ok(Box::into_raw(Box::new(Page([0; 4096]))) as u64)
//!     }
//!
//!     // Implement it: the default keeps (leaks) every page the table gives back.
//!     fn free_page(&mut self, address: u64, _size: u64) {
//!         // SAFETY: `address` came from `allocate_page`, which leaked a `Box<Page>` there.
//!         drop(unsafe { Box::from_raw(address as *mut Page) });
//!     }
//! }
//!
//! let mut table = X64PageTable::new(HeapPages, PagingType::Paging4Level)?;
//! table.map_memory_region(0x20_0000, 0x40_0000, MemoryAttributes::Writeback)?;
//!
//! // Several changes, one plan, one commit, one invalidation batch.
//! let report = table
//!     .transaction()
//!     .protect(0x20_0000, 0x1000, MemoryAttributes::ReadOnly)
//!     .protect(0x40_0000, 0x2000, MemoryAttributes::ExecuteProtect)
//!     .commit()?;
//! assert_eq!(report.tables_allocated, 2); // the two 2 MiB pages were split
//! assert_eq!(
//!     table.query_memory_region(0x20_0000, 0x1000)?,
//!     MemoryAttributes::ReadOnly | MemoryAttributes::Writeback
//! );
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![no_std]
#![deny(missing_docs)]
#![deny(clippy::undocumented_unsafe_blocks)]
#![deny(unsafe_op_in_unsafe_fn)]

extern crate alloc;

pub mod aarch64;
pub mod arch;
mod dump;
pub mod mmu;
pub mod pool;
pub mod service;
pub mod shared;
pub mod table;
pub mod transactional;
pub mod x64;

pub use aarch64::{AArch64PageTable, Aarch64Config, Aarch64PageTable};
pub use arch::Arch;
pub use mmu::{InstallRequest, Mmu, MmuOp, RecordingMmu};
pub use pool::PagePool;
pub use service::{MappingService, RequestReport};
pub use shared::{SharedCommitReport, SharedTable};
pub use table::PagingTable;
pub use transactional::TransactionalTable;
pub use txpaging_txn::{
    Audit, AuditRange, Barrier, Blame, Codec, CommitReport, Committed, Entry, FinalState, FlushBatch, Geometry, Hex,
    MappedRegion, MemoryAttributes, MemoryMapEntry, Op, PageAllocator, Plan, PlannedRange, Policy, PtError, Reason,
    Regions, Retired, Rule, Rules, Tables, Tlb, Transaction, TxnError, PAGE_SIZE,
};
pub use x64::{X64Config, X64PageTable};

/// The README's code blocks, compiled and run as doc tests so they cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeExamples;

/// The porting guide's "after" code blocks, compiled and run as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../docs/porting.md")]
struct PortingGuideExamples;

/// What a familiar one-op call returns for a failed commit: the seed's code. The full error
/// (op range, address, rule) is logged with `log::warn!` and kept for `last_error()`.
#[cold]
pub(crate) fn familiar_error(error: TxnError) -> PtError {
    log::warn!("txpaging: {error}");
    error.error
}

/// The paging mode of a table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PagingType {
    /// Three levels (AArch64, 4 KiB granule, TCR_EL1.T0SZ = 25): 39-bit virtual addresses.
    /// X64 has no such mode (`UnsupportedPagingType`).
    Paging3Level,
    /// Four levels: 48-bit virtual addresses.
    Paging4Level,
    /// Five levels (X64 LA57): 57-bit virtual addresses. AArch64 has no such mode with the
    /// 4 KiB granule (`UnsupportedPagingType`).
    Paging5Level,
}

/// The familiar page-table interface. Each method is a one-op [`Transaction`].
pub trait PageTable {
    /// Maps `size` bytes at `address` (VA == PA) with `attributes`, whatever was mapped
    /// there before. Accepts `ExecuteProtect`, `ReadOnly`, `ReadProtect` and one cache
    /// attribute (`Uncached`, `WriteCombining`, `WriteThrough`, `Writeback`,
    /// `UncachedExport`, `WriteProtect`); on X64 the cache attribute may be omitted, on
    /// AArch64 exactly one is required.
    ///
    /// ## Errors
    /// Range errors, `IncompatibleMemoryAttributes`, `InvalidParameter` for unknown bits,
    /// or the allocator's error. On error the table is unchanged. The code is the seed's;
    /// the full error (the rule, the first failing address) is logged with `log::warn!`
    /// and kept: `last_error()` on [`X64PageTable`] and [`Aarch64PageTable`].
    fn map_memory_region(&mut self, address: u64, size: u64, attributes: MemoryAttributes) -> Result<(), PtError>;

    /// Unmaps `size` bytes at `address`. The whole range must be mapped (else
    /// `NoMapping`); it need not be mapped uniformly.
    fn unmap_memory_region(&mut self, address: u64, size: u64) -> Result<(), PtError>;

    /// Makes this table the active one (on X64: IA32_PAT, EFER.NXE, CR3; on AArch64:
    /// MAIR_EL1, TCR_EL1, TTBR0_EL1). The table must map the running code, stack and data.
    fn install_page_table(&self) -> Result<(), PtError>;

    /// Returns the attributes of `size` bytes at `address` if the whole range is mapped
    /// with the same attributes: `NoMapping` if any page is unmapped,
    /// `NonUniformMemoryAttributes` if they differ.
    fn query_memory_region(&self, address: u64, size: u64) -> Result<MemoryAttributes, PtError>;

    /// Logs (`log::info!`) every entry on the walk of `size` bytes at `address`: bit
    /// columns, one row per entry, with the part of the range it covers (clipped to the
    /// range asked for, as in the seed's example), and one `not mapped` row for each run of
    /// the range that no entry maps. A legend under the column names says which rows each
    /// name applies to. [`X64PageTable::dump_to`] writes the same to any `fmt::Write`.
    fn dump_page_tables(&self, address: u64, size: u64);
}
