//! `PageAllocator`: where table pages come from, go back to, and how they are reached.

use crate::error::PtError;

/// Provides the physical pages that hold page tables.
///
/// Only [`allocate_page`](Self::allocate_page) is required, but **implement
/// [`free_page`](Self::free_page) too**: its default keeps every page handed back, so an
/// allocator without it leaks each table page that a merge, an unmap or a failed commit
/// gives back (the first such page is reported once with `log::warn!`).
/// [`physical_to_pointer`](Self::physical_to_pointer) defaults to the identity, which
/// suits firmware that runs with VA == PA.
///
/// A firmware allocator on page services (UEFI `AllocatePages` / `FreePages`; in this
/// example the host's allocator stands in for them):
///
/// ```
/// use std::alloc::{alloc_zeroed, dealloc, Layout};
///
/// use txpaging::{MemoryAttributes as A, PageAllocator, PageTable, PagingType, PtError, X64PageTable};
///
/// const PAGE: u64 = 0x1000;
///
/// /// Table pages from the firmware's page services, counted.
/// struct FirmwarePages {
///     live: usize,
/// }
///
/// impl PageAllocator for FirmwarePages {
///     fn allocate_page(&mut self, align: u64, size: u64) -> Result<u64, PtError> {
///         // The table asks for one 4 KiB page aligned to 4 KiB. Page services return
///         // 4 KiB-aligned pages, so any alignment that divides 4 KiB is met; refuse the
///         // rest rather than return a misaligned page.
///         if size != PAGE || align == 0 || PAGE % align != 0 {
///             return Err(PtError::InvalidParameter);
///         }
///         // UEFI: gBS->AllocatePages(AllocateAnyPages, EfiBootServicesData, 1, &address).
///         let layout = Layout::from_size_align(PAGE as usize, PAGE as usize).unwrap();
///         // SAFETY: the layout has a non-zero size.
///         let page = unsafe { alloc_zeroed(layout) };
///         if page.is_null() {
///             return Err(PtError::OutOfResources);
///         }
///         self.live += 1;
///         Ok(page as u64)
///     }
///
///     // Without this method every table page a merge or an unmap frees would leak.
///     fn free_page(&mut self, address: u64, size: u64) {
///         // UEFI: gBS->FreePages(address, 1).
///         let layout = Layout::from_size_align(size as usize, PAGE as usize).unwrap();
///         // SAFETY: `address` came from `allocate_page` above with this layout.
///         unsafe { dealloc(address as *mut u8, layout) };
///         self.live -= 1;
///     }
///
///     // physical_to_pointer: the default (identity) suits firmware running with VA == PA.
/// }
///
/// let mut table = X64PageTable::new(FirmwarePages { live: 0 }, PagingType::Paging4Level)?;
/// table.map_memory_region(0x4000_0000, 0x1000, A::Writeback)?;
/// assert_eq!(table.allocator().live, 4); // PML4, PDPT, PD, PT
/// table.unmap_memory_region(0x4000_0000, 0x1000)?;
/// assert_eq!(table.allocator().live, 1, "the emptied tables were freed");
/// # Ok::<(), PtError>(())
/// ```
///
/// # Contract
/// Every address returned by `allocate_page`, and the root of a table opened with
/// `from_existing`, must be a 4 KiB page that `physical_to_pointer` turns into a valid,
/// writable pointer for as long as the table uses it. The table trusts this.
pub trait PageAllocator {
    /// Allocates `size` bytes aligned to `align` and returns the physical address.
    /// The table always asks for one 4 KiB page (`align == size == 4096`).
    fn allocate_page(&mut self, align: u64, size: u64) -> Result<u64, PtError>;

    /// Gives back a page the table no longer uses: a table freed by a merge or an unmap,
    /// or a page taken by a transaction that then failed.
    ///
    /// **The default keeps the page: it is leaked.** Override it to return the page to
    /// your page services (UEFI: `FreePages(address, 1)`). The first time the default
    /// runs in a program it logs a `log::warn!` naming the page.
    fn free_page(&mut self, address: u64, size: u64) {
        warn_kept_page(address, size);
    }

    /// Turns the physical address of a table page into a pointer this code can use.
    /// The default is the identity (firmware with VA == PA).
    fn physical_to_pointer(&self, address: u64) -> *mut u8 {
        address as usize as *mut u8
    }
}

impl<T: PageAllocator + ?Sized> PageAllocator for &mut T {
    fn allocate_page(&mut self, align: u64, size: u64) -> Result<u64, PtError> {
        (**self).allocate_page(align, size)
    }
    fn free_page(&mut self, address: u64, size: u64) {
        (**self).free_page(address, size)
    }
    fn physical_to_pointer(&self, address: u64) -> *mut u8 {
        (**self).physical_to_pointer(address)
    }
}

/// Logs, once per program, that a table handed a page back to an allocator that keeps it.
#[cold]
fn warn_kept_page(address: u64, size: u64) {
    static WARNED: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(false);
    if !WARNED.swap(true, core::sync::atomic::Ordering::Relaxed) {
        log::warn!(
            "txpaging: the page table gave back page {address:#x} (size {size:#x}), but the page allocator does not \
             implement PageAllocator::free_page, so the page is kept (leaked); further pages are kept silently"
        );
    }
}

/// Allocates one table page and checks its alignment.
pub(crate) fn allocate_table_page(allocator: &mut impl PageAllocator) -> Result<u64, crate::error::TxnError> {
    use crate::error::{Reason, TxnError};
    use crate::geometry::PAGE_SIZE;
    let page = allocator
        .allocate_page(PAGE_SIZE, PAGE_SIZE)
        .map_err(|error| TxnError::whole(error).with_reason(Reason::AllocatorFailed))?;
    if page % PAGE_SIZE != 0 {
        allocator.free_page(page, PAGE_SIZE);
        return Err(TxnError::whole(PtError::UnalignedPageBase).with_detail(Reason::UnalignedTablePage, page));
    }
    Ok(page)
}
