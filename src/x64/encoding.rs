//! X64 entry encoding (Intel SDM Vol. 3A, 4.5 "4-Level Paging and 5-Level Paging",
//! tables 4-15 to 4-20) and the IA32_PAT layout this crate programs.
//!
//! | attribute       | bit                                                       |
//! |-----------------|-----------------------------------------------------------|
//! | not ReadProtect | P (bit 0)                                                 |
//! | not ReadOnly    | R/W (bit 1)                                               |
//! | ExecuteProtect  | XD/NX (bit 63; needs IA32_EFER.NXE = 1, SDM 4.1.3)        |
//! | cache type      | PAT index = PAT * 4 + PCD * 2 + PWT (SDM 11.12.3)         |
//!
//! PAT is bit 7 in 4 KiB entries and bit 12 in 2 MiB / 1 GiB entries, where bit 7 is PS.
//! Non-leaf entries are permissive (P, R/W; never NX): leaves carry the rights.
//! U/S stays 0 everywhere: firmware runs at CPL 0, and user pages would trip SMEP/SMAP.
//! A/D are left clear and ignored when decoding, G is never set (a CR3 reload must flush).
//!
//! A ReadProtect leaf is written non-present (P = 0) with the software bit 9 set and the
//! rest of the leaf kept, so the mapping and its attributes survive and read back.
//! Hardware ignores bits 63:1 of a non-present entry (SDM 4.7).

use txpaging_txn::{Codec, Entry, MemoryAttributes, PtError, PAGE_SIZE};

/// Present.
pub const P: u64 = 1 << 0;
/// Writable.
pub const RW: u64 = 1 << 1;
/// User accessible.
pub const US: u64 = 1 << 2;
/// Page-level write-through (PAT index bit 0).
pub const PWT: u64 = 1 << 3;
/// Page-level cache disable (PAT index bit 1).
pub const PCD: u64 = 1 << 4;
/// Accessed.
pub const A: u64 = 1 << 5;
/// Dirty (leaves).
pub const D: u64 = 1 << 6;
/// Page size: the entry is a 2 MiB or 1 GiB leaf (levels 1 and 2).
pub const PS: u64 = 1 << 7;
/// PAT index bit 2 in a 4 KiB entry.
pub const PAT_4K: u64 = 1 << 7;
/// Global.
pub const G: u64 = 1 << 8;
/// Software bit: a non-present entry that is a ReadProtect leaf of this crate.
pub const SW_READ_PROTECTED: u64 = 1 << 9;
/// PAT index bit 2 in a 2 MiB / 1 GiB entry.
pub const PAT_LARGE: u64 = 1 << 12;
/// Execute disable.
pub const NX: u64 = 1 << 63;
/// Physical address bits 51:12 of a 4 KiB entry or a table pointer.
pub const ADDRESS_4K: u64 = 0x000F_FFFF_FFFF_F000;
/// Physical address bits 51:13 of a large-page entry (bit 12 is PAT there).
pub const ADDRESS_LARGE: u64 = 0x000F_FFFF_FFFF_E000;

/// IA32_PAT MSR number.
pub const IA32_PAT: u32 = 0x277;

/// Memory type encodings in IA32_PAT (SDM table 11-10).
mod memory_type {
    pub const UC: u64 = 0x00;
    pub const WC: u64 = 0x01;
    pub const WT: u64 = 0x04;
    pub const WP: u64 = 0x05;
    pub const WB: u64 = 0x06;
    pub const UC_MINUS: u64 = 0x07;
}

/// The IA32_PAT value `install_page_table` programs. Entry `i` is the memory type of PAT index `i`:
///
/// | index | PAT PCD PWT | type | used for                              | power-on type |
/// |-------|-------------|------|---------------------------------------|---------------|
/// | 0     | 0 0 0       | WB   | no cache attribute given              | WB            |
/// | 1     | 0 0 1       | WT   | `WriteThrough`                        | WT            |
/// | 2     | 0 1 0       | UC   | `UncachedExport`                      | UC-           |
/// | 3     | 0 1 1       | UC   | `Uncached`                            | UC            |
/// | 4     | 1 0 0       | WB   | `Writeback`                           | WB            |
/// | 5     | 1 0 1       | WP   | `WriteProtect`                        | WT            |
/// | 6     | 1 1 0       | UC-  | unused (reads back as `Uncached`)     | UC-           |
/// | 7     | 1 1 1       | WC   | `WriteCombining`                      | UC            |
///
/// Indices 0, 1 and 3 equal the power-on layout and index 2 differs only in UC versus UC-;
/// under the power-on layout every index gives the same or a stronger (less cached) type,
/// so tables stay safe before the MSR is programmed.
pub const PAT_LAYOUT: u64 = memory_type::WB
    | memory_type::WT << 8
    | memory_type::UC << 16
    | memory_type::UC << 24
    | memory_type::WB << 32
    | memory_type::WP << 40
    | memory_type::UC_MINUS << 48
    | memory_type::WC << 56;

/// PAT index for a cache attribute (at most one bit set), by the bit's position:
/// Uncached (bit 0) -> 3, WriteCombining (1) -> 7, WriteThrough (2) -> 1, Writeback (3) -> 4,
/// UncachedExport (4) -> 2, WriteProtect (12) -> 5, none -> 0.
#[inline]
fn pat_index(cache: MemoryAttributes) -> u64 {
    match cache.bits().trailing_zeros() {
        0 => 3,
        1 => 7,
        2 => 1,
        3 => 4,
        4 => 2,
        12 => 5,
        _ => 0,
    }
}

/// Cache attribute of each PAT index (6, never written, reads back as `Uncached`).
const CACHE_OF_PAT_INDEX: [MemoryAttributes; 8] = [
    MemoryAttributes::empty(),
    MemoryAttributes::WriteThrough,
    MemoryAttributes::UncachedExport,
    MemoryAttributes::Uncached,
    MemoryAttributes::Writeback,
    MemoryAttributes::WriteProtect,
    MemoryAttributes::Uncached,
    MemoryAttributes::WriteCombining,
];

/// Rejects unknown bits (`InvalidParameter`) and more than one cache attribute
/// (`IncompatibleMemoryAttributes`).
#[inline]
fn check_attributes(attributes: MemoryAttributes) -> Result<(), PtError> {
    if attributes.unknown_bits() != 0 {
        return Err(PtError::InvalidParameter);
    }
    if attributes.cache().bits().count_ones() > 1 {
        return Err(PtError::IncompatibleMemoryAttributes);
    }
    Ok(())
}

/// The X64 codec.
#[derive(Debug, Clone, Copy, Default)]
pub struct X64Codec;

impl Codec for X64Codec {
    /// Linux's choice: up to 33 INVLPGs, then a CR3 reload.
    const PAGE_INVALIDATION_LIMIT: usize = 33;

    /// A table never installed is in no TLB, and installing it loads CR3, which drops every
    /// non-global translation and the paging-structure caches (SDM 4.10.4.1; this crate
    /// never sets G). So commits on a table being built issue no INVLPG.
    const NOT_LIVE_NEEDS_NO_INVALIDATION: bool = true;

    #[inline]
    fn decode(raw: u64, level: u8) -> Entry {
        let present = raw & P != 0;
        if !present && raw & SW_READ_PROTECTED == 0 {
            return Entry::Invalid;
        }
        // PS is reserved above the PDPT (SDM table 4-15): only levels 1 and 2 hold large leaves.
        let large = (level == 1 || level == 2) && raw & PS != 0;
        if present && level > 0 && !large {
            return Entry::Table(raw & ADDRESS_4K);
        }
        let (pa, pat_bit) = if large {
            (raw & ADDRESS_LARGE, PAT_LARGE)
        } else {
            (raw & ADDRESS_4K, PAT_4K)
        };
        let index = u64::from(raw & pat_bit != 0) << 2 | u64::from(raw & PCD != 0) << 1 | u64::from(raw & PWT != 0);
        let mut attributes = CACHE_OF_PAT_INDEX[index as usize];
        attributes.set(MemoryAttributes::ReadProtect, !present);
        attributes.set(MemoryAttributes::ReadOnly, raw & RW == 0);
        attributes.set(MemoryAttributes::ExecuteProtect, raw & NX != 0);
        Entry::Leaf { pa, attributes }
    }

    #[inline]
    fn encode_leaf(pa: u64, attributes: MemoryAttributes, level: u8) -> u64 {
        let index = pat_index(attributes.cache());
        let pat_bit = if level == 0 { PAT_4K } else { PAT_LARGE | PS };
        let mut raw = pa & ADDRESS_4K;
        if level > 0 {
            raw |= PS;
        }
        if index & 4 != 0 {
            raw |= pat_bit;
        }
        if index & 2 != 0 {
            raw |= PCD;
        }
        if index & 1 != 0 {
            raw |= PWT;
        }
        if attributes.contains(MemoryAttributes::ReadProtect) {
            raw |= SW_READ_PROTECTED;
        } else {
            raw |= P;
        }
        if !attributes.contains(MemoryAttributes::ReadOnly) {
            raw |= RW;
        }
        if attributes.contains(MemoryAttributes::ExecuteProtect) {
            raw |= NX;
        }
        raw
    }

    #[inline]
    fn encode_table(pa: u64, _level: u8) -> u64 {
        (pa & ADDRESS_4K) | P | RW
    }

    #[inline]
    fn is_live(raw: u64) -> bool {
        raw & P != 0
    }

    #[inline]
    fn check_map_attributes(attributes: MemoryAttributes) -> Result<(), PtError> {
        check_attributes(attributes)
    }

    #[inline]
    fn check_protect_attributes(attributes: MemoryAttributes) -> Result<(), PtError> {
        check_attributes(attributes)
    }
}

const _: () = assert!(PAGE_SIZE == 4096);
