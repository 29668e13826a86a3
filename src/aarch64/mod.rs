//! AArch64 page tables (VMSAv8-64 stage 1, TTBR0 of the EL1&0 regime or of the non-VHE EL2
//! regime): 4 KiB granule, 48-bit (4 levels, L0-L3) or 39-bit (3 levels, L1-L3) virtual
//! addresses, 1 GiB blocks at L1, 2 MiB blocks at L2, pages at L3.
//!
//! The regime is a type parameter: [`Aarch64PageTable<P, M, R>`] with `R` = [`El1`] (the
//! default) or [`El2`] ([`Aarch64El2PageTable`]); [`regime`] lists what differs. On target,
//! `CurrentElPageTable::new_for_current_el` picks the regime from `CurrentEL`
//! ([`CurrentElPageTable::new_for_el`] on any target).
//!
//! A table built by someone else (the firmware's) is read with
//! [`foreign::existing_regions`] under the MAIR in force, or adopted in place with
//! [`Aarch64PageTable::from_existing_with_mair`] when its memory types agree with ours.
//!
//! Commits on an installed table follow break-before-make (see the classification in
//! [`Aarch64Codec`]'s [`Codec::needs_break`](txpaging_txn::Codec::needs_break) and
//! `docs/engine.md`).
//!
//! # Installing
//!
//! [`PageTable::install_page_table`] hands the MMU an [`InstallRequest::Aarch64`] holding
//! MAIR_EL1 = [`MAIR_LAYOUT`], TCR_EL1 = [`tcr_el1`]`(va_bits, config.pa_range)` and
//! TTBR0_EL1 = the root (ASID 0); for an EL2 table an [`InstallRequest::Aarch64El2`] with
//! MAIR_EL2 = [`MAIR_LAYOUT`], TCR_EL2 = [`tcr_el2`]`(va_bits, config.pa_range)` and
//! TTBR0_EL2 = the root. The real MMU (`Aarch64Mmu<R>`, the default on bare-metal and
//! UEFI aarch64 targets) then runs, at EL1 (EL2):
//!
//! 1. `DSB ISHST`: the table stores are visible to the walkers;
//! 2. `MSR MAIR_EL1`, `MSR TCR_EL1`, `MSR TTBR0_EL1` (the `_EL2` registers);
//! 3. `ISB`: the new registers are in effect;
//! 4. `TLBI VMALLE1IS` (`TLBI ALLE2IS`), `DSB ISH`, `ISB`: nothing cached from the previous
//!    table survives (the entries are global, so a TTBR0 switch alone would not drop them).
//!
//! SCTLR_ELx is left alone: if the MMU is off, turning it on (SCTLR_EL1.M, with C and I) is
//! the caller's business, after the install, from code that the new table maps identically.
//! The table pages are written with ordinary cacheable stores and the walks are configured
//! Write-Back Inner Shareable to match; if they were written with the data cache off, clean
//! them to the point of coherency first.

pub mod encoding;
pub mod foreign;
#[cfg(target_arch = "aarch64")]
mod instructions;
pub mod regime;

use core::fmt;

use txpaging_txn::{
    Geometry, MappedRegion, MemoryAttributes, Op, PageAllocator, PtError, Regions, Retired, Tables, Transaction,
    TxnError,
};

pub use encoding::{tcr_el1, Aarch64Codec, MAIR_LAYOUT, PA_BITS, PA_RANGE_48};
pub use foreign::ForeignTableError;
#[cfg(target_arch = "aarch64")]
pub use instructions::{Aarch64Mmu, CurrentTranslation};
pub use regime::{tcr_el2, El1, El2, ExceptionLevel, Regime};

use crate::dump::{self, DumpFormat};
use crate::mmu::{InstallRequest, Mmu};
use crate::{PageTable, PagingType};

/// The MMU used by [`Aarch64PageTable::new`]: the real one on bare-metal and UEFI targets,
/// a [`RecordingMmu`](crate::RecordingMmu) elsewhere.
#[cfg(all(target_arch = "aarch64", any(target_os = "none", target_os = "uefi")))]
pub type DefaultAarch64Mmu = Aarch64Mmu;
/// The MMU used by [`Aarch64PageTable::new`]: the real one on bare-metal and UEFI targets,
/// a [`RecordingMmu`](crate::RecordingMmu) elsewhere.
#[cfg(not(all(target_arch = "aarch64", any(target_os = "none", target_os = "uefi"))))]
pub type DefaultAarch64Mmu = crate::RecordingMmu;
/// The MMU used by [`Aarch64El2PageTable::new_el2`]: the real one (EL2 instructions) on
/// bare-metal and UEFI targets, a [`RecordingMmu`](crate::RecordingMmu) elsewhere.
#[cfg(all(target_arch = "aarch64", any(target_os = "none", target_os = "uefi")))]
pub type DefaultAarch64El2Mmu = Aarch64Mmu<El2>;
/// The MMU used by [`Aarch64El2PageTable::new_el2`]: the real one (EL2 instructions) on
/// bare-metal and UEFI targets, a [`RecordingMmu`](crate::RecordingMmu) elsewhere.
#[cfg(not(all(target_arch = "aarch64", any(target_os = "none", target_os = "uefi"))))]
pub type DefaultAarch64El2Mmu = crate::RecordingMmu;

/// What the CPU supports, as far as the tables and their installation are concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Aarch64Config {
    /// Use 1 GiB blocks at L1 (architecturally always available with the 4 KiB granule;
    /// off builds L2 tables instead). 2 MiB blocks are always used.
    pub one_gib_blocks: bool,
    /// Physical address size for TCR_EL1.IPS (TCR_EL2.PS), in the ID_AA64MMFR0_EL1.PARange encoding
    /// (0b0101 = 48 bits; larger values are capped to it, the widest output address the
    /// descriptors hold).
    pub pa_range: u8,
}

impl Aarch64Config {
    /// The running CPU's configuration: 1 GiB blocks, and PARange read from
    /// ID_AA64MMFR0_EL1 on bare-metal and UEFI aarch64 targets (48 bits elsewhere).
    pub fn detect() -> Self {
        #[cfg(all(target_arch = "aarch64", any(target_os = "none", target_os = "uefi")))]
        let pa_range = instructions::pa_range();
        #[cfg(not(all(target_arch = "aarch64", any(target_os = "none", target_os = "uefi"))))]
        let pa_range = PA_RANGE_48;
        Self {
            one_gib_blocks: true,
            pa_range,
        }
    }
}

impl Default for Aarch64Config {
    /// 1 GiB blocks, 48-bit physical addresses.
    fn default() -> Self {
        Self {
            one_gib_blocks: true,
            pa_range: PA_RANGE_48,
        }
    }
}

/// The geometry of `paging_type`: 4 levels = 48-bit VA, 3 levels = 39-bit VA; TTBR0
/// addresses have all bits above the VA size clear (no sign extension).
fn geometry(paging_type: PagingType, config: Aarch64Config) -> Result<Geometry, PtError> {
    let levels = match paging_type {
        PagingType::Paging3Level => 3,
        PagingType::Paging4Level => 4,
        PagingType::Paging5Level => return Err(PtError::UnsupportedPagingType),
    };
    Ok(Geometry {
        levels,
        max_leaf_level: if config.one_gib_blocks { 2 } else { 1 },
        sign_extended: false,
        pa_bits: PA_BITS,
    })
}

/// An AArch64 page table of translation regime `R` ([`El1`], the default, or [`El2`]).
/// Identity maps by default; see [`transaction`](Self::transaction) for batched and aliased
/// changes.
///
/// Every map names exactly one cache attribute (there is no default memory type). On the
/// host the default MMU is a [`RecordingMmu`](crate::RecordingMmu):
///
/// ```
/// use txpaging::{Aarch64PageTable, MemoryAttributes as A, MmuOp, PagePool, PageTable, PagingType, PtError};
///
/// let mut table = Aarch64PageTable::new(PagePool::new(16), PagingType::Paging4Level)?;
/// // DRAM at 1 GiB as normal write-back memory: one 1 GiB block under L0 and L1 tables.
/// table.map_memory_region(0x4000_0000, 0x4000_0000, A::Writeback)?;
/// // A UART page as device memory (Uncached is Device-nGnRnE), never executable.
/// table.map_memory_region(0x0900_0000, 0x1000, A::Uncached | A::ExecuteProtect)?;
/// assert_eq!(table.query_memory_region(0x0900_0000, 0x1000)?, A::Uncached | A::ExecuteProtect);
/// // X64 habit: no cache attribute. AArch64 refuses, and says why.
/// assert_eq!(
///     table.map_memory_region(0x1000_0000, 0x1000, A::ReadOnly),
///     Err(PtError::IncompatibleMemoryAttributes)
/// );
/// assert!(table.last_error().unwrap().to_string().contains("AArch64 needs exactly one of Uncached"));
///
/// // Installing programs MAIR_EL1, TCR_EL1 and TTBR0_EL1. From then on, commits follow
/// // break-before-make: splitting the live 1 GiB block breaks it first.
/// table.install_page_table()?;
/// table.mmu().take_log();
/// table.protect_memory_region(0x4000_0000, 0x1000, A::ReadOnly)?;
/// assert!(table.mmu().log().contains(&MmuOp::InvalidatePage(0x4000_0000)));
/// # Ok::<(), PtError>(())
/// ```
pub struct Aarch64PageTable<P: PageAllocator, M: Mmu = DefaultAarch64Mmu, R: Regime = El1> {
    tables: Tables<Aarch64Codec<R>, P, M>,
    paging_type: PagingType,
    config: Aarch64Config,
}

/// The same type under the Arm spelling.
pub type AArch64PageTable<P, M = DefaultAarch64Mmu, R = El1> = Aarch64PageTable<P, M, R>;

/// A page table of the non-VHE EL2 regime (TTBR0_EL2).
pub type Aarch64El2PageTable<P, M = DefaultAarch64El2Mmu> = Aarch64PageTable<P, M, El2>;

impl<P: PageAllocator> Aarch64PageTable<P> {
    /// Creates an empty table (one zeroed root page) for `paging_type` (3 or 4 levels), for
    /// the running CPU ([`Aarch64Config::detect`]) and the default MMU.
    pub fn new(allocator: P, paging_type: PagingType) -> Result<Self, PtError> {
        Self::with_mmu(
            allocator,
            paging_type,
            Aarch64Config::detect(),
            DefaultAarch64Mmu::default(),
        )
    }

    /// Opens the existing table at `root` with the default MMU. The table is taken as
    /// live: commits follow break-before-make.
    ///
    /// # Safety
    /// `root` must be the root of a well-formed AArch64 table of `paging_type` whose pages
    /// `allocator` reaches, and nothing else may change it while this value is in use.
    pub unsafe fn from_existing(root: u64, allocator: P, paging_type: PagingType) -> Result<Self, PtError> {
        // SAFETY: forwarded contract.
        unsafe {
            Self::from_existing_with_mmu(
                root,
                allocator,
                paging_type,
                Aarch64Config::detect(),
                DefaultAarch64Mmu::default(),
            )
        }
    }
}

impl<P: PageAllocator> Aarch64El2PageTable<P> {
    /// Creates an empty EL2 table (one zeroed root page) for `paging_type` (3 or 4 levels),
    /// for the running CPU ([`Aarch64Config::detect`]) and the default EL2 MMU.
    pub fn new_el2(allocator: P, paging_type: PagingType) -> Result<Self, PtError> {
        Self::with_regime(
            allocator,
            paging_type,
            Aarch64Config::detect(),
            DefaultAarch64El2Mmu::default(),
            El2,
        )
    }
}

impl<P: PageAllocator, M: Mmu> Aarch64PageTable<P, M> {
    /// Creates an empty EL1&0 table with an explicit configuration and MMU.
    pub fn with_mmu(allocator: P, paging_type: PagingType, config: Aarch64Config, mmu: M) -> Result<Self, PtError> {
        Self::with_regime(allocator, paging_type, config, mmu, El1)
    }

    /// Opens an existing EL1&0 table with an explicit configuration and MMU.
    ///
    /// # Safety
    /// As for [`Aarch64PageTable::from_existing`].
    pub unsafe fn from_existing_with_mmu(
        root: u64,
        allocator: P,
        paging_type: PagingType,
        config: Aarch64Config,
        mmu: M,
    ) -> Result<Self, PtError> {
        // SAFETY: forwarded contract.
        unsafe { Self::from_existing_with_regime(root, allocator, paging_type, config, mmu, El1) }
    }
}

impl<P: PageAllocator, M: Mmu, R: Regime> Aarch64PageTable<P, M, R> {
    /// Creates an empty table of regime `regime` ([`El1`] or [`El2`]) with an explicit
    /// configuration and MMU.
    pub fn with_regime(
        allocator: P,
        paging_type: PagingType,
        config: Aarch64Config,
        mmu: M,
        regime: R,
    ) -> Result<Self, PtError> {
        let _ = regime;
        let tables = Tables::new(allocator, geometry(paging_type, config)?, mmu)?;
        Ok(Self {
            tables,
            paging_type,
            config,
        })
    }

    /// Opens an existing table of regime `regime`, encoded as this crate encodes (under
    /// [`MAIR_LAYOUT`]), with an explicit configuration and MMU. For a table someone else
    /// built, see [`from_existing_with_mair`](Self::from_existing_with_mair).
    ///
    /// The table is checked first by the walk of [`foreign`] under [`MAIR_LAYOUT`] (Arm ARM
    /// D8.3 descriptor encodings): a table descriptor pointing at a table on its own walk (a
    /// cycle), a table reached twice, 0b01 at L3 or a block at L0 (reserved), table
    /// descriptor attributes (bits 63:59), AF = 0, an AttrIndx outside [`MAIR_LAYOUT`], or a
    /// 1 GiB block where `config` has none fail with the [`PtError`] of the
    /// [`foreign::ForeignTableError`], whose text is logged with `log::warn!`. Every later
    /// read and transaction then walks a well-formed tree: it cannot loop, and reads only
    /// table pages reachable from the root.
    ///
    /// # Safety
    /// As for [`Aarch64PageTable::from_existing`].
    pub unsafe fn from_existing_with_regime(
        root: u64,
        allocator: P,
        paging_type: PagingType,
        config: Aarch64Config,
        mmu: M,
        regime: R,
    ) -> Result<Self, PtError> {
        let checked = geometry(paging_type, config)?;
        if root % txpaging_txn::PAGE_SIZE == 0 {
            // SAFETY: forwarded contract; the walk only reads.
            unsafe { foreign::check_own::<R, P>(root, paging_type, checked.max_leaf_level, &allocator) }.map_err(
                |error| {
                    log::warn!("txpaging: from_existing refused the table: {error}");
                    PtError::from(error)
                },
            )?;
        }
        // SAFETY: forwarded contract; the table was checked above.
        unsafe { Self::open_checked(root, allocator, paging_type, config, mmu, regime) }
    }

    /// Opens the table at `root` without checking it.
    ///
    /// # Safety
    /// As for [`Aarch64PageTable::from_existing`], and the table is well formed (checked).
    pub(crate) unsafe fn open_checked(
        root: u64,
        allocator: P,
        paging_type: PagingType,
        config: Aarch64Config,
        mmu: M,
        regime: R,
    ) -> Result<Self, PtError> {
        let _ = regime;
        let geometry = geometry(paging_type, config)?;
        // SAFETY: forwarded contract.
        let tables = unsafe { Tables::from_existing(root, allocator, geometry, mmu)? };
        Ok(Self {
            tables,
            paging_type,
            config,
        })
    }

    /// The translation regime's name ("EL1&0" or "EL2").
    pub fn regime(&self) -> &'static str {
        R::NAME
    }

    /// Physical address of the root table (the value for TTBR0_EL1 or TTBR0_EL2).
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

    /// The configuration the table was built for.
    pub fn config(&self) -> Aarch64Config {
        self.config
    }

    /// The register values [`install_page_table`](PageTable::install_page_table) programs.
    pub fn install_request(&self) -> InstallRequest {
        R::install_request(
            MAIR_LAYOUT,
            R::tcr(self.tables.geometry().va_bits(), self.config.pa_range),
            self.root(),
        )
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
    /// use txpaging::{Aarch64PageTable, MemoryAttributes, PagePool, PageTable, PagingType, PtError, Reason};
    ///
    /// let mut table = Aarch64PageTable::new(PagePool::new(8), PagingType::Paging4Level)?;
    /// let code = table.map_memory_region(0x20_0000, 0x1000, MemoryAttributes::ReadOnly).unwrap_err();
    /// assert_eq!(code, PtError::IncompatibleMemoryAttributes);
    /// assert_eq!(table.last_error().unwrap().reason, Reason::MissingCacheAttribute);
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
    pub fn tables(&self) -> &Tables<Aarch64Codec<R>, P, M> {
        &self.tables
    }

    /// Starts a transaction: queue maps, unmaps and protects, then `plan` or `commit`.
    pub fn transaction(&mut self) -> Transaction<'_, Aarch64Codec<R>, P, M> {
        self.tables.transaction()
    }

    /// Gives back the table pages a [`Transaction::commit_retiring`] retired, once no CPU
    /// can still walk them.
    pub fn release(&mut self, retired: Retired) {
        self.tables.release(retired)
    }

    /// Whether the table is installed: commits on a live table follow break-before-make.
    /// `install_page_table` and `from_existing` make it live.
    pub fn is_live(&self) -> bool {
        self.tables.is_live()
    }

    /// Declares the table installed (or not) on some CPU, for tables installed by other code.
    pub fn set_live(&self, live: bool) {
        self.tables.set_live(live)
    }

    /// Declares `size` bytes at `address` as never to be broken: the code, stack and table
    /// pages running the commits (the self-hosting hazard). A commit that would briefly
    /// unmap them fails with `PtError::PinnedRangeBreak` before any store.
    pub fn pin_range(&mut self, address: u64, size: u64) -> Result<(), PtError> {
        self.tables.pin_range(address, size)
    }

    /// Removes every pinned range.
    pub fn unpin_all(&mut self) {
        self.tables.unpin_all()
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
    pub fn regions(&self) -> Regions<'_, Aarch64Codec<R>, P> {
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
        dump::write(&self.tables, dump_format::<R>(), out, address, size)
    }
}

/// The AArch64 dump layout: descriptor fields of Arm ARM D8.3, leaf meanings in the legend
/// (in table descriptors bits 63:59 are NSTable/APTable/XNTable/PXNTable, the rest ignored).
static AARCH64_DUMP: DumpFormat = DumpFormat {
    level_names: &["L3", "L2", "L1", "L0"],
    // Bit ranges in one notation: "high:low" for a field, the bit number for one bit.
    header: &[
        "|63:59|58:55|54|53|52|51:48|               47:12                |11|10|9:8|7:6|5|4:2|1:0|",
        "|Upper| SW  |UX|PX|Ct|DBMGP|           Output address           |nG|AF|SH |AP |N|Atr|Typ|",
        "(UX = UXN/XN, PX = PXN, Ct = Contiguous, DBMGP = DBM (51), GP (50), N = NS, Atr = AttrIndx.",
        " Table rows (L0-L2, Typ 11 with a table below): 63:59 = NSTable, APTable, UXNTable, PXNTable;",
        " the other fields are ignored. Block rows (L1/L2, Typ 01) and page rows (L3, Typ 11): as named;",
        " SW bit 55 = ReadProtect leaf (then Typ bit 0 is 0), SW bit 56 = execute-never forced by device",
        " memory. Ranges are clipped to the dump.)",
    ],
    // (first bit, width) of each column, most significant first.
    columns: &[
        (59, 5),
        (55, 4),
        (54, 1),
        (53, 1),
        (52, 1),
        (48, 4),
        (12, 36),
        (11, 1),
        (10, 1),
        (8, 2),
        (6, 2),
        (5, 1),
        (2, 3),
        (0, 2),
    ],
    // Wide enough for each bit-range label above.
    cells: &[5, 5, 2, 2, 2, 5, 36, 2, 2, 3, 3, 1, 3, 3],
};

/// The EL2 dump layout: as at EL1&0, with bit 54 = XN and bit 53 RES0 (Arm ARM D8.3.2).
static AARCH64_EL2_DUMP: DumpFormat = DumpFormat {
    level_names: AARCH64_DUMP.level_names,
    // Bit ranges in one notation: "high:low" for a field, the bit number for one bit.
    header: &[
        "|63:59|58:55|54|53|52|51:48|               47:12                |11|10|9:8|7:6|5|4:2|1:0|",
        "|Upper| SW  |XN|0 |Ct|DBMGP|           Output address           |0 |AF|SH |AP |N|Atr|Typ|",
        "(EL2 regime: XN = bit 54, bit 53 RES0, nG (bit 11) RES0, AP[1] (bit 6) RES1; Ct = Contiguous,",
        " DBMGP = DBM (51), GP (50), N = NS, Atr = AttrIndx. Table rows (L0-L2, Typ 11 with a table",
        " below): 63:59 = NSTable, APTable, XNTable, RES0; the other fields are ignored. Block and page",
        " rows: as named; SW bit 55 = ReadProtect leaf (then Typ bit 0 is 0), SW bit 56 = execute-never",
        " forced by device memory. Ranges are clipped to the dump.)",
    ],
    columns: AARCH64_DUMP.columns,
    cells: AARCH64_DUMP.cells,
};

fn dump_format<R: Regime>() -> &'static DumpFormat {
    if R::EL == 2 {
        &AARCH64_EL2_DUMP
    } else {
        &AARCH64_DUMP
    }
}

impl<P: PageAllocator, M: Mmu, R: Regime> PageTable for Aarch64PageTable<P, M, R> {
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

    /// Programs MAIR_EL1, TCR_EL1 and TTBR0_EL1, or their EL2 counterparts for an EL2 table
    /// (see the [module documentation](self)), and marks the table live: later commits
    /// follow break-before-make.
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
        if let Err(error) = dump::log(&self.tables, dump_format::<R>(), address, size) {
            log::error!("dump_page_tables({address:#x}, {size:#x}) failed: {error}");
        }
    }
}

/// A table of the regime the running code is in, chosen at run time: what firmware that may
/// start at EL1 or EL2 builds. Each variant is the typed table; the familiar [`PageTable`]
/// calls dispatch to it.
pub enum CurrentElPageTable<P: PageAllocator> {
    /// An EL1&0 table (firmware at EL1).
    El1(Aarch64PageTable<P, DefaultAarch64Mmu, El1>),
    /// An EL2 table (firmware at EL2, HCR_EL2.E2H = 0).
    El2(Aarch64PageTable<P, DefaultAarch64El2Mmu, El2>),
}

impl<P: PageAllocator> CurrentElPageTable<P> {
    /// Creates an empty table for Exception level `el`, for the running CPU
    /// ([`Aarch64Config::detect`]) and the default MMU of that regime.
    pub fn new_for_el(el: ExceptionLevel, allocator: P, paging_type: PagingType) -> Result<Self, PtError> {
        Ok(match el {
            ExceptionLevel::El1 => Self::El1(Aarch64PageTable::new(allocator, paging_type)?),
            ExceptionLevel::El2 => Self::El2(Aarch64El2PageTable::new_el2(allocator, paging_type)?),
        })
    }

    /// Creates an empty table for the regime the code runs in ([`ExceptionLevel::current`]):
    /// `UnsupportedPagingType` at EL3 or at EL2 with HCR_EL2.E2H = 1.
    #[cfg(all(target_arch = "aarch64", any(target_os = "none", target_os = "uefi")))]
    pub fn new_for_current_el(allocator: P, paging_type: PagingType) -> Result<Self, PtError> {
        Self::new_for_el(ExceptionLevel::current()?, allocator, paging_type)
    }

    /// The Exception level the table is for.
    pub fn exception_level(&self) -> ExceptionLevel {
        match self {
            Self::El1(_) => ExceptionLevel::El1,
            Self::El2(_) => ExceptionLevel::El2,
        }
    }

    /// The register values [`install_page_table`](PageTable::install_page_table) programs.
    pub fn install_request(&self) -> InstallRequest {
        match self {
            Self::El1(table) => table.install_request(),
            Self::El2(table) => table.install_request(),
        }
    }

    /// Physical address of the root table.
    pub fn root(&self) -> u64 {
        match self {
            Self::El1(table) => table.root(),
            Self::El2(table) => table.root(),
        }
    }
}

impl<P: PageAllocator> PageTable for CurrentElPageTable<P> {
    fn map_memory_region(&mut self, address: u64, size: u64, attributes: MemoryAttributes) -> Result<(), PtError> {
        match self {
            Self::El1(table) => table.map_memory_region(address, size, attributes),
            Self::El2(table) => table.map_memory_region(address, size, attributes),
        }
    }

    fn unmap_memory_region(&mut self, address: u64, size: u64) -> Result<(), PtError> {
        match self {
            Self::El1(table) => table.unmap_memory_region(address, size),
            Self::El2(table) => table.unmap_memory_region(address, size),
        }
    }

    fn install_page_table(&self) -> Result<(), PtError> {
        match self {
            Self::El1(table) => table.install_page_table(),
            Self::El2(table) => table.install_page_table(),
        }
    }

    fn query_memory_region(&self, address: u64, size: u64) -> Result<MemoryAttributes, PtError> {
        match self {
            Self::El1(table) => table.query_memory_region(address, size),
            Self::El2(table) => table.query_memory_region(address, size),
        }
    }

    fn dump_page_tables(&self, address: u64, size: u64) {
        match self {
            Self::El1(table) => table.dump_page_tables(address, size),
            Self::El2(table) => table.dump_page_tables(address, size),
        }
    }
}
