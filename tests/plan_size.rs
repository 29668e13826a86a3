//! Regression tests from fuzzing (`fuzz/`): the size of a plan grows with the tables a
//! transaction touches, not with the entries it writes.
//!
//! Found by the `familiar_api` target: a map of 184 GiB whose physical address is not
//! aligned to any block size relative to its virtual address needs 48 million 4 KiB
//! entries. The planner recorded one store per entry (about 1.9 GB of plan) and the process
//! ran out of memory before the allocator could refuse the 94,000 table pages. Now a new
//! table's pages are one recorded run: the plan is counted in seconds, the commit fails
//! with `OutOfResources` at the first page the pool cannot give, and the table is unchanged.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use txpaging::{
    Aarch64Config, Aarch64PageTable, Arch, MemoryAttributes as MA, PagePool, PageTable, PagingTable, PagingType,
    PtError, RecordingMmu, X64Config, X64PageTable,
};

const GIB: u64 = 0x4000_0000;
const VA: u64 = 0x40 * GIB;
const SIZE: u64 = 184 * GIB;
/// 4 KiB off any block alignment: only 4 KiB pages can map it.
const PA: u64 = 0x1000;
/// One last-level table per 2 MiB.
const LAST_LEVEL_TABLES: usize = (SIZE / 0x20_0000) as usize;

/// The heap of this test binary, counted: what a plan costs in memory.
struct CountingHeap;

static HEAP_NOW: AtomicUsize = AtomicUsize::new(0);
static HEAP_PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator; only counts bytes.
unsafe impl GlobalAlloc for CountingHeap {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let now = HEAP_NOW.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
        HEAP_PEAK.fetch_max(now, Ordering::Relaxed);
        // SAFETY: the caller's contract, forwarded.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        HEAP_NOW.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: the caller's contract, forwarded.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static HEAP: CountingHeap = CountingHeap;

/// Heap growth above `base` allowed while planning the 94,392 tables: a few tens of bytes
/// per table (one run and one new-table record each), nowhere near the 1.9 GB of one
/// store per entry.
const PLAN_HEAP_LIMIT: usize = 32 << 20;

/// The tests of this file run one at a time, so each peak is its own.
static SERIAL: Mutex<()> = Mutex::new(());

/// Runs `step` and returns the peak heap above what was in use before it.
fn peak_heap_of<R>(step: impl FnOnce() -> R) -> (R, usize) {
    let base = HEAP_NOW.load(Ordering::Relaxed);
    HEAP_PEAK.store(base, Ordering::Relaxed);
    let result = step();
    (result, HEAP_PEAK.load(Ordering::Relaxed).saturating_sub(base))
}

/// Plans and commits the huge alias on `table` (which maps its first 2 MiB): the plan is
/// counted by tables within the heap limit, the commit fails with `OutOfResources`, and the
/// table and the pool are as they were.
fn plan_and_refuse<A: Arch>(mut table: PagingTable<A, PagePool, RecordingMmu>) {
    let _serial = SERIAL.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    table.map_memory_region(0, 0x20_0000, MA::Writeback).unwrap();
    let before: Vec<_> = table.regions().collect();
    let pages_before = table.allocator().live_pages();

    let (plan, heap) = peak_heap_of(|| {
        table
            .transaction()
            .map_aliased(VA, PA, SIZE, MA::Writeback)
            .plan()
            .unwrap()
    });
    assert!(heap < PLAN_HEAP_LIMIT, "planning took {heap} bytes of heap");
    // The last-level tables and the 184 tables of 2 MiB entries above them (the table of
    // 1 GiB entries exists: the first map made it).
    assert_eq!(plan.tables_to_allocate, LAST_LEVEL_TABLES + 184);
    // Every page, every new table's 512 entries, and one link per new table.
    let links = plan.tables_to_allocate;
    assert_eq!(
        plan.entries_to_write,
        (SIZE / 0x1000) as usize + 512 * plan.tables_to_allocate + links
    );

    let (error, heap) = peak_heap_of(|| {
        table
            .map_aliased_memory_region(VA, PA, SIZE, MA::Writeback)
            .unwrap_err()
    });
    assert!(heap < PLAN_HEAP_LIMIT, "the failed commit took {heap} bytes of heap");
    assert_eq!(error, PtError::OutOfResources);
    assert_eq!(table.regions().collect::<Vec<_>>(), before);
    assert_eq!(table.allocator().live_pages(), pages_before, "a page leaked");
}

#[test]
fn a_huge_unaligned_alias_is_planned_by_tables_and_refused_by_the_pool_x64() {
    let config = X64Config { one_gib_pages: true };
    plan_and_refuse(
        X64PageTable::with_mmu(PagePool::new(64), PagingType::Paging4Level, config, RecordingMmu::new()).unwrap(),
    );
}

#[test]
fn a_huge_unaligned_alias_is_planned_by_tables_and_refused_by_the_pool_aarch64() {
    let config = Aarch64Config::default();
    plan_and_refuse(
        Aarch64PageTable::with_mmu(PagePool::new(64), PagingType::Paging4Level, config, RecordingMmu::new()).unwrap(),
    );
}
