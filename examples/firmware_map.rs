//! Builds the page table a UEFI firmware would build for a real OVMF memory map, then
//! applies the firmware's memory protections as one transaction.
//!
//! Input: the memory map, the Memory Attributes Table (MAT) and the loaded-image list
//! captured from OVMF under QEMU q35 with 4 GiB (see `examples/data/README.md`).
//!
//! 1. Identity-map every memory-map descriptor in one transaction: a cache type picked
//!    from the descriptor's capability bits, and ExecuteProtect for every non-code type.
//! 2. One protection batch: the NULL page, the MAT (runtime code RO, runtime data XP),
//!    each image's PE header page, and a stack guard page. Plan it, commit it.
//! 3. Replay the same batch one op at a time on an identical table and compare the cost.
//! 4. Show that a failing batch changes nothing and names the failing op.
//! 5. Dump two small ranges.
//!
//! Run: `cargo run --release --example firmware_map`. The table lives in a `PagePool` and
//! TLB maintenance goes to a `RecordingMmu`, so this runs on any host; every number printed
//! is computed by this program.

use std::fmt::Write as _;

use txpaging::x64::X64Codec;
use txpaging::{
    CommitReport, MappedRegion, MemoryAttributes as A, MemoryMapEntry, Op, PagePool, PageTable, PagingType, Plan,
    Policy, RecordingMmu, Rules, X64Config, X64PageTable,
};
use txpaging_txn::{Codec, Entry};

const MEMMAP_CSV: &str = include_str!("data/uefi-memmap-x64-q35-4G.csv");
const MAT_CSV: &str = include_str!("data/uefi-mat-x64-q35-4G.csv");
const IMAGES_CSV: &str = include_str!("data/uefi-images-x64-q35-4G.csv");

const PAGE: u64 = 4096;
const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;
const GIB: u64 = 1024 * MIB;

/// Table pages available to each table: 2 MiB, the program reports what it uses.
const POOL_PAGES: usize = 512;
/// Physical address of the pool: inside the EfiBootServicesData range 0x7F7FE000..0x7FE00000,
/// where firmware would allocate its page tables. Fixed so the dump is the same every run.
const POOL_BASE: u64 = 0x7FC0_0000;

/// The capture does not say where the DXE stack is, so the example picks a stand-in:
/// 128 KiB at the top of the 2 MiB EfiBootServicesData block at 0x7E80_0000,
/// with its guard page just below.
const STACK_TOP: u64 = 0x7EA0_0000;
const STACK_SIZE: u64 = 128 * KIB;
const STACK_GUARD: u64 = STACK_TOP - STACK_SIZE - PAGE;

/// The runtime image whose pages are listed and dumped at the end.
const SHOWCASE_IMAGE: &str = "RuntimeDxe";

type Table = X64PageTable<PagePool, RecordingMmu>;

/// One EFI_MEMORY_DESCRIPTOR from the memory map or the MAT.
#[derive(Debug, Clone)]
struct Descriptor {
    kind: &'static str,
    start: u64,
    size: u64,
    attributes: u64,
}

/// One loaded image.
#[derive(Debug, Clone)]
struct Image {
    name: &'static str,
    base: u64,
    size: u64,
}

fn hex(field: &str) -> u64 {
    u64::from_str_radix(field.trim_start_matches("0x"), 16).unwrap_or_else(|_| panic!("bad hex field {field:?}"))
}

/// Data rows of a CSV file whose first line is the header `expected`.
fn rows(csv: &'static str, expected: &str) -> impl Iterator<Item = Vec<&'static str>> {
    let mut lines = csv.lines();
    assert_eq!(lines.next(), Some(expected), "unexpected CSV header");
    lines.filter(|l| !l.is_empty()).map(|l| l.split(',').collect())
}

/// Parses `type,start,end,pages,attributes` (end inclusive, pages decimal).
fn descriptors(csv: &'static str) -> Vec<Descriptor> {
    rows(csv, "type,start,end,pages,attributes")
        .map(|f| {
            let (start, end, pages) = (hex(f[1]), hex(f[2]), f[3].parse::<u64>().expect("pages"));
            assert_eq!(end + 1 - start, pages * PAGE, "inconsistent descriptor {f:?}");
            Descriptor {
                kind: f[0],
                start,
                size: pages * PAGE,
                attributes: hex(f[4]),
            }
        })
        .collect()
}

/// Parses `name,base,size,code_type,data_type,region_type`.
fn images(csv: &'static str) -> Vec<Image> {
    rows(csv, "name,base,size,code_type,data_type,region_type")
        .map(|f| Image {
            name: f[0],
            base: hex(f[1]),
            size: hex(f[2]),
        })
        .collect()
}

fn is_code(kind: &str) -> bool {
    matches!(
        kind,
        "EfiLoaderCode" | "EfiBootServicesCode" | "EfiRuntimeServicesCode" | "EfiPalCode"
    )
}

fn is_mmio(kind: &str) -> bool {
    matches!(kind, "EfiMemoryMappedIO" | "EfiMemoryMappedIOPortSpace")
}

/// The one cache type firmware would map a descriptor with: the most cached type the
/// region supports for memory, the least cached for MMIO. A Reserved range that only
/// supports UC (q35's PCIe MMCONFIG window) thus becomes Uncached.
fn cache_type(d: &Descriptor) -> A {
    let capable = A::from_bits_truncate(d.attributes).cache();
    let preference: &[A] = if is_mmio(d.kind) {
        &[
            A::Uncached,
            A::UncachedExport,
            A::WriteCombining,
            A::WriteThrough,
            A::Writeback,
        ]
    } else {
        &[
            A::Writeback,
            A::WriteThrough,
            A::WriteCombining,
            A::Uncached,
            A::UncachedExport,
        ]
    };
    preference
        .iter()
        .copied()
        .find(|&c| capable.contains(c))
        .unwrap_or_else(|| panic!("no usable cache type in {d:?}"))
}

/// Cache type plus ExecuteProtect for everything that is not code.
fn map_attributes(d: &Descriptor) -> A {
    let mut attributes = cache_type(d);
    if !is_code(d.kind) {
        attributes |= A::ExecuteProtect;
    }
    attributes
}

/// `WB RO XP`-style short form of attributes.
fn short(a: A) -> String {
    const NAMES: [(A, &str); 9] = [
        (A::Uncached, "UC"),
        (A::WriteCombining, "WC"),
        (A::WriteThrough, "WT"),
        (A::Writeback, "WB"),
        (A::UncachedExport, "UCE"),
        (A::WriteProtect, "WP"),
        (A::ReadOnly, "RO"),
        (A::ExecuteProtect, "XP"),
        (A::ReadProtect, "RP"),
    ];
    let names: Vec<&str> = NAMES.iter().filter(|(f, _)| a.contains(*f)).map(|(_, n)| *n).collect();
    if names.is_empty() {
        "-".into()
    } else {
        names.join(" ")
    }
}

fn size_text(bytes: u64) -> String {
    let (unit, name) = match bytes {
        b if b >= GIB => (GIB, "GiB"),
        b if b >= MIB => (MIB, "MiB"),
        _ => (KIB, "KiB"),
    };
    if bytes % unit == 0 {
        format!("{} {name}", bytes / unit)
    } else {
        format!("{:.2} {name}", bytes as f64 / unit as f64)
    }
}

fn report_text(r: &CommitReport) -> String {
    format!(
        "{} entry stores, {} table pages allocated, {} freed, {} INVLPG, {} full flush(es)",
        r.entries_written, r.tables_allocated, r.tables_freed, r.pages_invalidated, r.full_flushes
    )
}

fn new_table() -> Table {
    X64PageTable::with_mmu(
        PagePool::with_physical_base(POOL_PAGES, POOL_BASE),
        PagingType::Paging4Level,
        X64Config { one_gib_pages: true },
        RecordingMmu::new(),
    )
    .expect("root table")
}

/// Step 1: the whole memory map as one transaction.
fn map_memory_map(table: &mut Table, map: &[Descriptor]) -> CommitReport {
    let mut txn = table.transaction();
    for d in map {
        txn.map(d.start, d.size, map_attributes(d));
    }
    txn.commit().expect("memory map transaction")
}

/// Leaves per level (0 = 4 KiB, 1 = 2 MiB, 2 = 1 GiB) over the lower half of the address space.
fn leaves_per_level(table: &Table) -> [usize; 3] {
    let mut counts = [0; 3];
    table
        .tables()
        .visit_entries(0, 1 << 47, &mut |level, _, raw| {
            if let Entry::Leaf { .. } = X64Codec::decode(raw, level) {
                counts[usize::from(level)] += 1;
            }
        })
        .expect("walk");
    counts
}

/// (level, va) of every entry that points at a table, below the root.
fn table_links(table: &Table) -> Vec<(u8, u64)> {
    let mut links = Vec::new();
    let top = table.tables().geometry().top_level();
    table
        .tables()
        .visit_entries(0, 1 << 47, &mut |level, va, raw| {
            if level < top && matches!(X64Codec::decode(raw, level), Entry::Table(_)) {
                links.push((level, va));
            }
        })
        .expect("walk");
    links
}

fn level_size(level: u8) -> u64 {
    1 << (12 + 9 * u32::from(level))
}

/// Step 2's ops, with a label for each group.
fn protection_batch(mat: &[Descriptor], images: &[Image]) -> (Vec<Op>, Vec<(usize, &'static str)>) {
    let mut ops = Vec::new();
    let mut groups = Vec::new();
    // NULL pointer detection: page 0 becomes non-present.
    ops.push(Op::Protect {
        va: 0,
        size: PAGE,
        attributes: A::ReadProtect,
    });
    groups.push((1, "NULL page -> RP"));
    // The MAT: per-section rights of runtime images (RO code, XP headers and data).
    // Its entries carry no cache bits, so each page keeps the type it was mapped with.
    for d in mat {
        ops.push(Op::Protect {
            va: d.start,
            size: d.size,
            attributes: A::from_bits_truncate(d.attributes).access(),
        });
    }
    groups.push((mat.len(), "MAT ranges -> RO (code) / XP (data)"));
    // PE/COFF headers: read-only, not executable. Queued after the MAT, so for runtime
    // images this later op wins over the MAT's XP on the header page.
    for image in images {
        ops.push(Op::Protect {
            va: image.base,
            size: PAGE,
            attributes: A::ReadOnly | A::ExecuteProtect,
        });
    }
    groups.push((images.len(), "PE header pages -> RO XP"));
    // A protect replaces the access bits: keep XP on the (data) guard page.
    ops.push(Op::Protect {
        va: STACK_GUARD,
        size: PAGE,
        attributes: A::ReadProtect | A::ExecuteProtect,
    });
    groups.push((1, "stack guard page -> RP XP"));
    (ops, groups)
}

fn print_indented(text: &str) {
    for line in text.lines() {
        println!("     {line}");
    }
}

fn print_plan(plan: &Plan) {
    let flush = if plan.full_flush {
        "one full flush (CR3 reload): more than 33 pages change".to_string()
    } else {
        format!("{} INVLPG", plan.pages_to_invalidate.len())
    };
    println!("   plan (dry run):");
    for (what, value) in [
        ("ranges after folding", plan.ranges.len().to_string()),
        ("table pages to allocate", plan.tables_to_allocate.to_string()),
        ("table pages to free", plan.tables_to_free.to_string()),
        ("entry stores", plan.entries_to_write.to_string()),
        ("TLB invalidation", flush),
    ] {
        println!("     {what:<25}{value}");
    }
}

fn main() {
    let map = descriptors(MEMMAP_CSV);
    let mat = descriptors(MAT_CSV);
    let images = images(IMAGES_CSV);

    println!("firmware_map: OVMF (QEMU q35, 4 GiB) -> X64 4-level page table, 1 GiB pages on");
    println!(
        "input: {} memory-map descriptors, {} MAT entries, {} loaded images",
        map.len(),
        mat.len(),
        images.len()
    );
    println!();

    // ---- 1. The memory map, one transaction. -------------------------------------------
    let mut by_attributes: Vec<(A, usize, u64)> = Vec::new();
    for d in &map {
        let a = map_attributes(d);
        match by_attributes.iter_mut().find(|(x, _, _)| *x == a) {
            Some((_, n, bytes)) => {
                *n += 1;
                *bytes += d.size;
            }
            None => by_attributes.push((a, 1, d.size)),
        }
    }
    let pool_end = POOL_BASE + POOL_PAGES as u64 * PAGE;
    assert!(
        map.iter()
            .any(|d| d.kind == "EfiBootServicesData" && d.start <= POOL_BASE && pool_end <= d.start + d.size),
        "the table pool must lie in one EfiBootServicesData descriptor"
    );
    let mut table = new_table();
    let report = map_memory_map(&mut table, &map);
    println!(
        "1. identity map of the memory map: {} map ops, one transaction",
        map.len()
    );
    for (a, n, bytes) in &by_attributes {
        println!("     {:<8} {n:>3} descriptors, {}", short(*a), size_text(*bytes));
    }
    println!("   commit: {}", report_text(&report));
    let [l4k, l2m, l1g] = leaves_per_level(&table);
    println!(
        "   result: {} table pages; leaves: {l1g} x 1 GiB, {l2m} x 2 MiB, {l4k} x 4 KiB; {} mapped regions",
        table.table_pages(),
        table.regions().count()
    );
    for d in &map {
        assert_eq!(
            table.query_memory_region(d.start, d.size),
            Ok(map_attributes(d)),
            "{d:?}"
        );
    }
    assert_eq!(table.translate(0xA_0000), None, "the legacy VGA hole has no descriptor");
    println!("   check: every descriptor queries back as mapped; 0xA0000 (no descriptor) is unmapped");
    // Built, not yet installed: no TLB could hold it, so no INVLPG so far. The firmware now
    // switches to it; from here on every change invalidates what it changed.
    assert_eq!(report.pages_invalidated + report.full_flushes, 0);
    table.install_page_table().expect("install (recorded)");
    table.mmu().take_log();
    println!("   installed: IA32_PAT, EFER.NXE, CR3 (recorded); later changes invalidate");
    println!();

    // ---- 2. The protection batch, one transaction. -----------------------------------
    assert!(
        map.iter()
            .any(|d| d.kind == "EfiBootServicesData" && d.start <= STACK_GUARD && STACK_TOP <= d.start + d.size),
        "the stand-in stack must lie in one EfiBootServicesData descriptor"
    );
    let (ops, groups) = protection_batch(&mat, &images);
    println!("2. protection batch: {} protect ops, one transaction", ops.len());
    for (n, what) in &groups {
        println!("     {n:>3} x {what}");
    }
    println!(
        "     (stand-in stack {:#x}..{:#x}, guard page {STACK_GUARD:#x}: the capture does not locate the DXE stack)",
        STACK_TOP - STACK_SIZE,
        STACK_TOP
    );
    // The policy the batch must obey, checked before any store: no NULL page, no
    // executable MMIO, and the MAT's code sections (the ones it makes RO) stay read-only.
    // (Not W^X: the rest of the memory map stays writable and executable in this demo.)
    let mut policy = Policy::off().with_rules(Rules::NO_NULL_PAGE | Rules::NO_EXECUTABLE_MMIO);
    for d in mat
        .iter()
        .filter(|d| A::from_bits_truncate(d.attributes).contains(A::ReadOnly))
    {
        policy = policy.code(d.start, d.size);
    }
    table.set_policy(policy).expect("policy");
    let memory_map: Vec<MemoryMapEntry> = map.iter().map(|d| (d.start, d.start + d.size, 0)).collect();
    println!("   audit before the batch (policy: no NULL page, no executable MMIO, MAT code read-only):");
    print_indented(&table.audit(&memory_map).to_string());
    let regions_before: Vec<MappedRegion> = table.regions().collect();
    let links_before = table_links(&table);
    let pages_before = table.table_pages();
    let mmu_ops_before = table.mmu().log().len();
    let image_before = table.allocator().image().to_vec();
    let plan = {
        let mut txn = table.transaction();
        for op in &ops {
            txn.push(*op);
        }
        txn.plan().expect("plan")
    };
    print_plan(&plan);
    assert!(
        table.allocator().image() == image_before.as_slice() && table.mmu().log().len() == mmu_ops_before,
        "plan() must not change the table"
    );
    let mut txn = table.transaction();
    for op in &ops {
        txn.push(*op);
    }
    let batch = txn.commit().expect("protection batch");
    println!("   commit: {}", report_text(&batch));
    assert_eq!(
        (plan.tables_to_allocate, plan.tables_to_free, plan.entries_to_write),
        (batch.tables_allocated, batch.tables_freed, batch.entries_written),
        "the commit must do what the plan said"
    );
    assert_eq!(batch.full_flushes, usize::from(plan.full_flush));
    let batch_mmu_ops = table.mmu().log().len() - mmu_ops_before;
    println!(
        "   result: {} table pages (was {pages_before}), {} mapped regions (was {}), {} pool pages live",
        table.table_pages(),
        table.regions().count(),
        regions_before.len(),
        table.allocator().live_pages()
    );
    let links_after = table_links(&table);
    for &(level, va) in links_after.iter().filter(|l| !links_before.contains(l)) {
        println!(
            "   split:  the {} leaf at {va:#x} became a table (same translations, then changed)",
            size_text(level_size(level))
        );
    }
    for &(level, va) in links_before.iter().filter(|l| !links_after.contains(l)) {
        let (_, attributes) = table.translate(va).expect("merged range is mapped");
        println!(
            "   merge:  the table under {va:#x}..{:#x} became one {} leaf ({}): every page now has the same attributes",
            va + level_size(level),
            size_text(level_size(level)),
            short(attributes)
        );
    }
    println!(
        "   check: plan() changed no table byte; commit did what the plan said; the MMU saw {batch_mmu_ops} TLB operation(s)"
    );

    println!("   audit after the batch:");
    let audit = table.audit(&memory_map);
    print_indented(&audit.to_string());
    assert!(audit.null_page.is_empty() && audit.writable_code.is_empty(), "{audit}");

    // Spot checks of the result.
    let runtime = images
        .iter()
        .find(|i| i.name == SHOWCASE_IMAGE)
        .expect("showcase image");
    assert_eq!(table.query_memory_region(0, PAGE), Ok(A::Writeback | A::ReadProtect));
    assert_eq!(
        table.query_memory_region(STACK_GUARD, PAGE),
        Ok(A::Writeback | A::ReadProtect | A::ExecuteProtect)
    );
    assert_eq!(
        table.query_memory_region(runtime.base, PAGE),
        Ok(A::Writeback | A::ReadOnly | A::ExecuteProtect)
    );
    println!();

    // ---- 3. The same batch as one-op calls, on an identical table. -------------------
    let mut replay = new_table();
    map_memory_map(&mut replay, &map);
    replay.install_page_table().expect("install (recorded)");
    replay.mmu().take_log();
    let mut one_op = CommitReport::default();
    for op in &ops {
        let report = replay.transaction().push(*op).commit().expect("one-op protect");
        one_op.accumulate(&report);
    }
    let (invlpg, reloads) = (replay.mmu().page_invalidations(), replay.mmu().full_invalidations());
    let identical = replay.regions().eq(table.regions());
    assert!(identical, "one-op replay must end in the same mapping");
    assert_eq!(replay.table_pages(), table.table_pages());
    println!("3. cost of the batch: one transaction vs {} one-op calls", ops.len());
    println!("     {:<28}{:>16}{:>16}", "", "1 transaction", "one-op calls");
    let rows = [
        ("commits", 1, ops.len()),
        ("entry stores", batch.entries_written, one_op.entries_written),
        ("table pages allocated", batch.tables_allocated, one_op.tables_allocated),
        ("table pages freed", batch.tables_freed, one_op.tables_freed),
        ("INVLPG", batch.pages_invalidated, invlpg),
        ("full flushes (CR3 reload)", batch.full_flushes, reloads),
    ];
    for (what, batched, single) in rows {
        println!("     {what:<28}{batched:>16}{single:>16}");
    }
    println!(
        "   check: both end with the same {} mapped regions in {} table pages",
        table.regions().count(),
        table.table_pages()
    );
    println!();

    // ---- 4. A failing batch. -----------------------------------------------------------
    let image_before = table.allocator().image().to_vec();
    let live_before = table.allocator().live_pages();
    let failed = table
        .transaction()
        .protect(0, PAGE, A::Writeback) // would make the NULL page readable again
        .map_aliased(0xFFFF_8000_0000_0000, 0, 2 * MIB, A::Writeback) // needs new tables
        .protect(0xA_0000, PAGE, A::ReadOnly) // the VGA hole: no descriptor, never mapped
        .commit();
    let error = failed.expect_err("protecting an unmapped page must fail");
    assert_eq!((error.op, error.error), (Some(2), txpaging::PtError::NoMapping));
    assert!(table.allocator().image() == image_before.as_slice());
    assert_eq!(table.allocator().live_pages(), live_before);
    println!("4. a failing batch of 3 ops:");
    println!("     op 0: protect the NULL page back to WB (readable)");
    println!("     op 1: map 2 MiB at 0xffff800000000000 -> PA 0 (would need new tables)");
    println!("     op 2: protect 0xa0000 ReadOnly (no descriptor: never mapped)");
    println!("   commit: Err({error})");
    println!("   the error's value: {error:?}");
    println!(
        "   check: no table byte changed, {live_before} pool pages live before and after, NULL page still {}",
        short(table.query_memory_region(0, PAGE).expect("page 0"))
    );
    println!();

    // ---- 5. Dumps. ----------------------------------------------------------------------
    println!(
        "5. {SHOWCASE_IMAGE} at {:#x} ({:#x} bytes), page by page:",
        runtime.base, runtime.size
    );
    let image_end = runtime.base + runtime.size.div_ceil(PAGE) * PAGE;
    for region in table
        .regions()
        .filter(|r| r.va < image_end && r.va + r.size > runtime.base)
    {
        let from = region.va.max(runtime.base);
        let to = (region.va + region.size).min(image_end);
        let mat_kind = mat
            .iter()
            .find(|d| d.start <= from && from < d.start + d.size)
            .map_or("-", |d| {
                if A::from_bits_truncate(d.attributes).contains(A::ReadOnly) {
                    "MAT RO"
                } else {
                    "MAT XP"
                }
            });
        println!(
            "     {from:#010x}..{to:#010x}  {:>2} page(s)  {:<9} ({mat_kind}{})",
            (to - from) / PAGE,
            short(region.attributes),
            if from == runtime.base { ", PE header" } else { "" }
        );
    }
    println!();
    let mut dump = String::new();
    dump.push_str("dump of the first 32 KiB. Page 0 is the NULL page: P = 0 and AVL bit 9 set (ReadProtect).\n");
    dump.push_str("In PT rows bit 7 is PAT, so PAT|PCD|PWT = 100: Writeback (PAT index 4).\n");
    table.dump_to(&mut dump, 0, 32 * KIB).expect("dump");
    writeln!(dump).unwrap();
    writeln!(dump, "dump of {SHOWCASE_IMAGE}:").unwrap();
    table
        .dump_to(&mut dump, runtime.base, image_end - runtime.base)
        .expect("dump");
    print!("{dump}");
    println!();

    // ---- Summary. ---------------------------------------------------------------------
    let mapped: u64 = table.regions().map(|r| r.size).sum();
    println!("summary:");
    println!(
        "  {} identity-mapped in {} table pages ({} KiB of tables), {} mapped regions",
        size_text(mapped),
        table.table_pages(),
        table.table_pages() as u64 * PAGE / KIB,
        table.regions().count()
    );
    println!(
        "  {} protect ops: 1 transaction = {} INVLPG + {} CR3 reload; one op at a time = {invlpg} INVLPG + {reloads} CR3 reloads",
        ops.len(),
        batch.pages_invalidated,
        batch.full_flushes
    );
}
