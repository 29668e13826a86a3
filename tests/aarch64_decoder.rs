//! An independent AArch64 descriptor decoder: walks the tables the library built (PagePool
//! hands out physical addresses equal to host addresses) with its own reading of the Arm
//! ARM, never the library's codec, and computes what a stage 1 EL1&0 walk, or a stage 1
//! EL2 walk (HCR_EL2.E2H = 0), with the installed MAIR_ELx would do for each virtual
//! address. That is compared with an expected map built only from the requests the test
//! made. The EL2 reading (D8.3.2, D8.4.1.2): one privilege level, bit 54 is XN, bit 53
//! (PXN), nG, PXNTable and APTable\[0\] are RES0, AP\[1\] is RES1.
//!
//! Architectural references (Arm ARM DDI 0487 J.a): D8.3 "Translation table descriptor
//! formats" (descriptor types per level, output address fields, RES0 bits), D8.4 "Memory
//! access control" (AP\[2:1\], UXN, PXN, APTable/UXNTable/PXNTable, AF), D8.5 "Memory region
//! attributes" (AttrIndx selects a MAIR_EL1 byte; SH; Device and Non-cacheable memory are
//! Outer Shareable whatever SH says), D8.14.1 "Using break-before-make when updating
//! translation table entries".

use std::cell::{Cell, RefCell};
use std::collections::HashSet;

use txpaging::aarch64::{El1, El2, Regime};
use txpaging::{
    Aarch64Config, Aarch64PageTable, Barrier, InstallRequest, MemoryAttributes as MA, Mmu, MmuOp, Op, PagePool,
    PageTable, PagingType, PtError, Tlb,
};

type Table<R = El1> = Aarch64PageTable<PagePool, Snoop, R>;

const KIB4: u64 = 0x1000;
const MIB2: u64 = 0x20_0000;
const GIB: u64 = 0x4000_0000;

// Descriptor fields, from the manual.
const VALID: u64 = 1 << 0;
/// Bit 1: table (L0-L2) or page (L3) when set, block (L1/L2) when clear.
const TYPE_TABLE_OR_PAGE: u64 = 1 << 1;
const NS: u64 = 1 << 5;
const AP1_EL0: u64 = 1 << 6;
const AP2_READ_ONLY: u64 = 1 << 7;
const AF: u64 = 1 << 10;
const NG: u64 = 1 << 11;
const GP: u64 = 1 << 50;
const DBM: u64 = 1 << 51;
const CONTIGUOUS: u64 = 1 << 52;
const PXN: u64 = 1 << 53;
const UXN: u64 = 1 << 54;
/// Bits 58:55: software use in block and page descriptors, ignored in table descriptors.
const SOFTWARE: u64 = 0xF << 55;
/// Leaves: bits 63:59 ignored (PBHA with FEAT_HPDS2). Tables: PXNTable 59, UXNTable 60,
/// APTable 62:61, NSTable 63.
const UPPER: u64 = 0x1F << 59;
const PXN_TABLE: u64 = 1 << 59;
const UXN_TABLE: u64 = 1 << 60;
const AP_TABLE_NO_EL0: u64 = 1 << 61;
const AP_TABLE_NO_WRITE: u64 = 1 << 62;
/// Output address bits 47:12 (48-bit OA, 4 KiB granule, no FEAT_LPA2).
const OA: u64 = 0x0000_FFFF_FFFF_F000;
/// Bits 49:48 of a block or page descriptor: RES0 without FEAT_LPA2.
const LEAF_RES0_HIGH: u64 = 0x3 << 48;

// The software bits the library documents.
const SW_READ_PROTECTED: u64 = 1 << 55;
const SW_XN_FORCED: u64 = 1 << 56;

// MAIR_EL1 attribute bytes (Attr<n> encodings, from the manual).
const DEVICE_NGNRNE: u8 = 0x00;
const NORMAL_NC: u8 = 0x44;
const NORMAL_WT_RA_WA: u8 = 0xBB;
const NORMAL_WB_RA_WA: u8 = 0xFF;
const NORMAL_WT_RA: u8 = 0xAA;

/// Shareability: SH = 0b10 Outer, 0b11 Inner.
const OUTER: u8 = 0b10;
const INNER: u8 = 0b11;

/// What a stage 1 EL1&0 walk does for one address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hw {
    /// Translation fault: an invalid descriptor (or a reserved type) on the walk, or an
    /// address outside the TTBR0 region.
    Translation { level: u8 },
    /// Access flag fault: AF = 0 in the leaf.
    AccessFlag { level: u8 },
    /// A valid descriptor with RES0 bits set (CONSTRAINED UNPREDICTABLE: never acceptable).
    Res0 { level: u8, bits: u64 },
    /// A valid descriptor with RES1 bits clear (EL2: AP\[1\]; never acceptable either).
    Res1 { level: u8, bits: u64 },
    /// A translation.
    Page {
        pa: u64,
        el1_write: bool,
        el1_exec: bool,
        el0_read: bool,
        el0_exec: bool,
        /// The MAIR_EL1 byte AttrIndx selects.
        memory_type: u8,
        /// Effective shareability (Device and Non-cacheable memory are Outer Shareable).
        shareability: u8,
        global: bool,
    },
}

/// A walk's result and the range of the leaf it ended in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Walked {
    hw: Hw,
    /// (VA of the leaf's first byte, leaf size) when a leaf was reached.
    leaf: Option<(u64, u64)>,
}

/// Whether a MAIR byte is Device memory (`Attr<n>[7:4] == 0`).
fn is_device_type(memory_type: u8) -> bool {
    memory_type & 0xF0 == 0
}

/// Whether a MAIR byte is Normal memory cacheable at both levels (not Non-cacheable).
fn is_cacheable_type(memory_type: u8) -> bool {
    !is_device_type(memory_type) && memory_type != NORMAL_NC
}

/// Reads entry `index` of the table page at physical `table`.
fn entry(table: u64, index: u64) -> u64 {
    // SAFETY: `table` is a table page reached from a library root; PagePool::new gives
    // physical addresses equal to host addresses of its 4 KiB-aligned pages, which live as
    // long as the table under test.
    unsafe { std::ptr::read_volatile((table + 8 * index) as *const u64) }
}

/// Overwrites entry `index` of the table page at physical `table` (negative controls).
fn set_entry(table: u64, index: u64, value: u64) {
    // SAFETY: as in `entry`; the test owns the table and no commit runs concurrently.
    unsafe { std::ptr::write_volatile((table + 8 * index) as *mut u64, value) }
}

fn va_bits(levels: u8) -> u32 {
    12 + 9 * u32::from(levels)
}

/// Arm level of the root table: L0 for 4 levels (T0SZ 16), L1 for 3 levels (T0SZ 25).
fn start_level(levels: u8) -> u8 {
    4 - levels
}

/// Bytes one descriptor of Arm level `level` maps (L0 512 GiB .. L3 4 KiB).
fn arm_size(level: u8) -> u64 {
    1 << (12 + 9 * (3 - u32::from(level)))
}

/// Walks `va` from `root` the way the MMU does (stage 1, EL1&0 or with `el2` the EL2
/// regime, TTBR0, 4 KiB granule, TCR_ELx.HA = 0, SCTLR_ELx.WXN = 0) and resolves AttrIndx
/// through `mair`. With `reveal_read_protected`, an invalid descriptor carrying the
/// library's ReadProtect marker is read as if its valid bit were set (to check what it
/// keeps). At EL2 the `el1_*` fields of [`Hw::Page`] mean EL2 and the `el0_*` ones are false.
fn walk(root: u64, levels: u8, mair: u64, va: u64, reveal_read_protected: bool, el2: bool) -> Walked {
    let fault = |level| Walked {
        hw: Hw::Translation { level },
        leaf: None,
    };
    // TTBR0 with TBI0 = 0 translates only addresses with every bit above the VA size clear;
    // the rest would go to TTBR1, whose walks are disabled (EPD1).
    if va >> va_bits(levels) != 0 {
        return fault(0);
    }
    let mut table = root;
    let (mut no_write, mut no_el0, mut pxn_table, mut uxn_table) = (false, false, false, false);
    for level in start_level(levels)..=3 {
        let size = arm_size(level);
        let mut raw = entry(table, (va / size) % 512);
        if raw & VALID == 0 {
            if reveal_read_protected && raw & SW_READ_PROTECTED != 0 {
                raw |= VALID;
            } else {
                return fault(level);
            }
        }
        let type_bit = raw & TYPE_TABLE_OR_PAGE != 0;
        match (level, type_bit) {
            // Table descriptor (L0-L2).
            (0..=2, true) => {
                // EL2 (one Exception level): PXNTable (59) and APTable[0] (61) are RES0.
                let table_res0 = if el2 { PXN_TABLE | AP_TABLE_NO_EL0 } else { 0 };
                let res0 = raw & (0x000F_0000_0000_0000 | table_res0);
                if res0 != 0 {
                    return Walked {
                        hw: Hw::Res0 { level, bits: res0 },
                        leaf: None,
                    };
                }
                no_write |= raw & AP_TABLE_NO_WRITE != 0;
                no_el0 |= raw & AP_TABLE_NO_EL0 != 0;
                pxn_table |= raw & PXN_TABLE != 0;
                uxn_table |= raw & UXN_TABLE != 0;
                table = raw & OA;
                continue;
            }
            // A block at L0 needs FEAT_LPA2; 0b01 at L3 is reserved: both fault.
            (0, false) | (3, false) => return fault(level),
            _ => {}
        }
        // Block (L1, L2) or page (L3). EL2: bit 53 and nG are RES0, AP[1] is RES1.
        let leaf_res0 = if el2 { PXN | NG } else { 0 };
        let res0 = raw & (LEAF_RES0_HIGH | (OA & (size - 1)) | leaf_res0);
        if res0 != 0 {
            return Walked {
                hw: Hw::Res0 { level, bits: res0 },
                leaf: None,
            };
        }
        if el2 && raw & AP1_EL0 == 0 {
            return Walked {
                hw: Hw::Res1 { level, bits: AP1_EL0 },
                leaf: None,
            };
        }
        let leaf = Some((va & !(size - 1), size));
        if raw & AF == 0 {
            return Walked {
                hw: Hw::AccessFlag { level },
                leaf,
            };
        }
        let memory_type = (mair >> (8 * ((raw >> 2) & 7))) as u8;
        let sh = ((raw >> 8) & 3) as u8;
        let shareability = if is_cacheable_type(memory_type) { sh } else { OUTER };
        // Stage 1 data access permissions, AP[2:1] (D8.4), with the table restrictions.
        let read_only = raw & AP2_READ_ONLY != 0 || no_write;
        if el2 {
            // One privilege level: AP[2] alone decides writes, XN (bit 54) and XNTable
            // (bit 60) execution; no EL0, no ASIDs.
            return Walked {
                hw: Hw::Page {
                    pa: (raw & OA & !(size - 1)) | (va & (size - 1)),
                    el1_write: !read_only,
                    el1_exec: raw & UXN == 0 && !uxn_table,
                    el0_read: false,
                    el0_exec: false,
                    memory_type,
                    shareability,
                    global: true,
                },
                leaf,
            };
        }
        let el0_read = raw & AP1_EL0 != 0 && !no_el0;
        let el0_write = el0_read && !read_only;
        return Walked {
            hw: Hw::Page {
                pa: (raw & OA & !(size - 1)) | (va & (size - 1)),
                el1_write: !read_only,
                // A location writable at EL0 is never executable at EL1.
                el1_exec: raw & PXN == 0 && !pxn_table && !el0_write,
                el0_read,
                el0_exec: raw & UXN == 0 && !uxn_table,
                memory_type,
                shareability,
                global: raw & NG == 0,
            },
            leaf,
        };
    }
    unreachable!("L3 descriptors always end the walk")
}

/// The memory type each cache attribute must give, per the library's documented MAIR
/// layout (UEFI AArch64 binding for UC, WC, WT, WB).
fn memory_type_for(cache: MA) -> u8 {
    match cache {
        c if c == MA::Uncached || c == MA::UncachedExport => DEVICE_NGNRNE,
        c if c == MA::WriteCombining => NORMAL_NC,
        c if c == MA::WriteThrough => NORMAL_WT_RA_WA,
        c if c == MA::Writeback => NORMAL_WB_RA_WA,
        c if c == MA::WriteProtect => NORMAL_WT_RA,
        other => panic!("test bug: not one cache attribute: {other:?}"),
    }
}

/// What the hardware must do for a page the requests left as `state` (ReadProtect pages
/// fault, except when their kept descriptor is revealed); at EL2 nothing runs at EL0.
fn expected_hw(state: Option<(u64, MA)>, reveal_read_protected: bool, el2: bool) -> Hw {
    match state {
        None => Hw::Translation { level: u8::MAX },
        Some((_, attributes)) if attributes.contains(MA::ReadProtect) && !reveal_read_protected => {
            Hw::Translation { level: u8::MAX }
        }
        Some((pa, attributes)) => {
            let memory_type = memory_type_for(attributes.cache());
            let executable = !attributes.contains(MA::ExecuteProtect) && !is_device_type(memory_type);
            Hw::Page {
                pa,
                el1_write: !attributes.contains(MA::ReadOnly),
                el1_exec: executable,
                el0_read: false,
                el0_exec: executable && !el2,
                memory_type,
                shareability: if is_cacheable_type(memory_type) { INNER } else { OUTER },
                global: true,
            }
        }
    }
}

/// Compares a walk with an expectation; any translation fault matches an expected fault.
fn same(got: Hw, want: Hw) -> bool {
    match (got, want) {
        (Hw::Translation { .. }, Hw::Translation { .. }) => true,
        _ => got == want,
    }
}

/// An MMU that records what it is asked to do, like `RecordingMmu`, and at every
/// `Barrier::Stores` also walks the watched addresses: the table state the barrier
/// publishes, so a test can see whether an entry was broken before it was remade.
#[derive(Default)]
struct Snoop {
    root: Cell<u64>,
    levels: Cell<u8>,
    el2: Cell<bool>,
    mair: Cell<u64>,
    watched: RefCell<Vec<u64>>,
    events: RefCell<Vec<(MmuOp, Option<Vec<Walked>>)>>,
}

impl Snoop {
    fn log(&self) -> Vec<MmuOp> {
        self.events.borrow().iter().map(|(op, _)| *op).collect()
    }

    fn take_events(&self) -> Vec<(MmuOp, Option<Vec<Walked>>)> {
        std::mem::take(&mut *self.events.borrow_mut())
    }

    fn take_log(&self) -> Vec<MmuOp> {
        self.take_events().into_iter().map(|(op, _)| op).collect()
    }

    fn push(&self, op: MmuOp) {
        self.events.borrow_mut().push((op, None));
    }
}

impl Tlb for Snoop {
    fn invalidate_page(&self, va: u64) {
        self.push(MmuOp::InvalidatePage(va));
    }

    fn invalidate_all(&self) {
        self.push(MmuOp::InvalidateAll);
    }

    fn barrier(&self, barrier: Barrier) {
        let snapshot = (barrier == Barrier::Stores).then(|| {
            self.watched
                .borrow()
                .iter()
                .map(|&va| {
                    walk(
                        self.root.get(),
                        self.levels.get(),
                        self.mair.get(),
                        va,
                        false,
                        self.el2.get(),
                    )
                })
                .collect()
        });
        self.events.borrow_mut().push((MmuOp::Barrier(barrier), snapshot));
    }
}

impl Mmu for Snoop {
    fn install(&self, request: &InstallRequest) -> Result<(), PtError> {
        self.push(MmuOp::Install(*request));
        Ok(())
    }
}

/// One request the test made, kept for the expected map.
#[derive(Debug, Clone, Copy)]
enum Req {
    Map {
        va: u64,
        pa: u64,
        size: u64,
        attributes: MA,
    },
    Unmap {
        va: u64,
        size: u64,
    },
    Protect {
        va: u64,
        size: u64,
        attributes: MA,
    },
}

impl Req {
    fn range(&self) -> (u64, u64) {
        match *self {
            Req::Map { va, size, .. } | Req::Unmap { va, size } | Req::Protect { va, size, .. } => (va, size),
        }
    }

    fn op(&self) -> Op {
        match *self {
            Req::Map {
                va,
                pa,
                size,
                attributes,
            } => Op::Map {
                va,
                pa,
                size,
                attributes,
            },
            Req::Unmap { va, size } => Op::Unmap { va, size },
            Req::Protect { va, size, attributes } => Op::Protect { va, size, attributes },
        }
    }
}

/// The expected state of page `va` after `reqs`, in order: (PA, attributes) or unmapped.
/// Written from the documented semantics only.
fn expected(reqs: &[Req], va: u64) -> Option<(u64, MA)> {
    let mut state: Option<(u64, MA)> = None;
    for r in reqs {
        let (start, size) = r.range();
        let offset = va.wrapping_sub(start);
        if offset >= size {
            continue;
        }
        state = match *r {
            Req::Map { pa, attributes, .. } => Some((pa + offset, attributes)),
            Req::Unmap { .. } => None,
            Req::Protect { attributes: change, .. } => {
                let (pa, old) = state.expect("test bug: protect of an unmapped page");
                let cache = if change.cache().is_empty() {
                    old.cache()
                } else {
                    change.cache()
                };
                Some((pa, change.access() | cache))
            }
        };
    }
    state
}

/// A table under construction plus every request made on it.
struct Build<R: Regime = El1> {
    t: Table<R>,
    reqs: Vec<Req>,
    levels: u8,
    /// The EL2 regime: walks and expectations read descriptors for EL2.
    el2: bool,
}

impl<R: Regime> Build<R> {
    fn new(paging: PagingType, one_gib_blocks: bool, pages: usize) -> Self {
        let config = Aarch64Config {
            one_gib_blocks,
            ..Aarch64Config::default()
        };
        let t = Aarch64PageTable::with_regime(PagePool::new(pages), paging, config, Snoop::default(), R::default())
            .unwrap();
        let el2 = R::EL == 2;
        let levels = match paging {
            PagingType::Paging3Level => 3,
            PagingType::Paging4Level => 4,
            PagingType::Paging5Level => unreachable!("no 5-level AArch64 tables"),
        };
        let mair = match t.install_request() {
            InstallRequest::Aarch64 { mair, .. } if !el2 => mair,
            InstallRequest::Aarch64El2 { mair, .. } if el2 => mair,
            other => panic!("not an AArch64 install request of the regime: {other:x?}"),
        };
        t.mmu().root.set(t.root());
        t.mmu().el2.set(el2);
        t.mmu().levels.set(levels);
        t.mmu().mair.set(mair);
        Self {
            t,
            reqs: Vec::new(),
            levels,
            el2,
        }
    }

    fn mair(&self) -> u64 {
        self.t.mmu().mair.get()
    }

    fn walk(&self, va: u64, reveal_read_protected: bool) -> Walked {
        walk(
            self.t.root(),
            self.levels,
            self.mair(),
            va,
            reveal_read_protected,
            self.el2,
        )
    }

    fn map(&mut self, va: u64, size: u64, attributes: MA) {
        self.t
            .map_memory_region(va, size, attributes)
            .unwrap_or_else(|e| panic!("map {va:#x}+{size:#x} {attributes:?}: {e}"));
        self.reqs.push(Req::Map {
            va,
            pa: va,
            size,
            attributes,
        });
    }

    fn alias(&mut self, va: u64, pa: u64, size: u64, attributes: MA) {
        self.t.map_aliased_memory_region(va, pa, size, attributes).unwrap();
        self.reqs.push(Req::Map {
            va,
            pa,
            size,
            attributes,
        });
    }

    fn unmap(&mut self, va: u64, size: u64) {
        self.t.unmap_memory_region(va, size).unwrap();
        self.reqs.push(Req::Unmap { va, size });
    }

    fn protect(&mut self, va: u64, size: u64, attributes: MA) {
        self.t
            .protect_memory_region(va, size, attributes)
            .unwrap_or_else(|e| panic!("protect {va:#x}+{size:#x} {attributes:?}: {e}"));
        self.reqs.push(Req::Protect { va, size, attributes });
    }

    fn transaction(&mut self, reqs: &[Req]) {
        let mut txn = self.t.transaction();
        for r in reqs {
            txn.push(r.op());
        }
        txn.commit().unwrap();
        self.reqs.extend_from_slice(reqs);
    }
}

/// Everything the checker found wrong.
#[derive(Default)]
struct Findings {
    problems: Vec<String>,
    pages_checked: usize,
    /// Check every 4 KiB page of large ranges, not just a sample.
    every_page: bool,
}

impl Findings {
    fn report(&mut self, problem: String) {
        self.problems.push(problem);
    }

    fn assert_clean(&self) {
        assert!(
            self.problems.is_empty(),
            "{} problems (after {} pages), first ones:\n{}",
            self.problems.len(),
            self.pages_checked,
            self.problems.iter().take(20).cloned().collect::<Vec<_>>().join("\n")
        );
    }

    fn noticed(&self, prefix: &str) -> bool {
        self.problems.iter().any(|p| p.contains(prefix))
    }
}

/// The 4 KiB pages of `va..va + size` to check: all of them, or (for ranges over 4 MiB
/// when sampling) the first and last 8, the pages either side of every 2 MiB edge and
/// every 509th page.
fn pages_of(va: u64, size: u64, every_page: bool) -> Vec<u64> {
    let count = size / KIB4;
    if every_page || size <= 2 * MIB2 {
        return (0..count).map(|i| va + i * KIB4).collect();
    }
    let per_2m = MIB2 / KIB4;
    (0..count)
        .filter(|&i| i < 8 || i >= count - 8 || i % 509 == 0 || matches!((i + 1) % per_2m, 0 | 1))
        .map(|i| va + i * KIB4)
        .collect()
}

/// Compares the hardware's view of page `va` (and, for a ReadProtect page, what its
/// descriptor keeps), and the library's own translation, with the expected map.
fn check_page<R: Regime>(b: &Build<R>, f: &mut Findings, va: u64) {
    f.pages_checked += 1;
    let state = expected(&b.reqs, va);
    let got = b.walk(va, false).hw;
    let want = expected_hw(state, false, b.el2);
    if !same(got, want) {
        f.report(format!("va {va:#x}: hardware {got:x?}, requests want {want:x?}"));
    }
    if state.is_some_and(|(_, a)| a.contains(MA::ReadProtect)) {
        let kept = b.walk(va, true).hw;
        let want = expected_hw(state, true, b.el2);
        if kept != want {
            f.report(format!(
                "va {va:#x}: ReadProtect leaf keeps {kept:x?}, requests want {want:x?}"
            ));
        }
    }
    let translated = b.t.translate(va);
    if translated != state {
        f.report(format!(
            "va {va:#x}: translate {translated:x?}, requests want {state:x?}"
        ));
    }
}

/// Checks every entry of every table against the architecture and the library's documented
/// encoding, every hardware-visible page against the expected map, and the page count.
fn audit<R: Regime>(b: &Build<R>, f: &mut Findings) {
    let mut tables = 0usize;
    let mut seen = HashSet::new();
    audit_table(b, f, b.t.root(), start_level(b.levels), 0, &mut tables, &mut seen);
    if tables != b.t.table_pages() {
        f.report(format!(
            "{tables} tables reachable, library counts {}",
            b.t.table_pages()
        ));
    }
    let live = b.t.allocator().live_pages();
    if tables != live {
        f.report(format!("{tables} tables reachable but {live} pool pages live (leak)"));
    }
    if b.t.allocator().bad_frees() != 0 {
        f.report(format!("{} bad frees", b.t.allocator().bad_frees()));
    }
}

fn audit_table<R: Regime>(
    b: &Build<R>,
    f: &mut Findings,
    table: u64,
    level: u8,
    table_va: u64,
    tables: &mut usize,
    seen: &mut HashSet<u64>,
) {
    *tables += 1;
    if !seen.insert(table) {
        f.report(format!("table {table:#x} reachable twice"));
        return;
    }
    if !b.t.allocator().live().any(|p| p == table) {
        f.report(format!("table {table:#x} is not a live pool page"));
        return;
    }
    let size = arm_size(level);
    let one_gib = b.t.config().one_gib_blocks;
    for index in 0..512u64 {
        let raw = entry(table, index);
        let va = table_va + index * size;
        let at = format!("L{level} entry {index} (va {va:#x}) = {raw:#018x}");
        if raw == 0 {
            continue;
        }
        let type_bits = raw & 3;
        let block_level = level == 2 || (level == 1 && one_gib);
        if raw & VALID == 0 {
            // The walker ignores the rest; the library documents only its ReadProtect
            // leaves here: the marker, and the leaf's type bit kept (page 0b1x, block 0b0x).
            let leaf_shape = (level == 3 && type_bits == 0b10) || (block_level && type_bits == 0b00);
            if raw & SW_READ_PROTECTED == 0 || !leaf_shape {
                f.report(format!("{at}: invalid entry that is not a ReadProtect leaf"));
                continue;
            }
        }
        let leaf = level == 3 || raw & TYPE_TABLE_OR_PAGE == 0;
        if !leaf {
            // A table descriptor: exactly 0b11 | next-level address.
            if raw & !OA != VALID | TYPE_TABLE_OR_PAGE {
                f.report(format!(
                    "{at}: table descriptor with bits {:#x} besides type and address",
                    raw & !OA & !3
                ));
            }
            audit_table(b, f, raw & OA, level + 1, va, tables, seen);
            continue;
        }
        if level == 0 || (level == 1 && !one_gib) {
            f.report(format!("{at}: block at a level that must not hold one"));
        }
        // The documented leaf encoding (EL2: AP[1] set as RES1, PXN clear as RES0).
        let regime_clear = if b.el2 { PXN } else { AP1_EL0 };
        let must_clear = NS | regime_clear | NG | GP | DBM | CONTIGUOUS | UPPER | LEAF_RES0_HIGH | (OA & (size - 1));
        if raw & must_clear != 0 {
            f.report(format!("{at}: bits {:#x} set", raw & must_clear));
        }
        if b.el2 && raw & AP1_EL0 == 0 {
            f.report(format!("{at}: EL2 leaf with AP[1] (RES1) clear"));
        }
        if raw & AF == 0 {
            f.report(format!("{at}: AF clear"));
        }
        if (raw >> 8) & 3 != u64::from(INNER) {
            f.report(format!("{at}: SH is not Inner Shareable"));
        }
        if !b.el2 && (raw & PXN == 0) != (raw & UXN == 0) {
            f.report(format!("{at}: PXN and UXN differ"));
        }
        // The execute-never bit of the table's own level: PXN at EL1&0, XN (bit 54) at EL2.
        let xn = if b.el2 { UXN } else { PXN };
        let memory_type = (b.mair() >> (8 * ((raw >> 2) & 7))) as u8;
        if is_device_type(memory_type) && raw & xn == 0 {
            f.report(format!("{at}: device memory not execute-never"));
        }
        if raw & SW_XN_FORCED != 0 && (!is_device_type(memory_type) || raw & xn == 0) {
            f.report(format!("{at}: forced-XN marker on a leaf that is not device XN"));
        }
        if raw & SOFTWARE & !(SW_READ_PROTECTED | SW_XN_FORCED) != 0
            || (raw & VALID != 0 && raw & SW_READ_PROTECTED != 0)
        {
            f.report(format!("{at}: undocumented software bits"));
        }
        for page in pages_of(va, size, f.every_page) {
            check_page(b, f, page);
        }
    }
}

/// Checks every page of every requested range, and the page on either side of each.
fn check_requested_ranges<R: Regime>(b: &Build<R>, f: &mut Findings) {
    let limit = 1u64 << va_bits(b.levels);
    for r in &b.reqs {
        let (va, size) = r.range();
        if va >= KIB4 {
            check_page(b, f, va - KIB4);
        }
        for page in pages_of(va, size, f.every_page) {
            check_page(b, f, page);
        }
        if va + size < limit {
            check_page(b, f, va + size);
        }
    }
}

fn check_with<R: Regime>(b: &Build<R>, every_page: bool) -> Findings {
    let mut f = Findings {
        every_page,
        ..Findings::default()
    };
    audit(b, &mut f);
    check_requested_ranges(b, &mut f);
    f
}

fn check<R: Regime>(b: &Build<R>) -> Findings {
    check_with(b, true)
}

/// Checks the canonical form the library documents: no table other than the root is all
/// invalid, and no table whose parent entry may be a block is one uniform, contiguous,
/// aligned run of leaves (it should have been that block).
fn check_canonical_form<R: Regime>(b: &Build<R>, f: &mut Findings) {
    fn visit<R: Regime>(b: &Build<R>, f: &mut Findings, table: u64, level: u8, va: u64, root: bool) {
        let size = arm_size(level);
        let raws: Vec<u64> = (0..512).map(|i| entry(table, i)).collect();
        if !root && raws.iter().all(|&r| r == 0) {
            f.report(format!("L{level} table for {va:#x} is empty"));
        }
        let parent_may_be_block = level == 3 || (level == 2 && b.t.config().one_gib_blocks);
        let leaf = |r: u64| r != 0 && (level == 3 || r & TYPE_TABLE_OR_PAGE == 0);
        let first = raws[0];
        if !root
            && parent_may_be_block
            && leaf(first)
            && (first & OA) % (size * 512) == 0
            && raws.iter().enumerate().all(|(i, &r)| r == first + i as u64 * size)
        {
            f.report(format!("L{level} table for {va:#x} should be one block"));
        }
        for (i, &r) in raws.iter().enumerate() {
            if r & VALID != 0 && level < 3 && r & TYPE_TABLE_OR_PAGE != 0 {
                visit(b, f, r & OA, level + 1, va + i as u64 * size, false);
            }
        }
    }
    visit(b, f, b.t.root(), start_level(b.levels), 0, true);
}

/// One memory-map or MAT row: type, start, pages, attributes.
type Row = (String, u64, u64, u64);

fn parse_csv(text: &str) -> Vec<Row> {
    text.lines()
        .skip(1)
        .filter(|line| !line.trim().is_empty())
        .map(|line| {
            let cols: Vec<&str> = line.split(',').collect();
            let hex = |s: &str| u64::from_str_radix(s.trim_start_matches("0x"), 16).unwrap();
            (
                cols[0].to_string(),
                hex(cols[1]),
                cols[3].parse().unwrap(),
                hex(cols[4]),
            )
        })
        .collect()
}

/// Maps a captured AArch64 QEMU `virt` memory map the way firmware would, then applies
/// its Memory Attributes Table, a few guard pages and an alias of the start of RAM at
/// `alias` (also one at the last 2 MiB of the address space).
fn firmware_map<R: Regime>(b: &mut Build<R>, memmap: &str, mat: &str, alias: u64) {
    for (kind, start, pages, attributes) in parse_csv(memmap) {
        let uefi = MA::from_bits_truncate(attributes);
        // One cache type per mapping: the cheapest the descriptor allows.
        let cache = [MA::Writeback, MA::WriteCombining, MA::WriteThrough, MA::Uncached]
            .into_iter()
            .find(|&c| uefi.contains(c))
            .expect("every row names a cache type");
        let code = matches!(
            kind.as_str(),
            "EfiLoaderCode" | "EfiBootServicesCode" | "EfiRuntimeServicesCode"
        );
        let access = if code { MA::empty() } else { MA::ExecuteProtect };
        b.map(start, pages * KIB4, cache | access);
    }
    for (_, start, pages, attributes) in parse_csv(mat) {
        b.protect(start, pages * KIB4, MA::from_bits_truncate(attributes).access());
    }
    // The first RAM page as a null guard, and a stack guard in the first boot-services data.
    b.protect(0x4000_0000, KIB4, MA::ReadProtect | MA::ExecuteProtect);
    b.protect(0x4400_0000, KIB4, MA::ReadProtect);
    // A hole in boot-services data.
    b.unmap(0x4401_0000, 2 * KIB4);
    // The RTC page made write-combining, then execute-protected in one transaction with an
    // unmap inside the flash bank and a write-protect, write-through and export mix.
    b.transaction(&[
        Req::Protect {
            va: 0x0901_0000,
            size: KIB4,
            attributes: MA::UncachedExport,
        },
        Req::Unmap {
            va: 0x0500_0000,
            size: MIB2 + KIB4,
        },
        Req::Map {
            va: 0x4800_0000,
            pa: 0x4800_0000,
            size: MIB2,
            attributes: MA::WriteProtect | MA::ReadOnly,
        },
        Req::Map {
            va: 0x4820_0000,
            pa: 0x4820_0000,
            size: MIB2 + 0x3000,
            attributes: MA::WriteThrough | MA::ExecuteProtect,
        },
    ]);
    // An alias of the first 1 GiB + 2 MiB of RAM, and the last 2 MiB of the TTBR0 space.
    b.alias(alias, 0x4000_0000, GIB + MIB2, MA::Writeback | MA::ExecuteProtect);
    let top = (1u64 << va_bits(b.levels)) - MIB2;
    b.alias(top, 0x0901_0000 - 0x1_0000, MIB2, MA::Uncached);
}

const MEMMAP_4G: &str = include_str!("data/uefi-memmap-aarch64-virt-4G.csv");
const MAT_4G: &str = include_str!("data/uefi-mat-aarch64-virt-4G.csv");
const MEMMAP_16G: &str = include_str!("data/uefi-memmap-aarch64-virt-16G.csv");
const MAT_16G: &str = include_str!("data/uefi-mat-aarch64-virt-16G.csv");

/// The install request must program what the decoder assumed, and make the table live.
fn check_install<R: Regime>(b: &Build<R>) {
    b.t.mmu().take_log();
    b.t.install_page_table().unwrap();
    let log = b.t.mmu().take_log();
    let (mair, tcr, ttbr0) = match log[..] {
        [MmuOp::Install(InstallRequest::Aarch64 { mair, tcr, ttbr0 })] if !b.el2 => (mair, tcr, ttbr0),
        [MmuOp::Install(InstallRequest::Aarch64El2 { mair, tcr, ttbr0 })] if b.el2 => (mair, tcr, ttbr0),
        _ => panic!("install logged {log:x?}"),
    };
    assert_eq!(mair, b.mair());
    assert_eq!(ttbr0, b.t.root());
    assert_eq!(tcr & 0x3F, 64 - u64::from(va_bits(b.levels)), "T0SZ");
    if b.el2 {
        // TCR_EL2 with E2H = 0 (register description): RES1 bits 31 and 23, PS[18:16] = 48
        // bits (0b101), TG0 4 KiB, walks Inner Shareable WB RA/WA; nothing else.
        let t0sz = 64 - u64::from(va_bits(b.levels));
        assert_eq!(
            tcr,
            1 << 31 | 1 << 23 | 0b101 << 16 | 0b11 << 12 | 0b01 << 10 | 0b01 << 8 | t0sz,
            "TCR_EL2 {tcr:#x}"
        );
    }
    assert!(b.t.tables().is_live());
}

#[test]
fn firmware_map_3_level_matches_hardware_view() {
    let mut b = <Build>::new(PagingType::Paging3Level, true, 1024);
    firmware_map(&mut b, MEMMAP_4G, MAT_4G, 0x40_0000_0000);
    let f = check(&b);
    f.assert_clean();
    assert!(f.pages_checked > 1_000_000, "checked only {} pages", f.pages_checked);
    check_install(&b);
}

#[test]
fn firmware_map_4_level_matches_hardware_view() {
    let mut b = <Build>::new(PagingType::Paging4Level, true, 1024);
    firmware_map(&mut b, MEMMAP_16G, MAT_16G, 0x8000_0000_0000);
    check_with(&b, false).assert_clean();
    check_install(&b);
}

#[test]
fn firmware_map_without_1gib_blocks_matches_hardware_view() {
    for paging in [PagingType::Paging3Level, PagingType::Paging4Level] {
        let mut b = <Build>::new(paging, false, 1024);
        firmware_map(&mut b, MEMMAP_4G, MAT_4G, 0x40_0000_0000);
        check_with(&b, false).assert_clean();
    }
}

#[test]
fn firmware_map_is_in_canonical_form() {
    for (paging, one_gib) in [
        (PagingType::Paging3Level, true),
        (PagingType::Paging4Level, true),
        (PagingType::Paging4Level, false),
    ] {
        let mut b = <Build>::new(paging, one_gib, 1024);
        firmware_map(&mut b, MEMMAP_4G, MAT_4G, 0x40_0000_0000);
        let mut f = Findings::default();
        check_canonical_form(&b, &mut f);
        f.assert_clean();
    }
}

#[test]
fn every_cache_and_access_combination_decodes_as_requested() {
    let caches = [
        MA::Uncached,
        MA::WriteCombining,
        MA::WriteThrough,
        MA::Writeback,
        MA::UncachedExport,
        MA::WriteProtect,
    ];
    for paging in [PagingType::Paging3Level, PagingType::Paging4Level] {
        let mut b = <Build>::new(paging, true, 256);
        let mut va = 0;
        for cache in caches {
            for access in 0..8u64 {
                let mut attributes = cache;
                attributes.set(MA::ReadOnly, access & 1 != 0);
                attributes.set(MA::ExecuteProtect, access & 2 != 0);
                attributes.set(MA::ReadProtect, access & 4 != 0);
                // A 4 KiB page, a 2 MiB block and a 1 GiB block of each.
                b.map(va, KIB4, attributes);
                b.map(va + MIB2, MIB2, attributes);
                b.map(va + GIB, GIB, attributes);
                for (start, size) in [(va, KIB4), (va + MIB2, MIB2), (va + GIB, GIB)] {
                    assert_eq!(b.t.query_memory_region(start, size), Ok(attributes), "{start:#x}");
                }
                va += 2 * GIB;
            }
        }
        let f = check_with(&b, false);
        f.assert_clean();
        check_install(&b);
    }
}

/// A small table for the negative controls: pages, a 2 MiB block and a 1 GiB block.
fn small_build<R: Regime>() -> Build<R> {
    let mut b = Build::<R>::new(PagingType::Paging4Level, true, 64);
    b.map(0, MIB2, MA::Writeback);
    b.protect(0x1000, KIB4, MA::ReadOnly);
    b.map(MIB2, MIB2, MA::Uncached);
    b.map(GIB, GIB, MA::WriteThrough | MA::ExecuteProtect);
    b.protect(0x3000, KIB4, MA::ReadProtect);
    check(&b).assert_clean();
    b
}

/// Changes the descriptor of Arm level `level` on the walk of `va` with `change`.
fn corrupt<R: Regime>(b: &Build<R>, va: u64, level: u8, change: impl FnOnce(&mut u64)) {
    let mut table = b.t.root();
    for l in start_level(b.levels)..level {
        table = entry(table, (va / arm_size(l)) % 512) & OA;
    }
    let index = (va / arm_size(level)) % 512;
    let mut raw = entry(table, index);
    change(&mut raw);
    set_entry(table, index, raw);
}

#[test]
fn negative_control_memory_type_change_is_noticed() {
    let b = small_build::<El1>();
    corrupt(&b, 0x2000, 3, |e| *e ^= 1 << 2); // AttrIndx 4 (WB) -> 5
    assert!(check(&b).noticed("va 0x2000: hardware"));
}

#[test]
fn negative_control_cleared_access_flag_is_noticed() {
    let b = small_build::<El1>();
    corrupt(&b, MIB2, 2, |e| *e &= !AF);
    let f = check(&b);
    assert!(
        f.noticed("AF clear") && f.noticed("va 0x200000: hardware AccessFlag"),
        "{:#?}",
        f.problems
    );
}

#[test]
fn negative_control_res0_bit_in_block_is_noticed() {
    let b = small_build::<El1>();
    corrupt(&b, GIB, 1, |e| *e |= 1 << 21); // inside a 1 GiB block's address field
    assert!(check(&b).noticed("va 0x40000000: hardware Res0"));
}

#[test]
fn negative_control_permission_changes_are_noticed() {
    let b = small_build::<El1>();
    corrupt(&b, 0x1000, 3, |e| *e &= !AP2_READ_ONLY);
    corrupt(&b, 0x2000, 3, |e| *e |= PXN | UXN);
    corrupt(&b, MIB2, 2, |e| *e &= !(PXN | UXN));
    corrupt(&b, 0x4000, 3, |e| *e |= AP1_EL0);
    let f = check(&b);
    for va in ["0x1000", "0x2000", "0x200000", "0x4000"] {
        assert!(f.noticed(&format!("va {va}: hardware")), "{va}: {:#?}", f.problems);
    }
    assert!(f.noticed("device memory not execute-never"));
}

#[test]
fn negative_control_shareability_and_global_changes_are_noticed() {
    let b = small_build::<El1>();
    corrupt(&b, 0x5000, 3, |e| *e &= !(1 << 8)); // SH 0b11 -> 0b10
    corrupt(&b, 0x6000, 3, |e| *e |= NG);
    let f = check(&b);
    assert!(
        f.noticed("va 0x5000: hardware") && f.noticed("va 0x6000: hardware"),
        "{:#?}",
        f.problems
    );
}

#[test]
fn negative_control_mapping_changes_are_noticed() {
    let b = small_build::<El1>();
    corrupt(&b, 0x7000, 3, |e| *e += KIB4); // output address
    corrupt(&b, 0x8000, 3, |e| *e = 0); // removed
    corrupt(&b, 0x3000, 3, |e| *e |= VALID); // ReadProtect page made readable
    corrupt(&b, 8 * GIB, 1, |e| *e = (8 * GIB) | AF | 3 << 8 | 4 << 2 | VALID); // mapped behind its back
    let f = check(&b);
    for va in ["0x7000", "0x8000", "0x3000"] {
        assert!(f.noticed(&format!("va {va}: hardware")), "{va}: {:#?}", f.problems);
    }
    assert!(f.noticed("va 0x200000000: hardware"), "{:#?}", f.problems);
}

#[test]
fn negative_control_table_linked_twice_is_noticed() {
    let b = small_build::<El1>();
    let root = b.t.root();
    corrupt(&b, 0x4000_0000_0000, 0, |e| *e = root | VALID | TYPE_TABLE_OR_PAGE);
    assert!(check(&b).noticed("reachable twice"));
}

#[test]
fn negative_control_hierarchical_restriction_is_noticed() {
    let b = small_build::<El1>();
    corrupt(&b, 0, 1, |e| *e |= AP_TABLE_NO_WRITE);
    let f = check(&b);
    assert!(
        f.noticed("besides type and address") && f.noticed("va 0x0: hardware"),
        "{:#?}",
        f.problems
    );
}

/// Deterministic xorshift, so a failure names its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[(self.next() % items.len() as u64) as usize]
    }
}

/// Whether every page of `va..va + size` is mapped after `reqs`. Whether a page is mapped
/// only changes at request boundaries, so one page per piece between them decides.
fn fully_mapped(reqs: &[Req], va: u64, size: u64) -> bool {
    let end = va + size;
    let mut cuts: Vec<u64> = vec![va];
    for r in reqs {
        let (start, len) = r.range();
        for cut in [start, start.wrapping_add(len)] {
            if va < cut && cut < end {
                cuts.push(cut);
            }
        }
    }
    cuts.into_iter().all(|page| expected(reqs, page).is_some())
}

/// Whether the TLB entry a walk of `va` may have cached from `old` is dropped by `op`.
fn covers(op: MmuOp, old: &Walked) -> bool {
    match op {
        MmuOp::InvalidateAll => true,
        // TLBI VAE1IS drops the entries that translate the named address: any address of a
        // block drops the block's entry, a page's entry needs that page.
        MmuOp::InvalidatePage(x) => old.leaf.is_some_and(|(start, size)| x.wrapping_sub(start) < size),
        _ => false,
    }
}

/// Whether replacing the translation `old` of an address by `new` needs break-before-make:
/// both valid and a different output address, memory type, shareability or leaf size.
fn needs_break(old: &Walked, new: &Walked) -> bool {
    match (old.hw, new.hw) {
        (
            Hw::Page {
                pa,
                memory_type,
                shareability,
                ..
            },
            Hw::Page {
                pa: new_pa,
                memory_type: new_type,
                shareability: new_shareability,
                ..
            },
        ) => {
            pa != new_pa
                || memory_type != new_type
                || shareability != new_shareability
                || old.leaf.map(|l| l.1) != new.leaf.map(|l| l.1)
        }
        _ => false,
    }
}

/// Checks one commit's MMU events on a live table against the architecture: the shape of
/// the sequence (barriers around every invalidation batch, ISB last), break-before-make
/// for every watched address that needs it, and an invalidation for every watched address
/// whose cached translation changed.
fn check_live_commit(
    what: &str,
    watched: &[u64],
    old: &[Walked],
    new: &[Walked],
    events: &[(MmuOp, Option<Vec<Walked>>)],
) {
    let ops: Vec<MmuOp> = events.iter().map(|(op, _)| *op).collect();
    // Shape: (Stores, TLBIs, Invalidations)+ then Instructions.
    let mut i = 0;
    let mut batches = 0;
    while i < ops.len() && ops[i] == MmuOp::Barrier(Barrier::Stores) {
        i += 1;
        while i < ops.len() && matches!(ops[i], MmuOp::InvalidatePage(_) | MmuOp::InvalidateAll) {
            i += 1;
        }
        assert_eq!(
            ops.get(i),
            Some(&MmuOp::Barrier(Barrier::Invalidations)),
            "{what}: {ops:x?}"
        );
        i += 1;
        batches += 1;
    }
    assert!(
        (1..=2).contains(&batches) && i + 1 == ops.len() && ops[i] == MmuOp::Barrier(Barrier::Instructions),
        "{what}: sequence {ops:x?}"
    );
    // The Stores barriers: index in `events` and snapshot.
    let stores: Vec<(usize, &Vec<Walked>)> = events
        .iter()
        .enumerate()
        .filter_map(|(i, (_, snapshot))| snapshot.as_ref().map(|s| (i, s)))
        .collect();
    for (k, &va) in watched.iter().enumerate() {
        let (old, new) = (&old[k], &new[k]);
        if needs_break(old, new) {
            // Some Stores barrier before the last one published the address unmapped, and
            // a TLBI covering the old translation followed before the next Stores barrier.
            let broken = stores[..stores.len() - 1].iter().any(|&(at, snapshot)| {
                matches!(snapshot[k].hw, Hw::Translation { .. })
                    && events[at + 1..]
                        .iter()
                        .take_while(|(op, _)| *op != MmuOp::Barrier(Barrier::Stores))
                        .any(|(op, _)| covers(*op, old))
            });
            assert!(
                broken,
                "{what}: {va:#x} went from {old:x?} to {new:x?} without break-before-make: {ops:x?}"
            );
        }
        if matches!(old.hw, Hw::Page { .. }) && (old.hw != new.hw || old.leaf != new.leaf) {
            assert!(
                ops.iter().any(|&op| covers(op, old)),
                "{what}: {va:#x} changed from {old:x?} to {new:x?} without invalidation: {ops:x?}"
            );
        }
    }
}

/// Random transactions, checked against the model after each commit. `live`: the table is
/// installed first, so commits run break-before-make, which is checked too. `dense` keeps
/// every op within a few 2 MiB blocks, so ops of one transaction overlap a lot.
fn random_transactions<R: Regime>(paging: PagingType, one_gib: bool, seed: u64, dense: bool, live: bool) {
    let high = 0x40_0000_0000; // 256 GiB: inside 39 bits
    let (bases, offsets, sizes): (&[u64], &[u64], &[u64]) = if dense {
        (
            &[GIB - MIB2, GIB],
            &[0, KIB4, 5 * KIB4, MIB2 - KIB4, MIB2],
            &[KIB4, 2 * KIB4, 7 * KIB4, MIB2 - KIB4, MIB2, MIB2 + KIB4, 2 * MIB2],
        )
    } else {
        (
            &[0, GIB - MIB2, GIB, 2 * GIB - KIB4, high, high + GIB - KIB4],
            &[0, KIB4, MIB2 - KIB4, MIB2, 3 * MIB2, GIB - MIB2],
            &[
                KIB4,
                3 * KIB4,
                MIB2 - KIB4,
                MIB2,
                MIB2 + KIB4,
                2 * MIB2,
                GIB,
                GIB + MIB2,
            ],
        )
    };
    let pa_shifts = [0, 0, 0, KIB4, MIB2, GIB, 3 * GIB + MIB2];
    let map_attributes = [
        MA::Writeback,
        MA::Writeback | MA::ReadOnly,
        MA::Uncached | MA::ExecuteProtect,
        MA::Uncached,
        MA::WriteCombining,
        MA::ReadProtect | MA::Writeback,
        MA::Writeback | MA::ExecuteProtect,
        MA::WriteThrough | MA::ReadOnly | MA::ExecuteProtect,
        MA::UncachedExport,
        MA::WriteProtect | MA::ReadOnly,
    ];
    let protect_attributes = [
        MA::ExecuteProtect,
        MA::ReadOnly,
        MA::empty(),
        MA::ReadProtect | MA::ExecuteProtect,
    ];
    let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let mut b = Build::<R>::new(paging, one_gib, 4096);
    if live {
        b.t.install_page_table().unwrap();
    }
    for round in 0..12 {
        let mut reqs = Vec::new();
        let mut model = b.reqs.clone();
        let mut failing = None;
        for i in 0..1 + rng.next() % if dense { 7 } else { 4 } {
            let va = rng.pick(bases) + rng.pick(offsets);
            let size = rng.pick(sizes);
            let as_map = Req::Map {
                va,
                pa: if va >= high { va - high } else { va } + rng.pick(&pa_shifts),
                size,
                attributes: rng.pick(&map_attributes),
            };
            let mut r = match rng.next() % 5 {
                0 | 1 => as_map,
                2 => Req::Unmap { va, size },
                3 => Req::Protect {
                    va,
                    size,
                    attributes: rng.pick(&map_attributes),
                },
                _ => Req::Protect {
                    va,
                    size,
                    attributes: rng.pick(&protect_attributes),
                },
            };
            if !matches!(r, Req::Map { .. }) && failing.is_none() && !fully_mapped(&model, va, size) {
                if rng.next() % 5 == 0 {
                    failing = Some(i as usize);
                } else {
                    r = as_map;
                }
            }
            reqs.push(r);
            model.push(r);
        }
        let before: Vec<(u64, Vec<u8>)> = {
            let pool = b.t.allocator();
            pool.live().map(|pa| (pa, pool.page(pa).unwrap().to_vec())).collect()
        };
        let watched: Vec<u64> = reqs
            .iter()
            .flat_map(|r| {
                let (va, size) = r.range();
                pages_of(va, size, false)
            })
            .collect();
        let old: Vec<Walked> = watched.iter().map(|&va| b.walk(va, false)).collect();
        *b.t.mmu().watched.borrow_mut() = watched.clone();
        b.t.mmu().take_log();
        let mut txn = b.t.transaction();
        for r in &reqs {
            txn.push(r.op());
        }
        let plan = txn.plan();
        let result = txn.commit();
        let what = format!("seed {seed} round {round} live {live}: {reqs:x?}");
        match failing {
            Some(op) => {
                let want = Err((Some(op), PtError::NoMapping));
                assert_eq!(plan.map(drop).map_err(|e| e.code()), want, "plan {what}");
                assert_eq!(result.map(drop).map_err(|e| e.code()), want, "{what}");
                assert_eq!(b.t.mmu().log(), vec![], "{what}");
                let pool = b.t.allocator();
                let after: Vec<(u64, Vec<u8>)> = pool.live().map(|pa| (pa, pool.page(pa).unwrap().to_vec())).collect();
                assert!(after == before, "{what}: a failed commit changed the table");
            }
            None => {
                let report = result.unwrap_or_else(|e| panic!("{what}: {e}"));
                let plan = plan.unwrap();
                assert_eq!(
                    (
                        report.entries_written,
                        report.tables_allocated,
                        report.tables_freed,
                        report.breaks
                    ),
                    (
                        plan.entries_to_write,
                        plan.tables_to_allocate,
                        plan.tables_to_free,
                        plan.breaks
                    ),
                    "{what}"
                );
                let events = b.t.mmu().take_events();
                let new: Vec<Walked> = watched.iter().map(|&va| b.walk(va, false)).collect();
                if live {
                    check_live_commit(&what, &watched, &old, &new, &events);
                } else {
                    assert_eq!(report.breaks, 0, "{what}: a break on a table nobody walks");
                    assert!(
                        events.iter().all(|(op, _)| !matches!(op, MmuOp::Barrier(_))),
                        "{what}: barriers on a table nobody walks"
                    );
                }
                b.reqs.extend_from_slice(&reqs);
            }
        }
        let mut f = if round % 3 == 2 {
            check_with(&b, false)
        } else {
            Findings::default()
        };
        check_canonical_form(&b, &mut f);
        if !f.problems.is_empty() {
            f.problems.insert(0, what);
        }
        f.assert_clean();
    }
}

/// Random transactions (4 seeds per configuration; set TXPAGING_SEEDS for more): each commit
/// matches the model page by page, fails exactly when the model says (with the op index and
/// the table unchanged), matches its plan, and leaves the tables in canonical form; on an
/// installed table every change that needs it is broken, invalidated and barriered before
/// it is remade.
#[test]
fn random_transactions_match_hardware_view_and_follow_break_before_make() {
    let seeds: u64 = std::env::var("TXPAGING_SEEDS").map_or(4, |s| s.parse().expect("TXPAGING_SEEDS: a number"));
    for seed in 1..=seeds {
        random_transactions::<El1>(PagingType::Paging3Level, true, seed, false, true);
        random_transactions::<El1>(PagingType::Paging4Level, true, seed + 100_000, false, true);
        random_transactions::<El1>(PagingType::Paging4Level, false, seed + 200_000, false, false);
        random_transactions::<El1>(PagingType::Paging3Level, true, seed + 300_000, true, true);
        random_transactions::<El1>(PagingType::Paging4Level, true, seed + 400_000, true, false);
    }
}

#[test]
fn dump_shows_descriptor_fields_per_level() {
    let b = small_build::<El1>();
    let mut out = String::new();
    b.t.dump_to(&mut out, 0, 2 * MIB2).unwrap();
    let rows: Vec<&str> = out.lines().filter(|l| l.starts_with('L')).collect();
    for name in ["L0", "L1", "L2", "L3"] {
        assert!(rows.iter().any(|r| r.starts_with(name)), "no {name} row in\n{out}");
    }
    // Each row's bit columns, joined, are the 64 bits of the descriptor.
    for row in &rows {
        let bits: String = row
            .rsplit("] |")
            .next()
            .unwrap()
            .chars()
            .filter(|c| *c == '0' || *c == '1')
            .collect();
        assert_eq!(bits.len(), 64, "{row}");
        let raw = u64::from_str_radix(&bits, 2).unwrap();
        assert!(raw & VALID != 0 || raw & SW_READ_PROTECTED != 0, "{row}");
    }
    // The first page: a valid page descriptor of write-back memory (AttrIndx from the MAIR).
    let page = rows
        .iter()
        .find(|r| r.starts_with("L3   | [0x0000000000000000"))
        .expect("page 0 row");
    let bits: String = page
        .rsplit("] |")
        .next()
        .unwrap()
        .chars()
        .filter(|c| *c == '0' || *c == '1')
        .collect();
    let raw = u64::from_str_radix(&bits, 2).unwrap();
    assert_eq!(raw & 3, 0b11);
    assert_eq!((b.mair() >> (8 * ((raw >> 2) & 7))) as u8, NORMAL_WB_RA_WA);
    // One bit-range notation: "high:low" for a field, the bit number for one bit, each
    // above its column.
    let labels = out.lines().nth(1).unwrap().trim_start();
    assert_eq!(
        labels,
        "|63:59|58:55|54|53|52|51:48|               47:12                |11|10|9:8|7:6|5|4:2|1:0|"
    );
    let columns = |line: &str| -> Vec<usize> { line.trim_start().split('|').map(str::len).collect() };
    let row_cells = page.rsplit("] ").next().unwrap();
    assert_eq!(columns(labels), columns(row_cells), "labels and cells align");
}

// ------------------------------------------------------------------------------------------
// The EL2 regime (HCR_EL2.E2H = 0): the same checks with the EL2 reading of the descriptors
// ------------------------------------------------------------------------------------------

#[test]
fn el2_firmware_map_matches_hardware_view() {
    for (paging, one_gib) in [(PagingType::Paging3Level, true), (PagingType::Paging4Level, false)] {
        let mut b = Build::<El2>::new(paging, one_gib, 1024);
        firmware_map(&mut b, MEMMAP_4G, MAT_4G, 0x40_0000_0000);
        check_with(&b, false).assert_clean();
        let mut f = Findings::default();
        check_canonical_form(&b, &mut f);
        f.assert_clean();
        check_install(&b);
    }
}

#[test]
fn el2_every_cache_and_access_combination_decodes_as_requested() {
    let caches = [
        MA::Uncached,
        MA::WriteCombining,
        MA::WriteThrough,
        MA::Writeback,
        MA::UncachedExport,
        MA::WriteProtect,
    ];
    let mut b = Build::<El2>::new(PagingType::Paging4Level, true, 256);
    let mut va = 0;
    for cache in caches {
        for access in 0..8u64 {
            let mut attributes = cache;
            attributes.set(MA::ReadOnly, access & 1 != 0);
            attributes.set(MA::ExecuteProtect, access & 2 != 0);
            attributes.set(MA::ReadProtect, access & 4 != 0);
            b.map(va, KIB4, attributes);
            b.map(va + MIB2, MIB2, attributes);
            b.map(va + GIB, GIB, attributes);
            for (start, size) in [(va, KIB4), (va + MIB2, MIB2), (va + GIB, GIB)] {
                assert_eq!(b.t.query_memory_region(start, size), Ok(attributes), "{start:#x}");
            }
            va += 2 * GIB;
        }
    }
    check_with(&b, false).assert_clean();
    check_install(&b);
}

/// EL2 commits on an installed table: the same model, break-before-make and invalidation
/// checks as at EL1&0 (2 seeds per configuration; TXPAGING_SEEDS for more).
#[test]
fn el2_random_transactions_match_hardware_view_and_follow_break_before_make() {
    let seeds: u64 = std::env::var("TXPAGING_SEEDS").map_or(2, |s| s.parse().expect("TXPAGING_SEEDS: a number"));
    for seed in 1..=seeds {
        random_transactions::<El2>(PagingType::Paging4Level, true, seed + 500_000, false, true);
        random_transactions::<El2>(PagingType::Paging3Level, false, seed + 600_000, true, true);
        random_transactions::<El2>(PagingType::Paging3Level, true, seed + 700_000, false, false);
    }
}

/// The EL2 reading notices each EL2-specific rule broken on purpose: PXN (bit 53, RES0),
/// nG (RES0), AP[1] cleared (RES1), XN cleared on execute-protected memory, XN cleared on
/// device memory, PXNTable (RES0) in a table descriptor.
#[test]
fn el2_negative_control_regime_bits_are_noticed() {
    let b = small_build::<El2>();
    corrupt(&b, 0x2000, 3, |e| *e |= PXN);
    corrupt(&b, 0x4000, 3, |e| *e |= NG);
    corrupt(&b, 0x5000, 3, |e| *e &= !AP1_EL0);
    corrupt(&b, GIB, 1, |e| *e &= !UXN); // WriteThrough | ExecuteProtect 1 GiB block
    corrupt(&b, MIB2, 2, |e| *e &= !UXN); // Uncached 2 MiB block
    let f = check(&b);
    for (va, what) in [
        ("0x2000", "Res0"),
        ("0x4000", "Res0"),
        ("0x5000", "Res1"),
        ("0x40000000", "Page"),
        ("0x200000", "Page"),
    ] {
        assert!(
            f.noticed(&format!("va {va}: hardware {what}")),
            "{va}: {:#?}",
            f.problems
        );
    }
    assert!(
        f.noticed("PXN") || f.noticed("bits 0x20000000000000 set"),
        "{:#?}",
        f.problems
    );
    assert!(f.noticed("AP[1] (RES1) clear"), "{:#?}", f.problems);
    assert!(f.noticed("device memory not execute-never"), "{:#?}", f.problems);

    let b = small_build::<El2>();
    corrupt(&b, 0, 1, |e| *e |= PXN_TABLE);
    assert!(check(&b).noticed("va 0x0: hardware Res0"));
}

/// The EL1&0 reading of an EL2 table is wrong, and the checks say so: the regimes differ.
#[test]
fn el2_table_read_as_el1_is_noticed() {
    let mut b = small_build::<El2>();
    b.el2 = false;
    let f = check(&b);
    assert!(
        f.noticed("bits 0x40 set") && f.noticed("PXN and UXN differ"),
        "{:#?}",
        f.problems
    );
}
