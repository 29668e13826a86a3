//! The decisions the planner (`plan`) and the one-op fast path (`fast`) share, so each
//! is made in one place: what a page becomes (`new_entry`), what a table became after a
//! change (`Summary`, `Outcome`: the merge check), and the scan of the entries a change
//! left alone that completes it (`fold_untouched`).

use core::sync::atomic::Ordering;

use crate::allocator::PageAllocator;
use crate::attributes::MemoryAttributes;
use crate::codec::{Codec, Entry, INVALID_ENTRY};
use crate::geometry::{Geometry, ENTRIES_PER_TABLE, PAGE_SIZE};
use crate::memory::TableMemory;
use crate::overlay::Change;

/// Below this output address a leaf's raw value is its output address ORed with its other
/// bits, on both codecs (X64 and AArch64 leaves: the address field reaches at least bit 47,
/// the other bits sit above bit 51 or below bit 12). So stepping a leaf's raw value by its
/// entry size steps its output address and keeps its attributes, and two leaves with the
/// same other bits have the same attributes.
pub(crate) const RAW_ADDRESS_LIMIT: u64 = 1 << 48;

/// The output-address bits of a leaf's raw value below [`RAW_ADDRESS_LIMIT`].
const RAW_ADDRESS_BITS: u64 = (RAW_ADDRESS_LIMIT - 1) & !(PAGE_SIZE - 1);

/// Marks entries `first..first + count` of a table as touched.
#[inline]
pub(crate) fn mark_touched(touched: &mut [u64; ENTRIES_PER_TABLE / 64], first: usize, count: usize) {
    for index in first..first + count {
        touched[index / 64] |= 1 << (index % 64);
    }
}

/// Fills table `page` (of `level`) with the split of a leaf of the next level up mapping
/// `pa` with `attributes`. Below [`RAW_ADDRESS_LIMIT`] the entries step by one entry size
/// in their raw value, so they are computed, not each encoded.
pub(crate) fn fill_split<C: Codec, P: PageAllocator>(
    memory: &TableMemory<'_, P>,
    page: u64,
    pa: u64,
    attributes: MemoryAttributes,
    level: u8,
) {
    let size = Geometry::entry_size(level);
    if pa + ENTRIES_PER_TABLE as u64 * size <= RAW_ADDRESS_LIMIT {
        let mut value = C::encode_leaf(pa, attributes, level);
        for entry in memory.entries(page) {
            entry.store(value, Ordering::Relaxed);
            value += size;
        }
    } else {
        memory.fill(page, |index| {
            C::encode_leaf(pa + index as u64 * size, attributes, level)
        });
    }
}

/// The final state of one entry, as its parent sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Slot {
    Invalid,
    Leaf { pa: u64, attributes: MemoryAttributes },
    Table,
}

/// What a table became after the walk changed it.
pub(crate) enum Outcome {
    /// Every entry invalid.
    Empty,
    /// Every entry a leaf; together one contiguous mapping of `pa` with `attributes`.
    Uniform { pa: u64, attributes: MemoryAttributes },
    /// Anything else.
    Mixed,
}

/// Folds entries into an `Outcome`, in any order.
pub(crate) struct Summary {
    entry_size: u64,
    empty: bool,
    uniform: bool,
    first: Option<(u64, MemoryAttributes)>,
}

impl Summary {
    pub(crate) fn new(level: u8, can_merge: bool) -> Self {
        Self {
            entry_size: Geometry::entry_size(level),
            empty: true,
            uniform: can_merge,
            first: None,
        }
    }

    pub(crate) fn undecided(&self) -> bool {
        self.empty || self.uniform
    }

    pub(crate) fn add(&mut self, index: usize, slot: Slot) {
        match slot {
            Slot::Invalid => self.uniform = false,
            Slot::Table => {
                self.empty = false;
                self.uniform = false;
            }
            Slot::Leaf { pa, attributes } => {
                self.empty = false;
                if self.uniform {
                    let base = pa.wrapping_sub(index as u64 * self.entry_size);
                    match self.first {
                        None => self.first = Some((base, attributes)),
                        Some(first) => self.uniform = first == (base, attributes),
                    }
                }
            }
        }
    }

    pub(crate) fn outcome(&self) -> Outcome {
        match self.first {
            _ if self.empty => Outcome::Empty,
            Some((pa, attributes)) if self.uniform => Outcome::Uniform { pa, attributes },
            _ => Outcome::Mixed,
        }
    }
}

/// The new entries at both ends of a change, beside which the untouched entries start:
/// (raw, slot) of the lowest and the highest changed entry.
#[derive(Clone, Copy)]
pub(crate) struct Edges {
    pub(crate) low: (u64, Slot),
    pub(crate) high: (u64, Slot),
}

impl Edges {
    /// Edges not known: the scan decodes the first untouched entry on each side.
    pub(crate) const UNKNOWN: Edges = Edges {
        low: (INVALID_ENTRY, Slot::Table),
        high: (INVALID_ENTRY, Slot::Table),
    };

    /// Notes change number `page` (in address order, from 0): its new raw entry and slot.
    #[inline(always)]
    pub(crate) fn note(&mut self, page: usize, raw: u64, slot: Slot) {
        if page == 0 {
            self.low = (raw, slot);
        }
        self.high = (raw, slot);
    }
}

/// Folds the entries of `table` (of `level`) that a change left alone into `summary`,
/// nearest first (a mismatch usually sits right beside the change), until the outcome is
/// known: those after `highest`, those before `lowest`, then those between that
/// `changed` says were not changed. `edges` are the new entries at `lowest` and `highest`.
///
/// While the summary is undecided after a leaf, it is uniform; an entry whose raw value is
/// its folded neighbour's plus (or minus) one entry size, within the same frame of 512
/// entries, is that leaf continued and cannot change it, so it is skipped without
/// decoding. The frame bound keeps the arithmetic inside the entry's own nine address bits
/// on every architecture (a leaf is its output address ORed with attribute bits, and a
/// table pointer never equals a leaf plus one entry size: they differ in a type bit), so
/// the raw values compare exactly as the decoded leaves would. Likewise an all-zero entry
/// beside an invalid one that was folded: the summary is no longer uniform, and another
/// cannot change it. This is what makes finding a merge or an empty table cheap.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(crate) fn fold_untouched<C: Codec, P: PageAllocator>(
    memory: &TableMemory<'_, P>,
    table: u64,
    level: u8,
    (lowest, highest): (usize, usize),
    changed: impl Fn(usize) -> bool,
    edges: Edges,
    summary: &mut Summary,
) {
    let step = Geometry::entry_size(level);
    let frame = step * ENTRIES_PER_TABLE as u64;
    let read = |index: usize| memory.read(table, index);
    let (mut neighbour_raw, mut neighbour) = edges.high;
    let mut after = highest + 1;
    while summary.undecided() && after < ENTRIES_PER_TABLE {
        let raw = read(after);
        neighbour = match neighbour {
            Slot::Leaf { pa, attributes } if raw == neighbour_raw.wrapping_add(step) && pa % frame != frame - step => {
                Slot::Leaf {
                    pa: pa + step,
                    attributes,
                }
            }
            Slot::Invalid if raw == INVALID_ENTRY => Slot::Invalid,
            _ => {
                let slot = slot_of::<C>(raw, level);
                summary.add(after, slot);
                slot
            }
        };
        neighbour_raw = raw;
        after += 1;
    }
    let (mut neighbour_raw, mut neighbour) = edges.low;
    let mut before = lowest;
    while summary.undecided() && before > 0 {
        before -= 1;
        let raw = read(before);
        neighbour = match neighbour {
            Slot::Leaf { pa, attributes } if raw == neighbour_raw.wrapping_sub(step) && pa % frame != 0 => Slot::Leaf {
                pa: pa - step,
                attributes,
            },
            Slot::Invalid if raw == INVALID_ENTRY => Slot::Invalid,
            _ => {
                let slot = slot_of::<C>(raw, level);
                summary.add(before, slot);
                slot
            }
        };
        neighbour_raw = raw;
    }
    let mut between = lowest;
    while summary.undecided() && between < highest {
        if !changed(between) {
            summary.add(between, slot_of::<C>(read(between), level));
        }
        between += 1;
    }
}

/// The summary slot of an entry of a table at `level`.
#[inline]
pub(crate) fn slot_of<C: Codec>(raw: u64, level: u8) -> Slot {
    match C::decode(raw, level) {
        Entry::Leaf { pa, attributes } => Slot::Leaf { pa, attributes },
        Entry::Invalid => Slot::Invalid,
        Entry::Table(_) => Slot::Table,
    }
}

/// The new raw entry and its slot for page number `page` of `change`, given the old raw
/// entry; `None` where a precondition fails.
#[inline]
pub(crate) fn new_entry<C: Codec>(change: Change, page: usize, old: u64) -> Option<(u64, Slot)> {
    let offset = page as u64 * PAGE_SIZE;
    match (change, C::decode(old, 0)) {
        (Change::Map { pa, attributes }, _) => {
            let pa = pa + offset;
            Some((C::encode_leaf(pa, attributes, 0), Slot::Leaf { pa, attributes }))
        }
        (Change::Unmap, Entry::Leaf { .. }) => Some((INVALID_ENTRY, Slot::Invalid)),
        (Change::Protect { attributes: change }, Entry::Leaf { pa, attributes }) => {
            let attributes = attributes.reprotected(change);
            Some((C::encode_leaf(pa, attributes, 0), Slot::Leaf { pa, attributes }))
        }
        _ => None,
    }
}

/// The last leaf a protect decided from its decoded entry, kept for the next pages: below
/// [`RAW_ADDRESS_LIMIT`], an old leaf with the same bits besides its output address has the
/// same attributes, so the same change gives it the same new bits (one decode and encode
/// serve every page of a run of equal attributes).
#[derive(Clone, Copy)]
pub(crate) struct Reprotected {
    change: MemoryAttributes,
    old_bits: u64,
    new_bits: u64,
    attributes: MemoryAttributes,
}

/// [`new_entry`] for a last-level page, reusing (and updating) `last` for a protect.
#[inline(always)]
pub(crate) fn new_entry_reusing<C: Codec>(
    change: Change,
    page: usize,
    old: u64,
    last: &mut Option<Reprotected>,
) -> Option<(u64, Slot)> {
    let Change::Protect { attributes: requested } = change else {
        return new_entry::<C>(change, page, old);
    };
    let (pa, old_bits) = (old & RAW_ADDRESS_BITS, old & !RAW_ADDRESS_BITS);
    if let Some(known) = *last {
        if known.old_bits == old_bits && known.change == requested {
            let slot = Slot::Leaf {
                pa,
                attributes: known.attributes,
            };
            return Some((pa | known.new_bits, slot));
        }
    }
    let (raw, slot) = new_entry::<C>(change, page, old)?;
    if let Slot::Leaf {
        pa: decoded,
        attributes,
    } = slot
    {
        // Only where the decoded address is the raw one (a leaf below the limit).
        if decoded == pa && decoded < RAW_ADDRESS_LIMIT && raw & RAW_ADDRESS_BITS == pa {
            *last = Some(Reprotected {
                change: requested,
                old_bits,
                new_bits: raw & !RAW_ADDRESS_BITS,
                attributes,
            });
        }
    }
    Some((raw, slot))
}
