//! `PagePool`: a fixed arena of 4 KiB pages that implements [`PageAllocator`].
//!
//! For building tables off-target (tools, tests, benchmarks) and for building a table
//! image at a chosen physical base: the pool hands out physical addresses
//! `base..base + pages * 4096` and translates them to its own memory.

use alloc::alloc::{alloc_zeroed, dealloc, Layout};
use alloc::vec::Vec;
use core::ptr::NonNull;

use txpaging_txn::{PageAllocator, PtError, PAGE_SIZE};

/// A fixed arena of 4 KiB pages handed out as physical addresses from a chosen base.
///
/// It gives back what [`free_page`](PageAllocator::free_page) returns, counts its calls,
/// and can be told to fail an allocation, which makes it the allocator of host tests and
/// tools (a firmware allocator would call its page services, see [`PageAllocator`]):
///
/// ```
/// use txpaging::{MemoryAttributes as A, PageAllocator, PagePool, PageTable, PagingType, PtError, X64PageTable};
///
/// let mut table = X64PageTable::new(PagePool::new(8), PagingType::Paging4Level)?;
/// table.map_memory_region(0x20_0000, 0x1000, A::Writeback)?;
/// assert_eq!(table.allocator().live_pages(), 4); // PML4, PDPT, PD, PT
/// table.unmap_memory_region(0x20_0000, 0x1000)?;
/// assert_eq!(table.allocator().live_pages(), 1, "the emptied tables went back to the pool");
///
/// // Fail the next allocation: the commit fails whole and gives every page back.
/// let next = table.allocator().allocations();
/// table.allocator_mut().fail_at(Some(next));
/// assert_eq!(table.map_memory_region(0, 0x1000, A::Writeback), Err(PtError::OutOfResources));
/// assert_eq!(table.allocator().live_pages(), 1);
///
/// // A table image for a chosen physical base (a tool building tables for another machine).
/// let mut image = PagePool::with_physical_base(4, 0x8000_0000);
/// assert_eq!(image.allocate_page(0x1000, 0x1000), Ok(0x8000_0000));
///
/// // An empty pool is no error until a page is needed.
/// assert_eq!(X64PageTable::new(PagePool::new(0), PagingType::Paging4Level).err(), Some(PtError::OutOfResources));
/// # Ok::<(), PtError>(())
/// ```
pub struct PagePool {
    memory: NonNull<u8>,
    pages: usize,
    base: u64,
    free: Vec<u32>,
    live: Vec<bool>,
    allocations: usize,
    fail_at: Option<usize>,
    bad_frees: usize,
}

// SAFETY: the pool owns its arena exclusively; nothing in it is tied to a thread.
unsafe impl Send for PagePool {}

impl PagePool {
    /// A pool of `pages` pages whose physical addresses are their host addresses
    /// (identity, as firmware sees memory). A pool of 0 pages is empty: every allocation
    /// fails with `OutOfResources`.
    ///
    /// # Panics
    /// If `pages` is `u32::MAX` or more, or the host cannot allocate the arena.
    pub fn new(pages: usize) -> Self {
        let mut pool = Self::with_physical_base(pages, 0);
        if pages > 0 {
            pool.base = pool.memory.as_ptr() as u64;
        }
        pool
    }

    /// A pool of `pages` pages whose physical addresses start at `base` (page aligned).
    /// A pool of 0 pages is empty: every allocation fails with `OutOfResources`.
    ///
    /// # Panics
    /// If `pages` is `u32::MAX` or more, if `base` is not 4 KiB aligned, or if the host
    /// cannot allocate the arena.
    pub fn with_physical_base(pages: usize, base: u64) -> Self {
        assert!(pages < u32::MAX as usize, "pool size out of range: {pages} pages");
        assert!(base % PAGE_SIZE == 0, "pool base {base:#x} must be page aligned");
        let memory = if pages == 0 {
            // Nothing to allocate (a zero-sized allocation is not allowed); never read.
            NonNull::dangling()
        } else {
            // SAFETY: the layout has a non-zero size.
            NonNull::new(unsafe { alloc_zeroed(Self::layout(pages)) }).expect("page pool arena allocation failed")
        };
        let free = (0..pages as u32).rev().collect();
        Self {
            memory,
            pages,
            base,
            free,
            live: alloc::vec![false; pages],
            allocations: 0,
            fail_at: None,
            bad_frees: 0,
        }
    }

    fn layout(pages: usize) -> Layout {
        Layout::from_size_align(pages * PAGE_SIZE as usize, PAGE_SIZE as usize).expect("page pool layout")
    }

    /// Physical address of the first page.
    pub fn base(&self) -> u64 {
        self.base
    }

    /// Pages currently handed out.
    pub fn live_pages(&self) -> usize {
        self.pages - self.free.len()
    }

    /// Successful and failed allocation calls so far.
    pub fn allocations(&self) -> usize {
        self.allocations
    }

    /// Makes allocation call number `call` (counting from 0 over the pool's life) fail;
    /// `None` stops failing.
    pub fn fail_at(&mut self, call: Option<usize>) {
        self.fail_at = call;
    }

    /// Frees of pages that were not handed out (should always be 0).
    pub fn bad_frees(&self) -> usize {
        self.bad_frees
    }

    /// Physical addresses of the pages currently handed out, ascending.
    pub fn live(&self) -> impl Iterator<Item = u64> + '_ {
        self.live
            .iter()
            .enumerate()
            .filter(|(_, live)| **live)
            .map(|(i, _)| self.base + i as u64 * PAGE_SIZE)
    }

    /// The bytes of the page at physical address `pa`, or `None` outside the pool.
    pub fn page(&self, pa: u64) -> Option<&[u8]> {
        let index = self.index(pa)?;
        // SAFETY: `index < pages`, so the 4 KiB at that offset lie inside the arena,
        // which lives as long as `self`.
        Some(unsafe {
            core::slice::from_raw_parts(self.memory.as_ptr().add(index * PAGE_SIZE as usize), PAGE_SIZE as usize)
        })
    }

    /// The whole arena: a table image whose first byte is at physical `base()`.
    pub fn image(&self) -> &[u8] {
        // SAFETY: the arena is `pages * 4096` bytes owned by `self` (0 bytes at a dangling,
        // aligned pointer for an empty pool).
        unsafe { core::slice::from_raw_parts(self.memory.as_ptr(), self.pages * PAGE_SIZE as usize) }
    }

    fn index(&self, pa: u64) -> Option<usize> {
        let offset = pa.checked_sub(self.base)?;
        let index = usize::try_from(offset / PAGE_SIZE).ok()?;
        (offset % PAGE_SIZE == 0 && index < self.pages).then_some(index)
    }
}

impl PageAllocator for PagePool {
    fn allocate_page(&mut self, align: u64, size: u64) -> Result<u64, PtError> {
        let call = self.allocations;
        self.allocations += 1;
        if self.fail_at == Some(call) {
            return Err(PtError::OutOfResources);
        }
        if size != PAGE_SIZE || align == 0 || PAGE_SIZE % align != 0 {
            return Err(PtError::InvalidParameter);
        }
        let index = self.free.pop().ok_or(PtError::OutOfResources)? as usize;
        self.live[index] = true;
        Ok(self.base + index as u64 * PAGE_SIZE)
    }

    fn free_page(&mut self, address: u64, size: u64) {
        match self.index(address) {
            Some(index) if size == PAGE_SIZE && self.live[index] => {
                self.live[index] = false;
                self.free.push(index as u32);
            }
            _ => self.bad_frees += 1,
        }
    }

    #[inline]
    fn physical_to_pointer(&self, address: u64) -> *mut u8 {
        let offset = address.wrapping_sub(self.base) & !(PAGE_SIZE - 1);
        assert!(
            offset < self.pages as u64 * PAGE_SIZE,
            "physical address {address:#x} is not a page of this pool"
        );
        // SAFETY: `offset` is inside the arena (checked above).
        unsafe { self.memory.as_ptr().add(offset as usize) }
    }
}

impl Drop for PagePool {
    fn drop(&mut self) {
        if self.pages == 0 {
            return; // nothing was allocated
        }
        // SAFETY: `memory` was allocated in `with_physical_base` with this layout.
        unsafe { dealloc(self.memory.as_ptr(), Self::layout(self.pages)) };
    }
}
