//! `Codec`: what each architecture supplies: entry encoding and attribute rules.

use crate::attributes::MemoryAttributes;
use crate::error::PtError;

/// A table entry, decoded. `Debug` prints addresses in hex.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Entry {
    /// Maps nothing.
    Invalid,
    /// Points at the next-level table at this physical address.
    Table(u64),
    /// Maps the entry's whole range to `pa` with `attributes`.
    Leaf {
        /// Physical address of the first byte.
        pa: u64,
        /// Attributes of the mapping, exactly as they were mapped.
        attributes: MemoryAttributes,
    },
}

impl core::fmt::Debug for Entry {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match *self {
            Entry::Invalid => f.write_str("Invalid"),
            Entry::Table(pa) => f.debug_tuple("Table").field(&crate::hex::Hex(pa)).finish(),
            Entry::Leaf { pa, attributes } => f
                .debug_struct("Leaf")
                .field("pa", &crate::hex::Hex(pa))
                .field("attributes", &attributes)
                .finish(),
        }
    }
}

/// Entry encoding of one architecture. Implemented in the `txpaging` crate.
pub trait Codec {
    /// Above this many single-page invalidations a commit issues one full flush instead.
    const PAGE_INVALIDATION_LIMIT: usize;

    /// Decodes a raw entry found at `level`.
    fn decode(raw: u64, level: u8) -> Entry;

    /// Encodes a leaf at `level` mapping to `pa` (aligned to the level's size).
    fn encode_leaf(pa: u64, attributes: MemoryAttributes, level: u8) -> u64;

    /// Encodes a pointer to the table at `pa`, held in an entry of `level`.
    fn encode_table(pa: u64, level: u8) -> u64;

    /// Whether the hardware may have cached this entry (it is valid for the walker).
    fn is_live(raw: u64) -> bool;

    /// Checks the attributes of a map request.
    fn check_map_attributes(attributes: MemoryAttributes) -> Result<(), PtError>;

    /// Checks the attributes of a protect request (cache bits may be absent).
    fn check_protect_attributes(attributes: MemoryAttributes) -> Result<(), PtError>;

    /// Whether a table that is not live (never installed) needs no TLB invalidation: the
    /// install itself invalidates everything (AArch64: `TLBI VMALLE1IS`). Then commits on a
    /// table being built issue none.
    const NOT_LIVE_NEEDS_NO_INVALIDATION: bool = false;

    /// Whether commits issue [`Barrier`](crate::Barrier)s (AArch64: DSB/ISB) through the
    /// TLB interface. X64 needs none: its stores are ordered and INVLPG serializes.
    const USES_BARRIERS: bool = false;

    /// How many 4 KiB pages, from the start of its range, a change of the live entry `old`
    /// at `level` invalidates one by one. X64: 1, since one INVLPG covers a page of any size
    /// and the paging-structure caches for it (SDM 4.10.4.1).
    fn invalidation_pages(old: u64, level: u8) -> u64 {
        let _ = (old, level);
        1
    }

    /// Whether replacing the live entry `old` by `new` at `level` needs break-before-make:
    /// store invalid, invalidate, then store `new`. Only asked for valid `old` entries.
    fn needs_break(old: u64, new: u64, level: u8) -> bool {
        let _ = (old, new, level);
        false
    }
}

/// The invalid entry: all architectures here use zero.
pub const INVALID_ENTRY: u64 = 0;
