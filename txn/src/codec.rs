//! `Codec`: what each architecture supplies: entry encoding and attribute rules.

use crate::attributes::MemoryAttributes;
use crate::error::PtError;

/// A table entry, decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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
}

/// The invalid entry: all architectures here use zero.
pub const INVALID_ENTRY: u64 = 0;
