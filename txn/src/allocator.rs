//! `PageAllocator`: where table pages come from, go back to, and how they are reached.

use crate::error::PtError;

/// Provides the physical pages that hold page tables.
///
/// Only [`allocate_page`](Self::allocate_page) is required; the other methods have
/// defaults that suit an identity-mapped firmware environment.
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
    /// or a page taken by a transaction that then failed. The default keeps the page.
    fn free_page(&mut self, address: u64, size: u64) {
        let _ = (address, size);
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
