//! Bad input, one test per class: the exact error (and for transactions the exact op
//! index), the table bit-for-bit unchanged, no page leaked, no TLB maintenance issued.

use txpaging::{
    MappedRegion, MemoryAttributes as MA, PageAllocator, PagePool, PageTable, PagingType, PtError, RecordingMmu,
    X64Config, X64PageTable,
};

type Table = X64PageTable<PagePool, RecordingMmu>;

const KIB4: u64 = 0x1000;
const MIB2: u64 = 0x20_0000;

/// High-half alias base of each mode.
fn high(paging: PagingType) -> u64 {
    match paging {
        PagingType::Paging4Level => 0xFFFF_8000_0000_0000,
        PagingType::Paging5Level => 0xFF00_0000_0000_0000,
        PagingType::Paging3Level => unreachable!("X64 has no 3-level paging"),
    }
}

/// 0..4 MiB write-back (two 2 MiB leaves), 0x40_0000..0x40_3000 uncached NX (4 KiB pages),
/// 0x100_0000..0x100_2000 write-back, 2 MiB + 4 KiB aliased in the high half.
/// 0x40_3000..0x100_0000 is unmapped.
fn fixture(paging: PagingType) -> Table {
    let mut t = X64PageTable::with_mmu(
        PagePool::new(64),
        paging,
        X64Config { one_gib_pages: true },
        RecordingMmu::new(),
    )
    .unwrap();
    fill(&mut t, paging);
    t
}

fn fill<P: PageAllocator>(t: &mut X64PageTable<P, RecordingMmu>, paging: PagingType) {
    t.map_memory_region(0, 2 * MIB2, MA::Writeback).unwrap();
    t.map_memory_region(0x40_0000, 0x3000, MA::Uncached | MA::ExecuteProtect)
        .unwrap();
    t.map_memory_region(0x100_0000, 2 * KIB4, MA::Writeback).unwrap();
    t.map_aliased_memory_region(high(paging), 0x1000_0000, MIB2 + KIB4, MA::Writeback)
        .unwrap();
    t.mmu().take_log();
}

/// Everything observable about a table.
#[derive(Debug, PartialEq, Eq)]
struct Snapshot {
    root: u64,
    pages: Vec<(u64, Vec<u8>)>,
    live: usize,
    regions: Vec<MappedRegion>,
}

fn snapshot(t: &Table) -> Snapshot {
    let pool = t.allocator();
    Snapshot {
        root: t.root(),
        pages: pool.live().map(|pa| (pa, pool.page(pa).unwrap().to_vec())).collect(),
        live: pool.live_pages(),
        regions: t.regions().collect(),
    }
}

/// The table is as `before`, nothing leaked, nothing freed twice, no TLB maintenance.
fn assert_unchanged(t: &Table, before: &Snapshot) {
    let after = snapshot(t);
    assert!(after == *before, "table changed:\nbefore {before:x?}\nafter {after:x?}");
    assert_eq!(t.allocator().live_pages(), t.table_pages(), "a page leaked");
    assert_eq!(t.allocator().bad_frees(), 0);
    assert_eq!(t.mmu().log(), vec![], "TLB maintenance on a failed call");
}

/// `va`/`size` is a bad range: every entry point fails with `error` and changes nothing.
fn assert_bad_range(t: &mut Table, va: u64, size: u64, error: PtError) {
    let before = snapshot(t);
    let what = format!("va {va:#x} size {size:#x}");
    assert_eq!(t.map_memory_region(va, size, MA::Writeback), Err(error), "map {what}");
    assert_eq!(
        t.map_aliased_memory_region(va, 0, size, MA::Writeback),
        Err(error),
        "map_aliased {what}"
    );
    assert_eq!(t.unmap_memory_region(va, size), Err(error), "unmap {what}");
    assert_eq!(
        t.protect_memory_region(va, size, MA::ReadOnly),
        Err(error),
        "protect {what}"
    );
    assert_eq!(t.query_memory_region(va, size), Err(error), "query {what}");
    // As op 1 of a transaction whose op 0 is fine: plan and commit both blame op 1.
    let want = Err((Some(1), error));
    for op in 0..3 {
        let mut txn = t.transaction();
        txn.map(0x60_0000, KIB4, MA::Writeback);
        match op {
            0 => txn.map(va, size, MA::Writeback),
            1 => txn.unmap(va, size),
            _ => txn.protect(va, size, MA::ReadOnly),
        };
        assert_eq!(
            txn.plan().map(drop).map_err(|e| e.code()),
            want,
            "plan, op kind {op}, {what}"
        );
        assert_eq!(
            txn.commit().map(drop).map_err(|e| e.code()),
            want,
            "commit, op kind {op}, {what}"
        );
        assert!(txn.ops().is_empty(), "commit leaves the queue empty");
    }
    assert_unchanged(t, &before);
}

fn both_modes() -> [PagingType; 2] {
    [PagingType::Paging4Level, PagingType::Paging5Level]
}

#[test]
fn unaligned_address_is_unaligned_address() {
    for paging in both_modes() {
        let mut t = fixture(paging);
        for va in [0x1, 0x800, 0x40_0FFF, 0x60_0010, high(paging) + 8] {
            assert_bad_range(&mut t, va, KIB4, PtError::UnalignedAddress);
        }
    }
}

#[test]
fn unaligned_size_is_unaligned_memory_range() {
    for paging in both_modes() {
        let mut t = fixture(paging);
        for size in [0x1, 0xFFF, 0x1001, MIB2 + 0x800, u64::MAX] {
            assert_bad_range(&mut t, 0, size, PtError::UnalignedMemoryRange);
        }
    }
}

#[test]
fn size_zero_is_invalid_memory_range() {
    for paging in both_modes() {
        let mut t = fixture(paging);
        for va in [0, 0x40_0000, 0x60_0000, high(paging)] {
            assert_bad_range(&mut t, va, 0, PtError::InvalidMemoryRange);
        }
        // Size 0 is checked before alignment.
        assert_bad_range(&mut t, 0x123, 0, PtError::InvalidMemoryRange);
    }
}

#[test]
fn address_plus_size_overflowing_2_pow_64_is_addition_overflow() {
    for paging in both_modes() {
        let mut t = fixture(paging);
        assert_bad_range(&mut t, 0xFFFF_FFFF_FFFF_F000, 2 * KIB4, PtError::AdditionOverflow);
        assert_bad_range(&mut t, 2 * KIB4, 0xFFFF_FFFF_FFFF_F000, PtError::AdditionOverflow);
        assert_bad_range(&mut t, 0xFFFF_FFFF_FFFF_F000, !0xFFF, PtError::AdditionOverflow);
        assert_bad_range(&mut t, high(paging), 0xFFFF_FFFF_FFFF_F000, PtError::AdditionOverflow);
        // Control: the very last page of the address space is fine (aliased: no PA that high).
        t.map_aliased_memory_region(0xFFFF_FFFF_FFFF_F000, 0, KIB4, MA::Writeback)
            .unwrap();
        assert_eq!(t.query_memory_region(0xFFFF_FFFF_FFFF_F000, KIB4), Ok(MA::Writeback));
    }
}

#[test]
fn beyond_the_paging_width_is_invalid_memory_range() {
    let mut t = fixture(PagingType::Paging4Level);
    assert_bad_range(&mut t, 0x0000_8000_0000_0000, KIB4, PtError::InvalidMemoryRange);
    assert_bad_range(&mut t, 0x0000_7FFF_FFFF_F000, 2 * KIB4, PtError::InvalidMemoryRange);
    assert_bad_range(&mut t, 0x0001_0000_0000_0000, KIB4, PtError::InvalidMemoryRange);
    assert_bad_range(&mut t, 0x0100_0000_0000_0000, KIB4, PtError::InvalidMemoryRange);

    let mut t = fixture(PagingType::Paging5Level);
    assert_bad_range(&mut t, 0x0100_0000_0000_0000, KIB4, PtError::InvalidMemoryRange);
    assert_bad_range(&mut t, 0x00FF_FFFF_FFFF_F000, 2 * KIB4, PtError::InvalidMemoryRange);
    // Control: what 4-level rejects, 5-level maps.
    t.map_memory_region(0x0000_8000_0000_0000, KIB4, MA::Writeback).unwrap();
    t.map_aliased_memory_region(0x00FF_FFFF_FFFF_F000, 0, KIB4, MA::Writeback)
        .unwrap();
    // An identity map that far up would need a PA beyond 52 bits.
    let before = snapshot(&t);
    assert_eq!(
        t.map_memory_region(0x0010_0000_0000_0000, KIB4, MA::Writeback),
        Err(PtError::InvalidMemoryRange)
    );
    assert_unchanged(&t, &before);
}

#[test]
fn non_canonical_is_invalid_memory_range() {
    let mut t = fixture(PagingType::Paging4Level);
    for va in [
        0x8000_0000_0000_0000,
        0xFFFF_0000_0000_0000,
        0xFFFF_7FFF_FFFF_F000,
        0x1234_5678_9ABC_D000,
        0x00FF_8000_0000_0000,
    ] {
        assert_bad_range(&mut t, va, KIB4, PtError::InvalidMemoryRange);
    }
    let mut t = fixture(PagingType::Paging5Level);
    for va in [
        0x8000_0000_0000_0000,
        0xFE00_0000_0000_0000,
        0xFEFF_FFFF_FFFF_F000,
        0x1234_5678_9ABC_D000,
    ] {
        assert_bad_range(&mut t, va, KIB4, PtError::InvalidMemoryRange);
    }
}

#[test]
fn crossing_the_canonical_hole_is_invalid_memory_range() {
    // Both ends canonical, the range between them not.
    let mut t = fixture(PagingType::Paging4Level);
    let last_low = 0x0000_7FFF_FFFF_F000;
    let first_high = high(PagingType::Paging4Level);
    assert_bad_range(
        &mut t,
        last_low,
        first_high + KIB4 - last_low,
        PtError::InvalidMemoryRange,
    );
    assert_bad_range(&mut t, 0, 0xFFFF_FFFF_FFFF_F000, PtError::InvalidMemoryRange);
    let mut t = fixture(PagingType::Paging5Level);
    let last_low = 0x00FF_FFFF_FFFF_F000;
    let first_high = high(PagingType::Paging5Level);
    assert_bad_range(
        &mut t,
        last_low,
        first_high + KIB4 - last_low,
        PtError::InvalidMemoryRange,
    );
    assert_bad_range(&mut t, 0, 0xFFFF_FFFF_FFFF_F000, PtError::InvalidMemoryRange);
}

/// `attributes` are bad: map, aliased map and protect (and the transaction forms) fail
/// with `error`; nothing changes.
fn assert_bad_attributes(t: &mut Table, attributes: MA, error: PtError) {
    let before = snapshot(t);
    let what = format!("{attributes:?}");
    assert_eq!(
        t.map_memory_region(0x60_0000, KIB4, attributes),
        Err(error),
        "map {what}"
    );
    assert_eq!(t.map_memory_region(0, MIB2, attributes), Err(error), "map over {what}");
    assert_eq!(
        t.map_aliased_memory_region(0x60_0000, 0x1000_0000, KIB4, attributes),
        Err(error),
        "map_aliased {what}"
    );
    assert_eq!(
        t.protect_memory_region(0, KIB4, attributes),
        Err(error),
        "protect {what}"
    );
    let want = Err((Some(1), error));
    let mut txn = t.transaction();
    txn.protect(0x40_0000, KIB4, MA::ReadOnly)
        .map(0x60_0000, KIB4, attributes);
    assert_eq!(txn.plan().map(drop).map_err(|e| e.code()), want, "plan {what}");
    assert_eq!(txn.commit().map(drop).map_err(|e| e.code()), want, "commit {what}");
    txn.protect(0x40_0000, KIB4, MA::ReadOnly).protect(0, KIB4, attributes);
    assert_eq!(
        txn.commit().map(drop).map_err(|e| e.code()),
        want,
        "commit protect {what}"
    );
    assert_unchanged(t, &before);
}

#[test]
fn more_than_one_cache_attribute_is_incompatible_memory_attributes() {
    for paging in both_modes() {
        let mut t = fixture(paging);
        for attributes in [
            MA::Uncached | MA::Writeback,
            MA::WriteCombining | MA::WriteThrough,
            MA::Writeback | MA::WriteProtect | MA::ReadOnly,
            MA::UncachedExport | MA::Uncached | MA::ExecuteProtect,
            MA::CacheAttributesMask,
        ] {
            assert_bad_attributes(&mut t, attributes, PtError::IncompatibleMemoryAttributes);
        }
    }
}

#[test]
fn unknown_attribute_bits_are_invalid_parameter() {
    for paging in both_modes() {
        let mut t = fixture(paging);
        for bits in [0x8000, 0x8000 | MA::Writeback.bits(), 0x20, 0x1_0000, 1 << 63, 0x4_0000] {
            assert_bad_attributes(&mut t, MA::from_bits_retain(bits), PtError::InvalidParameter);
        }
    }
}

/// `va`/`size` is well formed but not (fully) mapped: unmap and protect fail with NoMapping.
fn assert_not_mapped(t: &mut Table, va: u64, size: u64) {
    let before = snapshot(t);
    let what = format!("va {va:#x} size {size:#x}");
    assert_eq!(t.unmap_memory_region(va, size), Err(PtError::NoMapping), "unmap {what}");
    for attributes in [MA::ReadOnly, MA::Writeback, MA::empty()] {
        assert_eq!(
            t.protect_memory_region(va, size, attributes),
            Err(PtError::NoMapping),
            "protect {what}"
        );
    }
    assert_eq!(t.query_memory_region(va, size), Err(PtError::NoMapping), "query {what}");
    let want = Err((Some(0), PtError::NoMapping));
    assert_eq!(
        t.transaction().unmap(va, size).plan().map(drop).map_err(|e| e.code()),
        want,
        "plan {what}"
    );
    assert_eq!(
        t.transaction().unmap(va, size).commit().map(drop).map_err(|e| e.code()),
        want,
        "{what}"
    );
    assert_eq!(
        t.transaction()
            .protect(va, size, MA::ReadOnly)
            .map(0x7000_0000, KIB4, MA::Writeback)
            .commit()
            .map(drop)
            .map_err(|e| e.code()),
        want,
        "{what}"
    );
    assert_unchanged(t, &before);
}

#[test]
fn unmapping_or_protecting_what_is_not_mapped_is_no_mapping() {
    for paging in both_modes() {
        let mut t = fixture(paging);
        let h = high(paging);
        // Fully unmapped: inside an empty page table, an empty directory, an empty root slot.
        assert_not_mapped(&mut t, 0x40_3000, KIB4);
        assert_not_mapped(&mut t, 0x60_0000, MIB2);
        assert_not_mapped(&mut t, 0x1_0000_0000, 0x4000_0000);
        assert_not_mapped(&mut t, 0x7000_0000_0000, KIB4);
        // Partly: mapped 4 KiB then unmapped, a 2 MiB leaf then unmapped, unmapped then
        // mapped, a hole in the middle, the high half past its end.
        assert_not_mapped(&mut t, 0x40_2000, 2 * KIB4);
        assert_not_mapped(&mut t, 0x20_0000, 0x40_0000);
        assert_not_mapped(&mut t, 0x100_0000 - KIB4, 2 * KIB4);
        assert_not_mapped(&mut t, 0x40_0000, 0xC0_2000);
        assert_not_mapped(&mut t, 0, 0x80_0000);
        assert_not_mapped(&mut t, h + MIB2, 2 * KIB4);
        assert_not_mapped(&mut t, h - KIB4 + 0x1000_0000, KIB4);
        // The last page of the address space (not mapped in the fixture).
        assert_not_mapped(&mut t, 0xFFFF_FFFF_FFFF_F000, KIB4);
    }
}

/// An aliased map of `pa` fails with `error` and changes nothing.
fn assert_bad_physical(t: &mut Table, pa: u64, size: u64, error: PtError) {
    let before = snapshot(t);
    let what = format!("pa {pa:#x} size {size:#x}");
    assert_eq!(
        t.map_aliased_memory_region(0x60_0000, pa, size, MA::Writeback),
        Err(error),
        "{what}"
    );
    let want = Err((Some(1), error));
    let mut txn = t.transaction();
    txn.unmap(0x40_0000, KIB4)
        .map_aliased(0x60_0000, pa, size, MA::Writeback);
    assert_eq!(txn.plan().map(drop).map_err(|e| e.code()), want, "plan {what}");
    assert_eq!(txn.commit().map(drop).map_err(|e| e.code()), want, "commit {what}");
    assert_unchanged(t, &before);
}

#[test]
fn aliased_pa_unaligned_is_unaligned_page_base() {
    for paging in both_modes() {
        let mut t = fixture(paging);
        for pa in [0x1, 0x800, 0x1000_0FFF, (1u64 << 52) - 8] {
            assert_bad_physical(&mut t, pa, KIB4, PtError::UnalignedPageBase);
        }
    }
}

#[test]
fn aliased_pa_beyond_52_bits_is_invalid_memory_range() {
    for paging in both_modes() {
        let mut t = fixture(paging);
        assert_bad_physical(&mut t, 1 << 52, KIB4, PtError::InvalidMemoryRange);
        assert_bad_physical(&mut t, (1 << 52) - KIB4, 2 * KIB4, PtError::InvalidMemoryRange);
        assert_bad_physical(&mut t, 0x8000_0000_0000_0000, MIB2, PtError::InvalidMemoryRange);
        assert_bad_physical(&mut t, 0xFFFF_FFFF_FFFF_F000, 2 * KIB4, PtError::AdditionOverflow);
        // Control: the last 4 KiB below 2^52 maps and translates.
        t.map_aliased_memory_region(0x60_0000, (1 << 52) - KIB4, KIB4, MA::Writeback)
            .unwrap();
        assert_eq!(t.translate(0x60_0123), Some(((1 << 52) - KIB4 + 0x123, MA::Writeback)));
    }
}

#[test]
fn query_of_partly_unmapped_is_no_mapping_and_of_mixed_is_non_uniform() {
    for paging in both_modes() {
        let t = fixture(paging);
        let before = snapshot(&t);
        let h = high(paging);
        assert_eq!(t.query_memory_region(0x40_2000, 2 * KIB4), Err(PtError::NoMapping));
        assert_eq!(t.query_memory_region(0x60_0000, KIB4), Err(PtError::NoMapping));
        assert_eq!(t.query_memory_region(h + MIB2, 2 * KIB4), Err(PtError::NoMapping));
        // Mixed and partly unmapped: NoMapping wins.
        assert_eq!(t.query_memory_region(0x3F_F000, 0x5000), Err(PtError::NoMapping));
        assert_eq!(t.query_memory_region(0, 0x80_0000), Err(PtError::NoMapping));
        // Mixed, all mapped.
        assert_eq!(
            t.query_memory_region(0x3F_F000, 0x4000),
            Err(PtError::NonUniformMemoryAttributes)
        );
        assert_eq!(
            t.query_memory_region(0, 0x40_3000),
            Err(PtError::NonUniformMemoryAttributes)
        );
        // Controls.
        assert_eq!(t.query_memory_region(0, 0x40_0000), Ok(MA::Writeback));
        assert_eq!(t.query_memory_region(h, MIB2 + KIB4), Ok(MA::Writeback));
        assert_unchanged(&t, &before);
    }
}

#[test]
fn transaction_whose_third_op_is_bad_reports_op_2_and_applies_nothing() {
    for paging in both_modes() {
        let mut t = fixture(paging);
        let before = snapshot(&t);
        // Malformed third op.
        let mut txn = t.transaction();
        txn.map(0x60_0000, MIB2, MA::Uncached)
            .protect(0, KIB4, MA::ReadOnly)
            .map(0x1001, KIB4, MA::Writeback);
        let want = Err((Some(2), PtError::UnalignedAddress));
        assert_eq!(txn.plan().map(drop).map_err(|e| e.code()), want);
        assert_eq!(txn.commit().map(drop).map_err(|e| e.code()), want);
        assert_unchanged(&t, &before);
        // Third op fails a precondition.
        let mut txn = t.transaction();
        txn.map(0x60_0000, MIB2, MA::Uncached)
            .unmap(0, KIB4)
            .protect(0x80_0000, KIB4, MA::ReadOnly)
            .map(0x100_0000, KIB4, MA::Writeback);
        let want = Err((Some(2), PtError::NoMapping));
        assert_eq!(txn.plan().map(drop).map_err(|e| e.code()), want);
        assert_eq!(txn.commit().map(drop).map_err(|e| e.code()), want);
        assert_unchanged(&t, &before);
        // Third op has bad attributes.
        let mut txn = t.transaction();
        txn.map(0x60_0000, MIB2, MA::Uncached)
            .unmap(0, KIB4)
            .map(0x80_0000, KIB4, MA::Uncached | MA::WriteCombining);
        let want = Err((Some(2), PtError::IncompatibleMemoryAttributes));
        assert_eq!(txn.commit().map(drop).map_err(|e| e.code()), want);
        assert_unchanged(&t, &before);
    }
}

#[test]
fn transaction_unmapping_what_an_earlier_op_unmapped_reports_that_op() {
    for paging in both_modes() {
        let mut t = fixture(paging);
        let before = snapshot(&t);
        let want = Err((Some(1), PtError::NoMapping));
        assert_eq!(
            t.transaction()
                .unmap(0x40_0000, KIB4)
                .unmap(0x40_0000, KIB4)
                .plan()
                .map(drop)
                .map_err(|e| e.code()),
            want
        );
        assert_eq!(
            t.transaction()
                .unmap(0x40_0000, KIB4)
                .unmap(0x40_0000, KIB4)
                .commit()
                .map(drop)
                .map_err(|e| e.code()),
            want
        );
        // Partly overlapping, inside a 2 MiB leaf, and protect instead of unmap.
        assert_eq!(
            t.transaction()
                .unmap(0, 0x3000)
                .unmap(0x2000, 0x2000)
                .commit()
                .map(drop)
                .map_err(|e| e.code()),
            want
        );
        assert_eq!(
            t.transaction()
                .unmap(0x40_0000, 0x2000)
                .protect(0x40_1000, KIB4, MA::ReadOnly)
                .commit()
                .map(drop)
                .map_err(|e| e.code()),
            want
        );
        assert_unchanged(&t, &before);
    }
}

#[test]
fn transaction_with_failing_precondition_before_malformed_op_reports_the_earliest() {
    for paging in both_modes() {
        let mut t = fixture(paging);
        let before = snapshot(&t);
        let want = Err((Some(0), PtError::NoMapping));
        assert_eq!(
            t.transaction()
                .unmap(0x60_0000, KIB4)
                .map(0x1001, KIB4, MA::Writeback)
                .plan()
                .map(drop)
                .map_err(|e| e.code()),
            want
        );
        assert_eq!(
            t.transaction()
                .unmap(0x60_0000, KIB4)
                .map(0x1001, KIB4, MA::Writeback)
                .commit()
                .map(drop)
                .map_err(|e| e.code()),
            want
        );
        assert_eq!(
            t.transaction()
                .protect(0x40_2000, 0x2000, MA::ReadOnly)
                .map(0x60_0000, KIB4, MA::from_bits_retain(0x8000))
                .commit()
                .map(drop)
                .map_err(|e| e.code()),
            want
        );
        // A later map over the unmapped range does not excuse op 0.
        assert_eq!(
            t.transaction()
                .unmap(0x60_0000, KIB4)
                .map(0x60_0000, KIB4, MA::Writeback)
                .commit()
                .map(drop)
                .map_err(|e| e.code()),
            want
        );
        // Op 1 fails a precondition, op 2 is malformed: op 1.
        assert_eq!(
            t.transaction()
                .map(0x60_0000, KIB4, MA::Writeback)
                .unmap(0x70_0000, KIB4)
                .map(0, 0x1234, MA::Writeback)
                .commit()
                .map(drop)
                .map_err(|e| e.code()),
            Err((Some(1), PtError::NoMapping))
        );
        assert_unchanged(&t, &before);
    }
}

#[test]
fn allocation_failure_is_out_of_resources_for_no_op_and_gives_every_page_back() {
    for paging in both_modes() {
        let config = X64Config { one_gib_pages: true };
        let mut pool = PagePool::new(64);
        let root = {
            let mut t = X64PageTable::with_mmu(&mut pool, paging, config, RecordingMmu::new()).unwrap();
            fill(&mut t, paging);
            t.into_page_table_root()
        };
        // Both forms need three new tables (PDPT, PD, PT) under an empty PML4 slot: fail
        // the 1st, 2nd or 3rd allocation of the commit.
        for nth in 0..3 {
            for form in 0..2 {
                let image = pool.image().to_vec();
                let live = pool.live_pages();
                pool.fail_at(Some(pool.allocations() + nth));
                // SAFETY: `root` is the root of the table built above in `pool`, untouched since.
                let mut t = unsafe {
                    X64PageTable::from_existing_with_mmu(root, &mut pool, paging, config, RecordingMmu::new())
                }
                .unwrap();
                let result = if form == 0 {
                    t.map_memory_region(0x4000_0000_0000, KIB4, MA::Writeback)
                        .map_err(|e| (None, e))
                } else {
                    t.transaction()
                        .unmap(0x40_0000, KIB4)
                        .map(0x4000_0000_0000, 2 * KIB4, MA::Writeback)
                        .commit()
                        .map(drop)
                        .map_err(|e| e.code())
                };
                assert_eq!(
                    result,
                    Err((None, PtError::OutOfResources)),
                    "allocation {nth} fails, form {form}"
                );
                assert_eq!(t.mmu().log(), vec![]);
                drop(t);
                pool.fail_at(None);
                assert_eq!(pool.live_pages(), live, "every page given back");
                assert_eq!(pool.bad_frees(), 0);
                assert!(pool.image() == image.as_slice(), "table bytes unchanged");
            }
        }
        // Control: without the failure it maps.
        // SAFETY: as above.
        let mut t =
            unsafe { X64PageTable::from_existing_with_mmu(root, &mut pool, paging, config, RecordingMmu::new()) }
                .unwrap();
        let live = t.allocator().live_pages();
        t.map_memory_region(0x4000_0000_0000, KIB4, MA::Writeback).unwrap();
        assert_eq!(t.allocator().live_pages(), live + 3);
    }
}
