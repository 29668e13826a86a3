use txpaging::*;

fn table() -> X64PageTable<PagePool> {
    X64PageTable::with_mmu(
        PagePool::new(512),
        PagingType::Paging4Level,
        X64Config::default(),
        RecordingMmu::new(),
    )
    .unwrap()
}

#[test]
fn smoke() {
    let mut t = table();
    t.map_memory_region(0x20_0000, 0x40_0000, MemoryAttributes::Writeback)
        .unwrap();
    assert_eq!(t.table_pages(), 3);
    let r = t
        .transaction()
        .protect(0x20_0000, 0x1000, MemoryAttributes::ReadOnly)
        .protect(0x40_0000, 0x2000, MemoryAttributes::ExecuteProtect)
        .commit()
        .unwrap();
    println!("{r:?}");
    assert_eq!(
        t.query_memory_region(0x20_0000, 0x1000).unwrap(),
        MemoryAttributes::ReadOnly | MemoryAttributes::Writeback
    );
    assert_eq!(
        t.query_memory_region(0x20_1000, 0x1000).unwrap(),
        MemoryAttributes::Writeback
    );
    assert_eq!(t.table_pages(), 5);
    for r in t.regions() {
        println!("{:x?}", r);
    }
    t.transaction()
        .protect(0x20_0000, 0x1000, MemoryAttributes::empty())
        .protect(0x40_0000, 0x2000, MemoryAttributes::empty())
        .commit()
        .unwrap();
    assert_eq!(t.table_pages(), 3);
    assert_eq!(t.regions().count(), 1);
    t.unmap_memory_region(0x20_0000, 0x40_0000).unwrap();
    assert_eq!(t.table_pages(), 1);
    assert_eq!(t.allocator().live_pages(), 1);
    let mut s = String::new();
    t.map_memory_region(0x0, 0x8000, MemoryAttributes::empty()).unwrap();
    t.dump_to(&mut s, 0, 0x8000).unwrap();
    println!("{s}");
    println!("{:?}", t.mmu().log());
}
