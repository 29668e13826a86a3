//! Shared set-up for the benchmarks: one host page pool type for every library, the
//! adapters that let the peers allocate from it, a counting MMU, table walkers for the
//! per-workload counts, and the store-loop floor.
//!
//! Every library gets its table pages from [`PagePool`] (PA == host address), so the
//! memory each one uses is measured the same way. Pools are pre-faulted before a
//! benchmark uses them, so no timed region pays for first-touch page faults.
//!
//! Architecture-specific benchmark binaries (`benches/x64.rs`, later `benches/aarch64.rs`)
//! include this module with `mod common;`.
#![allow(dead_code)]

use core::cell::{Cell, RefCell};
use std::rc::Rc;

use txpaging::{Barrier, InstallRequest, Mmu, PageAllocator, PagePool, PtError, Tlb, PAGE_SIZE};

/// 64 MiB, the range of workloads 2, 3, 4, 6 and 7.
pub const RANGE: u64 = 64 << 20;
/// 4 KiB pages in [`RANGE`].
pub const RANGE_PAGES: u64 = RANGE / PAGE_SIZE;
/// Every other page of [`RANGE`].
pub const HALF_PAGES: u64 = RANGE_PAGES / 2;
/// 1 GiB.
pub const GIB: u64 = 1 << 30;
/// Where the 64 MiB range starts: inside the second GiB, 2 MiB aligned.
pub const BASE: u64 = GIB;
/// Workload 1 maps this much.
pub const IDENTITY_SIZE: u64 = 4 * GIB;
/// Random queries of workload 5.
pub const QUERIES: usize = 10_000;

/// Makes the host heap behave like a firmware pool allocator: freed memory is kept and
/// reused instead of being returned to the kernel and page-faulted in again on the next
/// allocation. Our commits allocate scratch memory (overlay, planned stores) that grows
/// with the number of ops; with glibc's defaults, whether a commit pays kernel page faults
/// for it depends on what else the heap holds (up to +65% on an 8,192-op transaction),
/// which made the transaction rows depend on which benchmarks ran before. The peers
/// allocate nothing per call, so this changes only our rows, and only by removing a
/// host-only cost (firmware has no demand paging). Call once, first thing in `main`.
pub fn keep_freed_heap_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        use std::os::raw::c_int;
        extern "C" {
            fn mallopt(param: c_int, value: c_int) -> c_int;
        }
        const M_TRIM_THRESHOLD: c_int = -1;
        const M_MMAP_THRESHOLD: c_int = -3;
        // SAFETY: glibc's `mallopt` only changes allocator tuning; called before any
        // benchmark allocates and with documented parameters and values (the mmap
        // threshold may be at most 32 MiB; every benchmark allocation is smaller).
        let (trim, mmap) = unsafe {
            (
                mallopt(M_TRIM_THRESHOLD, c_int::MAX),
                mallopt(M_MMAP_THRESHOLD, 16 << 20),
            )
        };
        assert!(trim == 1 && mmap == 1, "mallopt refused the heap settings");
    }
}

/// Writes every page of `pool` once so that later table writes never page-fault (the pool
/// arena comes from `alloc_zeroed`, which hands out untouched pages).
pub fn prefault(pool: &PagePool) {
    let pages = pool.image().len() as u64 / PAGE_SIZE;
    for page in 0..pages {
        let pointer = pool.physical_to_pointer(pool.base() + page * PAGE_SIZE);
        // SAFETY: `physical_to_pointer` returns a writable pointer to a page of the pool's
        // arena; writing zero keeps the arena's content (it is zeroed at creation and only
        // used after this call).
        unsafe { pointer.write_volatile(0) };
    }
}

/// A pre-faulted pool of `pages` pages whose physical addresses are their host addresses.
pub fn pool(pages: usize) -> PagePool {
    let pool = PagePool::new(pages);
    prefault(&pool);
    pool
}

/// An MMU that only counts what it is asked to do (the timed benchmarks use this one: one
/// `Cell` increment per invalidation, no log).
#[derive(Debug, Default)]
pub struct CountingMmu {
    pages: Cell<usize>,
    full: Cell<usize>,
    barriers: Cell<usize>,
}

impl CountingMmu {
    /// Single-page invalidations so far.
    pub fn page_invalidations(&self) -> usize {
        self.pages.get()
    }

    /// Full invalidations so far.
    pub fn full_invalidations(&self) -> usize {
        self.full.get()
    }

    /// Barriers so far (AArch64 only).
    pub fn barriers(&self) -> usize {
        self.barriers.get()
    }
}

impl Tlb for CountingMmu {
    #[inline]
    fn invalidate_page(&self, _va: u64) {
        self.pages.set(self.pages.get() + 1);
    }

    #[inline]
    fn invalidate_all(&self) {
        self.full.set(self.full.get() + 1);
    }

    #[inline]
    fn barrier(&self, _barrier: Barrier) {
        self.barriers.set(self.barriers.get() + 1);
    }
}

impl Mmu for CountingMmu {
    fn install(&self, _request: &InstallRequest) -> Result<(), PtError> {
        Ok(())
    }
}

/// A pool shared between a peer's allocator adapter and the benchmark (for the counts).
pub type SharedPool = Rc<RefCell<PagePool>>;

/// A pre-faulted shared pool.
pub fn shared_pool(pages: usize) -> SharedPool {
    Rc::new(RefCell::new(pool(pages)))
}

/// `aarch64-paging`'s `Translation` over a [`PagePool`] (PA == host address): what its
/// `IdTranslation` does, with the pool instead of the global heap. New tables are zeroed
/// with one `write_bytes`, as `alloc_zeroed` would.
pub struct PoolTranslation(pub SharedPool);

impl aarch64_paging::paging::Translation<aarch64_paging::descriptor::El1Attributes> for PoolTranslation {
    fn allocate_table(
        &mut self,
    ) -> (
        core::ptr::NonNull<aarch64_paging::paging::PageTable<aarch64_paging::descriptor::El1Attributes>>,
        aarch64_paging::descriptor::PhysicalAddress,
    ) {
        let mut pool = self.0.borrow_mut();
        let pa = pool
            .allocate_page(PAGE_SIZE, PAGE_SIZE)
            .expect("aarch64-paging table page");
        let pointer = pool.physical_to_pointer(pa);
        // SAFETY: `pointer` is a fresh 4 KiB page of the pool's arena, used by nothing else.
        unsafe { pointer.write_bytes(0, PAGE_SIZE as usize) };
        (
            core::ptr::NonNull::new(pointer.cast()).expect("pool page"),
            aarch64_paging::descriptor::PhysicalAddress(pa as usize),
        )
    }

    unsafe fn deallocate_table(
        &mut self,
        table: core::ptr::NonNull<aarch64_paging::paging::PageTable<aarch64_paging::descriptor::El1Attributes>>,
    ) {
        self.0.borrow_mut().free_page(table.as_ptr() as u64, PAGE_SIZE);
    }

    fn physical_to_virtual(
        &self,
        pa: aarch64_paging::descriptor::PhysicalAddress,
    ) -> core::ptr::NonNull<aarch64_paging::paging::PageTable<aarch64_paging::descriptor::El1Attributes>> {
        core::ptr::NonNull::new(pa.0 as *mut _).expect("table at PA 0")
    }
}

/// `patina_paging`'s allocator (`allocate_page(align, size, is_root)`) over a [`PagePool`].
/// patina_paging reaches table memory at PA == host address, which is what
/// [`PagePool::new`] hands out. It never frees table pages.
pub struct PatinaPool {
    /// The pool.
    pub pool: SharedPool,
    /// The page patina_paging asked for as its root (its tables do not expose the root
    /// without consuming themselves).
    pub root: Rc<Cell<u64>>,
}

impl patina_paging::page_allocator::PageAllocator for PatinaPool {
    fn allocate_page(&mut self, align: u64, size: u64, is_root: bool) -> Result<u64, patina_paging::PtError> {
        let page = self
            .pool
            .borrow_mut()
            .allocate_page(align, size)
            .map_err(|_| patina_paging::PtError::OutOfResources)?;
        if is_root {
            self.root.set(page);
        }
        Ok(page)
    }
}

/// A table page count: pages reachable from the root, and pages the library holds (taken
/// from the pool and not given back).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageCount {
    /// Table pages reachable from the root, the root included.
    pub reachable: usize,
    /// Pool pages the library holds.
    pub held: usize,
}

/// Counts the table pages reachable from `root` in a table of the classic 4 KiB-granule
/// layout (PA == host address): `is_table(raw, level)` says whether the entry at `level`
/// (0 = last level) points to a table. Each page is counted once (the peers' self-map
/// entries point back at the root).
pub fn reachable_tables(root: u64, top_level: u8, is_table: &dyn Fn(u64, u8) -> bool) -> usize {
    fn walk(table: u64, level: u8, is_table: &dyn Fn(u64, u8) -> bool, seen: &mut Vec<u64>) {
        if seen.contains(&table) {
            return;
        }
        seen.push(table);
        if level == 0 {
            return;
        }
        for index in 0..512 {
            // SAFETY: `table` is a table page of a pool (PA == host address), 4 KiB long.
            let raw = unsafe { (table as *const u64).add(index).read_volatile() };
            if is_table(raw, level) {
                walk(raw & 0x000F_FFFF_FFFF_F000, level - 1, is_table, seen);
            }
        }
    }
    let mut seen = Vec::new();
    walk(root, top_level, is_table, &mut seen);
    seen.len()
}

/// A copy of every page of a pool, to count the 64-bit words a workload changed.
pub struct Snapshot(Vec<u64>);

impl Snapshot {
    /// Copies the pool's arena.
    pub fn take(pool: &PagePool) -> Self {
        Self(words(pool.image()).collect())
    }

    /// 64-bit words of the pool's arena that differ from the snapshot: the entries the
    /// workload changed (a lower bound on its stores: a word stored twice, or stored with
    /// the value it had, counts at most once).
    pub fn changed(&self, pool: &PagePool) -> usize {
        words(pool.image())
            .zip(&self.0)
            .filter(|(now, then)| now != *then)
            .count()
    }
}

fn words(bytes: &[u8]) -> impl Iterator<Item = u64> + '_ {
    bytes
        .chunks_exact(8)
        .map(|word| u64::from_ne_bytes(word.try_into().expect("8 bytes")))
}

/// `count` distinct-ish pseudo-random page numbers below `pages` (xorshift64, fixed seed):
/// the same sequence for every library.
pub fn random_pages(count: usize, pages: u64) -> Vec<u64> {
    let mut state = 0x9E37_79B9_7F4A_7C15_u64;
    (0..count)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state % pages
        })
        .collect()
}

/// The floor: a page-aligned buffer (from a pool) that takes `entries` 64-bit stores.
pub struct Floor {
    pool: PagePool,
    entries: usize,
}

impl Floor {
    /// A pre-faulted buffer of `entries` entries.
    pub fn new(entries: usize) -> Self {
        Self {
            pool: pool(entries.div_ceil(512)),
            entries,
        }
    }

    /// Stores one leaf-like entry (`pa | P | RW | A | D`) into each slot, each with one
    /// 64-bit volatile store, in order: what writing that many entries costs at best.
    #[inline(never)]
    pub fn store_entries(&self, first_pa: u64) {
        let buffer = self.pool.physical_to_pointer(self.pool.base()).cast::<u64>();
        for index in 0..self.entries {
            let entry = (first_pa + index as u64 * PAGE_SIZE) | 0x63;
            // SAFETY: the pool's arena is contiguous and holds `entries.div_ceil(512)`
            // pages, so slot `index < entries` lies inside it, 8-byte aligned.
            unsafe { buffer.add(index).write_volatile(entry) };
        }
    }
}
