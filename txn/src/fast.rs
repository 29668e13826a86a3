//! The one-op fast path: a map, unmap or protect inside one 2 MiB-sized range (one
//! last-level table's span) whose upper tables exist.
//!
//! It makes exactly the stores, allocations, frees, invalidations and barriers the planner
//! would make for such an op, in the same order, with one walk and no recorded plan:
//! - [`try_commit`], the common case: the last-level table exists and stays a table (on a
//!   live AArch64 table: and no entry needs a break);
//! - [`try_structural`], when that declines, on a table without break-before-make phases:
//!   the last-level table becomes uniform and aligned, or empty (its stores, then one level-1
//!   leaf or an invalid entry replaces the table pointer and the table is freed, unless the
//!   level-1 table would become uniform or empty too); the
//!   level-1 entry is invalid and the op maps (a new table, complete before the store that
//!   links it); or the level-1 entry is a leaf the op changes in part (the split: a new table
//!   holding the leaf's translations, linked first, then the changed entries, SDM 4.10.2.3:
//!   no single store changes a page's size and its translation).
//!
//! Anything else (bad input, a failed precondition, a merge or free above level 1, missing
//! upper tables, a break on a live table) returns `None` and goes through the planner, which
//! also produces the error.

use core::sync::atomic::{AtomicU64, Ordering};

use crate::allocator::{allocate_table_page, PageAllocator};
use crate::attributes::MemoryAttributes;
use crate::codec::{Codec, Entry, INVALID_ENTRY};
use crate::decide::{
    fill_split, fold_untouched, new_entry, new_entry_reusing, Edges, Outcome, Reprotected, Slot, Summary,
};
use crate::error::TxnError;
use crate::geometry::{Geometry, ENTRIES_PER_TABLE, PAGE_SIZE};
use crate::memory::TableMemory;
use crate::op::{check_op, Op};
use crate::overlay::Change;
use crate::report::{CommitReport, Committed, Retired};
use crate::table::Tables;
use crate::tlb::{after_stores, FlushBatch, Tlb};

/// How many new entries pass 1 keeps for pass 2 (larger changes are encoded twice).
const KEPT_ENTRIES: usize = 8;

/// The pages of the op inside its last-level table's span.
#[derive(Clone, Copy)]
pub(crate) struct Span {
    /// Linear address of the first page.
    pub(crate) start: u64,
    /// Index of the first page in the last-level table.
    pub(crate) first: usize,
    /// Number of pages.
    pub(crate) count: usize,
}

/// The pages of a span in one last-level table.
pub(crate) struct Changes {
    pub(crate) table: u64,
    pub(crate) span: Span,
}

impl Changes {
    /// Pass 1 of the fast path: decides every page of the span (`accept(page, old, new)`
    /// may refuse one) and what the table becomes, scanning the untouched entries as
    /// needed. `None` if a page fails its precondition or is refused.
    #[inline(always)]
    fn decide<C: Codec, P: PageAllocator>(
        &self,
        memory: &TableMemory<'_, P>,
        geometry: &Geometry,
        change: Change,
        accept: impl FnMut(usize, u64, u64) -> bool,
    ) -> Option<Outcome> {
        let Span { first, count, .. } = self.span;
        let mut summary = Summary::new(0, geometry.leaf_allowed(1));
        let mut edges = Edges::UNKNOWN;
        let read = |index| memory.read(self.table, index);
        self.decide_pages::<C>(read, change, 0, (&mut summary, &mut edges, &mut None), accept)?;
        let changed = (first, first + count - 1);
        fold_untouched::<C, P>(memory, self.table, 0, changed, |_| true, edges, &mut summary);
        Some(summary.outcome())
    }

    /// The per-page loop of pass 1, shared with the batch path (`direct`): decides every
    /// page of the span from its old entry `old(index)`, folding the new ones into
    /// `summary` and `edges` (the span's pages are numbered from `ordinal` among the
    /// changes of their table) and reusing the `last` protect decision where it applies.
    /// `accept(page, old, new)` may refuse a page. `None` if a page fails its precondition
    /// or is refused.
    #[inline(always)]
    pub(crate) fn decide_pages<C: Codec>(
        &self,
        old: impl Fn(usize) -> u64,
        change: Change,
        ordinal: usize,
        (summary, edges, last): (&mut Summary, &mut Edges, &mut Option<Reprotected>),
        mut accept: impl FnMut(usize, u64, u64) -> bool,
    ) -> Option<()> {
        let Span { first, count, .. } = self.span;
        for page in 0..count {
            let index = first + page;
            let old = old(index);
            let (raw, slot) = new_entry_reusing::<C>(change, page, old, last)?;
            if !accept(page, old, raw) {
                return None;
            }
            edges.note(ordinal + page, raw, slot);
            summary.add(index, slot);
        }
        Some(())
    }

    /// The one store-and-invalidate loop of the fast path: stores `new(page, old)` into
    /// each page of the span whose entry changes, recording in `flush` the invalidation of
    /// each live entry it replaces. Returns the number of stores.
    #[inline(always)]
    pub(crate) fn write<C: Codec, P: PageAllocator>(
        &self,
        memory: &TableMemory<'_, P>,
        geometry: &Geometry,
        flush: &mut FlushBatch,
        new: impl FnMut(usize, u64) -> u64,
    ) -> usize {
        self.write_to::<C>(memory.entries(self.table), geometry, flush, new)
    }

    /// [`write`](Self::write) into `entries`, the table's entries already looked up (the
    /// batch path writes many spans of one table).
    #[inline(always)]
    pub(crate) fn write_to<C: Codec>(
        &self,
        entries: &[AtomicU64; ENTRIES_PER_TABLE],
        geometry: &Geometry,
        flush: &mut FlushBatch,
        mut new: impl FnMut(usize, u64) -> u64,
    ) -> usize {
        let Span { start, first, count } = self.span;
        let mut written = 0;
        for page in 0..count {
            let index = first + page;
            let old = entries[index].load(Ordering::Relaxed);
            let raw = new(page, old);
            if raw != old {
                entries[index].store(raw, Ordering::Relaxed);
                written += 1;
                if C::is_live(old) && flush.records() {
                    let va = start + page as u64 * PAGE_SIZE;
                    flush.record(geometry.to_canonical(va), C::invalidation_pages(old, 0));
                }
            }
        }
        written
    }
}

/// Commits `op` directly if it changes entries of one existing last-level table and that
/// table stays a table; `None` if not (nothing was touched).
///
/// On a live table of an architecture with break-before-make rules, only changes made in
/// place qualify (no store needs a break); the stores are then followed by the planner's
/// barriers: `Stores`, the invalidation batch, `Invalidations`, `Instructions`.
pub(crate) fn try_commit<C: Codec, P: PageAllocator, T: Tlb>(
    table: &mut Tables<C, P, T>,
    op: &Op,
) -> Option<Committed> {
    let (report, flush) = commit_in_table::<C, P, T, true>(table, op)?;
    Some(Committed {
        report,
        invalidations: flush.unwrap_or_default(),
        retired: Retired::default(),
    })
}

/// [`try_commit`] for a caller that needs only the report (the one-op API): no flush batch
/// travels back inside a `Committed` (about 200 bytes), and a one-page change builds none.
/// Measured: the one-op map and protect calls took about 9% less time without the
/// `Committed`, and another 10-20% less without the batch for one page.
pub(crate) fn try_commit_report<C: Codec, P: PageAllocator, T: Tlb>(
    table: &mut Tables<C, P, T>,
    op: &Op,
) -> Option<CommitReport> {
    commit_in_table::<C, P, T, false>(table, op).map(|(report, _)| report)
}

/// The body of [`try_commit`]: the report and, if `KEEP_BATCH`, the issued flush batch.
#[inline(always)]
fn commit_in_table<C: Codec, P: PageAllocator, T: Tlb, const KEEP_BATCH: bool>(
    table: &mut Tables<C, P, T>,
    op: &Op,
) -> Option<(CommitReport, Option<FlushBatch>)> {
    let phased = C::USES_BARRIERS && table.is_live();
    let geometry = table.geometry();
    let (start, end, change) = check_op::<C>(&geometry, op).ok()?;
    let table_span = Geometry::entry_size(1);
    if start / table_span != (end - 1) / table_span || end - start == table_span {
        return None;
    }
    let memory = TableMemory::new(table.allocator());
    // Consecutive calls in one 2 MiB span skip the walk: the hint is forgotten by every
    // commit that can change a table above the last level.
    let span_start = start & !(table_span - 1);
    let last_level = match table.walk_hint(span_start) {
        Some(last_level) => last_level,
        None => {
            let mut last_level = table.root();
            for level in (1..=geometry.top_level()).rev() {
                match C::decode(memory.read(last_level, Geometry::index(start, level)), level) {
                    Entry::Table(next) => last_level = next,
                    _ => return None,
                }
            }
            table.set_walk_hint(span_start, last_level);
            last_level
        }
    };
    let first = Geometry::index(start, 0);
    let count = ((end - start) / PAGE_SIZE) as usize;
    // Pass 1: every page qualifies, and the table stays a table. The new entries of small
    // changes are kept for pass 2.
    let mut kept = [INVALID_ENTRY; KEPT_ENTRIES];
    let span = Span { start, first, count };
    let outcome = Changes {
        table: last_level,
        span,
    }
    .decide::<C, P>(&memory, &geometry, change, |page, old, raw| {
        // Arm ARM D8.14.1: a change needing a break goes through the planner's phases.
        if phased && C::is_live(old) && C::needs_break(old, raw, 0) {
            return false;
        }
        if let Some(keep) = kept.get_mut(page) {
            *keep = raw;
        }
        true
    })?;
    match outcome {
        Outcome::Empty => return None,
        Outcome::Uniform { pa, .. } if geometry.leaf_allowed(1) && pa % table_span == 0 => return None,
        _ => {}
    }
    if count == 1 {
        return Some(commit_one_page::<C, P, T, KEEP_BATCH>(
            table,
            &memory,
            last_level,
            first,
            geometry.to_canonical(start),
            kept[0],
            phased,
        ));
    }
    // Pass 2: the stores, then one invalidation batch.
    let mut flush = FlushBatch::for_table::<C>(table.is_live());
    let changes = Changes {
        table: last_level,
        span: Span { start, first, count },
    };
    let written = changes.write::<C, P>(&memory, &geometry, &mut flush, |page, old| match kept.get(page) {
        Some(&raw) if count <= KEPT_ENTRIES => raw,
        // Pass 1 accepted the same old entry, so this cannot fail.
        _ => new_entry::<C>(change, page, old).map_or(old, |(raw, _)| raw),
    });
    after_stores(table.tlb(), phased, || flush.issue(table.tlb()));
    let report = CommitReport {
        entries_written: written,
        pages_invalidated: flush.page_count(),
        full_flushes: usize::from(flush.is_full()),
        invalidation_batches: usize::from(!flush.is_empty()),
        ..CommitReport::default()
    };
    Some((report, KEEP_BATCH.then_some(flush)))
}

/// Pass 2 of [`commit_in_table`] for a one-page change: store `new` into entry `index` of
/// `last_level` (the page at canonical `va`) and issue what a flush batch with that one page
/// would, without building the batch unless `KEEP_BATCH`.
#[inline(always)]
fn commit_one_page<C: Codec, P: PageAllocator, T: Tlb, const KEEP_BATCH: bool>(
    table: &Tables<C, P, T>,
    memory: &TableMemory<'_, P>,
    last_level: u64,
    index: usize,
    va: u64,
    new: u64,
    phased: bool,
) -> (CommitReport, Option<FlushBatch>) {
    let old = memory.read(last_level, index);
    let mut report = CommitReport::default();
    let mut invalidation = None;
    if new != old {
        memory.write(last_level, index, new);
        report.entries_written = 1;
        if C::is_live(old) {
            invalidation = Some(C::invalidation_pages(old, 0));
        }
    }
    let issued = after_stores(table.tlb(), phased, || {
        invalidation.map(|pages| FlushBatch::issue_single::<C>(table.tlb(), table.is_live(), va, pages))
    });
    if let Some(issued) = issued {
        report.pages_invalidated = issued.pages;
        report.full_flushes = usize::from(issued.full);
        report.invalidation_batches = usize::from(issued.any);
    }
    let flush = KEEP_BATCH.then(|| {
        let mut flush = FlushBatch::for_table::<C>(table.is_live());
        if let Some(pages) = invalidation {
            flush.record(va, pages);
        }
        flush
    });
    (report, flush)
}

/// The one-op changes that alter structure inside one last-level table's span, tried when
/// [`try_commit`] declines: a merge of the last-level table into a level-1 leaf or its
/// removal once empty, a new last-level table, or the split of a level-1 leaf. Same contract as [`try_commit`]. Kept
/// apart so the common case stays one tight function (splitting it cost a third more time
/// per call in the one-op benchmark at the same instruction count).
pub(crate) fn try_structural<C: Codec, P: PageAllocator, T: Tlb>(
    table: &mut Tables<C, P, T>,
    op: &Op,
) -> Option<Result<Committed, TxnError>> {
    // Whatever happens next may link, unlink or free a table.
    table.forget_walk_hint();
    if C::USES_BARRIERS && table.is_live() {
        return None;
    }
    let geometry = table.geometry();
    let (start, end, change) = check_op::<C>(&geometry, op).ok()?;
    let table_span = Geometry::entry_size(1);
    if start / table_span != (end - 1) / table_span || end - start == table_span {
        return None;
    }
    let span = Span {
        start,
        first: Geometry::index(start, 0),
        count: ((end - start) / PAGE_SIZE) as usize,
    };
    let memory = TableMemory::new(table.allocator());
    let mut level1 = table.root();
    for level in (2..=geometry.top_level()).rev() {
        match C::decode(memory.read(level1, Geometry::index(start, level)), level) {
            Entry::Table(next) => level1 = next,
            _ => return None,
        }
    }
    match (C::decode(memory.read(level1, Geometry::index(start, 1)), 1), change) {
        (Entry::Table(last_level), _) => collapse(table, span, change, level1, last_level).map(Ok),
        (Entry::Invalid, Change::Map { pa, attributes }) => Some(new_last_level(table, span, pa, attributes, level1)),
        (Entry::Leaf { pa, attributes }, _) => split_leaf(table, span, change, level1, pa, attributes),
        _ => None,
    }
}

/// The op makes the last-level table `last_level` uniform and aligned, or empty: its stores,
/// then a leaf (merge) or an invalid entry replaces the table pointer in `level1`, and the
/// table is freed. `None` (nothing touched) if the op fails, the table stays a table, or the
/// level-1 table would become uniform or empty too (the planner goes further up).
fn collapse<C: Codec, P: PageAllocator, T: Tlb>(
    table: &Tables<C, P, T>,
    span: Span,
    change: Change,
    level1: u64,
    last_level: u64,
) -> Option<Committed> {
    let geometry = table.geometry();
    let memory = TableMemory::new(table.allocator());
    let Span { start, .. } = span;
    let changes = Changes {
        table: last_level,
        span,
    };
    let outcome = changes.decide::<C, P>(&memory, &geometry, change, |_, _, _| true)?;
    let (entry1, slot1) = match outcome {
        Outcome::Uniform { pa, attributes } if pa % Geometry::entry_size(1) == 0 => {
            (C::encode_leaf(pa, attributes, 1), Slot::Leaf { pa, attributes })
        }
        Outcome::Empty => (INVALID_ENTRY, Slot::Invalid),
        _ => return None,
    };
    let index1 = Geometry::index(start, 1);
    let mut above = Summary::new(1, geometry.leaf_allowed(2));
    above.add(index1, slot1);
    let edge = (entry1, slot1);
    let edges = Edges { low: edge, high: edge };
    fold_untouched::<C, P>(&memory, level1, 1, (index1, index1), |_| true, edges, &mut above);
    match above.outcome() {
        Outcome::Empty => return None,
        Outcome::Uniform { pa, .. } if geometry.leaf_allowed(2) && pa % Geometry::entry_size(2) == 0 => return None,
        _ => {}
    }
    // Like the planner on a table without break-before-make phases, the stores into the
    // table about to be freed are made too, with their invalidations: the merge's own
    // invalidation covers the whole range only where one invalidation covers a large page.
    let mut flush = FlushBatch::for_table::<C>(table.is_live());
    let changes = Changes {
        table: last_level,
        span,
    };
    // The summary above accepted the same old entries, so this cannot fail.
    let mut written = changes.write::<C, P>(&memory, &geometry, &mut flush, |page, old| {
        new_entry::<C>(change, page, old).map_or(old, |(raw, _)| raw)
    });
    // Dropping the table pointer also drops paging-structure caches (SDM 4.10.4.1).
    let old = memory.read(level1, index1);
    memory.write(level1, index1, entry1);
    written += 1;
    if C::is_live(old) {
        let va = start & !(Geometry::entry_size(1) - 1);
        flush.record(geometry.to_canonical(va), C::invalidation_pages(old, 1));
    }
    flush.issue(table.tlb());
    let mut retired = Retired::default();
    retired.pages.push(last_level);
    Some(committed(
        CommitReport {
            entries_written: written,
            tables_freed: 1,
            ..CommitReport::default()
        },
        flush,
        retired,
    ))
}

/// A map under an invalid level-1 entry: a new last-level table holding the op's pages,
/// complete before the store that links it (no invalidation: nothing was mapped).
fn new_last_level<C: Codec, P: PageAllocator, T: Tlb>(
    table: &mut Tables<C, P, T>,
    span: Span,
    pa: u64,
    attributes: MemoryAttributes,
    level1: u64,
) -> Result<Committed, TxnError> {
    let page = allocate_table_page(table.allocator_mut())?;
    let memory = TableMemory::new(table.allocator());
    let Span { start, first, count } = span;
    memory.fill(page, |index| {
        if (first..first + count).contains(&index) {
            C::encode_leaf(pa + (index - first) as u64 * PAGE_SIZE, attributes, 0)
        } else {
            INVALID_ENTRY
        }
    });
    memory.write(level1, Geometry::index(start, 1), C::encode_table(page, 1));
    Ok(committed(
        CommitReport {
            entries_written: ENTRIES_PER_TABLE + count + 1,
            tables_allocated: 1,
            ..CommitReport::default()
        },
        FlushBatch::for_table::<C>(table.is_live()),
        Retired::default(),
    ))
}

/// An op changing part of the level-1 leaf mapping `leaf_pa` with `leaf_attributes`:
/// a new table holding the same translations is linked first, then its changed entries are
/// stored and invalidated. `None` if the op changes nothing (the planner then splits nothing).
fn split_leaf<C: Codec, P: PageAllocator, T: Tlb>(
    table: &mut Tables<C, P, T>,
    span: Span,
    change: Change,
    level1: u64,
    leaf_pa: u64,
    leaf_attributes: MemoryAttributes,
) -> Option<Result<Committed, TxnError>> {
    let Span { start, first, count } = span;
    let split_entry = |index: usize| C::encode_leaf(leaf_pa + index as u64 * PAGE_SIZE, leaf_attributes, 0);
    let changes = |page: usize| {
        let old = split_entry(first + page);
        let new = new_entry::<C>(change, page, old).map_or(old, |(raw, _)| raw);
        (old, new)
    };
    if (0..count).all(|page| {
        let (old, new) = changes(page);
        old == new
    }) {
        return None;
    }
    let page_pa = match allocate_table_page(table.allocator_mut()) {
        Ok(page_pa) => page_pa,
        Err(error) => return Some(Err(error)),
    };
    let geometry = table.geometry();
    let memory = TableMemory::new(table.allocator());
    fill_split::<C, P>(&memory, page_pa, leaf_pa, leaf_attributes, 0);
    // Linking a table with the leaf's translations changes no address: no invalidation.
    memory.write(level1, Geometry::index(start, 1), C::encode_table(page_pa, 1));
    let mut flush = FlushBatch::for_table::<C>(table.is_live());
    let written =
        Changes { table: page_pa, span }.write::<C, P>(&memory, &geometry, &mut flush, |page, _| changes(page).1);
    flush.issue(table.tlb());
    Some(Ok(committed(
        CommitReport {
            entries_written: ENTRIES_PER_TABLE + written + 1,
            tables_allocated: 1,
            ..CommitReport::default()
        },
        flush,
        Retired::default(),
    )))
}

/// Completes `report` with the invalidation counts of `flush`.
fn committed(mut report: CommitReport, flush: FlushBatch, retired: Retired) -> Committed {
    report.pages_invalidated = flush.page_count();
    report.full_flushes = usize::from(flush.is_full());
    report.invalidation_batches = usize::from(!flush.is_empty());
    Committed {
        report,
        invalidations: flush,
        retired,
    }
}
