//! Transaction semantics, one rule per test.

use txpaging::x64::encoding::{ADDRESS_4K, P, PS};
use txpaging::{
    CommitReport, MappedRegion, MemoryAttributes as MA, MmuOp, Op, PageAllocator, PagePool, PageTable, PagingType,
    PtError, RecordingMmu, TxnError, X64Config, X64PageTable,
};

type Table = X64PageTable<PagePool, RecordingMmu>;

const KIB4: u64 = 0x1000;
const MIB2: u64 = 0x20_0000;
const GIB: u64 = 0x4000_0000;
const HIGH4: u64 = 0xFFFF_8000_0000_0000;
const HIGH5: u64 = 0xFF00_0000_0000_0000;

const CACHES: [MA; 7] = [
    MA::empty(),
    MA::Uncached,
    MA::WriteCombining,
    MA::WriteThrough,
    MA::Writeback,
    MA::UncachedExport,
    MA::WriteProtect,
];

/// An installed table: a CPU may cache its translations, so commits invalidate (a table
/// never installed gets no INVLPG; see `a_table_never_installed_gets_no_invalidation`).
fn table_with(paging: PagingType, one_gib_pages: bool, pages: usize) -> Table {
    let t = X64PageTable::with_mmu(
        PagePool::new(pages),
        paging,
        X64Config { one_gib_pages },
        RecordingMmu::new(),
    )
    .unwrap();
    t.install_page_table().unwrap();
    t.mmu().take_log();
    t
}

fn table() -> Table {
    table_with(PagingType::Paging4Level, true, 256)
}

fn levels(paging: PagingType) -> u8 {
    match paging {
        PagingType::Paging4Level => 4,
        PagingType::Paging5Level => 5,
        PagingType::Paging3Level => unreachable!("X64 has no 3-level paging"),
    }
}

/// The raw entry at `level` on the walk of `va`; the tables above it must exist.
fn entry_at<A: PageAllocator>(t: &X64PageTable<A, RecordingMmu>, va: u64, level: u8) -> u64 {
    let mut table = t.root();
    for l in (level..levels(t.paging_type())).rev() {
        let raw = t
            .tables()
            .read_entry(table, ((va >> (12 + 9 * u32::from(l))) & 511) as usize);
        if l == level {
            return raw;
        }
        assert!(raw & P != 0 && raw & PS == 0, "no table at level {l} for {va:#x}");
        table = raw & ADDRESS_4K;
    }
    unreachable!()
}

fn is_large_leaf(raw: u64) -> bool {
    raw & P != 0 && raw & PS != 0
}

/// Bytes of every live pool page.
fn image(t: &Table) -> Vec<(u64, Vec<u8>)> {
    let pool = t.allocator();
    pool.live().map(|pa| (pa, pool.page(pa).unwrap().to_vec())).collect()
}

fn ops_commit(t: &mut Table, ops: &[Op]) -> Result<CommitReport, TxnError> {
    let mut txn = t.transaction();
    for op in ops {
        txn.push(*op);
    }
    txn.commit()
}

fn map(va: u64, size: u64, attributes: MA) -> Op {
    Op::Map {
        va,
        pa: va,
        size,
        attributes,
    }
}

fn alias(va: u64, pa: u64, size: u64, attributes: MA) -> Op {
    Op::Map {
        va,
        pa,
        size,
        attributes,
    }
}

fn unmap(va: u64, size: u64) -> Op {
    Op::Unmap { va, size }
}

fn protect(va: u64, size: u64, attributes: MA) -> Op {
    Op::Protect { va, size, attributes }
}

fn pages(va: u64, size: u64) -> impl DoubleEndedIterator<Item = u64> {
    (0..size / KIB4).map(move |i| va + i * KIB4)
}

#[test]
fn split_keeps_untouched_pages_mapped_with_old_attributes() {
    let mut t = table();
    let old = MA::Writeback | MA::ExecuteProtect;
    t.map_memory_region(GIB, GIB, old).unwrap();
    t.map_memory_region(0x20_0000, MIB2, old).unwrap();
    t.protect_memory_region(0x20_5000, KIB4, MA::ReadOnly).unwrap();
    t.protect_memory_region(GIB + 0x1234_5000, KIB4, MA::ReadProtect)
        .unwrap();
    for va in pages(0x20_0000, MIB2).chain(pages(GIB, GIB).step_by(7)) {
        if va == 0x20_5000 || va == GIB + 0x1234_5000 {
            continue;
        }
        assert_eq!(t.translate(va + 0x10), Some((va + 0x10, old)), "va {va:#x}");
    }
    assert_eq!(t.translate(0x20_5000), Some((0x20_5000, MA::ReadOnly | MA::Writeback)));
    assert_eq!(
        t.query_memory_region(GIB + 0x1234_5000, KIB4),
        Ok(MA::ReadProtect | MA::Writeback)
    );
    assert_eq!(t.query_memory_region(GIB, 0x1234_5000), Ok(old));
    assert_eq!(t.query_memory_region(GIB + 0x1234_6000, GIB - 0x1234_6000), Ok(old));
}

#[test]
fn split_table_is_linked_with_identical_translations() {
    // A real split (one page changes): one new table, and only the changed page is invalidated;
    // the other 511 (or 262143) translations are the same before and after the link.
    let mut t = table();
    t.map_memory_region(0x20_0000, MIB2, MA::Writeback).unwrap();
    t.map_memory_region(GIB, GIB, MA::Writeback).unwrap();
    t.mmu().take_log();
    let report = ops_commit(&mut t, &[protect(0x20_1000, KIB4, MA::ReadOnly)]).unwrap();
    assert_eq!(report.tables_allocated, 1);
    assert_eq!(t.mmu().take_log(), vec![MmuOp::InvalidatePage(0x20_1000)]);
    let report = ops_commit(&mut t, &[protect(GIB + 0x30_1000, KIB4, MA::ExecuteProtect)]).unwrap();
    assert_eq!(report.tables_allocated, 2);
    assert_eq!(t.mmu().take_log(), vec![MmuOp::InvalidatePage(GIB + 0x30_1000)]);
    for va in pages(0x20_0000, MIB2).filter(|&va| va != 0x20_1000) {
        assert_eq!(t.translate(va), Some((va, MA::Writeback)));
    }
}

#[test]
fn split_with_no_attribute_change_invalidates_and_allocates_nothing() {
    let mut t = table();
    t.map_memory_region(0x20_0000, MIB2, MA::Writeback | MA::ReadOnly)
        .unwrap();
    t.map_memory_region(GIB, GIB, MA::Uncached).unwrap();
    t.map_memory_region(0x40_0000, 0x3000, MA::empty()).unwrap();
    t.mmu().take_log();
    let before = image(&t);
    let live = t.allocator().live_pages();
    for ops in [
        vec![protect(0x20_1000, KIB4, MA::ReadOnly)],
        vec![protect(0x20_1000, 0x3000, MA::ReadOnly | MA::Writeback)],
        vec![protect(GIB + 0x5000, KIB4, MA::empty())],
        vec![protect(GIB + MIB2, MIB2, MA::Uncached)],
        vec![map(0x20_3000, KIB4, MA::Writeback | MA::ReadOnly)],
        vec![map(GIB + 0x7000, 0x2000, MA::Uncached)],
        vec![protect(0x40_1000, KIB4, MA::empty()), map(0x40_2000, KIB4, MA::empty())],
    ] {
        let report = ops_commit(&mut t, &ops).unwrap();
        assert_eq!(report, CommitReport::default(), "{ops:x?}");
        assert_eq!(t.mmu().log(), vec![], "{ops:x?}");
        assert_eq!(t.allocator().live_pages(), live);
        assert!(image(&t) == before, "{ops:x?} changed the table");
    }
}

#[test]
fn merge_frees_the_table() {
    let mut t = table();
    t.map_memory_region(0x20_0000, MIB2, MA::Writeback).unwrap();
    let minimum = t.table_pages();
    assert_eq!(minimum, 3);
    t.protect_memory_region(0x20_1000, KIB4, MA::ReadOnly).unwrap();
    assert_eq!(t.table_pages(), 4);
    assert_eq!(t.allocator().live_pages(), 4);
    let report = ops_commit(&mut t, &[protect(0x20_1000, KIB4, MA::empty())]).unwrap();
    assert_eq!(report.tables_freed, 1);
    assert_eq!(t.table_pages(), minimum);
    assert_eq!(t.allocator().live_pages(), minimum);
    assert!(is_large_leaf(entry_at(&t, 0x20_0000, 1)));
    assert_eq!(t.query_memory_region(0x20_0000, MIB2), Ok(MA::Writeback));
}

#[test]
fn identity_map_4k_by_4k_of_a_full_2mib_region_ends_as_one_2mib_leaf() {
    let mut t = table();
    for (i, va) in pages(0x20_0000, MIB2).enumerate() {
        t.map_memory_region(va, KIB4, MA::Writeback).unwrap();
        let expected = if i < 511 { 4 } else { 3 };
        assert_eq!(t.table_pages(), expected, "after page {i}");
    }
    assert!(is_large_leaf(entry_at(&t, 0x20_0000, 1)));
    assert_eq!(t.allocator().live_pages(), 3);
    // The same, top down, with a different memory type.
    for va in pages(0x40_0000, MIB2).rev() {
        t.map_memory_region(va, KIB4, MA::Uncached | MA::ExecuteProtect)
            .unwrap();
    }
    assert!(is_large_leaf(entry_at(&t, 0x40_0000, 1)));
    assert_eq!(t.allocator().live_pages(), 3);
    assert_eq!(
        t.regions().collect::<Vec<_>>(),
        vec![
            MappedRegion {
                va: 0x20_0000,
                pa: 0x20_0000,
                size: MIB2,
                attributes: MA::Writeback,
            },
            MappedRegion {
                va: 0x40_0000,
                pa: 0x40_0000,
                size: MIB2,
                attributes: MA::Uncached | MA::ExecuteProtect,
            },
        ]
    );
}

#[test]
fn identity_map_2mib_by_2mib_of_a_full_1gib_region_ends_as_one_1gib_leaf() {
    let mut t = table();
    for va in (0..512).map(|i| GIB + i * MIB2) {
        t.map_memory_region(va, MIB2, MA::Writeback).unwrap();
    }
    assert_eq!(t.table_pages(), 2);
    assert_eq!(t.allocator().live_pages(), 2);
    assert!(is_large_leaf(entry_at(&t, GIB, 2)));
}

#[test]
fn one_gib_leaves_only_when_one_gib_pages() {
    for one_gib in [true, false] {
        let mut t = table_with(PagingType::Paging4Level, one_gib, 64);
        t.map_memory_region(GIB, GIB, MA::Writeback).unwrap();
        t.map_aliased_memory_region(3 * GIB, 5 * GIB, GIB, MA::Uncached)
            .unwrap();
        assert_eq!(is_large_leaf(entry_at(&t, GIB, 2)), one_gib);
        assert_eq!(is_large_leaf(entry_at(&t, 3 * GIB, 2)), one_gib);
        assert_eq!(t.table_pages(), if one_gib { 2 } else { 4 });
        if !one_gib {
            for va in (0..512).map(|i| GIB + i * MIB2) {
                assert!(is_large_leaf(entry_at(&t, va, 1)));
            }
        }
        assert_eq!(
            t.translate(3 * GIB + 0x1234_5678),
            Some((5 * GIB + 0x1234_5678, MA::Uncached))
        );
    }
    // Not even through merges.
    let mut t = table_with(PagingType::Paging4Level, false, 64);
    for va in (0..512).map(|i| GIB + i * MIB2) {
        t.map_memory_region(va, MIB2, MA::Writeback).unwrap();
    }
    assert!(!is_large_leaf(entry_at(&t, GIB, 2)));
    assert_eq!(t.table_pages(), 3);
}

#[test]
fn later_ops_win_where_they_overlap() {
    let mut t = table();
    ops_commit(
        &mut t,
        &[
            map(0, 0x40_0000, MA::Writeback),
            alias(0x10_0000, 0x900_0000, 0x10_0000, MA::Uncached),
            protect(0x18_0000, 0x2000, MA::ReadOnly),
            map(0x18_1000, KIB4, MA::WriteCombining),
            map(0x20_0000, MIB2, MA::WriteProtect),
            unmap(0x20_0000, KIB4),
            unmap(0x30_0000, 0x10_0000),
            map(0x38_0000, KIB4, MA::WriteThrough),
            protect(0, KIB4, MA::ExecuteProtect),
        ],
    )
    .unwrap();
    let expect = |va: u64| -> Option<(u64, MA)> {
        match va {
            0 => Some((0, MA::Writeback | MA::ExecuteProtect)),
            0x18_0000 => Some((0x908_0000, MA::Uncached | MA::ReadOnly)),
            0x18_1000 => Some((0x18_1000, MA::WriteCombining)),
            0x10_0000..0x20_0000 => Some((0x900_0000 + va - 0x10_0000, MA::Uncached)),
            0x20_0000 => None,
            0x38_0000 => Some((0x38_0000, MA::WriteThrough)),
            0x30_0000..0x40_0000 => None,
            0x20_1000..0x30_0000 => Some((va, MA::WriteProtect)),
            _ if va < 0x10_0000 => Some((va, MA::Writeback)),
            _ => None,
        }
    };
    for va in pages(0, 0x50_0000) {
        assert_eq!(t.translate(va), expect(va), "va {va:#x}");
    }
    // Map then unmap in one transaction leaves nothing behind.
    let tables = t.table_pages();
    let report = ops_commit(&mut t, &[map(GIB, 0x5000, MA::Writeback), unmap(GIB, 0x5000)]).unwrap();
    assert_eq!(report, CommitReport::default());
    assert_eq!(t.query_memory_region(GIB, 0x5000), Err(PtError::NoMapping));
    assert_eq!(t.table_pages(), tables);
    // Unmap then map: the map wins.
    ops_commit(&mut t, &[unmap(0x38_0000, KIB4), map(0x38_0000, KIB4, MA::Uncached)]).unwrap();
    assert_eq!(t.translate(0x38_0000), Some((0x38_0000, MA::Uncached)));
}

#[test]
fn protect_without_cache_bits_keeps_each_pages_cache_type() {
    let mut t = table();
    for (i, cache) in CACHES.iter().enumerate() {
        t.map_memory_region(i as u64 * KIB4, KIB4, *cache).unwrap();
        t.map_memory_region(GIB + i as u64 * MIB2, MIB2, *cache).unwrap();
    }
    let n = CACHES.len() as u64;
    for change in [MA::ReadOnly | MA::ExecuteProtect, MA::ReadProtect, MA::empty()] {
        ops_commit(&mut t, &[protect(0, n * KIB4, change), protect(GIB, n * MIB2, change)]).unwrap();
        for (i, cache) in CACHES.iter().enumerate() {
            let want = Ok(*cache | change);
            assert_eq!(t.query_memory_region(i as u64 * KIB4, KIB4), want);
            assert_eq!(t.query_memory_region(GIB + i as u64 * MIB2, MIB2), want);
        }
    }
}

#[test]
fn protect_with_a_cache_bit_replaces_it() {
    let mut t = table();
    for (i, cache) in CACHES.iter().enumerate() {
        t.map_memory_region(i as u64 * KIB4, KIB4, *cache | MA::ReadOnly)
            .unwrap();
    }
    let size = CACHES.len() as u64 * KIB4;
    for cache in CACHES.iter().skip(1) {
        t.protect_memory_region(0, size, *cache | MA::ExecuteProtect).unwrap();
        assert_eq!(t.query_memory_region(0, size), Ok(*cache | MA::ExecuteProtect));
    }
    // And a protect without one keeps the replaced type.
    t.protect_memory_region(0, size, MA::ReadOnly).unwrap();
    assert_eq!(t.query_memory_region(0, size), Ok(MA::WriteProtect | MA::ReadOnly));
}

#[test]
fn query_returns_exactly_what_was_mapped_for_each_cache_attribute_and_none() {
    for paging in [PagingType::Paging4Level, PagingType::Paging5Level] {
        let mut t = table_with(paging, true, 256);
        let mut va = 0;
        for cache in CACHES {
            for access in 0..8u64 {
                let mut attributes = cache;
                attributes.set(MA::ReadOnly, access & 1 != 0);
                attributes.set(MA::ExecuteProtect, access & 2 != 0);
                attributes.set(MA::ReadProtect, access & 4 != 0);
                t.map_memory_region(va, 3 * KIB4, attributes).unwrap();
                t.map_memory_region(va + MIB2, MIB2, attributes).unwrap();
                t.map_memory_region(va + GIB, GIB, attributes).unwrap();
                assert_eq!(t.query_memory_region(va, 3 * KIB4), Ok(attributes));
                assert_eq!(t.query_memory_region(va + KIB4, KIB4), Ok(attributes));
                assert_eq!(t.query_memory_region(va + MIB2, MIB2), Ok(attributes));
                assert_eq!(t.query_memory_region(va + GIB + MIB2, KIB4), Ok(attributes));
                assert_eq!(t.query_memory_region(va + GIB, GIB), Ok(attributes));
                assert_eq!(t.translate(va + GIB + 0x77), Some((va + GIB + 0x77, attributes)));
                va += 2 * GIB;
            }
        }
        t.map_memory_region(va, KIB4, MA::empty()).unwrap();
        assert_eq!(
            t.query_memory_region(va, KIB4),
            Ok(MA::empty()),
            "none reads back as none"
        );
        t.map_memory_region(va, KIB4, MA::Writeback).unwrap();
        assert_eq!(
            t.query_memory_region(va, KIB4),
            Ok(MA::Writeback),
            "Writeback reads back as Writeback"
        );
    }
}

/// Plans `ops`, checks the plan changed nothing, commits, and checks the plan predicted the
/// report and the invalidation log exactly.
fn plan_then_commit(t: &mut Table, ops: &[Op]) -> CommitReport {
    t.mmu().take_log();
    let before = image(t);
    let live = t.allocator().live_pages();
    let plan = {
        let mut txn = t.transaction();
        for op in ops {
            txn.push(*op);
        }
        let plan = txn.plan().unwrap();
        assert_eq!(txn.plan().unwrap(), plan, "plan is repeatable");
        plan
    };
    assert!(image(t) == before, "plan changed the table");
    assert_eq!(t.allocator().live_pages(), live, "plan allocated");
    assert_eq!(t.mmu().log(), vec![], "plan invalidated");
    let report = ops_commit(t, ops).unwrap();
    let what = format!("{ops:x?}\nplan {plan:x?}\nreport {report:?}");
    assert_eq!(report.entries_written, plan.entries_to_write, "{what}");
    assert_eq!(report.tables_allocated, plan.tables_to_allocate, "{what}");
    assert_eq!(report.tables_freed, plan.tables_to_free, "{what}");
    assert_eq!(report.pages_invalidated, plan.pages_to_invalidate.len(), "{what}");
    assert_eq!(report.full_flushes, usize::from(plan.full_flush), "{what}");
    let log = t.mmu().take_log();
    if plan.full_flush {
        assert_eq!(log, vec![MmuOp::InvalidateAll], "{what}");
    } else {
        let want: Vec<_> = plan
            .pages_to_invalidate
            .iter()
            .map(|&va| MmuOp::InvalidatePage(va))
            .collect();
        assert_eq!(log, want, "{what}");
    }
    assert_eq!(
        t.allocator().live_pages(),
        live + report.tables_allocated - report.tables_freed,
        "{what}"
    );
    assert_eq!(t.allocator().live_pages(), t.table_pages(), "{what}");
    report
}

#[test]
fn plan_changes_nothing_and_predicts_the_commit_report() {
    for paging in [PagingType::Paging4Level, PagingType::Paging5Level] {
        let high = if paging == PagingType::Paging4Level {
            HIGH4
        } else {
            HIGH5
        };
        let mut t = table_with(paging, true, 1024);
        let r = plan_then_commit(&mut t, &[map(0, 4 * GIB, MA::Writeback)]);
        assert!(r.tables_allocated > 0 && r.pages_invalidated == 0);
        let scattered: Vec<Op> = (0..33)
            .map(|i| protect(i * 3 * MIB2 + 0x5000, KIB4, MA::ReadOnly))
            .collect();
        let r = plan_then_commit(&mut t, &scattered);
        assert_eq!((r.pages_invalidated, r.full_flushes), (33, 0));
        let scattered: Vec<Op> = (0..34).map(|i| protect(GIB + i * MIB2, KIB4, MA::ReadOnly)).collect();
        let r = plan_then_commit(&mut t, &scattered);
        assert_eq!((r.pages_invalidated, r.full_flushes), (0, 1));
        plan_then_commit(
            &mut t,
            &[
                alias(high, 0x1000_0000, 3 * MIB2 + KIB4, MA::Uncached),
                unmap(2 * GIB + 0x3000, 0x30_0000),
                protect(0x10_0000, 0x40_0000, MA::ExecuteProtect | MA::WriteThrough),
                map(3 * GIB - KIB4, 2 * KIB4, MA::WriteCombining),
            ],
        );
        let r = plan_then_commit(&mut t, &[protect(0, KIB4, MA::Writeback)]);
        assert_eq!(r, CommitReport::default());
        // Merges back: the 34 split 2 MiB pages and the 33 scattered ones.
        let r = plan_then_commit(&mut t, &[protect(0, 2 * GIB, MA::Writeback)]);
        assert!(r.tables_freed > 0);
        // Now two 1 GiB leaves: unmapping them frees nothing and invalidates two pages.
        let r = plan_then_commit(&mut t, &[unmap(0, 2 * GIB)]);
        assert_eq!((r.tables_freed, r.pages_invalidated), (0, 2));
        let r = plan_then_commit(
            &mut t,
            &[
                unmap(high, 3 * MIB2 + KIB4),
                unmap(2 * GIB, 0x3000),
                unmap(2 * GIB + 0x30_3000, GIB - 0x30_3000 + KIB4),
            ],
        );
        assert!(r.tables_freed > 0);
    }
}

/// A table with 80 write-back 4 KiB pages at `base` (one page table), log cleared.
fn eighty_pages(paging: PagingType, base: u64) -> Table {
    let mut t = table_with(paging, true, 64);
    t.map_aliased_memory_region(base, 0x1000_0000, 80 * KIB4, MA::Writeback)
        .unwrap();
    t.mmu().take_log();
    t
}

#[test]
fn commit_changing_at_most_33_live_pages_issues_exactly_those_invlpgs() {
    for (paging, base) in [
        (PagingType::Paging4Level, 0x1000),
        (PagingType::Paging4Level, HIGH4 + 0x1000),
        (PagingType::Paging5Level, HIGH5 + 0x1000),
    ] {
        // 33 separate ops, every other page.
        let mut t = eighty_pages(paging, base);
        let vas: Vec<u64> = (0..33).map(|i| base + 2 * i * KIB4).collect();
        let ops: Vec<Op> = vas.iter().map(|&va| protect(va, KIB4, MA::ReadOnly)).collect();
        let report = ops_commit(&mut t, &ops).unwrap();
        assert_eq!((report.pages_invalidated, report.full_flushes), (33, 0));
        let want: Vec<MmuOp> = vas.iter().map(|&va| MmuOp::InvalidatePage(va)).collect();
        let mut log = t.mmu().take_log();
        log.sort_by_key(|op| match op {
            MmuOp::InvalidatePage(va) => *va,
            _ => 0,
        });
        assert_eq!(log, want);
        // One op over 33 contiguous pages, with unmapped/non-present neighbours untouched.
        let report = ops_commit(&mut t, &[unmap(base + 10 * KIB4, 33 * KIB4)]).unwrap();
        assert_eq!((report.pages_invalidated, report.full_flushes), (33, 0));
        let mut log = t.mmu().take_log();
        log.sort_by_key(|op| match op {
            MmuOp::InvalidatePage(va) => *va,
            _ => 0,
        });
        assert_eq!(
            log,
            pages(base + 10 * KIB4, 33 * KIB4)
                .map(MmuOp::InvalidatePage)
                .collect::<Vec<_>>()
        );
    }
}

#[test]
fn commit_changing_more_than_33_live_pages_issues_one_full_flush() {
    let mut t = eighty_pages(PagingType::Paging4Level, 0x1000);
    let ops: Vec<Op> = (0..34)
        .map(|i| protect(0x1000 + 2 * i * KIB4, KIB4, MA::ReadOnly))
        .collect();
    let report = ops_commit(&mut t, &ops).unwrap();
    assert_eq!((report.pages_invalidated, report.full_flushes), (0, 1));
    assert_eq!(t.mmu().take_log(), vec![MmuOp::InvalidateAll]);
    // 34 changed 2 MiB leaves.
    let mut t = table();
    t.map_memory_region(GIB, 40 * MIB2, MA::Writeback).unwrap();
    t.mmu().take_log();
    let report = ops_commit(&mut t, &[protect(GIB + 3 * MIB2, 34 * MIB2, MA::ExecuteProtect)]).unwrap();
    assert_eq!((report.pages_invalidated, report.full_flushes), (0, 1));
    assert_eq!(t.mmu().take_log(), vec![MmuOp::InvalidateAll]);
    // Exactly 33 changed 2 MiB leaves: no full flush.
    let report = ops_commit(&mut t, &[protect(GIB + 3 * MIB2, 33 * MIB2, MA::empty())]).unwrap();
    assert_eq!((report.pages_invalidated, report.full_flushes), (33, 0));
    assert_eq!(t.mmu().take_log().len(), 33);
}

#[test]
fn invalid_to_valid_maps_issue_no_invalidation() {
    for paging in [PagingType::Paging4Level, PagingType::Paging5Level] {
        let high = if paging == PagingType::Paging4Level {
            HIGH4
        } else {
            HIGH5
        };
        let mut t = table_with(paging, true, 256);
        let ops = [
            map(0x5000, 0x3000, MA::Writeback),
            map(0x20_0000, MIB2, MA::Uncached),
            map(GIB, GIB, MA::Writeback),
            alias(high, 0, GIB + 0x5000, MA::Writeback),
            alias(0x7000_0000_0000, 0x1234_5000, 0x30_0000, MA::ReadOnly),
        ];
        for op in ops {
            let report = ops_commit(&mut t, &[op]).unwrap();
            assert_eq!((report.pages_invalidated, report.full_flushes), (0, 0), "{op:x?}");
        }
        // Next to live mappings, into holes, over non-present (ReadProtect) pages.
        t.map_memory_region(0x9000, KIB4, MA::ReadProtect).unwrap();
        let report = ops_commit(
            &mut t,
            &[
                map(0x8000, KIB4, MA::Writeback),
                map(0x9000, KIB4, MA::Writeback),
                map(0x40_0000, KIB4, MA::Uncached),
                alias(high + GIB + 0x5000, 0x5000, KIB4, MA::Writeback),
            ],
        )
        .unwrap();
        assert_eq!((report.pages_invalidated, report.full_flushes), (0, 0));
        assert_eq!(t.mmu().log(), vec![]);
    }
}

#[test]
fn a_table_never_installed_gets_no_invalidation() {
    // As on AArch64: no TLB holds a table no CPU has loaded, and installing it loads CR3.
    let mut t = X64PageTable::with_mmu(
        PagePool::new(64),
        PagingType::Paging4Level,
        X64Config { one_gib_pages: true },
        RecordingMmu::new(),
    )
    .unwrap();
    t.map_memory_region(0, 4 * MIB2, MA::Writeback).unwrap();
    let report = t
        .transaction()
        .protect(0x5000, KIB4, MA::ReadOnly)
        .unmap(MIB2, MIB2)
        .map(0x1000, KIB4, MA::Uncached)
        .commit()
        .unwrap();
    assert_eq!(
        (
            report.pages_invalidated,
            report.full_flushes,
            report.invalidation_batches
        ),
        (0, 0, 0)
    );
    t.unmap_memory_region(0, MIB2).unwrap();
    assert_eq!(t.mmu().log(), vec![], "no INVLPG and no CR3 reload before the install");
    // Installed: the same kind of change invalidates.
    t.map_memory_region(0, 2 * MIB2, MA::Writeback).unwrap();
    t.install_page_table().unwrap();
    t.mmu().take_log();
    t.protect_memory_region(0x5000, KIB4, MA::ReadOnly).unwrap();
    assert_eq!(t.mmu().log(), vec![MmuOp::InvalidatePage(0x5000)]);
}

#[test]
fn one_commit_is_one_invalidation_batch() {
    let mut t = table();
    t.map_memory_region(0, 4 * GIB, MA::Writeback).unwrap();
    t.protect_memory_region(0x5000, KIB4, MA::ReadOnly).unwrap();
    t.mmu().take_log();
    let mut txn = t.transaction();
    txn.protect(0x7000, 0x2000, MA::ReadOnly)
        .unmap(GIB + 0x4000, KIB4)
        .map(2 * GIB, MIB2, MA::Uncached)
        .protect(3 * GIB, KIB4, MA::ExecuteProtect)
        .unmap(0x5000, KIB4);
    let plan = txn.plan().unwrap();
    let report = txn.commit().unwrap();
    assert!(txn.ops().is_empty(), "the queue is emptied by commit");
    // The same transaction object carries the next batch.
    let second = txn.protect(0x10_0000, KIB4, MA::ReadOnly).commit().unwrap();
    let log = t.mmu().take_log();
    assert_eq!(report.full_flushes, 0);
    assert_eq!(log.len(), report.pages_invalidated + second.pages_invalidated);
    let (first_batch, second_batch) = log.split_at(report.pages_invalidated);
    let want: Vec<_> = plan
        .pages_to_invalidate
        .iter()
        .map(|&va| MmuOp::InvalidatePage(va))
        .collect();
    assert_eq!(first_batch, want.as_slice());
    assert_eq!(second_batch, &[MmuOp::InvalidatePage(0x10_0000)]);
    let mut distinct = plan.pages_to_invalidate.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), report.pages_invalidated, "each page once");
    for va in [0x7000, 0x8000, GIB + 0x4000, 2 * GIB, 3 * GIB, 0x5000] {
        assert!(plan.pages_to_invalidate.contains(&va), "{va:#x} not invalidated");
    }
}

#[test]
fn aliased_maps_translate_correctly() {
    let mut t = table();
    let (va, pa, size) = (0x4000_0000_0000 + KIB4, 0x1234_5000, 0x30_0000);
    t.map_aliased_memory_region(va, pa, size, MA::Writeback | MA::ReadOnly)
        .unwrap();
    for (i, page) in pages(va, size).enumerate() {
        let offset = i as u64 * KIB4 + (i as u64 * 0x37) % KIB4;
        assert_eq!(
            t.translate(va + offset),
            Some((pa + offset, MA::Writeback | MA::ReadOnly)),
            "page {page:#x}"
        );
    }
    assert_eq!(t.translate(va - 1), None);
    assert_eq!(t.translate(va + size), None);
    assert_eq!(
        t.regions().collect::<Vec<_>>(),
        vec![MappedRegion {
            va,
            pa,
            size,
            attributes: MA::Writeback | MA::ReadOnly,
        }]
    );
    // Both sides 2 MiB aligned: 2 MiB leaves, and a second alias of the same memory.
    let before = t.table_pages();
    t.map_aliased_memory_region(0x5000_0000_0000, 0x8000_0000, 2 * MIB2, MA::Uncached)
        .unwrap();
    assert_eq!(t.table_pages(), before + 2, "a PDPT and a PD, no page table");
    t.map_aliased_memory_region(0x5000_4000_0000, 0x8000_0000, 2 * MIB2, MA::WriteCombining)
        .unwrap();
    assert_eq!(t.translate(0x5000_0012_3456), Some((0x8012_3456, MA::Uncached)));
    assert_eq!(t.translate(0x5000_4012_3456), Some((0x8012_3456, MA::WriteCombining)));
    t.unmap_memory_region(0x5000_0000_0000, 2 * MIB2).unwrap();
    assert_eq!(t.translate(0x5000_0012_3456), None);
    assert_eq!(t.translate(0x5000_4012_3456), Some((0x8012_3456, MA::WriteCombining)));
    // PA 0 and VA 0 swapped with another range.
    t.map_aliased_memory_region(0, GIB, KIB4, MA::Writeback).unwrap();
    t.map_aliased_memory_region(GIB, 0, KIB4, MA::Writeback).unwrap();
    assert_eq!(t.translate(0x10), Some((GIB + 0x10, MA::Writeback)));
    assert_eq!(t.translate(GIB + 0x10), Some((0x10, MA::Writeback)));
}

fn high_half_works(paging: PagingType, high: u64) {
    let mut t = table_with(paging, true, 64);
    t.map_aliased_memory_region(high, 0, 2 * MIB2, MA::Writeback).unwrap();
    t.map_aliased_memory_region(0xFFFF_FFFF_FFFF_F000, 0x5000, KIB4, MA::Uncached)
        .unwrap();
    t.map_aliased_memory_region(0xFFFF_FFFF_C000_0000, GIB, GIB - KIB4, MA::ExecuteProtect)
        .unwrap();
    assert_eq!(t.translate(high + 0x12_3456), Some((0x12_3456, MA::Writeback)));
    assert_eq!(t.translate(0xFFFF_FFFF_FFFF_FFFF), Some((0x5FFF, MA::Uncached)));
    assert_eq!(t.translate(0xFFFF_FFFF_C000_0000), Some((GIB, MA::ExecuteProtect)));
    assert_eq!(t.query_memory_region(high, 2 * MIB2), Ok(MA::Writeback));
    assert_eq!(t.translate(high - KIB4), None);
    // The root entries used are the upper half of the root.
    assert_ne!(t.tables().read_entry(t.root(), 256), 0);
    assert_ne!(t.tables().read_entry(t.root(), 511), 0);
    for i in 0..256 {
        assert_eq!(t.tables().read_entry(t.root(), i), 0, "root entry {i}");
    }
    let regions: Vec<MappedRegion> = t.regions().collect();
    assert_eq!(regions.len(), 3);
    assert_eq!(regions[0].va, high);
    assert_eq!(regions[2].va, 0xFFFF_FFFF_FFFF_F000);
    // Invalidations carry canonical addresses.
    t.mmu().take_log();
    t.protect_memory_region(high + MIB2 + 0x3000, KIB4, MA::ReadOnly)
        .unwrap();
    assert_eq!(t.mmu().take_log(), vec![MmuOp::InvalidatePage(high + MIB2 + 0x3000)]);
    t.unmap_memory_region(high, 2 * MIB2).unwrap();
    t.unmap_memory_region(0xFFFF_FFFF_C000_0000, GIB - KIB4).unwrap();
    t.unmap_memory_region(0xFFFF_FFFF_FFFF_F000, KIB4).unwrap();
    assert_eq!(t.table_pages(), 1);
    assert_eq!(t.allocator().live_pages(), 1);
}

#[test]
fn high_half_canonical_vas_work_on_4_level() {
    high_half_works(PagingType::Paging4Level, HIGH4);
}

#[test]
fn high_half_canonical_vas_work_on_5_level() {
    high_half_works(PagingType::Paging5Level, HIGH5);
    // The 4-level high half is canonical in 5-level too, under the last PML5 entry.
    let mut t = table_with(PagingType::Paging5Level, true, 64);
    t.map_aliased_memory_region(HIGH4, 0, MIB2, MA::Writeback).unwrap();
    assert_eq!(t.translate(HIGH4 + 0x42), Some((0x42, MA::Writeback)));
    assert_ne!(t.tables().read_entry(t.root(), 511), 0);
    assert_eq!(t.tables().read_entry(t.root(), 256), 0);
}

#[test]
fn unmap_of_a_1gib_region_mapped_with_mixed_4k_pages_frees_all_tables() {
    let mut t = table_with(PagingType::Paging4Level, true, 1024);
    t.map_memory_region(GIB, GIB, MA::Writeback).unwrap();
    // Every 2 MiB gets a page table: a different page in each (and some non-present).
    let ops: Vec<Op> = (0..512)
        .map(|i| {
            let attributes = match i % 3 {
                0 => MA::ReadOnly,
                1 => MA::ReadProtect,
                _ => MA::Uncached | MA::ExecuteProtect,
            };
            protect(GIB + i * MIB2 + (i % 512) * KIB4, KIB4, attributes)
        })
        .collect();
    ops_commit(&mut t, &ops).unwrap();
    assert_eq!(t.table_pages(), 1 + 1 + 1 + 512);
    assert_eq!(t.allocator().live_pages(), 515);
    let report = ops_commit(&mut t, &[unmap(GIB, GIB)]).unwrap();
    assert_eq!(report.tables_freed, 514);
    assert_eq!(t.table_pages(), 1);
    assert_eq!(t.allocator().live_pages(), 1);
    assert_eq!(t.allocator().bad_frees(), 0);
    assert_eq!(t.regions().count(), 0);
}

#[test]
fn from_existing_reopens_a_table_built_earlier() {
    let mut pool = PagePool::new(64);
    let (root, regions) = {
        let mut t = X64PageTable::with_mmu(
            &mut pool,
            PagingType::Paging4Level,
            X64Config { one_gib_pages: true },
            RecordingMmu::new(),
        )
        .unwrap();
        t.map_memory_region(0, 4 * MIB2, MA::Writeback).unwrap();
        t.protect_memory_region(0x5000, KIB4, MA::ReadOnly).unwrap();
        t.map_aliased_memory_region(HIGH4, 0x20_0000, MIB2, MA::Uncached)
            .unwrap();
        let regions: Vec<MappedRegion> = t.regions().collect();
        (t.into_page_table_root(), regions)
    };
    let live = pool.live_pages();
    assert_eq!(live, 6, "the tables stay in memory");
    // SAFETY: `root` is the 4-level table just built in `pool`, untouched since.
    let mut t = unsafe { X64PageTable::from_existing(root, &mut pool, PagingType::Paging4Level) }.unwrap();
    assert_eq!(t.root(), root);
    assert_eq!(t.regions().collect::<Vec<_>>(), regions);
    assert_eq!(t.query_memory_region(0x5000, KIB4), Ok(MA::Writeback | MA::ReadOnly));
    assert_eq!(t.translate(HIGH4 + 0x10), Some((0x20_0010, MA::Uncached)));
    assert_eq!(t.table_pages(), live);
    // It keeps working: merge, unmap, free.
    t.protect_memory_region(0x5000, KIB4, MA::empty()).unwrap();
    assert_eq!(t.table_pages(), live - 1);
    t.unmap_memory_region(0, 4 * MIB2).unwrap();
    t.unmap_memory_region(HIGH4, MIB2).unwrap();
    assert_eq!(t.table_pages(), 1);
    assert_eq!(t.into_page_table_root(), root);
    assert_eq!(pool.live_pages(), 1);
    assert_eq!(pool.bad_frees(), 0);
}

/// One parsed dump row: level name, VA range, raw entry.
fn parse_row(line: &str) -> Option<(String, u64, u64, u64)> {
    let (name, rest) = line.split_once(" | [0x")?;
    let (range, columns) = rest.split_once("] |")?;
    let (start, end) = range.split_once(" 0x")?;
    assert_eq!(start.len(), 16, "{line}");
    assert_eq!(end.len(), 16, "{line}");
    assert!(
        start
            .chars()
            .chain(end.chars())
            .all(|c| c.is_ascii_digit() || c.is_ascii_uppercase()),
        "{line}"
    );
    let columns: Vec<&str> = columns.strip_suffix('|')?.split('|').collect();
    let widths: Vec<usize> = columns.iter().map(|c| c.len()).collect();
    assert_eq!(widths, vec![1, 11, 40, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1], "{line}");
    let raw = u64::from_str_radix(&columns.concat(), 2).ok()?;
    Some((
        name.trim_end().to_string(),
        u64::from_str_radix(start, 16).ok()?,
        u64::from_str_radix(end, 16).ok()?,
        raw,
    ))
}

#[test]
fn dump_to_prints_one_row_per_present_entry_in_the_seed_format() {
    let mut t = table();
    t.map_memory_region(0, 0x3000, MA::Writeback | MA::ExecuteProtect)
        .unwrap();
    t.map_memory_region(0x20_0000, MIB2, MA::Uncached).unwrap();
    t.map_memory_region(0x80_0000, KIB4, MA::ReadOnly).unwrap();
    let mut out = String::new();
    t.dump_to(&mut out, 0, 0x40_0000).unwrap();
    assert!(
        out.lines()
            .next()
            .unwrap()
            .contains("[0x0000000000000000 0x00000000003FFFFF]"),
        "{out}"
    );
    let rows: Vec<_> = out.lines().filter_map(parse_row).collect();
    // Independently read entries: PML4[0], PDPT[0], PD[0] (table), PT[0..3], PD[1] (2 MiB leaf).
    let pml4 = t.tables().read_entry(t.root(), 0);
    let pdpt = t.tables().read_entry(pml4 & ADDRESS_4K, 0);
    let pd0 = t.tables().read_entry(pdpt & ADDRESS_4K, 0);
    let pd1 = t.tables().read_entry(pdpt & ADDRESS_4K, 1);
    let pt: Vec<u64> = (0..3).map(|i| t.tables().read_entry(pd0 & ADDRESS_4K, i)).collect();
    // As in the seed's example, each row's range is clipped to the range asked for.
    let want = vec![
        ("PML4".to_string(), 0, 0x3F_FFFF, pml4),
        ("PDP".to_string(), 0, 0x3F_FFFF, pdpt),
        ("PD".to_string(), 0, MIB2 - 1, pd0),
        ("PT".to_string(), 0, 0xFFF, pt[0]),
        ("PT".to_string(), 0x1000, 0x1FFF, pt[1]),
        ("PT".to_string(), 0x2000, 0x2FFF, pt[2]),
        ("PD".to_string(), MIB2, 2 * MIB2 - 1, pd1),
    ];
    assert_eq!(rows, want, "{out}");
    for raw in [pml4, pdpt, pd0, pd1, pt[0], pt[1], pt[2]] {
        assert_ne!(raw & P, 0);
    }
    // The seed's row layout, byte for byte, for the 2 MiB leaf.
    let row = out
        .lines()
        .find(|l| l.starts_with("PD   | [0x0000000000200000"))
        .unwrap();
    assert_eq!(
        row,
        format!(
            "PD   | [0x0000000000200000 0x00000000003FFFFF] |0|00000000000|{:040b}|000|0|1|0|0|1|1|0|1|1|",
            pd1 >> 12 & ((1 << 40) - 1)
        )
    );
    // High-half rows carry canonical addresses; 5-level names its root PML5.
    let mut t = table_with(PagingType::Paging5Level, true, 64);
    t.map_aliased_memory_region(HIGH5, 0, KIB4, MA::Writeback).unwrap();
    let mut out = String::new();
    t.dump_to(&mut out, HIGH5, KIB4).unwrap();
    let rows: Vec<_> = out.lines().filter_map(parse_row).collect();
    let names: Vec<&str> = rows.iter().map(|r| r.0.as_str()).collect();
    assert_eq!(names, ["PML5", "PML4", "PDP", "PD", "PT"], "{out}");
    assert_eq!((rows[0].1, rows[0].2), (HIGH5, HIGH5 + 0xFFF));
    assert_eq!((rows[4].1, rows[4].2), (HIGH5, HIGH5 + 0xFFF));
    // Bad ranges are refused before anything is written.
    let mut out = String::new();
    assert_eq!(t.dump_to(&mut out, 0x123, KIB4), Err(PtError::UnalignedAddress));
    assert!(out.is_empty());
}

#[test]
fn dump_says_where_nothing_is_mapped() {
    let mut t = table();
    t.map_memory_region(0, 0x3000, MA::Writeback).unwrap();
    let mut out = String::new();
    t.dump_to(&mut out, 0, 0x40_0000).unwrap();
    // One row for the run after the three pages, clipped to the range asked for.
    let holes: Vec<&str> = out.lines().filter(|l| l.ends_with("| not mapped")).collect();
    assert_eq!(
        holes,
        ["     | [0x0000000000003000 0x00000000003FFFFF] | not mapped"],
        "{out}"
    );
    // Nothing mapped at all: the root's entry row, then the whole range as not mapped.
    let mut out = String::new();
    t.dump_to(&mut out, 0x4000_0000, 2 * KIB4).unwrap();
    let rows: Vec<&str> = out.lines().filter(|l| l.contains(" | [0x")).collect();
    assert_eq!(rows.len(), 2, "{out}");
    assert!(
        rows[0].starts_with("PML4 | [0x0000000040000000 0x0000000040001FFF] |"),
        "{out}"
    );
    assert_eq!(rows[1], "     | [0x0000000040000000 0x0000000040001FFF] | not mapped");
    // The legend says which rows the column names belong to.
    assert!(
        out.contains("PT rows (4 KiB page): 51:12 = page address, 8 = G, 7 = PAT, 6 = D"),
        "{out}"
    );
}

#[test]
fn split_fully_rewritten_uniformly_in_one_commit_merges_back() {
    let mut t = table();
    t.map_memory_region(0x20_0000, MIB2, MA::Writeback).unwrap();
    assert_eq!(t.table_pages(), 3);
    // Every page ends Writeback|ReadOnly, PA contiguous from 0x20_0000: one 2 MiB leaf.
    ops_commit(
        &mut t,
        &[
            protect(0x20_0000, MIB2 - KIB4, MA::ReadOnly),
            map(0x3F_F000, KIB4, MA::Writeback | MA::ReadOnly),
        ],
    )
    .unwrap();
    assert_eq!(t.query_memory_region(0x20_0000, MIB2), Ok(MA::Writeback | MA::ReadOnly));
    assert!(
        is_large_leaf(entry_at(&t, 0x20_0000, 1)),
        "the 2 MiB entry is still a table"
    );
    assert_eq!(t.table_pages(), 3);
}

/// One-page maps that continue each other are checked and folded as one map; where the
/// joined map fails its check, the error still names the op that fails, and the table is
/// unchanged.
#[test]
fn continuing_one_page_maps_fail_at_the_op_that_fails() {
    let mut t = table();
    let before = image(&t);
    let mut fails_at = |ops: &[Op], op: usize, code: PtError| -> TxnError {
        let error = ops_commit(&mut t, ops).unwrap_err();
        assert_eq!((error.op, error.error), (Some(op), code), "{error}");
        assert!(image(&t) == before, "a failed commit changed the table");
        error
    };
    // Into the canonical hole: the last page below it is fine, the next op is not.
    let below_hole = 0x7FFF_FFFF_0000;
    let ops: Vec<Op> = (0..17)
        .map(|i| alias(below_hole + i * KIB4, i * KIB4, KIB4, MA::Writeback))
        .collect();
    let error = fails_at(&ops, 16, PtError::InvalidMemoryRange);
    assert_eq!(error.range, Some((0x8000_0000_0000, KIB4)));

    // Beyond the physical width: op 5 reaches 2^52.
    let top = (1u64 << 52) - 5 * KIB4;
    let ops: Vec<Op> = (0..8)
        .map(|i| alias(0x80_0000 + i * KIB4, top + i * KIB4, KIB4, MA::Writeback))
        .collect();
    let error = fails_at(&ops, 5, PtError::InvalidMemoryRange);
    assert_eq!(error.address, Some(1 << 52), "{error}");

    // A size that is not whole pages breaks the run and is named.
    let mut ops: Vec<Op> = (0..4).map(|i| map(0x80_0000 + i * KIB4, KIB4, MA::Writeback)).collect();
    ops.push(map(0x80_4000, 0x800, MA::Writeback));
    fails_at(&ops, 4, PtError::UnalignedMemoryRange);
    // Two half pages that would join into a whole one: still op 1's error.
    let ops = [
        map(0x80_0000, KIB4, MA::Writeback),
        map(0x80_1000, 0x800, MA::Writeback),
        map(0x80_1800, 0x800, MA::Writeback),
    ];
    fails_at(&ops, 1, PtError::UnalignedMemoryRange);
}

/// 1,024 one-page identity maps build what one 4 MiB map builds: two 2 MiB leaves.
#[test]
fn continuing_one_page_maps_build_what_one_map_builds() {
    let ops: Vec<Op> = (0..1024).map(|i| map(GIB + i * KIB4, KIB4, MA::Writeback)).collect();
    let mut pages = table();
    pages.mmu().take_log();
    let report = ops_commit(&mut pages, &ops).unwrap();
    let mut whole = table();
    let whole_report = ops_commit(&mut whole, &[map(GIB, 1024 * KIB4, MA::Writeback)]).unwrap();
    assert_eq!(report, whole_report);
    assert_eq!(pages.table_pages(), whole.table_pages());
    for va in [GIB, GIB + MIB2] {
        let (leaf, whole_leaf) = (entry_at(&pages, va, 1), entry_at(&whole, va, 1));
        assert!(is_large_leaf(leaf), "{va:#x}: {leaf:#x}");
        assert_eq!(leaf, whole_leaf, "{va:#x}");
    }
}

/// A batch in address order whose ops together cover a whole 2 MiB leaf with one change
/// leaves it a leaf (changed in place), as one op over the 2 MiB would: no split table.
#[test]
fn a_sorted_batch_covering_a_whole_2mib_leaf_changes_it_in_place() {
    let mut t = table();
    t.map_memory_region(GIB, MIB2, MA::Writeback).unwrap();
    let pages_before = t.table_pages();
    assert!(is_large_leaf(entry_at(&t, GIB, 1)));
    let ops = [
        protect(GIB, MIB2 / 2, MA::ReadOnly),
        protect(GIB + MIB2 / 2, MIB2 / 4, MA::ReadOnly),
        protect(GIB + 3 * MIB2 / 4, MIB2 / 4, MA::ReadOnly),
    ];
    let report = ops_commit(&mut t, &ops).unwrap();
    assert_eq!((report.tables_allocated, report.tables_freed), (0, 0), "{report:?}");
    assert_eq!(t.table_pages(), pages_before);
    assert!(is_large_leaf(entry_at(&t, GIB, 1)));
    assert_eq!(t.query_memory_region(GIB, MIB2), Ok(MA::Writeback | MA::ReadOnly));
}
