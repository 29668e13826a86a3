//! Errors name the op, the address and the rule: one test per cause, pinning the reason,
//! the first failing address and the exact `Display` text, on X64 and AArch64. The familiar
//! calls keep returning the seed's codes and keep the detail for `last_error()`.

use txpaging::{
    Aarch64Config, Aarch64PageTable, MemoryAttributes as MA, PagePool, PageTable, PagingType, PtError, Reason,
    RecordingMmu, TxnError, X64Config, X64PageTable,
};

const KIB4: u64 = 0x1000;
const MIB2: u64 = 0x20_0000;

type X64 = X64PageTable<PagePool, RecordingMmu>;
type X64Txn<'t> = txpaging::Transaction<'t, txpaging::x64::X64Codec, PagePool, RecordingMmu>;
/// Queues op 1, its range, the code, the reason, the failing address and the text.
type Case = (fn(&mut X64Txn<'_>), (u64, u64), PtError, Reason, u64, &'static str);
type A64 = Aarch64PageTable<PagePool, RecordingMmu>;

fn x64() -> X64 {
    let config = X64Config { one_gib_pages: true };
    X64PageTable::with_mmu(
        PagePool::new(64),
        PagingType::Paging4Level,
        config,
        RecordingMmu::default(),
    )
    .unwrap()
}

fn a64() -> A64 {
    let table = Aarch64PageTable::with_mmu(
        PagePool::new(64),
        PagingType::Paging4Level,
        Aarch64Config::default(),
        RecordingMmu::default(),
    );
    table.unwrap()
}

/// Runs `op` as op 1 of a transaction whose op 0 is fine, on a fresh X64 table.
fn x64_op1(
    queue: impl Fn(&mut txpaging::Transaction<'_, txpaging::x64::X64Codec, PagePool, RecordingMmu>),
) -> TxnError {
    let mut t = x64();
    let mut txn = t.transaction();
    txn.map(0x60_0000, KIB4, MA::Writeback);
    queue(&mut txn);
    let planned = txn.plan().unwrap_err();
    let committed = txn.commit().unwrap_err();
    assert_eq!(planned, committed, "plan and commit report the same error");
    committed
}

/// Checks `error` against op 1 over `range`, `code`, `reason` at `address`, and its text.
fn expect(error: TxnError, range: (u64, u64), code: PtError, reason: Reason, address: u64, text: &str) {
    assert_eq!(
        error,
        TxnError::at(1, code)
            .with_range(range.0, range.1)
            .with_detail(reason, address)
    );
    assert_eq!(reason.code(), Some(code), "the reason's code");
    assert_eq!(error.to_string(), text);
}

#[test]
fn size_zero_is_an_empty_range() {
    let error = x64_op1(|t| {
        t.unmap(0x40_0000, 0);
    });
    expect(
        error,
        (0x40_0000, 0),
        PtError::InvalidMemoryRange,
        Reason::EmptyRange,
        0x40_0000,
        "op 1 (0x400000, size 0x0) failed at 0x400000: invalid memory range: the size is 0",
    );
}

#[test]
fn an_address_at_2_pow_48_is_beyond_the_width() {
    let error = x64_op1(|t| {
        t.map(1 << 48, KIB4, MA::Writeback);
    });
    expect(
        error,
        (1 << 48, KIB4),
        PtError::InvalidMemoryRange,
        Reason::BeyondAddressWidth { va_bits: 48 },
        1 << 48,
        "op 1 (0x1000000000000, size 0x1000) failed at 0x1000000000000: invalid memory range: the address is at or \
         above 2^48, beyond the 48-bit virtual range this table translates",
    );
}

#[test]
fn a_non_canonical_address_says_which_bits_must_match() {
    let error = x64_op1(|t| {
        t.protect(0x0000_8000_0000_0000, KIB4, MA::ReadOnly);
    });
    expect(
        error,
        (0x8000_0000_0000, KIB4),
        PtError::InvalidMemoryRange,
        Reason::NonCanonical { va_bits: 48 },
        0x8000_0000_0000,
        "op 1 (0x800000000000, size 0x1000) failed at 0x800000000000: invalid memory range: the address is not \
         canonical: bits 63..47 must all equal bit 47",
    );
}

#[test]
fn a_range_into_the_canonical_hole_names_where_the_hole_starts() {
    let error = x64_op1(|t| {
        t.unmap(0x7FFF_FFFF_F000, 2 * KIB4);
    });
    expect(
        error,
        (0x7FFF_FFFF_F000, 2 * KIB4),
        PtError::InvalidMemoryRange,
        Reason::CrossesCanonicalHole { va_bits: 48 },
        0x8000_0000_0000,
        "op 1 (0x7ffffffff000, size 0x2000) failed at 0x800000000000: invalid memory range: the range runs from \
         the low half into the non-canonical hole, which starts at 2^47",
    );
}

#[test]
fn an_identity_map_of_a_high_half_address_says_so() {
    let va = 0xFFFF_8000_0000_0000;
    let error = x64_op1(|t| {
        t.map(va, KIB4, MA::Writeback);
    });
    expect(
        error,
        (va, KIB4),
        PtError::InvalidMemoryRange,
        Reason::HighHalfIdentityMap { pa_bits: 52 },
        va,
        "op 1 (0xffff800000000000, size 0x1000) failed at 0xffff800000000000: invalid memory range: an identity map \
         (VA == PA) of a high-half address: as a physical address it is at or above 2^52; map it aliased to a lower \
         physical address",
    );
    // The same high-half VA aliased to a low PA is fine.
    let mut t = x64();
    t.map_aliased_memory_region(va, 0x10_0000, KIB4, MA::Writeback).unwrap();
}

#[test]
fn a_physical_range_beyond_2_pow_52_names_the_first_physical_address_past_it() {
    let pa = (1 << 52) - KIB4;
    let error = x64_op1(|t| {
        t.map_aliased(0x80_0000, pa, 2 * KIB4, MA::Writeback);
    });
    expect(
        error,
        (0x80_0000, 2 * KIB4),
        PtError::InvalidMemoryRange,
        Reason::PhysicalBeyondWidth { pa_bits: 52 },
        1 << 52,
        "op 1 (0x800000, size 0x2000) failed at 0x10000000000000: invalid memory range: the physical range reaches \
         2^52, beyond what an entry holds",
    );
}

#[test]
fn alignment_overflow_and_attribute_errors_name_their_rule() {
    let cases: [Case; 6] = [
        (
            |t| {
                t.map(0x40_0800, KIB4, MA::Writeback);
            },
            (0x40_0800, KIB4),
            PtError::UnalignedAddress,
            Reason::UnalignedAddress,
            0x40_0800,
            "op 1 (0x400800, size 0x1000) failed at 0x400800: address is not page aligned: the address must be a \
             multiple of 4 KiB (0x1000)",
        ),
        (
            |t| {
                t.unmap(0x40_0000, 0x800);
            },
            (0x40_0000, 0x800),
            PtError::UnalignedMemoryRange,
            Reason::UnalignedSize,
            0x40_0000,
            "op 1 (0x400000, size 0x800) failed at 0x400000: size is not a multiple of the page size: the size must \
             be a multiple of 4 KiB (0x1000)",
        ),
        (
            |t| {
                t.unmap(0xFFFF_FFFF_FFFF_F000, 2 * KIB4);
            },
            (0xFFFF_FFFF_FFFF_F000, 2 * KIB4),
            PtError::AdditionOverflow,
            Reason::AddressOverflow,
            0xFFFF_FFFF_FFFF_F000,
            "op 1 (0xfffffffffffff000, size 0x2000) failed at 0xfffffffffffff000: address computation overflows: \
             address + size runs past 2^64",
        ),
        (
            |t| {
                t.map_aliased(0x40_0000, 0x1234, KIB4, MA::Writeback);
            },
            (0x40_0000, KIB4),
            PtError::UnalignedPageBase,
            Reason::UnalignedPhysicalAddress,
            0x1234,
            "op 1 (0x400000, size 0x1000) failed at 0x1234: physical base address is not page aligned: the physical \
             address must be a multiple of 4 KiB (0x1000)",
        ),
        (
            |t| {
                t.map(0x40_0000, KIB4, MA::from_bits_retain(0x8000) | MA::Writeback);
            },
            (0x40_0000, KIB4),
            PtError::InvalidParameter,
            Reason::UnknownAttributeBits { bits: 0x8000 },
            0x40_0000,
            "op 1 (0x400000, size 0x1000) failed at 0x400000: invalid parameter: unknown attribute bits 0x8000: only \
             the UEFI cache and access attributes are accepted",
        ),
        (
            |t| {
                t.protect(0x60_0000, KIB4, MA::Uncached | MA::Writeback);
            },
            (0x60_0000, KIB4),
            PtError::IncompatibleMemoryAttributes,
            Reason::SeveralCacheAttributes,
            0x60_0000,
            "op 1 (0x600000, size 0x1000) failed at 0x600000: incompatible memory attributes: more than one cache \
             attribute: name at most one",
        ),
    ];
    for (queue, range, code, reason, address, text) in cases {
        expect(x64_op1(queue), range, code, reason, address, text);
    }
}

#[test]
fn an_unmap_names_the_first_page_that_is_not_mapped() {
    let mut t = x64();
    t.map_memory_region(0x40_0000, 3 * KIB4, MA::Writeback).unwrap();
    t.map_memory_region(0x40_5000, KIB4, MA::Writeback).unwrap();
    let mut txn = t.transaction();
    txn.map(0x80_0000, KIB4, MA::Writeback)
        .protect(0x40_0000, KIB4, MA::ReadOnly)
        .unmap(0x40_0000, 6 * KIB4);
    let error = txn.commit().unwrap_err();
    assert_eq!(
        error,
        TxnError::at(2, PtError::NoMapping)
            .with_range(0x40_0000, 6 * KIB4)
            .with_detail(Reason::NotMapped, 0x40_3000)
    );
    assert_eq!(
        error.to_string(),
        "op 2 (0x400000, size 0x6000) failed at 0x403000: part of the range is not mapped: nothing is mapped there; \
         unmap and protect need the whole range mapped"
    );
}

#[test]
fn a_protect_of_what_an_earlier_op_unmapped_names_the_first_hole_in_the_table_before_it() {
    // Op 1 unmaps 0x402000; op 2 protects 0x400000..0x404000, and 0x401000 was never mapped:
    // the first page op 2 finds unmapped is 0x401000, not 0x402000.
    let mut t = x64();
    t.map_memory_region(0x40_0000, KIB4, MA::Writeback).unwrap();
    t.map_memory_region(0x40_2000, 2 * KIB4, MA::Writeback).unwrap();
    let error = t
        .transaction()
        .map(0x80_0000, KIB4, MA::Writeback)
        .unmap(0x40_2000, KIB4)
        .protect(0x40_0000, 4 * KIB4, MA::ReadOnly)
        .commit()
        .unwrap_err();
    assert_eq!(
        (error.op, error.reason, error.address),
        (Some(2), Reason::NotMapped, Some(0x40_1000))
    );
    // Without the hole in the table, the page the earlier op unmapped is the first.
    t.map_memory_region(0x40_1000, KIB4, MA::Writeback).unwrap();
    let error = t
        .transaction()
        .unmap(0x40_2000, KIB4)
        .protect(0x40_0000, 4 * KIB4, MA::ReadOnly)
        .commit()
        .unwrap_err();
    assert_eq!(
        (error.op, error.reason, error.address),
        (Some(1), Reason::NotMapped, Some(0x40_2000))
    );
}

#[test]
fn the_familiar_calls_return_the_seed_code_and_keep_the_detail() {
    let mut t = x64();
    assert_eq!(t.last_error(), None);
    assert_eq!(t.unmap_memory_region(0x20_0000, MIB2), Err(PtError::NoMapping));
    assert_eq!(
        t.last_error(),
        Some(
            TxnError::at(0, PtError::NoMapping)
                .with_range(0x20_0000, MIB2)
                .with_detail(Reason::NotMapped, 0x20_0000)
        )
    );
    assert_eq!(
        t.map_memory_region(0, 0, MA::Writeback),
        Err(PtError::InvalidMemoryRange)
    );
    assert_eq!(t.last_error().unwrap().reason, Reason::EmptyRange);
    // A success leaves the last failure in place.
    t.map_memory_region(0, KIB4, MA::Writeback).unwrap();
    assert_eq!(t.last_error().unwrap().reason, Reason::EmptyRange);
}

#[test]
fn aarch64_map_without_a_cache_attribute_says_one_is_required() {
    let mut t = a64();
    assert_eq!(
        t.map_memory_region(0x40_0000, KIB4, MA::ReadOnly | MA::ExecuteProtect),
        Err(PtError::IncompatibleMemoryAttributes)
    );
    let error = t.last_error().unwrap();
    assert_eq!(
        error,
        TxnError::at(0, PtError::IncompatibleMemoryAttributes)
            .with_range(0x40_0000, KIB4)
            .with_detail(Reason::MissingCacheAttribute, 0x40_0000)
    );
    assert_eq!(
        error.to_string(),
        "op 0 (0x400000, size 0x1000) failed at 0x400000: incompatible memory attributes: no cache attribute: \
         AArch64 needs exactly one of Uncached, WriteCombining, WriteThrough or Writeback (or UncachedExport, \
         WriteProtect)"
    );
}

#[test]
fn aarch64_addresses_beyond_the_ttbr0_range_name_its_top() {
    let mut t = a64();
    assert_eq!(
        t.map_memory_region(1 << 48, KIB4, MA::Writeback),
        Err(PtError::InvalidMemoryRange)
    );
    let error = t.last_error().unwrap();
    assert_eq!(
        (error.reason, error.address),
        (Reason::BeyondAddressWidth { va_bits: 48 }, Some(1 << 48))
    );
    // A range that runs past the top fails at the top.
    let top = 1 << 48;
    assert_eq!(
        t.map_memory_region(top - KIB4, 2 * KIB4, MA::Writeback),
        Err(PtError::InvalidMemoryRange)
    );
    let error = t.last_error().unwrap();
    assert_eq!(
        (error.reason, error.address),
        (Reason::BeyondAddressWidth { va_bits: 48 }, Some(top))
    );
    // AArch64 entries hold 48-bit physical addresses.
    let error = t
        .transaction()
        .map_aliased(0x40_0000, 1 << 48, KIB4, MA::Writeback)
        .commit()
        .unwrap_err();
    assert_eq!(
        (error.reason, error.address),
        (Reason::PhysicalBeyondWidth { pa_bits: 48 }, Some(1 << 48))
    );
}

#[test]
fn an_allocator_failure_blames_the_transaction_and_says_so() {
    let mut t = x64();
    let calls = t.allocator().allocations();
    t.allocator_mut().fail_at(Some(calls));
    let error = t
        .transaction()
        .map(0x4000_0000, KIB4, MA::Writeback)
        .commit()
        .unwrap_err();
    assert_eq!(
        error,
        TxnError::whole(PtError::OutOfResources).with_reason(Reason::AllocatorFailed)
    );
    assert_eq!(
        error.to_string(),
        "transaction failed: out of resources: the page allocator gave no table page"
    );
}

#[test]
fn txn_error_debug_prints_addresses_in_hex() {
    let error = TxnError::at(2, PtError::NoMapping)
        .with_range(0x20_0000, 0x2000)
        .with_detail(Reason::NotMapped, 0x20_1000);
    assert_eq!(
        format!("{error:?}"),
        "TxnError { op: Some(2), error: NoMapping, reason: NotMapped, range: Some((0x200000, 0x2000)), \
         address: Some(0x201000) }"
    );
}

/// A failed query names the rule and the first failing address (the seed's
/// `query_memory_region` keeps its code; `query_detail` gives the detail), on both
/// architectures.
#[test]
fn query_detail_names_the_first_failing_page_and_the_rule() {
    let mut x = x64();
    x.map_memory_region(0, 4 * KIB4, MA::Writeback).unwrap();
    x.map_memory_region(2 * KIB4, KIB4, MA::Writeback | MA::ReadOnly)
        .unwrap();
    let mut a = a64();
    a.map_memory_region(0, 4 * KIB4, MA::Writeback).unwrap();
    a.map_memory_region(2 * KIB4, KIB4, MA::Writeback | MA::ReadOnly)
        .unwrap();
    type Query<'a> = Box<dyn Fn(u64, u64) -> (Result<MA, PtError>, Result<MA, TxnError>) + 'a>;
    let queries: [Query<'_>; 2] = [
        Box::new(|at, size| (x.query_memory_region(at, size), x.query_detail(at, size))),
        Box::new(|at, size| (a.query_memory_region(at, size), a.query_detail(at, size))),
    ];
    for query in &queries {
        // Not uniform: the first differing page is named.
        let (code, detail) = query(0, 4 * KIB4);
        assert_eq!(code, Err(PtError::NonUniformMemoryAttributes));
        let detail = detail.unwrap_err();
        assert_eq!(
            (detail.reason, detail.address, detail.range),
            (Reason::AttributesDiffer, Some(2 * KIB4), Some((0, 4 * KIB4)))
        );
        assert_eq!(
            detail.to_string(),
            "query (0x0, size 0x4000) failed at 0x2000: attributes differ across the range: the attributes here \
             differ from those at the start of the range"
        );
        // A hole after the difference: not mapped wins, as for the code.
        let (code, detail) = query(0, 6 * KIB4);
        assert_eq!(code, Err(PtError::NoMapping));
        let detail = detail.unwrap_err();
        assert_eq!(
            (detail.reason, detail.address),
            (Reason::QueriedNotMapped, Some(4 * KIB4))
        );
        assert!(detail
            .to_string()
            .ends_with("nothing is mapped there; a query needs the whole range mapped"));
        // A range error keeps the range checks' reason.
        let (code, detail) = query(0x1000, 0);
        assert_eq!(code, Err(PtError::InvalidMemoryRange));
        assert_eq!(detail.unwrap_err().reason, Reason::EmptyRange);
        // Uniform: both agree.
        assert_eq!(query(0, 2 * KIB4).0, Ok(MA::Writeback));
        assert_eq!(query(0, 2 * KIB4).1, Ok(MA::Writeback));
    }
}
