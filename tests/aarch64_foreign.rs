//! Tables someone else built: `aarch64::foreign::existing_regions` reads them under the MAIR
//! in force (AAVMF's 0xffbb4400 here, not ours), and `from_existing_with_mair` adopts one in
//! place only when txpaging reads every descriptor as the hardware does.
//!
//! The foreign tables are written here descriptor by descriptor from the Arm ARM (D8.3
//! descriptor formats, D8.4 access permissions and hierarchical permissions), never with
//! the library's encoding.

use txpaging::aarch64::foreign::{cache_of_mair_byte, existing_regions, table_of_registers, DEFAULT_MAX_TABLE_PAGES};
use txpaging::aarch64::{El1, El2, ForeignTableError, Regime, MAIR_LAYOUT};
use txpaging::{
    Aarch64Config, Aarch64PageTable, InstallRequest, MappedRegion, MemoryAttributes as MA, PageAllocator, PagePool,
    PageTable, PagingType, PtError, RecordingMmu,
};

const KIB4: u64 = 0x1000;
const MIB2: u64 = 0x20_0000;
const GIB: u64 = 0x4000_0000;

/// AAVMF's MAIR_EL1 / MAIR_EL2 at entry: Attr0 Device-nGnRnE, Attr1 Normal NC, Attr2 Normal
/// WT, Attr3 Normal WB (docs: /work/shared/reference/firmware.md).
const AAVMF_MAIR: u64 = 0xffbb_4400;

// Descriptor bits (Arm ARM D8.3).
const TABLE: u64 = 0b11; // table (L0-L2) or page (L3)
const BLOCK: u64 = 0b01;
const AP1: u64 = 1 << 6;
const AP2_RO: u64 = 1 << 7;
const SH_INNER: u64 = 3 << 8;
const AF: u64 = 1 << 10;
const NG: u64 = 1 << 11;
const PXN: u64 = 1 << 53;
const UXN_OR_XN: u64 = 1 << 54;
const AP_TABLE_RO: u64 = 1 << 62;
const PXN_TABLE: u64 = 1 << 59;
const XN_TABLE: u64 = 1 << 60;

fn attr(index: u64) -> u64 {
    index << 2
}

/// A foreign table under construction: pages from a `PagePool` (PA = host address),
/// descriptors written raw.
struct Foreign {
    pool: PagePool,
    root: u64,
}

impl Foreign {
    fn new() -> Self {
        let mut pool = PagePool::new(64);
        let root = pool.allocate_page(KIB4, KIB4).unwrap();
        Self { pool, root }
    }

    fn page(&mut self) -> u64 {
        self.pool.allocate_page(KIB4, KIB4).unwrap()
    }

    fn set(&self, table: u64, index: u64, raw: u64) {
        assert!(index < 512);
        // SAFETY: `table` is a zeroed 4 KiB page of `self.pool` (PA = host address), alive
        // as long as `self`; nothing else accesses it.
        unsafe { std::ptr::write_volatile((table + 8 * index) as *mut u64, raw) }
    }

    fn regions<R: Regime>(&self, regime: R, mair: u64) -> Result<Vec<MappedRegion>, ForeignTableError> {
        // SAFETY: every table page is a page of `self.pool`, reached at its PA.
        unsafe {
            existing_regions(
                regime,
                self.root,
                PagingType::Paging4Level,
                mair,
                &self.pool,
                DEFAULT_MAX_TABLE_PAGES,
            )
        }
    }
}

/// An AAVMF-like EL1&0 identity table (4 levels), written under AAVMF's MAIR:
/// - flash at 0: a 2 MiB block, Normal WB (AttrIndx 3), read-only, executable;
/// - UART at 0x0900_0000: a page, Device (AttrIndx 0), UXN | PXN;
/// - 2 MiB at 0x1000_0000: Normal NC (AttrIndx 1), PXN | UXN;
/// - RAM 0x4000_0000..0x8000_0000: a 1 GiB block WB, UXN only (EL1 may execute);
/// - RAM 0x8000_0000 + 2 MiB of pages: WB, page 1 read-only by AP[2], page 2 PXN;
/// - 0xC000_0000: an L2 table with APTable[1] (no write) and PXNTable above a WT block.
fn aavmf_like() -> (Foreign, Vec<MappedRegion>) {
    let mut f = Foreign::new();
    let l1 = f.page();
    let l2_low = f.page();
    let l3_uart = f.page();
    let l2_ram = f.page();
    let l3_ram = f.page();
    let l2_restricted = f.page();
    f.set(f.root, 0, l1 | TABLE);
    // L1[0] -> L2 for the first GiB.
    f.set(l1, 0, l2_low | TABLE);
    f.set(l2_low, 0, BLOCK | attr(3) | AP2_RO | SH_INNER | AF); // flash, 2 MiB
    f.set(l2_low, 0x0900_0000 / MIB2, l3_uart | TABLE);
    f.set(l3_uart, 0, TABLE | attr(0) | AF | PXN | UXN_OR_XN | 0x0900_0000);
    f.set(
        l2_low,
        0x1000_0000 / MIB2,
        BLOCK | attr(1) | SH_INNER | AF | PXN | UXN_OR_XN | 0x1000_0000,
    );
    // L1[1]: 1 GiB block of RAM, UXN only.
    f.set(l1, 1, BLOCK | attr(3) | SH_INNER | AF | UXN_OR_XN | GIB);
    // L1[2] -> L2 -> L3 with three pages.
    f.set(l1, 2, l2_ram | TABLE);
    f.set(l2_ram, 0, l3_ram | TABLE);
    f.set(l3_ram, 0, TABLE | attr(3) | SH_INNER | AF | 0x8000_0000);
    f.set(l3_ram, 1, TABLE | attr(3) | SH_INNER | AF | AP2_RO | 0x8000_1000);
    f.set(
        l3_ram,
        2,
        TABLE | attr(3) | SH_INNER | AF | PXN | UXN_OR_XN | 0x8000_2000,
    );
    // L1[3] -> L2 under APTable[1] and PXNTable: a WT block, read-only and execute-never.
    f.set(l1, 3, l2_restricted | TABLE | AP_TABLE_RO | PXN_TABLE);
    f.set(l2_restricted, 0, BLOCK | attr(2) | SH_INNER | AF | 0xC000_0000);
    let r = |va: u64, size, attributes| MappedRegion {
        va,
        pa: va,
        size,
        attributes,
    };
    let want = vec![
        r(0, MIB2, MA::Writeback | MA::ReadOnly),
        r(0x0900_0000, KIB4, MA::Uncached | MA::ExecuteProtect),
        r(0x1000_0000, MIB2, MA::WriteCombining | MA::ExecuteProtect),
        // The 1 GiB block and the first page after it merge: same attributes, contiguous.
        r(GIB, GIB + KIB4, MA::Writeback),
        r(0x8000_1000, KIB4, MA::Writeback | MA::ReadOnly),
        r(0x8000_2000, KIB4, MA::Writeback | MA::ExecuteProtect),
        r(0xC000_0000, MIB2, MA::WriteThrough | MA::ReadOnly | MA::ExecuteProtect),
    ];
    (f, want)
}

#[test]
fn aavmf_table_reads_under_aavmf_mair() {
    let (f, want) = aavmf_like();
    assert_eq!(f.regions(El1, AAVMF_MAIR), Ok(want));
}

#[test]
fn the_same_table_reads_differently_under_our_mair() {
    // AttrIndx 3 is Write-Back for AAVMF, Write-Through for txpaging: reading a foreign table
    // with the wrong MAIR changes memory types. Index 1 is Device under ours.
    let (f, want) = aavmf_like();
    let ours = f.regions(El1, MAIR_LAYOUT).unwrap();
    assert_ne!(ours, want);
    assert_eq!(ours[0].attributes, MA::WriteThrough | MA::ReadOnly);
}

#[test]
fn regions_mapped_into_a_new_table_are_re_encoded_under_our_mair() {
    let (f, want) = aavmf_like();
    let regions = f.regions(El1, AAVMF_MAIR).unwrap();
    let mut t = Aarch64PageTable::with_mmu(
        PagePool::new(64),
        PagingType::Paging4Level,
        Aarch64Config::default(),
        RecordingMmu::new(),
    )
    .unwrap();
    let mut txn = t.transaction();
    for r in &regions {
        txn.map_aliased(r.va, r.pa, r.size, r.attributes);
    }
    txn.commit().unwrap();
    assert_eq!(t.regions().collect::<Vec<_>>(), want);
    // The flash block is Write-Back under MAIR_LAYOUT: AttrIndx 4, byte 0xFF.
    let l0 = t.tables().read_entry(t.root(), 0) & 0x0000_FFFF_FFFF_F000;
    let l1 = t.tables().read_entry(l0, 0) & 0x0000_FFFF_FFFF_F000;
    let flash = t.tables().read_entry(l1, 0);
    let index = (flash >> 2) & 7;
    assert_eq!((MAIR_LAYOUT >> (8 * index)) & 0xFF, 0xFF, "flash {flash:#x}");
    let InstallRequest::Aarch64 { mair, .. } = t.install_request() else {
        panic!()
    };
    assert_eq!(mair, MAIR_LAYOUT);
}

#[test]
fn el2_reads_xn_from_bit_54_and_xntable_from_bit_60() {
    let mut f = Foreign::new();
    let l1 = f.page();
    let l2 = f.page();
    f.set(f.root, 0, l1 | TABLE);
    // EL2 leaves: AP[1] RES1 set; XN is bit 54; bit 53 RES0.
    f.set(l1, 1, BLOCK | attr(3) | AP1 | SH_INNER | AF | GIB); // executable
    f.set(l1, 2, BLOCK | attr(3) | AP1 | SH_INNER | AF | UXN_OR_XN | (2 * GIB)); // XN
    f.set(l1, 3, l2 | TABLE | XN_TABLE); // XNTable
    f.set(l2, 0, BLOCK | attr(0) | AP1 | AP2_RO | AF | (3 * GIB));
    let got = f.regions(El2, AAVMF_MAIR).unwrap();
    let r = |va: u64, size, attributes| MappedRegion {
        va,
        pa: va,
        size,
        attributes,
    };
    assert_eq!(
        got,
        vec![
            r(GIB, GIB, MA::Writeback),
            r(2 * GIB, GIB, MA::Writeback | MA::ExecuteProtect),
            r(3 * GIB, MIB2, MA::Uncached | MA::ReadOnly | MA::ExecuteProtect),
        ]
    );
    // The same bits read as EL1&0: bit 54 is UXN (EL0 only), bit 60 UXNTable: executable.
    let el1 = f.regions(El1, AAVMF_MAIR).unwrap();
    assert!(
        el1.iter().all(|r| !r.attributes.contains(MA::ExecuteProtect)),
        "{el1:x?}"
    );
}

#[test]
fn a_memory_type_without_equivalent_names_the_va_and_the_index() {
    for (byte, what) in [
        (0x04u64, "Device-nGnRE"),
        (0x0C, "Device-GRE"),
        (0xEE, "WB no write-allocate"),
        (0xF0, "tagged"),
    ] {
        assert_eq!(cache_of_mair_byte(byte as u8), None, "{what}");
        let (f, _) = aavmf_like();
        // AttrIndx 0 (the UART page) selects `byte`.
        let mair = (AAVMF_MAIR & !0xFF) | byte;
        let err = f.regions(El1, mair).unwrap_err();
        assert_eq!(
            err,
            ForeignTableError::UnknownMemoryType {
                va: 0x0900_0000,
                index: 0,
                mair_byte: byte as u8
            },
            "{what}"
        );
        let text = err.to_string();
        assert!(
            text.contains("0x0000000009000000") && text.contains("AttrIndx 0"),
            "{text}"
        );
    }
}

#[test]
fn reserved_encodings_and_cleared_access_flags_are_refused() {
    // A block descriptor at L0.
    let f = Foreign::new();
    f.set(f.root, 1, BLOCK | attr(3) | AF | (512 * GIB));
    match f.regions(El1, AAVMF_MAIR) {
        Err(ForeignTableError::Descriptor { va, level: 0, rule, .. }) => {
            assert_eq!(va, 512 * GIB);
            assert!(rule.contains("block descriptor at L0"), "{rule}");
        }
        other => panic!("{other:x?}"),
    }
    // 0b01 at L3.
    let mut f = Foreign::new();
    let (l1, l2, l3) = (f.page(), f.page(), f.page());
    f.set(f.root, 0, l1 | TABLE);
    f.set(l1, 0, l2 | TABLE);
    f.set(l2, 0, l3 | TABLE);
    f.set(l3, 5, BLOCK | attr(3) | AF | 0x5000);
    let err = f.regions(El1, AAVMF_MAIR).unwrap_err();
    assert!(
        matches!(
            err,
            ForeignTableError::Descriptor {
                va: 0x5000,
                level: 3,
                ..
            }
        ),
        "{err:x?}"
    );
    assert!(err.to_string().contains("reserved"), "{err}");
    // AF = 0.
    f.set(l3, 5, TABLE | attr(3) | 0x5000);
    let err = f.regions(El1, AAVMF_MAIR).unwrap_err();
    assert!(
        matches!(
            err,
            ForeignTableError::Descriptor {
                va: 0x5000,
                level: 3,
                ..
            }
        ) && err.to_string().contains("AF = 0"),
        "{err}"
    );
    // Invalid descriptors are skipped whatever their other bits.
    f.set(l3, 5, 0xFFFF_FFFF_FFFF_FFFE);
    assert_eq!(f.regions(El1, AAVMF_MAIR), Ok(vec![]));
}

#[test]
fn a_table_pointing_at_itself_or_an_ancestor_is_a_loop() {
    // The root's entry 3 points at the root.
    let mut f = Foreign::new();
    f.set(f.root, 3, f.root | TABLE);
    assert_eq!(
        f.regions(El1, AAVMF_MAIR),
        Err(ForeignTableError::TableLoop {
            va: 3 * 512 * GIB,
            level: 0,
            table: f.root
        })
    );
    // An L2 table whose entry points at its L1 parent.
    let (l1, l2) = (f.page(), f.page());
    f.set(f.root, 3, 0);
    f.set(f.root, 1, l1 | TABLE);
    f.set(l1, 4, l2 | TABLE);
    f.set(l2, 7, l1 | TABLE);
    let err = f.regions(El1, AAVMF_MAIR).unwrap_err();
    assert_eq!(
        err,
        ForeignTableError::TableLoop {
            va: 512 * GIB + 4 * GIB + 7 * MIB2,
            level: 2,
            table: l1
        }
    );
    assert!(err.to_string().contains("loops"), "{err}");
    // A table pointing at itself.
    f.set(l2, 7, l2 | TABLE);
    assert!(matches!(
        f.regions(El1, AAVMF_MAIR),
        Err(ForeignTableError::TableLoop { level: 2, .. })
    ));
}

#[test]
fn the_walk_reads_a_bounded_number_of_table_pages() {
    // Every L1 entry points at the same L2 table and every L2 entry at the same L3 table:
    // no loop, but 1 + 1 + 512 + 512 * 512 table visits.
    let mut f = Foreign::new();
    let (l1, l2, l3) = (f.page(), f.page(), f.page());
    f.set(f.root, 0, l1 | TABLE);
    for i in 0..512 {
        f.set(l1, i, l2 | TABLE);
        f.set(l2, i, l3 | TABLE);
    }
    f.set(l3, 0, TABLE | attr(3) | AF);
    // SAFETY: as in `Foreign::regions`.
    let got = unsafe { existing_regions(El1, f.root, PagingType::Paging4Level, AAVMF_MAIR, &f.pool, 1000) };
    assert_eq!(got, Err(ForeignTableError::TooManyTables { limit: 1000 }));
    assert!(got.unwrap_err().to_string().contains("1000"));
}

#[test]
fn a_shared_table_is_readable_but_not_adoptable() {
    let mut f = Foreign::new();
    let (l1, l2) = (f.page(), f.page());
    f.set(f.root, 0, l1 | TABLE);
    f.set(l1, 0, l2 | TABLE);
    f.set(l1, 1, l2 | TABLE);
    f.set(l2, 0, BLOCK | attr(0) | AF | PXN | UXN_OR_XN);
    assert_eq!(f.regions(El1, AAVMF_MAIR).unwrap().len(), 2);
    let err = adopt(&f, El1, AAVMF_MAIR).err().unwrap();
    assert_eq!(
        err,
        ForeignTableError::SharedTable {
            va: GIB,
            level: 1,
            table: l2
        }
    );
}

/// The foreign table's pool lent to an adopted table: reaches its pages, allocates none.
struct Lent<'a>(&'a PagePool);

impl PageAllocator for Lent<'_> {
    fn allocate_page(&mut self, _align: u64, _size: u64) -> Result<u64, PtError> {
        Err(PtError::OutOfResources)
    }

    fn physical_to_pointer(&self, address: u64) -> *mut u8 {
        self.0.physical_to_pointer(address)
    }
}

fn adopt<R: Regime>(
    f: &Foreign,
    regime: R,
    mair: u64,
) -> Result<Aarch64PageTable<Lent<'_>, RecordingMmu, R>, ForeignTableError> {
    // SAFETY: every table page is a page of `f.pool`, reached at its PA; the adopted table
    // is dropped before `f`, and nothing else changes it meanwhile.
    unsafe {
        Aarch64PageTable::from_existing_with_mair(
            f.root,
            Lent(&f.pool),
            PagingType::Paging4Level,
            Aarch64Config::default(),
            RecordingMmu::new(),
            regime,
            mair,
        )
    }
}

#[test]
fn adopting_aavmf_tables_in_place_is_refused_naming_the_index() {
    let (f, _) = aavmf_like();
    let err = adopt(&f, El1, AAVMF_MAIR).err().unwrap();
    // The first leaf: the flash block, AttrIndx 3: WB (0xFF) for AAVMF, WT (0xBB) for us.
    assert_eq!(
        err,
        ForeignTableError::MemoryTypeMismatch {
            va: 0,
            index: 3,
            foreign: 0xFF,
            ours: 0xBB
        }
    );
    assert!(err.to_string().contains("AttrIndx 3"), "{err}");
    assert_eq!(PtError::from(err), PtError::IncompatibleMemoryAttributes);
}

#[test]
fn a_table_whose_indices_agree_is_adopted_and_changes_use_our_layout() {
    // Only AttrIndx 0 (Device-nGnRnE in both MAIRs) in use.
    let mut f = Foreign::new();
    let (l1, l2) = (f.page(), f.page());
    f.set(f.root, 0, l1 | TABLE);
    f.set(l1, 0, l2 | TABLE);
    f.set(
        l2,
        0x48,
        BLOCK | attr(0) | AF | SH_INNER | PXN | UXN_OR_XN | 0x0900_0000,
    );
    let before = f.regions(El1, AAVMF_MAIR).unwrap();
    let mut t = adopt(&f, El1, AAVMF_MAIR).unwrap();
    assert!(t.is_live());
    assert_eq!(t.regions().collect::<Vec<_>>(), before);
    // A change is encoded under MAIR_LAYOUT, which install programs.
    t.map_memory_region(0x0400_0000, MIB2, MA::Writeback).unwrap();
    assert_eq!(t.query_memory_region(0x0400_0000, MIB2), Ok(MA::Writeback));
    let raw = t.tables().read_entry(l2, 0x20);
    assert_eq!((MAIR_LAYOUT >> (8 * ((raw >> 2) & 7))) & 0xFF, 0xFF, "{raw:#x}");
    t.mmu().take_log();
    t.install_page_table().unwrap();
    assert!(matches!(
        t.mmu().take_log()[..],
        [txpaging::MmuOp::Install(InstallRequest::Aarch64 {
            mair: MAIR_LAYOUT,
            ..
        })]
    ));
}

#[test]
fn adoption_refuses_what_txpaging_would_misread() {
    let mut f = Foreign::new();
    let (l1, l2) = (f.page(), f.page());
    f.set(f.root, 0, l1 | TABLE);
    f.set(l1, 0, l2 | TABLE);
    let leaf = BLOCK | attr(0) | AF | PXN | UXN_OR_XN;
    // Table attributes: txpaging reads permissions from leaves alone.
    f.set(l1, 0, l2 | TABLE | AP_TABLE_RO);
    f.set(l2, 0, leaf);
    let err = adopt(&f, El1, AAVMF_MAIR).err().unwrap();
    assert!(err.to_string().contains("APTable"), "{err}");
    f.set(l1, 0, l2 | TABLE);
    // Software bit 55 on an invalid descriptor: txpaging would read a ReadProtect leaf.
    f.set(l2, 1, (1 << 55) | MIB2);
    let err = adopt(&f, El1, AAVMF_MAIR).err().unwrap();
    assert!(
        matches!(err, ForeignTableError::Descriptor { va: MIB2, level: 2, .. }) && err.to_string().contains("bit 55"),
        "{err}"
    );
    f.set(l2, 1, 0);
    // Software bit 56 on a leaf.
    f.set(l2, 0, leaf | (1 << 56));
    assert!(adopt(&f, El1, AAVMF_MAIR).is_err());
    f.set(l2, 0, leaf);
    // nG is dropped by the reading (the re-mapped table is global) but accepted.
    f.set(l2, 0, leaf | NG);
    assert!(adopt(&f, El1, AAVMF_MAIR).is_ok());
}

#[test]
fn a_txpaging_table_is_adopted_back_under_our_mair_at_both_levels() {
    fn round_trip<R: Regime>(regime: R) {
        let mut t = Aarch64PageTable::with_regime(
            PagePool::new(64),
            PagingType::Paging4Level,
            Aarch64Config::default(),
            RecordingMmu::new(),
            regime,
        )
        .unwrap();
        t.map_memory_region(0, 4 * MIB2, MA::Writeback).unwrap();
        t.protect_memory_region(0x1000, KIB4, MA::ReadOnly | MA::ExecuteProtect)
            .unwrap();
        // Device memory is always execute-never in hardware; the foreign reading cannot see
        // txpaging's forced-XN mark, so only an explicit ExecuteProtect reads back alike.
        t.map_memory_region(0x0900_0000, KIB4, MA::Uncached | MA::ExecuteProtect)
            .unwrap();
        t.map_memory_region(GIB, GIB, MA::WriteThrough | MA::ExecuteProtect)
            .unwrap();
        let want: Vec<MappedRegion> = t.regions().collect();
        // SAFETY: the table's pages live in its pool, reached at their PA.
        let got = unsafe {
            existing_regions(
                regime,
                t.root(),
                PagingType::Paging4Level,
                MAIR_LAYOUT,
                t.allocator(),
                DEFAULT_MAX_TABLE_PAGES,
            )
        }
        .unwrap();
        assert_eq!(got, want, "{}", R::NAME);
        // Adopted in place under MAIR_LAYOUT: every index agrees, nothing is misread.
        // SAFETY: as above; the adopted table only reads, and is dropped before `t`.
        let adopted = unsafe {
            Aarch64PageTable::from_existing_with_mair(
                t.root(),
                Lent(t.allocator()),
                PagingType::Paging4Level,
                Aarch64Config::default(),
                RecordingMmu::new(),
                regime,
                MAIR_LAYOUT,
            )
        }
        .unwrap_or_else(|e| panic!("{}: {e}", R::NAME));
        assert_eq!(adopted.regions().collect::<Vec<_>>(), want, "{}", R::NAME);
    }
    round_trip(El1);
    round_trip(El2);
}

#[test]
fn registers_name_the_table_in_use() {
    // AAVMF at EL1 and at EL2 (firmware.md): 48-bit VAs, 4 KiB granule.
    let root = 0x4_7FFF_0000;
    assert_eq!(
        table_of_registers(0x5_8080_3510, root | 0x0001_0000_0000_0000 | 1),
        Ok((root, PagingType::Paging4Level)),
        "TCR_EL1, with an ASID and CnP in TTBR0_EL1"
    );
    assert_eq!(
        table_of_registers(0x8085_3510, root),
        Ok((root, PagingType::Paging4Level))
    );
    assert_eq!(
        table_of_registers(0x8085_3519, root),
        Ok((root, PagingType::Paging3Level))
    );
    for (tcr, what) in [
        (0x8085_3514u64, "T0SZ 20"),
        (0x8085_7510, "TG0 64 KiB"),
        (0x8085_B510, "TG0 16 KiB"),
    ] {
        assert_eq!(
            table_of_registers(tcr, root),
            Err(ForeignTableError::Unsupported(PtError::UnsupportedPagingType)),
            "{what}"
        );
    }
}
