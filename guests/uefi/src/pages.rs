//! The table's page allocator: boot-services pages (AllocatePages / FreePages) on the
//! bootstrap processor, and a reserve filled beforehand for commits made on an AP, where
//! boot services must not be called (UEFI 2.10, 7.1: boot services are not MP-safe).

use core::ptr::NonNull;

use txpaging::{PageAllocator, PtError};
use uefi::boot::{self, AllocateType};
use uefi::mem::memory_map::MemoryType;

const RESERVE: usize = 512;

/// Table pages from boot services on the BSP, from the reserve elsewhere.
pub struct FirmwarePages {
    bsp_apic_id: u32,
    reserve: [u64; RESERVE],
    reserved: usize,
    /// Pages handed to the table and not given back.
    pub in_use: usize,
    /// Pages the table gave back.
    pub freed: usize,
    /// Whether boot services may still be used on the BSP.
    pub boot_services: bool,
}

impl FirmwarePages {
    pub fn new() -> Self {
        Self {
            bsp_apic_id: crate::arch::cpu_id(),
            reserve: [0; RESERVE],
            reserved: 0,
            in_use: 0,
            freed: 0,
            boot_services: true,
        }
    }

    fn on_bsp(&self) -> bool {
        self.boot_services && crate::arch::cpu_id() == self.bsp_apic_id
    }

    /// Fills the reserve up to `pages` pages from boot services (BSP only).
    pub fn fill_reserve(&mut self, pages: usize) -> Result<(), PtError> {
        while self.reserved < pages.min(RESERVE) {
            let page = allocate()?;
            self.reserve[self.reserved] = page;
            self.reserved += 1;
        }
        Ok(())
    }
}

fn allocate() -> Result<u64, PtError> {
    let page = boot::allocate_pages(AllocateType::AnyPages, MemoryType::BOOT_SERVICES_DATA, 1)
        .map_err(|_| PtError::OutOfResources)?;
    Ok(page.as_ptr() as u64)
}

impl PageAllocator for FirmwarePages {
    fn allocate_page(&mut self, align: u64, size: u64) -> Result<u64, PtError> {
        if size != 4096 || 4096 % align.max(1) != 0 {
            return Err(PtError::InvalidParameter);
        }
        let page = if self.on_bsp() {
            allocate()?
        } else if self.reserved > 0 {
            self.reserved -= 1;
            self.reserve[self.reserved]
        } else {
            return Err(PtError::OutOfResources);
        };
        self.in_use += 1;
        Ok(page)
    }

    fn free_page(&mut self, address: u64, _size: u64) {
        self.in_use -= 1;
        self.freed += 1;
        if self.on_bsp() {
            if let Some(page) = NonNull::new(address as *mut u8) {
                // SAFETY: `address` is a page this allocator got from AllocatePages, and
                // the table gives it back only once no walker can reach it.
                let _ = unsafe { boot::free_pages(page, 1) };
            }
        } else if self.reserved < RESERVE {
            self.reserve[self.reserved] = address;
            self.reserved += 1;
        }
    }
}

/// Reads a table built elsewhere (identity-mapped firmware memory); never allocates.
pub struct ReadOnlyPages;

impl PageAllocator for ReadOnlyPages {
    fn allocate_page(&mut self, _align: u64, _size: u64) -> Result<u64, PtError> {
        Err(PtError::OutOfResources)
    }
}
