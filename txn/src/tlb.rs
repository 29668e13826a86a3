//! `Tlb`: the pluggable invalidation interface, and `FlushBatch`, the invalidations a
//! commit collects and issues once at the end.

use core::fmt;

use smallvec::SmallVec;

use crate::hex::HexRuns;

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

/// What [`FlushBatch::issue_single`] issued, as a commit report counts it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Issued {
    /// Pages invalidated one by one.
    pub(crate) pages: usize,
    /// One full flush instead.
    pub(crate) full: bool,
    /// Anything at all (one batch).
    pub(crate) any: bool,
}

/// The invalidations of one commit, collected while entries are written: runs of pages
/// invalidated one by one, or one full flush once more than `limit` pages would be needed.
///
/// `Debug` prints each run as `(first page in hex, pages)`. A batch built for a table no
/// TLB can hold yet (a never-installed table: its install flushes everything) has
/// `records_nothing: true` and stays empty whatever is recorded.
#[derive(Clone, Default)]
pub struct FlushBatch {
    /// (canonical va, pages) runs, each recorded once.
    ranges: SmallVec<[(u64, u64); 4]>,
    pages: u64,
    full: bool,
    limit: usize,
    /// The table is not installed, so no TLB holds its translations: record nothing.
    records_nothing: bool,
}

impl fmt::Debug for FlushBatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FlushBatch")
            .field("ranges", &HexRuns(&self.ranges))
            .field("pages", &self.pages)
            .field("full", &self.full)
            .field("limit", &self.limit)
            .field("records_nothing", &self.records_nothing)
            .finish()
    }
}

impl FlushBatch {
    /// An empty batch that switches to a full flush above `limit` pages.
    pub fn new(limit: usize) -> Self {
        Self {
            ranges: SmallVec::new(),
            pages: 0,
            full: false,
            limit,
            records_nothing: false,
        }
    }

    /// The batch of a commit on a table no TLB can hold: it records nothing.
    pub(crate) fn none() -> Self {
        Self {
            records_nothing: true,
            ..Self::new(0)
        }
    }

    /// The batch for a commit on a table whose codec is `C` and which is `live` or not.
    pub(crate) fn for_table<C: crate::codec::Codec>(live: bool) -> Self {
        match Self::limit_for::<C>(live) {
            Some(limit) => Self::new(limit),
            None => Self::none(),
        }
    }

    /// The page limit of a batch for a table whose codec is `C`, or `None` if a commit on it
    /// needs no invalidation at all (a table no TLB can hold).
    #[inline]
    fn limit_for<C: crate::codec::Codec>(live: bool) -> Option<usize> {
        (live || !C::NOT_LIVE_NEEDS_NO_INVALIDATION).then_some(C::PAGE_INVALIDATION_LIMIT)
    }

    /// Whether [`record`](Self::record) still records anything: not once the batch became a
    /// full flush, nor for a table no TLB can hold. Lets a store loop skip working out
    /// what to record.
    #[inline]
    pub(crate) fn records(&self) -> bool {
        !self.records_nothing && !self.full
    }

    /// Records that the translations of `pages` pages from canonical `va` changed.
    /// A run starting at an address already recorded is not recorded again.
    pub fn record(&mut self, va: u64, pages: u64) {
        if self.records_nothing || self.full || self.ranges.iter().any(|&(start, _)| start == va) {
            return;
        }
        if self.pages + pages > self.limit as u64 {
            self.full = true;
            self.ranges.clear();
            self.pages = 0;
        } else {
            self.ranges.push((va, pages));
            self.pages += pages;
        }
    }

    /// Whether the batch became one full flush.
    pub fn is_full(&self) -> bool {
        self.full
    }

    /// Whether the batch has nothing to issue.
    pub fn is_empty(&self) -> bool {
        !self.full && self.ranges.is_empty()
    }

    /// Number of single-page invalidations the batch issues (0 after a switch to a full flush).
    pub fn page_count(&self) -> usize {
        self.pages as usize
    }

    /// The pages invalidated one by one, in order (none after a switch to a full flush).
    pub fn pages(&self) -> impl Iterator<Item = u64> + '_ {
        self.ranges
            .iter()
            .flat_map(|&(va, pages)| (0..pages).map(move |page| va.wrapping_add(page * 4096)))
    }

    /// A point to [`roll_back`](Self::roll_back) to.
    pub(crate) fn checkpoint(&self) -> (usize, u64) {
        (self.ranges.len(), self.pages)
    }

    /// Forgets what was recorded after `checkpoint`. A batch that became a full flush since
    /// stays one (always safe).
    pub(crate) fn roll_back(&mut self, checkpoint: (usize, u64)) {
        if !self.full {
            self.ranges.truncate(checkpoint.0);
            self.pages = checkpoint.1;
        }
    }

    /// Issues, without building a batch, exactly what a new batch for a table whose codec is
    /// `C` (`live` or not) would issue after recording only `pages` pages from `va`: nothing
    /// for a table no TLB can hold, one full flush above the limit, else the pages one by one.
    pub(crate) fn issue_single<C: crate::codec::Codec>(tlb: &impl Tlb, live: bool, va: u64, pages: u64) -> Issued {
        let Some(limit) = Self::limit_for::<C>(live) else {
            return Issued::default();
        };
        if pages > limit as u64 {
            tlb.invalidate_all();
            return Issued {
                pages: 0,
                full: true,
                any: true,
            };
        }
        let mut page_va = va;
        for _ in 0..pages {
            tlb.invalidate_page(page_va);
            page_va = page_va.wrapping_add(4096);
        }
        Issued {
            pages: pages as usize,
            full: false,
            any: true,
        }
    }

    /// Issues the batch through `tlb`.
    pub fn issue(&self, tlb: &impl Tlb) {
        if self.full {
            tlb.invalidate_all();
            return;
        }
        // Plain loops rather than `pages()`: this runs once per one-op commit.
        for &(va, pages) in &self.ranges {
            let mut page_va = va;
            for _ in 0..pages {
                tlb.invalidate_page(page_va);
                page_va = page_va.wrapping_add(4096);
            }
        }
    }
}

/// The one barrier sequence around a commit's invalidations, for the planned commit and
/// the one-op fast path alike. With break-before-make phases (a live AArch64 table): the
/// stores complete (`DSB ISHST`), then `invalidate` runs, then the invalidations complete
/// (`DSB ISH`) and later instructions see the new translations (`ISB`), Arm ARM D8.14.1.
/// Without them (X64, where the stores and INVLPG are ordered by the CPU, SDM 4.10.4, or a
/// table no CPU walks): `invalidate` alone.
#[inline(always)]
pub(crate) fn after_stores<T: Tlb, R>(tlb: &T, phased: bool, invalidate: impl FnOnce() -> R) -> R {
    if phased {
        tlb.barrier(Barrier::Stores);
    }
    let result = invalidate();
    if phased {
        tlb.barrier(Barrier::Invalidations);
        tlb.barrier(Barrier::Instructions);
    }
    result
}
