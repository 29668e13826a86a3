//! Regression tests for what the fuzz targets (`fuzz/`) found, one test per finding, through
//! the public API. See docs/verification.md, "Fuzzing".

use txpaging::{AuditRange, MemoryAttributes as MA, PagePool, PagingType, Policy, X64PageTable};

/// `table_image`, seed `seed-x64-top` (issue 13): the audit of a table with a region that
/// ends at the top of the address space (the X64 high half's last 2 MiB) computed
/// `va + size` = 2^64 and panicked on overflow (debug builds), or wrapped to 0 and skipped
/// the code and memory-map checks of that region (release). A registered code range there
/// was dropped from the audit too.
#[test]
fn audit_of_a_region_ending_at_the_top_of_the_space() {
    const TOP: u64 = 0xFFFF_FFFF_FFE0_0000;
    let mut t = X64PageTable::new(PagePool::new(8), PagingType::Paging4Level).unwrap();
    t.map_aliased_memory_region(TOP, 0x4000_0000, 0x20_0000, MA::Writeback)
        .unwrap();
    // The last page of the space is registered code (ending at 2^64).
    t.set_policy(Policy::off().code(0xFFFF_FFFF_FFFF_F000, 0x1000)).unwrap();
    // RAM 0..0x4010_0000: the region's last MiB is outside the memory map.
    let audit = t.audit(&[(0, 0x4010_0000, 7)]);
    let whole = [AuditRange {
        va: TOP,
        size: 0x20_0000,
    }];
    assert_eq!(audit.writable_executable, whole);
    assert_eq!(
        audit.executable_outside_code,
        [AuditRange {
            va: TOP,
            size: 0x1F_F000
        }]
    );
    assert_eq!(
        audit.writable_code,
        [AuditRange {
            va: 0xFFFF_FFFF_FFFF_F000,
            size: 0x1000
        }]
    );
    assert_eq!(
        audit.outside_memory_map,
        [AuditRange {
            va: TOP + 0x10_0000,
            size: 0x10_0000
        }]
    );
    assert_eq!(format!("{:?}", whole[0]), "0xffffffffffe00000..0x10000000000000000");
    let report = audit.to_string();
    assert!(
        report.contains("0xffffffffffe00000-0xffffffffffffffff  2 MiB"),
        "{report}"
    );
}
