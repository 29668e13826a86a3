//! X64 page tables: 4-level (48-bit) and 5-level (57-bit) paging with 4 KiB, 2 MiB and
//! (where the CPU has them) 1 GiB pages.

pub mod encoding;
pub mod existing;
#[cfg(target_arch = "x86_64")]
mod instructions;

use txpaging_txn::{Geometry, PageAllocator, PtError};

pub use encoding::{X64Codec, PAT_LAYOUT};
#[cfg(target_arch = "x86_64")]
pub use instructions::X64Mmu;

use crate::arch::{sealed, Arch};
use crate::dump::DumpFormat;
use crate::mmu::{InstallRequest, Mmu};
use crate::table::PagingTable;
use crate::PagingType;

/// The MMU used by [`X64PageTable::new`]: the real one on bare-metal and UEFI targets,
/// a [`RecordingMmu`](crate::RecordingMmu) elsewhere.
#[cfg(all(target_arch = "x86_64", any(target_os = "none", target_os = "uefi")))]
pub type DefaultX64Mmu = X64Mmu;
/// The MMU used by [`X64PageTable::new`]: the real one on bare-metal and UEFI targets,
/// a [`RecordingMmu`](crate::RecordingMmu) elsewhere.
#[cfg(not(all(target_arch = "x86_64", any(target_os = "none", target_os = "uefi"))))]
pub type DefaultX64Mmu = crate::RecordingMmu;

/// How the real MMU invalidates every translation (SDM Vol. 3A, 4.10.4.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FullFlush {
    /// CR4.PGE is clear: reloading CR3 drops every translation.
    ReloadCr3,
    /// CR4.PGE is set: a CR3 load keeps global translations (those of a table adopted
    /// from firmware may have G set), so CR4.PGE is cleared and set again.
    ToggleGlobalPages,
}

/// The full flush [`X64Mmu`] uses under the CR4 value `cr4`.
pub const fn full_flush(cr4: u64) -> FullFlush {
    /// CR4.PGE (SDM 2.5).
    const CR4_PGE: u64 = 1 << 7;
    if cr4 & CR4_PGE != 0 {
        FullFlush::ToggleGlobalPages
    } else {
        FullFlush::ReloadCr3
    }
}

/// Physical address width the entries can hold (MAXPHYADDR is at most 52, SDM 4.1.4).
pub const X64_PA_BITS: u8 = 52;

/// What the CPU supports, as far as the table encoding is concerned.
///
/// How to choose:
/// - [`X64PageTable::new`] uses [`X64Config::for_target`]: the running CPU's features on a
///   UEFI or bare-metal target, a fixed configuration ([`X64Config::default`], 1 GiB pages
///   on) on a host, so that host tests count the same table pages on every machine.
/// - To build for a CPU other than the one running the code, or to pin the choice, pass a
///   value to [`X64PageTable::with_mmu`]: `X64Config { one_gib_pages: false }` for a CPU
///   without 1 GiB pages, [`X64Config::detect`] for the running one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct X64Config {
    /// Use 1 GiB pages (CPUID 8000_0001h `EDX[26]`, SDM 4.1.4). 2 MiB pages are always used.
    pub one_gib_pages: bool,
}

impl X64Config {
    /// What [`X64PageTable::new`] and [`X64PageTable::from_existing`] use: [`detect`](Self::detect)
    /// on UEFI and bare-metal x86_64 targets (where the table is for the running CPU), and
    /// the deterministic [`default`](Self::default) everywhere else.
    pub fn for_target() -> Self {
        #[cfg(all(target_arch = "x86_64", any(target_os = "none", target_os = "uefi")))]
        return Self::detect();
        #[cfg(not(all(target_arch = "x86_64", any(target_os = "none", target_os = "uefi"))))]
        return Self::default();
    }

    /// Reads the running CPU's features with CPUID (on non-x86 hosts: 1 GiB pages on).
    pub fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        let one_gib_pages = instructions::cpu_features().1;
        #[cfg(not(target_arch = "x86_64"))]
        let one_gib_pages = true;
        Self { one_gib_pages }
    }
}

impl Default for X64Config {
    fn default() -> Self {
        Self { one_gib_pages: true }
    }
}

/// The X64 architecture (IA-32e paging, SDM Vol. 3A chapter 4) of a [`PagingTable`]:
/// 4-level (48-bit) and 5-level (57-bit) paging with 4 KiB, 2 MiB and, where [`X64Config`]
/// allows, 1 GiB pages, encoded by [`X64Codec`]. Name the table [`X64PageTable`].
///
/// # Installing
///
/// [`PageTable::install_page_table`](crate::PageTable::install_page_table) hands the MMU an [`InstallRequest::X64`]: IA32_PAT =
/// [`PAT_LAYOUT`] (the memory types the encoding's PAT, PCD and PWT bits select), IA32_EFER.NXE
/// (so that `ExecuteProtect`, the NX bit, is honoured) and CR3 = the root (with CR4.LA57
/// already set for 5-level paging). It does so on the calling CPU; every other CPU that is to
/// use the table needs the same (IA32_PAT and IA32_EFER are per-CPU MSRs, SDM 11.12.2), for
/// example `X64Mmu::new().install(&table.install_request())` on each AP.
///
/// # Invalidation
///
/// Not broadcast ([`Arch::BROADCAST_INVALIDATION`] is `false`): INVLPG and CR3 reloads act on
/// the issuing CPU only; other CPUs need an IPI shootdown (SDM 4.10.5), the hook of
/// [`SharedTable::with_shootdown`](crate::SharedTable::with_shootdown). How the real MMU
/// flushes everything depends on CR4.PGE: see [`full_flush`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct X64;

impl sealed::Sealed for X64 {
    fn dump_format() -> &'static DumpFormat {
        &X64_DUMP
    }
}

impl Arch for X64 {
    type Codec = X64Codec;
    type Config = X64Config;

    /// `false`: INVLPG and CR3 reloads act on the issuing CPU only (SDM 4.10.5).
    const BROADCAST_INVALIDATION: bool = false;

    /// 4 levels = 48-bit, 5 levels = 57-bit virtual addresses, sign-extended (canonical);
    /// 1 GiB pages if `config` has them. X64 has no 3-level mode (`UnsupportedPagingType`).
    fn geometry(paging_type: PagingType, config: X64Config) -> Result<Geometry, PtError> {
        let levels = match paging_type {
            PagingType::Paging3Level => return Err(PtError::UnsupportedPagingType),
            PagingType::Paging4Level => 4,
            PagingType::Paging5Level => 5,
        };
        Ok(Geometry {
            levels,
            max_leaf_level: if config.one_gib_pages { 2 } else { 1 },
            sign_extended: true,
            pa_bits: X64_PA_BITS,
        })
    }

    /// IA32_PAT = [`PAT_LAYOUT`], IA32_EFER.NXE, and CR3 = `root`.
    fn install_request(root: u64, paging_type: PagingType, _geometry: Geometry, _config: X64Config) -> InstallRequest {
        InstallRequest::X64 {
            root,
            five_level: paging_type == PagingType::Paging5Level,
            pat: PAT_LAYOUT,
            nx: true,
        }
    }
}

/// An X64 page table: the [`PagingTable`] of [`X64`], by default with the target's MMU.
/// Identity maps by default; see [`transaction`](PagingTable::transaction) for batched and
/// aliased changes.
///
/// On the host the default MMU is a [`RecordingMmu`](crate::RecordingMmu), so the same code
/// runs in tests and shows what the CPU would be asked to do:
///
/// ```
/// use txpaging::{MemoryAttributes as A, MmuOp, PagePool, PageTable, PagingType, X64PageTable};
///
/// let mut table = X64PageTable::new(PagePool::new(16), PagingType::Paging4Level)?;
/// // The first 4 GiB as write-back, no-execute: four 1 GiB pages under one PDPT.
/// table.map_memory_region(0, 0x1_0000_0000, A::Writeback | A::ExecuteProtect)?;
/// assert_eq!(table.table_pages(), 2);
/// // The local APIC page uncached: the 1 GiB page splits down to one 4 KiB page.
/// table.map_memory_region(0xFEE0_0000, 0x1000, A::Uncached | A::ExecuteProtect)?;
/// assert_eq!(table.query_memory_region(0xFEE0_0000, 0x1000)?, A::Uncached | A::ExecuteProtect);
/// assert_eq!(table.table_pages(), 4); // PML4, PDPT, one PD, one PT
///
/// // A high-half alias of the first 2 MiB.
/// table.map_aliased_memory_region(0xFFFF_8000_0000_0000, 0, 0x20_0000, A::Writeback)?;
/// assert_eq!(table.translate(0xFFFF_8000_0000_1234), Some((0x1234, A::Writeback)));
///
/// // Never installed: no TLB holds it yet, so no INVLPG was issued. Installing programs
/// // IA32_PAT and EFER.NXE and loads CR3; from then on changes invalidate.
/// assert!(table.mmu().log().is_empty());
/// table.install_page_table()?;
/// table.unmap_memory_region(0xFEE0_0000, 0x1000)?;
/// assert_eq!(table.mmu().take_log().last(), Some(&MmuOp::InvalidatePage(0xFEE0_0000)));
/// # Ok::<(), txpaging::PtError>(())
/// ```
pub type X64PageTable<P, M = DefaultX64Mmu> = PagingTable<X64, P, M>;

impl<P: PageAllocator> PagingTable<X64, P, DefaultX64Mmu> {
    /// Creates an empty table (one zeroed root page) for `paging_type` with the default MMU
    /// and [`X64Config::for_target`]: on UEFI and bare metal, 1 GiB pages if the running
    /// CPU has them; on a host, always (deterministic). Use [`with_mmu`](Self::with_mmu) to
    /// choose.
    pub fn new(allocator: P, paging_type: PagingType) -> Result<Self, PtError> {
        Self::with_mmu(
            allocator,
            paging_type,
            X64Config::for_target(),
            DefaultX64Mmu::default(),
        )
    }

    /// Opens the existing table at `root` with the default MMU.
    ///
    /// # Safety
    /// `root` must be the root of a well-formed X64 table of `paging_type` whose pages
    /// `allocator` reaches, and nothing else may change it while this value is in use.
    pub unsafe fn from_existing(root: u64, allocator: P, paging_type: PagingType) -> Result<Self, PtError> {
        // SAFETY: forwarded contract.
        unsafe {
            Self::from_existing_with_mmu(
                root,
                allocator,
                paging_type,
                X64Config::for_target(),
                DefaultX64Mmu::default(),
            )
        }
    }
}

impl<P: PageAllocator, M: Mmu> PagingTable<X64, P, M> {
    /// Creates an empty table with an explicit CPU configuration and MMU.
    pub fn with_mmu(allocator: P, paging_type: PagingType, config: X64Config, mmu: M) -> Result<Self, PtError> {
        Self::create(allocator, paging_type, config, mmu)
    }

    /// Opens an existing table with an explicit CPU configuration and MMU.
    ///
    /// The table is checked first, by the walk of [`existing`] under [`PAT_LAYOUT`]
    /// (every table page reached once, no reserved bit set in a present entry, SDM Vol. 3A
    /// 4.5.4, tables 4-14 to 4-20): a cycle, a shared subtree, or reserved bits (such as PS
    /// in a PML4E, a large page's address bits 20:13, or a 1 GiB page where
    /// `config` has none) fail with `InvalidParameter`, the detail logged with
    /// `log::warn!` (use [`from_existing_with_layout`](Self::from_existing_with_layout) for
    /// the [`existing::ExistingTableError`] itself). Every later read and transaction then
    /// walks a well-formed tree: it cannot loop, and reads only table pages reachable from
    /// the root.
    ///
    /// # Safety
    /// As for [`X64PageTable::from_existing`].
    pub unsafe fn from_existing_with_mmu(
        root: u64,
        allocator: P,
        paging_type: PagingType,
        config: X64Config,
        mmu: M,
    ) -> Result<Self, PtError> {
        // SAFETY: forwarded contract.
        let table = unsafe { Self::open(root, allocator, paging_type, config, mmu)? };
        // The checked walk of `existing` under this crate's own PAT layout: a hostile or
        // corrupted table is refused here, so no later walk can loop or misread it.
        existing::check(table.tables(), existing::ExistingLayout::OURS).map_err(|error| {
            log::warn!("txpaging: from_existing refused the table: {error}");
            PtError::from(error)
        })?;
        Ok(table)
    }

    /// Opens the table at `root` that someone else built (the firmware's, read from CR3)
    /// under the IA32_PAT layout in force, after the checked walk of
    /// [`existing`]: every table page reached once, no reserved bit
    /// set, and every leaf's PAT index meaning the same memory type under `layout` as under
    /// [`PAT_LAYOUT`]. Queries then read the table exactly, and changes are written in this
    /// crate's encoding, correct once [`PageTable::install_page_table`](crate::PageTable::install_page_table) programs
    /// [`PAT_LAYOUT`] (or at once, for the indices both layouts share).
    ///
    /// # Safety
    /// `root` and every table page reachable from it must be readable through
    /// `allocator.physical_to_pointer` for as long as this value is used, and nothing else
    /// may change the table meanwhile. Changes write to the table pages found there.
    pub unsafe fn from_existing_with_layout(
        root: u64,
        allocator: P,
        paging_type: PagingType,
        config: X64Config,
        mmu: M,
        layout: existing::ExistingLayout,
    ) -> Result<(Self, existing::ExistingTableSummary), existing::ExistingTableError> {
        if root % txpaging_txn::PAGE_SIZE != 0 {
            return Err(existing::ExistingTableError::UnalignedRoot { root });
        }
        X64::geometry(paging_type, config).map_err(|_| existing::ExistingTableError::UnsupportedPagingType)?;
        // SAFETY: forwarded contract; the checked walk below only reads.
        let table = unsafe { Self::open(root, allocator, paging_type, config, mmu) }
            .map_err(|_| existing::ExistingTableError::UnalignedRoot { root })?;
        let summary = existing::check(table.tables(), layout)?;
        Ok((table, summary))
    }
}

/// The X64 dump layout: the familiar bit columns.
static X64_DUMP: DumpFormat = DumpFormat {
    level_names: &["PT", "PD", "PDP", "PML4", "PML5"],
    header: &[
        "6362         52 51                                    12 11 9 8 7 6 5 4 3 2 1 0",
        "|N|           |                                        |   |M|M|I| |P|P|U|R| |",
        "|X| Available |      Page-Map Level-4 Base Address     |AVL|B|B|G|A|C|W|/|/|P|",
        "| |           |                                        |   |Z|Z|N| |D|T|S|W| |",
        "(names above: PML5, PML4, and PDP/PD rows with bit 7 (PS) = 0, which point to the next table.",
        " PDP/PD rows with PS = 1 (1 GiB/2 MiB page): 51:12 = page address (bit 12 = PAT), 8 = G, 7 = PS, 6 = D.",
        " PT rows (4 KiB page): 51:12 = page address, 8 = G, 7 = PAT, 6 = D. Ranges are clipped to the dump.)",
    ],
    // (first bit, width) of each column, most significant first.
    columns: &[
        (63, 1),
        (52, 11),
        (12, 40),
        (9, 3),
        (8, 1),
        (7, 1),
        (6, 1),
        (5, 1),
        (4, 1),
        (3, 1),
        (2, 1),
        (1, 1),
        (0, 1),
    ],
    cells: &[],
};
