//! The realistic firmware workload (issue 12), X64 and AArch64, and the plan-cost rows, in
//! one binary and one run: `cargo bench --bench firmware`.
//!
//! **Realistic batch.** From the captured OVMF q35 4 GiB memory map (X64,
//! `examples/data/`) and the AAVMF virt 4 GiB capture (AArch64, `benches/data/`):
//! 1. (set-up, not timed) identity-map every memory-map descriptor with the cache type
//!    its capability bits allow (most cached for memory, least for MMIO), no access bits
//!    (MMIO ExecuteProtect);
//! 2. (timed) about 280 overlapping, unsorted protections, in this order: every data-type
//!    descriptor (Conventional, BootServicesData, RuntimeServicesData, LoaderData, ACPI
//!    reclaim, ACPI NVS) ExecuteProtect; each loaded image's first page
//!    ReadOnly|ExecuteProtect and the rest of it (rounded up to pages) ReadOnly; each
//!    Memory Attributes Table entry its RO/XP as given.
//!
//! Ours runs the batch as one transaction and as one-op calls; patina_paging re-maps each
//! range with its cache type plus the new access bits (it has no protect); on AArch64,
//! aarch64-paging runs `modify_range` with an updater that sets and clears AP[2]/UXN/PXN.
//! All three end with the same attributes on every page of every op (checked before the
//! timings). Pools are pre-faulted (`benches/common`); tables are built per sample outside
//! the timed part.
//!
//! **Plan cost** (X64): protect 1 GiB mapped as 512 2 MiB leaves, and the same 1 GiB
//! mapped as 262,144 4 KiB pages (odd and even pages swapped in PA, so nothing can merge);
//! re-apply to both the attributes they already have (zero stores, zero invalidations:
//! asserted in `tests/plan_cost.rs`).
//!
//! **Callgrind.** `TXPAGING_CALLGRIND=<step>` builds that step's input, runs the step once
//! and exits without divan; run it under `valgrind --tool=callgrind
//! --toggle-collect='firmware::steps::<step>'` (see `docs/performance.md`).

mod common;

use std::cell::Cell;
use std::rc::Rc;

use aarch64_paging::descriptor::{El1Attributes as E, PhysicalAddress};
use aarch64_paging::paging::{Constraints, El1And0, MemoryRegion, VaRange};
use aarch64_paging::Mapping;
use common::{pool, shared_pool, CountingMmu, PatinaPool, PoolTranslation, SharedPool, GIB};
use divan::counter::ItemsCount;
use divan::Bencher;
use txpaging::{
    Aarch64Config, Aarch64PageTable, MemoryAttributes as A, Op, PagePool, PageTable, PagingType, X64Config,
    X64PageTable, PAGE_SIZE,
};

fn main() {
    common::keep_freed_heap_memory();
    if let Ok(step) = std::env::var("TXPAGING_CALLGRIND") {
        steps::callgrind(&step);
        return;
    }
    if std::env::var("TXPAGING_BENCH_COUNTS").map_or(true, |v| v != "0") {
        counts::print();
    }
    divan::main();
}

// ---------------------------------------------------------------------------------------
// The captured data
// ---------------------------------------------------------------------------------------

/// One capture: memory map, loaded images, Memory Attributes Table.
struct Capture {
    map: &'static str,
    images: &'static str,
    mat: &'static str,
}

const X64_CAPTURE: Capture = Capture {
    map: include_str!("../examples/data/uefi-memmap-x64-q35-4G.csv"),
    images: include_str!("../examples/data/uefi-images-x64-q35-4G.csv"),
    mat: include_str!("../examples/data/uefi-mat-x64-q35-4G.csv"),
};

const AARCH64_CAPTURE: Capture = Capture {
    map: include_str!("data/uefi-memmap-aarch64-virt-4G.csv"),
    images: include_str!("data/uefi-images-aarch64-virt-4G.csv"),
    mat: include_str!("data/uefi-mat-aarch64-virt-4G.csv"),
};

#[derive(Debug, Clone, Copy)]
struct Descriptor {
    kind: &'static str,
    start: u64,
    size: u64,
    attributes: u64,
}

fn hex(field: &str) -> u64 {
    u64::from_str_radix(field.trim_start_matches("0x"), 16).expect("hex field")
}

fn rows(csv: &'static str, header: &str) -> impl Iterator<Item = Vec<&'static str>> {
    let mut lines = csv.lines();
    assert_eq!(lines.next(), Some(header), "unexpected CSV header");
    lines.filter(|l| !l.is_empty()).map(|l| l.split(',').collect())
}

fn descriptors(csv: &'static str) -> Vec<Descriptor> {
    rows(csv, "type,start,end,pages,attributes")
        .map(|f| {
            let (start, end, pages) = (hex(f[1]), hex(f[2]), f[3].parse::<u64>().expect("pages"));
            assert_eq!(end + 1 - start, pages * PAGE_SIZE, "inconsistent descriptor {f:?}");
            Descriptor {
                kind: f[0],
                start,
                size: pages * PAGE_SIZE,
                attributes: hex(f[4]),
            }
        })
        .collect()
}

/// (base, size rounded up to pages) of every loaded image.
fn images(csv: &'static str) -> Vec<(u64, u64)> {
    rows(csv, "name,base,size,code_type,data_type,region_type")
        .map(|f| (hex(f[1]), hex(f[2]).div_ceil(PAGE_SIZE) * PAGE_SIZE))
        .collect()
}

fn is_mmio(kind: &str) -> bool {
    matches!(kind, "EfiMemoryMappedIO" | "EfiMemoryMappedIOPortSpace")
}

fn is_data(kind: &str) -> bool {
    matches!(
        kind,
        "EfiConventionalMemory"
            | "EfiBootServicesData"
            | "EfiRuntimeServicesData"
            | "EfiLoaderData"
            | "EfiACPIReclaimMemory"
            | "EfiACPIMemoryNVS"
    )
}

/// The cache type firmware maps a descriptor with: the most cached one it supports for
/// memory, the least cached for MMIO.
fn cache_type(d: &Descriptor) -> A {
    let capable = A::from_bits_truncate(d.attributes).cache();
    let order = [
        A::Writeback,
        A::WriteThrough,
        A::WriteCombining,
        A::Uncached,
        A::UncachedExport,
    ];
    let pick = |c: &A| capable.contains(*c);
    if is_mmio(d.kind) {
        order.iter().rev().copied().find(pick)
    } else {
        order.iter().copied().find(pick)
    }
    .unwrap_or_else(|| panic!("no usable cache type in {d:?}"))
}

/// The workload of one capture: the memory map to identity-map, and the protection batch.
struct Workload {
    /// (start, size, attributes) of every memory-map descriptor: its cache type, plus
    /// ExecuteProtect for MMIO.
    map: Vec<(u64, u64, A)>,
    /// The batch: (va, size, access bits, cache type of the descriptor holding `va`).
    batch: Vec<(u64, u64, A, A)>,
}

impl Workload {
    fn new(capture: &Capture) -> Self {
        let map: Vec<Descriptor> = descriptors(capture.map);
        let cache_at = |va: u64| {
            let d = map
                .iter()
                .find(|d| d.start <= va && va < d.start + d.size)
                .unwrap_or_else(|| panic!("{va:#x} is in no descriptor"));
            cache_type(d)
        };
        let mut batch = Vec::new();
        for d in map.iter().filter(|d| is_data(d.kind)) {
            batch.push((d.start, d.size, A::ExecuteProtect, cache_type(d)));
        }
        for (base, size) in images(capture.images) {
            batch.push((base, PAGE_SIZE, A::ReadOnly | A::ExecuteProtect, cache_at(base)));
            if size > PAGE_SIZE {
                batch.push((base + PAGE_SIZE, size - PAGE_SIZE, A::ReadOnly, cache_at(base)));
            }
        }
        for d in descriptors(capture.mat) {
            batch.push((
                d.start,
                d.size,
                A::from_bits_truncate(d.attributes).access(),
                cache_at(d.start),
            ));
        }
        Self {
            // MMIO is mapped ExecuteProtect (patina_paging refuses executable device memory
            // on AArch64); the batch does not touch it.
            map: map
                .iter()
                .map(|d| {
                    let xp = if is_mmio(d.kind) { A::ExecuteProtect } else { A::empty() };
                    (d.start, d.size, cache_type(d) | xp)
                })
                .collect(),
            batch,
        }
    }

    fn ops(&self) -> Vec<Op> {
        self.batch
            .iter()
            .map(|&(va, size, access, _)| Op::Protect {
                va,
                size,
                attributes: access,
            })
            .collect()
    }

    fn map_ops(&self) -> Vec<Op> {
        self.map
            .iter()
            .map(|&(va, size, cache)| Op::Map {
                va,
                pa: va,
                size,
                attributes: cache,
            })
            .collect()
    }
}

fn patina_attributes(a: A) -> patina_paging::MemoryAttributes {
    patina_paging::MemoryAttributes::from_bits_truncate(a.bits())
}

/// Table pages for any table of the realistic workload (each library uses far fewer).
const FIRMWARE_POOL: usize = 1024;

// ---------------------------------------------------------------------------------------
// X64
// ---------------------------------------------------------------------------------------

mod x64 {
    use super::*;

    pub type Ours = X64PageTable<PagePool, CountingMmu>;

    /// As in `benches/x64.rs`: installed, so commits invalidate what they change.
    pub fn ours(pages: usize, one_gib_pages: bool) -> Ours {
        let t = X64PageTable::with_mmu(
            pool(pages),
            PagingType::Paging4Level,
            X64Config { one_gib_pages },
            CountingMmu::default(),
        )
        .expect("our table");
        t.install_page_table().expect("install");
        t
    }

    pub struct Patina {
        pub table: patina_paging::x64::X64PageTable<PatinaPool>,
        pub pool: SharedPool,
    }

    pub fn patina(pages: usize) -> Patina {
        let pool = shared_pool(pages);
        let allocator = PatinaPool {
            pool: pool.clone(),
            root: Rc::new(Cell::new(0)),
        };
        let table = patina_paging::x64::X64PageTable::new(allocator, patina_paging::PagingType::Paging4Level)
            .expect("patina table");
        Patina { table, pool }
    }

    pub fn workload() -> Workload {
        Workload::new(&X64_CAPTURE)
    }

    pub fn ours_mapped(w: &Workload) -> Ours {
        let mut t = ours(FIRMWARE_POOL, true);
        t.transaction().extend(w.map_ops()).commit().expect("identity map");
        t
    }

    pub fn patina_mapped(w: &Workload) -> Patina {
        let mut p = patina(FIRMWARE_POOL);
        for &(va, size, cache) in &w.map {
            patina_paging::PageTable::map_memory_region(&mut p.table, va, size, patina_attributes(cache)).unwrap();
        }
        p
    }

    /// 1 GiB at 1 GiB mapped as 512 2 MiB leaves (1 GiB pages off).
    pub fn ours_gib_as_2mib() -> Ours {
        let mut t = ours(16, false);
        t.map_memory_region(GIB, GIB, A::Writeback).unwrap();
        t
    }

    /// 1 GiB at 1 GiB mapped as 262,144 4 KiB pages: page `i` maps the PA of page `i ^ 1`,
    /// so no last-level table can merge into a 2 MiB leaf.
    pub fn ours_gib_as_4kib() -> Ours {
        let mut t = ours(600, false);
        let pages = GIB / PAGE_SIZE;
        t.transaction()
            .extend((0..pages).map(|i| Op::Map {
                va: GIB + i * PAGE_SIZE,
                pa: GIB + (i ^ 1) * PAGE_SIZE,
                size: PAGE_SIZE,
                attributes: A::Writeback,
            }))
            .commit()
            .expect("1 GiB of 4 KiB pages");
        t
    }
}

// ---------------------------------------------------------------------------------------
// AArch64
// ---------------------------------------------------------------------------------------

mod aarch64 {
    use super::*;

    pub type Ours = Aarch64PageTable<PagePool, CountingMmu>;

    /// As in `benches/aarch64.rs`: not installed, not live (the peers' tables are not
    /// active either), so no TLB maintenance anywhere.
    pub fn ours(pages: usize) -> Ours {
        Aarch64PageTable::with_mmu(
            pool(pages),
            PagingType::Paging4Level,
            Aarch64Config::default(),
            CountingMmu::default(),
        )
        .expect("our table")
    }

    pub struct Ap {
        pub map: Mapping<PoolTranslation, El1And0>,
    }

    pub fn ap(pages: usize) -> Ap {
        let pool = shared_pool(pages);
        Ap {
            map: Mapping::with_asid_and_va_range(PoolTranslation(pool), 0, 0, El1And0, VaRange::Lower),
        }
    }

    pub struct Patina {
        pub table: patina_paging::aarch64::AArch64PageTable<PatinaPool>,
    }

    pub fn patina(pages: usize) -> Patina {
        let allocator = PatinaPool {
            pool: shared_pool(pages),
            root: Rc::new(Cell::new(0)),
        };
        let table = patina_paging::aarch64::AArch64PageTable::new(allocator, patina_paging::PagingType::Paging4Level)
            .expect("patina table");
        Patina { table }
    }

    pub fn workload() -> Workload {
        Workload::new(&AARCH64_CAPTURE)
    }

    pub fn region(start: u64, size: u64) -> MemoryRegion {
        MemoryRegion::new(start as usize, (start + size) as usize)
    }

    /// aarch64-paging's flags for a cache type: MAIR index 4 (Writeback, inner shareable)
    /// for memory, index 0 (Device) otherwise, as ours and patina_paging lay out MAIR.
    pub fn ap_flags(cache: A) -> E {
        let base = E::VALID.union(E::ACCESSED);
        if cache.cache() == A::Writeback {
            base | E::INNER_SHAREABLE | E::ATTRIBUTE_INDEX_4
        } else {
            base | E::ATTRIBUTE_INDEX_0 | E::UXN | E::PXN
        }
    }

    /// (set, clear) of aarch64-paging's flags for a protect with `access`.
    pub fn ap_access(access: A) -> (E, E) {
        let (mut set, mut clear) = (E::empty(), E::empty());
        let xp = E::UXN.union(E::PXN);
        if access.contains(A::ReadOnly) {
            set |= E::READ_ONLY;
        } else {
            clear |= E::READ_ONLY;
        }
        if access.contains(A::ExecuteProtect) {
            set |= xp;
        } else {
            clear |= xp;
        }
        (set, clear)
    }

    pub fn ours_mapped(w: &Workload) -> Ours {
        let mut t = ours(FIRMWARE_POOL);
        t.transaction().extend(w.map_ops()).commit().expect("identity map");
        t
    }

    pub fn ap_mapped(w: &Workload) -> Ap {
        let mut a = ap(FIRMWARE_POOL);
        for &(va, size, cache) in &w.map {
            a.map
                .map_range(
                    &region(va, size),
                    PhysicalAddress(va as usize),
                    ap_flags(cache),
                    Constraints::empty(),
                )
                .unwrap();
        }
        a
    }

    pub fn patina_mapped(w: &Workload) -> Patina {
        let mut p = patina(FIRMWARE_POOL);
        for &(va, size, cache) in &w.map {
            patina_paging::PageTable::map_memory_region(&mut p.table, va, size, patina_attributes(cache)).unwrap();
        }
        p
    }
}

// ---------------------------------------------------------------------------------------
// The timed steps (also run under callgrind)
// ---------------------------------------------------------------------------------------

mod steps {
    use super::*;

    #[inline(never)]
    pub fn x64_ours_transaction(t: &mut x64::Ours, ops: &[Op]) {
        t.transaction().extend(ops.iter().copied()).commit().unwrap();
    }

    #[inline(never)]
    pub fn x64_ours_one_op_calls(t: &mut x64::Ours, w: &Workload) {
        for &(va, size, access, _) in &w.batch {
            t.protect_memory_region(va, size, access).unwrap();
        }
    }

    #[inline(never)]
    pub fn x64_patina_calls(p: &mut x64::Patina, w: &Workload) {
        for &(va, size, access, cache) in &w.batch {
            patina_paging::PageTable::map_memory_region(&mut p.table, va, size, patina_attributes(cache | access))
                .unwrap();
        }
    }

    #[inline(never)]
    pub fn aarch64_ours_transaction(t: &mut aarch64::Ours, ops: &[Op]) {
        t.transaction().extend(ops.iter().copied()).commit().unwrap();
    }

    #[inline(never)]
    pub fn aarch64_ours_one_op_calls(t: &mut aarch64::Ours, w: &Workload) {
        for &(va, size, access, _) in &w.batch {
            t.protect_memory_region(va, size, access).unwrap();
        }
    }

    #[inline(never)]
    pub fn aarch64_ap_calls(a: &mut aarch64::Ap, w: &Workload) {
        for &(va, size, access, _) in &w.batch {
            let (set, clear) = aarch64::ap_access(access);
            a.map
                .modify_range(&aarch64::region(va, size), &|_, d| d.modify_flags(set, clear))
                .unwrap();
        }
    }

    #[inline(never)]
    pub fn aarch64_patina_calls(p: &mut aarch64::Patina, w: &Workload) {
        for &(va, size, access, cache) in &w.batch {
            patina_paging::PageTable::map_memory_region(&mut p.table, va, size, patina_attributes(cache | access))
                .unwrap();
        }
    }

    /// Plan cost: one protect of the whole GiB.
    #[inline(never)]
    pub fn x64_protect_gib(t: &mut x64::Ours, attributes: A) {
        t.protect_memory_region(GIB, GIB, attributes).unwrap();
    }

    /// Workload 3 of `benches/x64.rs` as one transaction (8,192 protects of every other
    /// page of 64 MiB mapped as 2 MiB leaves), for callgrind.
    #[inline(never)]
    pub fn x64_w3_transaction(t: &mut x64::Ours, ops: &[Op]) {
        t.transaction().extend(ops.iter().copied()).commit().unwrap();
    }

    #[inline(never)]
    pub fn x64_w3_one_op_calls(t: &mut x64::Ours, ops: &[Op]) {
        for op in ops {
            let Op::Protect { va, size, attributes } = *op else {
                unreachable!()
            };
            t.protect_memory_region(va, size, attributes).unwrap();
        }
    }

    /// Workload 2 of `benches/x64.rs` (16,384 maps of one 4 KiB page each into an empty
    /// table) as one transaction and as one-op calls, for callgrind.
    #[inline(never)]
    pub fn x64_w2_transaction(t: &mut x64::Ours, ops: &[Op]) {
        t.transaction().extend(ops.iter().copied()).commit().unwrap();
    }

    #[inline(never)]
    pub fn x64_w2_one_op_calls(t: &mut x64::Ours, ops: &[Op]) {
        for op in ops {
            let Op::Map {
                va, size, attributes, ..
            } = *op
            else {
                unreachable!()
            };
            t.map_memory_region(va, size, attributes).unwrap();
        }
    }

    pub fn w2_ops() -> Vec<Op> {
        (0..2 * common::HALF_PAGES)
            .map(|i| Op::Map {
                va: common::BASE + i * PAGE_SIZE,
                pa: common::BASE + i * PAGE_SIZE,
                size: PAGE_SIZE,
                attributes: A::Writeback,
            })
            .collect()
    }

    pub fn w3_ops() -> Vec<Op> {
        (0..common::HALF_PAGES)
            .map(|i| Op::Protect {
                va: common::BASE + 2 * i * PAGE_SIZE,
                size: PAGE_SIZE,
                attributes: A::ReadOnly | A::ExecuteProtect,
            })
            .collect()
    }

    pub fn w3_mapped() -> x64::Ours {
        let mut t = x64::ours(64, true);
        t.map_memory_region(common::BASE, common::RANGE, A::Writeback).unwrap();
        t
    }

    /// Runs one step once on a freshly built input (for `valgrind --tool=callgrind
    /// --toggle-collect='firmware::steps::<step>'`).
    pub fn callgrind(step: &str) {
        let (xw, aw) = (x64::workload(), aarch64::workload());
        let (xops, aops) = (xw.ops(), aw.ops());
        match step {
            "x64_ours_transaction" => x64_ours_transaction(&mut x64::ours_mapped(&xw), &xops),
            "x64_ours_one_op_calls" => x64_ours_one_op_calls(&mut x64::ours_mapped(&xw), &xw),
            "x64_patina_calls" => x64_patina_calls(&mut x64::patina_mapped(&xw), &xw),
            "aarch64_ours_transaction" => aarch64_ours_transaction(&mut aarch64::ours_mapped(&aw), &aops),
            "aarch64_ours_one_op_calls" => aarch64_ours_one_op_calls(&mut aarch64::ours_mapped(&aw), &aw),
            "aarch64_ap_calls" => aarch64_ap_calls(&mut aarch64::ap_mapped(&aw), &aw),
            "aarch64_patina_calls" => aarch64_patina_calls(&mut aarch64::patina_mapped(&aw), &aw),
            "x64_w2_transaction" => x64_w2_transaction(&mut x64::ours(64, true), &w2_ops()),
            "x64_w2_one_op_calls" => x64_w2_one_op_calls(&mut x64::ours(64, true), &w2_ops()),
            "x64_w3_transaction" => x64_w3_transaction(&mut w3_mapped(), &w3_ops()),
            "x64_w3_one_op_calls" => x64_w3_one_op_calls(&mut w3_mapped(), &w3_ops()),
            "x64_protect_gib_2mib" => x64_protect_gib(&mut x64::ours_gib_as_2mib(), A::ReadOnly),
            "x64_protect_gib_4kib" => x64_protect_gib(&mut x64::ours_gib_as_4kib(), A::ReadOnly),
            "x64_reapply_gib_2mib" => x64_protect_gib(&mut x64::ours_gib_as_2mib(), A::empty()),
            "x64_reapply_gib_4kib" => x64_protect_gib(&mut x64::ours_gib_as_4kib(), A::empty()),
            other => panic!("unknown step {other:?}"),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Benchmarks
// ---------------------------------------------------------------------------------------

/// X64, OVMF q35 4 GiB: the protection batch. Items: ops of the batch.
mod x64_realistic_batch {
    use super::*;

    #[divan::bench(sample_size = 1)]
    fn ours_one_transaction(b: Bencher) {
        let w = x64::workload();
        let ops = w.ops();
        b.counter(ItemsCount::new(ops.len()))
            .with_inputs(|| x64::ours_mapped(&w))
            .bench_local_refs(|t| steps::x64_ours_transaction(t, &ops));
    }

    #[divan::bench(sample_size = 1)]
    fn ours_one_op_calls(b: Bencher) {
        let w = x64::workload();
        b.counter(ItemsCount::new(w.batch.len()))
            .with_inputs(|| x64::ours_mapped(&w))
            .bench_local_refs(|t| steps::x64_ours_one_op_calls(t, &w));
    }

    #[divan::bench(sample_size = 1)]
    fn patina_calls(b: Bencher) {
        let w = x64::workload();
        b.counter(ItemsCount::new(w.batch.len()))
            .with_inputs(|| x64::patina_mapped(&w))
            .bench_local_refs(|p| steps::x64_patina_calls(p, &w));
    }
}

/// AArch64, AAVMF virt 4 GiB: the protection batch. Items: ops of the batch.
mod aarch64_realistic_batch {
    use super::*;

    #[divan::bench(sample_size = 1)]
    fn ours_one_transaction(b: Bencher) {
        let w = aarch64::workload();
        let ops = w.ops();
        b.counter(ItemsCount::new(ops.len()))
            .with_inputs(|| aarch64::ours_mapped(&w))
            .bench_local_refs(|t| steps::aarch64_ours_transaction(t, &ops));
    }

    #[divan::bench(sample_size = 1)]
    fn ours_one_op_calls(b: Bencher) {
        let w = aarch64::workload();
        b.counter(ItemsCount::new(w.batch.len()))
            .with_inputs(|| aarch64::ours_mapped(&w))
            .bench_local_refs(|t| steps::aarch64_ours_one_op_calls(t, &w));
    }

    #[divan::bench(sample_size = 1)]
    fn aarch64_paging_modify_range_calls(b: Bencher) {
        let w = aarch64::workload();
        b.counter(ItemsCount::new(w.batch.len()))
            .with_inputs(|| aarch64::ap_mapped(&w))
            .bench_local_refs(|a| steps::aarch64_ap_calls(a, &w));
    }

    #[divan::bench(sample_size = 1)]
    fn patina_calls(b: Bencher) {
        let w = aarch64::workload();
        b.counter(ItemsCount::new(w.batch.len()))
            .with_inputs(|| aarch64::patina_mapped(&w))
            .bench_local_refs(|p| steps::aarch64_patina_calls(p, &w));
    }
}

/// X64 plan cost: one protect of 1 GiB, as 2 MiB leaves and as 4 KiB pages, changing the
/// access bits (ReadOnly) or re-applying the ones it has (none). Items: 4 KiB pages covered.
mod x64_plan_cost {
    use super::*;

    const PAGES: u64 = GIB / PAGE_SIZE;

    #[divan::bench(sample_size = 1)]
    fn protect_gib_of_2mib_leaves(b: Bencher) {
        b.counter(ItemsCount::new(PAGES))
            .with_inputs(x64::ours_gib_as_2mib)
            .bench_local_refs(|t| steps::x64_protect_gib(t, A::ReadOnly));
    }

    #[divan::bench(sample_size = 1, sample_count = 20)]
    fn protect_gib_of_4kib_pages(b: Bencher) {
        b.counter(ItemsCount::new(PAGES))
            .with_inputs(x64::ours_gib_as_4kib)
            .bench_local_refs(|t| steps::x64_protect_gib(t, A::ReadOnly));
    }

    #[divan::bench(sample_size = 1)]
    fn reapply_gib_of_2mib_leaves(b: Bencher) {
        b.counter(ItemsCount::new(PAGES))
            .with_inputs(x64::ours_gib_as_2mib)
            .bench_local_refs(|t| steps::x64_protect_gib(t, A::empty()));
    }

    #[divan::bench(sample_size = 1, sample_count = 20)]
    fn reapply_gib_of_4kib_pages(b: Bencher) {
        b.counter(ItemsCount::new(PAGES))
            .with_inputs(x64::ours_gib_as_4kib)
            .bench_local_refs(|t| steps::x64_protect_gib(t, A::empty()));
    }
}

// ---------------------------------------------------------------------------------------
// Counts and cross-checks, printed once
// ---------------------------------------------------------------------------------------

mod counts {
    use super::*;

    fn print_workload(arch: &str, w: &Workload) {
        let pages: u64 = w.batch.iter().map(|b| b.1 / PAGE_SIZE).sum();
        println!(
            "{arch}: {} descriptors identity-mapped; batch of {} protects covering {pages} pages",
            w.map.len(),
            w.batch.len()
        );
    }

    pub fn print() {
        // X64: the transaction and the one-op calls end the same, and patina_paging
        // reports the same attributes for every page of every op.
        let w = x64::workload();
        print_workload("x64 (OVMF q35 4 GiB)", &w);
        let mut txn = x64::ours_mapped(&w);
        let pages_before = txn.table_pages();
        let report = txn.transaction().extend(w.ops()).commit().unwrap();
        let mut one = x64::ours_mapped(&w);
        let mut one_report = txpaging::CommitReport::default();
        for op in w.ops() {
            one_report.accumulate(&one.transaction().push(op).commit().unwrap());
        }
        assert!(
            txn.regions().eq(one.regions()),
            "x64: transaction and one-op calls differ"
        );
        let mut p = x64::patina_mapped(&w);
        steps::x64_patina_calls(&mut p, &w);
        for &(va, size, _, _) in &w.batch {
            for page in (va..va + size).step_by(PAGE_SIZE as usize) {
                let ours = txn.query_memory_region(page, PAGE_SIZE).unwrap();
                let theirs = patina_paging::PageTable::query_memory_region(&p.table, page, PAGE_SIZE).unwrap();
                assert_eq!(
                    ours.access().bits(),
                    theirs.bits() & A::all().access().bits(),
                    "x64 page {page:#x}"
                );
            }
        }
        println!(
            "  ours, one transaction: table pages {pages_before} -> {}, {} entries written, {} allocated, {} freed, {} INVLPG + {} full flush in {} batches",
            txn.table_pages(),
            report.entries_written,
            report.tables_allocated,
            report.tables_freed,
            report.pages_invalidated,
            report.full_flushes,
            report.invalidation_batches
        );
        println!(
            "  ours, one-op calls: {} entries written, {} allocated, {} freed, {} INVLPG + {} full flush in {} batches",
            one_report.entries_written,
            one_report.tables_allocated,
            one_report.tables_freed,
            one_report.pages_invalidated,
            one_report.full_flushes,
            one_report.invalidation_batches
        );
        println!(
            "  patina_paging: {} pool pages held; every page of every op has the same access bits as ours",
            p.pool.borrow().live_pages()
        );

        // AArch64.
        let w = aarch64::workload();
        print_workload("aarch64 (AAVMF virt 4 GiB)", &w);
        let mut txn = aarch64::ours_mapped(&w);
        let pages_before = txn.table_pages();
        let report = txn.transaction().extend(w.ops()).commit().unwrap();
        let mut one = aarch64::ours_mapped(&w);
        steps::aarch64_ours_one_op_calls(&mut one, &w);
        assert!(
            txn.regions().eq(one.regions()),
            "aarch64: transaction and one-op calls differ"
        );
        let mut p = aarch64::patina_mapped(&w);
        steps::aarch64_patina_calls(&mut p, &w);
        let mut a = aarch64::ap_mapped(&w);
        steps::aarch64_ap_calls(&mut a, &w);
        for &(va, size, _, _) in &w.batch {
            for page in (va..va + size).step_by(PAGE_SIZE as usize) {
                let ours = txn.query_memory_region(page, PAGE_SIZE).unwrap();
                let theirs = patina_paging::PageTable::query_memory_region(&p.table, page, PAGE_SIZE).unwrap();
                assert_eq!(
                    ours.access().bits(),
                    theirs.bits() & A::all().access().bits(),
                    "aarch64 page {page:#x}"
                );
                let mut flags = None;
                a.map
                    .walk_range(&aarch64::region(page, PAGE_SIZE), &mut |_, d, _| {
                        flags = Some(d.flags());
                        Ok(())
                    })
                    .unwrap();
                let flags = flags.expect("aarch64-paging maps the page");
                assert_eq!(
                    (
                        flags.contains(E::READ_ONLY),
                        flags.contains(E::UXN) && flags.contains(E::PXN)
                    ),
                    (ours.contains(A::ReadOnly), ours.contains(A::ExecuteProtect)),
                    "aarch64-paging page {page:#x}"
                );
            }
        }
        println!(
            "  ours, one transaction: table pages {pages_before} -> {}, {} entries written, {} allocated, {} freed",
            txn.table_pages(),
            report.entries_written,
            report.tables_allocated,
            report.tables_freed
        );
        println!("  patina_paging and aarch64-paging: every page of every op has the same RO/XP as ours");

        // Plan cost.
        for (what, make) in [
            ("1 GiB of 2 MiB leaves", x64::ours_gib_as_2mib as fn() -> x64::Ours),
            ("1 GiB of 4 KiB pages", x64::ours_gib_as_4kib),
        ] {
            for (verb, attributes) in [
                ("protect ReadOnly", A::ReadOnly),
                ("re-apply (no access bits)", A::empty()),
            ] {
                let mut t = make();
                let r = t.transaction().protect(GIB, GIB, attributes).commit().unwrap();
                println!(
                    "plan cost, {what}, {verb}: {} entries written, {} INVLPG + {} full flush",
                    r.entries_written, r.pages_invalidated, r.full_flushes
                );
            }
        }
    }
}
