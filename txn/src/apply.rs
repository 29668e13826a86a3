//! Applying a plan: fill the new tables, make the recorded stores in order, issue the
//! invalidation batch, give back the freed tables. Nothing here can fail: every page was
//! allocated before the first store.

use smallvec::SmallVec;

use crate::allocator::PageAllocator;
use crate::codec::Codec;
use crate::geometry::PAGE_SIZE;
use crate::memory::TableMemory;
use crate::plan::{Recorded, TableRef, Value};
use crate::tlb::Tlb;

/// Pages for the plan's new tables, in the plan's order.
pub(crate) type Pages = SmallVec<[u64; 4]>;

/// Writes `plan` into the table using `pages` for its new tables, then issues its
/// invalidations through `tlb`. Returns the pages to free (after the invalidations).
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
    // New tables are unreachable until a store links them, so they can be filled first.
    for (table, &page) in plan.new_tables.iter().zip(pages) {
        memory.fill(page, |index| table.entry::<C>(index));
    }
    for store in &plan.stores {
        let value = match store.value {
            Value::Raw(raw) => raw,
            Value::NewTable { table, level } => C::encode_table(pages[table as usize], level),
        };
        memory.write(resolve(store.table), usize::from(store.index), value);
    }
    plan.flush.issue(tlb);
    plan.freed.iter().map(|&table| resolve(table)).collect()
}

/// Gives `pages` back to `allocator` (pages of a failed commit).
pub(crate) fn give_back(allocator: &mut impl PageAllocator, pages: &[u64]) {
    for &page in pages {
        allocator.free_page(page, PAGE_SIZE);
    }
}
