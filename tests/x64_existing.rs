//! Adopting an X64 table built elsewhere (`X64PageTable::from_existing_with_layout`): the
//! checked walk refuses cycles, shared subtrees, reserved bits and PAT indices whose memory
//! type differs between the layout in force and txpaging's, and reads the rest exactly.

use txpaging::x64::encoding::{A, D, G, NX, P, PAT_4K, PCD, PS, PWT, RW};
use txpaging::x64::existing::{ExistingLayout, ExistingTableError, ExistingTableSummary};
use txpaging::x64::X64Config;
use txpaging::{
    MappedRegion, MemoryAttributes as Attr, PageAllocator, PagingType, PtError, RecordingMmu, X64PageTable,
};

/// Table pages in host memory, addressed by their pointer (as in identity-mapped firmware).
#[derive(Default)]
struct HostPages {
    pages: Vec<Box<Page>>,
}

#[repr(C, align(4096))]
struct Page([u64; 512]);

impl HostPages {
    fn new_table(&mut self) -> u64 {
        let page = Box::new(Page([0; 512]));
        let address = &*page as *const Page as u64;
        self.pages.push(page);
        address
    }

    fn set(&mut self, table: u64, index: usize, raw: u64) {
        let page = self
            .pages
            .iter_mut()
            .find(|p| &***p as *const Page as u64 == table)
            .expect("a table page");
        page.0[index] = raw;
    }
}

impl PageAllocator for HostPages {
    fn allocate_page(&mut self, _align: u64, _size: u64) -> Result<u64, PtError> {
        Ok(self.new_table())
    }
}

/// A 4-level firmware-style table: PML4[0] -> PDPT[0] -> PD with `pd` entries, and one PT
/// under PD[1] holding `pt` entries. Returns (pages, root, pd, pt).
fn firmware_table(pd_entries: &[(usize, u64)], pt_entries: &[(usize, u64)]) -> (HostPages, u64, u64, u64) {
    let mut pages = HostPages::default();
    let root = pages.new_table();
    let pdpt = pages.new_table();
    let pd = pages.new_table();
    let pt = pages.new_table();
    pages.set(root, 0, pdpt | P | RW | A);
    pages.set(pdpt, 0, pd | P | RW | A);
    pages.set(pd, 1, pt | P | RW);
    for &(index, raw) in pd_entries {
        pages.set(pd, index, raw);
    }
    for &(index, raw) in pt_entries {
        pages.set(pt, index, raw);
    }
    (pages, root, pd, pt)
}

type Adopted = (X64PageTable<HostPages, RecordingMmu>, ExistingTableSummary);

/// Adopts the 4-level table at `root` in `pages` under `layout`, with or without 1 GiB pages.
fn adopt_with(
    pages: HostPages,
    root: u64,
    layout: ExistingLayout,
    one_gib_pages: bool,
) -> Result<Adopted, ExistingTableError> {
    // SAFETY: every table page lives in `pages`, identity addressed, and nothing else changes it.
    unsafe {
        X64PageTable::from_existing_with_layout(
            root,
            pages,
            PagingType::Paging4Level,
            X64Config { one_gib_pages },
            RecordingMmu::new(),
            layout,
        )
    }
}

fn adopt(
    pages: HostPages,
    root: u64,
    layout: ExistingLayout,
) -> Result<X64PageTable<HostPages, RecordingMmu>, ExistingTableError> {
    adopt_with(pages, root, layout, true).map(|(table, _)| table)
}

const MIB2: u64 = 0x20_0000;

#[test]
fn firmware_table_under_power_on_pat_reads_exactly() {
    // PD[0]: 2 MiB WB with G, A, D set (bits txpaging never writes); PD[2]: 2 MiB UC (PCD|PWT)
    // and NX; PT: a read-only page and a WT page (PWT).
    let (pages, root, _, _) = firmware_table(
        &[
            (0, P | RW | PS | G | A | D),
            (2, (2 * MIB2) | P | RW | PS | PCD | PWT | NX),
        ],
        &[(0, MIB2 | P | A), (1, (MIB2 + 0x1000) | P | RW | PWT)],
    );
    let table = adopt(pages, root, ExistingLayout::POWER_ON).expect("adopted");
    let regions: Vec<MappedRegion> = table.regions().collect();
    assert_eq!(
        regions,
        [
            MappedRegion {
                va: 0,
                pa: 0,
                size: MIB2,
                attributes: Attr::empty()
            },
            MappedRegion {
                va: MIB2,
                pa: MIB2,
                size: 0x1000,
                attributes: Attr::ReadOnly
            },
            MappedRegion {
                va: MIB2 + 0x1000,
                pa: MIB2 + 0x1000,
                size: 0x1000,
                attributes: Attr::WriteThrough
            },
            MappedRegion {
                va: 2 * MIB2,
                pa: 2 * MIB2,
                size: MIB2,
                attributes: Attr::Uncached | Attr::ExecuteProtect
            },
        ]
    );
}

#[test]
fn summary_counts_tables_leaves_and_global_leaves() {
    let (pages, root, _, _) = firmware_table(&[(0, P | RW | PS | G)], &[(0, MIB2 | P | G), (5, (MIB2 + 0x5000) | P)]);
    let (_, summary) = adopt_with(pages, root, ExistingLayout::POWER_ON, true).expect("adopted");
    assert_eq!((summary.table_pages, summary.leaves, summary.global_leaves), (4, 3, 2));
}

#[test]
fn pat_index_with_another_memory_type_is_refused_with_its_address() {
    // PAT index 7 (PAT|PCD|PWT) is UC at power-on but WC in txpaging's layout.
    let (pages, root, _, _) = firmware_table(&[], &[(3, (MIB2 + 0x3000) | P | RW | PAT_4K | PCD | PWT)]);
    let error = adopt(pages, root, ExistingLayout::POWER_ON).err().expect("refused");
    assert_eq!(
        error,
        ExistingTableError::ForeignMemoryType {
            va: MIB2 + 0x3000,
            index: 7,
            in_force: 0x00,
            ours: 0x01
        }
    );
    assert_eq!(
        error.to_string(),
        "leaf at va 0x203000 uses PAT index 7, memory type UC under the IA32_PAT in force but WC in \
         txpaging's layout: no exact reading"
    );
    assert_eq!(PtError::from(error), PtError::IncompatibleMemoryAttributes);
}

#[test]
fn same_index_is_accepted_under_txpagings_own_layout() {
    let (pages, root, _, _) = firmware_table(&[], &[(3, (MIB2 + 0x3000) | P | RW | PAT_4K | PCD | PWT)]);
    let layout = ExistingLayout {
        pat: txpaging::x64::PAT_LAYOUT,
        max_phys_bits: 52,
    };
    let table = adopt(pages, root, layout).expect("adopted");
    assert_eq!(
        table.translate(MIB2 + 0x3000),
        Some((MIB2 + 0x3000, Attr::WriteCombining))
    );
}

#[test]
fn entry_pointing_at_its_own_table_is_a_cycle() {
    let (mut pages, root, _, _) = firmware_table(&[], &[]);
    pages.set(root, 5, root | P | RW);
    let error = adopt(pages, root, ExistingLayout::POWER_ON).err().expect("refused");
    assert_eq!(
        error,
        ExistingTableError::TableReachedTwice {
            table: root,
            va: 5 << 39,
            level: 3
        }
    );
}

#[test]
fn entry_pointing_at_an_ancestor_is_a_cycle() {
    let (mut pages, root, pd, _) = firmware_table(&[], &[]);
    pages.set(pd, 7, root | P | RW);
    let error = adopt(pages, root, ExistingLayout::POWER_ON).err().expect("refused");
    assert_eq!(
        error,
        ExistingTableError::TableReachedTwice {
            table: root,
            va: 7 * MIB2,
            level: 1
        }
    );
}

#[test]
fn subtree_shared_by_two_entries_is_refused() {
    let (mut pages, root, _, pt) = firmware_table(&[], &[]);
    // PDPT[1] gets its own PD whose entry 0 points at the PT that PD[1] of PDPT[0] holds.
    let pd = pages.new_table();
    let pdpt = {
        let page = &pages.pages[1];
        &**page as *const Page as u64
    };
    pages.set(pdpt, 1, pd | P | RW);
    pages.set(pd, 0, pt | P | RW);
    let error = adopt(pages, root, ExistingLayout::POWER_ON).err().expect("refused");
    assert_eq!(
        error,
        ExistingTableError::TableReachedTwice {
            table: pt,
            va: 1 << 30,
            level: 1
        }
    );
}

#[test]
fn reserved_bits_are_refused_with_entry_and_bits() {
    // PS in a PML4E (SDM table 4-15).
    let (mut pages, root, _, _) = firmware_table(&[], &[]);
    pages.set(root, 2, P | RW | PS);
    assert_eq!(
        adopt(pages, root, ExistingLayout::POWER_ON).err(),
        Some(ExistingTableError::ReservedBits {
            va: 2 << 39,
            level: 3,
            raw: P | RW | PS,
            bits: PS
        })
    );
    // Bit 13 of a 2 MiB page's address (table 4-17).
    let raw = (4 * MIB2) | (1 << 13) | P | PS;
    let (pages, root, _, _) = firmware_table(&[(4, raw)], &[]);
    assert_eq!(
        adopt(pages, root, ExistingLayout::POWER_ON).err(),
        Some(ExistingTableError::ReservedBits {
            va: 4 * MIB2,
            level: 1,
            raw,
            bits: 1 << 13
        })
    );
    // An address bit at MAXPHYADDR (48 here: the host's table pages lie below 2^47).
    let raw = 1 << 48 | P;
    let (pages, root, _, _) = firmware_table(&[], &[(9, raw)]);
    let layout = ExistingLayout {
        max_phys_bits: 48,
        ..ExistingLayout::POWER_ON
    };
    assert_eq!(
        adopt(pages, root, layout).err(),
        Some(ExistingTableError::ReservedBits {
            va: MIB2 + 0x9000,
            level: 0,
            raw,
            bits: 1 << 48
        })
    );
}

#[test]
fn one_gib_page_without_cpu_support_is_reserved() {
    let mut pages = HostPages::default();
    let root = pages.new_table();
    let pdpt = pages.new_table();
    pages.set(root, 0, pdpt | P | RW);
    pages.set(pdpt, 3, 3 << 30 | P | RW | PS);
    let result = adopt_with(pages, root, ExistingLayout::POWER_ON, false);
    assert_eq!(
        result.err(),
        Some(ExistingTableError::ReservedBits {
            va: 3 << 30,
            level: 2,
            raw: 3 << 30 | P | RW | PS,
            bits: PS
        })
    );
}

#[test]
fn adopted_table_changes_in_txpagings_encoding() {
    use txpaging::PageTable;
    let (pages, root, _, _) = firmware_table(&[(0, P | RW | PS | G | A | D)], &[]);
    let mut table = adopt(pages, root, ExistingLayout::POWER_ON).expect("adopted");
    table
        .protect_memory_region(0x1000, 0x1000, Attr::ReadOnly | Attr::ExecuteProtect)
        .expect("protect");
    assert_eq!(
        table.query_memory_region(0x1000, 0x1000),
        Ok(Attr::ReadOnly | Attr::ExecuteProtect)
    );
    assert_eq!(table.query_memory_region(0x2000, 0x1000), Ok(Attr::empty()));
    // An adopted table is live: the change was invalidated.
    assert!(table.mmu().page_invalidations() >= 1);
}

#[test]
fn full_flush_toggles_global_pages_when_cr4_pge_is_set() {
    use txpaging::x64::{full_flush, FullFlush};
    assert_eq!(full_flush(0x0000_0020), FullFlush::ReloadCr3);
    assert_eq!(full_flush(0x0000_00a0), FullFlush::ToggleGlobalPages);
}

/// What the firmware application gives each AP: exactly what `install_page_table` programs on
/// the calling CPU (IA32_PAT and IA32_EFER are per-CPU MSRs).
#[test]
fn install_request_is_what_install_page_table_programs() {
    use txpaging::{MmuOp, PageTable};
    let table = X64PageTable::with_mmu(
        HostPages::default(),
        PagingType::Paging4Level,
        X64Config { one_gib_pages: true },
        RecordingMmu::new(),
    )
    .expect("table");
    table.install_page_table().expect("install");
    assert_eq!(table.mmu().log(), [MmuOp::Install(table.install_request())]);
    assert_eq!(
        table.install_request(),
        txpaging::InstallRequest::X64 {
            root: table.root(),
            five_level: false,
            pat: txpaging::x64::PAT_LAYOUT,
            nx: true
        }
    );
}
