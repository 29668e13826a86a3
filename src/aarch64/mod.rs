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

use core::marker::PhantomData;

use txpaging_txn::{Geometry, MemoryAttributes, PageAllocator, PtError};

pub use encoding::{tcr_el1, Aarch64Codec, MAIR_LAYOUT, PA_BITS, PA_RANGE_48};
pub use foreign::ForeignTableError;
#[cfg(target_arch = "aarch64")]
pub use instructions::{Aarch64Mmu, CurrentTranslation};
pub use regime::{tcr_el2, El1, El2, ExceptionLevel, Regime};

use crate::arch::{sealed, Arch};
use crate::dump::DumpFormat;
use crate::mmu::{InstallRequest, Mmu};
use crate::table::PagingTable;
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

/// The AArch64 architecture of a [`PagingTable`], in translation regime `R` ([`El1`], the
/// default, or [`El2`]): VMSAv8-64 stage 1 tables with the 4 KiB granule, walked through
/// TTBR0_ELx, encoded by [`Aarch64Codec<R>`](Aarch64Codec). Name the tables
/// [`Aarch64PageTable`] (EL1&0) and [`Aarch64El2PageTable`] (EL2); a new regime is a new `R`.
///
/// # Installing
///
/// [`PageTable::install_page_table`] hands the MMU the regime's
/// [`InstallRequest`]: MAIR_ELx = [`MAIR_LAYOUT`], TCR_ELx ([`tcr_el1`] or [`tcr_el2`] of the
/// table's VA size and [`Aarch64Config::pa_range`]) and TTBR0_ELx = the root, then marks the
/// table live. The register sequence the real MMU runs is in the [module
/// documentation](crate::aarch64#installing).
///
/// # Break-before-make
///
/// Commits on a live table follow break-before-make (see the classification in
/// [`Aarch64Codec`]'s [`Codec::needs_break`](txpaging_txn::Codec::needs_break) and
/// `docs/engine.md`). Pin the code, stack and table pages the commits run on with
/// [`pin_range`](PagingTable::pin_range) so that no commit unmaps them, even briefly.
///
/// # Invalidation
///
/// Broadcast ([`Arch::BROADCAST_INVALIDATION`] is `true`): `TLBI VAE1IS` / `VMALLE1IS`
/// (`VAE2IS` / `ALLE2IS` at EL2) reach every CPU of the Inner Shareable domain, and the commit
/// of a live table waits for them with `DSB ISH`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Aarch64<R: Regime = El1>(PhantomData<R>);

impl<R: Regime> sealed::Sealed for Aarch64<R> {
    fn dump_format() -> &'static DumpFormat {
        if R::EL == 2 {
            &AARCH64_EL2_DUMP
        } else {
            &AARCH64_DUMP
        }
    }
}

impl<R: Regime> Arch for Aarch64<R> {
    type Codec = Aarch64Codec<R>;
    type Config = Aarch64Config;

    /// `true`: `TLBI ...IS` reaches every CPU of the Inner Shareable domain (Arm ARM TLBI
    /// register descriptions), and a live commit waits for it with `DSB ISH`.
    const BROADCAST_INVALIDATION: bool = true;

    /// 4 levels = 48-bit VA, 3 levels = 39-bit VA; TTBR0 addresses have all bits above the
    /// VA size clear (no sign extension). No 5-level mode with the 4 KiB granule
    /// (`UnsupportedPagingType`).
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

    /// MAIR_ELx = [`MAIR_LAYOUT`], TCR_ELx = [`Regime::tcr`] of the VA size and
    /// `config.pa_range`, TTBR0_ELx = `root`.
    fn install_request(
        root: u64,
        _paging_type: PagingType,
        geometry: Geometry,
        config: Aarch64Config,
    ) -> InstallRequest {
        R::install_request(MAIR_LAYOUT, R::tcr(geometry.va_bits(), config.pa_range), root)
    }
}

/// An AArch64 page table of translation regime `R` ([`El1`], the default, or [`El2`]): the
/// [`PagingTable`] of [`Aarch64<R>`](Aarch64), by default with the target's MMU. Identity maps
/// by default; see [`transaction`](PagingTable::transaction) for batched and aliased changes.
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
pub type Aarch64PageTable<P, M = DefaultAarch64Mmu, R = El1> = PagingTable<Aarch64<R>, P, M>;

/// The same type under the Arm spelling.
pub type AArch64PageTable<P, M = DefaultAarch64Mmu, R = El1> = Aarch64PageTable<P, M, R>;

/// A page table of the non-VHE EL2 regime (TTBR0_EL2).
///
/// ```
/// use txpaging::aarch64::Aarch64El2PageTable;
/// use txpaging::{InstallRequest, MemoryAttributes as A, PagePool, PageTable, PagingType};
///
/// let mut table = Aarch64El2PageTable::new_el2(PagePool::new(8), PagingType::Paging4Level)?;
/// table.map_memory_region(0x4000_0000, 0x20_0000, A::Writeback | A::ExecuteProtect)?;
/// assert_eq!(table.regime(), "EL2");
/// // Installing programs MAIR_EL2, TCR_EL2 and TTBR0_EL2.
/// assert!(matches!(table.install_request(), InstallRequest::Aarch64El2 { ttbr0, .. } if ttbr0 == table.root()));
/// # Ok::<(), txpaging::PtError>(())
/// ```
pub type Aarch64El2PageTable<P, M = DefaultAarch64El2Mmu> = Aarch64PageTable<P, M, El2>;

impl<P: PageAllocator> PagingTable<Aarch64<El1>, P, DefaultAarch64Mmu> {
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

impl<P: PageAllocator> PagingTable<Aarch64<El2>, P, DefaultAarch64El2Mmu> {
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

impl<P: PageAllocator, M: Mmu> PagingTable<Aarch64<El1>, P, M> {
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

impl<P: PageAllocator, M: Mmu, R: Regime> PagingTable<Aarch64<R>, P, M> {
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
        Self::create(allocator, paging_type, config, mmu)
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
        let checked = Aarch64::<R>::geometry(paging_type, config)?;
        if root % txpaging_txn::PAGE_SIZE == 0 {
            // SAFETY: forwarded contract; the walk only reads.
            unsafe { foreign::check_own::<R, P>(root, paging_type, checked.max_leaf_level, &allocator) }.map_err(
                |error| {
                    log::warn!("txpaging: from_existing refused the table: {error}");
                    PtError::from(error)
                },
            )?;
        }
        let _ = regime;
        // SAFETY: forwarded contract; the table was checked above.
        unsafe { Self::open(root, allocator, paging_type, config, mmu) }
    }

    /// The translation regime's name ("EL1&0" or "EL2").
    pub fn regime(&self) -> &'static str {
        R::NAME
    }

    /// Declares `size` bytes at `address` as never to be broken: the code, stack and table
    /// pages running the commits (the self-hosting hazard). A commit that would briefly
    /// unmap them fails with `PtError::PinnedRangeBreak` before any store.
    pub fn pin_range(&mut self, address: u64, size: u64) -> Result<(), PtError> {
        self.tables_mut().pin_range(address, size)
    }

    /// Removes every pinned range.
    pub fn unpin_all(&mut self) {
        self.tables_mut().unpin_all()
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
