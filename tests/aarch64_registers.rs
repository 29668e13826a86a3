//! What the AArch64 backend asks the MMU to do: the register values an install programs
//! (MAIR_EL1, TCR_EL1, TTBR0_EL1, field by field, from the Arm ARM register descriptions),
//! the TLBI operand, the break-before-make classification of descriptor changes (Arm ARM
//! D8.14.1, rule R_WHZWS) and the barrier sequence of commits on an installed table.

use txpaging::aarch64::encoding::{tlbi_va_operand, Aarch64Codec, MAIR_LAYOUT};
use txpaging::{
    AArch64PageTable, Aarch64Config, Aarch64PageTable, Barrier, Codec, InstallRequest, MemoryAttributes as MA, MmuOp,
    PagePool, PageTable, PagingType, RecordingMmu,
};

const KIB4: u64 = 0x1000;
const MIB2: u64 = 0x20_0000;

fn table(paging: PagingType, config: Aarch64Config) -> Aarch64PageTable<PagePool, RecordingMmu> {
    Aarch64PageTable::with_mmu(PagePool::new(64), paging, config, RecordingMmu::new()).unwrap()
}

/// `value[high:low]`.
fn field(value: u64, high: u32, low: u32) -> u64 {
    (value >> low) & ((1u64 << (high - low + 1)) - 1)
}

fn installed(t: &Aarch64PageTable<PagePool, RecordingMmu>) -> (u64, u64, u64) {
    t.mmu().take_log();
    t.install_page_table().unwrap();
    match t.mmu().take_log()[..] {
        [MmuOp::Install(InstallRequest::Aarch64 { mair, tcr, ttbr0 })] => (mair, tcr, ttbr0),
        ref other => panic!("install logged {other:x?}"),
    }
}

#[test]
fn install_programs_mair_tcr_and_ttbr0_field_by_field() {
    for (paging, va_bits) in [(PagingType::Paging4Level, 48), (PagingType::Paging3Level, 39)] {
        let t = table(paging, Aarch64Config::default());
        assert!(!t.tables().is_live(), "a new table is not live");
        let (mair, tcr, ttbr0) = installed(&t);
        assert!(t.tables().is_live(), "installing makes it live");

        // MAIR_EL1: Attr0..Attr7, one byte each.
        let attr = |i: u32| field(mair, 8 * i + 7, 8 * i) as u8;
        assert_eq!(attr(0), 0x00, "Attr0 Device-nGnRnE (Uncached)");
        assert_eq!(attr(1), 0x00, "Attr1 Device-nGnRnE (UncachedExport)");
        assert_eq!(attr(2), 0x44, "Attr2 Normal inner/outer Non-cacheable (WriteCombining)");
        assert_eq!(attr(3), 0xBB, "Attr3 Normal WT non-transient RA WA (WriteThrough)");
        assert_eq!(attr(4), 0xFF, "Attr4 Normal WB non-transient RA WA (Writeback)");
        assert_eq!(attr(5), 0xAA, "Attr5 Normal WT non-transient RA, no WA (WriteProtect)");
        assert_eq!((attr(6), attr(7)), (0x00, 0x00), "unused: Device-nGnRnE");
        assert_eq!(mair, MAIR_LAYOUT);

        // TCR_EL1.
        assert_eq!(field(tcr, 5, 0), 64 - va_bits, "T0SZ");
        assert_eq!(field(tcr, 7, 7), 0, "EPD0: TTBR0 walks on");
        assert_eq!(field(tcr, 9, 8), 0b01, "IRGN0: Write-Back read/write-allocate");
        assert_eq!(field(tcr, 11, 10), 0b01, "ORGN0: Write-Back read/write-allocate");
        assert_eq!(field(tcr, 13, 12), 0b11, "SH0: Inner Shareable");
        assert_eq!(field(tcr, 15, 14), 0b00, "TG0: 4 KiB");
        assert_eq!(field(tcr, 21, 16), 64 - va_bits, "T1SZ (unused, valid)");
        assert_eq!(field(tcr, 22, 22), 0, "A1: ASID from TTBR0");
        assert_eq!(field(tcr, 23, 23), 1, "EPD1: TTBR1 walks off");
        assert_eq!(field(tcr, 29, 24), 0, "IRGN1, ORGN1, SH1 (unused)");
        assert_eq!(field(tcr, 31, 30), 0b10, "TG1: 4 KiB (TG1 encoding)");
        assert_eq!(field(tcr, 34, 32), 0b101, "IPS: 48 bits");
        assert_eq!(field(tcr, 35, 35), 0, "RES0");
        assert_eq!(field(tcr, 36, 36), 0, "AS: 8-bit ASID");
        assert_eq!(field(tcr, 38, 37), 0, "TBI0, TBI1: top byte checked");
        assert_eq!(field(tcr, 63, 39), 0, "HA, HD and later fields off");

        // TTBR0_EL1: BADDR = the root, ASID 0, CnP 0.
        assert_eq!(ttbr0, t.root());
        assert_eq!(field(ttbr0, 63, 48), 0, "ASID");
        assert_eq!(ttbr0 % KIB4, 0, "BADDR aligned, CnP clear");
        assert_eq!(t.install_request(), InstallRequest::Aarch64 { mair, tcr, ttbr0 });
    }
}

#[test]
fn ips_follows_the_configured_pa_range_capped_at_48_bits() {
    for (pa_range, ips) in [
        (0b0000, 0b000),
        (0b0010, 0b010),
        (0b0101, 0b101),
        (0b0110, 0b101),
        (0b1111, 0b101),
    ] {
        let config = Aarch64Config {
            pa_range,
            ..Aarch64Config::default()
        };
        let (_, tcr, _) = installed(&table(PagingType::Paging4Level, config));
        assert_eq!(field(tcr, 34, 32), ips, "PARange {pa_range:#06b}");
    }
    // On the host, detection assumes 48 bits and 1 GiB blocks.
    assert_eq!(Aarch64Config::detect(), Aarch64Config::default());
    assert_eq!(Aarch64Config::default().pa_range, 0b0101);
}

#[test]
fn geometry_is_ttbr0_with_48_bit_output_addresses() {
    for (paging, levels, one_gib, max_leaf) in [
        (PagingType::Paging4Level, 4, true, 2),
        (PagingType::Paging3Level, 3, true, 2),
        (PagingType::Paging4Level, 4, false, 1),
    ] {
        let config = Aarch64Config {
            one_gib_blocks: one_gib,
            ..Aarch64Config::default()
        };
        let g = table(paging, config).tables().geometry();
        assert_eq!(
            (g.levels, g.max_leaf_level, g.sign_extended, g.pa_bits),
            (levels, max_leaf, false, 48)
        );
    }
    const { assert!(<Aarch64Codec as Codec>::USES_BARRIERS) };
    assert_eq!(<Aarch64Codec as Codec>::PAGE_INVALIDATION_LIMIT, 512);
}

#[test]
fn tlbi_operand_is_va_55_12_in_bits_43_0_whatever_the_level() {
    assert_eq!(tlbi_va_operand(0x0000_1234_5678_9000), 0x1_2345_6789);
    assert_eq!(tlbi_va_operand(0x0000_0000_0020_0000), 0x200);
    assert_eq!(tlbi_va_operand(0x0000_FFFF_FFFF_F000), 0xF_FFFF_FFFF);
    // Bits 63:56 never reach the ASID or TTL fields.
    assert_eq!(tlbi_va_operand(0xFFFF_FFFF_FFFF_F000), 0xFFF_FFFF_FFFF);
    assert_eq!(tlbi_va_operand(0x0000_0000_0000_0FFF), 0);
}

// Descriptor fields from the manual, for hand-built descriptors.
const VALID: u64 = 1;
const PAGE: u64 = 0b11;
const BLOCK: u64 = 0b01;
const TABLE: u64 = 0b11;
const AF: u64 = 1 << 10;
const SH_INNER: u64 = 0b11 << 8;
const AP_RO: u64 = 1 << 7;
const NG: u64 = 1 << 11;
const DBM: u64 = 1 << 51;
const CONTIGUOUS: u64 = 1 << 52;
const PXN: u64 = 1 << 53;
const UXN: u64 = 1 << 54;
const ATTR_WB: u64 = 4 << 2;
const ATTR_DEVICE: u64 = 0;

fn needs_break(old: u64, new: u64, level: u8) -> bool {
    <Aarch64Codec as Codec>::needs_break(old, new, level)
}

#[test]
fn permission_access_flag_and_software_changes_need_no_break() {
    let page = 0x4000_0000 | ATTR_WB | SH_INNER | AF | PAGE;
    for change in [AP_RO, PXN | UXN, PXN, UXN, AF, DBM, 1 << 55, 1 << 56, 0xF << 55] {
        assert!(!needs_break(page, page ^ change, 0), "set {change:#x}");
        assert!(
            !needs_break(page | change, (page | change) ^ change, 0),
            "clear {change:#x}"
        );
    }
    assert!(!needs_break(page, page | NG, 0), "nG 0 -> 1");
    assert!(!needs_break(page, page, 0), "no change");
    // A break is a store of an invalid descriptor: storing one needs none, nor does a store
    // over an invalid one (including a ReadProtect leaf the walker ignores).
    assert!(!needs_break(page, 0, 0));
    assert!(!needs_break(page, page & !VALID | 1 << 55, 0));
    assert!(!needs_break(page & !VALID | 1 << 55, page, 0));
}

#[test]
fn address_type_shareability_size_and_global_changes_need_a_break() {
    let page = 0x4000_0000 | ATTR_WB | SH_INNER | AF | PAGE;
    assert!(needs_break(page, page + KIB4, 0), "output address");
    assert!(
        needs_break(page, page & !(7 << 2) | ATTR_DEVICE | 1 << 2, 0),
        "AttrIndx"
    );
    assert!(needs_break(page, page & !(7 << 2) | ATTR_DEVICE, 0), "AttrIndx to 0");
    assert!(needs_break(page, page & !SH_INNER | 0b10 << 8, 0), "SH");
    assert!(needs_break(page, page | CONTIGUOUS, 0), "contiguous bit");
    assert!(needs_break(page | NG, page, 0), "nG 1 -> 0");
    let block = 0x4000_0000 | ATTR_WB | SH_INNER | AF | BLOCK;
    let table = 0x8000_1000 | TABLE;
    assert!(needs_break(block, table, 1), "block -> table (split)");
    assert!(needs_break(table, block, 1), "table -> block (merge)");
    assert!(needs_break(table, table + KIB4, 1), "table pointer moved");
    assert!(needs_break(block, block + MIB2, 1), "block output address");
    assert!(!needs_break(block, block | AP_RO | PXN | UXN, 1), "block permissions");
}

#[test]
fn encoded_changes_break_exactly_where_the_memory_type_or_address_changes() {
    let encode = |pa, attributes, level| <Aarch64Codec as Codec>::encode_leaf(pa, attributes, level);
    let wb = encode(0x4000_0000, MA::Writeback, 1);
    assert!(!needs_break(
        wb,
        encode(0x4000_0000, MA::Writeback | MA::ReadOnly, 1),
        1
    ));
    assert!(!needs_break(
        wb,
        encode(0x4000_0000, MA::Writeback | MA::ExecuteProtect, 1),
        1
    ));
    assert!(needs_break(wb, encode(0x4000_0000, MA::WriteThrough, 1), 1));
    assert!(needs_break(wb, encode(0x4020_0000, MA::Writeback, 1), 1));
    // Device memory is execute-never either way: adding ExecuteProtect changes only the
    // software record of it.
    let uc = encode(0x900_0000, MA::Uncached, 0);
    assert!(!needs_break(
        uc,
        encode(0x900_0000, MA::Uncached | MA::ExecuteProtect, 0),
        0
    ));
    assert!(needs_break(uc, encode(0x900_0000, MA::UncachedExport, 0), 0));
}

#[test]
fn commits_on_an_installed_table_are_barriered_and_a_split_breaks_first() {
    let mut t: AArch64PageTable<PagePool, RecordingMmu> = table(PagingType::Paging4Level, Aarch64Config::default());
    t.map_memory_region(0, 2 * MIB2, MA::Writeback).unwrap();
    // Not installed: nobody walks it, so no barriers at all.
    assert!(t.mmu().log().iter().all(|op| !matches!(op, MmuOp::Barrier(_))));
    installed(&t);

    // A permission change in place: no break, one batch, then the ISB.
    let report = t.transaction().protect(0, MIB2, MA::ReadOnly).commit().unwrap();
    assert_eq!(report.breaks, 0);
    let log = t.mmu().take_log();
    assert_eq!(log.first(), Some(&MmuOp::Barrier(Barrier::Stores)));
    assert_eq!(
        log[log.len() - 2..],
        [
            MmuOp::Barrier(Barrier::Invalidations),
            MmuOp::Barrier(Barrier::Instructions)
        ]
    );
    assert!(log[1..log.len() - 2]
        .iter()
        .all(|op| matches!(op, MmuOp::InvalidatePage(va) if *va < MIB2)));

    // Splitting the second block: break it (store invalid, DSB ISHST, TLBI the block,
    // DSB ISH), then link the table that keeps its translations, then the final barriers.
    let report = t
        .transaction()
        .protect(MIB2, KIB4, MA::ExecuteProtect | MA::Writeback)
        .commit()
        .unwrap();
    assert_eq!((report.breaks, report.tables_allocated), (1, 1));
    let log = t.mmu().take_log();
    let stores: Vec<usize> = (0..log.len())
        .filter(|&i| log[i] == MmuOp::Barrier(Barrier::Stores))
        .collect();
    assert_eq!(stores.len(), 2, "{log:x?}");
    let broken = &log[stores[0] + 1..stores[1]];
    assert!(broken
        .iter()
        .any(|op| matches!(op, MmuOp::InvalidatePage(va) if (MIB2..2 * MIB2).contains(va))));
    assert_eq!(broken.last(), Some(&MmuOp::Barrier(Barrier::Invalidations)));
    assert_eq!(log.last(), Some(&MmuOp::Barrier(Barrier::Instructions)));
    assert_eq!(
        t.query_memory_region(MIB2, KIB4),
        Ok(MA::Writeback | MA::ExecuteProtect)
    );
    assert_eq!(t.query_memory_region(MIB2 + KIB4, MIB2 - KIB4), Ok(MA::Writeback));
}

#[test]
fn opening_an_existing_table_treats_it_as_live() {
    let mut pool = PagePool::new(16);
    let root = {
        let mut t = Aarch64PageTable::with_mmu(
            &mut pool,
            PagingType::Paging3Level,
            Aarch64Config::default(),
            RecordingMmu::new(),
        )
        .unwrap();
        t.map_memory_region(0, MIB2, MA::Writeback).unwrap();
        t.into_page_table_root()
    };
    // SAFETY: `root` is the table built above in `pool`, untouched since.
    let mut t = unsafe {
        Aarch64PageTable::from_existing_with_mmu(
            root,
            &mut pool,
            PagingType::Paging3Level,
            Aarch64Config::default(),
            RecordingMmu::new(),
        )
    }
    .unwrap();
    assert!(t.tables().is_live());
    assert_eq!(t.query_memory_region(0, MIB2), Ok(MA::Writeback));
    t.map_memory_region(0, MIB2, MA::Uncached).unwrap();
    let log = t.mmu().log();
    assert_eq!(log.first(), Some(&MmuOp::Barrier(Barrier::Stores)), "{log:x?}");
    assert_eq!(log.last(), Some(&MmuOp::Barrier(Barrier::Instructions)));
}

// ------------------------------------------------------------------------------------------
// The EL2 regime (HCR_EL2.E2H = 0)
// ------------------------------------------------------------------------------------------

/// An EL2 install programs MAIR_EL2 (the same layout), TCR_EL2 field by field from its own
/// register description (PS at 18:16, RES1 bits 31 and 23, no TTBR1 fields) and TTBR0_EL2.
#[test]
fn el2_install_programs_mair_tcr_el2_and_ttbr0_el2_field_by_field() {
    use txpaging::aarch64::{tcr_el2, El2};
    for (paging, va_bits) in [(PagingType::Paging4Level, 48), (PagingType::Paging3Level, 39)] {
        for (pa_range, ps) in [(0b000u8, 0b000u64), (0b010, 0b010), (0b101, 0b101), (0b110, 0b101)] {
            let config = Aarch64Config {
                pa_range,
                ..Aarch64Config::default()
            };
            let t = Aarch64PageTable::with_regime(PagePool::new(4), paging, config, RecordingMmu::new(), El2).unwrap();
            assert_eq!(t.regime(), "EL2");
            t.install_page_table().unwrap();
            let [MmuOp::Install(InstallRequest::Aarch64El2 { mair, tcr, ttbr0 })] = t.mmu().take_log()[..] else {
                panic!("not an EL2 install")
            };
            assert!(t.is_live());
            assert_eq!(mair, MAIR_LAYOUT, "MAIR_EL2: the same layout as MAIR_EL1");
            assert_eq!(ttbr0, t.root(), "TTBR0_EL2: BADDR, CnP 0 (no ASID at EL2)");
            assert_eq!(field(tcr, 5, 0), 64 - va_bits, "T0SZ");
            assert_eq!(field(tcr, 7, 6), 0, "RES0");
            assert_eq!(field(tcr, 9, 8), 0b01, "IRGN0");
            assert_eq!(field(tcr, 11, 10), 0b01, "ORGN0");
            assert_eq!(field(tcr, 13, 12), 0b11, "SH0");
            assert_eq!(field(tcr, 15, 14), 0b00, "TG0: 4 KiB");
            assert_eq!(field(tcr, 18, 16), ps, "PS: PARange capped at 48 bits");
            assert_eq!(field(tcr, 19, 19), 0, "RES0");
            assert_eq!(field(tcr, 22, 20), 0, "TBI, HA, HD off");
            assert_eq!(field(tcr, 23, 23), 1, "RES1");
            assert_eq!(field(tcr, 30, 24), 0, "HPD, HWU, later fields off");
            assert_eq!(field(tcr, 31, 31), 1, "RES1");
            assert_eq!(field(tcr, 63, 32), 0, "RES0 / later fields off");
            assert_eq!(tcr, tcr_el2(va_bits as u32, pa_range));
        }
    }
    // AAVMF programs the same TCR_EL2 at EL2 (48-bit VA and PA).
    assert_eq!(tcr_el2(48, 0b101), 0x8085_3510);
}

/// EL2 leaves: XN at bit 54 alone (bit 53 RES0), AP[1] set (RES1), nG clear (RES0); the rest
/// as at EL1&0.
#[test]
fn el2_leaf_encoding_differs_only_in_the_regime_bits() {
    use txpaging::aarch64::El2;
    let el1 = |pa, a, level| <Aarch64Codec as Codec>::encode_leaf(pa, a, level);
    let el2 = |pa, a, level| <Aarch64Codec<El2> as Codec>::encode_leaf(pa, a, level);
    for cache in [
        MA::Uncached,
        MA::WriteCombining,
        MA::WriteThrough,
        MA::Writeback,
        MA::UncachedExport,
        MA::WriteProtect,
    ] {
        for access in 0..8u64 {
            let mut a = cache;
            a.set(MA::ReadOnly, access & 1 != 0);
            a.set(MA::ExecuteProtect, access & 2 != 0);
            a.set(MA::ReadProtect, access & 4 != 0);
            for level in 0..3 {
                let pa = 0x4000_0000;
                let (one, two) = (el1(pa, a, level), el2(pa, a, level));
                let xn = one & (1 << 54) != 0;
                assert_eq!(one & (1 << 53) != 0, xn, "EL1&0: PXN == UXN");
                assert_eq!(two & (1 << 53), 0, "EL2: bit 53 RES0 ({a:?})");
                assert_eq!(two & (1 << 54) != 0, xn, "EL2: XN where EL1&0 has UXN ({a:?})");
                assert_eq!(two & (1 << 6), 1 << 6, "EL2: AP[1] RES1 ({a:?})");
                assert_eq!(two & (1 << 11), 0, "EL2: nG RES0");
                assert_eq!(
                    one & !(3 << 53),
                    (two & !(1 << 54 | 1 << 6)),
                    "the rest is the same ({a:?})"
                );
                assert_eq!(
                    <Aarch64Codec<El2> as Codec>::decode(two, level),
                    <Aarch64Codec as Codec>::decode(one, level)
                );
            }
        }
    }
}
