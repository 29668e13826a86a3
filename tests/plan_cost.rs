//! Re-applying the attributes a range already has changes nothing: no entry stored, no TLB
//! invalidation, no table page allocated or freed, not one byte of table memory changed.
//! (The timings of the same cases are `benches/firmware.rs`, group `x64_plan_cost`.)

use txpaging::{
    Aarch64Config, Aarch64PageTable, MemoryAttributes as A, MmuOp, Op, PagePool, PageTable, PagingType, RecordingMmu,
    X64Config, X64PageTable, PAGE_SIZE,
};

const GIB: u64 = 1 << 30;
const MIB: u64 = 1 << 20;

/// Ops mapping `size` bytes at `va` as 4 KiB pages whose PAs swap odd and even pages, so
/// no last-level table can merge into a block.
fn swapped_pages(va: u64, size: u64) -> impl Iterator<Item = Op> {
    (0..size / PAGE_SIZE).map(move |i| Op::Map {
        va: va + i * PAGE_SIZE,
        pa: va + (i ^ 1) * PAGE_SIZE,
        size: PAGE_SIZE,
        attributes: A::Writeback | A::ExecuteProtect,
    })
}

/// The re-applied protects: exactly the access bits each range already has.
fn reapply_ops(va: u64, size: u64) -> Vec<Op> {
    vec![
        // The whole range, in one op.
        Op::Protect {
            va,
            size,
            attributes: A::ExecuteProtect,
        },
        // An unaligned piece inside, with its cache type named.
        Op::Protect {
            va: va + 3 * PAGE_SIZE,
            size: 700 * PAGE_SIZE,
            attributes: A::Writeback | A::ExecuteProtect,
        },
    ]
}

macro_rules! check_no_change {
    ($table:expr, $va:expr, $size:expr) => {{
        let t = &mut $table;
        let image = t.allocator().image().to_vec();
        let live = t.allocator().live_pages();
        // As one transaction, then as one-op calls.
        let report = t.transaction().extend(reapply_ops($va, $size)).commit().unwrap();
        assert_eq!(report, Default::default(), "the transaction reports no work");
        for op in reapply_ops($va, $size) {
            let Op::Protect { va, size, attributes } = op else {
                unreachable!()
            };
            t.protect_memory_region(va, size, attributes).unwrap();
        }
        // No invalidation. (A live AArch64 commit still ends with its barrier sequence,
        // DSB ISHST, DSB ISH, ISB, even when it stores nothing: tests/aarch64_decoder.rs
        // requires that sequence of every live commit.)
        let log = t.mmu().log();
        assert!(
            log.iter().all(|op| matches!(op, MmuOp::Barrier(_))),
            "no TLB invalidation: {log:?}"
        );
        assert!(t.allocator().image() == image.as_slice(), "no table byte changed");
        assert_eq!(t.allocator().live_pages(), live, "no table page allocated or freed");
    }};
}

#[test]
fn x64_reapply_changes_nothing() {
    for one_gib_pages in [false, true] {
        // 2 MiB leaves (and one 1 GiB leaf when 1 GiB pages are on).
        let mut t = X64PageTable::with_mmu(
            PagePool::new(64),
            PagingType::Paging4Level,
            X64Config { one_gib_pages },
            RecordingMmu::new(),
        )
        .unwrap();
        t.map_memory_region(GIB, GIB, A::Writeback | A::ExecuteProtect).unwrap();
        t.install_page_table().unwrap();
        t.mmu().take_log();
        check_no_change!(t, GIB, GIB);

        // 4 KiB pages that cannot merge.
        let mut t = X64PageTable::with_mmu(
            PagePool::new(64),
            PagingType::Paging4Level,
            X64Config { one_gib_pages },
            RecordingMmu::new(),
        )
        .unwrap();
        t.transaction().extend(swapped_pages(GIB, 8 * MIB)).commit().unwrap();
        t.install_page_table().unwrap();
        t.mmu().take_log();
        check_no_change!(t, GIB, 8 * MIB);
    }
}

#[test]
fn aarch64_reapply_changes_nothing() {
    for live in [false, true] {
        let mut t = Aarch64PageTable::with_mmu(
            PagePool::new(64),
            PagingType::Paging4Level,
            Aarch64Config::default(),
            RecordingMmu::new(),
        )
        .unwrap();
        t.map_memory_region(GIB, GIB, A::Writeback | A::ExecuteProtect).unwrap();
        t.set_live(live);
        t.mmu().take_log();
        check_no_change!(t, GIB, GIB);

        let mut t = Aarch64PageTable::with_mmu(
            PagePool::new(64),
            PagingType::Paging4Level,
            Aarch64Config::default(),
            RecordingMmu::new(),
        )
        .unwrap();
        t.transaction().extend(swapped_pages(GIB, 8 * MIB)).commit().unwrap();
        t.set_live(live);
        t.mmu().take_log();
        check_no_change!(t, GIB, 8 * MIB);
    }
}
