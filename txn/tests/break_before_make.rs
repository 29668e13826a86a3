//! The engine's break-before-make phases, checked with a toy codec that follows the
//! AArch64 rules (a change of output address, memory type or entry type needs a break;
//! permissions change in place) and a recording TLB.

use std::cell::RefCell;

use txpaging_txn::{
    Barrier, Codec, Entry, Geometry, MemoryAttributes as A, PageAllocator, PtError, Reason, Tables, Tlb, TxnError,
};

const VALID: u64 = 1;
const TABLE_OR_PAGE: u64 = 2;
const READ_ONLY: u64 = 1 << 7;
const NO_EXEC: u64 = 1 << 54;
const CACHE_SHIFT: u32 = 2;
const ADDRESS: u64 = 0x0000_FFFF_FFFF_F000;

struct Toy;

fn cache_index(attributes: A) -> u64 {
    [A::Uncached, A::WriteCombining, A::WriteThrough, A::Writeback]
        .iter()
        .position(|c| attributes.contains(*c))
        .unwrap() as u64
}

impl Codec for Toy {
    const PAGE_INVALIDATION_LIMIT: usize = 512;
    const USES_BARRIERS: bool = true;

    fn decode(raw: u64, level: u8) -> Entry {
        if raw & VALID == 0 {
            return Entry::Invalid;
        }
        if level > 0 && raw & TABLE_OR_PAGE != 0 {
            return Entry::Table(raw & ADDRESS);
        }
        let cache =
            [A::Uncached, A::WriteCombining, A::WriteThrough, A::Writeback][((raw >> CACHE_SHIFT) & 7) as usize];
        let mut attributes = cache;
        attributes.set(A::ReadOnly, raw & READ_ONLY != 0);
        attributes.set(A::ExecuteProtect, raw & NO_EXEC != 0);
        Entry::Leaf {
            pa: raw & ADDRESS,
            attributes,
        }
    }

    fn encode_leaf(pa: u64, attributes: A, level: u8) -> u64 {
        let mut raw = pa | VALID | cache_index(attributes) << CACHE_SHIFT;
        if level == 0 {
            raw |= TABLE_OR_PAGE;
        }
        if attributes.contains(A::ReadOnly) {
            raw |= READ_ONLY;
        }
        if attributes.contains(A::ExecuteProtect) {
            raw |= NO_EXEC;
        }
        raw
    }

    fn encode_table(pa: u64, _level: u8) -> u64 {
        pa | VALID | TABLE_OR_PAGE
    }

    fn is_live(raw: u64) -> bool {
        raw & VALID != 0
    }

    fn check_map_attributes(_: A) -> Result<(), PtError> {
        Ok(())
    }

    fn check_protect_attributes(_: A) -> Result<(), PtError> {
        Ok(())
    }

    fn invalidation_pages(_old: u64, level: u8) -> u64 {
        Geometry::entry_size(level) / 4096
    }

    fn needs_break(old: u64, new: u64, _level: u8) -> bool {
        let kept = ADDRESS | VALID | TABLE_OR_PAGE | 7 << CACHE_SHIFT;
        old & kept != new & kept
    }
}

#[repr(C, align(4096))]
struct Page([u64; 512]);

#[derive(Default)]
struct Pages(Vec<Box<Page>>);

impl PageAllocator for Pages {
    fn allocate_page(&mut self, _: u64, _: u64) -> Result<u64, PtError> {
        let page = Box::new(Page([0xDEAD; 512]));
        let address = &*page as *const Page as u64;
        self.0.push(page);
        Ok(address)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Page(u64),
    All,
    Barrier(Barrier),
}

#[derive(Default)]
struct Recorder(RefCell<Vec<Op>>);

impl Tlb for Recorder {
    fn invalidate_page(&self, va: u64) {
        self.0.borrow_mut().push(Op::Page(va));
    }
    fn invalidate_all(&self) {
        self.0.borrow_mut().push(Op::All);
    }
    fn barrier(&self, barrier: Barrier) {
        self.0.borrow_mut().push(Op::Barrier(barrier));
    }
}

type Table = Tables<Toy, Pages, Recorder>;

const GEOMETRY: Geometry = Geometry {
    levels: 4,
    max_leaf_level: 2,
    sign_extended: false,
    pa_bits: 48,
};
const BLOCK: u64 = 0x4020_0000;
const WB: A = A::Writeback;

/// A live table with one 2 MiB block at `BLOCK`, and the recorder cleared.
fn live_table_with_block() -> Table {
    let mut table = Table::new(Pages::default(), GEOMETRY, Recorder::default()).unwrap();
    table.transaction().map(BLOCK, 0x20_0000, WB).commit().unwrap();
    table.set_live(true);
    table.tlb().0.borrow_mut().clear();
    table
}

fn log(table: &Table) -> Vec<Op> {
    table.tlb().0.borrow_mut().drain(..).collect()
}

fn pages(start: u64, count: u64) -> impl Iterator<Item = Op> {
    (0..count).map(move |i| Op::Page(start + i * 4096))
}

use Barrier::{Instructions, Invalidations, Stores};

#[test]
fn live_split_breaks_the_block_invalidates_it_then_links_the_complete_table() {
    let mut table = live_table_with_block();
    let report = table
        .transaction()
        .protect(BLOCK + 0x1000, 0x1000, WB | A::ReadOnly)
        .commit()
        .unwrap();
    // Break: the block is stored invalid, then made visible, then invalidated page by page
    // (512 pages is the limit, not above it); make: the complete table is linked; its
    // changed page was written before the link, so nothing is left to invalidate.
    let mut expected = vec![Op::Barrier(Stores)];
    expected.extend(pages(BLOCK, 512));
    expected.extend([Invalidations, Stores, Invalidations, Instructions].map(Op::Barrier));
    assert_eq!(log(&table), expected);
    assert_eq!((report.breaks, report.invalidation_batches), (1, 1));
    assert_eq!(table.query(BLOCK + 0x1000, 0x1000), Ok(WB | A::ReadOnly));
    assert_eq!(table.query(BLOCK, 0x1000), Ok(WB));
}

#[test]
fn live_memory_type_change_is_broken_then_made() {
    let mut table = live_table_with_block();
    table
        .transaction()
        .protect(BLOCK + 0x1000, 0x1000, WB | A::ReadOnly)
        .commit()
        .unwrap();
    log(&table);
    let page = BLOCK + 0x1000;
    let report = table
        .transaction()
        .protect(page, 0x1000, A::Uncached | A::ReadOnly)
        .commit()
        .unwrap();
    let expected = vec![
        Op::Barrier(Stores),
        Op::Page(page),
        Op::Barrier(Invalidations),
        Op::Barrier(Stores),
        Op::Barrier(Invalidations),
        Op::Barrier(Instructions),
    ];
    assert_eq!(log(&table), expected);
    assert_eq!((report.breaks, report.invalidation_batches), (1, 1));
}

#[test]
fn live_permission_change_is_made_in_place() {
    let mut table = live_table_with_block();
    table
        .transaction()
        .protect(BLOCK + 0x1000, 0x1000, WB | A::ReadOnly)
        .commit()
        .unwrap();
    log(&table);
    let page = BLOCK + 0x1000;
    let report = table
        .transaction()
        .protect(page, 0x1000, WB | A::ExecuteProtect)
        .commit()
        .unwrap();
    let expected = vec![
        Op::Barrier(Stores),
        Op::Page(page),
        Op::Barrier(Invalidations),
        Op::Barrier(Instructions),
    ];
    assert_eq!(log(&table), expected);
    assert_eq!((report.breaks, report.invalidation_batches), (0, 1));
}

#[test]
fn live_merge_breaks_the_table_pointer_and_invalidates_its_whole_range() {
    let mut table = live_table_with_block();
    table
        .transaction()
        .protect(BLOCK + 0x1000, 0x1000, WB | A::ReadOnly)
        .commit()
        .unwrap();
    log(&table);
    let report = table
        .transaction()
        .protect(BLOCK + 0x1000, 0x1000, WB)
        .commit()
        .unwrap();
    let entries = log(&table);
    // The page changes in place, then the table pointer is broken for the block.
    assert_eq!(report.breaks, 1);
    assert!(
        pages(BLOCK, 512).all(|op| entries.contains(&op)),
        "the whole 2 MiB is invalidated"
    );
    assert_eq!(
        entries
            .iter()
            .filter(|op| matches!(op, Op::Barrier(Instructions)))
            .count(),
        1
    );
    assert_eq!(table.table_pages(), 3, "merged back into one block");
}

#[test]
fn a_break_over_a_pinned_range_fails_before_any_store() {
    let mut table = live_table_with_block();
    table.pin_range(BLOCK + 0x10_0000, 0x1000).unwrap();
    let before = table.read_entry(table.root(), 1);
    let result = table
        .transaction()
        .protect(BLOCK + 0x1000, 0x1000, WB | A::ReadOnly)
        .commit();
    assert_eq!(
        result,
        Err(TxnError::whole(PtError::PinnedRangeBreak).with_detail(Reason::PinnedRangeBreak, BLOCK + 0x10_0000))
    );
    assert_eq!(table.read_entry(table.root(), 1), before);
    assert_eq!(table.query(BLOCK, 0x20_0000), Ok(WB), "the block is untouched");
    assert!(log(&table).is_empty());
}

#[test]
fn a_permission_change_inside_a_pinned_range_is_allowed() {
    let mut table = live_table_with_block();
    table
        .transaction()
        .protect(BLOCK + 0x1000, 0x1000, WB | A::ReadOnly)
        .commit()
        .unwrap();
    table.pin_range(BLOCK, 0x20_0000).unwrap();
    let report = table
        .transaction()
        .protect(BLOCK + 0x1000, 0x1000, WB | A::ExecuteProtect)
        .commit()
        .unwrap();
    assert_eq!(report.breaks, 0);
}

#[test]
fn a_table_nobody_walks_is_changed_without_breaks() {
    let mut table = live_table_with_block();
    table.set_live(false);
    let report = table
        .transaction()
        .protect(BLOCK + 0x1000, 0x1000, A::Uncached)
        .commit()
        .unwrap();
    assert_eq!(report.breaks, 0);
    assert!(log(&table).iter().all(|op| !matches!(op, Op::Barrier(_))));
}

#[test]
fn plan_predicts_the_breaks() {
    let mut table = live_table_with_block();
    let mut txn = table.transaction();
    txn.protect(BLOCK + 0x1000, 0x1000, WB | A::ReadOnly);
    let plan = txn.plan().unwrap();
    let report = txn.commit().unwrap();
    assert_eq!(plan.breaks, report.breaks);
    assert_eq!(plan.pages_to_invalidate.len(), report.pages_invalidated);
}
