//! The one commit path, for a transaction and for the one-op calls alike: the fast path
//! (`fast`), else validate (fold the ops into the overlay, plan them in one walk, check
//! the policy), allocate every new table page, and apply (`apply`): all or nothing.

use crate::allocator::{allocate_table_page, PageAllocator};
use crate::apply::{apply, give_back, Pages};
use crate::codec::Codec;
use crate::error::{Blame, Fault, PtError, Reason, TxnError};
use crate::geometry::PAGE_SIZE;
use crate::op::{check_op, Op};
use crate::overlay::{Change, Overlay};
use crate::plan::{Recorded, Walk, WalkError};
use crate::report::{CommitReport, Committed, Plan, PlannedRange, Retired};
use crate::table::Tables;
use crate::tlb::Tlb;

/// Commits `ops` on `table` as one transaction: the fast path for one op where it
/// applies, else the planner. The table pages it stops using are returned in
/// [`Committed::retired`].
pub(crate) fn commit<C: Codec, P: PageAllocator, T: Tlb>(
    table: &mut Tables<C, P, T>,
    ops: &[Op],
) -> Result<Committed, TxnError> {
    if let [op] = ops[..] {
        if !table.policy_allows_fast(&op) {
            return commit_planned(table, ops);
        }
        if let Some(committed) = crate::fast::try_commit(table, &op) {
            return Ok(committed);
        }
        if let Some(result) = crate::fast::try_structural(table, &op) {
            return result;
        }
    } else if (Batch { table: &*table, ops }).policy_allows_direct() {
        // No order check first: the batch path finds an op out of order itself. Checking
        // first cost workload 3 and 2 12 instructions per op (4% and 20%) to save the
        // realistic batch 4% (the ops before its first one out of order).
        if let Some(result) = crate::direct::try_commit(table, ops) {
            return result;
        }
    }
    commit_planned(table, ops)
}

/// Whether each op ends at or before the next one starts (canonical addresses sort as their
/// linear addresses do): the fold appends such batches and sweeps the others.
fn in_address_order(ops: &[Op]) -> bool {
    ops.windows(2).all(|pair| {
        pair[0]
            .va()
            .checked_add(pair[0].size())
            .is_some_and(|end| end <= pair[1].va())
    })
}

impl<C: Codec, P: PageAllocator, T: Tlb> Tables<C, P, T> {
    /// Commits one op: what the familiar one-op calls do. Same result as a transaction of
    /// that one op, without queueing it; the common case returns only the report (no flush
    /// batch travels back). A failure is also kept for [`last_error`](Self::last_error).
    pub fn commit_op(&mut self, op: Op) -> Result<CommitReport, TxnError> {
        let fast = self.policy_allows_fast(&op);
        if fast {
            if let Some(report) = crate::fast::try_commit_report(self, &op) {
                return Ok(report);
            }
        }
        let structural = match fast {
            true => crate::fast::try_structural(self, &op),
            false => None,
        };
        let result = match structural {
            Some(result) => result,
            None => commit_planned(self, &[op]),
        };
        match result {
            Ok(committed) => {
                self.release(committed.retired);
                Ok(committed.report)
            }
            Err(error) => {
                self.note_error(error);
                Err(error)
            }
        }
    }
}

/// The dry run of `ops` on `table`.
pub(crate) fn plan<C: Codec, P: PageAllocator, T: Tlb>(table: &Tables<C, P, T>, ops: &[Op]) -> Result<Plan, TxnError> {
    Batch { table, ops }.plan()
}

/// Commits `ops` through the planner (no fast path).
fn commit_planned<C: Codec, P: PageAllocator, T: Tlb>(
    table: &mut Tables<C, P, T>,
    ops: &[Op],
) -> Result<Committed, TxnError> {
    let batch = Batch { table: &*table, ops };
    let overlay = batch.fold()?;
    let mut walk = Walk::<C, P>::new(table.allocator(), table.geometry(), table.is_live(), table.pinned());
    walk.run(table.root(), &overlay);
    walk_result(&walk, ops)?;
    batch.check_policy(&overlay)?;
    let plan = walk.plan;
    // The plan may link, unlink or free tables: the fast path's walk hint goes first.
    table.forget_walk_hint();
    let (_, _, allocator, tlb) = table.parts_mut();
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

/// The ops of one transaction, on their table: what validation reads.
struct Batch<'a, C: Codec, P: PageAllocator, T: Tlb> {
    table: &'a Tables<C, P, T>,
    ops: &'a [Op],
}

impl<C: Codec, P: PageAllocator, T: Tlb> Batch<'_, C, P, T> {
    /// The dry run of the ops: what a commit would do, or the error it would return.
    pub(crate) fn plan(&self) -> Result<Plan, TxnError> {
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
                state: s.change().into(),
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

    /// Whether the batch path may commit these ops as far as the table's policy goes: no
    /// policy, or ops in address order whose final state obeys it. The fold costs little
    /// for ops in address order (each appends); a fold or policy error leaves the batch to
    /// the planner, which reports it.
    fn policy_allows_direct(&self) -> bool {
        if self.table.linear_policy().is_none() {
            return true;
        }
        // A batch out of order goes to the planner anyway: no fold and check twice.
        in_address_order(self.ops) && self.fold().is_ok_and(|overlay| self.check_policy(&overlay).is_ok())
    }

    /// Validates and folds the ops. On the first bad op, reports the earliest failing op
    /// among it and those before it.
    fn fold(&self) -> Result<Overlay, TxnError> {
        if let Some(overlay) = self.sweep() {
            return Ok(overlay);
        }
        self.fold_in_order()
    }

    /// The overlay of a batch not in address order, built in one sweep; `None` if the ops
    /// are in address order (folding them only appends), or any op fails (folding in
    /// order names it).
    fn sweep(&self) -> Option<Overlay> {
        if in_address_order(self.ops) {
            return None;
        }
        let geometry = self.table.geometry();
        let mut checked = alloc::vec::Vec::with_capacity(self.ops.len());
        for (index, op) in self.ops.iter().enumerate() {
            let (start, end, change) = check_op::<C>(&geometry, op).ok()?;
            checked.push((u32::try_from(index).ok()?, start, end, change));
        }
        Overlay::sweep(&checked)
    }

    /// Folds the ops one at a time, in queue order. A run of maps that continue each other
    /// after everything folded so far (one page at a time, say) is checked and folded as
    /// one map: folding them one by one would only extend the same last segment. If the
    /// joined map fails its check, one of the ops does, and they are folded one by one to
    /// name it.
    fn fold_in_order(&self) -> Result<Overlay, TxnError> {
        let geometry = self.table.geometry();
        let mut overlay = Overlay::default();
        let mut one_by_one_until = 0;
        let mut index = 0;
        while index < self.ops.len() {
            if index >= one_by_one_until {
                if let Some((joined, count)) = self.map_run(index) {
                    let after_all = overlay
                        .segments()
                        .last()
                        .is_none_or(|last| geometry.to_linear(joined.va()).is_some_and(|start| last.end <= start));
                    match check_op::<C>(&geometry, &joined) {
                        // (Past op number u32::MAX, one by one names the op too many.)
                        Ok((start, end, change)) if after_all && index + count <= u32::MAX as usize => {
                            // Maps never fail to fold.
                            overlay.fold(index as u32, start, end, change).ok();
                            index += count;
                            continue;
                        }
                        _ => one_by_one_until = index + count,
                    }
                }
            }
            let (op, current) = (&self.ops[index], index);
            index += 1;
            let op_number = u32::try_from(current).map_err(|_| {
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
                        let hole = self.first_hole(&overlay, current, (start, fault.address, change));
                        Fault::new(fault.reason, geometry.to_canonical(hole.unwrap_or(fault.address)))
                    }
                },
            };
            // An op before this one may already fail against the table.
            self.dry_run(&overlay)?;
            return Err(failure.at_op(current, op.va(), op.size()));
        }
        Ok(overlay)
    }

    /// The maps from op `index` on that continue each other, joined into one map, and their
    /// number; `None` if op `index` is not followed by such a map. Each size must be a
    /// non-zero number of pages, so that the joined map passes its check exactly when
    /// every op does.
    fn map_run(&self, index: usize) -> Option<(Op, usize)> {
        let whole_pages = |op: &Op| op.size() != 0 && op.size() % PAGE_SIZE == 0;
        let first = self.ops[index];
        if !whole_pages(&first) {
            return None;
        }
        let mut joined = first;
        let mut count = 1;
        for next in &self.ops[index + 1..] {
            match joined.joined(next) {
                Some(longer) if whole_pages(next) => joined = longer,
                _ => break,
            }
            count += 1;
        }
        (count > 1).then_some((joined, count))
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
        let table = self.table;
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
        let table = self.table;
        let mut walk = Walk::<C, P>::new(table.allocator(), table.geometry(), table.is_live(), table.pinned());
        walk.run(self.table.root(), overlay);
        walk_result(&walk, self.ops)?;
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
