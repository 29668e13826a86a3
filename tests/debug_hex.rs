//! `Debug` of the public values prints addresses, sizes and entry values in hex (`0x…`),
//! counts in decimal.

use txpaging::{
    Entry, FinalState, FlushBatch, Hex, MappedRegion, MemoryAttributes as MA, Op, PagePool, PageTable, PagingType,
    PlannedRange, RecordingMmu, X64Config, X64PageTable,
};

fn table() -> X64PageTable<PagePool, RecordingMmu> {
    let config = X64Config { one_gib_pages: true };
    X64PageTable::with_mmu(PagePool::new(16), PagingType::Paging4Level, config, RecordingMmu::new()).unwrap()
}

#[test]
fn hex_prints_0x() {
    assert_eq!(format!("{:?} {}", Hex(0x20_0000), Hex(0)), "0x200000 0x0");
}

#[test]
fn ops_and_planned_ranges_print_addresses_in_hex() {
    let op = Op::Map {
        va: 0x20_0000,
        pa: 0x1_0000_0000,
        size: 0x1000,
        attributes: MA::Writeback,
    };
    assert_eq!(
        format!("{op:?}"),
        "Map { va: 0x200000, pa: 0x100000000, size: 0x1000, attributes: MemoryAttributes(Writeback) }"
    );
    assert_eq!(
        format!(
            "{:?}",
            Op::Unmap {
                va: 0x3000,
                size: 0x2000
            }
        ),
        "Unmap { va: 0x3000, size: 0x2000 }"
    );
    let range = PlannedRange {
        va: 0x20_0000,
        size: 0x2000,
        state: FinalState::Mapped {
            pa: 0x30_0000,
            attributes: MA::Uncached,
        },
    };
    assert_eq!(
        format!("{range:?}"),
        "PlannedRange { va: 0x200000, size: 0x2000, state: Mapped { pa: 0x300000, attributes: \
         MemoryAttributes(Uncached) } }"
    );
}

#[test]
fn a_plan_prints_its_ranges_and_pages_in_hex() {
    let mut t = table();
    t.map_memory_region(0, 0x20_0000, MA::Writeback).unwrap();
    t.install_page_table().unwrap();
    let mut txn = t.transaction();
    txn.unmap(0x1000, 0x1000);
    // The 2 MiB page splits (512 stores, the link, the changed entry); INVLPG 0x1000.
    let plan = txn.plan().unwrap();
    assert_eq!(
        format!("{plan:?}"),
        "Plan { ranges: [PlannedRange { va: 0x1000, size: 0x1000, state: Unmapped }], entries_to_write: 514, \
         tables_to_allocate: 1, tables_to_free: 0, pages_to_invalidate: [0x1000], full_flush: false, breaks: 0 }"
    );
}

#[test]
fn mapped_regions_and_entries_print_in_hex() {
    let mut t = table();
    t.map_aliased_memory_region(0x30_0000, 0x1234_5000, 0x3000, MA::Writeback)
        .unwrap();
    let regions: Vec<MappedRegion> = t.regions().collect();
    assert_eq!(
        format!("{regions:?}"),
        "[MappedRegion { va: 0x300000, pa: 0x12345000, size: 0x3000, attributes: MemoryAttributes(Writeback) }]"
    );
    let leaf = Entry::Leaf {
        pa: 0x20_0000,
        attributes: MA::ReadOnly,
    };
    assert_eq!(
        format!("{leaf:?} {:?}", Entry::Table(0x5000)),
        "Leaf { pa: 0x200000, attributes: MemoryAttributes(ReadOnly) } Table(0x5000)"
    );
}

#[test]
fn a_flush_batch_prints_its_runs_in_hex_and_says_whether_it_records() {
    let mut batch = FlushBatch::new(33);
    batch.record(0x10_0000, 1);
    batch.record(0xFFFF_8000_0000_0000, 2);
    assert_eq!(
        format!("{batch:?}"),
        "FlushBatch { ranges: [(0x100000, 1), (0xffff800000000000, 2)], pages: 3, full: false, limit: 33, \
         records_nothing: false }"
    );
}

#[test]
fn retired_pages_print_in_hex() {
    let mut t = table();
    t.map_memory_region(0x20_0000, 0x1000, MA::Writeback).unwrap();
    let pt = t.tables().read_entry(
        t.tables().read_entry(t.tables().read_entry(t.root(), 0) & !0xFFF, 0) & !0xFFF,
        1,
    ) & 0x000F_FFFF_FFFF_F000;
    let committed = t.transaction().unmap(0x20_0000, 0x1000).commit_retiring().unwrap();
    let text = format!("{:?}", committed.retired);
    assert!(text.starts_with(&format!("Retired {{ pages: [{pt:#x}, ")), "{text}");
    t.release(committed.retired);
}
