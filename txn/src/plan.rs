//! The planner: one read-only walk from the root over the tables the overlay touches.
//!
//! The walk never stores. It checks every precondition and records what the commit will
//! do: the new tables (and what fills them), every entry store in order, the tables to
//! free and the invalidations. New tables are named by their number in the plan until
//! `apply` has pages for them. The walk only ever reads entries it has not planned to
//! change, so the recorded stores are exactly what a direct update would have done.
//!
//! At each entry:
//! - the overlay covers the entry uniformly and the level may hold that leaf: write the
//!   leaf (or the invalid entry), discarding the old subtree if there was one;
//! - the entry is a leaf the overlay changes in part: split it into a new table holding
//!   the same translations, link that table (no address changes), then descend;
//! - the entry is invalid and the overlay maps part of it: build a new table, descend,
//!   then link it;
//! - the entry is a table: descend.
//!
//! After descending, a table that became empty is dropped, and a table whose 512 entries
//! became one contiguous, aligned, uniform leaf is replaced by that leaf (merge).

use core::sync::atomic::Ordering;

use smallvec::SmallVec;

use crate::allocator::PageAllocator;
use crate::attributes::MemoryAttributes;
use crate::codec::{Codec, Entry, INVALID_ENTRY};
use crate::decide::{
    fill_split, fold_untouched, mark_touched, new_entry, Edges, Outcome, Slot, Summary, RAW_ADDRESS_LIMIT,
};
use crate::error::{Blame, Reason};
use crate::geometry::{Geometry, ENTRIES_PER_TABLE, PAGE_SIZE};
use crate::memory::TableMemory;
use crate::overlay::{Action, Overlay, Segment};
use crate::tlb::FlushBatch;

/// What a plan counts: the stores, new tables and freed tables of the commit it describes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// 64-bit entry stores, including the 512 of each new table.
    pub entries_written: usize,
    /// Table pages taken from the allocator.
    pub tables_allocated: usize,
    /// Table pages given back (merged, emptied, or replaced subtrees).
    pub tables_freed: usize,
    /// Live entries changed with break-before-make.
    pub breaks: usize,
}

/// Where the old content of a table comes from.
#[derive(Debug, Clone, Copy)]
enum View {
    /// An existing table in memory.
    Memory(u64),
    /// A new table under an invalid entry: all entries invalid.
    Empty,
    /// A new table splitting a leaf: entry `i` maps `pa + i * size` with `attributes`.
    Split { pa: u64, attributes: MemoryAttributes },
}

/// What an op covering a whole entry does to it.
enum Covered {
    /// The entry becomes this leaf or invalid entry.
    Becomes(Slot),
    /// Unmap or protect of an entry that maps nothing: the op's precondition fails here.
    Missing,
    /// The entry must become (or stay) a table: descend into it.
    Descend,
}

/// Where the plan stood before descending into a table (see `Walk::roll_back`).
#[derive(Debug, Clone, Copy)]
struct Mark {
    stores: usize,
    flush: (usize, u64),
    break_flush: (usize, u64),
}

/// How the table below an entry is (or will be) linked.
#[derive(Debug, Clone, Copy)]
enum Link {
    /// It was linked before the commit.
    Linked,
    /// A split: the planned store `.0` links it before its entries change.
    Reserved(usize),
    /// A new table, linked once complete.
    Unlinked,
}

/// The part of the overlay covering an entry, when it covers it with one effect.
struct Cover {
    action: Action,
    attributes: MemoryAttributes,
    check: Option<u32>,
}

/// `Some` if `segments` cover `start..end` completely with one continuous effect.
fn uniform_cover(segments: &[Segment], start: u64, end: u64) -> Option<Cover> {
    let first = segments.first()?;
    let last = segments.last()?;
    if first.start > start || last.end < end || !segments.windows(2).all(|w| w[0].continued_by(&w[1])) {
        return None;
    }
    let action = match first.action {
        Action::Map { pa } => Action::Map {
            pa: pa + (start - first.start),
        },
        other => other,
    };
    let check = segments.iter().filter_map(|s| s.check).min();
    Some(Cover {
        action,
        attributes: first.attributes,
        check,
    })
}

/// Whether `segment` leaves the leaf at `entry_va` (mapping `pa` with `attributes`) as it is.
fn leaves_leaf_unchanged(segment: &Segment, entry_va: u64, pa: u64, attributes: MemoryAttributes) -> bool {
    match segment.action {
        Action::Map { pa: seg_pa } => {
            let from = segment.start.max(entry_va);
            segment.attributes == attributes && seg_pa + (from - segment.start) == pa + (from - entry_va)
        }
        Action::Protect => attributes.reprotected(segment.attributes) == attributes,
        Action::Unmap => false,
    }
}

/// A table the plan refers to: one that exists, or the plan's new table number `n`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TableRef {
    Existing(u64),
    New(u32),
}

/// The value of a planned store.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Value {
    /// This raw entry.
    Raw(u64),
    /// A pointer (held at `level`) to the plan's new table number `table`.
    NewTable { table: u32, level: u8 },
}

/// A planned run of 64-bit stores into consecutive entries of one table: entry
/// `index + i` (for `i < count`) gets `value + i * step`. A run of leaves mapping
/// consecutive output addresses has the entry size as `step`; one store has `count` 1.
/// Recording runs keeps a plan's size proportional to the tables it touches, not to the
/// entries it writes (a map of 184 GiB in 4 KiB pages is some 94,000 runs).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Store {
    pub(crate) table: TableRef,
    pub(crate) index: u16,
    pub(crate) count: u16,
    pub(crate) value: Value,
    pub(crate) step: u64,
    /// The entry is live and the change needs break-before-make: store invalid first.
    /// Such a store is never part of a longer run.
    pub(crate) breaks: bool,
}

/// Where a store goes: entry `index` of `table`, at `level`, covering linear `va`.
#[derive(Debug, Clone, Copy)]
struct Position {
    table: TableRef,
    index: usize,
    level: u8,
    va: u64,
}

/// A new table: what its 512 entries (of `level`) start as.
#[derive(Debug, Clone, Copy)]
pub(crate) struct NewTable {
    view: View,
    level: u8,
}

impl NewTable {
    /// Fills `page` with the table's initial entries. A split's leaves step by one entry
    /// size in their raw value (see [`RAW_ADDRESS_LIMIT`]), so they are computed, not each
    /// encoded.
    pub(crate) fn fill<C: Codec, P: PageAllocator>(&self, memory: &TableMemory<'_, P>, page: u64) {
        match self.view {
            View::Split { pa, attributes } => fill_split::<C, P>(memory, page, pa, attributes, self.level),
            view => memory.fill(page, |index| view_entry::<C>(view, index, self.level)),
        }
    }
}

/// Entry `index` of a new table described by `view` (not `Memory`).
fn view_entry<C: Codec>(view: View, index: usize, level: u8) -> u64 {
    match view {
        View::Split { pa, attributes } => {
            C::encode_leaf(pa + index as u64 * Geometry::entry_size(level), attributes, level)
        }
        View::Empty | View::Memory(_) => INVALID_ENTRY,
    }
}

/// What a commit will do, in order.
#[derive(Debug, Clone, Default)]
pub(crate) struct Recorded {
    /// Tables to allocate and fill before any store.
    pub(crate) new_tables: SmallVec<[NewTable; 2]>,
    /// Stores, in the order they must happen.
    pub(crate) stores: SmallVec<[Store; 4]>,
    /// Tables to give back after the invalidations.
    pub(crate) freed: SmallVec<[TableRef; 2]>,
    /// The invalidations after the stores.
    pub(crate) flush: FlushBatch,
    /// The invalidations between the breaks and the stores (break-before-make).
    pub(crate) break_flush: FlushBatch,
    /// Whether the commit uses break-before-make phases (the table is live and the
    /// architecture needs them).
    pub(crate) phased: bool,
    /// The counts.
    pub(crate) counts: Counts,
}

/// A precondition the walk found broken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct WalkError {
    /// The op to blame, or the whole transaction.
    pub(crate) blame: Blame,
    /// What was broken.
    pub(crate) reason: Reason,
    /// Linear address where it was found, if one applies.
    pub(crate) linear: Option<u64>,
}

/// The planner's walk.
pub(crate) struct Walk<'a, C: Codec, P: PageAllocator> {
    memory: TableMemory<'a, P>,
    geometry: Geometry,
    pub(crate) plan: Recorded,
    /// Linear ranges that must never be broken.
    pinned: &'a [(u64, u64)],
    /// The first failed precondition: the op it blames (smallest wins), why, and the
    /// linear address where it failed (lowest wins for the same op).
    pub(crate) error: Option<WalkError>,
    _codec: core::marker::PhantomData<C>,
}

impl<'a, C: Codec, P: PageAllocator> Walk<'a, C, P> {
    /// A walk over the table reached through `allocator`. `live`: the table is installed,
    /// so changes that need break-before-make get it, and must not touch `pinned` ranges.
    pub(crate) fn new(allocator: &'a P, geometry: Geometry, live: bool, pinned: &'a [(u64, u64)]) -> Self {
        Self {
            memory: TableMemory::new(allocator),
            geometry,
            plan: Recorded {
                flush: FlushBatch::for_table::<C>(live),
                break_flush: FlushBatch::for_table::<C>(live),
                phased: live && C::USES_BARRIERS,
                ..Recorded::default()
            },
            pinned,
            error: None,
            _codec: core::marker::PhantomData,
        }
    }

    /// The geometry of the walked table.
    pub(crate) fn geometry(&self) -> Geometry {
        self.geometry
    }

    /// Plans `overlay` over the table rooted at `root`.
    pub(crate) fn run(&mut self, root: u64, overlay: &Overlay) {
        // Most segments of a batch change at least one entry each.
        self.plan.stores.reserve(overlay.segments().len());
        for &(start, end, op) in overlay.deferred_checks() {
            if let Some(hole) = self.first_unmapped(root, self.geometry.top_level(), 0, start, end) {
                self.not_mapped(op, hole);
            }
        }
        let top = self.geometry.top_level();
        self.update_table(
            TableRef::Existing(root),
            View::Memory(root),
            top,
            0,
            overlay.segments(),
            false,
        );
    }

    /// Records a broken precondition; the one blaming the earliest op (then the one at the
    /// lowest address) is reported.
    fn fail(&mut self, blame: Blame, reason: Reason, linear: Option<u64>) {
        let new = WalkError { blame, reason, linear };
        match self.error {
            Some(first) if (first.blame, first.linear) <= (blame, linear) => {}
            _ => self.error = Some(new),
        }
    }

    /// Records that the checked `segments` overlapping the unmapped entry at `entry_va` fail.
    fn segments_not_mapped(&mut self, segments: &[Segment], entry_va: u64) {
        for segment in segments {
            if let Some(op) = segment.check {
                self.not_mapped(op, segment.start.max(entry_va));
            }
        }
    }

    /// Records that op `op` needs linear address `linear` mapped, and it is not.
    fn not_mapped(&mut self, op: u32, linear: u64) {
        self.fail(Blame::Op(op as usize), Reason::NotMapped, Some(linear));
    }

    fn record_invalidation(&mut self, linear_va: u64, old: u64, level: u8) {
        self.plan
            .flush
            .record(self.geometry.to_canonical(linear_va), C::invalidation_pages(old, level));
    }

    /// Whether storing `new` over the live `old` at `at` needs break-before-make.
    fn is_break(&self, at: Position, old: u64, new: u64) -> bool {
        self.plan.phased
            && matches!(at.table, TableRef::Existing(_))
            && C::is_live(old)
            && C::needs_break(old, new, at.level)
    }

    /// Plans storing `value` at `at`, whose content is `old` at that point, and records the
    /// invalidation it needs (none if `keeps_translations`: a split linking a table that
    /// holds the leaf's translations). Returns whether the store breaks the entry first.
    #[inline(always)]
    fn store(&mut self, at: Position, old: u64, value: Value, keeps_translations: bool) -> bool {
        let breaks = self.classify(at, old, value, keeps_translations);
        self.push_store(at.table, at.index, value, 1, 0, breaks);
        breaks
    }

    /// Records the run of `count` stores from `at.index`, `value + i * step`, joining it to
    /// the last recorded run when it continues it (same table, next entry, same step).
    #[inline(always)]
    fn push_store(&mut self, table: TableRef, index: usize, value: Value, count: usize, step: u64, breaks: bool) {
        if let (false, Value::Raw(raw), Some(last)) = (breaks, value, self.plan.stores.last_mut()) {
            if let (false, Value::Raw(first)) = (last.breaks, last.value) {
                if last.table == table && usize::from(last.index) + usize::from(last.count) == index {
                    let run_step = if last.count == 1 {
                        raw.wrapping_sub(first)
                    } else {
                        last.step
                    };
                    let next = first.wrapping_add(u64::from(last.count).wrapping_mul(run_step));
                    if raw == next && (count == 1 || step == run_step) {
                        last.step = run_step;
                        last.count += count as u16;
                        return;
                    }
                }
            }
        }
        self.plan.stores.push(Store {
            table,
            index: index as u16,
            count: count as u16,
            value,
            step,
            breaks,
        });
    }

    /// Plans a store at `at` whose value is decided later by
    /// [`finish_reserved`](Self::finish_reserved); it keeps its place in the order of
    /// stores. Until then it holds a table pointer to no table, which no run joins.
    fn reserve_store(&mut self, at: Position) -> usize {
        self.plan.stores.push(Store {
            table: at.table,
            index: at.index as u16,
            count: 1,
            value: Value::NewTable {
                table: u32::MAX,
                level: at.level,
            },
            step: 0,
            breaks: false,
        });
        self.plan.stores.len() - 1
    }

    /// Decides the store reserved as `index` (at `at`, over `old`): `value`.
    fn finish_reserved(&mut self, index: usize, at: Position, old: u64, value: Value, keeps_translations: bool) {
        self.plan.stores[index].value = value;
        self.plan.stores[index].breaks = self.classify(at, old, value, keeps_translations);
    }

    /// Classifies a store of `value` at `at`, over `old`: counts it, decides whether it
    /// breaks the entry and records its invalidation.
    fn classify(&mut self, at: Position, old: u64, value: Value, keeps_translations: bool) -> bool {
        self.plan.counts.entries_written += 1;
        let new = match value {
            Value::Raw(raw) => raw,
            // The address is not known yet; any table pointer classifies the same way.
            Value::NewTable { level, .. } => C::encode_table(0, level),
        };
        let va = self.geometry.to_canonical(at.va);
        if self.is_break(at, old, new) {
            self.plan.counts.breaks += 1;
            let size = Geometry::entry_size(at.level);
            if self
                .pinned
                .iter()
                .any(|&(start, end)| start < at.va + size && at.va < end)
            {
                let first_pinned = self
                    .pinned
                    .iter()
                    .filter(|&&(start, end)| start < at.va + size && at.va < end)
                    .map(|&(start, _)| start.max(at.va))
                    .min();
                self.fail(Blame::Transaction, Reason::PinnedRangeBreak, first_pinned);
            }
            self.plan.break_flush.record(va, C::invalidation_pages(old, at.level));
            return true;
        }
        let unreachable = self.plan.phased && matches!(at.table, TableRef::New(_));
        if C::is_live(old) && new != old && !keeps_translations && !unreachable {
            self.plan.flush.record(va, C::invalidation_pages(old, at.level));
        }
        false
    }

    /// Plans storing one page (level 0) `new` over `old` at `at`, when they differ: what
    /// [`store`](Self::store) does, without its break checks when the commit has no
    /// break-before-make phases (no store can break then).
    #[inline(always)]
    fn store_page(&mut self, at: Position, old: u64, new: u64) {
        if self.plan.phased {
            self.store(at, old, Value::Raw(new), false);
            return;
        }
        self.plan.counts.entries_written += 1;
        self.push_store(at.table, at.index, Value::Raw(new), 1, 0, false);
        if C::is_live(old) {
            let va = self.geometry.to_canonical(at.va);
            self.plan.flush.record(va, C::invalidation_pages(old, 0));
        }
    }

    /// Plans the run of `count` stores from `at`: entry `i` goes from `old + i * old_step`
    /// to `new + i * new_step`. Every entry of the run must have the same attribute bits
    /// before and the same after (so one classification holds for all), and either every
    /// entry changes or none does. Same stores, counts, breaks and invalidations as `count`
    /// calls of [`store`](Self::store).
    fn store_run(&mut self, at: Position, (old, old_step): (u64, u64), (new, new_step): (u64, u64), count: usize) {
        if count == 0 || (old == new && old_step == new_step) {
            return;
        }
        let size = Geometry::entry_size(at.level);
        if self.is_break(at, old, new) {
            for i in 0..count as u64 {
                let entry = Position {
                    index: at.index + i as usize,
                    va: at.va + i * size,
                    ..at
                };
                let value = Value::Raw(new.wrapping_add(i * new_step));
                self.store(entry, old.wrapping_add(i * old_step), value, false);
            }
            return;
        }
        self.plan.counts.entries_written += count;
        self.push_store(at.table, at.index, Value::Raw(new), count, new_step, false);
        let unreachable = self.plan.phased && matches!(at.table, TableRef::New(_));
        if !C::is_live(old) || unreachable {
            return;
        }
        let pages = C::invalidation_pages(old, at.level);
        if at.level == 0 {
            // One range: consecutive pages are consecutive invalidations.
            self.plan
                .flush
                .record(self.geometry.to_canonical(at.va), count as u64 * pages);
        } else {
            for i in 0..count as u64 {
                self.plan
                    .flush
                    .record(self.geometry.to_canonical(at.va + i * size), pages);
            }
        }
    }

    /// Plans a new table filled with `view`'s entries (of `level`).
    fn new_table(&mut self, view: View, level: u8) -> TableRef {
        self.plan.counts.tables_allocated += 1;
        self.plan.counts.entries_written += ENTRIES_PER_TABLE;
        self.plan.new_tables.push(NewTable { view, level });
        TableRef::New(self.plan.new_tables.len() as u32 - 1)
    }

    fn free_table(&mut self, table: TableRef) {
        self.plan.counts.tables_freed += 1;
        self.plan.freed.push(table);
    }

    #[inline]
    fn old_entry(&self, view: View, index: usize, level: u8) -> u64 {
        match view {
            View::Memory(table) => self.memory.read(table, index),
            other => view_entry::<C>(other, index, level),
        }
    }

    /// Whether entry `index + 1` (of `level`) of the table `view` holds continues entry
    /// `index` as a leaf run would: its raw value is one entry size further on. Callers
    /// check that `index + 1` is inside the table.
    #[inline(always)]
    fn continues(&self, view: View, index: usize, level: u8) -> bool {
        match view {
            View::Memory(table) => {
                let size = Geometry::entry_size(level);
                self.memory.read(table, index + 1) == self.memory.read(table, index).wrapping_add(size)
            }
            View::Split { .. } => true,
            View::Empty => false,
        }
    }

    /// A store of a pointer to `table` into an entry of `level`.
    fn table_pointer(table: TableRef, level: u8) -> Value {
        match table {
            TableRef::Existing(pa) => Value::Raw(C::encode_table(pa, level)),
            TableRef::New(table) => Value::NewTable { table, level },
        }
    }

    /// Applies `segments` (sorted, all overlapping the table's range) to the table whose
    /// old content is `view` and whose stores go to `target`. Returns what it became;
    /// `can_merge` says whether a uniform result could become a leaf in the parent.
    fn update_table(
        &mut self,
        target: TableRef,
        view: View,
        level: u8,
        table_va: u64,
        segments: &[Segment],
        can_merge: bool,
    ) -> Outcome {
        let size = Geometry::entry_size(level);
        let table_end = table_va + size * ENTRIES_PER_TABLE as u64;
        let mut summary = Summary::new(level, can_merge);
        let mut touched = [0u64; ENTRIES_PER_TABLE / 64];
        let (mut lowest, mut highest) = (ENTRIES_PER_TABLE, 0);
        let mut position = table_va;
        let mut first = 0;
        if level == 0 {
            self.update_pages(target, view, table_va, segments, &mut summary, &mut touched);
            if let Some(low) = (0..touched.len()).find(|&w| touched[w] != 0) {
                lowest = low * 64 + touched[low].trailing_zeros() as usize;
                let high = (0..touched.len()).rev().find(|&w| touched[w] != 0).unwrap_or(low);
                highest = high * 64 + 63 - touched[high].leading_zeros() as usize;
            }
            // The general loop below finds no segment left in the table.
            position = table_end;
        }
        loop {
            while first < segments.len() && segments[first].end <= position {
                first += 1;
            }
            let Some(segment) = segments.get(first) else {
                break;
            };
            let start = segment.start.max(position);
            if start >= table_end {
                break;
            }
            let index = Geometry::index(start, level);
            let entry_va = table_va + index as u64 * size;
            let entry_end = entry_va + size;
            let mut last = first;
            while last < segments.len() && segments[last].start < entry_end {
                last += 1;
            }
            // A protect covering this entry and the next ones alone: a run of leaves.
            if last - first == 1 && matches!(segment.action, Action::Protect) && segment.start <= entry_va {
                let covered_end = entry_va + (segment.end.min(table_end) - entry_va) / size * size;
                if covered_end - entry_va >= 2 * size && self.continues(view, index, level) {
                    let range = (entry_va, covered_end);
                    let next = self.protect_run(
                        target,
                        view,
                        level,
                        range,
                        segment.attributes,
                        &mut summary,
                        &mut touched,
                    );
                    if next > entry_va {
                        lowest = lowest.min(index);
                        highest = Geometry::index(next - size, level);
                        position = next;
                        continue;
                    }
                }
            }
            let slot = self.update_entry(target, view, level, index, entry_va, &segments[first..last]);
            summary.add(index, slot);
            touched[index / 64] |= 1 << (index % 64);
            lowest = lowest.min(index);
            highest = index;
            position = entry_end;
        }
        if lowest == ENTRIES_PER_TABLE {
            return Outcome::Mixed;
        }
        let all_touched = touched.iter().all(|&word| word == u64::MAX);
        if !summary.undecided() || all_touched {
            return summary.outcome();
        }
        // Fold in the entries the walk did not change.
        match view {
            View::Empty => summary.add(0, Slot::Invalid),
            View::Split { pa, attributes } => summary.add(0, Slot::Leaf { pa, attributes }),
            View::Memory(table) => {
                let changed = |index: usize| touched[index / 64] & (1 << (index % 64)) != 0;
                let range = (lowest, highest);
                fold_untouched::<C, P>(&self.memory, table, level, range, changed, Edges::UNKNOWN, &mut summary);
            }
        }
        summary.outcome()
    }

    /// The entry loop of [`update_table`](Self::update_table) for a last-level table: segments
    /// cover whole pages, so each page is covered by exactly one segment, and the pages of
    /// each segment are updated in order without searching for the segments of every entry.
    /// Same decisions, stores and failures as [`update_entry`](Self::update_entry) at level 0.
    fn update_pages(
        &mut self,
        target: TableRef,
        view: View,
        table_va: u64,
        segments: &[Segment],
        summary: &mut Summary,
        touched: &mut [u64; ENTRIES_PER_TABLE / 64],
    ) {
        let table_end = table_va + Geometry::entry_size(1);
        for segment in segments {
            let start = segment.start.max(table_va);
            let end = segment.end.min(table_end);
            if let Action::Map { pa } = segment.action {
                let pa = pa + (start - segment.start);
                self.map_pages(target, view, (start, end), pa, segment.attributes, summary, touched);
                continue;
            }
            let mut entry_va = start;
            while entry_va < end {
                let index = Geometry::index(entry_va, 0);
                if matches!(segment.action, Action::Protect)
                    && end - entry_va >= 2 * PAGE_SIZE
                    && self.continues(view, index, 0)
                {
                    let next = self.protect_run(target, view, 0, (entry_va, end), segment.attributes, summary, touched);
                    if next > entry_va {
                        entry_va = next;
                        continue;
                    }
                }
                // The page decision the one-op fast path makes too.
                let old_raw = self.old_entry(view, index, 0);
                let slot = match new_entry::<C>(segment.change(), 0, old_raw) {
                    Some((new_raw, slot)) => {
                        if new_raw != old_raw {
                            let at = Position {
                                table: target,
                                index,
                                level: 0,
                                va: entry_va,
                            };
                            self.store_page(at, old_raw, new_raw);
                        }
                        slot
                    }
                    // An unmap or protect of a page that maps nothing.
                    None => {
                        if let Some(op) = segment.check {
                            self.not_mapped(op, entry_va);
                        }
                        Slot::Invalid
                    }
                };
                summary.add(index, slot);
                touched[index / 64] |= 1 << (index % 64);
                entry_va += PAGE_SIZE;
            }
        }
    }

    /// The pages `start..end` of a last-level table mapped to `pa..` with `attributes`.
    /// Leaves of consecutive output addresses differ by one page in their raw value (a
    /// leaf is its output address ORed with attribute bits on both codecs, and below 2^48
    /// the address field cannot carry into them), so the new entries are computed, not
    /// encoded; a new table's pages become one recorded run without reading anything.
    #[allow(clippy::too_many_arguments)]
    fn map_pages(
        &mut self,
        target: TableRef,
        view: View,
        (start, end): (u64, u64),
        pa: u64,
        attributes: MemoryAttributes,
        summary: &mut Summary,
        touched: &mut [u64; ENTRIES_PER_TABLE / 64],
    ) {
        let first = Geometry::index(start, 0);
        let count = ((end - start) / PAGE_SIZE) as usize;
        // Every page continues the first: one contiguous mapping, one summary entry.
        summary.add(first, Slot::Leaf { pa, attributes });
        mark_touched(touched, first, count);
        let at = Position {
            table: target,
            index: first,
            level: 0,
            va: start,
        };
        let new = C::encode_leaf(pa, attributes, 0);
        let computed = pa + (count as u64) * PAGE_SIZE <= RAW_ADDRESS_LIMIT;
        match view {
            View::Empty if computed => self.store_run(at, (INVALID_ENTRY, 0), (new, PAGE_SIZE), count),
            View::Split { pa: split_pa, .. }
                if computed && split_pa + ENTRIES_PER_TABLE as u64 * PAGE_SIZE <= RAW_ADDRESS_LIMIT =>
            {
                let old = view_entry::<C>(view, first, 0);
                self.store_run(at, (old, PAGE_SIZE), (new, PAGE_SIZE), count);
            }
            _ => {
                let entries = match view {
                    View::Memory(table) => Some(self.memory.entries(table)),
                    _ => None,
                };
                for page in 0..count {
                    let index = first + page;
                    let old = match entries {
                        Some(entries) => entries[index].load(Ordering::Relaxed),
                        None => view_entry::<C>(view, index, 0),
                    };
                    let offset = page as u64 * PAGE_SIZE;
                    let raw = match computed {
                        true => new + offset,
                        false => C::encode_leaf(pa + offset, attributes, 0),
                    };
                    if raw != old {
                        let at = Position {
                            index,
                            va: start + offset,
                            ..at
                        };
                        self.store_page(at, old, raw);
                    }
                }
            }
        }
    }

    /// The leaves of `level` from `start`, up to `end` (entry-aligned), that a protect with
    /// `change` covers, while each old entry continues the one before it (same attribute
    /// bits, next output address): they are one run, whose new entries continue the first
    /// new entry the same way, with one decode and one encode for the whole run (see
    /// [`map_pages`](Self::map_pages) for why raw values may be stepped). Returns where the
    /// run stopped: `start` if the first entry is not a leaf or the second does not continue
    /// it (then the general entry loop is cheaper).
    #[allow(clippy::too_many_arguments)]
    #[inline(never)]
    fn protect_run(
        &mut self,
        target: TableRef,
        view: View,
        level: u8,
        (start, end): (u64, u64),
        change: MemoryAttributes,
        summary: &mut Summary,
        touched: &mut [u64; ENTRIES_PER_TABLE / 64],
    ) -> u64 {
        let size = Geometry::entry_size(level);
        let first = Geometry::index(start, level);
        if end - start < 2 * size || !self.continues(view, first, level) {
            return start;
        }
        let old = self.old_entry(view, first, level);
        let Entry::Leaf { pa, attributes } = C::decode(old, level) else {
            return start;
        };
        let attributes = attributes.reprotected(change);
        let new = C::encode_leaf(pa, attributes, level);
        // Stepping raw values stays below the address limit (see `RAW_ADDRESS_LIMIT`).
        let most = (((end - start) / size) as usize).min((RAW_ADDRESS_LIMIT.saturating_sub(pa) / size) as usize);
        if most < 2 {
            return start;
        }
        let count = match view {
            View::Memory(table) => {
                let entries = &self.memory.entries(table)[first..first + most];
                let mut expected = old.wrapping_add(size);
                let mut count = 2;
                while count < most {
                    expected = expected.wrapping_add(size);
                    if entries[count].load(Ordering::Relaxed) != expected {
                        break;
                    }
                    count += 1;
                }
                count
            }
            // A split's entries all continue each other.
            View::Split { .. } | View::Empty => most,
        };
        let at = Position {
            table: target,
            index: first,
            level,
            va: start,
        };
        self.store_run(at, (old, size), (new, size), count);
        summary.add(first, Slot::Leaf { pa, attributes });
        mark_touched(touched, first, count);
        start + count as u64 * size
    }

    /// What `action` (with `attributes`), covering a whole entry of `level` whose old content
    /// is `old`, does to it.
    #[inline]
    fn cover_effect(&self, action: Action, attributes: MemoryAttributes, old: Entry, level: u8) -> Covered {
        match (action, old) {
            (Action::Map { pa }, _) if self.geometry.leaf_allowed(level) && pa % Geometry::entry_size(level) == 0 => {
                Covered::Becomes(Slot::Leaf { pa, attributes })
            }
            (Action::Unmap | Action::Protect, Entry::Invalid) => Covered::Missing,
            (Action::Unmap, _) => Covered::Becomes(Slot::Invalid),
            (Action::Protect, Entry::Leaf { pa, attributes: old }) => Covered::Becomes(Slot::Leaf {
                pa,
                attributes: old.reprotected(attributes),
            }),
            _ => Covered::Descend,
        }
    }

    /// Applies `segments` (overlapping this entry) to entry `index` of a table at `level`.
    fn update_entry(
        &mut self,
        target: TableRef,
        view: View,
        level: u8,
        index: usize,
        entry_va: u64,
        segments: &[Segment],
    ) -> Slot {
        let old_raw = self.old_entry(view, index, level);
        let old = C::decode(old_raw, level);
        let size = Geometry::entry_size(level);
        let at = Position {
            table: target,
            index,
            level,
            va: entry_va,
        };
        if let Some(cover) = uniform_cover(segments, entry_va, entry_va + size) {
            match self.cover_effect(cover.action, cover.attributes, old, level) {
                Covered::Becomes(new) => {
                    let checked = matches!(cover.action, Action::Unmap) && cover.check.is_some();
                    self.replace(at, old_raw, old, new, checked.then_some(segments));
                    return new;
                }
                Covered::Missing => {
                    // The cover may join pieces of several ops: each fails where its own
                    // checked piece starts.
                    self.segments_not_mapped(segments, entry_va);
                    return Slot::Invalid;
                }
                Covered::Descend => {}
            }
        }
        if level == 0 {
            // A page is always covered by exactly one segment.
            self.fail(Blame::Transaction, Reason::Internal, None);
            return Slot::Invalid;
        }
        let child_level = level - 1;
        let can_merge = self.geometry.leaf_allowed(level);
        match old {
            Entry::Table(pa) => {
                let child = TableRef::Existing(pa);
                let mark = self.mark();
                let outcome = self.update_table(child, View::Memory(pa), child_level, entry_va, segments, can_merge);
                self.settle(at, old_raw, child, Link::Linked, outcome, mark)
            }
            Entry::Leaf { pa, attributes } => {
                if segments
                    .iter()
                    .all(|s| leaves_leaf_unchanged(s, entry_va, pa, attributes))
                {
                    return Slot::Leaf { pa, attributes };
                }
                // Split: the new table holds the same translations, so linking it changes no
                // address (SDM 4.10.2.3: never change page size and attributes in one store).
                let view = View::Split { pa, attributes };
                let child = self.new_table(view, child_level);
                let link = self.reserve_store(at);
                let mark = self.mark();
                let outcome = self.update_table(child, view, child_level, entry_va, segments, can_merge);
                self.settle(at, old_raw, child, Link::Reserved(link), outcome, mark)
            }
            Entry::Invalid => {
                if !segments.iter().any(|s| matches!(s.action, Action::Map { .. })) {
                    self.segments_not_mapped(segments, entry_va);
                    return Slot::Invalid;
                }
                // A new table is complete before the store that links it.
                let child = self.new_table(View::Empty, child_level);
                let mark = self.mark();
                let outcome = self.update_table(child, View::Empty, child_level, entry_va, segments, can_merge);
                self.settle(at, old_raw, child, Link::Unlinked, outcome, mark)
            }
        }
    }

    /// Where the plan stood before descending into a table.
    fn mark(&self) -> Mark {
        Mark {
            stores: self.plan.stores.len(),
            flush: self.plan.flush.checkpoint(),
            break_flush: self.plan.break_flush.checkpoint(),
        }
    }

    /// Drops what the plan recorded since `mark`: the stores into a table that will be
    /// dropped, and their invalidations, which the change of its parent entry covers.
    fn roll_back(&mut self, mark: Mark) {
        for store in self.plan.stores.drain(mark.stores..) {
            self.plan.counts.entries_written -= usize::from(store.count);
            self.plan.counts.breaks -= usize::from(store.breaks);
        }
        self.plan.flush.roll_back(mark.flush);
        self.plan.break_flush.roll_back(mark.break_flush);
    }

    /// Decides what the entry at `at` (content `old_raw` before the commit) holds after its
    /// table `child` was updated to `outcome`; `mark` is where the plan stood before.
    fn settle(
        &mut self,
        at: Position,
        old_raw: u64,
        child: TableRef,
        link: Link,
        outcome: Outcome,
        mark: Mark,
    ) -> Slot {
        let size = Geometry::entry_size(at.level);
        let (raw, slot) = match outcome {
            Outcome::Empty => (INVALID_ENTRY, Slot::Invalid),
            Outcome::Uniform { pa, attributes } if self.geometry.leaf_allowed(at.level) && pa % size == 0 => {
                (C::encode_leaf(pa, attributes, at.level), Slot::Leaf { pa, attributes })
            }
            _ => {
                match link {
                    Link::Unlinked => {
                        self.store(at, old_raw, Self::table_pointer(child, at.level), false);
                    }
                    // Split: the new table holds the leaf's translations, so linking it
                    // changes no address (SDM 4.10.2.3: never change a page's size and its
                    // translation in one store); its entries change after it is linked.
                    Link::Reserved(store) => {
                        self.finish_reserved(store, at, old_raw, Self::table_pointer(child, at.level), true);
                    }
                    Link::Linked => {}
                }
                return Slot::Table;
            }
        };
        // The table is dropped, so the stores into it (and below it) are useless. Their
        // invalidations are covered by the parent's change when that invalidates the whole
        // range: always for a table no walker reached (a split of a leaf, whose replacement
        // invalidates the leaf; a new table), and for a linked table when the change is
        // phased (the break or the removal invalidates every page of the entry). On X64 a
        // linked table's pages keep their own INVLPGs: one INVLPG covers one 4 KiB entry.
        let covered = match link {
            Link::Linked => self.plan.phased,
            Link::Reserved(_) | Link::Unlinked => true,
        };
        if covered {
            self.roll_back(mark);
        }
        match link {
            Link::Reserved(store) => {
                // The split turned out uniform again: one store of the final leaf.
                self.finish_reserved(store, at, old_raw, Value::Raw(raw), false);
            }
            // Dropping the table pointer also drops paging-structure caches (SDM 4.10.4.1).
            Link::Linked => {
                self.store(at, old_raw, Value::Raw(raw), false);
            }
            Link::Unlinked if slot != Slot::Invalid => {
                self.store(at, old_raw, Value::Raw(raw), false);
            }
            Link::Unlinked => {}
        }
        self.free_table(child);
        slot
    }

    /// Replaces entry `index` (old content `old_raw`) by the leaf or invalid `new`.
    /// `checked` carries the segments when every old page must have been mapped.
    #[allow(clippy::too_many_arguments)]
    /// Returns the new raw entry.
    #[inline(always)]
    fn replace(&mut self, at: Position, old_raw: u64, old: Entry, new: Slot, checked: Option<&[Segment]>) -> u64 {
        let new_raw = match new {
            Slot::Leaf { pa, attributes } => C::encode_leaf(pa, attributes, at.level),
            Slot::Invalid | Slot::Table => INVALID_ENTRY,
        };
        if let Entry::Table(child) = old {
            // A break invalidates the whole range itself; otherwise each changed leaf below.
            let record = !self.is_break(at, old_raw, new_raw);
            self.discard(child, at.level - 1, at.va, (at.va, new), checked, record);
            self.store(at, old_raw, Value::Raw(new_raw), false);
        } else if new_raw != old_raw {
            self.store(at, old_raw, Value::Raw(new_raw), false);
        }
        new_raw
    }

    /// Frees the subtree at `table` (entries of `level`) that `new` (the entry at `new.0`)
    /// replaces, recording the invalidation of each live leaf whose translation changes,
    /// and checking that every page was mapped where `checked` requires it.
    fn discard(
        &mut self,
        table: u64,
        level: u8,
        table_va: u64,
        new: (u64, Slot),
        checked: Option<&[Segment]>,
        record: bool,
    ) {
        let size = Geometry::entry_size(level);
        for index in 0..ENTRIES_PER_TABLE {
            let raw = self.memory.read(table, index);
            let entry_va = table_va + index as u64 * size;
            match C::decode(raw, level) {
                Entry::Invalid => {
                    // Every op whose required range overlaps the hole fails; the first one counts.
                    for segment in checked.unwrap_or_default() {
                        if let Some(op) = segment.check {
                            if segment.start < entry_va + size && entry_va < segment.end {
                                self.not_mapped(op, segment.start.max(entry_va));
                            }
                        }
                    }
                }
                Entry::Leaf { pa, attributes } => {
                    let same = match new {
                        (
                            new_va,
                            Slot::Leaf {
                                pa: new_pa,
                                attributes: new_attributes,
                            },
                        ) => new_attributes == attributes && new_pa.wrapping_add(entry_va - new_va) == pa,
                        _ => false,
                    };
                    if record && C::is_live(raw) && !same {
                        self.record_invalidation(entry_va, raw, level);
                    }
                }
                Entry::Table(child) => self.discard(child, level - 1, entry_va, new, checked, record),
            }
        }
        self.free_table(TableRef::Existing(table));
    }

    /// The first linear address of `start..end` that the table at `table` (entries of
    /// `level`, covering from `table_va`) does not map, if any.
    fn first_unmapped(&self, table: u64, level: u8, table_va: u64, start: u64, end: u64) -> Option<u64> {
        let size = Geometry::entry_size(level);
        let mut va = start;
        while va < end {
            let index = Geometry::index(va, level);
            let entry_va = table_va + index as u64 * size;
            let entry_end = (entry_va + size).min(end);
            let hole = match C::decode(self.memory.read(table, index), level) {
                Entry::Invalid => Some(va),
                Entry::Leaf { .. } => None,
                Entry::Table(child) => self.first_unmapped(child, level - 1, entry_va, va, entry_end),
            };
            if hole.is_some() {
                return hole;
            }
            va = entry_end;
        }
        None
    }
}
