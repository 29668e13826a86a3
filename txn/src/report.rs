//! What a plan and a commit report: `Plan`, `CommitReport`, `Committed`, `Retired`. A leaf
//! module.

use core::fmt;

use smallvec::SmallVec;

use crate::attributes::MemoryAttributes;
use crate::hex::{Hex, HexList};
use crate::tlb::FlushBatch;

/// What a range becomes, as the plan reports it. `Debug` prints `pa` in hex.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum FinalState {
    /// Mapped to `pa` with `attributes`.
    Mapped {
        /// Physical address of the range's first byte.
        pa: u64,
        /// Attributes.
        attributes: MemoryAttributes,
    },
    /// Unmapped.
    Unmapped,
    /// Output addresses kept; each page gets `attributes` (keeping its cache type when
    /// `attributes` names none).
    Reprotected {
        /// The change.
        attributes: MemoryAttributes,
    },
}

/// A touched range and its final state. `Debug` prints `va` and `size` in hex.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct PlannedRange {
    /// Canonical virtual address.
    pub va: u64,
    /// Bytes.
    pub size: u64,
    /// What it becomes.
    pub state: FinalState,
}

/// The result of a dry run. `Debug` prints addresses in hex, counts in decimal.
#[derive(Clone, PartialEq, Eq)]
pub struct Plan {
    /// Every touched range with its final state, sorted by linear address.
    pub ranges: alloc::vec::Vec<PlannedRange>,
    /// Entry stores the commit would make (512 for each new table).
    pub entries_to_write: usize,
    /// Table pages the commit would allocate.
    pub tables_to_allocate: usize,
    /// Table pages the commit would free.
    pub tables_to_free: usize,
    /// Pages the commit would invalidate one by one.
    pub pages_to_invalidate: alloc::vec::Vec<u64>,
    /// Whether the commit would flush the whole TLB instead.
    pub full_flush: bool,
    /// Live entries the commit would break before changing (break-before-make).
    pub breaks: usize,
}

/// What a commit did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CommitReport {
    /// 64-bit entry stores (512 for each new table).
    pub entries_written: usize,
    /// Table pages allocated.
    pub tables_allocated: usize,
    /// Table pages given back to the allocator.
    pub tables_freed: usize,
    /// Single-page invalidations issued.
    pub pages_invalidated: usize,
    /// Full TLB flushes issued (0, 1, or 2 with break-before-make).
    pub full_flushes: usize,
    /// Live entries broken (stored invalid, invalidated) before their new value.
    pub breaks: usize,
    /// Invalidation batches issued: the one after the stores, plus one after the breaks.
    pub invalidation_batches: usize,
}

impl CommitReport {
    /// Adds another report's counts to this one.
    pub fn accumulate(&mut self, other: &CommitReport) {
        self.entries_written += other.entries_written;
        self.tables_allocated += other.tables_allocated;
        self.tables_freed += other.tables_freed;
        self.pages_invalidated += other.pages_invalidated;
        self.full_flushes += other.full_flushes;
        self.breaks += other.breaks;
        self.invalidation_batches += other.invalidation_batches;
    }
}

/// Table pages a commit stopped using, not yet given back to the allocator.
#[must_use = "retired pages leak unless passed to Tables::release"]
#[derive(Default)]
pub struct Retired {
    pub(crate) pages: SmallVec<[u64; 2]>,
}

impl Retired {
    /// Physical addresses of the retired table pages.
    pub fn pages(&self) -> &[u64] {
        &self.pages
    }
}

impl fmt::Debug for FinalState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            FinalState::Mapped { pa, attributes } => f
                .debug_struct("Mapped")
                .field("pa", &Hex(pa))
                .field("attributes", &attributes)
                .finish(),
            FinalState::Unmapped => f.write_str("Unmapped"),
            FinalState::Reprotected { attributes } => {
                f.debug_struct("Reprotected").field("attributes", &attributes).finish()
            }
        }
    }
}

impl fmt::Debug for PlannedRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PlannedRange")
            .field("va", &Hex(self.va))
            .field("size", &Hex(self.size))
            .field("state", &self.state)
            .finish()
    }
}

impl fmt::Debug for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Plan")
            .field("ranges", &self.ranges)
            .field("entries_to_write", &self.entries_to_write)
            .field("tables_to_allocate", &self.tables_to_allocate)
            .field("tables_to_free", &self.tables_to_free)
            .field("pages_to_invalidate", &HexList(&self.pages_to_invalidate))
            .field("full_flush", &self.full_flush)
            .field("breaks", &self.breaks)
            .finish()
    }
}

impl fmt::Debug for Retired {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Retired").field("pages", &HexList(&self.pages)).finish()
    }
}

/// The outcome of [`Transaction::commit_retiring`](crate::Transaction::commit_retiring).
#[derive(Debug)]
pub struct Committed {
    /// What the commit did.
    pub report: CommitReport,
    /// The invalidations issued on this CPU (other CPUs need the same).
    pub invalidations: FlushBatch,
    /// Table pages to give back once no CPU can walk them.
    pub retired: Retired,
}
