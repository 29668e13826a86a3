//! `audit()`: every finding on a small table built to have each one once, the report text
//! pinned, the same findings on X64 and AArch64, and a clean table reported clean.

use txpaging::aarch64::El1;
use txpaging::{
    Aarch64Config, Aarch64PageTable, AuditRange, MemoryAttributes as MA, PagePool, PageTable, PagingType, Policy,
    RecordingMmu, Rules, X64Config, X64PageTable,
};

const WB: MA = MA::Writeback;
const UC: MA = MA::Uncached;
const RO: MA = MA::ReadOnly;
const XP: MA = MA::ExecuteProtect;
const RP: MA = MA::ReadProtect;

/// Maps, on any table: the NULL page (WB, W+X); code at 0x10_0000 (16 KiB, the first page
/// writable); data at 0x20_0000 (WB XP); MMIO at 0x30_0000 (UC, executable: 8 KiB);
/// 0x40_0000 mapped to PA 0x9000_0000, beyond the memory map; a guard page (RP).
fn build(t: &mut dyn PageTable) {
    t.map_memory_region(0, 0x1000, WB).unwrap();
    t.map_memory_region(0x10_0000, 0x1000, WB).unwrap();
    t.map_memory_region(0x10_1000, 0x3000, WB | RO).unwrap();
    t.map_memory_region(0x20_0000, 0x8000, WB | XP).unwrap();
    t.map_memory_region(0x30_0000, 0x2000, UC | RO).unwrap();
    t.map_memory_region(0x50_0000, 0x1000, WB | RP).unwrap();
}

/// RAM 0..0x100_0000 (16 MiB).
const MEMORY_MAP: [(u64, u64, u32); 1] = [(0, 0x100_0000, 7)];

fn policy() -> Policy {
    Policy::off().code(0x10_0000, 0x4000)
}

const REPORT: &str = "\
page table audit: 68 KiB mapped (0x11000 bytes), 6 findings
  W^X: writable and executable: 3 range(s), 12 KiB
    0x0000000000000000-0x0000000000000fff  4 KiB
    0x0000000000100000-0x0000000000100fff  4 KiB
    0x0000000000400000-0x0000000000400fff  4 KiB
  NULL page mapped: 1 range(s), 4 KiB
    0x0000000000000000-0x0000000000000fff  4 KiB
  executable MMIO (Uncached/UncachedExport): 1 range(s), 8 KiB
    0x0000000000300000-0x0000000000301fff  8 KiB
  writable code (registered code not ReadOnly): 1 range(s), 4 KiB
    0x0000000000100000-0x0000000000100fff  4 KiB
  executable outside registered code: 3 range(s), 16 KiB
    0x0000000000000000-0x0000000000000fff  4 KiB
    0x0000000000300000-0x0000000000301fff  8 KiB
    0x0000000000400000-0x0000000000400fff  4 KiB
  mapped outside the UEFI memory map: 1 range(s), 4 KiB
    0x0000000000400000-0x0000000000400fff  4 KiB
  mapped by attributes:
    Writeback                                            12 KiB
    Writeback | ReadProtect                               4 KiB
    Writeback | ExecuteProtect                           32 KiB
    Uncached | ReadOnly                                   8 KiB
    Writeback | ReadOnly                                 12 KiB
";

fn x64() -> X64PageTable<PagePool, RecordingMmu> {
    let mut t = X64PageTable::with_mmu(
        PagePool::new(32),
        PagingType::Paging4Level,
        X64Config::default(),
        RecordingMmu::new(),
    )
    .unwrap();
    build(&mut t);
    t.map_aliased_memory_region(0x40_0000, 0x9000_0000, 0x1000, WB).unwrap();
    t.set_policy(policy()).unwrap();
    t
}

fn aarch64() -> Aarch64PageTable<PagePool, RecordingMmu, El1> {
    let mut t = Aarch64PageTable::with_regime(
        PagePool::new(32),
        PagingType::Paging4Level,
        Aarch64Config::default(),
        RecordingMmu::new(),
        El1,
    )
    .unwrap();
    build(&mut t);
    t.map_aliased_memory_region(0x40_0000, 0x9000_0000, 0x1000, WB).unwrap();
    t.set_policy(policy()).unwrap();
    t
}

#[test]
fn the_report_names_each_finding_with_its_ranges() {
    let audit = x64().audit(&MEMORY_MAP);
    assert_eq!(audit.to_string(), REPORT, "got:\n{audit}");
}

#[test]
fn aarch64_finds_the_same() {
    assert_eq!(aarch64().audit(&MEMORY_MAP), x64().audit(&MEMORY_MAP));
}

#[test]
fn each_finding_lists_merged_ranges() {
    let audit = x64().audit(&MEMORY_MAP);
    let r = |va, size| AuditRange { va, size };
    assert_eq!(
        audit.writable_executable,
        [r(0, 0x1000), r(0x10_0000, 0x1000), r(0x40_0000, 0x1000)]
    );
    assert_eq!(audit.null_page, [r(0, 0x1000)]);
    assert_eq!(audit.executable_mmio, [r(0x30_0000, 0x2000)]);
    assert_eq!(audit.writable_code, [r(0x10_0000, 0x1000)]);
    assert_eq!(audit.outside_memory_map, [r(0x40_0000, 0x1000)]);
    assert_eq!(audit.totals.get(&(WB | XP)), Some(&0x8000));
    assert_eq!(audit.mapped, 0x11000);
}

#[test]
fn a_table_fixed_by_a_strict_policy_audits_clean() {
    let mut t = x64();
    t.transaction()
        .protect(0, 0x1000, RP)
        .protect(0x10_0000, 0x1000, RO)
        .protect(0x30_0000, 0x2000, RO | XP)
        .unmap(0x40_0000, 0x1000)
        .commit()
        .unwrap();
    // Everything executable is registered code now; every rule holds.
    t.set_policy(Policy::strict().code(0x10_0000, 0x4000)).unwrap();
    assert_eq!(t.policy().rules(), Rules::all());
    let audit = t.audit(&MEMORY_MAP);
    assert!(audit.is_clean(), "{audit}");
}

#[test]
fn without_a_memory_map_that_check_is_skipped_and_said_so() {
    let audit = x64().audit(&[]);
    assert!(audit.outside_memory_map.is_empty());
    assert!(audit
        .to_string()
        .contains("mapped outside the UEFI memory map: not checked (no memory map given)"));
}
