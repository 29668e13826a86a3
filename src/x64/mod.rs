//! X64 page tables: 4-level (48-bit) and 5-level (57-bit) paging with 4 KiB, 2 MiB and
//! (where the CPU has them) 1 GiB pages.

pub mod encoding;
pub mod existing;
#[cfg(target_arch = "x86_64")]
mod instructions;

use core::fmt;

use txpaging_txn::{
    Geometry, MappedRegion, MemoryAttributes, Op, PageAllocator, PtError, Regions, Retired, Tables, Transaction,
    TxnError,
};

pub use encoding::{X64Codec, PAT_LAYOUT};
#[cfg(target_arch = "x86_64")]
pub use instructions::X64Mmu;

use crate::dump::{self, DumpFormat};
use crate::mmu::{InstallRequest, Mmu};
use crate::{PageTable, PagingType};

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

/// An X64 page table. Identity maps by default; see [`transaction`](Self::transaction)
/// for batched and aliased changes.
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
pub struct X64PageTable<P: PageAllocator, M: Mmu = DefaultX64Mmu> {
    tables: Tables<X64Codec, P, M>,
    paging_type: PagingType,
    config: X64Config,
}

impl<P: PageAllocator> X64PageTable<P> {
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

impl<P: PageAllocator, M: Mmu> X64PageTable<P, M> {
    /// Creates an empty table with an explicit CPU configuration and MMU.
    pub fn with_mmu(allocator: P, paging_type: PagingType, config: X64Config, mmu: M) -> Result<Self, PtError> {
        let tables = Tables::new(allocator, geometry(paging_type, config)?, mmu)?;
        Ok(Self {
            tables,
            paging_type,
            config,
        })
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
        let geometry = geometry(paging_type, config)?;
        // SAFETY: forwarded contract.
        let tables = unsafe { Tables::from_existing(root, allocator, geometry, mmu)? };
        // The checked walk of `existing` under this crate's own PAT layout: a hostile or
        // corrupted table is refused here, so no later walk can loop or misread it.
        existing::check(&tables, existing::ExistingLayout::OURS).map_err(|error| {
            log::warn!("txpaging: from_existing refused the table: {error}");
            PtError::from(error)
        })?;
        Ok(Self {
            tables,
            paging_type,
            config,
        })
    }

    /// Opens the table at `root` that someone else built (the firmware's, read from CR3)
    /// under the IA32_PAT layout in force, after the checked walk of
    /// [`existing`]: every table page reached once, no reserved bit
    /// set, and every leaf's PAT index meaning the same memory type under `layout` as under
    /// [`PAT_LAYOUT`]. Queries then read the table exactly, and changes are written in this
    /// crate's encoding, correct once [`PageTable::install_page_table`] programs
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
        let geometry =
            geometry(paging_type, config).map_err(|_| existing::ExistingTableError::UnsupportedPagingType)?;
        // SAFETY: forwarded contract; the checked walk below only reads.
        let tables = unsafe { Tables::from_existing(root, allocator, geometry, mmu) }
            .map_err(|_| existing::ExistingTableError::UnalignedRoot { root })?;
        let summary = existing::check(&tables, layout)?;
        Ok((
            Self {
                tables,
                paging_type,
                config,
            },
            summary,
        ))
    }

    /// What installing this table programs: IA32_PAT = [`PAT_LAYOUT`], IA32_EFER.NXE, and CR3
    /// = the root. [`PageTable::install_page_table`] does it on the calling CPU; every other
    /// CPU that is to use the table needs the same (IA32_PAT and IA32_EFER are per-CPU MSRs,
    /// SDM 11.12.2), for example `X64Mmu::new().install(&table.install_request())` on each AP.
    pub fn install_request(&self) -> InstallRequest {
        InstallRequest::X64 {
            root: self.root(),
            five_level: self.paging_type == PagingType::Paging5Level,
            pat: PAT_LAYOUT,
            nx: true,
        }
    }

    /// Physical address of the root table (the value for CR3).
    pub fn root(&self) -> u64 {
        self.tables.root()
    }

    /// Gives up ownership and returns the root; the tables stay in memory.
    pub fn into_page_table_root(self) -> u64 {
        self.tables.root()
    }

    /// The paging mode.
    pub fn paging_type(&self) -> PagingType {
        self.paging_type
    }

    /// The CPU configuration the table was built for.
    pub fn config(&self) -> X64Config {
        self.config
    }

    /// The MMU (a [`RecordingMmu`](crate::RecordingMmu) on the host).
    pub fn mmu(&self) -> &M {
        self.tables.tlb()
    }

    /// The page allocator.
    pub fn allocator(&self) -> &P {
        self.tables.allocator()
    }

    /// The page allocator, mutably (for example to inject failures in tests). Do not use it
    /// to change or free the table's own pages.
    pub fn allocator_mut(&mut self) -> &mut P {
        self.tables.allocator_mut()
    }

    /// The full error of the last failed one-op call (`map_memory_region`,
    /// `unmap_memory_region`, `protect_memory_region`, `map_aliased_memory_region`): which
    /// address, which rule. Those calls return only its [`PtError`] code, as the seed API
    /// does, and log it with `log::warn!`.
    ///
    /// ```
    /// use txpaging::{MemoryAttributes, PagePool, PageTable, PagingType, PtError, Reason, X64PageTable};
    ///
    /// let mut table = X64PageTable::new(PagePool::new(8), PagingType::Paging4Level)?;
    /// let code = table.unmap_memory_region(0x20_0000, 0x1000).unwrap_err();
    /// assert_eq!(code, PtError::NoMapping);
    /// let error = table.last_error().unwrap();
    /// assert_eq!((error.reason, error.address), (Reason::NotMapped, Some(0x20_0000)));
    /// # let _ = MemoryAttributes::Writeback;
    /// # Ok::<(), PtError>(())
    /// ```
    pub fn last_error(&self) -> Option<TxnError> {
        self.tables.last_error()
    }

    /// The engine-level table, for tools that walk raw entries.
    pub fn tables(&self) -> &Tables<X64Codec, P, M> {
        &self.tables
    }

    /// Starts a transaction: queue maps, unmaps and protects, then `plan` or `commit`.
    pub fn transaction(&mut self) -> Transaction<'_, X64Codec, P, M> {
        self.tables.transaction()
    }

    /// Gives back the table pages a [`Transaction::commit_retiring`] retired, once no CPU
    /// can still walk them.
    pub fn release(&mut self, retired: Retired) {
        self.tables.release(retired)
    }

    /// Sets the protection policy later transactions and one-op calls must obey: a
    /// change whose final state breaks it fails before any store with
    /// `IncompatibleMemoryAttributes` and [`Reason::PolicyViolation`](crate::Reason).
    /// [`Policy::off`](crate::Policy::off) (the default) removes it.
    ///
    /// ## Errors
    /// Range errors for a registered code or data range (the policy is then unchanged).
    pub fn set_policy(&mut self, policy: crate::Policy) -> Result<(), PtError> {
        self.tables.set_policy(policy)
    }

    /// The protection policy (off unless one was set).
    pub fn policy(&self) -> &crate::Policy {
        self.tables.policy()
    }

    /// Walks the whole table and reports W+X pages, executable pages outside the policy's
    /// code ranges, writable code, a mapped NULL page, executable MMIO, pages whose physical
    /// address `memory_map` (a UEFI memory map; empty: not checked) does not cover, and the
    /// mapped bytes per attribute combination. Its `Display` is a report for a bug.
    pub fn audit(&self, memory_map: &[crate::MemoryMapEntry]) -> crate::Audit {
        self.tables.audit(memory_map)
    }

    /// Maps `size` bytes at virtual `va` to physical `pa` (one-op transaction).
    pub fn map_aliased_memory_region(
        &mut self,
        va: u64,
        pa: u64,
        size: u64,
        attributes: MemoryAttributes,
    ) -> Result<(), PtError> {
        self.tables
            .commit_op(Op::Map {
                va,
                pa,
                size,
                attributes,
            })
            .map(drop)
            .map_err(crate::familiar_error)
    }

    /// Changes the attributes of `size` mapped bytes at `address`, keeping the output
    /// addresses and, when `attributes` names no cache type, each page's cache type.
    pub fn protect_memory_region(
        &mut self,
        address: u64,
        size: u64,
        attributes: MemoryAttributes,
    ) -> Result<(), PtError> {
        self.tables
            .commit_op(Op::Protect {
                va: address,
                size,
                attributes,
            })
            .map(drop)
            .map_err(crate::familiar_error)
    }

    /// [`query_memory_region`](PageTable::query_memory_region) with the detail of a failure:
    /// the rule and the first failing address (the first unmapped page, or the first page
    /// whose attributes differ from those at `address`), with the same codes.
    pub fn query_detail(&self, address: u64, size: u64) -> Result<MemoryAttributes, TxnError> {
        self.tables.query_detail(address, size)
    }

    /// Where `va` translates to, with the attributes of its page.
    pub fn translate(&self, va: u64) -> Option<(u64, MemoryAttributes)> {
        self.tables.translate(va)
    }

    /// The mapped regions in address order, adjacent identical pieces merged.
    pub fn regions(&self) -> Regions<'_, X64Codec, P> {
        self.tables.regions()
    }

    /// Iterator alias of [`regions`](Self::regions) using the familiar name.
    pub fn iter_mapped_regions(&self) -> impl Iterator<Item = MappedRegion> + '_ {
        self.tables.regions()
    }

    /// Number of table pages in use, the root included.
    pub fn table_pages(&self) -> usize {
        self.tables.table_pages()
    }

    /// Writes the dump of `size` bytes at `address` (see [`PageTable::dump_page_tables`]) to `out`.
    pub fn dump_to(&self, out: &mut dyn fmt::Write, address: u64, size: u64) -> Result<(), PtError> {
        dump::write(&self.tables, &X64_DUMP, out, address, size)
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

impl<P: PageAllocator, M: Mmu> PageTable for X64PageTable<P, M> {
    fn map_memory_region(&mut self, address: u64, size: u64, attributes: MemoryAttributes) -> Result<(), PtError> {
        self.tables
            .commit_op(Op::Map {
                va: address,
                pa: address,
                size,
                attributes,
            })
            .map(drop)
            .map_err(crate::familiar_error)
    }

    fn unmap_memory_region(&mut self, address: u64, size: u64) -> Result<(), PtError> {
        self.tables
            .commit_op(Op::Unmap { va: address, size })
            .map(drop)
            .map_err(crate::familiar_error)
    }

    fn install_page_table(&self) -> Result<(), PtError> {
        self.tables.tlb().install(&self.install_request())?;
        self.tables.set_live(true);
        Ok(())
    }

    fn query_memory_region(&self, address: u64, size: u64) -> Result<MemoryAttributes, PtError> {
        self.tables.query(address, size).inspect_err(|_| {
            if log::log_enabled!(log::Level::Debug) {
                if let Err(detail) = self.tables.query_detail(address, size) {
                    log::debug!("query_memory_region: {detail}");
                }
            }
        })
    }

    fn dump_page_tables(&self, address: u64, size: u64) {
        if let Err(error) = dump::log(&self.tables, &X64_DUMP, address, size) {
            log::error!("dump_page_tables({address:#x}, {size:#x}) failed: {error}");
        }
    }
}
