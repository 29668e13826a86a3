//! The one-op fast path: a map, unmap or protect that stays inside one existing
//! last-level table and changes no structure (no split, merge, new or freed table).
//!
//! It makes exactly the stores and invalidations the planner would plan for such an op,
//! in the same order, but with one walk and no recorded plan. Anything else (bad input,
//! a failed precondition, a structural change, a live table that needs break-before-make)
//! returns `None` and goes through the planner, which also produces the error.

use crate::allocator::PageAllocator;
use crate::codec::{Codec, Entry, INVALID_ENTRY};
use crate::geometry::{Geometry, ENTRIES_PER_TABLE, PAGE_SIZE};
use crate::memory::TableMemory;
use crate::overlay::Change;
use crate::plan::{Outcome, Slot, Summary};
use crate::table::Tables;
use crate::tlb::{FlushBatch, Tlb};
use crate::transaction::{check_op, CommitReport, Committed, Op, Retired};

/// Commits `op` directly if it qualifies for the fast path.
pub(crate) fn try_commit<C: Codec, P: PageAllocator, T: Tlb>(
    table: &mut Tables<C, P, T>,
    op: &Op,
) -> Option<Committed> {
    if C::USES_BARRIERS && table.is_live() {
        return None;
    }
    let geometry = table.geometry();
    let (start, end, change) = check_op::<C>(&geometry, op).ok()?;
    let table_span = Geometry::entry_size(1);
    if start / table_span != (end - 1) / table_span || end - start == table_span {
        return None;
    }
    let memory = TableMemory::new(table.allocator());
    let mut last_level = table.root();
    for level in (1..=geometry.top_level()).rev() {
        match C::decode(memory.read(last_level, Geometry::index(start, level)), level) {
            Entry::Table(next) => last_level = next,
            _ => return None,
        }
    }
    let first = Geometry::index(start, 0);
    let count = ((end - start) / PAGE_SIZE) as usize;
    // Pass 1: every page qualifies, and the table stays a table. The new entries of small
    // changes are kept for pass 2.
    let mut summary = Summary::new(0, geometry.leaf_allowed(1));
    let mut kept = [INVALID_ENTRY; KEPT_ENTRIES];
    for page in 0..count {
        let index = first + page;
        let (raw, slot) = new_entry::<C>(change, page, memory.read(last_level, index))?;
        if let Some(keep) = kept.get_mut(page) {
            *keep = raw;
        }
        summary.add(index, slot);
    }
    // The untouched entries, nearest first, until the outcome is known.
    let mut after = first + count;
    while summary.undecided() && after < ENTRIES_PER_TABLE {
        summary.add(after, slot_of::<C>(memory.read(last_level, after)));
        after += 1;
    }
    let mut before = first;
    while summary.undecided() && before > 0 {
        before -= 1;
        summary.add(before, slot_of::<C>(memory.read(last_level, before)));
    }
    match summary.outcome() {
        Outcome::Empty => return None,
        Outcome::Uniform { pa, .. } if geometry.leaf_allowed(1) && pa % table_span == 0 => return None,
        _ => {}
    }
    // Pass 2: the stores, then one invalidation batch.
    let mut flush = FlushBatch::for_table::<C>(table.is_live());
    let mut written = 0;
    for page in 0..count {
        let index = first + page;
        let old = memory.read(last_level, index);
        let new = if count <= KEPT_ENTRIES {
            kept[page]
        } else {
            // Pass 1 accepted the same old entry, so this cannot fail.
            new_entry::<C>(change, page, old).map_or(old, |(raw, _)| raw)
        };
        if new != old {
            memory.write(last_level, index, new);
            written += 1;
            if C::is_live(old) {
                let va = start + page as u64 * PAGE_SIZE;
                flush.record(geometry.to_canonical(va), C::invalidation_pages(0));
            }
        }
    }
    flush.issue(table.tlb());
    let report = CommitReport {
        entries_written: written,
        pages_invalidated: flush.page_count(),
        full_flushes: usize::from(flush.is_full()),
        invalidation_batches: usize::from(!flush.is_empty()),
        ..CommitReport::default()
    };
    Some(Committed {
        report,
        invalidations: flush,
        retired: Retired::default(),
    })
}

/// How many new entries pass 1 keeps for pass 2 (larger changes are encoded twice).
const KEPT_ENTRIES: usize = 8;

/// The summary slot of an entry of a last-level table.
#[inline]
fn slot_of<C: Codec>(raw: u64) -> Slot {
    match C::decode(raw, 0) {
        Entry::Leaf { pa, attributes } => Slot::Leaf { pa, attributes },
        Entry::Invalid => Slot::Invalid,
        Entry::Table(_) => Slot::Table,
    }
}

/// The new raw entry and its slot for page number `page` of `change`, given the old raw
/// entry; `None` where a precondition fails.
fn new_entry<C: Codec>(change: Change, page: usize, old: u64) -> Option<(u64, Slot)> {
    let offset = page as u64 * PAGE_SIZE;
    match (change, C::decode(old, 0)) {
        (Change::Map { pa, attributes }, _) => {
            let pa = pa + offset;
            Some((C::encode_leaf(pa, attributes, 0), Slot::Leaf { pa, attributes }))
        }
        (Change::Unmap, Entry::Leaf { .. }) => Some((INVALID_ENTRY, Slot::Invalid)),
        (Change::Protect { attributes: change }, Entry::Leaf { pa, attributes }) => {
            let attributes = attributes.reprotected(change);
            Some((C::encode_leaf(pa, attributes, 0), Slot::Leaf { pa, attributes }))
        }
        _ => None,
    }
}
