//! The seed's example as a test, and the "port by changing the use line" check: code written
//! only against `PageTable`, `PageAllocator`, `MemoryAttributes`, `PtError` and `PagingType`.

// The only line naming the architecture: porting code to this crate means changing it.
use txpaging::X64PageTable as ArchPageTable;
use txpaging::{MemoryAttributes, PageAllocator, PageTable, PagingType, PtError};

// Used by the seed example and the allocator tests, not by the generic code.
use txpaging::{PagePool, X64PageTable};

/// A page allocator as firmware would write it: hands out 4 KiB pages from the heap
/// (identity, so the default `physical_to_pointer` works) and keeps count.
#[derive(Default)]
struct HeapPages {
    pages: Vec<Box<Page>>,
    freed: usize,
}

#[repr(C, align(4096))]
struct Page([u8; 4096]);

impl PageAllocator for HeapPages {
    fn allocate_page(&mut self, align: u64, size: u64) -> Result<u64, PtError> {
        if align != 4096 || size != 4096 {
            return Err(PtError::InvalidParameter);
        }
        let page = Box::new(Page([0xA5; 4096])); // dirty on purpose: the table must clear it
        let pa = &*page as *const Page as u64;
        self.pages.push(page);
        Ok(pa)
    }

    fn free_page(&mut self, address: u64, _size: u64) {
        assert!(self.pages.iter().any(|p| &**p as *const Page as u64 == address));
        self.freed += 1;
    }
}

#[test]
fn seed_example_map_query_unmap() {
    let allocator = PagePool::new(16);
    let mut page_table = X64PageTable::new(allocator, PagingType::Paging4Level).unwrap();

    let address = 0x1_0000_0000;
    let size = 0x40_0000;
    page_table
        .map_memory_region(address, size, MemoryAttributes::ReadOnly)
        .unwrap();
    assert_eq!(
        page_table.query_memory_region(address, size),
        Ok(MemoryAttributes::ReadOnly)
    );

    page_table.unmap_memory_region(address, size).unwrap();
    assert_eq!(page_table.query_memory_region(address, size), Err(PtError::NoMapping));
    assert_eq!(page_table.allocator().live_pages(), 1, "only the root is left");
}

/// Written only against the traits and shared types.
fn exercise<T: PageTable>(page_table: &mut T) -> Result<(), PtError> {
    let code = MemoryAttributes::Writeback | MemoryAttributes::ReadOnly;
    let data = MemoryAttributes::Writeback | MemoryAttributes::ExecuteProtect;
    let mmio = MemoryAttributes::Uncached | MemoryAttributes::ExecuteProtect;

    page_table.map_memory_region(0x0, 0x4000_0000, data)?;
    page_table.map_memory_region(0x10_0000, 0x8000, code)?;
    page_table.map_memory_region(0xFE00_0000, 0x1000, mmio)?;
    assert_eq!(page_table.query_memory_region(0x10_0000, 0x8000)?, code);
    assert_eq!(page_table.query_memory_region(0x10_8000, 0x1000)?, data);
    assert_eq!(page_table.query_memory_region(0xFE00_0000, 0x1000)?, mmio);
    assert_eq!(
        page_table.query_memory_region(0xF_F000, 0x2000),
        Err(PtError::NonUniformMemoryAttributes)
    );

    // Bad input comes back as the shared error type.
    assert_eq!(
        page_table.map_memory_region(0x123, 0x1000, data),
        Err(PtError::UnalignedAddress)
    );
    assert_eq!(
        page_table.map_memory_region(0x1000, 0x1000, MemoryAttributes::Uncached | MemoryAttributes::Writeback),
        Err(PtError::IncompatibleMemoryAttributes)
    );

    page_table.dump_page_tables(0x10_0000, 0x2000);
    page_table.install_page_table()?;

    page_table.unmap_memory_region(0xFE00_0000, 0x1000)?;
    page_table.unmap_memory_region(0x0, 0x4000_0000)?;
    assert_eq!(page_table.query_memory_region(0x0, 0x1000), Err(PtError::NoMapping));
    assert_eq!(page_table.unmap_memory_region(0x0, 0x1000), Err(PtError::NoMapping));
    Ok(())
}

/// Builds a table for any allocator and paging mode, through the aliased name only.
fn build_and_exercise<A: PageAllocator>(allocator: A, paging_type: PagingType) -> Result<(), PtError> {
    let mut page_table = ArchPageTable::new(allocator, paging_type)?;
    exercise(&mut page_table)
}

#[test]
fn generic_code_against_the_traits_works() {
    for paging_type in [PagingType::Paging4Level, PagingType::Paging5Level] {
        build_and_exercise(PagePool::new(64), paging_type).unwrap();
        build_and_exercise(HeapPages::default(), paging_type).unwrap();
        let mut pool = PagePool::new(64);
        build_and_exercise(&mut pool, paging_type).unwrap();
        assert_eq!(pool.live_pages(), 1, "everything but the root given back");
        assert_eq!(pool.bad_frees(), 0);
    }
}

#[test]
fn user_allocator_pages_are_cleared_and_given_back() {
    let mut heap = HeapPages::default();
    {
        let mut page_table = X64PageTable::new(&mut heap, PagingType::Paging4Level).unwrap();
        page_table
            .map_memory_region(0x20_0000, 0x1000, MemoryAttributes::Writeback)
            .unwrap();
        assert_eq!(
            page_table.query_memory_region(0x20_1000, 0x1000),
            Err(PtError::NoMapping),
            "a dirty page must not leak stale entries"
        );
        assert_eq!(page_table.regions().count(), 1);
        page_table.unmap_memory_region(0x20_0000, 0x1000).unwrap();
    }
    assert_eq!(heap.pages.len(), 4, "root, PDPT, PD, PT");
    assert_eq!(heap.freed, 3, "all but the root given back");
}
