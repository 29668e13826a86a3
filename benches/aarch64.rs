//! AArch64 (4-level, 4 KiB granule) benchmarks: txpaging side by side with `aarch64-paging`
//! (`Mapping::map_range` / `modify_range` / `walk_range`, the engine under its `IdMap`) and
//! `patina_paging`'s AArch64 table, in one binary and one run. `cargo bench --bench aarch64`.
//!
//! Same set-up as `benches/x64.rs`: every table takes its pages from a pre-faulted
//! [`PagePool`] (PA == host address). `aarch64-paging`'s `IdMap` allocates from the global
//! heap (`IdTranslation::allocate_table` -> `alloc_zeroed`), so it runs here as the same
//! `Mapping` with a `Translation` over the pool (`common::PoolTranslation`): identical code
//! paths, only the allocator differs. Benchmarks that change a table get a fresh one per
//! iteration (`with_inputs`). Items are 4 KiB pages (or requests).
//!
//! None of the tables is installed: ours is not live (no break-before-make), the
//! `aarch64-paging` mapping is never activated (so it issues no TLB maintenance), and
//! `patina_paging`'s `asm!` is compiled only for `uefi` + `aarch64`. Workload 3 adds one
//! row for our one-op protects on a table declared live (`set_live(true)`), to show what
//! break-before-make costs.

mod common;

use std::cell::Cell;
use std::rc::Rc;

use aarch64_paging::descriptor::{El1Attributes as E, PhysicalAddress};
use aarch64_paging::paging::{Constraints, El1And0, MemoryRegion, VaRange};
use aarch64_paging::Mapping;
use common::{
    pool, random_pages, reachable_tables, shared_pool, CountingMmu, Floor, PageCount, PatinaPool, PoolTranslation,
    SharedPool, Snapshot, BASE, HALF_PAGES, IDENTITY_SIZE, QUERIES, RANGE, RANGE_PAGES,
};
use divan::counter::ItemsCount;
use divan::{black_box, Bencher};
use txpaging::{
    Aarch64Config, Aarch64PageTable, MemoryAttributes as A, Op, PagePool, PageTable, PagingType, PAGE_SIZE,
};

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
type Ours = Aarch64PageTable<PagePool, CountingMmu>;

fn ours(pages: usize) -> Ours {
    Aarch64PageTable::with_mmu(
        pool(pages),
        PagingType::Paging4Level,
        Aarch64Config::default(),
        CountingMmu::default(),
    )
    .expect("our table")
}

/// An `aarch64-paging` EL1&0 TTBR0 mapping with root level 0 (4 levels, 48-bit VA).
struct Ap {
    // Declared before `pool`: its drop frees its tables into the pool.
    map: Mapping<PoolTranslation, El1And0>,
    pool: SharedPool,
}

fn ap(pages: usize) -> Ap {
    let pool = shared_pool(pages);
    let map = Mapping::with_asid_and_va_range(PoolTranslation(pool.clone()), 0, 0, El1And0, VaRange::Lower);
    Ap { map, pool }
}

/// A `patina_paging` AArch64 table and the pool it allocates from.
struct Patina {
    table: patina_paging::aarch64::AArch64PageTable<PatinaPool>,
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
    let table = patina_paging::aarch64::AArch64PageTable::new(allocator, patina_paging::PagingType::Paging4Level)
        .expect("patina table");
    Patina { table, pool, root }
}

const WB: A = A::Writeback;
const PROTECT: A = A::ReadOnly.union(A::ExecuteProtect);
/// The descriptor bits our `Writeback` leaves carry (AF, SH = Inner Shareable, AttrIndx 4 =
/// Normal Write-Back in our MAIR layout), so both libraries write the same descriptors.
const AP_WB: E = E::VALID
    .union(E::ACCESSED)
    .union(E::INNER_SHAREABLE)
    .union(E::ATTRIBUTE_INDEX_4);
/// ReadOnly | ExecuteProtect: AP[2], UXN, PXN.
const AP_PROTECT: E = E::READ_ONLY.union(E::UXN).union(E::PXN);
const P_WB: patina_paging::MemoryAttributes = patina_paging::MemoryAttributes::Writeback;
const P_PROTECTED: patina_paging::MemoryAttributes = patina_paging::MemoryAttributes::Writeback
    .union(patina_paging::MemoryAttributes::ReadOnly)
    .union(patina_paging::MemoryAttributes::ExecuteProtect);

/// Address of page `index` of the 64 MiB range.
fn page(index: u64) -> u64 {
    BASE + index * PAGE_SIZE
}

/// Address of the `index`th page the protection workloads change (every other page).
fn other_page(index: u64) -> u64 {
    page(2 * index)
}

fn region(start: u64, size: u64) -> MemoryRegion {
    MemoryRegion::new(start as usize, (start + size) as usize)
}

const SMALL_POOL: usize = 16;
const RANGE_POOL: usize = 64;

// ---------------------------------------------------------------------------------------
// Workload steps, shared by the timed benchmarks and the counts
// ---------------------------------------------------------------------------------------

mod steps {
    use super::*;

    fn ap_map(a: &mut Ap, start: u64, size: u64, flags: E) {
        a.map
            .map_range(
                &region(start, size),
                PhysicalAddress(start as usize),
                flags,
                Constraints::empty(),
            )
            .unwrap();
    }

    // Workload 1.
    #[inline(never)]
    pub fn ours_identity(t: &mut Ours) {
        t.map_memory_region(0, IDENTITY_SIZE, WB).unwrap();
    }
    #[inline(never)]
    pub fn ap_identity(a: &mut Ap) {
        ap_map(a, 0, IDENTITY_SIZE, AP_WB);
    }
    #[inline(never)]
    pub fn patina_identity(p: &mut Patina) {
        patina_paging::PageTable::map_memory_region(&mut p.table, 0, IDENTITY_SIZE, P_WB).unwrap();
    }

    // Workload 2.
    #[inline(never)]
    pub fn ours_map_pages(t: &mut Ours) {
        for index in 0..RANGE_PAGES {
            t.map_memory_region(page(index), PAGE_SIZE, WB).unwrap();
        }
    }
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
    pub fn ap_map_pages(a: &mut Ap) {
        for index in 0..RANGE_PAGES {
            ap_map(a, page(index), PAGE_SIZE, AP_WB);
        }
    }
    #[inline(never)]
    pub fn patina_map_pages(p: &mut Patina) {
        for index in 0..RANGE_PAGES {
            patina_paging::PageTable::map_memory_region(&mut p.table, page(index), PAGE_SIZE, P_WB).unwrap();
        }
    }

    // Workloads 3 and 4.
    #[inline(never)]
    pub fn ours_protect_pages(t: &mut Ours) {
        for index in 0..HALF_PAGES {
            t.protect_memory_region(other_page(index), PAGE_SIZE, PROTECT).unwrap();
        }
    }
    pub fn protect_ops() -> Vec<Op> {
        (0..HALF_PAGES)
            .map(|index| Op::Protect {
                va: other_page(index),
                size: PAGE_SIZE,
                attributes: PROTECT,
            })
            .collect()
    }
    /// `aarch64-paging`'s protect: `modify_range` with an updater that sets AP[2], UXN and
    /// PXN (it splits blocks itself when the range is not block-aligned).
    #[inline(never)]
    pub fn ap_protect_pages(a: &mut Ap) {
        for index in 0..HALF_PAGES {
            a.map
                .modify_range(&region(other_page(index), PAGE_SIZE), &|_, d| {
                    d.modify_flags(AP_PROTECT, E::empty())
                })
                .unwrap();
        }
    }
    /// patina_paging has no protect: its users re-map with the new attributes.
    #[inline(never)]
    pub fn patina_protect_pages(p: &mut Patina) {
        for index in 0..HALF_PAGES {
            patina_paging::PageTable::map_memory_region(&mut p.table, other_page(index), PAGE_SIZE, P_PROTECTED)
                .unwrap();
        }
    }

    // Workload 5.
    #[inline(never)]
    pub fn ap_query(a: &Ap, address: u64) -> Option<(usize, E)> {
        let mut found = None;
        a.map
            .walk_range(&region(address, PAGE_SIZE), &mut |_, d, _| {
                if d.is_valid() {
                    found = Some((d.output_address().0, d.flags()));
                }
                Ok(())
            })
            .ok()?;
        found
    }

    // Workload 6.
    #[inline(never)]
    pub fn ours_unmap_pages(t: &mut Ours) {
        for index in 0..RANGE_PAGES {
            t.unmap_memory_region(page(index), PAGE_SIZE).unwrap();
        }
    }
    pub fn unmap_ops() -> Vec<Op> {
        (0..RANGE_PAGES)
            .map(|index| Op::Unmap {
                va: page(index),
                size: PAGE_SIZE,
            })
            .collect()
    }
    /// `aarch64-paging` unmaps with `map_range` and flags without VALID.
    #[inline(never)]
    pub fn ap_unmap_all(a: &mut Ap) {
        ap_map(a, BASE, RANGE, E::empty());
    }
    #[inline(never)]
    pub fn ap_unmap_pages(a: &mut Ap) {
        for index in 0..RANGE_PAGES {
            ap_map(a, page(index), PAGE_SIZE, E::empty());
        }
    }
    #[inline(never)]
    pub fn patina_unmap_all(p: &mut Patina) {
        patina_paging::PageTable::unmap_memory_region(&mut p.table, BASE, RANGE).unwrap();
    }
    #[inline(never)]
    pub fn patina_unmap_pages(p: &mut Patina) {
        for index in 0..RANGE_PAGES {
            patina_paging::PageTable::unmap_memory_region(&mut p.table, page(index), PAGE_SIZE).unwrap();
        }
    }

    // Start states (as in x64.rs: ours mapped in one call, the peers page by page).
    pub fn ours_mapped() -> Ours {
        let mut t = ours(RANGE_POOL);
        t.map_memory_region(BASE, RANGE, WB).unwrap();
        t
    }
    pub fn ours_mapped_live() -> Ours {
        let t = ours_mapped();
        t.set_live(true);
        t
    }
    pub fn ap_mapped() -> Ap {
        let mut a = ap(RANGE_POOL);
        ap_map_pages(&mut a);
        a
    }
    pub fn patina_mapped() -> Patina {
        let mut p = patina(RANGE_POOL);
        patina_map_pages(&mut p);
        p
    }
    pub fn ours_identity_mapped() -> Ours {
        let mut t = ours(RANGE_POOL);
        ours_identity(&mut t);
        t
    }
    pub fn ap_identity_mapped() -> Ap {
        let mut a = ap(RANGE_POOL);
        ap_identity(&mut a);
        a
    }
    pub fn patina_identity_mapped() -> Patina {
        let mut p = patina(RANGE_POOL);
        patina_identity(&mut p);
        p
    }
    pub fn ours_protected() -> Ours {
        let mut t = ours_mapped();
        t.transaction().extend(protect_ops()).commit().unwrap();
        t
    }
    pub fn ap_protected() -> Ap {
        let mut a = ap_mapped();
        ap_protect_pages(&mut a);
        a
    }
    pub fn patina_protected() -> Patina {
        let mut p = patina_mapped();
        patina_protect_pages(&mut p);
        p
    }
    pub fn ours_split() -> Ours {
        let mut t = ours_identity_mapped();
        t.transaction().extend(protect_ops()).commit().unwrap();
        t
    }
    pub fn ap_split() -> Ap {
        let mut a = ap_identity_mapped();
        ap_protect_pages(&mut a);
        a
    }
    pub fn patina_split() -> Patina {
        let mut p = patina_identity_mapped();
        patina_protect_pages(&mut p);
        p
    }

    // Workload 7.
    #[inline(never)]
    pub fn ours_restore_map(t: &mut Ours) {
        t.map_memory_region(BASE, RANGE, WB).unwrap();
    }
    #[inline(never)]
    pub fn ours_restore_protect(t: &mut Ours) {
        t.protect_memory_region(BASE, RANGE, A::empty()).unwrap();
    }
    #[inline(never)]
    pub fn ap_restore_map(a: &mut Ap) {
        ap_map(a, BASE, RANGE, AP_WB);
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

/// Workload 1: identity-map 4 GiB Writeback in one call. Items: 4 KiB pages covered.
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
    fn aarch64_paging_map_range(b: Bencher) {
        b.counter(ItemsCount::new(PAGES))
            .with_inputs(|| ap(SMALL_POOL))
            .bench_local_refs(ap_identity);
    }

    #[divan::bench]
    fn patina_one_call(b: Bencher) {
        b.counter(ItemsCount::new(PAGES))
            .with_inputs(|| patina(SMALL_POOL))
            .bench_local_refs(patina_identity);
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
    fn aarch64_paging_map_range_calls(b: Bencher) {
        b.counter(ItemsCount::new(RANGE_PAGES))
            .with_inputs(|| ap(RANGE_POOL))
            .bench_local_refs(ap_map_pages);
    }

    #[divan::bench(sample_size = 1)]
    fn patina_one_op_calls(b: Bencher) {
        b.counter(ItemsCount::new(RANGE_PAGES))
            .with_inputs(|| patina(RANGE_POOL))
            .bench_local_refs(patina_map_pages);
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

    /// The same on a table declared live: break-before-make where the codec asks for it.
    #[divan::bench(sample_size = 1)]
    fn ours_one_op_calls_live(b: Bencher) {
        b.counter(ItemsCount::new(HALF_PAGES))
            .with_inputs(ours_mapped_live)
            .bench_local_refs(ours_protect_pages);
    }

    #[divan::bench(sample_size = 1)]
    fn ours_one_transaction(b: Bencher) {
        b.counter(ItemsCount::new(HALF_PAGES))
            .with_inputs(|| (ours_mapped(), protect_ops()))
            .bench_local_refs(|(t, ops)| t.transaction().extend(ops.iter().copied()).commit().unwrap());
    }

    #[divan::bench(sample_size = 1)]
    fn aarch64_paging_modify_range_calls(b: Bencher) {
        b.counter(ItemsCount::new(HALF_PAGES))
            .with_inputs(ap_mapped)
            .bench_local_refs(ap_protect_pages);
    }

    #[divan::bench(sample_size = 1)]
    fn patina_one_op_calls(b: Bencher) {
        b.counter(ItemsCount::new(HALF_PAGES))
            .with_inputs(patina_mapped)
            .bench_local_refs(patina_protect_pages);
    }
}

/// Workload 4: as workload 3, inside a range first mapped with 1 GiB blocks (forces splits).
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
    fn aarch64_paging_modify_range_calls(b: Bencher) {
        b.counter(ItemsCount::new(HALF_PAGES))
            .with_inputs(ap_identity_mapped)
            .bench_local_refs(ap_protect_pages);
    }

    #[divan::bench(sample_size = 1)]
    fn patina_one_op_calls(b: Bencher) {
        b.counter(ItemsCount::new(HALF_PAGES))
            .with_inputs(patina_identity_mapped)
            .bench_local_refs(patina_protect_pages);
    }
}

/// Workload 5: 10,000 random 4 KiB queries in the protected 64 MiB.
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
    fn aarch64_paging_walk_range(b: Bencher) {
        let (a, addresses) = (ap_protected(), addresses());
        b.counter(ItemsCount::new(QUERIES)).bench_local(|| {
            for &address in &addresses {
                black_box(ap_query(&a, black_box(address)));
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
    fn aarch64_paging_one_call(b: Bencher) {
        b.counter(ItemsCount::new(RANGE_PAGES))
            .with_inputs(ap_mapped)
            .bench_local_refs(ap_unmap_all);
    }

    #[divan::bench(sample_size = 1)]
    fn aarch64_paging_calls(b: Bencher) {
        b.counter(ItemsCount::new(RANGE_PAGES))
            .with_inputs(ap_mapped)
            .bench_local_refs(ap_unmap_pages);
    }

    #[divan::bench(sample_size = 1)]
    fn patina_one_call(b: Bencher) {
        b.counter(ItemsCount::new(RANGE_PAGES))
            .with_inputs(patina_mapped)
            .bench_local_refs(patina_unmap_all);
    }

    #[divan::bench(sample_size = 1)]
    fn patina_one_op_calls(b: Bencher) {
        b.counter(ItemsCount::new(RANGE_PAGES))
            .with_inputs(patina_mapped)
            .bench_local_refs(patina_unmap_pages);
    }
}

/// Workload 7: restore the range split by workload 4 to uniform Writeback (merge).
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
    fn aarch64_paging_map_range(b: Bencher) {
        b.counter(ItemsCount::new(RANGE_PAGES))
            .with_inputs(ap_split)
            .bench_local_refs(ap_restore_map);
    }

    #[divan::bench(sample_size = 1)]
    fn patina_map_one_call(b: Bencher) {
        b.counter(ItemsCount::new(RANGE_PAGES))
            .with_inputs(patina_split)
            .bench_local_refs(patina_restore_map);
    }
}

/// Workload 8, the floor: a plain loop of 64-bit stores, as many as the workload has pages.
mod w8_floor_entry_stores {
    use super::*;

    #[divan::bench(args = [8192, 16384])]
    fn store_loop(b: Bencher, entries: usize) {
        let floor = Floor::new(entries);
        b.counter(ItemsCount::new(entries))
            .bench_local(|| floor.store_entries(black_box(BASE)));
    }
}

// ---------------------------------------------------------------------------------------
// Counts, printed once
// ---------------------------------------------------------------------------------------

mod counts {
    use super::*;

    struct Row {
        workload: &'static str,
        variant: &'static str,
        pages: PageCount,
        changed: usize,
        written: Option<usize>,
        invalidations: String,
    }

    /// A table descriptor: valid, bit 1 set, above L3 (`level` 0 = L3).
    fn is_table(raw: u64, level: u8) -> bool {
        level > 0 && raw & 3 == 3
    }

    fn pool_row(
        workload: &'static str,
        variant: &'static str,
        pool: &SharedPool,
        root: u64,
        before: Snapshot,
        invalidations: String,
    ) -> Row {
        let pool = pool.borrow();
        Row {
            workload,
            variant,
            pages: PageCount {
                reachable: reachable_tables(root, 3, &is_table),
                held: pool.live_pages(),
            },
            changed: before.changed(&pool),
            written: None,
            invalidations,
        }
    }

    /// Our workload as transactions (the one-op wrappers are one-op transactions).
    fn ours_row(workload: &'static str, variant: &'static str, mut t: Ours, batches: Vec<Vec<Op>>) -> Row {
        let before = Snapshot::take(t.allocator());
        let mmu = (
            t.mmu().page_invalidations(),
            t.mmu().full_invalidations(),
            t.mmu().barriers(),
        );
        let mut report = txpaging::CommitReport::default();
        for ops in batches {
            report.accumulate(&t.transaction().extend(ops).commit().unwrap());
        }
        let (pages, full, barriers) = (
            t.mmu().page_invalidations() - mmu.0,
            t.mmu().full_invalidations() - mmu.1,
            t.mmu().barriers() - mmu.2,
        );
        Row {
            workload,
            variant,
            pages: PageCount {
                reachable: t.table_pages(),
                held: t.allocator().live_pages(),
            },
            changed: before.changed(t.allocator()),
            written: Some(report.entries_written),
            invalidations: format!(
                "{pages} TLBI by VA + {full} TLBI all in {} batches, {barriers} barriers",
                report.invalidation_batches
            ),
        }
    }

    /// `aarch64-paging`: TLB maintenance only when `Mapping::active()` (`invalidate_range`,
    /// `free_detached`, `modify_range` all test `live`); these mappings are never activated.
    fn ap_row(workload: &'static str, variant: &'static str, mut a: Ap, run: impl Fn(&mut Ap)) -> Row {
        let before = Snapshot::take(&a.pool.borrow());
        run(&mut a);
        let root = a.map.root_address().0 as u64;
        pool_row(
            workload,
            variant,
            &a.pool,
            root,
            before,
            "0 (not active: no TLBI issued)".into(),
        )
    }

    /// `patina_paging`: on `uefi` + `aarch64` every descriptor store (`update_fields`,
    /// `set_present_bit`, `unmap`) goes through `replace_live_xlat_entry`, one `TLBI VAAE1`
    /// each, whether the old entry was valid or not; on the host a plain store.
    fn patina_row(workload: &'static str, variant: &'static str, mut p: Patina, run: impl Fn(&mut Patina)) -> Row {
        let before = Snapshot::take(&p.pool.borrow());
        run(&mut p);
        let root = p.root.get();
        pool_row(
            workload,
            variant,
            &p.pool,
            root,
            before,
            "0 on the host; on target one TLBI per descriptor store".into(),
        )
    }

    fn one_op(ops: Vec<Op>) -> Vec<Vec<Op>> {
        ops.into_iter().map(|op| vec![op]).collect()
    }

    fn single(op: Op) -> Vec<Vec<Op>> {
        vec![vec![op]]
    }

    pub fn print() {
        let identity = Op::Map {
            va: 0,
            pa: 0,
            size: IDENTITY_SIZE,
            attributes: WB,
        };
        let restore_map = Op::Map {
            va: BASE,
            pa: BASE,
            size: RANGE,
            attributes: WB,
        };
        let restore_protect = Op::Protect {
            va: BASE,
            size: RANGE,
            attributes: A::empty(),
        };
        // Sanity: every library ends workload 3 with the same attributes.
        let t = ours_protected();
        assert_eq!(t.query_memory_region(page(0), PAGE_SIZE), Ok(WB | PROTECT));
        assert_eq!(t.query_memory_region(page(1), PAGE_SIZE), Ok(WB));
        let a = ap_protected();
        assert_eq!(ap_query(&a, page(0)).map(|(_, f)| f.contains(AP_PROTECT)), Some(true));
        assert_eq!(
            ap_query(&a, page(1)).map(|(_, f)| f.contains(E::READ_ONLY)),
            Some(false)
        );
        let (ours_leaf, _) = t.translate(page(1)).unwrap();
        assert_eq!(ap_query(&a, page(1)).map(|(pa, _)| pa as u64), Some(ours_leaf));

        let rows = vec![
            ours_row("1", "ours, one call", ours(SMALL_POOL), single(identity)),
            ap_row("1", "aarch64-paging, map_range", ap(SMALL_POOL), ap_identity),
            patina_row("1", "patina, one call", patina(SMALL_POOL), patina_identity),
            ours_row("2", "ours, 16,384 one-op calls", ours(RANGE_POOL), one_op(map_ops())),
            ours_row("2", "ours, one transaction", ours(RANGE_POOL), vec![map_ops()]),
            ap_row("2", "aarch64-paging, 16,384 map_range", ap(RANGE_POOL), ap_map_pages),
            patina_row("2", "patina, 16,384 calls", patina(RANGE_POOL), patina_map_pages),
            ours_row("3", "ours, 8,192 one-op calls", ours_mapped(), one_op(protect_ops())),
            ours_row(
                "3",
                "ours, 8,192 one-op calls, live",
                ours_mapped_live(),
                one_op(protect_ops()),
            ),
            ours_row("3", "ours, one transaction", ours_mapped(), vec![protect_ops()]),
            ap_row("3", "aarch64-paging, 8,192 modify_range", ap_mapped(), ap_protect_pages),
            patina_row("3", "patina, 8,192 calls", patina_mapped(), patina_protect_pages),
            ours_row(
                "4",
                "ours, 8,192 one-op calls",
                ours_identity_mapped(),
                one_op(protect_ops()),
            ),
            ours_row(
                "4",
                "ours, one transaction",
                ours_identity_mapped(),
                vec![protect_ops()],
            ),
            ap_row(
                "4",
                "aarch64-paging, 8,192 modify_range",
                ap_identity_mapped(),
                ap_protect_pages,
            ),
            patina_row(
                "4",
                "patina, 8,192 calls",
                patina_identity_mapped(),
                patina_protect_pages,
            ),
            ours_row(
                "6",
                "ours, one call",
                ours_mapped(),
                single(Op::Unmap { va: BASE, size: RANGE }),
            ),
            ours_row("6", "ours, 16,384 one-op calls", ours_mapped(), one_op(unmap_ops())),
            ours_row("6", "ours, one transaction of pages", ours_mapped(), vec![unmap_ops()]),
            ap_row(
                "6",
                "aarch64-paging, one map_range (invalid)",
                ap_mapped(),
                ap_unmap_all,
            ),
            ap_row(
                "6",
                "aarch64-paging, 16,384 map_range (invalid)",
                ap_mapped(),
                ap_unmap_pages,
            ),
            patina_row("6", "patina, one call", patina_mapped(), patina_unmap_all),
            patina_row("6", "patina, 16,384 calls", patina_mapped(), patina_unmap_pages),
            ours_row("7", "ours, protect one call", ours_split(), single(restore_protect)),
            ours_row("7", "ours, map one call", ours_split(), single(restore_map)),
            ap_row("7", "aarch64-paging, map_range", ap_split(), ap_restore_map),
            patina_row("7", "patina, map one call", patina_split(), patina_restore_map),
        ];
        println!("Counts per workload (AArch64, 4-level; table pages: reachable from the root / held from the pool):");
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
