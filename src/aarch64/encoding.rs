//! AArch64 descriptor encoding (VMSAv8-64, stage 1, EL1&0 and EL2 regimes, 4 KiB granule)
//! and the MAIR_ELx / TCR_EL1 values that give the descriptors their meaning. The EL2
//! differences (one execute-never bit, AP\[1\] RES1, nG RES0, TCR_EL2) are in
//! [`regime`](super::regime); the table below is the EL1&0 encoding.
//!
//! "Arm ARM" is the Arm Architecture Reference Manual for A-profile, DDI 0487. Section
//! numbers are those of issue J.a; titles are given too, since later issues renumber.
//!
//! | attribute       | bits written in a block (L1, L2) or page (L3) descriptor            |
//! |-----------------|---------------------------------------------------------------------|
//! | cache attribute | AttrIndx\[2:0\] (bits 4:2), one [`MAIR_LAYOUT`] byte per attribute  |
//! | not ReadOnly    | AP\[2\] (bit 7) = 0; ReadOnly sets it. AP\[1\] (bit 6) = 0: no EL0 access |
//! | ExecuteProtect  | UXN (bit 54) and PXN (bit 53); device memory always gets both       |
//! | always          | AF (bit 10) = 1, SH (bits 9:8) = 0b11, nG (bit 11) = 0, NS (bit 5) = 0 |
//! | not ReadProtect | bit 0 (valid) = 1                                                   |
//!
//! Descriptor formats: Arm ARM D8.3 ("Translation table descriptor formats"); AP, UXN, PXN
//! and AF: D8.4 ("Memory access control"); AttrIndx and SH: D8.5 ("Memory region
//! attributes"); MAIR_EL1 and TCR_EL1: their register descriptions.
//!
//! *Device memory is execute-never.* Speculative instruction fetches from a Device region
//! are possible unless it is execute-never (Arm ARM chapter B2, "Device memory"), so `Uncached`
//! and `UncachedExport` leaves always get UXN and PXN. So that a query still returns exactly
//! what was mapped, such a leaf mapped *without* `ExecuteProtect` carries the software bit
//! [`SW_XN_FORCED`] (bits 58:55 are reserved for software in block and page descriptors).
//!
//! *ReadProtect.* A ReadProtect leaf is written invalid (bit 0 = 0) with [`SW_READ_PROTECTED`]
//! set and everything else of the leaf kept, so the mapping and its attributes read back;
//! the walker ignores bits 63:1 of an invalid descriptor (Arm ARM D8.3), and a TLB never
//! holds an invalid descriptor.
//!
//! *Table descriptors* are `0b11 | next-level address` and nothing else: APTable, UXNTable,
//! PXNTable and NSTable are 0, so the leaf alone decides (hierarchical permissions only
//! ever restrict, Arm ARM D8.4).
//!
//! *Break-before-make* ([`Codec::needs_break`] of [`Aarch64Codec`]): Arm ARM D8.14.1 ("Using
//! break-before-make when updating translation table entries", D8.13.1 in issue I.a, D8.16.1
//! in issue K.a), rule R_WHZWS.

use core::marker::PhantomData;

use txpaging_txn::{Codec, Entry, Geometry, MemoryAttributes, PtError, PAGE_SIZE};

use super::regime::{El1, Regime};

/// Valid descriptor.
pub const VALID: u64 = 1 << 0;
/// Descriptor type bit: a table (L0-L2) or a page (L3) when set, a block (L1, L2) when clear.
pub const TABLE_OR_PAGE: u64 = 1 << 1;
/// AttrIndx\[2:0\]: the MAIR_EL1 byte that gives the memory type.
pub const ATTR_INDEX_MASK: u64 = 7 << ATTR_INDEX_SHIFT;
/// Position of AttrIndx.
pub const ATTR_INDEX_SHIFT: u32 = 2;
/// Non-secure output address (ignored in the Non-secure state; always 0 here).
pub const NS: u64 = 1 << 5;
/// AP\[1\]: EL0 may access (never set here).
pub const AP_EL0: u64 = 1 << 6;
/// AP\[2\]: read-only at every EL.
pub const AP_READ_ONLY: u64 = 1 << 7;
/// SH\[1:0\]: shareability field.
pub const SH_MASK: u64 = 3 << 8;
/// SH = 0b11: Inner Shareable.
pub const SH_INNER: u64 = 3 << 8;
/// Access flag: set, so the first access does not fault (hardware AF management is not assumed).
pub const AF: u64 = 1 << 10;
/// Not global: the translation is tagged with an ASID (never set here).
pub const NG: u64 = 1 << 11;
/// Dirty bit modifier (FEAT_HAFDBS; never set here).
pub const DBM: u64 = 1 << 51;
/// Contiguous hint (never set here).
pub const CONTIGUOUS: u64 = 1 << 52;
/// Privileged execute-never.
pub const PXN: u64 = 1 << 53;
/// Unprivileged execute-never.
pub const UXN: u64 = 1 << 54;
/// Software bit: an invalid descriptor that is a ReadProtect leaf of this crate.
pub const SW_READ_PROTECTED: u64 = 1 << 55;
/// Software bit: UXN and PXN were set because the memory is Device, not because the
/// mapping asked for `ExecuteProtect`.
pub const SW_XN_FORCED: u64 = 1 << 56;
/// Bits 58:55, reserved for software use in block and page descriptors.
pub const SOFTWARE_MASK: u64 = 0xF << 55;
/// Output address bits 47:12 of a page descriptor or a table descriptor (48-bit OA).
pub const ADDRESS: u64 = 0x0000_FFFF_FFFF_F000;

/// Width of the output addresses the descriptors hold (4 KiB granule without FEAT_LPA2).
pub const PA_BITS: u8 = 48;

/// MAIR_EL1 attribute encodings (Arm ARM, MAIR_EL1 `Attr<n>`): high nibble outer,
/// low nibble inner; `0b0000dd00` is Device memory.
pub mod memory_type {
    /// Device-nGnRnE: no gathering, no reordering, no early write acknowledgement.
    pub const DEVICE_NGNRNE: u8 = 0x00;
    /// Normal, inner and outer Non-cacheable.
    pub const NORMAL_NC: u8 = 0x44;
    /// Normal, inner and outer Write-Through non-transient, read-allocate, write-allocate.
    pub const NORMAL_WT: u8 = 0xBB;
    /// Normal, inner and outer Write-Back non-transient, read-allocate, write-allocate.
    pub const NORMAL_WB: u8 = 0xFF;
    /// Normal, inner and outer Write-Through non-transient, read-allocate, no write-allocate.
    pub const NORMAL_WT_NO_WRITE_ALLOCATE: u8 = 0xAA;
}

/// The MAIR_EL1 value `install_page_table` programs. Byte `i` is the memory type of AttrIndx `i`:
///
/// | AttrIndx | byte | memory type                                     | used for         |
/// |----------|------|-------------------------------------------------|------------------|
/// | 0        | 0x00 | Device-nGnRnE                                   | `Uncached`       |
/// | 1        | 0x00 | Device-nGnRnE                                   | `UncachedExport` |
/// | 2        | 0x44 | Normal Non-cacheable                            | `WriteCombining` |
/// | 3        | 0xBB | Normal Write-Through, read- and write-allocate  | `WriteThrough`   |
/// | 4        | 0xFF | Normal Write-Back, read- and write-allocate     | `Writeback`      |
/// | 5        | 0xAA | Normal Write-Through, read-allocate only        | `WriteProtect`   |
/// | 6, 7     | 0x00 | Device-nGnRnE                                   | never written (read back as `Uncached`) |
///
/// Indices 0, 2, 3 and 4 follow the UEFI AArch64 binding (UEFI 2.11, 2.3.6.1 "Memory
/// types"). For the other two this crate chooses: `UncachedExport` gets the strongest type,
/// like `Uncached`, and `WriteProtect` (reads cached, writes through without filling lines)
/// gets write-through without write-allocate. Every cache attribute
/// has its own index, so a query returns exactly the attribute that was mapped.
pub const MAIR_LAYOUT: u64 = (memory_type::DEVICE_NGNRNE as u64)
    | (memory_type::DEVICE_NGNRNE as u64) << 8
    | (memory_type::NORMAL_NC as u64) << 16
    | (memory_type::NORMAL_WT as u64) << 24
    | (memory_type::NORMAL_WB as u64) << 32
    | (memory_type::NORMAL_WT_NO_WRITE_ALLOCATE as u64) << 40
    | (memory_type::DEVICE_NGNRNE as u64) << 48
    | (memory_type::DEVICE_NGNRNE as u64) << 56;

/// AttrIndx of a cache attribute (at most one bit set), by the bit's position:
/// Uncached (bit 0) -> 0, UncachedExport (4) -> 1, WriteCombining (1) -> 2,
/// WriteThrough (2) -> 3, Writeback (3) -> 4, WriteProtect (12) -> 5.
/// No cache attribute (which `check_map_attributes` rejects) -> 0, the strongest type.
#[inline]
pub const fn attr_index(cache: MemoryAttributes) -> u64 {
    match cache.bits().trailing_zeros() {
        4 => 1,
        1 => 2,
        2 => 3,
        3 => 4,
        12 => 5,
        _ => 0,
    }
}

/// Cache attribute of each AttrIndx (6 and 7, never written, read back as `Uncached`).
pub const CACHE_OF_ATTR_INDEX: [MemoryAttributes; 8] = [
    MemoryAttributes::Uncached,
    MemoryAttributes::UncachedExport,
    MemoryAttributes::WriteCombining,
    MemoryAttributes::WriteThrough,
    MemoryAttributes::Writeback,
    MemoryAttributes::WriteProtect,
    MemoryAttributes::Uncached,
    MemoryAttributes::Uncached,
];

/// Whether AttrIndx `index` selects Device memory in [`MAIR_LAYOUT`] (`Attr<n>[7:4] == 0`).
#[inline]
pub const fn is_device(index: u64) -> bool {
    (MAIR_LAYOUT >> (8 * index)) & 0xF0 == 0
}

/// Output address bits of a leaf at `level`: 47:12 (page), 47:21 (2 MiB block),
/// 47:30 (1 GiB block). The bits below are RES0 in a block descriptor.
#[inline]
pub const fn output_address_mask(level: u8) -> u64 {
    ADDRESS & !(Geometry::entry_size(level) - 1)
}

/// TCR_EL1 fields (Arm ARM, TCR_EL1 register description).
pub mod tcr {
    /// T0SZ\[5:0\]: the TTBR0 region is `2^(64 - T0SZ)` bytes.
    pub const T0SZ_SHIFT: u32 = 0;
    /// IRGN0\[9:8\] = 0b01: table walks are Inner Write-Back read- and write-allocate.
    pub const IRGN0_WB_WA: u64 = 0b01 << 8;
    /// ORGN0\[11:10\] = 0b01: table walks are Outer Write-Back read- and write-allocate.
    pub const ORGN0_WB_WA: u64 = 0b01 << 10;
    /// SH0\[13:12\] = 0b11: table walks are Inner Shareable.
    pub const SH0_INNER: u64 = 0b11 << 12;
    /// TG0\[15:14\] = 0b00: 4 KiB granule for TTBR0.
    pub const TG0_4K: u64 = 0b00 << 14;
    /// T1SZ\[21:16\].
    pub const T1SZ_SHIFT: u32 = 16;
    /// EPD1 (bit 23) = 1: no walks through TTBR1 (addresses with upper bits set fault).
    pub const EPD1: u64 = 1 << 23;
    /// TG1\[31:30\] = 0b10: 4 KiB granule for TTBR1 (TG1 encodes sizes unlike TG0).
    pub const TG1_4K: u64 = 0b10 << 30;
    /// IPS\[34:32\]: intermediate physical address size, PARange encoding.
    pub const IPS_SHIFT: u32 = 32;
}

/// ID_AA64MMFR0_EL1.PARange / TCR_EL1.IPS encoding of a 48-bit physical address space.
pub const PA_RANGE_48: u8 = 0b0101;

/// The TCR_EL1 value for a TTBR0 table translating `va_bits` bits with physical address size
/// `pa_range` (PARange encoding, capped at [`PA_RANGE_48`]): T0SZ = 64 - `va_bits`, 4 KiB
/// granule, walks Inner Shareable Write-Back read/write-allocate (how the table pages are
/// written: ordinary cacheable stores), TTBR1 walks disabled (EPD1; T1SZ and TG1 hold the
/// same size and granule so no field has a reserved value), IPS = `pa_range`, 8-bit ASIDs
/// taken from TTBR0 (A1 = 0, AS = 0), no top-byte ignore, no hardware AF/dirty management.
pub const fn tcr_el1(va_bits: u32, pa_range: u8) -> u64 {
    let tsz = (64 - va_bits) as u64;
    let ips = if pa_range > PA_RANGE_48 { PA_RANGE_48 } else { pa_range };
    tsz << tcr::T0SZ_SHIFT
        | tcr::IRGN0_WB_WA
        | tcr::ORGN0_WB_WA
        | tcr::SH0_INNER
        | tcr::TG0_4K
        | tsz << tcr::T1SZ_SHIFT
        | tcr::EPD1
        | tcr::TG1_4K
        | (ips as u64) << tcr::IPS_SHIFT
}

/// The operand of `TLBI VAE1IS` for `va`: VA\[55:12\] in bits 43:0 whatever the granule
/// (never shifted by the granule size), ASID (bits 63:48) 0, TTL (bits 47:44) 0 (no level
/// hint). Arm ARM, TLBI VAE1IS register description. TLBI VAE2IS takes the same operand
/// (its ASID field is RES0: the EL2 regime has no ASIDs).
#[inline]
pub const fn tlbi_va_operand(va: u64) -> u64 {
    (va >> 12) & ((1 << 44) - 1)
}

/// Rejects unknown bits (`InvalidParameter`), then a cache attribute count outside
/// `min..=1` (`IncompatibleMemoryAttributes`).
#[inline]
fn check_attributes(attributes: MemoryAttributes, min: u32) -> Result<(), PtError> {
    if attributes.unknown_bits() != 0 {
        return Err(PtError::InvalidParameter);
    }
    let caches = attributes.cache().bits().count_ones();
    if caches < min || caches > 1 {
        return Err(PtError::IncompatibleMemoryAttributes);
    }
    Ok(())
}

/// Bits a live valid descriptor may change without break-before-make (Arm ARM D8.14.1,
/// R_WHZWS lists what needs it: output address, memory type, shareability, block size or
/// descriptor type, contiguous bit, nG 1 -> 0): permissions (AP, PXN, UXN), AF, DBM, the
/// software bits, and nG 0 -> 1 (checked separately).
const CHANGE_IN_PLACE: u64 = AP_EL0 | AP_READ_ONLY | AF | NG | DBM | PXN | UXN | SOFTWARE_MASK;

/// The AArch64 codec of regime `R` ([`El1`] by default). Levels count from the leaf:
/// level 0 = L3 (pages), 1 = L2 (2 MiB blocks), 2 = L1 (1 GiB blocks), 3 = L0 (tables only).
#[derive(Debug, Clone, Copy, Default)]
pub struct Aarch64Codec<R: Regime = El1>(PhantomData<R>);

impl<R: Regime> Codec for Aarch64Codec<R> {
    /// Linux and Hafnium without FEAT_TLBIRANGE: up to 512 `TLBI VAE1IS` (VAE2IS), then
    /// `TLBI VMALLE1IS` (ALLE2IS).
    const PAGE_INVALIDATION_LIMIT: usize = 512;

    /// Commits on a live table issue DSB/ISB between their phases.
    const USES_BARRIERS: bool = true;

    /// A table being built needs no TLBI: installing it ends with `TLBI VMALLE1IS` (ALLE2IS).
    const NOT_LIVE_NEEDS_NO_INVALIDATION: bool = true;

    #[inline]
    fn decode(raw: u64, level: u8) -> Entry {
        let valid = raw & VALID != 0;
        if !valid && raw & SW_READ_PROTECTED == 0 {
            return Entry::Invalid;
        }
        let table_or_page = raw & TABLE_OR_PAGE != 0;
        match level {
            // L3: 0b11 is a page; 0b01 is reserved and faults like an invalid descriptor.
            0 if !table_or_page => return Entry::Invalid,
            0 => {}
            // L1, L2: 0b11 is a table, 0b01 a block.
            1 | 2 if table_or_page => {
                return if valid {
                    Entry::Table(raw & ADDRESS)
                } else {
                    Entry::Invalid
                }
            }
            1 | 2 => {}
            // L0: tables only (a 4 KiB-granule L0 block needs FEAT_LPA2).
            _ => {
                return if valid && table_or_page {
                    Entry::Table(raw & ADDRESS)
                } else {
                    Entry::Invalid
                }
            }
        }
        let mut attributes = CACHE_OF_ATTR_INDEX[((raw & ATTR_INDEX_MASK) >> ATTR_INDEX_SHIFT) as usize];
        attributes.set(MemoryAttributes::ReadProtect, !valid);
        attributes.set(MemoryAttributes::ReadOnly, raw & AP_READ_ONLY != 0);
        // The execute-never bit of the regime's privileged level: PXN at EL1&0 (UXN is
        // always written equal), XN (bit 54) at EL2.
        attributes.set(
            MemoryAttributes::ExecuteProtect,
            raw & R::PRIVILEGED_EXECUTE_NEVER != 0 && raw & SW_XN_FORCED == 0,
        );
        Entry::Leaf {
            pa: raw & output_address_mask(level),
            attributes,
        }
    }

    #[inline]
    fn encode_leaf(pa: u64, attributes: MemoryAttributes, level: u8) -> u64 {
        let index = attr_index(attributes.cache());
        let mut raw =
            (pa & output_address_mask(level)) | AF | SH_INNER | index << ATTR_INDEX_SHIFT | R::LEAF_RES1 | VALID;
        if level == 0 {
            raw |= TABLE_OR_PAGE;
        }
        if attributes.contains(MemoryAttributes::ReadOnly) {
            raw |= AP_READ_ONLY;
        }
        let execute_protect = attributes.contains(MemoryAttributes::ExecuteProtect);
        if execute_protect || is_device(index) {
            // UXN | PXN at EL1&0; XN (bit 54) alone at EL2, where bit 53 is RES0.
            raw |= R::EXECUTE_NEVER;
            if !execute_protect {
                raw |= SW_XN_FORCED;
            }
        }
        if attributes.contains(MemoryAttributes::ReadProtect) {
            raw = raw & !VALID | SW_READ_PROTECTED;
        }
        raw
    }

    #[inline]
    fn encode_table(pa: u64, _level: u8) -> u64 {
        (pa & ADDRESS) | TABLE_OR_PAGE | VALID
    }

    #[inline]
    fn is_live(raw: u64) -> bool {
        raw & VALID != 0
    }

    /// Exactly one cache attribute: AArch64 has no default memory type.
    #[inline]
    fn check_map_attributes(attributes: MemoryAttributes) -> Result<(), PtError> {
        check_attributes(attributes, 1)
    }

    #[inline]
    fn check_protect_attributes(attributes: MemoryAttributes) -> Result<(), PtError> {
        check_attributes(attributes, 0)
    }

    /// One for a page or block descriptor: `TLBI VAE1IS` invalidates every cached entry
    /// that would be used to translate the address it names (Arm ARM, TLBI VAE1IS
    /// description), and that includes the entry of a block holding it, whatever the block
    /// size; Linux's `flush_pmd_tlb_range` relies on one TLBI per block too. Every page of
    /// the range for a table descriptor: the TLB may hold an entry for each page below it,
    /// and a by-VA TLBI only drops those of the address it names.
    #[inline]
    fn invalidation_pages(old: u64, level: u8) -> u64 {
        match Self::decode(old, level) {
            Entry::Table(_) => Geometry::entry_size(level) / PAGE_SIZE,
            Entry::Leaf { .. } | Entry::Invalid => 1,
        }
    }

    /// Arm ARM D8.14.1 ("Using break-before-make when updating translation table entries"),
    /// rule R_WHZWS: replacing one valid descriptor by another needs a break when the output
    /// address, the memory type (AttrIndx), the shareability, the descriptor type or size
    /// (block <-> table, page or block <-> table pointer), the contiguous bit or any other
    /// bit this crate does not know changes, or when nG goes from 1 to 0. Permissions (AP,
    /// PXN, UXN), AF, DBM and the software bits change in place. A store of an invalid
    /// descriptor is itself the break and needs none.
    #[inline]
    fn needs_break(old: u64, new: u64, _level: u8) -> bool {
        if old & VALID == 0 || new & VALID == 0 {
            return false;
        }
        let global_again = old & NG != 0 && new & NG == 0;
        global_again || (old ^ new) & !CHANGE_IN_PLACE != 0
    }
}

const _: () = assert!(PAGE_SIZE == 4096);
const _: () = assert!(MAIR_LAYOUT == 0x0000_AAFF_BB44_0000);
