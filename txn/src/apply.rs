//! Applying a plan: fill the new tables, make the recorded stores in order, issue the
//! invalidation batch, give back the freed tables. Nothing here can fail: every page was
//! allocated before the first store.

use core::sync::atomic::Ordering;

use smallvec::SmallVec;

use crate::allocator::PageAllocator;
use crate::codec::Codec;
use crate::codec::INVALID_ENTRY;
use crate::geometry::PAGE_SIZE;
use crate::memory::TableMemory;
use crate::plan::{Recorded, Store, TableRef, Value};
use crate::tlb::{after_stores, Barrier, Tlb};

/// Pages for the plan's new tables, in the plan's order.
pub(crate) type Pages = SmallVec<[u64; 4]>;

/// Writes `plan` into the table using `pages` for its new tables, then issues its
/// invalidations through `tlb`. Returns the pages to free (after the invalidations).
///
/// Without break-before-make (X64, or a table no CPU walks): fill the new tables, make the
/// stores in the planned order, issue the invalidation batch.
///
/// With break-before-make on a live table (AArch64, Arm ARM D8.14): fill the new tables and
/// make the stores into them (no walker reaches them yet); store invalid into every entry
/// that needs a break; `Stores` barrier; invalidate the broken entries; `Invalidations`
/// barrier; make every remaining store in order; `Stores` barrier; invalidate what changed
/// in place; `Invalidations` barrier; `Instructions` barrier.
pub(crate) fn apply<C: Codec, P: PageAllocator>(
    allocator: &P,
    tlb: &impl Tlb,
    plan: &Recorded,
    pages: &Pages,
) -> SmallVec<[u64; 2]> {
    let memory = TableMemory::new(allocator);
    let resolve = |table: TableRef| match table {
        TableRef::Existing(pa) => pa,
        TableRef::New(number) => pages[number as usize],
    };
    let write = |store: &Store| {
        let table = resolve(store.table);
        let index = usize::from(store.index);
        match store.value {
            Value::Raw(raw) if store.count == 1 => memory.write(table, index, raw),
            Value::Raw(first) => {
                let mut value = first;
                for entry in &memory.entries(table)[index..index + usize::from(store.count)] {
                    entry.store(value, Ordering::Relaxed);
                    value = value.wrapping_add(store.step);
                }
            }
            Value::NewTable { table: new, level } => {
                memory.write(table, index, C::encode_table(pages[new as usize], level));
            }
        }
    };
    // New tables are unreachable until a store links them, so they can be filled first.
    for (table, &page) in plan.new_tables.iter().zip(pages) {
        table.fill::<C, P>(&memory, page);
    }
    if plan.phased {
        let into_new = |store: &&Store| matches!(store.table, TableRef::New(_));
        plan.stores.iter().filter(into_new).for_each(write);
        if plan.counts.breaks > 0 {
            for store in plan.stores.iter().filter(|store| store.breaks) {
                memory.write(resolve(store.table), usize::from(store.index), INVALID_ENTRY);
            }
            tlb.barrier(Barrier::Stores);
            plan.break_flush.issue(tlb);
            tlb.barrier(Barrier::Invalidations);
        }
        plan.stores.iter().filter(|store| !into_new(store)).for_each(write);
    } else {
        plan.stores.iter().for_each(write);
    }
    after_stores(tlb, plan.phased, || plan.flush.issue(tlb));
    plan.freed.iter().map(|&table| resolve(table)).collect()
}

/// Gives `pages` back to `allocator` (pages of a failed commit).
pub(crate) fn give_back(allocator: &mut impl PageAllocator, pages: &[u64]) {
    for &page in pages {
        allocator.free_page(page, PAGE_SIZE);
    }
}
