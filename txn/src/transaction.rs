//! `Transaction`: queued ops, planned as a whole, committed all or nothing (`commit`).

use smallvec::SmallVec;

use crate::allocator::PageAllocator;
use crate::attributes::MemoryAttributes;
use crate::codec::Codec;
use crate::error::TxnError;
use crate::op::Op;
use crate::report::{CommitReport, Committed, Plan};
use crate::table::Tables;
use crate::tlb::Tlb;

/// A set of ops on one table, applied together by [`commit`](Self::commit).
///
/// Ops apply in queue order; where they overlap the later one wins. An unmap or protect
/// needs its whole range mapped at that point of the sequence.
///
/// ```
/// use txpaging::{
///     FinalState, MemoryAttributes as A, PagePool, PageTable, PagingType, PtError, Reason, X64PageTable,
/// };
///
/// let mut table = X64PageTable::new(PagePool::new(16), PagingType::Paging4Level)?;
/// table.map_memory_region(0, 0x40_0000, A::Writeback)?; // two 2 MiB pages
///
/// let mut txn = table.transaction();
/// txn.protect(0x10_0000, 0x4_0000, A::ReadOnly) // code: read-only
///     .protect(0, 0x1000, A::ReadProtect) // NULL page: not present
///     .unmap(0x20_0000, 0x20_0000); // the second 2 MiB
///
/// // Dry run: what the commit will do. Nothing changes yet.
/// let plan = txn.plan()?;
/// assert_eq!(plan.tables_to_allocate, 1); // the first 2 MiB page splits
/// assert_eq!(plan.ranges[0].va, 0);
/// assert_eq!(plan.ranges.last().unwrap().state, FinalState::Unmapped);
/// assert_eq!(table.query_memory_region(0, 0x1000), Ok(A::Writeback)); // still unchanged
///
/// // Commit: all or nothing, one invalidation batch.
/// let report = table
///     .transaction()
///     .protect(0x10_0000, 0x4_0000, A::ReadOnly)
///     .protect(0, 0x1000, A::ReadProtect)
///     .unmap(0x20_0000, 0x20_0000)
///     .commit()?;
/// assert_eq!(report.tables_allocated, 1);
/// assert_eq!(table.query_memory_region(0x10_0000, 0x4_0000)?, A::Writeback | A::ReadOnly);
///
/// // A failing op: nothing is applied, and the error names the op, the address, the rule.
/// let error = table
///     .transaction()
///     .protect(0x10_0000, 0x1000, A::ExecuteProtect)
///     .unmap(0x1F_F000, 0x2000) // 0x200000 was unmapped above
///     .commit()
///     .unwrap_err();
/// assert_eq!((error.op, error.error), (Some(1), PtError::NoMapping));
/// assert_eq!((error.reason, error.address), (Reason::NotMapped, Some(0x20_0000)));
/// assert_eq!(
///     error.to_string(),
///     "op 1 (0x1ff000, size 0x2000) failed at 0x200000: part of the range is not mapped: \
///      nothing is mapped there; unmap and protect need the whole range mapped"
/// );
/// assert_eq!(table.query_memory_region(0x10_0000, 0x1000)?, A::Writeback | A::ReadOnly);
/// # Ok::<(), Box<dyn core::error::Error>>(())
/// ```
pub struct Transaction<'t, C: Codec, P: PageAllocator, T: Tlb> {
    table: &'t mut Tables<C, P, T>,
    ops: SmallVec<[Op; 1]>,
}

impl<'t, C: Codec, P: PageAllocator, T: Tlb> Transaction<'t, C, P, T> {
    pub(crate) fn new(table: &'t mut Tables<C, P, T>) -> Self {
        Self {
            table,
            ops: SmallVec::new(),
        }
    }

    /// Queues an identity map (VA == PA) of `size` bytes at `address`.
    pub fn map(&mut self, address: u64, size: u64, attributes: MemoryAttributes) -> &mut Self {
        self.push(Op::Map {
            va: address,
            pa: address,
            size,
            attributes,
        })
    }

    /// Queues a map of `size` bytes at virtual `va` to physical `pa`.
    pub fn map_aliased(&mut self, va: u64, pa: u64, size: u64, attributes: MemoryAttributes) -> &mut Self {
        self.push(Op::Map {
            va,
            pa,
            size,
            attributes,
        })
    }

    /// Queues an unmap of `size` bytes at `address`.
    pub fn unmap(&mut self, address: u64, size: u64) -> &mut Self {
        self.push(Op::Unmap { va: address, size })
    }

    /// Queues a change of attributes of `size` mapped bytes at `address`.
    pub fn protect(&mut self, address: u64, size: u64, attributes: MemoryAttributes) -> &mut Self {
        self.push(Op::Protect {
            va: address,
            size,
            attributes,
        })
    }

    /// Queues any op.
    pub fn push(&mut self, op: Op) -> &mut Self {
        self.ops.push(op);
        self
    }

    /// Queues several ops, in order.
    pub fn extend(&mut self, ops: impl IntoIterator<Item = Op>) -> &mut Self {
        self.ops.extend(ops);
        self
    }

    /// The queued ops.
    pub fn ops(&self) -> &[Op] {
        &self.ops
    }

    /// Dry run: what a commit would do, or the error it would return. Changes nothing.
    pub fn plan(&self) -> Result<Plan, TxnError> {
        crate::commit::plan(self.table, &self.ops)
    }

    /// Validates every op, allocates every table page needed, then applies all ops and
    /// issues one invalidation batch. On error nothing changed and every page taken was
    /// given back. Either way the queue is empty afterwards, ready for the next batch.
    pub fn commit(&mut self) -> Result<CommitReport, TxnError> {
        let committed = self.commit_retiring()?;
        self.table.release(committed.retired);
        Ok(committed.report)
    }

    /// Like [`commit`](Self::commit), but keeps the table pages the commit stopped using
    /// instead of freeing them, for tables other CPUs may be walking: shoot down their
    /// TLBs for `invalidations`, then pass `retired` to [`Tables::release`].
    pub fn commit_retiring(&mut self) -> Result<Committed, TxnError> {
        let result = crate::commit::commit(self.table, &self.ops);
        self.ops.clear();
        result
    }
}

impl<C: Codec, P: PageAllocator, T: Tlb> Tables<C, P, T> {
    /// Starts a transaction on this table.
    pub fn transaction(&mut self) -> Transaction<'_, C, P, T> {
        Transaction::new(self)
    }
}
