//! `Transaction`: queued ops, planned as a whole, committed all or nothing.

use smallvec::SmallVec;

use crate::allocator::PageAllocator;
use crate::apply::{apply, give_back, Pages};
use crate::attributes::MemoryAttributes;
use crate::codec::Codec;
use crate::error::{PtError, TxnError};
use crate::geometry::Geometry;
use crate::overlay::{Action, Change, Overlay};
use crate::plan::{Recorded, Walk};
use crate::table::{allocate_table_page, Tables};
use crate::tlb::{FlushBatch, Tlb};

/// One queued request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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

/// What a range becomes, as the plan reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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

/// A touched range and its final state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlannedRange {
    /// Canonical virtual address.
    pub va: u64,
    /// Bytes.
    pub size: u64,
    /// What it becomes.
    pub state: FinalState,
}

/// The result of a dry run.
#[derive(Debug, Clone, PartialEq, Eq)]
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
#[derive(Debug, Default)]
pub struct Retired {
    pub(crate) pages: SmallVec<[u64; 2]>,
}

impl Retired {
    /// Physical addresses of the retired table pages.
    pub fn pages(&self) -> &[u64] {
        &self.pages
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
        walk_result(&walk)?;
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
                    return Err(TxnError::whole(error));
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
            let op_number = u32::try_from(index).map_err(|_| TxnError::whole(PtError::InvalidParameter))?;
            let result = check_op::<C>(&geometry, op)
                .and_then(|(start, end, change)| overlay.fold(op_number, start, end, change));
            if let Err(error) = result {
                // An op before this one may already fail against the table.
                return match self.dry_run(&overlay) {
                    Err(earlier) => Err(earlier),
                    Ok(_) => Err(TxnError::at(index, error)),
                };
            }
        }
        Ok(overlay)
    }

    /// Plans `overlay` without changing anything.
    fn dry_run(&self, overlay: &Overlay) -> Result<Recorded, TxnError> {
        let table = &*self.table;
        let mut walk = Walk::<C, P>::new(table.allocator(), table.geometry(), table.is_live(), table.pinned());
        walk.run(self.table.root(), overlay);
        walk_result(&walk)?;
        Ok(walk.plan)
    }
}

/// The error a planning walk found, if any.
fn walk_result<C: Codec, P: PageAllocator>(walk: &Walk<'_, C, P>) -> Result<(), TxnError> {
    match walk.error {
        Some((u32::MAX, error)) => Err(TxnError::whole(error)),
        Some((op, error)) => Err(TxnError::at(op as usize, error)),
        None => Ok(()),
    }
}

/// Checks one op's arguments and turns it into a linear range and a change.
pub(crate) fn check_op<C: Codec>(geometry: &Geometry, op: &Op) -> Result<(u64, u64, Change), PtError> {
    match *op {
        Op::Map {
            va,
            pa,
            size,
            attributes,
        } => {
            let (start, end) = geometry.linear_range(va, size)?;
            geometry.check_physical_range(pa, size)?;
            C::check_map_attributes(attributes)?;
            Ok((start, end, Change::Map { pa, attributes }))
        }
        Op::Unmap { va, size } => {
            let (start, end) = geometry.linear_range(va, size)?;
            Ok((start, end, Change::Unmap))
        }
        Op::Protect { va, size, attributes } => {
            let (start, end) = geometry.linear_range(va, size)?;
            C::check_protect_attributes(attributes)?;
            Ok((start, end, Change::Protect { attributes }))
        }
    }
}
