//! Hostile and corrupted tables opened with the plain `from_existing*`: a cycle, a shared
//! subtree, reserved bits, a reserved encoding where a leaf or a table must be, are refused
//! at open with a clear error, never a panic or a loop; a well-formed table this crate
//! built (ReadProtect pages included) opens and every read API, the audit and a transaction
//! work on it.

use txpaging::aarch64::{El1, El2, Regime};
use txpaging::{
    Aarch64Config, Aarch64PageTable, MemoryAttributes as MA, PagePool, PageTable, PagingType, PtError, RecordingMmu,
    X64Config, X64PageTable,
};

const KIB4: u64 = 0x1000;
const ADDRESS: u64 = 0x000F_FFFF_FFFF_F000;

fn set(table: u64, index: u64, raw: u64) {
    // SAFETY: `table` is a table page of a `PagePool::new` pool (physical == host address),
    // alive for the test, and nothing else uses the table meanwhile.
    unsafe { std::ptr::write_volatile((table + 8 * index) as *mut u64, raw) }
}

fn get(table: u64, index: u64) -> u64 {
    // SAFETY: as in `set`.
    unsafe { std::ptr::read_volatile((table + 8 * index) as *const u64) }
}

/// An X64 4-level table: 0..2 MiB as 4 KiB pages (one with ReadProtect), 1 GiB..+2 MiB as
/// a 2 MiB page. Returns the pool and the root.
fn x64_image() -> (PagePool, u64) {
    let mut pool = PagePool::new(16);
    let root = {
        let mut t = X64PageTable::with_mmu(
            &mut pool,
            PagingType::Paging4Level,
            X64Config::default(),
            RecordingMmu::new(),
        )
        .unwrap();
        t.map_memory_region(0, 0x20_0000, MA::Writeback | MA::ExecuteProtect)
            .unwrap();
        t.protect_memory_region(0, KIB4, MA::ReadProtect).unwrap();
        t.map_memory_region(0x4000_0000, 0x20_0000, MA::Uncached | MA::ExecuteProtect)
            .unwrap();
        t.into_page_table_root()
    };
    (pool, root)
}

fn x64_open(pool: &mut PagePool, root: u64) -> Result<X64PageTable<&mut PagePool, RecordingMmu>, PtError> {
    // SAFETY: `root` and every table page reachable from it lie in `pool`, alive and unused.
    unsafe {
        X64PageTable::from_existing_with_mmu(
            root,
            pool,
            PagingType::Paging4Level,
            X64Config::default(),
            RecordingMmu::new(),
        )
    }
}

#[test]
fn x64_a_well_formed_table_opens_and_every_read_and_a_transaction_work() {
    let (mut pool, root) = x64_image();
    let mut t = x64_open(&mut pool, root).unwrap();
    assert_eq!(
        t.query_memory_region(KIB4, KIB4),
        Ok(MA::Writeback | MA::ExecuteProtect)
    );
    assert_eq!(t.regions().count(), 3);
    let mut dump = String::new();
    t.dump_to(&mut dump, 0, 0x20_0000).unwrap();
    assert!(t.audit(&[]).executable_mmio.is_empty());
    t.transaction()
        .protect(KIB4, KIB4, MA::ReadOnly)
        .unmap(0x4000_0000, 0x20_0000)
        .commit()
        .unwrap();
}

#[test]
fn x64_an_entry_pointing_at_its_own_table_is_refused() {
    let (mut pool, root) = x64_image();
    set(root, 5, root | 0x3); // PML4[5] -> the PML4 itself: a cycle
    assert_eq!(x64_open(&mut pool, root).err(), Some(PtError::InvalidParameter));
}

#[test]
fn x64_an_entry_pointing_at_an_ancestor_is_refused() {
    let (mut pool, root) = x64_image();
    let pdpt = get(root, 0) & ADDRESS;
    let pd = get(pdpt, 0) & ADDRESS;
    set(pd, 7, pdpt | 0x3); // PD[7] -> the PDPT above it
    assert_eq!(x64_open(&mut pool, root).err(), Some(PtError::InvalidParameter));
}

#[test]
fn x64_a_subtree_shared_by_two_entries_is_refused() {
    let (mut pool, root) = x64_image();
    set(root, 9, get(root, 0));
    assert_eq!(x64_open(&mut pool, root).err(), Some(PtError::InvalidParameter));
}

#[test]
fn x64_reserved_bits_are_refused() {
    // PS in a PML4E (SDM 4.5.4, table 4-15: reserved): a leaf where a table must be.
    let (mut pool, root) = x64_image();
    set(root, 0, get(root, 0) | 0x80);
    assert_eq!(x64_open(&mut pool, root).err(), Some(PtError::InvalidParameter));
    // Bits 20:13 of a 2 MiB page's address (table 4-19).
    let (mut pool, root) = x64_image();
    let pdpt = get(root, 0) & ADDRESS;
    let pd = get(pdpt, 1) & ADDRESS;
    set(pd, 0, get(pd, 0) | 0x2000);
    assert_eq!(x64_open(&mut pool, root).err(), Some(PtError::InvalidParameter));
}

#[test]
fn x64_a_one_gib_page_where_the_configuration_has_none_is_refused() {
    let (mut pool, root) = x64_image();
    let pdpt = get(root, 0) & ADDRESS;
    set(pdpt, 3, 0xC000_0000 | 0x83);
    // SAFETY: as in `x64_open`.
    let opened = unsafe {
        X64PageTable::from_existing_with_mmu(
            root,
            &mut pool,
            PagingType::Paging4Level,
            X64Config { one_gib_pages: false },
            RecordingMmu::new(),
        )
    };
    assert_eq!(opened.err(), Some(PtError::InvalidParameter));
    assert!(x64_open(&mut pool, root).is_ok(), "accepted where 1 GiB pages are on");
}

/// An AArch64 4-level table of regime `R`, built as the X64 one.
fn a64_image<R: Regime>() -> (PagePool, u64) {
    let mut pool = PagePool::new(16);
    let root = {
        let mut t = Aarch64PageTable::with_regime(
            &mut pool,
            PagingType::Paging4Level,
            Aarch64Config::default(),
            RecordingMmu::new(),
            R::default(),
        )
        .unwrap();
        t.map_memory_region(0, 0x20_0000, MA::Writeback | MA::ExecuteProtect)
            .unwrap();
        t.protect_memory_region(0, KIB4, MA::ReadProtect).unwrap();
        t.map_memory_region(0x4000_0000, 0x20_0000, MA::Uncached | MA::ExecuteProtect)
            .unwrap();
        t.into_page_table_root()
    };
    (pool, root)
}

fn a64_open<R: Regime>(
    pool: &mut PagePool,
    root: u64,
) -> Result<Aarch64PageTable<&mut PagePool, RecordingMmu, R>, PtError> {
    // SAFETY: `root` and every table page reachable from it lie in `pool`, alive and unused.
    unsafe {
        Aarch64PageTable::from_existing_with_regime(
            root,
            pool,
            PagingType::Paging4Level,
            Aarch64Config::default(),
            RecordingMmu::new(),
            R::default(),
        )
    }
}

/// Breaks the table given its root and its first L1 table.
type Corruption = fn(u64, u64);

fn aarch64_cases<R: Regime>() {
    // Well formed (txpaging's own ReadProtect and forced-XN software bits included).
    let (mut pool, root) = a64_image::<R>();
    {
        let mut t = a64_open::<R>(&mut pool, root).unwrap();
        assert_eq!(
            t.query_memory_region(KIB4, KIB4),
            Ok(MA::Writeback | MA::ExecuteProtect)
        );
        assert_eq!(t.regions().count(), 3);
        let mut dump = String::new();
        t.dump_to(&mut dump, 0, 0x20_0000).unwrap();
        assert!(t.audit(&[]).executable_mmio.is_empty());
        t.install_page_table().unwrap();
        t.transaction()
            .protect(KIB4, KIB4, MA::ReadOnly)
            .unmap(0x4000_0000, 0x20_0000)
            .commit()
            .unwrap();
    }
    let l1 = |root: u64| get(root, 0) & 0x0000_FFFF_FFFF_F000;
    let corrupt: [(&str, Corruption); 5] = [
        ("L0 entry pointing at the L0 table (cycle)", |root, _| {
            set(root, 5, root | 0x3)
        }),
        ("L2 entry pointing at the L1 table above (cycle)", |_, l1| {
            let l2 = get(l1, 0) & 0x0000_FFFF_FFFF_F000;
            set(l2, 9, l1 | 0x3)
        }),
        ("two L0 entries sharing one L1 table", |root, _| {
            set(root, 9, get(root, 0))
        }),
        ("block descriptor at L0 (a leaf where a table must be)", |root, _| {
            set(root, 1, 0x80_0000_0000 | 0x401)
        }),
        ("0b01 at L3 (reserved)", |_, l1| {
            let l2 = get(l1, 0) & 0x0000_FFFF_FFFF_F000;
            let l3 = get(l2, 0) & 0x0000_FFFF_FFFF_F000;
            set(l3, 3, (get(l3, 3) & !0x3) | 0x1)
        }),
    ];
    for (what, break_it) in corrupt {
        let (mut pool, root) = a64_image::<R>();
        break_it(root, l1(root));
        assert_eq!(
            a64_open::<R>(&mut pool, root).err(),
            Some(PtError::InvalidParameter),
            "{what}"
        );
    }
}

#[test]
fn aarch64_el1_hostile_tables_are_refused_at_open_and_good_ones_work() {
    aarch64_cases::<El1>();
}

#[test]
fn aarch64_el2_hostile_tables_are_refused_at_open_and_good_ones_work() {
    aarch64_cases::<El2>();
}
