//! AArch64 bad input, one test per class: the exact error (and for transactions the exact
//! op index), the table bit-for-bit unchanged, no page leaked, no TLB maintenance and no
//! barrier issued, on a table under construction and on an installed (live) one, for the
//! EL1&0 and the EL2 regime (every class runs for both).

use txpaging::aarch64::{El1, El2, Regime};
use txpaging::{
    Aarch64Config, Aarch64PageTable, MappedRegion, MemoryAttributes as MA, PageAllocator, PagePool, PageTable,
    PagingType, PtError, RecordingMmu, X64Config, X64PageTable,
};

type Table<R = El1> = Aarch64PageTable<PagePool, RecordingMmu, R>;

const KIB4: u64 = 0x1000;
const MIB2: u64 = 0x20_0000;
const GIB: u64 = 0x4000_0000;

fn va_bits(paging: PagingType) -> u32 {
    match paging {
        PagingType::Paging3Level => 39,
        PagingType::Paging4Level => 48,
        PagingType::Paging5Level => unreachable!("no 5-level AArch64 tables"),
    }
}

/// An alias base well inside each mode's space: 256 GiB (3 levels), 128 TiB (4 levels).
fn alias(paging: PagingType) -> u64 {
    1 << (va_bits(paging) - 1)
}

/// 0..4 MiB write-back (two 2 MiB blocks), 0x40_0000..0x40_3000 device execute-never
/// (pages), 0x100_0000..0x100_2000 write-back, 2 MiB + 4 KiB of PA 0x1000_0000 aliased at
/// `alias`. 0x40_3000..0x100_0000 is unmapped. `live`: installed, so commits are phased.
fn fixture<R: Regime>(paging: PagingType, live: bool) -> Table<R> {
    let mut t = Aarch64PageTable::with_regime(
        PagePool::new(64),
        paging,
        Aarch64Config::default(),
        RecordingMmu::new(),
        R::default(),
    )
    .unwrap();
    fill(&mut t, paging);
    if live {
        t.install_page_table().unwrap();
        t.mmu().take_log();
    }
    t
}

fn fill<P: PageAllocator, R: Regime>(t: &mut Aarch64PageTable<P, RecordingMmu, R>, paging: PagingType) {
    t.map_memory_region(0, 2 * MIB2, MA::Writeback).unwrap();
    t.map_memory_region(0x40_0000, 0x3000, MA::Uncached | MA::ExecuteProtect)
        .unwrap();
    t.map_memory_region(0x100_0000, 2 * KIB4, MA::Writeback).unwrap();
    t.map_aliased_memory_region(alias(paging), 0x1000_0000, MIB2 + KIB4, MA::Writeback)
        .unwrap();
    t.mmu().take_log();
}

/// Both modes, each fresh and installed.
fn fixtures<R: Regime>() -> impl Iterator<Item = (PagingType, Table<R>)> {
    [PagingType::Paging3Level, PagingType::Paging4Level]
        .into_iter()
        .flat_map(|paging| [false, true].map(|live| (paging, fixture::<R>(paging, live))))
}

/// Everything observable about a table.
#[derive(Debug, PartialEq, Eq)]
struct Snapshot {
    root: u64,
    pages: Vec<(u64, Vec<u8>)>,
    live: usize,
    regions: Vec<MappedRegion>,
}

fn snapshot<R: Regime>(t: &Table<R>) -> Snapshot {
    let pool = t.allocator();
    Snapshot {
        root: t.root(),
        pages: pool.live().map(|pa| (pa, pool.page(pa).unwrap().to_vec())).collect(),
        live: pool.live_pages(),
        regions: t.regions().collect(),
    }
}

/// The table is as `before`, nothing leaked, nothing freed twice, no TLB maintenance or barrier.
fn assert_unchanged<R: Regime>(t: &Table<R>, before: &Snapshot) {
    let after = snapshot(t);
    assert!(after == *before, "table changed:\nbefore {before:x?}\nafter {after:x?}");
    assert_eq!(t.allocator().live_pages(), t.table_pages(), "a page leaked");
    assert_eq!(t.allocator().bad_frees(), 0);
    assert_eq!(t.mmu().log(), vec![], "TLB maintenance or barrier on a failed call");
}

/// `va`/`size` is a bad range: every entry point fails with `error` and changes nothing.
fn assert_bad_range<R: Regime>(t: &mut Table<R>, va: u64, size: u64, error: PtError) {
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

#[test]
fn unaligned_address_is_unaligned_address() {
    unaligned_address_is_unaligned_address_in::<El1>();
    unaligned_address_is_unaligned_address_in::<El2>();
}

fn unaligned_address_is_unaligned_address_in<R: Regime>() {
    for (paging, mut t) in fixtures::<R>() {
        for va in [0x1, 0x800, 0x40_0FFF, 0x60_0010, alias(paging) + 8] {
            assert_bad_range(&mut t, va, KIB4, PtError::UnalignedAddress);
        }
    }
}

#[test]
fn unaligned_size_is_unaligned_memory_range() {
    unaligned_size_is_unaligned_memory_range_in::<El1>();
    unaligned_size_is_unaligned_memory_range_in::<El2>();
}

fn unaligned_size_is_unaligned_memory_range_in<R: Regime>() {
    for (_, mut t) in fixtures::<R>() {
        for size in [0x1, 0xFFF, 0x1001, MIB2 + 0x800, u64::MAX] {
            assert_bad_range(&mut t, 0, size, PtError::UnalignedMemoryRange);
        }
    }
}

#[test]
fn size_zero_is_invalid_memory_range() {
    size_zero_is_invalid_memory_range_in::<El1>();
    size_zero_is_invalid_memory_range_in::<El2>();
}

fn size_zero_is_invalid_memory_range_in<R: Regime>() {
    for (paging, mut t) in fixtures::<R>() {
        for va in [0, 0x40_0000, 0x60_0000, alias(paging)] {
            assert_bad_range(&mut t, va, 0, PtError::InvalidMemoryRange);
        }
        // Size 0 is checked before alignment.
        assert_bad_range(&mut t, 0x123, 0, PtError::InvalidMemoryRange);
    }
}

#[test]
fn address_plus_size_overflowing_2_pow_64_is_addition_overflow() {
    address_plus_size_overflowing_2_pow_64_is_addition_overflow_in::<El1>();
    address_plus_size_overflowing_2_pow_64_is_addition_overflow_in::<El2>();
}

fn address_plus_size_overflowing_2_pow_64_is_addition_overflow_in<R: Regime>() {
    for (paging, mut t) in fixtures::<R>() {
        assert_bad_range(&mut t, 0xFFFF_FFFF_FFFF_F000, 2 * KIB4, PtError::AdditionOverflow);
        assert_bad_range(&mut t, 2 * KIB4, 0xFFFF_FFFF_FFFF_F000, PtError::AdditionOverflow);
        assert_bad_range(&mut t, alias(paging), 0xFFFF_FFFF_FFFF_F000, PtError::AdditionOverflow);
    }
}

#[test]
fn beyond_the_va_size_is_invalid_memory_range() {
    beyond_the_va_size_is_invalid_memory_range_in::<El1>();
    beyond_the_va_size_is_invalid_memory_range_in::<El2>();
}

fn beyond_the_va_size_is_invalid_memory_range_in<R: Regime>() {
    for (paging, mut t) in fixtures::<R>() {
        let end = 1u64 << va_bits(paging);
        assert_bad_range(&mut t, end, KIB4, PtError::InvalidMemoryRange);
        assert_bad_range(&mut t, end - KIB4, 2 * KIB4, PtError::InvalidMemoryRange);
        assert_bad_range(&mut t, end - GIB, GIB + MIB2, PtError::InvalidMemoryRange);
        assert_bad_range(&mut t, 0, end + KIB4, PtError::InvalidMemoryRange);
        assert_bad_range(&mut t, 1 << 48, KIB4, PtError::InvalidMemoryRange);
        // Control: the last page of the space maps (aliased, the VA is no PA for 4 levels).
        t.map_aliased_memory_region(end - KIB4, 0x5000, KIB4, MA::Writeback)
            .unwrap();
        assert_eq!(t.translate(end - KIB4 + 0x10), Some((0x5010, MA::Writeback)));
    }
    // Control: what 3 levels reject, 4 levels map.
    let mut t = fixture::<R>(PagingType::Paging4Level, false);
    t.map_aliased_memory_region(1 << 39, 0x6000, KIB4, MA::Uncached)
        .unwrap();
    assert_eq!(t.query_memory_region(1 << 39, KIB4), Ok(MA::Uncached));
}

#[test]
fn upper_bits_set_ttbr1_addresses_are_invalid_memory_range() {
    upper_bits_set_ttbr1_addresses_are_invalid_memory_range_in::<El1>();
    upper_bits_set_ttbr1_addresses_are_invalid_memory_range_in::<El2>();
}

fn upper_bits_set_ttbr1_addresses_are_invalid_memory_range_in<R: Regime>() {
    for (_, mut t) in fixtures::<R>() {
        for va in [
            0xFFFF_FFFF_FFFF_F000, // the last TTBR1 page
            0xFFFF_8000_0000_0000, // 48-bit TTBR1 start
            0xFFFF_FF80_0000_0000, // 39-bit TTBR1 start
            0x8000_0000_0000_0000,
            0x0080_0000_0000_0000, // bit 55 alone selects TTBR1
            0xFF00_0000_0000_0000, // a top-byte tag (TBI0 = 0: not ignored)
            0x1234_5678_9ABC_D000,
        ] {
            assert_bad_range(&mut t, va, KIB4, PtError::InvalidMemoryRange);
        }
    }
}

/// `attributes` are bad for a map: map, aliased map (and the transaction form) fail with
/// `error`; nothing changes. With `for_protect`, protect fails the same way.
fn assert_bad_attributes<R: Regime>(t: &mut Table<R>, attributes: MA, error: PtError, for_protect: bool) {
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
    let want = Err((Some(1), error));
    let mut txn = t.transaction();
    txn.protect(0x40_0000, KIB4, MA::ReadOnly)
        .map(0x60_0000, KIB4, attributes);
    assert_eq!(txn.plan().map(drop).map_err(|e| e.code()), want, "plan {what}");
    assert_eq!(txn.commit().map(drop).map_err(|e| e.code()), want, "commit {what}");
    if for_protect {
        assert_eq!(
            t.protect_memory_region(0, KIB4, attributes),
            Err(error),
            "protect {what}"
        );
        txn = t.transaction();
        txn.protect(0x40_0000, KIB4, MA::ReadOnly).protect(0, KIB4, attributes);
        assert_eq!(
            txn.commit().map(drop).map_err(|e| e.code()),
            want,
            "commit protect {what}"
        );
    }
    assert_unchanged(t, &before);
}

#[test]
fn map_without_a_cache_attribute_is_incompatible_memory_attributes() {
    map_without_a_cache_attribute_is_incompatible_memory_attributes_in::<El1>();
    map_without_a_cache_attribute_is_incompatible_memory_attributes_in::<El2>();
}

fn map_without_a_cache_attribute_is_incompatible_memory_attributes_in<R: Regime>() {
    for (_, mut t) in fixtures::<R>() {
        for attributes in [
            MA::empty(),
            MA::ReadOnly,
            MA::ExecuteProtect,
            MA::ReadProtect | MA::ExecuteProtect | MA::ReadOnly,
        ] {
            assert_bad_attributes(&mut t, attributes, PtError::IncompatibleMemoryAttributes, false);
        }
        // Control: a protect may leave the cache type out, and keeps it.
        t.protect_memory_region(0x40_0000, KIB4, MA::ReadOnly).unwrap();
        assert_eq!(t.query_memory_region(0x40_0000, KIB4), Ok(MA::Uncached | MA::ReadOnly));
    }
}

#[test]
fn more_than_one_cache_attribute_is_incompatible_memory_attributes() {
    more_than_one_cache_attribute_is_incompatible_memory_attributes_in::<El1>();
    more_than_one_cache_attribute_is_incompatible_memory_attributes_in::<El2>();
}

fn more_than_one_cache_attribute_is_incompatible_memory_attributes_in<R: Regime>() {
    for (_, mut t) in fixtures::<R>() {
        for attributes in [
            MA::Uncached | MA::Writeback,
            MA::WriteCombining | MA::WriteThrough,
            MA::Writeback | MA::WriteProtect | MA::ReadOnly,
            MA::UncachedExport | MA::Uncached | MA::ExecuteProtect,
            MA::CacheAttributesMask,
        ] {
            assert_bad_attributes(&mut t, attributes, PtError::IncompatibleMemoryAttributes, true);
        }
    }
}

#[test]
fn unknown_attribute_bits_are_invalid_parameter() {
    unknown_attribute_bits_are_invalid_parameter_in::<El1>();
    unknown_attribute_bits_are_invalid_parameter_in::<El2>();
}

fn unknown_attribute_bits_are_invalid_parameter_in<R: Regime>() {
    for (_, mut t) in fixtures::<R>() {
        // Unknown bits are reported before a wrong number of cache attributes.
        for bits in [
            0x8000,
            0x8000 | MA::Writeback.bits(),
            0x20 | MA::Uncached.bits(),
            0x1_0000 | MA::Uncached.bits() | MA::Writeback.bits(),
            1 << 63 | MA::Writeback.bits(),
            0x4_0000,
        ] {
            assert_bad_attributes(&mut t, MA::from_bits_retain(bits), PtError::InvalidParameter, true);
        }
    }
}

/// `va`/`size` is well formed but not (fully) mapped: unmap and protect fail with NoMapping.
fn assert_not_mapped<R: Regime>(t: &mut Table<R>, va: u64, size: u64) {
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
    unmapping_or_protecting_what_is_not_mapped_is_no_mapping_in::<El1>();
    unmapping_or_protecting_what_is_not_mapped_is_no_mapping_in::<El2>();
}

fn unmapping_or_protecting_what_is_not_mapped_is_no_mapping_in<R: Regime>() {
    for (paging, mut t) in fixtures::<R>() {
        let a = alias(paging);
        // Fully unmapped: inside an empty L3 table, an empty L2 slot, an empty L1 slot.
        assert_not_mapped(&mut t, 0x40_3000, KIB4);
        assert_not_mapped(&mut t, 0x60_0000, MIB2);
        assert_not_mapped(&mut t, 0x1_0000_0000, GIB);
        assert_not_mapped(&mut t, (1 << va_bits(paging)) - KIB4, KIB4);
        // Partly: pages then nothing, a block then nothing, nothing then pages, a hole in
        // the middle, the alias past its end.
        assert_not_mapped(&mut t, 0x40_2000, 2 * KIB4);
        assert_not_mapped(&mut t, 0x20_0000, 0x40_0000);
        assert_not_mapped(&mut t, 0x100_0000 - KIB4, 2 * KIB4);
        assert_not_mapped(&mut t, 0x40_0000, 0xC0_2000);
        assert_not_mapped(&mut t, 0, 0x80_0000);
        assert_not_mapped(&mut t, a + MIB2, 2 * KIB4);
        assert_not_mapped(&mut t, a - KIB4, 2 * KIB4);
    }
}

/// An aliased map of `pa` fails with `error` and changes nothing.
fn assert_bad_physical<R: Regime>(t: &mut Table<R>, pa: u64, size: u64, error: PtError) {
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
    aliased_pa_unaligned_is_unaligned_page_base_in::<El1>();
    aliased_pa_unaligned_is_unaligned_page_base_in::<El2>();
}

fn aliased_pa_unaligned_is_unaligned_page_base_in<R: Regime>() {
    for (_, mut t) in fixtures::<R>() {
        for pa in [0x1, 0x800, 0x1000_0FFF, (1u64 << 48) - 8] {
            assert_bad_physical(&mut t, pa, KIB4, PtError::UnalignedPageBase);
        }
    }
}

#[test]
fn aliased_pa_beyond_48_bits_is_invalid_memory_range() {
    aliased_pa_beyond_48_bits_is_invalid_memory_range_in::<El1>();
    aliased_pa_beyond_48_bits_is_invalid_memory_range_in::<El2>();
}

fn aliased_pa_beyond_48_bits_is_invalid_memory_range_in<R: Regime>() {
    for (_, mut t) in fixtures::<R>() {
        assert_bad_physical(&mut t, 1 << 48, KIB4, PtError::InvalidMemoryRange);
        assert_bad_physical(&mut t, (1 << 48) - KIB4, 2 * KIB4, PtError::InvalidMemoryRange);
        assert_bad_physical(&mut t, (1 << 48) - GIB, GIB + MIB2, PtError::InvalidMemoryRange);
        assert_bad_physical(&mut t, 1 << 52, KIB4, PtError::InvalidMemoryRange);
        assert_bad_physical(&mut t, 0x8000_0000_0000_0000, MIB2, PtError::InvalidMemoryRange);
        assert_bad_physical(&mut t, 0xFFFF_FFFF_FFFF_F000, 2 * KIB4, PtError::AdditionOverflow);
        // Control: the last 4 KiB below 2^48 maps and translates.
        t.map_aliased_memory_region(0x60_0000, (1 << 48) - KIB4, KIB4, MA::Writeback)
            .unwrap();
        assert_eq!(t.translate(0x60_0123), Some(((1 << 48) - KIB4 + 0x123, MA::Writeback)));
    }
}

#[test]
fn query_of_partly_unmapped_is_no_mapping_and_of_mixed_is_non_uniform() {
    query_of_partly_unmapped_is_no_mapping_and_of_mixed_is_non_uniform_in::<El1>();
    query_of_partly_unmapped_is_no_mapping_and_of_mixed_is_non_uniform_in::<El2>();
}

fn query_of_partly_unmapped_is_no_mapping_and_of_mixed_is_non_uniform_in<R: Regime>() {
    for (paging, t) in fixtures::<R>() {
        let before = snapshot(&t);
        let a = alias(paging);
        assert_eq!(t.query_memory_region(0x40_2000, 2 * KIB4), Err(PtError::NoMapping));
        assert_eq!(t.query_memory_region(0x60_0000, KIB4), Err(PtError::NoMapping));
        assert_eq!(t.query_memory_region(a + MIB2, 2 * KIB4), Err(PtError::NoMapping));
        // Mixed and partly unmapped: NoMapping wins.
        assert_eq!(t.query_memory_region(0x3F_F000, 0x5000), Err(PtError::NoMapping));
        // Mixed, all mapped.
        assert_eq!(
            t.query_memory_region(0x3F_F000, 0x4000),
            Err(PtError::NonUniformMemoryAttributes)
        );
        // Controls: exactly what was mapped, device memory without ExecuteProtect included.
        assert_eq!(t.query_memory_region(0, 0x40_0000), Ok(MA::Writeback));
        assert_eq!(
            t.query_memory_region(0x40_0000, 0x3000),
            Ok(MA::Uncached | MA::ExecuteProtect)
        );
        assert_eq!(t.query_memory_region(a, MIB2 + KIB4), Ok(MA::Writeback));
        assert_unchanged(&t, &before);
    }
}

/// A transaction built and committed on a table.
type Commit<R> = dyn Fn(&mut Table<R>) -> Result<(), (Option<usize>, PtError)>;

#[test]
fn transaction_whose_third_op_is_bad_reports_op_2_and_applies_nothing() {
    transaction_whose_third_op_is_bad_reports_op_2_and_applies_nothing_in::<El1>();
    transaction_whose_third_op_is_bad_reports_op_2_and_applies_nothing_in::<El2>();
}

fn transaction_whose_third_op_is_bad_reports_op_2_and_applies_nothing_in<R: Regime>() {
    for (_, mut t) in fixtures::<R>() {
        let before = snapshot(&t);
        let cases: [(PtError, &Commit<R>); 3] = [
            (PtError::UnalignedAddress, &|t| {
                t.transaction()
                    .map(0x60_0000, MIB2, MA::Uncached)
                    .protect(0, KIB4, MA::ReadOnly)
                    .map(0x1001, KIB4, MA::Writeback)
                    .commit()
                    .map(drop)
                    .map_err(|e| e.code())
            }),
            (PtError::NoMapping, &|t| {
                t.transaction()
                    .map(0x60_0000, MIB2, MA::Uncached)
                    .unmap(0, KIB4)
                    .protect(0x80_0000, KIB4, MA::ReadOnly)
                    .map(0x100_0000, KIB4, MA::Writeback)
                    .commit()
                    .map(drop)
                    .map_err(|e| e.code())
            }),
            (PtError::IncompatibleMemoryAttributes, &|t| {
                t.transaction()
                    .map(0x60_0000, MIB2, MA::Uncached)
                    .unmap(0, KIB4)
                    .map(0x80_0000, KIB4, MA::ReadOnly)
                    .commit()
                    .map(drop)
                    .map_err(|e| e.code())
            }),
        ];
        for (error, run) in cases {
            assert_eq!(run(&mut t), Err((Some(2), error)));
            assert_unchanged(&t, &before);
        }
    }
}

#[test]
fn allocation_failure_is_out_of_resources_and_gives_every_page_back() {
    allocation_failure_in::<El1>();
    allocation_failure_in::<El2>();
}

fn allocation_failure_in<R: Regime>() {
    for paging in [PagingType::Paging3Level, PagingType::Paging4Level] {
        let config = Aarch64Config::default();
        let mut pool = PagePool::new(64);
        let root = {
            let mut t =
                Aarch64PageTable::with_regime(&mut pool, paging, config, RecordingMmu::new(), R::default()).unwrap();
            fill(&mut t, paging);
            t.into_page_table_root()
        };
        // An empty top-level slot (4 levels: L1, L2, L3 tables; 3 levels: L2, L3) plus a
        // split: fail each allocation of the commit. The table opened with from_existing
        // is live, so this is a phased commit that must not even issue a barrier.
        let far = if paging == PagingType::Paging4Level {
            1 << 40
        } else {
            1 << 33
        };
        let needed = if paging == PagingType::Paging4Level { 4 } else { 3 };
        for nth in 0..needed {
            let image = pool.image().to_vec();
            let live = pool.live_pages();
            pool.fail_at(Some(pool.allocations() + nth));
            // SAFETY: `root` is the root of the table built above in `pool`, untouched since.
            let mut t = unsafe {
                Aarch64PageTable::from_existing_with_regime(
                    root,
                    &mut pool,
                    paging,
                    config,
                    RecordingMmu::new(),
                    R::default(),
                )
            }
            .unwrap();
            assert!(t.tables().is_live());
            let result = t
                .transaction()
                .protect(0x1000, KIB4, MA::ReadOnly)
                .map(far, 2 * KIB4, MA::Writeback)
                .commit()
                .map(drop)
                .map_err(|e| e.code());
            assert_eq!(result, Err((None, PtError::OutOfResources)), "allocation {nth} fails");
            assert_eq!(t.mmu().log(), vec![]);
            drop(t);
            pool.fail_at(None);
            assert_eq!(pool.live_pages(), live, "every page given back");
            assert_eq!(pool.bad_frees(), 0);
            assert!(pool.image() == image.as_slice(), "table bytes unchanged");
        }
        // Control: without the failure it commits (the split of the first block included).
        // SAFETY: as above.
        let mut t = unsafe {
            Aarch64PageTable::from_existing_with_regime(
                root,
                &mut pool,
                paging,
                config,
                RecordingMmu::new(),
                R::default(),
            )
        }
        .unwrap();
        let live = t.allocator().live_pages();
        t.transaction()
            .protect(0x1000, KIB4, MA::ReadOnly)
            .map(far, 2 * KIB4, MA::Writeback)
            .commit()
            .unwrap();
        assert_eq!(t.allocator().live_pages(), live + needed);
    }
}

#[test]
fn unsupported_paging_types_are_rejected() {
    let config = Aarch64Config::default();
    assert_eq!(
        Aarch64PageTable::with_mmu(PagePool::new(4), PagingType::Paging5Level, config, RecordingMmu::new()).err(),
        Some(PtError::UnsupportedPagingType)
    );
    let mut pool = PagePool::new(4);
    let page = pool.allocate_page(KIB4, KIB4).unwrap();
    // SAFETY: the paging type is rejected before the root is looked at.
    let opened = unsafe {
        Aarch64PageTable::from_existing_with_mmu(page, &mut pool, PagingType::Paging5Level, config, RecordingMmu::new())
    };
    assert_eq!(opened.err(), Some(PtError::UnsupportedPagingType));
    // SAFETY: the misaligned root is rejected before it is dereferenced.
    let opened = unsafe {
        Aarch64PageTable::from_existing_with_mmu(
            page + 8,
            &mut pool,
            PagingType::Paging4Level,
            config,
            RecordingMmu::new(),
        )
    };
    assert_eq!(opened.err(), Some(PtError::UnalignedPageBase));
    // Nor EL2 tables.
    assert_eq!(
        Aarch64PageTable::with_regime(
            PagePool::new(4),
            PagingType::Paging5Level,
            config,
            RecordingMmu::new(),
            El2
        )
        .err(),
        Some(PtError::UnsupportedPagingType)
    );
    // X64 has no 3-level mode.
    assert_eq!(
        X64PageTable::with_mmu(
            PagePool::new(4),
            PagingType::Paging3Level,
            X64Config { one_gib_pages: true },
            RecordingMmu::new()
        )
        .err(),
        Some(PtError::UnsupportedPagingType)
    );
}
