//! X64 (4-level) benchmarks: txpaging side by side with `patina_paging` and the `x86_64`
//! crate, in one binary and one run. `cargo bench --bench x64`.
//!
//! Every table, ours and the peers', takes its pages from a pre-faulted [`PagePool`]
//! (PA == host address). Benchmarks that change a table get a fresh one per iteration,
//! built outside the timed part (`with_inputs`). Counters are items = 4 KiB pages (or
//! requests), so divan's throughput column reads as pages per second and the time column
//! divided by the items gives ns per page.
//!
//! Our tables use [`CountingMmu`] (one `Cell` increment per invalidation); workload 3 also
//! times the one-op wrapper with the logging `RecordingMmu`, to show what the log costs.
//!
//! Before the timed benchmarks, the binary prints the per-workload counts (table pages,
//! entries changed, invalidations) once. Set `TXPAGING_BENCH_COUNTS=0` to skip them.
//!
//! The AArch64 rows live in their own binary (`benches/aarch64.rs`, with `aarch64-paging`),
//! sharing `benches/common`.

mod common;

use std::cell::Cell;
use std::rc::Rc;

use common::{
    pool, random_pages, reachable_tables, shared_pool, CountingMmu, Floor, PageCount, PatinaPool, SharedPool, Snapshot,
    BASE, GIB, HALF_PAGES, IDENTITY_SIZE, QUERIES, RANGE, RANGE_PAGES,
};
use divan::counter::ItemsCount;
use divan::{black_box, Bencher};
use txpaging::{
    MemoryAttributes as A, Op, PageAllocator, PagePool, PageTable, PagingType, RecordingMmu, X64Config, X64PageTable,
    PAGE_SIZE,
};
use x86_64::structures::paging::{
    FrameAllocator, Mapper, OffsetPageTable, Page, PageTable as X86Table, PageTableFlags as F, PhysFrame, Size1GiB,
    Size2MiB, Size4KiB, Translate,
};
use x86_64::{PhysAddr, VirtAddr};

fn main() {
    common::keep_freed_heap_memory();
    if std::env::var("TXPAGING_BENCH_COUNTS").map_or(true, |v| v != "0") {
        counts::print();
    }
    divan::main();
}

// ---------------------------------------------------------------------------------------
// The three libraries over the same pool type
// ---------------------------------------------------------------------------------------

/// Our table, counting invalidations.
type Ours = X64PageTable<PagePool, CountingMmu>;

/// Installed (a no-op on `CountingMmu`): like a firmware's live table, commits invalidate
/// what they change. A table never installed would issue no invalidation at all.
fn ours(pages: usize) -> Ours {
    let t = X64PageTable::with_mmu(
        pool(pages),
        PagingType::Paging4Level,
        X64Config { one_gib_pages: true },
        CountingMmu::default(),
    )
    .expect("our table");
    t.install_page_table().expect("install");
    t
}

fn ours_recording(pages: usize) -> X64PageTable<PagePool, RecordingMmu> {
    let t = X64PageTable::with_mmu(
        pool(pages),
        PagingType::Paging4Level,
        X64Config { one_gib_pages: true },
        RecordingMmu::new(),
    )
    .expect("our table");
    t.install_page_table().expect("install (recorded)");
    t.mmu().take_log();
    t
}

/// A `patina_paging` X64 table and the pool it allocates from.
struct Patina {
    table: patina_paging::x64::X64PageTable<PatinaPool>,
    pool: SharedPool,
    root: Rc<Cell<u64>>,
}

fn patina(pages: usize) -> Patina {
    let pool = shared_pool(pages);
    let root = Rc::new(Cell::new(0));
    let allocator = PatinaPool {
        pool: pool.clone(),
        root: root.clone(),
    };
    let table = patina_paging::x64::X64PageTable::new(allocator, patina_paging::PagingType::Paging4Level)
        .expect("patina table");
    Patina { table, pool, root }
}

/// `x86_64::FrameAllocator` over a [`PagePool`]. The mapper zeroes the tables it creates.
struct PoolFrames(PagePool);

// SAFETY: every frame is a distinct, unused 4 KiB page of the pool.
unsafe impl FrameAllocator<Size4KiB> for PoolFrames {
    fn allocate_frame(&mut self) -> Option<PhysFrame<Size4KiB>> {
        let pa = self.0.allocate_page(PAGE_SIZE, PAGE_SIZE).ok()?;
        Some(PhysFrame::containing_address(PhysAddr::new(pa)))
    }
}

/// An `x86_64` `OffsetPageTable` with offset 0 over a pool (PA == host address).
struct X86 {
    // Declared before `frames`: dropped before the pool whose page it borrows.
    mapper: OffsetPageTable<'static>,
    frames: PoolFrames,
    root: u64,
}

fn x86(pages: usize) -> X86 {
    let mut frames = PoolFrames(pool(pages));
    let root = frames.0.allocate_page(PAGE_SIZE, PAGE_SIZE).expect("x86_64 root");
    // SAFETY: `root` is a fresh 4 KiB page of the pool's arena, which outlives the mapper
    // (field order in `X86`); nothing else refers to it.
    let level_4 = unsafe { &mut *(root as *mut X86Table) };
    level_4.zero();
    // SAFETY: physical memory is reachable at offset 0 (the pool hands out host addresses).
    let mapper = unsafe { OffsetPageTable::new(level_4, VirtAddr::new(0)) };
    X86 { mapper, frames, root }
}

const WB: A = A::Writeback;
const PROTECT: A = A::ReadOnly.union(A::ExecuteProtect);
const P_WB: patina_paging::MemoryAttributes = patina_paging::MemoryAttributes::Writeback;
const P_PROTECTED: patina_paging::MemoryAttributes = patina_paging::MemoryAttributes::Writeback
    .union(patina_paging::MemoryAttributes::ReadOnly)
    .union(patina_paging::MemoryAttributes::ExecuteProtect);
const X_RW: F = F::PRESENT.union(F::WRITABLE);
const X_PROTECTED: F = F::PRESENT.union(F::NO_EXECUTE);

/// Address of page `index` of the 64 MiB range.
fn page(index: u64) -> u64 {
    BASE + index * PAGE_SIZE
}

/// Address of the `index`th page the protection workloads change (every other page).
fn other_page(index: u64) -> u64 {
    page(2 * index)
}

fn x86_page(address: u64) -> Page<Size4KiB> {
    Page::containing_address(VirtAddr::new(address))
}

// Pool sizes: what the largest user of each workload needs, with room.
const SMALL_POOL: usize = 16;
const RANGE_POOL: usize = 64;

// ---------------------------------------------------------------------------------------
// Workload steps, shared by the timed benchmarks and the counts
// ---------------------------------------------------------------------------------------

mod steps {
    use super::*;

    // Workload 1: identity-map 4 GiB Writeback in one call.
    #[inline(never)]
    pub fn ours_identity(t: &mut Ours) {
        t.map_memory_region(0, IDENTITY_SIZE, WB).unwrap();
    }
    #[inline(never)]
    pub fn patina_identity(p: &mut Patina) {
        patina_paging::PageTable::map_memory_region(&mut p.table, 0, IDENTITY_SIZE, P_WB).unwrap();
    }
    #[inline(never)]
    pub fn x86_identity_1g(x: &mut X86) {
        for gib in 0..IDENTITY_SIZE / GIB {
            let page = Page::<Size1GiB>::containing_address(VirtAddr::new(gib * GIB));
            let frame = PhysFrame::<Size1GiB>::containing_address(PhysAddr::new(gib * GIB));
            // SAFETY: only table memory is touched; the mapping is never used.
            // `ignore`: the flush is INVLPG, privileged, not executed on the host.
            unsafe { x.mapper.map_to(page, frame, X_RW, &mut x.frames) }
                .unwrap()
                .ignore();
        }
    }
    #[inline(never)]
    pub fn x86_identity_2m(x: &mut X86) {
        const SIZE: u64 = 2 << 20;
        for index in 0..IDENTITY_SIZE / SIZE {
            let page = Page::<Size2MiB>::containing_address(VirtAddr::new(index * SIZE));
            let frame = PhysFrame::<Size2MiB>::containing_address(PhysAddr::new(index * SIZE));
            // SAFETY: as above.
            unsafe { x.mapper.map_to(page, frame, X_RW, &mut x.frames) }
                .unwrap()
                .ignore();
        }
    }

    // Workload 2: map 64 MiB as 16,384 separate 4 KiB requests.
    #[inline(never)]
    pub fn ours_map_pages(t: &mut Ours) {
        for index in 0..RANGE_PAGES {
            t.map_memory_region(page(index), PAGE_SIZE, WB).unwrap();
        }
    }
    #[inline(never)]
    pub fn map_ops() -> Vec<Op> {
        (0..RANGE_PAGES)
            .map(|index| Op::Map {
                va: page(index),
                pa: page(index),
                size: PAGE_SIZE,
                attributes: WB,
            })
            .collect()
    }
    #[inline(never)]
    pub fn patina_map_pages(p: &mut Patina) {
        for index in 0..RANGE_PAGES {
            patina_paging::PageTable::map_memory_region(&mut p.table, page(index), PAGE_SIZE, P_WB).unwrap();
        }
    }
    #[inline(never)]
    pub fn x86_map_pages(x: &mut X86) {
        for index in 0..RANGE_PAGES {
            let frame = PhysFrame::containing_address(PhysAddr::new(page(index)));
            // SAFETY: as above.
            unsafe { x.mapper.map_to(x86_page(page(index)), frame, X_RW, &mut x.frames) }
                .unwrap()
                .ignore();
        }
    }

    // Workloads 3 and 4: every other page of the 64 MiB ReadOnly|ExecuteProtect.
    #[inline(never)]
    pub fn ours_protect_pages(t: &mut Ours) {
        for index in 0..HALF_PAGES {
            t.protect_memory_region(other_page(index), PAGE_SIZE, PROTECT).unwrap();
        }
    }
    #[inline(never)]
    pub fn protect_ops() -> Vec<Op> {
        (0..HALF_PAGES)
            .map(|index| Op::Protect {
                va: other_page(index),
                size: PAGE_SIZE,
                attributes: PROTECT,
            })
            .collect()
    }
    /// patina_paging has no protect: its users re-map with the new attributes.
    #[inline(never)]
    pub fn patina_protect_pages(p: &mut Patina) {
        for index in 0..HALF_PAGES {
            patina_paging::PageTable::map_memory_region(&mut p.table, other_page(index), PAGE_SIZE, P_PROTECTED)
                .unwrap();
        }
    }
    #[inline(never)]
    pub fn x86_protect_pages(x: &mut X86) {
        for index in 0..HALF_PAGES {
            // SAFETY: only table memory is touched. `ignore`: see above.
            unsafe { x.mapper.update_flags(x86_page(other_page(index)), X_PROTECTED) }
                .unwrap()
                .ignore();
        }
    }

    // Workload 6: unmap 64 MiB.
    #[inline(never)]
    pub fn ours_unmap_pages(t: &mut Ours) {
        for index in 0..RANGE_PAGES {
            t.unmap_memory_region(page(index), PAGE_SIZE).unwrap();
        }
    }
    #[inline(never)]
    pub fn unmap_ops() -> Vec<Op> {
        (0..RANGE_PAGES)
            .map(|index| Op::Unmap {
                va: page(index),
                size: PAGE_SIZE,
            })
            .collect()
    }
    #[inline(never)]
    pub fn patina_unmap_pages(p: &mut Patina) {
        for index in 0..RANGE_PAGES {
            patina_paging::PageTable::unmap_memory_region(&mut p.table, page(index), PAGE_SIZE).unwrap();
        }
    }
    #[inline(never)]
    pub fn x86_unmap_pages(x: &mut X86) {
        for index in 0..RANGE_PAGES {
            let (_frame, flush) = Mapper::<Size4KiB>::unmap(&mut x.mapper, x86_page(page(index))).unwrap();
            flush.ignore();
        }
    }

    // The states the workloads start from.

    /// Workload 3/5/6 start: the 64 MiB mapped Writeback. Ours in one call: the result is
    /// the same canonical table as 16,384 one-page maps (32 2 MiB leaves). The peers per
    /// page (the state workload 2 leaves: 4 KiB entries).
    #[inline(never)]
    pub fn ours_mapped() -> Ours {
        let mut t = ours(RANGE_POOL);
        t.map_memory_region(BASE, RANGE, WB).unwrap();
        t
    }
    #[inline(never)]
    pub fn patina_mapped() -> Patina {
        let mut p = patina(RANGE_POOL);
        patina_map_pages(&mut p);
        p
    }
    #[inline(never)]
    pub fn x86_mapped() -> X86 {
        let mut x = x86(RANGE_POOL);
        x86_map_pages(&mut x);
        x
    }

    /// Workload 4 start: 4 GiB identity-mapped with 1 GiB pages.
    #[inline(never)]
    pub fn ours_identity_mapped() -> Ours {
        let mut t = ours(RANGE_POOL);
        ours_identity(&mut t);
        t
    }
    #[inline(never)]
    pub fn patina_identity_mapped() -> Patina {
        let mut p = patina(RANGE_POOL);
        patina_identity(&mut p);
        p
    }

    /// Workload 5 start (and workload 3 end): every other page of the mapped 64 MiB protected.
    #[inline(never)]
    pub fn ours_protected() -> Ours {
        let mut t = ours_mapped();
        t.transaction().extend(protect_ops()).commit().unwrap();
        t
    }
    #[inline(never)]
    pub fn patina_protected() -> Patina {
        let mut p = patina_mapped();
        patina_protect_pages(&mut p);
        p
    }
    #[inline(never)]
    pub fn x86_protected() -> X86 {
        let mut x = x86_mapped();
        x86_protect_pages(&mut x);
        x
    }

    /// Workload 7 start (and workload 4 end): the 1 GiB-mapped range split by the protects.
    #[inline(never)]
    pub fn ours_split() -> Ours {
        let mut t = ours_identity_mapped();
        t.transaction().extend(protect_ops()).commit().unwrap();
        t
    }
    #[inline(never)]
    pub fn patina_split() -> Patina {
        let mut p = patina_identity_mapped();
        patina_protect_pages(&mut p);
        p
    }

    // Workload 7: restore the split range to uniform attributes.
    #[inline(never)]
    pub fn ours_restore_protect(t: &mut Ours) {
        t.protect_memory_region(BASE, RANGE, A::empty()).unwrap();
    }
    #[inline(never)]
    pub fn ours_restore_map(t: &mut Ours) {
        t.map_memory_region(BASE, RANGE, WB).unwrap();
    }
    #[inline(never)]
    pub fn patina_restore_map(p: &mut Patina) {
        patina_paging::PageTable::map_memory_region(&mut p.table, BASE, RANGE, P_WB).unwrap();
    }
}

use steps::*;

// ---------------------------------------------------------------------------------------
// Timed benchmarks
// ---------------------------------------------------------------------------------------

/// Workload 1: identity-map 4 GiB Writeback in one call (large pages). Items: 4 KiB pages covered.
mod w1_identity_4gib {
    use super::*;
    const PAGES: u64 = IDENTITY_SIZE / PAGE_SIZE;

    #[divan::bench]
    fn ours_one_call(b: Bencher) {
        b.counter(ItemsCount::new(PAGES))
            .with_inputs(|| ours(SMALL_POOL))
            .bench_local_refs(ours_identity);
    }

    #[divan::bench]
    fn patina_one_call(b: Bencher) {
        b.counter(ItemsCount::new(PAGES))
            .with_inputs(|| patina(SMALL_POOL))
            .bench_local_refs(patina_identity);
    }

    #[divan::bench]
    fn x86_64_4x1gib_map_to(b: Bencher) {
        b.counter(ItemsCount::new(PAGES))
            .with_inputs(|| x86(SMALL_POOL))
            .bench_local_refs(x86_identity_1g);
    }

    #[divan::bench]
    fn x86_64_2048x2mib_map_to(b: Bencher) {
        b.counter(ItemsCount::new(PAGES))
            .with_inputs(|| x86(SMALL_POOL))
            .bench_local_refs(x86_identity_2m);
    }
}

/// Workload 2: map 64 MiB as 16,384 separate 4 KiB requests into an empty table.
mod w2_map_16384_pages {
    use super::*;

    #[divan::bench(sample_size = 1)]
    fn ours_one_op_calls(b: Bencher) {
        b.counter(ItemsCount::new(RANGE_PAGES))
            .with_inputs(|| ours(RANGE_POOL))
            .bench_local_refs(ours_map_pages);
    }

    #[divan::bench(sample_size = 1)]
    fn ours_one_transaction(b: Bencher) {
        b.counter(ItemsCount::new(RANGE_PAGES))
            .with_inputs(|| (ours(RANGE_POOL), map_ops()))
            .bench_local_refs(|(t, ops)| t.transaction().extend(ops.iter().copied()).commit().unwrap());
    }

    #[divan::bench(sample_size = 1)]
    fn patina_one_op_calls(b: Bencher) {
        b.counter(ItemsCount::new(RANGE_PAGES))
            .with_inputs(|| patina(RANGE_POOL))
            .bench_local_refs(patina_map_pages);
    }

    #[divan::bench(sample_size = 1)]
    fn x86_64_map_to_calls(b: Bencher) {
        b.counter(ItemsCount::new(RANGE_PAGES))
            .with_inputs(|| x86(RANGE_POOL))
            .bench_local_refs(x86_map_pages);
    }
}

/// Workload 3: on a mapped 64 MiB, every other 4 KiB page ReadOnly|ExecuteProtect.
mod w3_protect_8192_pages {
    use super::*;

    #[divan::bench(sample_size = 1)]
    fn ours_one_op_calls(b: Bencher) {
        b.counter(ItemsCount::new(HALF_PAGES))
            .with_inputs(ours_mapped)
            .bench_local_refs(ours_protect_pages);
    }

    #[divan::bench(sample_size = 1)]
    fn ours_one_op_calls_recording_mmu(b: Bencher) {
        b.counter(ItemsCount::new(HALF_PAGES))
            .with_inputs(|| {
                let mut t = ours_recording(RANGE_POOL);
                t.map_memory_region(BASE, RANGE, WB).unwrap();
                t
            })
            .bench_local_refs(|t| {
                for index in 0..HALF_PAGES {
                    t.protect_memory_region(other_page(index), PAGE_SIZE, PROTECT).unwrap();
                }
            });
    }

    #[divan::bench(sample_size = 1)]
    fn ours_one_transaction(b: Bencher) {
        b.counter(ItemsCount::new(HALF_PAGES))
            .with_inputs(|| (ours_mapped(), protect_ops()))
            .bench_local_refs(|(t, ops)| t.transaction().extend(ops.iter().copied()).commit().unwrap());
    }

    #[divan::bench(sample_size = 1)]
    fn patina_one_op_calls(b: Bencher) {
        b.counter(ItemsCount::new(HALF_PAGES))
            .with_inputs(patina_mapped)
            .bench_local_refs(patina_protect_pages);
    }

    #[divan::bench(sample_size = 1)]
    fn x86_64_update_flags_calls(b: Bencher) {
        b.counter(ItemsCount::new(HALF_PAGES))
            .with_inputs(x86_mapped)
            .bench_local_refs(x86_protect_pages);
    }
}

/// Workload 4: as workload 3, inside a range first mapped with 1 GiB pages (forces splits).
/// The `x86_64` crate cannot split a huge page (`update_flags` on a 4 KiB page under one
/// fails with `ParentEntryHugePage`), so it has no row.
mod w4_protect_8192_pages_splitting {
    use super::*;

    #[divan::bench(sample_size = 1)]
    fn ours_one_op_calls(b: Bencher) {
        b.counter(ItemsCount::new(HALF_PAGES))
            .with_inputs(ours_identity_mapped)
            .bench_local_refs(ours_protect_pages);
    }

    #[divan::bench(sample_size = 1)]
    fn ours_one_transaction(b: Bencher) {
        b.counter(ItemsCount::new(HALF_PAGES))
            .with_inputs(|| (ours_identity_mapped(), protect_ops()))
            .bench_local_refs(|(t, ops)| t.transaction().extend(ops.iter().copied()).commit().unwrap());
    }

    #[divan::bench(sample_size = 1)]
    fn patina_one_op_calls(b: Bencher) {
        b.counter(ItemsCount::new(HALF_PAGES))
            .with_inputs(patina_identity_mapped)
            .bench_local_refs(patina_protect_pages);
    }
}

/// Workload 5: 10,000 random 4 KiB queries in the protected 64 MiB (workload 3's result:
/// 4 KiB entries under four levels for every library).
mod w5_query_10000_random {
    use super::*;

    fn addresses() -> Vec<u64> {
        random_pages(QUERIES, RANGE_PAGES).into_iter().map(page).collect()
    }

    #[divan::bench]
    fn ours_query_memory_region(b: Bencher) {
        let (t, addresses) = (ours_protected(), addresses());
        b.counter(ItemsCount::new(QUERIES)).bench_local(|| {
            for &address in &addresses {
                let _ = black_box(t.query_memory_region(black_box(address), PAGE_SIZE));
            }
        });
    }

    #[divan::bench]
    fn ours_translate(b: Bencher) {
        let (t, addresses) = (ours_protected(), addresses());
        b.counter(ItemsCount::new(QUERIES)).bench_local(|| {
            for &address in &addresses {
                black_box(t.translate(black_box(address)));
            }
        });
    }

    #[divan::bench]
    fn patina_query_memory_region(b: Bencher) {
        let (p, addresses) = (patina_protected(), addresses());
        b.counter(ItemsCount::new(QUERIES)).bench_local(|| {
            for &address in &addresses {
                let _ = black_box(patina_paging::PageTable::query_memory_region(
                    &p.table,
                    black_box(address),
                    PAGE_SIZE,
                ));
            }
        });
    }

    #[divan::bench]
    fn x86_64_translate(b: Bencher) {
        let (x, addresses) = (x86_protected(), addresses());
        b.counter(ItemsCount::new(QUERIES)).bench_local(|| {
            for &address in &addresses {
                black_box(x.mapper.translate(VirtAddr::new(black_box(address))));
            }
        });
    }
}

/// Workload 6: unmap the mapped 64 MiB in one call, and page by page.
mod w6_unmap_64mib {
    use super::*;

    #[divan::bench(sample_size = 1)]
    fn ours_one_call(b: Bencher) {
        b.counter(ItemsCount::new(RANGE_PAGES))
            .with_inputs(ours_mapped)
            .bench_local_refs(|t| t.unmap_memory_region(BASE, RANGE).unwrap());
    }

    #[divan::bench(sample_size = 1)]
    fn ours_one_op_calls(b: Bencher) {
        b.counter(ItemsCount::new(RANGE_PAGES))
            .with_inputs(ours_mapped)
            .bench_local_refs(ours_unmap_pages);
    }

    #[divan::bench(sample_size = 1)]
    fn ours_one_transaction_of_pages(b: Bencher) {
        b.counter(ItemsCount::new(RANGE_PAGES))
            .with_inputs(|| (ours_mapped(), unmap_ops()))
            .bench_local_refs(|(t, ops)| t.transaction().extend(ops.iter().copied()).commit().unwrap());
    }

    #[divan::bench(sample_size = 1)]
    fn patina_one_call(b: Bencher) {
        b.counter(ItemsCount::new(RANGE_PAGES))
            .with_inputs(patina_mapped)
            .bench_local_refs(|p| patina_paging::PageTable::unmap_memory_region(&mut p.table, BASE, RANGE).unwrap());
    }

    #[divan::bench(sample_size = 1)]
    fn patina_one_op_calls(b: Bencher) {
        b.counter(ItemsCount::new(RANGE_PAGES))
            .with_inputs(patina_mapped)
            .bench_local_refs(patina_unmap_pages);
    }

    #[divan::bench(sample_size = 1)]
    fn x86_64_unmap_calls(b: Bencher) {
        b.counter(ItemsCount::new(RANGE_PAGES))
            .with_inputs(x86_mapped)
            .bench_local_refs(x86_unmap_pages);
    }
}

/// Workload 7: restore the range split by workload 4 to uniform Writeback (merge).
/// Items: the 16,384 pages of the range.
mod w7_restore_merge {
    use super::*;

    #[divan::bench(sample_size = 1)]
    fn ours_protect_one_call(b: Bencher) {
        b.counter(ItemsCount::new(RANGE_PAGES))
            .with_inputs(ours_split)
            .bench_local_refs(ours_restore_protect);
    }

    #[divan::bench(sample_size = 1)]
    fn ours_map_one_call(b: Bencher) {
        b.counter(ItemsCount::new(RANGE_PAGES))
            .with_inputs(ours_split)
            .bench_local_refs(ours_restore_map);
    }

    #[divan::bench(sample_size = 1)]
    fn patina_map_one_call(b: Bencher) {
        b.counter(ItemsCount::new(RANGE_PAGES))
            .with_inputs(patina_split)
            .bench_local_refs(patina_restore_map);
    }
}

/// Workload 8, the floor: a plain loop of 64-bit stores into a page-aligned buffer, as many
/// as the workload has pages (8,192 for workloads 3/4, 16,384 for workloads 2/6).
mod w8_floor_entry_stores {
    use super::*;

    #[divan::bench(args = [8192, 16384])]
    fn store_loop(b: Bencher, entries: usize) {
        let floor = Floor::new(entries);
        b.counter(ItemsCount::new(entries))
            .bench_local(|| floor.store_entries(black_box(BASE)));
    }
}

/// The protection policy (W^X, no NULL page, no executable MMIO, registered code and data),
/// off vs on: W3 (8,192 one-page protects to RO XP) and a firmware-like protection batch
/// (256 images of 256 KiB in the mapped 64 MiB: header page RO XP, 64 KiB code RO, the rest
/// XP, each image's code and data registered). The check covers only the touched ranges, so
/// the rest of the 64 MiB (writable and executable) is never read.
mod policy {
    use super::*;
    use txpaging::Policy;

    const IMAGES: u64 = 256;
    const IMAGE: u64 = 256 << 10;
    const CODE: u64 = 64 << 10;

    fn image(index: u64) -> u64 {
        BASE + index * IMAGE
    }

    fn batch_ops() -> Vec<Op> {
        (0..IMAGES)
            .flat_map(|i| {
                let base = image(i);
                [
                    Op::Protect {
                        va: base,
                        size: PAGE_SIZE,
                        attributes: PROTECT,
                    },
                    Op::Protect {
                        va: base + PAGE_SIZE,
                        size: CODE,
                        attributes: A::ReadOnly,
                    },
                    Op::Protect {
                        va: base + PAGE_SIZE + CODE,
                        size: IMAGE - PAGE_SIZE - CODE,
                        attributes: A::ExecuteProtect,
                    },
                ]
            })
            .collect()
    }

    fn with_policy(on: bool) -> Ours {
        let mut t = ours_mapped();
        if on {
            let mut policy = Policy::strict();
            for i in 0..IMAGES {
                policy = policy
                    .code(image(i) + PAGE_SIZE, CODE)
                    .data(image(i) + PAGE_SIZE + CODE, IMAGE - PAGE_SIZE - CODE);
            }
            t.set_policy(policy).unwrap();
        }
        t
    }

    #[divan::bench(args = [false, true], sample_size = 1)]
    fn w3_one_op_calls(b: Bencher, policy_on: bool) {
        b.counter(ItemsCount::new(HALF_PAGES))
            .with_inputs(|| with_policy(policy_on))
            .bench_local_refs(ours_protect_pages);
    }

    #[divan::bench(args = [false, true], sample_size = 1)]
    fn w3_one_transaction(b: Bencher, policy_on: bool) {
        b.counter(ItemsCount::new(HALF_PAGES))
            .with_inputs(|| (with_policy(policy_on), protect_ops()))
            .bench_local_refs(|(t, ops)| t.transaction().extend(ops.iter().copied()).commit().unwrap());
    }

    #[divan::bench(args = [false, true], sample_size = 1)]
    fn firmware_batch_one_transaction(b: Bencher, policy_on: bool) {
        b.counter(ItemsCount::new(IMAGES * 3))
            .with_inputs(|| (with_policy(policy_on), batch_ops()))
            .bench_local_refs(|(t, ops)| t.transaction().extend(ops.iter().copied()).commit().unwrap());
    }

    #[divan::bench(args = [false, true], sample_size = 1)]
    fn firmware_batch_one_op_calls(b: Bencher, policy_on: bool) {
        b.counter(ItemsCount::new(IMAGES * 3))
            .with_inputs(|| (with_policy(policy_on), batch_ops()))
            .bench_local_refs(|(t, ops)| {
                for op in ops.iter() {
                    t.transaction().push(*op).commit().unwrap();
                }
            });
    }
}

// ---------------------------------------------------------------------------------------
// Counts, printed once
// ---------------------------------------------------------------------------------------

mod counts {
    use super::*;

    /// One row of the counts table.
    struct Row {
        workload: &'static str,
        variant: &'static str,
        pages: PageCount,
        /// 64-bit words of table memory that differ before/after.
        changed: usize,
        /// Our commit reports: entries written (512 per new table included).
        written: Option<usize>,
        /// Invalidations: single-page, full flushes, batches (ours: measured).
        invalidations: String,
    }

    fn x64_is_table(raw: u64, level: u8) -> bool {
        level > 0 && raw & 1 != 0 && (level == 3 || raw & 0x80 == 0)
    }

    fn ours_pages(t: &Ours) -> PageCount {
        PageCount {
            reachable: t.table_pages(),
            held: t.allocator().live_pages(),
        }
    }

    fn patina_pages(p: &Patina) -> PageCount {
        PageCount {
            reachable: reachable_tables(p.root.get(), 3, &x64_is_table),
            held: p.pool.borrow().live_pages(),
        }
    }

    fn x86_pages(x: &X86) -> PageCount {
        PageCount {
            reachable: reachable_tables(x.root, 3, &x64_is_table),
            held: x.frames.0.live_pages(),
        }
    }

    /// Runs one of our workloads as transactions (exactly the path of the one-op wrappers:
    /// each wrapper is `transaction().op().commit()`), summing the reports.
    fn ours_row(
        workload: &'static str,
        variant: &'static str,
        mut t: Ours,
        batches: Vec<Vec<Op>>,
        check: impl Fn(&Ours),
    ) -> Row {
        let before = Snapshot::take(t.allocator());
        let (pages0, full0) = (t.mmu().page_invalidations(), t.mmu().full_invalidations());
        let mut report = txpaging::CommitReport::default();
        for ops in batches {
            report.accumulate(&t.transaction().extend(ops).commit().unwrap());
        }
        check(&t);
        let (pages, full) = (
            t.mmu().page_invalidations() - pages0,
            t.mmu().full_invalidations() - full0,
        );
        assert_eq!((pages, full), (report.pages_invalidated, report.full_flushes));
        Row {
            workload,
            variant,
            pages: ours_pages(&t),
            changed: before.changed(t.allocator()),
            written: Some(report.entries_written),
            invalidations: format!(
                "{pages} INVLPG + {full} full flush in {} batches",
                report.invalidation_batches
            ),
        }
    }

    /// `on_target`: the `MFENCE; INVLPG`s patina_paging 11.1.2 would issue on target for a
    /// table that is not the active one, counted by reading its code: `update_fields`,
    /// `set_present_bit` and `unmap` (`src/x64/structs.rs`) invalidate after every store over
    /// a present entry (`if prev_valid { invalidate_tlb(va) }`). On the host nothing is
    /// issued: `invalidate_tlb` (`src/x64.rs`) holds its `asm!` under
    /// `cfg(all(target_os = "uefi", target_arch = "x86_64"))`.
    fn patina_row(
        workload: &'static str,
        variant: &'static str,
        mut p: Patina,
        run: impl Fn(&mut Patina),
        on_target: usize,
    ) -> Row {
        let before = Snapshot::take(&p.pool.borrow());
        run(&mut p);
        let changed = before.changed(&p.pool.borrow());
        Row {
            workload,
            variant,
            pages: patina_pages(&p),
            changed,
            written: None,
            invalidations: format!("0 on the host; {on_target} MFENCE+INVLPG on target"),
        }
    }

    fn x86_row(workload: &'static str, variant: &'static str, mut x: X86, run: impl Fn(&mut X86), flushes: u64) -> Row {
        let before = Snapshot::take(&x.frames.0);
        run(&mut x);
        Row {
            workload,
            variant,
            pages: x86_pages(&x),
            changed: before.changed(&x.frames.0),
            written: None,
            invalidations: format!("{flushes} MapperFlush (INVLPG) left to the caller, ignored"),
        }
    }

    fn one_op_batches(ops: Vec<Op>) -> Vec<Vec<Op>> {
        ops.into_iter().map(|op| vec![op]).collect()
    }

    fn protected_check(t: &Ours) {
        assert_eq!(t.query_memory_region(page(0), PAGE_SIZE), Ok(WB | PROTECT));
        assert_eq!(t.query_memory_region(page(1), PAGE_SIZE), Ok(WB));
    }

    pub fn print() {
        let identity = vec![vec![Op::Map {
            va: 0,
            pa: 0,
            size: IDENTITY_SIZE,
            attributes: WB,
        }]];
        let unmap_all = vec![vec![Op::Unmap { va: BASE, size: RANGE }]];
        let restore_protect = vec![vec![Op::Protect {
            va: BASE,
            size: RANGE,
            attributes: A::empty(),
        }]];
        let restore_map = vec![vec![Op::Map {
            va: BASE,
            pa: BASE,
            size: RANGE,
            attributes: WB,
        }]];
        let no_check = |_: &Ours| {};
        let unmapped = |t: &Ours| assert_eq!(t.query_memory_region(BASE, RANGE), Err(txpaging::PtError::NoMapping));
        let restored = |t: &Ours| {
            assert_eq!(t.query_memory_region(0, IDENTITY_SIZE), Ok(WB));
            assert_eq!(t.table_pages(), 2, "root + PDPT with four 1 GiB leaves");
        };
        let rows = vec![
            ours_row("1", "ours, one call", ours(SMALL_POOL), identity, no_check),
            // Workloads 1 and 2 only store over entries that were not present.
            patina_row("1", "patina, one call", patina(SMALL_POOL), patina_identity, 0),
            x86_row("1", "x86_64, 4 x 1 GiB map_to", x86(SMALL_POOL), x86_identity_1g, 4),
            x86_row(
                "1",
                "x86_64, 2048 x 2 MiB map_to",
                x86(SMALL_POOL),
                x86_identity_2m,
                2048,
            ),
            ours_row(
                "2",
                "ours, 16,384 one-op calls",
                ours(RANGE_POOL),
                one_op_batches(map_ops()),
                no_check,
            ),
            ours_row(
                "2",
                "ours, one transaction",
                ours(RANGE_POOL),
                vec![map_ops()],
                no_check,
            ),
            patina_row("2", "patina, 16,384 calls", patina(RANGE_POOL), patina_map_pages, 0),
            x86_row(
                "2",
                "x86_64, 16,384 map_to",
                x86(RANGE_POOL),
                x86_map_pages,
                RANGE_PAGES,
            ),
            ours_row(
                "3",
                "ours, 8,192 one-op calls",
                ours_mapped(),
                one_op_batches(protect_ops()),
                protected_check,
            ),
            ours_row(
                "3",
                "ours, one transaction",
                ours_mapped(),
                vec![protect_ops()],
                protected_check,
            ),
            // Each call rewrites one present 4 KiB PTE.
            patina_row("3", "patina, 8,192 calls", patina_mapped(), patina_protect_pages, 8192),
            x86_row(
                "3",
                "x86_64, 8,192 update_flags",
                x86_mapped(),
                x86_protect_pages,
                HALF_PAGES,
            ),
            ours_row(
                "4",
                "ours, 8,192 one-op calls",
                ours_identity_mapped(),
                one_op_batches(protect_ops()),
                protected_check,
            ),
            ours_row(
                "4",
                "ours, one transaction",
                ours_identity_mapped(),
                vec![protect_ops()],
                protected_check,
            ),
            // 8,192 PTE updates + 1 PDPT and 32 PD entries replaced by the splits.
            patina_row(
                "4",
                "patina, 8,192 calls",
                patina_identity_mapped(),
                patina_protect_pages,
                8192 + 1 + 32,
            ),
            ours_row("6", "ours, one call", ours_mapped(), unmap_all, unmapped),
            ours_row(
                "6",
                "ours, 16,384 one-op calls",
                ours_mapped(),
                one_op_batches(unmap_ops()),
                unmapped,
            ),
            ours_row(
                "6",
                "ours, one transaction of pages",
                ours_mapped(),
                vec![unmap_ops()],
                unmapped,
            ),
            patina_row(
                "6",
                "patina, one call",
                patina_mapped(),
                |p| patina_paging::PageTable::unmap_memory_region(&mut p.table, BASE, RANGE).unwrap(),
                16384,
            ),
            // Both unmaps clear 16,384 present 4 KiB PTEs.
            patina_row("6", "patina, 16,384 calls", patina_mapped(), patina_unmap_pages, 16384),
            x86_row("6", "x86_64, 16,384 unmap", x86_mapped(), x86_unmap_pages, RANGE_PAGES),
            ours_row("7", "ours, protect one call", ours_split(), restore_protect, restored),
            ours_row("7", "ours, map one call", ours_split(), restore_map, restored),
            // The 32 PD entries that pointed to tables become 2 MiB leaves.
            patina_row("7", "patina, map one call", patina_split(), patina_restore_map, 32),
        ];
        println!("Counts per workload (X64, 4-level; table pages: reachable from the root / held from the pool):");
        println!();
        println!("| W | library, calls | table pages after | entries changed | entries written | invalidations |");
        println!("|---|---|---|---|---|---|");
        for row in rows {
            println!(
                "| {} | {} | {} / {} | {} | {} | {} |",
                row.workload,
                row.variant,
                row.pages.reachable,
                row.pages.held,
                row.changed,
                row.written.map_or("-".to_string(), |w| w.to_string()),
                row.invalidations
            );
        }
        println!();
    }
}
