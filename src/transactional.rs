//! [`TransactionalTable`]: the small interface the [`SharedTable`](crate::shared::SharedTable)
//! handle and the [`MappingService`](crate::service::MappingService) need from a page table,
//! so both work for every architecture the engine supports.

use core::fmt;

use txpaging_txn::{Committed, MemoryAttributes, Op, PageAllocator, Plan, PtError, Retired, TxnError};

use crate::arch::Arch;
use crate::mmu::Mmu;
use crate::table::PagingTable;
use crate::PageTable;

/// A page table whose changes are transactions of [`Op`]s.
///
/// Implemented by [`PagingTable`] for every [`Arch`] ([`X64PageTable`](crate::X64PageTable),
/// [`Aarch64PageTable`](crate::Aarch64PageTable), ...): a new architecture gets the shared
/// handle and the mapping service with its `Arch` impl. Other tables (for example one that
/// picks its regime at run time) implement these few methods on top of the engine's
/// `Transaction` (`extend` + `plan` / `commit_retiring`).
pub trait TransactionalTable {
    /// Whether the invalidations a commit issues already reach every CPU, and are complete,
    /// when the commit returns. Then no shootdown is needed and retired table pages can go
    /// back to the allocator at once.
    ///
    /// For a [`PagingTable`], its architecture's [`Arch::BROADCAST_INVALIDATION`]. X64:
    /// `false` (INVLPG and CR3 reloads act on the issuing CPU only; other CPUs need an IPI
    /// shootdown, SDM 4.10.5). AArch64: `true` (`TLBI VAE1IS` / `VMALLE1IS` reach every CPU
    /// of the Inner Shareable domain, Arm ARM TLBI register descriptions, and the commit of a
    /// live table waits for them with `DSB ISH`).
    const BROADCAST_INVALIDATION: bool;

    /// Dry run of `ops` as one transaction: what a commit would do, or its error.
    fn plan_ops(&mut self, ops: impl IntoIterator<Item = Op>) -> Result<Plan, TxnError>;

    /// Commits `ops` as one transaction, keeping the table pages it stops using
    /// ([`Committed::retired`]) for [`release_retired`](Self::release_retired).
    fn commit_ops(&mut self, ops: impl IntoIterator<Item = Op>) -> Result<Committed, TxnError>;

    /// Sets the protection policy (see [`PagingTable::set_policy`]). The default, for
    /// tables without one, accepts only [`Policy::off`](crate::Policy::off) and refuses any
    /// other with `InvalidParameter`.
    fn set_policy(&mut self, policy: crate::Policy) -> Result<(), PtError> {
        if policy.is_off() {
            Ok(())
        } else {
            Err(PtError::InvalidParameter)
        }
    }

    /// Gives retired table pages back to the allocator (once no CPU can walk them).
    fn release_retired(&mut self, retired: Retired);

    /// The attributes of `size` bytes at `address` (see [`PageTable::query_memory_region`]).
    fn query(&self, address: u64, size: u64) -> Result<MemoryAttributes, PtError>;

    /// Writes the dump of `size` bytes at `address` to `out` (see [`PageTable::dump_page_tables`]).
    fn dump_to(&self, out: &mut dyn fmt::Write, address: u64, size: u64) -> Result<(), PtError>;
}

impl<A: Arch, P: PageAllocator, M: Mmu> TransactionalTable for PagingTable<A, P, M> {
    const BROADCAST_INVALIDATION: bool = A::BROADCAST_INVALIDATION;

    fn plan_ops(&mut self, ops: impl IntoIterator<Item = Op>) -> Result<Plan, TxnError> {
        self.transaction().extend(ops).plan()
    }

    fn commit_ops(&mut self, ops: impl IntoIterator<Item = Op>) -> Result<Committed, TxnError> {
        self.transaction().extend(ops).commit_retiring()
    }

    fn release_retired(&mut self, retired: Retired) {
        self.release(retired)
    }

    fn set_policy(&mut self, policy: crate::Policy) -> Result<(), PtError> {
        self.set_policy(policy)
    }

    fn query(&self, address: u64, size: u64) -> Result<MemoryAttributes, PtError> {
        self.query_memory_region(address, size)
    }

    fn dump_to(&self, out: &mut dyn fmt::Write, address: u64, size: u64) -> Result<(), PtError> {
        PagingTable::dump_to(self, out, address, size)
    }
}
