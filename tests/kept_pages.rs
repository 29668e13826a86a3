//! An allocator that implements only `allocate_page` keeps every page the table gives back
//! (the default `free_page`). The first such page is reported once with `log::warn!`.
//! (Its own test binary: the "once" is per program.)

use std::sync::Mutex;

use txpaging::{MemoryAttributes as MA, PageAllocator, PagePool, PageTable, PagingType, PtError, X64PageTable};

/// Only `allocate_page`: `free_page` is the default, which keeps the page.
struct AllocateOnly(PagePool);

impl PageAllocator for AllocateOnly {
    fn allocate_page(&mut self, align: u64, size: u64) -> Result<u64, PtError> {
        self.0.allocate_page(align, size)
    }
}

/// Records every warning.
struct Warnings(Mutex<Vec<String>>);

impl log::Log for Warnings {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.level() <= log::Level::Warn
    }
    fn log(&self, record: &log::Record<'_>) {
        if self.enabled(record.metadata()) {
            self.0.lock().unwrap().push(record.args().to_string());
        }
    }
    fn flush(&self) {}
}

static WARNINGS: Warnings = Warnings(Mutex::new(Vec::new()));

#[test]
fn the_first_page_kept_by_the_default_free_page_is_reported_once() {
    log::set_logger(&WARNINGS).unwrap();
    log::set_max_level(log::LevelFilter::Warn);
    let mut t = X64PageTable::new(AllocateOnly(PagePool::new(16)), PagingType::Paging4Level).unwrap();
    t.map_memory_region(0x20_0000, 0x1000, MA::Writeback).unwrap();
    let pt = t.tables().read_entry(
        t.tables().read_entry(t.tables().read_entry(t.root(), 0) & !0xFFF, 0) & !0xFFF,
        1,
    ) & 0x000F_FFFF_FFFF_F000;
    assert!(WARNINGS.0.lock().unwrap().is_empty());
    // The unmap empties the PT, PD and PDPT: three pages handed back, all kept.
    t.unmap_memory_region(0x20_0000, 0x1000).unwrap();
    assert_eq!(t.allocator().0.live_pages(), 4, "the pool never saw the pages again");
    t.map_memory_region(0x20_0000, 0x1000, MA::Writeback).unwrap();
    t.unmap_memory_region(0x20_0000, 0x1000).unwrap();
    let warnings = WARNINGS.0.lock().unwrap().clone();
    assert_eq!(
        warnings,
        [format!(
            "txpaging: the page table gave back page {pt:#x} (size 0x1000), but the page allocator does not \
             implement PageAllocator::free_page, so the page is kept (leaked); further pages are kept silently"
        )]
    );
}
