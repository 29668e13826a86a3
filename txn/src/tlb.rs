//! `Tlb`: the pluggable invalidation interface, and `FlushBatch`, the invalidations a
//! commit collects and issues once at the end.

use smallvec::SmallVec;

/// An ordering point of a commit (issued only for codecs with `USES_BARRIERS`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Barrier {
    /// Make earlier table stores visible to the table walkers of every CPU before what
    /// follows (AArch64 `DSB ISHST`).
    Stores,
    /// Wait until earlier invalidations are complete on every CPU (AArch64 `DSB ISH`).
    Invalidations,
    /// Make this CPU fetch and translate afresh from here on (AArch64 `ISB`).
    Instructions,
}

/// Issues TLB invalidations. Real instructions on bare metal, a recorder on the host.
///
/// Methods take `&self` so recorders use interior mutability and a table can be queried
/// while shared.
pub trait Tlb {
    /// Invalidates the translation of the page containing canonical address `va`, whatever its size,
    /// and any paging-structure caches that the architecture ties to it.
    fn invalidate_page(&self, va: u64);
    /// Invalidates every translation this table may have left in the TLB.
    fn invalidate_all(&self);
    /// Issues an ordering barrier. The default does nothing (X64).
    fn barrier(&self, barrier: Barrier) {
        let _ = barrier;
    }
}

/// The invalidations of one commit, collected while entries are written.
#[derive(Debug, Clone, Default)]
pub struct FlushBatch {
    pages: SmallVec<[u64; 4]>,
    full: bool,
    limit: usize,
}

impl FlushBatch {
    /// An empty batch that switches to a full flush above `limit` pages.
    pub fn new(limit: usize) -> Self {
        Self {
            pages: SmallVec::new(),
            full: false,
            limit,
        }
    }

    /// Records that the translation at canonical `va` changed (once per address).
    pub fn record(&mut self, va: u64) {
        if self.full || self.pages.contains(&va) {
            return;
        }
        if self.pages.len() == self.limit {
            self.full = true;
            self.pages.clear();
        } else {
            self.pages.push(va);
        }
    }

    /// Whether the batch became one full flush.
    pub fn is_full(&self) -> bool {
        self.full
    }

    /// The pages to invalidate one by one (empty after a switch to a full flush).
    pub fn pages(&self) -> &[u64] {
        &self.pages
    }

    /// Issues the batch through `tlb`.
    pub fn issue(&self, tlb: &impl Tlb) {
        if self.full {
            tlb.invalidate_all();
        } else {
            for &va in &self.pages {
                tlb.invalidate_page(va);
            }
        }
    }
}
