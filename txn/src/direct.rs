//! The batch path: a transaction of ops in address order, each inside one last-level
//! table's span (2 MiB), committed table by table without a recorded plan.
//!
//! It makes the stores, allocations, invalidations and barriers the planner would make for
//! such a batch (the model tests compare each commit with its plan: `sorted_batches_*` in
//! `tests/model.rs`), in two passes:
//! 1. every op is checked and every page decided, table by table (the fast path's per-page
//!    loop, [`Changes::decide_pages`]), and each touched last-level table is shown to stay a
//!    table (the shared merge check and untouched-entry scan). A table that does not exist
//!    yet because a 2 MiB leaf covers the span is decided on the leaf's split entries;
//! 2. every split table is allocated (all of them, before any store: a failure gives them
//!    back and leaves the table as it was), then the stores are made in address order (a
//!    split table complete before the store that links it, SDM 4.10.2.3), then one
//!    invalidation batch.
//!
//! Anything else (an op out of order or overlapping another, an op spanning two last-level
//! tables or a whole one, missing upper tables, a merge, a table left empty, a break on a
//! live table, a split on a table with break-before-make phases) returns `None` before
//! anything is touched, and the planner takes the batch, which also produces any error.
//! A table's protection policy is checked before (`commit.rs`).

use alloc::vec::Vec;

use crate::allocator::{allocate_table_page, PageAllocator};
use crate::apply::give_back;
use crate::attributes::MemoryAttributes;
use crate::codec::{Codec, Entry};
use crate::decide::{fill_split, fold_untouched, slot_of, Edges, Outcome, Reprotected, Summary, RAW_ADDRESS_LIMIT};
use crate::error::TxnError;
use crate::fast::{Changes, Span};
use crate::geometry::{Geometry, ENTRIES_PER_TABLE, PAGE_SIZE};
use crate::memory::TableMemory;
use crate::op::{check_op, Op};
use crate::overlay::Change;
use crate::report::{CommitReport, Committed, Retired};
use crate::table::Tables;
use crate::tlb::{after_stores, FlushBatch, Tlb};

/// Where the changes of one last-level table's span go.
#[derive(Clone, Copy)]
enum Target {
    /// An existing last-level table.
    Table(u64),
    /// A new table splitting the 2 MiB leaf of `pa` and `attributes` held by entry
    /// `index` of the level-1 table `level1`; `first` is the split's first entry, which the
    /// others step from below [`RAW_ADDRESS_LIMIT`].
    Split {
        level1: u64,
        index: usize,
        pa: u64,
        attributes: MemoryAttributes,
        first: u64,
    },
}

impl Target {
    /// The old entry `index` of the last-level table, read or split from the leaf.
    #[inline(always)]
    fn old<C: Codec, P: PageAllocator>(&self, memory: &TableMemory<'_, P>, index: usize) -> u64 {
        match *self {
            Target::Table(table) => memory.read(table, index),
            Target::Split { pa, first, .. } if pa + Geometry::entry_size(1) <= RAW_ADDRESS_LIMIT => {
                first + index as u64 * PAGE_SIZE
            }
            Target::Split { pa, attributes, .. } => C::encode_leaf(pa + index as u64 * PAGE_SIZE, attributes, 0),
        }
    }
}

/// The ops of one last-level table's span: `ops[first_op..end_op]` of the checked ops.
struct Group {
    target: Target,
    first_op: usize,
    end_op: usize,
}

/// Commits `ops` (at least two) directly if the batch qualifies (see the module); `None`
/// if not, with nothing touched.
pub(crate) fn try_commit<C: Codec, P: PageAllocator, T: Tlb>(
    table: &mut Tables<C, P, T>,
    ops: &[Op],
) -> Option<Result<Committed, TxnError>> {
    if ops.len() < 2 {
        return None;
    }
    let phased = C::USES_BARRIERS && table.is_live();
    let geometry = table.geometry();
    let table_span = Geometry::entry_size(1);
    let memory = TableMemory::new(table.allocator());

    // Pass 1: check each op, decide its pages into its span's group, and finish a group
    // (does its table stay a table?) when the next op leaves its span.
    let mut checked: Vec<Span> = Vec::with_capacity(ops.len());
    let mut groups: Vec<Group> = Vec::new();
    let mut kept: Vec<u64> = Vec::with_capacity(ops.len());
    let mut last: Option<Reprotected> = None;
    let mut deciding: Option<Deciding> = None;
    let mut previous_end = 0;
    for op in ops {
        let (start, end, change) = check_op::<C>(&geometry, op).ok()?;
        let span_start = start & !(table_span - 1);
        if start < previous_end || (end - 1) & !(table_span - 1) != span_start || end - start == table_span {
            return None;
        }
        previous_end = end;
        if deciding.as_ref().is_none_or(|group| group.span != span_start) {
            if let Some(done) = deciding.take() {
                groups.push(done.finish::<C, P>(&memory, &geometry, (&checked, &kept))?);
            }
            let target = target::<C, P>(table, &memory, span_start)?;
            if phased && matches!(target, Target::Split { .. }) {
                return None;
            }
            deciding = Some(Deciding::new(
                target,
                span_start,
                (checked.len(), kept.len()),
                &geometry,
            ));
        }
        let span = Span {
            start,
            first: Geometry::index(start, 0),
            count: ((end - start) / PAGE_SIZE) as usize,
        };
        deciding
            .as_mut()?
            .add::<C, P>(&memory, span, change, phased, (&mut kept, &mut last))?;
        checked.push(span);
    }
    groups.push(deciding?.finish::<C, P>(&memory, &geometry, (&checked, &kept))?);

    // Pass 2: allocate, store, invalidate.
    let splits = groups
        .iter()
        .filter(|g| matches!(g.target, Target::Split { .. }))
        .count();
    let mut pages = Vec::with_capacity(splits);
    for _ in 0..splits {
        match allocate_table_page(table.allocator_mut()) {
            Ok(page) => pages.push(page),
            Err(error) => {
                give_back(table.allocator_mut(), &pages);
                return Some(Err(error));
            }
        }
    }
    if splits > 0 {
        // Links change tables above the last level.
        table.forget_walk_hint();
    }
    let memory = TableMemory::new(table.allocator());
    let mut flush = FlushBatch::for_table::<C>(table.is_live());
    let mut written = 0;
    let mut next_page = 0;
    let mut kept_entries = kept.iter();
    for group in &groups {
        let last_level = match group.target {
            Target::Table(last_level) => last_level,
            Target::Split {
                level1,
                index,
                pa,
                attributes,
                ..
            } => {
                // One page was allocated per split group, in this order.
                let page = pages[next_page];
                next_page += 1;
                fill_split::<C, P>(&memory, page, pa, attributes, 0);
                // Linking a table with the leaf's translations changes no address: no
                // invalidation.
                memory.write(level1, index, C::encode_table(page, 1));
                written += ENTRIES_PER_TABLE + 1;
                page
            }
        };
        let entries = memory.entries(last_level);
        for &span in &checked[group.first_op..group.end_op] {
            let changes = Changes {
                table: last_level,
                span,
            };
            written += changes.write_to::<C>(entries, &geometry, &mut flush, |_, old| {
                // Pass 1 kept one new entry per page, in this order.
                kept_entries.next().copied().unwrap_or(old)
            });
        }
    }
    after_stores(table.tlb(), phased, || flush.issue(table.tlb()));
    let report = CommitReport {
        entries_written: written,
        tables_allocated: splits,
        pages_invalidated: flush.page_count(),
        full_flushes: usize::from(flush.is_full()),
        invalidation_batches: usize::from(!flush.is_empty()),
        ..CommitReport::default()
    };
    Some(Ok(Committed {
        report,
        invalidations: flush,
        retired: Retired::default(),
    }))
}

/// The last-level table of the span at linear `span`, or the 2 MiB leaf that covers it;
/// `None` if an upper table is missing or the level-1 entry is invalid.
fn target<C: Codec, P: PageAllocator>(
    table: &Tables<C, P, impl Tlb>,
    memory: &TableMemory<'_, P>,
    span: u64,
) -> Option<Target> {
    if let Some(last_level) = table.walk_hint(span) {
        return Some(Target::Table(last_level));
    }
    let geometry = table.geometry();
    let mut level1 = table.root();
    for level in (2..=geometry.top_level()).rev() {
        match C::decode(memory.read(level1, Geometry::index(span, level)), level) {
            Entry::Table(next) => level1 = next,
            _ => return None,
        }
    }
    let index = Geometry::index(span, 1);
    match C::decode(memory.read(level1, index), 1) {
        Entry::Table(last_level) => Some(Target::Table(last_level)),
        Entry::Leaf { pa, attributes } => Some(Target::Split {
            level1,
            index,
            pa,
            attributes,
            first: C::encode_leaf(pa, attributes, 0),
        }),
        Entry::Invalid => None,
    }
}

/// Pass 1's state for the group being decided: its ops' new entries folded so far.
struct Deciding {
    group: Group,
    /// Linear start of the group's 2 MiB span.
    span: u64,
    summary: Summary,
    /// Where the group's new entries start in the kept entries.
    first_kept: usize,
    /// Pages decided so far.
    ordinal: usize,
    /// Lowest and highest changed entry.
    lowest: usize,
    highest: usize,
}

impl Deciding {
    fn new(target: Target, span: u64, (first_op, first_kept): (usize, usize), geometry: &Geometry) -> Self {
        Self {
            group: Group {
                target,
                first_op,
                end_op: first_op,
            },
            span,
            summary: Summary::new(0, geometry.leaf_allowed(1)),
            first_kept,
            ordinal: 0,
            lowest: 0,
            highest: 0,
        }
    }

    /// Decides every page of the next op (`span`, `change`), keeping each new entry in
    /// `kept`; `None` if a page fails its precondition or needs a break on a live table.
    #[inline(always)]
    fn add<C: Codec, P: PageAllocator>(
        &mut self,
        memory: &TableMemory<'_, P>,
        span: Span,
        change: Change,
        phased: bool,
        (kept, last): (&mut Vec<u64>, &mut Option<Reprotected>),
    ) -> Option<()> {
        let target = self.group.target;
        let old = |index| target.old::<C, P>(memory, index);
        // The edges are worked out once, from the kept entries, when the group finishes.
        let mut edges = Edges::UNKNOWN;
        let folded = (&mut self.summary, &mut edges, last);
        let changes = Changes { table: 0, span };
        changes.decide_pages::<C>(old, change, self.ordinal, folded, |_, old, raw| {
            // Arm ARM D8.14.1: a change needing a break goes through the planner's phases.
            if phased && C::is_live(old) && C::needs_break(old, raw, 0) {
                return false;
            }
            kept.push(raw);
            true
        })?;
        if self.ordinal == 0 {
            self.lowest = span.first;
        }
        self.highest = span.first + span.count - 1;
        self.ordinal += span.count;
        self.group.end_op += 1;
        Some(())
    }

    /// The group, once its table is shown to stay a table (no merge, not empty); `None`
    /// if not. A split that changes nothing is `None` too: the planner leaves such a leaf
    /// whole. `checked` and `kept` hold the spans and new entries of every op so far, this
    /// group's last.
    fn finish<C: Codec, P: PageAllocator>(
        mut self,
        memory: &TableMemory<'_, P>,
        geometry: &Geometry,
        (checked, kept): (&[Span], &[u64]),
    ) -> Option<Group> {
        let target = self.group.target;
        // The group's spans are in address order: an entry is changed if the last span
        // starting at or before it covers it.
        let spans = &checked[self.group.first_op..self.group.end_op];
        let is_changed = |index: usize| match spans.partition_point(|span| span.first <= index) {
            0 => false,
            after => index < spans[after - 1].first + spans[after - 1].count,
        };
        match target {
            Target::Table(last_level) => {
                // The new entries beside which the untouched ones start: the group's first
                // and last (its spans are in address order).
                let edge = |raw: u64| (raw, slot_of::<C>(raw, 0));
                let edges = Edges {
                    low: edge(*kept.get(self.first_kept)?),
                    high: edge(*kept.last()?),
                };
                let touched = (self.lowest, self.highest);
                fold_untouched::<C, P>(memory, last_level, 0, touched, is_changed, edges, &mut self.summary);
            }
            // The untouched entries of a split continue the leaf: one of them stands for all.
            Target::Split { .. } => {
                let mut first_untouched = 0;
                for span in spans {
                    if span.first != first_untouched {
                        break;
                    }
                    first_untouched = span.first + span.count;
                }
                if first_untouched < ENTRIES_PER_TABLE {
                    let old = target.old::<C, P>(memory, first_untouched);
                    self.summary.add(first_untouched, slot_of::<C>(old, 0));
                }
            }
        }
        match self.summary.outcome() {
            Outcome::Mixed => Some(self.group),
            Outcome::Uniform { pa, .. } if !(geometry.leaf_allowed(1) && pa % Geometry::entry_size(1) == 0) => {
                Some(self.group)
            }
            _ => None,
        }
    }
}
