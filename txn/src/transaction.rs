//! `Transaction`: queued ops, planned as a whole, committed all or nothing.

use core::fmt;

use smallvec::SmallVec;

use crate::allocator::PageAllocator;
use crate::apply::{apply, give_back, Pages};
use crate::attributes::MemoryAttributes;
use crate::codec::Codec;
use crate::error::{Blame, Fault, PtError, Reason, TxnError};
use crate::geometry::Geometry;
use crate::hex::{Hex, HexList};
use crate::overlay::{Action, Change, Overlay};
use crate::plan::{Recorded, Walk, WalkError};
use crate::table::{allocate_table_page, Tables};
use crate::tlb::{FlushBatch, Tlb};

/// One queued request. `Debug` prints addresses and sizes in hex.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// Map `size` bytes at virtual `va` to physical `pa`.
    Map {
        /// Virtual address.
        va: u64,
        /// Physical address.
        pa: u64,
        /// Bytes.
        size: u64,
        /// Attributes of the new mapping.
        attributes: MemoryAttributes,
    },
    /// Unmap `size` bytes at `va` (all must be mapped).
    Unmap {
        /// Virtual address.
        va: u64,
        /// Bytes.
        size: u64,
    },
    /// Change the attributes of `size` mapped bytes at `va`, keeping output addresses.
    Protect {
        /// Virtual address.
        va: u64,
        /// Bytes.
        size: u64,
        /// New access bits, and the new cache type if one is given.
        attributes: MemoryAttributes,
    },
}

impl Op {
    /// The op's virtual address.
    pub const fn va(&self) -> u64 {
        match *self {
            Op::Map { va, .. } | Op::Unmap { va, .. } | Op::Protect { va, .. } => va,
        }
    }

    /// The op's size in bytes.
    pub const fn size(&self) -> u64 {
        match *self {
            Op::Map { size, .. } | Op::Unmap { size, .. } | Op::Protect { size, .. } => size,
        }
    }
}

/// What a range becomes, as the plan reports it. `Debug` prints `pa` in hex.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum FinalState {
    /// Mapped to `pa` with `attributes`.
    Mapped {
        /// Physical address of the range's first byte.
        pa: u64,
        /// Attributes.
        attributes: MemoryAttributes,
    },
    /// Unmapped.
    Unmapped,
    /// Output addresses kept; each page gets `attributes` (keeping its cache type when
    /// `attributes` names none).
    Reprotected {
        /// The change.
        attributes: MemoryAttributes,
    },
}

/// A touched range and its final state. `Debug` prints `va` and `size` in hex.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct PlannedRange {
    /// Canonical virtual address.
    pub va: u64,
    /// Bytes.
    pub size: u64,
    /// What it becomes.
    pub state: FinalState,
}

/// The result of a dry run. `Debug` prints addresses in hex, counts in decimal.
#[derive(Clone, PartialEq, Eq)]
pub struct Plan {
    /// Every touched range with its final state, sorted by linear address.
    pub ranges: alloc::vec::Vec<PlannedRange>,
    /// Entry stores the commit would make (512 for each new table).
    pub entries_to_write: usize,
    /// Table pages the commit would allocate.
    pub tables_to_allocate: usize,
    /// Table pages the commit would free.
    pub tables_to_free: usize,
    /// Pages the commit would invalidate one by one.
    pub pages_to_invalidate: alloc::vec::Vec<u64>,
    /// Whether the commit would flush the whole TLB instead.
    pub full_flush: bool,
    /// Live entries the commit would break before changing (break-before-make).
    pub breaks: usize,
}

/// What a commit did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CommitReport {
    /// 64-bit entry stores (512 for each new table).
    pub entries_written: usize,
    /// Table pages allocated.
    pub tables_allocated: usize,
    /// Table pages given back to the allocator.
    pub tables_freed: usize,
    /// Single-page invalidations issued.
    pub pages_invalidated: usize,
    /// Full TLB flushes issued (0, 1, or 2 with break-before-make).
    pub full_flushes: usize,
    /// Live entries broken (stored invalid, invalidated) before their new value.
    pub breaks: usize,
    /// Invalidation batches issued: the one after the stores, plus one after the breaks.
    pub invalidation_batches: usize,
}

impl CommitReport {
    /// Adds another report's counts to this one.
    pub fn accumulate(&mut self, other: &CommitReport) {
        self.entries_written += other.entries_written;
        self.tables_allocated += other.tables_allocated;
        self.tables_freed += other.tables_freed;
        self.pages_invalidated += other.pages_invalidated;
        self.full_flushes += other.full_flushes;
        self.breaks += other.breaks;
        self.invalidation_batches += other.invalidation_batches;
    }
}

/// Table pages a commit stopped using, not yet given back to the allocator.
#[must_use = "retired pages leak unless passed to Tables::release"]
#[derive(Default)]
pub struct Retired {
    pub(crate) pages: SmallVec<[u64; 2]>,
}

impl Retired {
    /// Physical addresses of the retired table pages.
    pub fn pages(&self) -> &[u64] {
        &self.pages
    }
}

impl fmt::Debug for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Op::Map {
                va,
                pa,
                size,
                attributes,
            } => f
                .debug_struct("Map")
                .field("va", &Hex(va))
                .field("pa", &Hex(pa))
                .field("size", &Hex(size))
                .field("attributes", &attributes)
                .finish(),
            Op::Unmap { va, size } => f
                .debug_struct("Unmap")
                .field("va", &Hex(va))
                .field("size", &Hex(size))
                .finish(),
            Op::Protect { va, size, attributes } => f
                .debug_struct("Protect")
                .field("va", &Hex(va))
                .field("size", &Hex(size))
                .field("attributes", &attributes)
                .finish(),
        }
    }
}

impl fmt::Debug for FinalState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            FinalState::Mapped { pa, attributes } => f
                .debug_struct("Mapped")
                .field("pa", &Hex(pa))
                .field("attributes", &attributes)
                .finish(),
            FinalState::Unmapped => f.write_str("Unmapped"),
            FinalState::Reprotected { attributes } => {
                f.debug_struct("Reprotected").field("attributes", &attributes).finish()
            }
        }
    }
}

impl fmt::Debug for PlannedRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PlannedRange")
            .field("va", &Hex(self.va))
            .field("size", &Hex(self.size))
            .field("state", &self.state)
            .finish()
    }
}

impl fmt::Debug for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Plan")
            .field("ranges", &self.ranges)
            .field("entries_to_write", &self.entries_to_write)
            .field("tables_to_allocate", &self.tables_to_allocate)
            .field("tables_to_free", &self.tables_to_free)
            .field("pages_to_invalidate", &HexList(&self.pages_to_invalidate))
            .field("full_flush", &self.full_flush)
            .field("breaks", &self.breaks)
            .finish()
    }
}

impl fmt::Debug for Retired {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Retired").field("pages", &HexList(&self.pages)).finish()
    }
}

/// The outcome of [`Transaction::commit_retiring`].
#[derive(Debug)]
pub struct Committed {
    /// What the commit did.
    pub report: CommitReport,
    /// The invalidations issued on this CPU (other CPUs need the same).
    pub invalidations: FlushBatch,
    /// Table pages to give back once no CPU can walk them.
    pub retired: Retired,
}

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
        let overlay = self.fold()?;
        let geometry = self.table.geometry();
        let walk = self.dry_run(&overlay)?;
        self.check_policy(&overlay)?;
        let ranges = overlay
            .segments()
            .iter()
            .map(|s| PlannedRange {
                va: geometry.to_canonical(s.start),
                size: s.end - s.start,
                state: match s.action {
                    Action::Map { pa } => FinalState::Mapped {
                        pa,
                        attributes: s.attributes,
                    },
                    Action::Unmap => FinalState::Unmapped,
                    Action::Protect => FinalState::Reprotected {
                        attributes: s.attributes,
                    },
                },
            })
            .collect();
        Ok(Plan {
            ranges,
            entries_to_write: walk.counts.entries_written,
            tables_to_allocate: walk.counts.tables_allocated,
            tables_to_free: walk.counts.tables_freed,
            pages_to_invalidate: walk.break_flush.pages().chain(walk.flush.pages()).collect(),
            full_flush: walk.flush.is_full() || walk.break_flush.is_full(),
            breaks: walk.counts.breaks,
        })
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
        let result = self.commit_queued();
        self.ops.clear();
        result
    }

    fn commit_queued(&mut self) -> Result<Committed, TxnError> {
        if let [op] = self.ops[..] {
            if !self.table.policy_allows_fast(&op) {
                return self.commit_planned();
            }
            if let Some(committed) = crate::fast::try_commit(self.table, &op) {
                return Ok(committed);
            }
            if let Some(result) = crate::fast::try_structural(self.table, &op) {
                return result;
            }
        }
        self.commit_planned()
    }

    /// Commits the queued ops through the planner (no fast path).
    pub(crate) fn commit_planned(&mut self) -> Result<Committed, TxnError> {
        let overlay = self.fold()?;
        let table = &*self.table;
        let mut walk = Walk::<C, P>::new(table.allocator(), table.geometry(), table.is_live(), table.pinned());
        walk.run(self.table.root(), &overlay);
        walk_result(&walk, &self.ops)?;
        self.check_policy(&overlay)?;
        let plan = walk.plan;
        // The plan may link, unlink or free tables: the fast path's walk hint goes first.
        self.table.forget_walk_hint();
        let (_, _, allocator, tlb) = self.table.parts_mut();
        let mut pages = Pages::new();
        for _ in 0..plan.new_tables.len() {
            match allocate_table_page(allocator) {
                Ok(page) => pages.push(page),
                Err(error) => {
                    give_back(allocator, &pages);
                    return Err(error);
                }
            }
        }
        let retired = Retired {
            pages: apply::<C, P>(allocator, tlb, &plan, &pages),
        };
        let batches = [&plan.break_flush, &plan.flush];
        let report = CommitReport {
            entries_written: plan.counts.entries_written,
            tables_allocated: plan.counts.tables_allocated,
            tables_freed: plan.counts.tables_freed,
            pages_invalidated: batches.iter().map(|b| b.page_count()).sum(),
            full_flushes: batches.iter().filter(|b| b.is_full()).count(),
            breaks: plan.counts.breaks,
            invalidation_batches: batches.iter().filter(|b| !b.is_empty()).count(),
        };
        Ok(Committed {
            report,
            invalidations: plan.flush,
            retired,
        })
    }

    /// Validates and folds the ops. On the first bad op, reports the earliest failing op
    /// among it and those before it.
    fn fold(&self) -> Result<Overlay, TxnError> {
        let geometry = self.table.geometry();
        let mut overlay = Overlay::default();
        for (index, op) in self.ops.iter().enumerate() {
            let op_number = u32::try_from(index).map_err(|_| {
                TxnError::whole(PtError::InvalidParameter).with_reason(Reason::TooManyOps {
                    ops: self.ops.len(),
                    max: (u32::MAX as usize).saturating_add(1),
                })
            })?;
            let failure = match check_op::<C>(&geometry, op) {
                Err(fault) => fault,
                Ok((start, end, change)) => match overlay.fold(op_number, start, end, change) {
                    Ok(()) => continue,
                    // The overlay refused linear `hole`: an earlier op of the transaction
                    // unmapped it.
                    Err(fault) => {
                        let hole = self.first_hole(&overlay, index, (start, fault.address, change));
                        Fault::new(fault.reason, geometry.to_canonical(hole.unwrap_or(fault.address)))
                    }
                },
            };
            // An op before this one may already fail against the table.
            self.dry_run(&overlay)?;
            return Err(failure.at_op(index, op.va(), op.size()));
        }
        Ok(overlay)
    }

    /// The first linear address below `before` that op `index`, changing linear
    /// `start..before` by `change`, finds unmapped in the table (the overlay of the ops
    /// before it refused `before` itself). `None` if there is none or an earlier op fails.
    #[cold]
    fn first_hole(&self, overlay: &Overlay, index: usize, (start, before, change): (u64, u64, Change)) -> Option<u64> {
        if start == before {
            return None;
        }
        let mut probe = overlay.clone();
        probe.fold(index as u32, start, before, change).ok()?;
        match self.dry_run(&probe) {
            Err(TxnError {
                op: Some(op),
                reason: Reason::NotMapped,
                address: Some(address),
                ..
            }) if op == index => self.table.geometry().to_linear(address),
            _ => None,
        }
    }

    /// Checks the final state of `overlay` (valid against the table) against the table's
    /// policy: the error blames the last op covering the first offending address.
    fn check_policy(&self, overlay: &Overlay) -> Result<(), TxnError> {
        let table = &*self.table;
        let Some(policy) = table.linear_policy() else {
            return Ok(());
        };
        let Some((rule, linear)) = policy.first_violation(overlay.segments(), &mut |s, e| table.first_mmio(s, e))
        else {
            return Ok(());
        };
        let geometry = table.geometry();
        let index = self.ops.iter().rposition(|op| {
            geometry
                .check_range(op.va(), op.size())
                .is_ok_and(|(start, end)| start <= linear && linear < end)
        });
        let reason = Reason::PolicyViolation { rule };
        let mut error = match index {
            Some(index) => {
                let op = &self.ops[index];
                TxnError::at(index, PtError::IncompatibleMemoryAttributes).with_range(op.va(), op.size())
            }
            None => TxnError::whole(PtError::IncompatibleMemoryAttributes),
        };
        error = error.with_detail(reason, geometry.to_canonical(linear));
        Err(error)
    }

    /// Plans `overlay` without changing anything.
    fn dry_run(&self, overlay: &Overlay) -> Result<Recorded, TxnError> {
        let table = &*self.table;
        let mut walk = Walk::<C, P>::new(table.allocator(), table.geometry(), table.is_live(), table.pinned());
        walk.run(self.table.root(), overlay);
        walk_result(&walk, &self.ops)?;
        Ok(walk.plan)
    }
}

/// The error a planning walk over `ops` found, if any.
fn walk_result<C: Codec, P: PageAllocator>(walk: &Walk<'_, C, P>, ops: &[Op]) -> Result<(), TxnError> {
    let Some(WalkError { blame, reason, linear }) = walk.error else {
        return Ok(());
    };
    let code = reason.code().unwrap_or(PtError::InternalError);
    let mut error = TxnError::blaming(blame, code).with_reason(reason);
    if let Blame::Op(index) = blame {
        if let Some(op) = ops.get(index) {
            error = error.with_range(op.va(), op.size());
        }
    }
    if let Some(linear) = linear {
        error.address = Some(walk.geometry().to_canonical(linear));
    }
    Err(error)
}

/// Checks one op's arguments and turns it into a linear range and a change.
pub(crate) fn check_op<C: Codec>(geometry: &Geometry, op: &Op) -> Result<(u64, u64, Change), Fault> {
    match *op {
        Op::Map {
            va,
            pa,
            size,
            attributes,
        } => {
            let (start, end) = geometry.check_range(va, size)?;
            geometry.check_physical(pa, size).map_err(|fault| {
                let high_half = geometry.sign_extended && va >> 63 == 1;
                match fault.reason {
                    Reason::PhysicalBeyondWidth { pa_bits } if va == pa && high_half => {
                        Fault::new(Reason::HighHalfIdentityMap { pa_bits }, va)
                    }
                    _ => fault,
                }
            })?;
            C::check_map_attributes(attributes).map_err(|error| attribute_fault(error, attributes, va))?;
            Ok((start, end, Change::Map { pa, attributes }))
        }
        Op::Unmap { va, size } => {
            let (start, end) = geometry.check_range(va, size)?;
            Ok((start, end, Change::Unmap))
        }
        Op::Protect { va, size, attributes } => {
            let (start, end) = geometry.check_range(va, size)?;
            C::check_protect_attributes(attributes).map_err(|error| attribute_fault(error, attributes, va))?;
            Ok((start, end, Change::Protect { attributes }))
        }
    }
}

/// The reason a codec refused `attributes` with `error`, for an op at `va`.
#[cold]
fn attribute_fault(error: PtError, attributes: MemoryAttributes, va: u64) -> Fault {
    let reason = match error {
        PtError::InvalidParameter => Reason::UnknownAttributeBits {
            bits: attributes.unknown_bits(),
        },
        PtError::IncompatibleMemoryAttributes if attributes.cache().is_empty() => Reason::MissingCacheAttribute,
        PtError::IncompatibleMemoryAttributes => Reason::SeveralCacheAttributes,
        _ => Reason::Internal,
    };
    Fault::new(reason, va)
}
