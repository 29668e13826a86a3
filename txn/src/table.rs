//! `Tables`: a page table of one architecture, generic over the codec, the page
//! allocator and the TLB interface. The arch crates wrap it in their public types.

use crate::allocator::{allocate_table_page, PageAllocator};
use crate::codec::{Codec, Entry};
use crate::error::PtError;
use crate::geometry::{Geometry, ENTRIES_PER_TABLE, PAGE_SIZE};
use crate::memory::TableMemory;
use crate::policy::{LinearPolicy, Policy};
use crate::tlb::Tlb;

/// A page table: its root, geometry, allocator and TLB interface.
pub struct Tables<C: Codec, P: PageAllocator, T: Tlb> {
    root: u64,
    geometry: Geometry,
    allocator: P,
    tlb: T,
    /// Installed: some CPU may walk it, so changes follow the break-before-make rules.
    live: core::cell::Cell<bool>,
    /// Linear ranges a commit must never break.
    pinned: smallvec::SmallVec<[(u64, u64); 4]>,
    /// The last-level table the one-op fast path last walked to, as (linear address of its
    /// 2 MiB span, table address). Only a commit that changes the structure can make it
    /// stale, and every such commit forgets it first (see `forget_walk_hint`).
    walk_hint: core::cell::Cell<Option<(u64, u64)>>,
    /// The error of the last failed [`commit_op`](Self::commit_op).
    last_error: Option<crate::error::TxnError>,
    /// The protection policy, as set and in linear addresses; `None` when off.
    policy: Option<alloc::boxed::Box<(Policy, LinearPolicy)>>,
    _codec: core::marker::PhantomData<C>,
}

impl<C: Codec, P: PageAllocator, T: Tlb> Tables<C, P, T> {
    /// Creates an empty table: allocates and zeroes the root page.
    pub fn new(mut allocator: P, geometry: Geometry, tlb: T) -> Result<Self, PtError> {
        let root = allocate_table_page(&mut allocator)?;
        TableMemory::new(&allocator).fill(root, |_| crate::codec::INVALID_ENTRY);
        Ok(Self::assemble(root, geometry, allocator, tlb, false))
    }

    /// Opens an existing table rooted at `root`.
    ///
    /// # Safety
    /// `root` must be the root of a well-formed table of this architecture and geometry,
    /// whose table pages `allocator.physical_to_pointer` reaches, and that nothing else
    /// changes while this value uses it.
    pub unsafe fn from_existing(root: u64, allocator: P, geometry: Geometry, tlb: T) -> Result<Self, PtError> {
        if root % PAGE_SIZE != 0 {
            return Err(PtError::UnalignedPageBase);
        }
        Ok(Self::assemble(root, geometry, allocator, tlb, true))
    }

    fn assemble(root: u64, geometry: Geometry, allocator: P, tlb: T, live: bool) -> Self {
        Self {
            root,
            geometry,
            allocator,
            tlb,
            live: core::cell::Cell::new(live),
            pinned: smallvec::SmallVec::new(),
            walk_hint: core::cell::Cell::new(None),
            last_error: None,
            policy: None,
            _codec: core::marker::PhantomData,
        }
    }

    /// Whether the table is installed (a CPU may walk it). A new table is not; one opened
    /// with `from_existing` is assumed to be; installing makes it so.
    pub fn is_live(&self) -> bool {
        self.live.get()
    }

    /// Marks the table installed or not. On architectures with break-before-make rules,
    /// commits on a live table break entries before changing them where the rules say so.
    pub fn set_live(&self, live: bool) {
        self.live.set(live);
    }

    /// Declares `size` bytes at `address` as never to be broken by a commit on a live
    /// table (the code, stack and table pages running the commit). A commit that would
    /// break an entry covering them fails with `PinnedRangeBreak` before any store.
    pub fn pin_range(&mut self, address: u64, size: u64) -> Result<(), PtError> {
        let range = self.geometry.linear_range(address, size)?;
        self.pinned.push(range);
        Ok(())
    }

    /// Removes every pinned range.
    pub fn unpin_all(&mut self) {
        self.pinned.clear();
    }

    /// Sets the protection [`Policy`] every later transaction and one-op call must obey
    /// (checked over the ranges each one touches; see [`Policy`]). [`Policy::off`] (the
    /// default) removes it. Pages mapped before are not checked:
    /// [`audit`](Self::audit) reports them.
    ///
    /// ## Errors
    /// Range errors (as for a map) for a registered code or data range; the policy is then
    /// unchanged.
    pub fn set_policy(&mut self, policy: Policy) -> Result<(), PtError> {
        if policy.is_off() {
            self.policy = None;
            return Ok(());
        }
        let linear = LinearPolicy::new(&policy, &self.geometry)?;
        self.policy = Some(alloc::boxed::Box::new((policy, linear)));
        Ok(())
    }

    /// The protection policy ([`Policy::off`] unless one was set).
    pub fn policy(&self) -> &Policy {
        static OFF: Policy = Policy::off();
        match &self.policy {
            Some(policy) => &policy.0,
            None => &OFF,
        }
    }

    /// The policy in linear addresses, if one is set.
    pub(crate) fn linear_policy(&self) -> Option<&LinearPolicy> {
        self.policy.as_deref().map(|(_, linear)| linear)
    }

    /// Whether the one-op fast paths may commit `op`: no policy is set, or `op` is valid
    /// and its final state obeys the policy. Otherwise the planner commits it and reports
    /// the error.
    #[inline]
    pub(crate) fn policy_allows_fast(&self, op: &crate::op::Op) -> bool {
        let Some(policy) = self.linear_policy() else {
            return true;
        };
        let Ok((start, end, change)) = crate::op::check_op::<C>(&self.geometry, op) else {
            return false;
        };
        let mut overlay = crate::overlay::Overlay::default();
        if overlay.fold(0, start, end, change).is_err() {
            return false;
        }
        policy
            .first_violation(overlay.segments(), &mut |s, e| self.first_mmio(s, e))
            .is_none()
    }

    /// The last-level table of the 2 MiB span starting at linear `span`, if the fast path
    /// walked to it since the last structural change.
    #[inline]
    pub(crate) fn walk_hint(&self, span: u64) -> Option<u64> {
        match self.walk_hint.get() {
            Some((hint_span, table)) if hint_span == span => Some(table),
            _ => None,
        }
    }

    /// Remembers that the 2 MiB span at linear `span` is held by the last-level table `table`.
    #[inline]
    pub(crate) fn set_walk_hint(&self, span: u64, table: u64) {
        self.walk_hint.set(Some((span, table)));
    }

    /// Forgets the walk hint. Called before any store that can link, unlink or free a table.
    #[inline]
    pub(crate) fn forget_walk_hint(&self) {
        self.walk_hint.set(None);
    }

    /// The pinned ranges, as linear `(start, end)` pairs.
    pub(crate) fn pinned(&self) -> &[(u64, u64)] {
        &self.pinned
    }

    /// Physical address of the root table.
    pub fn root(&self) -> u64 {
        self.root
    }

    /// The paging geometry.
    pub fn geometry(&self) -> Geometry {
        self.geometry
    }

    /// The page allocator.
    pub fn allocator(&self) -> &P {
        &self.allocator
    }

    /// The page allocator, mutably (do not use it to change table pages).
    pub fn allocator_mut(&mut self) -> &mut P {
        &mut self.allocator
    }

    /// The TLB interface.
    pub fn tlb(&self) -> &T {
        &self.tlb
    }

    /// Gives up the table, returning its root and the allocator.
    pub fn into_parts(self) -> (u64, P, T) {
        (self.root, self.allocator, self.tlb)
    }

    /// The full error of the last failed [`commit_op`](Self::commit_op) (the familiar
    /// one-op calls), which they report only as its [`PtError`] code. Kept until the next
    /// failure.
    pub fn last_error(&self) -> Option<crate::error::TxnError> {
        self.last_error
    }

    /// Keeps `error` for [`last_error`](Self::last_error).
    pub(crate) fn note_error(&mut self, error: crate::error::TxnError) {
        self.last_error = Some(error);
    }

    /// Gives the pages a [`commit_retiring`](crate::Transaction::commit_retiring) retired back to
    /// the allocator. Call it once no CPU can still walk them.
    pub fn release(&mut self, retired: crate::report::Retired) {
        for page in retired.pages {
            self.allocator.free_page(page, PAGE_SIZE);
        }
    }

    pub(crate) fn parts_mut(&mut self) -> (u64, Geometry, &mut P, &T) {
        (self.root, self.geometry, &mut self.allocator, &self.tlb)
    }

    /// Reads one raw entry (for dumps and decoders).
    pub fn read_entry(&self, table: u64, index: usize) -> u64 {
        TableMemory::new(&self.allocator).read(table, index)
    }

    /// Number of table pages reachable from the root, the root included.
    pub fn table_pages(&self) -> usize {
        fn count<C: Codec, P: PageAllocator>(memory: &TableMemory<'_, P>, table: u64, level: u8) -> usize {
            let mut pages = 1;
            for index in 0..ENTRIES_PER_TABLE {
                if let Entry::Table(child) = C::decode(memory.read(table, index), level) {
                    pages += count::<C, P>(memory, child, level - 1);
                }
            }
            pages
        }
        count::<C, P>(&TableMemory::new(&self.allocator), self.root, self.geometry.top_level())
    }
}
