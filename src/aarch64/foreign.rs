//! Tables someone else built (the firmware's): a checked walk that reads them under the MAIR
//! value in force, and the checks that let [`Aarch64PageTable::from_existing_with_mair`]
//! adopt one in place.
//!
//! Firmware tables give each AttrIndx the memory type of *their* MAIR_ELx. AAVMF programs
//! 0xffbb4400 (Attr0 Device-nGnRnE, Attr1 Normal Non-cacheable, Attr2 Normal Write-Through,
//! Attr3 Normal Write-Back), not [`MAIR_LAYOUT`], so its AttrIndx 3 means Write-Back where
//! ours means Write-Through. Two ways in:
//!
//! - **Read and re-map (the sound default).** [`existing_regions`] walks the foreign table
//!   and returns its mapped regions (VA, PA, size, [`MemoryAttributes`]) decoded under the
//!   foreign MAIR. The caller maps them into a new txpaging table, which encodes them under
//!   [`MAIR_LAYOUT`]; installing it programs MAIR_ELx = [`MAIR_LAYOUT`] with the new root in
//!   one sequence. Nothing of the foreign layout survives.
//! - **Adopt in place.** [`Aarch64PageTable::from_existing_with_mair`] opens the foreign
//!   table as a txpaging table only if every AttrIndx it uses selects the same MAIR byte in
//!   the foreign MAIR and in [`MAIR_LAYOUT`], and nothing else in it would be misread (see
//!   [`AdoptRules`]). Changes to it are encoded under [`MAIR_LAYOUT`]: install the table
//!   (`install_page_table`, which programs MAIR_ELx = [`MAIR_LAYOUT`]; every index in use
//!   keeps its memory type, so the switch changes no existing mapping) before the first
//!   change, or new mappings would be read under the foreign MAIR.
//!
//! A memory type with no [`MemoryAttributes`] equivalent is an error naming the VA and the
//! AttrIndx, never a guess. The equivalents are those of this crate's layout (docs/paging.md
//! A3): 0x00 Device-nGnRnE = `Uncached`, 0x44 Normal Non-cacheable = `WriteCombining`, 0xBB
//! Normal Write-Through RA/WA = `WriteThrough`, 0xFF Normal Write-Back RA/WA = `Writeback`,
//! 0xAA Normal Write-Through RA = `WriteProtect`. Other Device types (nGnRE, nGRE, GRE),
//! transient or non-allocating cacheable types and tagged memory have none.
//!
//! The walk is checked: it never follows a table descriptor to a table already on the walk
//! (a loop), reads at most a given number of table pages, and rejects the encodings the
//! architecture reserves (Arm ARM D8.3: bits\[1:0\] = 0b01 at L0 with the 4 KiB granule and
//! without FEAT_LPA2, 0b01 at L3) and leaves with AF = 0 (they fault on the first access,
//! Arm ARM D8.4 "The Access flag", and this crate assumes no hardware AF management).
//!
//! What a leaf means is read for the regime (Arm ARM D8.3.2, D8.4): `ReadOnly` from AP\[2\]
//! or an APTable\[1\] above it, `ExecuteProtect` from the execute-never bit of the regime's
//! own Exception level (PXN or PXNTable at EL1&0, XN or XNTable at EL2). Bits that only
//! concern EL0 (AP\[1\] and UXN at EL1&0), nG, SH and the contiguous hint are not part of
//! [`MemoryAttributes`] and are dropped: the re-mapped table is global, Inner Shareable, and
//! gives EL0 no access.

use alloc::vec::Vec;
use core::fmt;

use txpaging_txn::{read_table_entry, Geometry, MappedRegion, MemoryAttributes, PageAllocator, PtError};

use super::encoding::{output_address_mask, ADDRESS, AF, AP_READ_ONLY, MAIR_LAYOUT, SW_READ_PROTECTED, SW_XN_FORCED};
use super::regime::Regime;
use super::{Aarch64, Aarch64Config, Aarch64PageTable};
use crate::arch::Arch;
use crate::mmu::Mmu;
use crate::PagingType;

/// The default bound on the table pages a checked walk reads: 65536 pages (256 MiB of
/// tables, far above what a firmware identity map of a large machine needs).
pub const DEFAULT_MAX_TABLE_PAGES: usize = 1 << 16;

/// Table descriptor bit 62, APTable\[1\]: no write access below (Arm ARM D8.4.1.4,
/// "Hierarchical permissions").
const AP_TABLE_READ_ONLY: u64 = 1 << 62;
/// Table descriptor bit 60: UXNTable at EL1&0, XNTable at EL2.
const XN_TABLE_BIT_60: u64 = 1 << 60;
/// Table descriptor bit 59: PXNTable at EL1&0, RES0 at EL2.
const PXN_TABLE: u64 = 1 << 59;
/// Table descriptor bits 63:59 (NSTable, APTable, UXNTable/XNTable, PXNTable).
const TABLE_ATTRIBUTES: u64 = 0x1F << 59;

/// Why a foreign table cannot be read or adopted. Every variant names where.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ForeignTableError {
    /// The paging type or configuration is not one this crate serves.
    Unsupported(PtError),
    /// The root is not 4 KiB aligned.
    UnalignedRoot {
        /// The root given.
        root: u64,
    },
    /// The walk would read more than `limit` table pages.
    TooManyTables {
        /// The bound.
        limit: usize,
    },
    /// A table descriptor points at a table already on the walk to it (itself or an
    /// ancestor): the table loops.
    TableLoop {
        /// First VA of the entry's range.
        va: u64,
        /// Arm level of the descriptor (0-3).
        level: u8,
        /// The table it points at.
        table: u64,
    },
    /// A table is reached from two table descriptors. Readable, but txpaging cannot own
    /// it: a change through one path would change the other (adoption only).
    SharedTable {
        /// First VA of the second entry's range.
        va: u64,
        /// Arm level of the descriptor (0-3).
        level: u8,
        /// The table both point at.
        table: u64,
    },
    /// A descriptor breaks a rule (`rule` says which).
    Descriptor {
        /// First VA of the entry's range.
        va: u64,
        /// Arm level of the descriptor (0-3).
        level: u8,
        /// The descriptor.
        raw: u64,
        /// The rule it breaks.
        rule: &'static str,
    },
    /// A leaf's AttrIndx selects a MAIR byte that has no [`MemoryAttributes`] equivalent.
    UnknownMemoryType {
        /// First VA of the leaf's range.
        va: u64,
        /// The AttrIndx.
        index: u8,
        /// The MAIR byte it selects.
        mair_byte: u8,
    },
    /// A leaf's AttrIndx means another memory type under [`MAIR_LAYOUT`] than under the
    /// foreign MAIR (adoption only).
    MemoryTypeMismatch {
        /// First VA of the leaf's range.
        va: u64,
        /// The AttrIndx.
        index: u8,
        /// Its byte in the foreign MAIR.
        foreign: u8,
        /// Its byte in [`MAIR_LAYOUT`].
        ours: u8,
    },
}

impl fmt::Display for ForeignTableError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::Unsupported(error) => write!(f, "foreign table: {error}"),
            Self::UnalignedRoot { root } => write!(f, "foreign table root 0x{root:016x} is not 4 KiB aligned"),
            Self::TooManyTables { limit } => {
                write!(f, "foreign table has more than {limit} table pages (the walk's bound)")
            }
            Self::TableLoop { va, level, table } => write!(
                f,
                "L{level} table descriptor for VA 0x{va:016x} points at table 0x{table:016x}, \
                 which is already on its walk (the table loops)"
            ),
            Self::SharedTable { va, level, table } => write!(
                f,
                "L{level} table descriptor for VA 0x{va:016x} points at table 0x{table:016x}, \
                 which another descriptor points at too"
            ),
            Self::Descriptor { va, level, raw, rule } => {
                write!(f, "L{level} descriptor 0x{raw:016x} for VA 0x{va:016x}: {rule}")
            }
            Self::UnknownMemoryType { va, index, mair_byte } => write!(
                f,
                "leaf for VA 0x{va:016x} uses AttrIndx {index}, MAIR byte 0x{mair_byte:02x}, \
                 which has no UEFI memory attribute equivalent"
            ),
            Self::MemoryTypeMismatch {
                va,
                index,
                foreign,
                ours,
            } => write!(
                f,
                "leaf for VA 0x{va:016x} uses AttrIndx {index}: MAIR byte 0x{foreign:02x} in the \
                 foreign MAIR but 0x{ours:02x} in txpaging's"
            ),
        }
    }
}

impl core::error::Error for ForeignTableError {}

impl From<ForeignTableError> for PtError {
    /// The nearest familiar code: `UnsupportedPagingType` for a configuration this crate
    /// does not serve, `UnalignedPageBase` for the root, `IncompatibleMemoryAttributes` for
    /// memory types, `InvalidParameter` for the rest.
    fn from(error: ForeignTableError) -> Self {
        match error {
            ForeignTableError::Unsupported(error) => error,
            ForeignTableError::UnalignedRoot { .. } => PtError::UnalignedPageBase,
            ForeignTableError::UnknownMemoryType { .. } | ForeignTableError::MemoryTypeMismatch { .. } => {
                PtError::IncompatibleMemoryAttributes
            }
            _ => PtError::InvalidParameter,
        }
    }
}

/// The root and paging type of the table that TCR_ELx and TTBR0_ELx values describe (EL1 or
/// EL2 layout alike: T0SZ and TG0 are bits 5:0 and 15:14 in both): the root is TTBR0's
/// BADDR (bits 47:12; the ASID at 63:48 and CnP at bit 0 are dropped), T0SZ 16 is
/// `Paging4Level` and 25 `Paging3Level`. Another T0SZ, or a granule other than 4 KiB
/// (TG0 != 0b00), is `Unsupported(UnsupportedPagingType)`.
///
/// AAVMF's TCR_EL1 0x5_8080_3510 and TCR_EL2 0x8085_3510 both give `Paging4Level`.
pub const fn table_of_registers(tcr: u64, ttbr0: u64) -> Result<(u64, PagingType), ForeignTableError> {
    let tg0 = (tcr >> 14) & 0b11;
    let paging_type = match (tcr & 0x3F, tg0) {
        (16, 0) => PagingType::Paging4Level,
        (25, 0) => PagingType::Paging3Level,
        _ => return Err(ForeignTableError::Unsupported(PtError::UnsupportedPagingType)),
    };
    Ok((ttbr0 & ADDRESS, paging_type))
}

/// The [`MemoryAttributes`] cache attribute of a MAIR byte, if it has one (see the
/// [module documentation](self)).
pub const fn cache_of_mair_byte(byte: u8) -> Option<MemoryAttributes> {
    match byte {
        0x00 => Some(MemoryAttributes::Uncached),
        0x44 => Some(MemoryAttributes::WriteCombining),
        0xBB => Some(MemoryAttributes::WriteThrough),
        0xFF => Some(MemoryAttributes::Writeback),
        0xAA => Some(MemoryAttributes::WriteProtect),
        _ => None,
    }
}

/// Byte `index` of a MAIR value.
const fn mair_byte(mair: u64, index: u64) -> u8 {
    (mair >> (8 * index)) as u8
}

/// The stricter rules of an adoption in place, beyond those of [`existing_regions`]: a
/// table reached twice ([`ForeignTableError::SharedTable`]); an AttrIndx whose memory type
/// differs under [`MAIR_LAYOUT`] ([`ForeignTableError::MemoryTypeMismatch`]); table
/// descriptor bits 63:59 set (txpaging's decoder reads leaves alone); software bits 55 or
/// 56 set (txpaging's ReadProtect and forced-XN marks); a 1 GiB block when the
/// configuration has 1 GiB blocks off.
#[derive(Debug, Clone, Copy)]
pub struct AdoptRules {
    /// The highest engine level (0 = L3) that may hold a leaf.
    pub max_leaf_level: u8,
}

/// What is inherited from the table descriptors above an entry.
#[derive(Clone, Copy, Default)]
struct Inherited {
    read_only: bool,
    execute_never: bool,
}

struct Walker<'a, R: Regime, P: PageAllocator> {
    allocator: &'a P,
    mair: u64,
    limit: usize,
    adopt: Option<AdoptRules>,
    /// The table is txpaging's own (opened with `from_existing`): software bits 55 and 56
    /// carry txpaging's meanings and are accepted.
    own: bool,
    /// Table pages read so far (the root included), and, for adoption, which.
    pages: usize,
    seen: Vec<u64>,
    /// The tables on the walk from the root to the current one.
    path: Vec<u64>,
    regions: Vec<MappedRegion>,
    _regime: core::marker::PhantomData<R>,
}

impl<R: Regime, P: PageAllocator> Walker<'_, R, P> {
    fn descriptor(va: u64, level: u8, raw: u64, rule: &'static str) -> ForeignTableError {
        ForeignTableError::Descriptor {
            va,
            level: 3 - level,
            raw,
            rule,
        }
    }

    /// Walks the table at `table` (engine `level`, 0 = L3) covering VAs from `base`.
    fn walk(&mut self, table: u64, level: u8, base: u64, inherited: Inherited) -> Result<(), ForeignTableError> {
        self.pages += 1;
        if self.pages > self.limit {
            return Err(ForeignTableError::TooManyTables { limit: self.limit });
        }
        self.path.push(table);
        let size = Geometry::entry_size(level);
        for index in 0..txpaging_txn::ENTRIES_PER_TABLE {
            // SAFETY: `table` is the root or came from a table descriptor of this table; the
            // caller of `existing_regions` / `from_existing_with_mair` guarantees every table
            // page the table reaches is readable through the allocator.
            let raw = unsafe { read_table_entry(self.allocator, table, index) };
            let va = base + index as u64 * size;
            self.entry(raw, level, va, inherited)?;
        }
        self.path.pop();
        Ok(())
    }

    fn entry(&mut self, raw: u64, level: u8, va: u64, inherited: Inherited) -> Result<(), ForeignTableError> {
        const VALID: u64 = 1;
        const TYPE: u64 = 2;
        if raw & VALID == 0 {
            if self.adopt.is_some() && !self.own && raw & SW_READ_PROTECTED != 0 {
                return Err(Self::descriptor(
                    va,
                    level,
                    raw,
                    "invalid descriptor with software bit 55 set, which txpaging reads as a ReadProtect leaf",
                ));
            }
            return Ok(());
        }
        match (level, raw & TYPE != 0) {
            // Arm ARM D8.3: 0b01 at L3 is reserved; at L0 (4 KiB granule, no FEAT_LPA2) a
            // block descriptor is not allowed.
            (0, false) => {
                return Err(Self::descriptor(
                    va,
                    level,
                    raw,
                    "bits[1:0] = 0b01 at L3 is a reserved encoding",
                ))
            }
            (3, false) => {
                return Err(Self::descriptor(
                    va,
                    level,
                    raw,
                    "block descriptor at L0 (not allowed with the 4 KiB granule without FEAT_LPA2)",
                ))
            }
            (1..=3, true) => return self.table(raw, level, va, inherited),
            _ => {}
        }
        self.leaf(raw, level, va, inherited)
    }

    fn table(&mut self, raw: u64, level: u8, va: u64, inherited: Inherited) -> Result<(), ForeignTableError> {
        let child = raw & ADDRESS;
        if self.path.contains(&child) {
            return Err(ForeignTableError::TableLoop {
                va,
                level: 3 - level,
                table: child,
            });
        }
        if self.adopt.is_some() {
            if raw & TABLE_ATTRIBUTES != 0 {
                return Err(Self::descriptor(
                    va,
                    level,
                    raw,
                    "table descriptor with NSTable, APTable, XNTable or PXNTable set \
                     (txpaging reads permissions from leaves only)",
                ));
            }
            if self.seen.contains(&child) {
                return Err(ForeignTableError::SharedTable {
                    va,
                    level: 3 - level,
                    table: child,
                });
            }
            self.seen.push(child);
        }
        // Hierarchical permissions only restrict (Arm ARM D8.4.1.4): APTable[1] removes
        // write access; XNTable (EL2, bit 60) or PXNTable (EL1&0, bit 59) removes execution
        // at the regime's own level. UXNTable and APTable[0] concern EL0 only.
        let execute_never_table = if R::EL == 2 { XN_TABLE_BIT_60 } else { PXN_TABLE };
        let below = Inherited {
            read_only: inherited.read_only || raw & AP_TABLE_READ_ONLY != 0,
            execute_never: inherited.execute_never || raw & execute_never_table != 0,
        };
        self.walk(child, level - 1, va, below)
    }

    fn leaf(&mut self, raw: u64, level: u8, va: u64, inherited: Inherited) -> Result<(), ForeignTableError> {
        if raw & AF == 0 {
            return Err(Self::descriptor(
                va,
                level,
                raw,
                "AF = 0: the first access faults (txpaging assumes no hardware Access flag management)",
            ));
        }
        let index = (raw >> 2) & 7;
        let byte = mair_byte(self.mair, index);
        let Some(cache) = cache_of_mair_byte(byte) else {
            return Err(ForeignTableError::UnknownMemoryType {
                va,
                index: index as u8,
                mair_byte: byte,
            });
        };
        if let Some(rules) = self.adopt {
            let ours = mair_byte(MAIR_LAYOUT, index);
            if ours != byte {
                return Err(ForeignTableError::MemoryTypeMismatch {
                    va,
                    index: index as u8,
                    foreign: byte,
                    ours,
                });
            }
            if !self.own && raw & (SW_READ_PROTECTED | SW_XN_FORCED) != 0 {
                return Err(Self::descriptor(
                    va,
                    level,
                    raw,
                    "software bit 55 or 56 set, which txpaging gives a meaning",
                ));
            }
            if level > rules.max_leaf_level {
                return Err(Self::descriptor(
                    va,
                    level,
                    raw,
                    "1 GiB block while the configuration has 1 GiB blocks off",
                ));
            }
        }
        let mut attributes = cache;
        attributes.set(
            MemoryAttributes::ReadOnly,
            inherited.read_only || raw & AP_READ_ONLY != 0,
        );
        attributes.set(
            MemoryAttributes::ExecuteProtect,
            inherited.execute_never || raw & R::PRIVILEGED_EXECUTE_NEVER != 0,
        );
        let region = MappedRegion {
            va,
            pa: raw & output_address_mask(level),
            size: Geometry::entry_size(level),
            attributes,
        };
        match self.regions.last_mut() {
            Some(last)
                if last.va + last.size == region.va
                    && last.pa + last.size == region.pa
                    && last.attributes == region.attributes =>
            {
                last.size += region.size
            }
            _ => self.regions.push(region),
        }
        Ok(())
    }
}

/// Runs the checked walk; `adopt` adds the rules of an adoption in place.
///
/// # Safety
/// As for [`existing_regions`].
unsafe fn checked_walk<R: Regime, P: PageAllocator>(
    root: u64,
    paging_type: PagingType,
    mair: u64,
    allocator: &P,
    max_table_pages: usize,
    adopt: Option<AdoptRules>,
    own: bool,
) -> Result<Vec<MappedRegion>, ForeignTableError> {
    let geometry =
        Aarch64::<R>::geometry(paging_type, Aarch64Config::default()).map_err(ForeignTableError::Unsupported)?;
    if root % txpaging_txn::PAGE_SIZE != 0 {
        return Err(ForeignTableError::UnalignedRoot { root });
    }
    let mut walker = Walker::<R, P> {
        allocator,
        mair,
        limit: max_table_pages,
        adopt,
        own,
        pages: 0,
        seen: Vec::new(),
        path: Vec::new(),
        regions: Vec::new(),
        _regime: core::marker::PhantomData,
    };
    if adopt.is_some() {
        walker.seen.push(root);
    }
    walker.walk(root, geometry.top_level(), 0, Inherited::default())?;
    Ok(walker.regions)
}

/// The mapped regions of the foreign `regime` table at `root` (`paging_type` levels, TTBR0
/// addresses), decoded under `mair` (the MAIR_ELx in force when it is used; on target
/// `CurrentTranslation::read` gives it), in address order, adjacent identical pieces merged.
/// Reads at most `max_table_pages` table pages ([`DEFAULT_MAX_TABLE_PAGES`] is generous).
///
/// Map the regions into a new table (`map_aliased_memory_region`, or one transaction): it
/// encodes them under [`MAIR_LAYOUT`]. See the [module documentation](self) for what is
/// read and what is refused.
///
/// # Safety
/// `root` and every table page its table descriptors reach must be readable through
/// `allocator.physical_to_pointer` (the identity in firmware), and nothing may change the
/// table during the walk. The descriptors may hold anything: they are checked, not trusted.
pub unsafe fn existing_regions<R: Regime, P: PageAllocator>(
    regime: R,
    root: u64,
    paging_type: PagingType,
    mair: u64,
    allocator: &P,
    max_table_pages: usize,
) -> Result<Vec<MappedRegion>, ForeignTableError> {
    let _ = regime;
    // SAFETY: forwarded contract.
    unsafe { checked_walk::<R, P>(root, paging_type, mair, allocator, max_table_pages, None, false) }
}

impl<P: PageAllocator, M: Mmu, R: Regime> Aarch64PageTable<P, M, R> {
    /// Adopts the foreign `regime` table at `root`, built under `mair` (the MAIR_ELx in
    /// force), as a live txpaging table, after a checked walk (at most
    /// [`DEFAULT_MAX_TABLE_PAGES`] table pages) proves txpaging reads every descriptor as the
    /// hardware does under `mair`: every AttrIndx in use selects the same byte in `mair` and
    /// in [`MAIR_LAYOUT`], and the [`AdoptRules`] hold. Otherwise a [`ForeignTableError`]
    /// names the VA and the rule, and nothing is adopted.
    ///
    /// Changes are encoded under [`MAIR_LAYOUT`]: call `install_page_table` (MAIR_ELx =
    /// [`MAIR_LAYOUT`], same root) before the first change. The allocator receives the
    /// foreign table's pages when a change frees them.
    ///
    /// # Safety
    /// As for [`existing_regions`], and as for [`Aarch64PageTable::from_existing`]: the
    /// allocator must reach every table page, and nothing else may change the table while
    /// this value is in use.
    pub unsafe fn from_existing_with_mair(
        root: u64,
        allocator: P,
        paging_type: PagingType,
        config: Aarch64Config,
        mmu: M,
        regime: R,
        mair: u64,
    ) -> Result<Self, ForeignTableError> {
        let geometry = Aarch64::<R>::geometry(paging_type, config).map_err(ForeignTableError::Unsupported)?;
        let rules = AdoptRules {
            max_leaf_level: geometry.max_leaf_level,
        };
        // SAFETY: forwarded contract.
        unsafe {
            checked_walk::<R, P>(
                root,
                paging_type,
                mair,
                &allocator,
                DEFAULT_MAX_TABLE_PAGES,
                Some(rules),
                false,
            )?
        };
        let _ = regime;
        // SAFETY: forwarded contract; the walk checked the table is well formed for txpaging.
        unsafe { Self::open(root, allocator, paging_type, config, mmu) }.map_err(ForeignTableError::Unsupported)
    }
}

/// The checked walk of a table txpaging built (opened with `from_existing`): the adoption
/// rules under [`MAIR_LAYOUT`], with txpaging's software bits 55 and 56 accepted. A cycle
/// (`TableLoop`), a table reached twice (`SharedTable`), a reserved encoding (0b01 at L3, a
/// block at L0; Arm ARM D8.3), table descriptor attributes, AF = 0, an AttrIndx outside
/// txpaging's MAIR, or a 1 GiB block the configuration does not allow are refused.
///
/// # Safety
/// As for [`existing_regions`].
pub(crate) unsafe fn check_own<R: Regime, P: PageAllocator>(
    root: u64,
    paging_type: PagingType,
    max_leaf_level: u8,
    allocator: &P,
) -> Result<(), ForeignTableError> {
    let rules = AdoptRules { max_leaf_level };
    // SAFETY: forwarded contract.
    unsafe {
        checked_walk::<R, P>(
            root,
            paging_type,
            MAIR_LAYOUT,
            allocator,
            DEFAULT_MAX_TABLE_PAGES,
            Some(rules),
            true,
        )
    }
    .map(|_| ())
}
