//! Raw table memory: the only place the engine dereferences table pages.
//!
//! Every entry is read and written with one 64-bit atomic access, so a concurrent
//! hardware walker never sees a torn entry.

use core::sync::atomic::{AtomicU64, Ordering};

use crate::allocator::PageAllocator;
use crate::geometry::ENTRIES_PER_TABLE;

/// Reads and writes entries of table pages reached through an allocator's translation.
pub(crate) struct TableMemory<'a, P: PageAllocator> {
    allocator: &'a P,
}

impl<'a, P: PageAllocator> TableMemory<'a, P> {
    /// Table memory reached through `allocator.physical_to_pointer`.
    pub(crate) fn new(allocator: &'a P) -> Self {
        Self { allocator }
    }

    #[inline]
    fn slot(&self, table: u64, index: usize) -> &AtomicU64 {
        debug_assert!(index < ENTRIES_PER_TABLE);
        let base = self.allocator.physical_to_pointer(table);
        // SAFETY: `table` is a table page of this page table: the `PageAllocator` contract
        // makes `physical_to_pointer` return a valid, 4 KiB-aligned pointer to its 4 KiB,
        // so entry `index < 512` lies inside it, 8-byte aligned. Entries are only accessed
        // atomically, so sharing them with a hardware walker is sound.
        unsafe { AtomicU64::from_ptr(base.cast::<u64>().add(index)) }
    }

    /// Entry `index` of the table at `table`.
    #[inline]
    pub(crate) fn read(&self, table: u64, index: usize) -> u64 {
        self.slot(table, index).load(Ordering::Relaxed)
    }

    /// Stores `value` into entry `index` of the table at `table` with one 64-bit store.
    #[inline]
    pub(crate) fn write(&self, table: u64, index: usize, value: u64) {
        self.slot(table, index).store(value, Ordering::Relaxed)
    }

    /// Fills a table page that no walker can reach yet with `entry(i)` for each index.
    /// The 512 entries of the table at `table`, for loops that read many of them: one
    /// address translation instead of one per entry.
    #[inline]
    pub(crate) fn entries(&self, table: u64) -> &'a [AtomicU64; ENTRIES_PER_TABLE] {
        let base = self.allocator.physical_to_pointer(table);
        // SAFETY: the allocator gives a pointer to the page-aligned, 4 KiB table page at
        // `table` (`PageAllocator::physical_to_pointer`), live as long as the allocator
        // borrow `'a`; 512 atomic 64-bit entries fill exactly that page, and every access
        // to table memory goes through atomics (see `slot`).
        unsafe { &*base.cast::<[AtomicU64; ENTRIES_PER_TABLE]>() }
    }

    pub(crate) fn fill(&self, table: u64, mut entry: impl FnMut(usize) -> u64) {
        let base = self.allocator.physical_to_pointer(table).cast::<u64>();
        for index in 0..ENTRIES_PER_TABLE {
            // SAFETY: as in `slot`: `table` is a table page of this table, so `base` points
            // to 512 writable, aligned entries; no walker reaches the page yet, but the store
            // is atomic anyway so the page may be linked right after.
            unsafe { AtomicU64::from_ptr(base.add(index)) }.store(entry(index), Ordering::Relaxed);
        }
    }
}

/// Entry `index` (below 512) of the table page at physical `table`, read through
/// `allocator.physical_to_pointer` with one 64-bit atomic load: for checked walks of tables
/// this crate did not build (the firmware's), before they are adopted.
///
/// # Safety
/// `allocator.physical_to_pointer(table)` must point to a readable, 8-byte aligned 4 KiB
/// page that nothing writes non-atomically while it is read.
pub unsafe fn read_table_entry<P: PageAllocator>(allocator: &P, table: u64, index: usize) -> u64 {
    assert!(index < ENTRIES_PER_TABLE, "entry index {index} outside a table");
    TableMemory::new(allocator).read(table, index)
}
