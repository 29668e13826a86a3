//! `SharedTable`: host threads hammering one table (critical-section's `std` implementation),
//! the shootdown hook's place in a commit, and the handle's reads.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};

use txpaging::{
    Aarch64Config, Aarch64PageTable, FlushBatch, MappedRegion, MemoryAttributes as MA, Op, PageAllocator, PagePool,
    PageTable, PagingType, PtError, Reason, RecordingMmu, SharedTable, TxnError, X64Config, X64PageTable,
};

type Table = X64PageTable<PagePool, RecordingMmu>;

const KIB4: u64 = 0x1000;
const MIB2: u64 = 0x20_0000;
/// Every thread works here: overlapping transactions.
const COMMON: u64 = 0x4000_0000;
const COMMON_SIZE: u64 = 8 << 20;
/// Thread `t` alone works at `PRIVATE + t * PRIVATE_STRIDE`: disjoint transactions.
const PRIVATE: u64 = 0x8000_0000;
const PRIVATE_STRIDE: u64 = 16 << 20;
const PRIVATE_SIZE: u64 = 4 << 20;

const MAP_ATTRS: [MA; 5] = [
    MA::Writeback,
    MA::Writeback.union(MA::ExecuteProtect),
    MA::Uncached.union(MA::ExecuteProtect),
    MA::Writeback.union(MA::ReadOnly),
    MA::WriteCombining.union(MA::ExecuteProtect),
];
const PROTECT_ATTRS: [MA; 3] = [MA::ReadOnly, MA::ExecuteProtect, MA::ReadOnly.union(MA::ExecuteProtect)];

/// An installed table (a table never installed needs no invalidation, hence no shootdown).
fn table(pages: usize) -> Table {
    let t = X64PageTable::with_mmu(
        PagePool::new(pages),
        PagingType::Paging4Level,
        X64Config { one_gib_pages: true },
        RecordingMmu::new(),
    )
    .unwrap();
    t.install_page_table().unwrap();
    t.mmu().take_log();
    t
}

/// xorshift64*: small, seeded, deterministic.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// A random page-aligned range inside `[base, base + size)`: 4 KiB runs or whole 2 MiB pages.
fn range(rng: &mut Rng, base: u64, size: u64) -> (u64, u64) {
    if rng.below(4) == 0 {
        let index = rng.below(size / MIB2);
        (base + index * MIB2, MIB2)
    } else {
        let pages = size / KIB4;
        let start = rng.below(pages);
        let count = 1 + rng.below(64.min(pages - start));
        (base + start * KIB4, count * KIB4)
    }
}

fn random_op(rng: &mut Rng, base: u64, size: u64) -> Op {
    let (va, size) = range(rng, base, size);
    match rng.below(5) {
        0 | 1 => Op::Map {
            va,
            pa: va,
            size,
            attributes: MAP_ATTRS[rng.below(MAP_ATTRS.len() as u64) as usize],
        },
        2 => Op::Unmap { va, size },
        _ => Op::Protect {
            va,
            size,
            attributes: PROTECT_ATTRS[rng.below(PROTECT_ATTRS.len() as u64) as usize],
        },
    }
}

fn regions_in<A: PageAllocator>(table: &X64PageTable<A, RecordingMmu>, base: u64, size: u64) -> Vec<MappedRegion> {
    table
        .regions()
        .filter(|region| region.va >= base && region.va < base + size)
        .collect()
}

static HAMMER_SHOOTDOWNS: AtomicUsize = AtomicUsize::new(0);

fn counting_hook(_: &FlushBatch) {
    HAMMER_SHOOTDOWNS.fetch_add(1, Ordering::Relaxed);
    // Widen the window in which other threads commit before this commit's pages go back.
    std::thread::yield_now();
}

#[test]
fn threads_hammering_one_table_equal_the_serial_replay() {
    const THREADS: u64 = 4;
    const TXNS: usize = 400;
    let shared = SharedTable::with_shootdown(table(1024), counting_hook as fn(&FlushBatch));
    shared
        .commit([Op::Map {
            va: COMMON,
            pa: COMMON,
            size: COMMON_SIZE,
            attributes: MA::Writeback,
        }])
        .unwrap();
    let committed: Mutex<Vec<(u64, u64, Vec<Op>)>> = Mutex::new(vec![(1, THREADS, vec![])]);
    let failures = AtomicUsize::new(0);
    let shootdowns_reported = AtomicUsize::new(0);

    std::thread::scope(|scope| {
        for thread in 0..THREADS {
            let (shared, committed, failures, shootdowns_reported) =
                (&shared, &committed, &failures, &shootdowns_reported);
            scope.spawn(move || {
                let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ (thread + 1).wrapping_mul(0xD1B5_4A32_D192_ED03));
                let private = PRIVATE + thread * PRIVATE_STRIDE;
                // What this thread's private window must hold: only this thread changes it.
                let mut replica = table(256);
                for _ in 0..TXNS {
                    let mut ops = Vec::new();
                    for _ in 0..1 + rng.below(4) {
                        ops.push(if rng.below(2) == 0 {
                            random_op(&mut rng, COMMON, COMMON_SIZE)
                        } else {
                            random_op(&mut rng, private, PRIVATE_SIZE)
                        });
                    }
                    match shared.commit(ops.iter().copied()) {
                        Ok(report) => {
                            shootdowns_reported.fetch_add(usize::from(report.shootdown_ran), Ordering::Relaxed);
                            assert_eq!(report.shootdown_ran, report.report.invalidation_batches > 0);
                            // Fully applied: the private ops hold in the shared table now.
                            let private_ops = ops.iter().copied().filter(|op| op_va(op) >= PRIVATE);
                            replica.transaction().extend(private_ops).commit().unwrap();
                            committed.lock().unwrap().push((report.sequence, thread, ops));
                        }
                        Err(error) => {
                            assert!(error.op.is_some(), "{error}");
                            failures.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    // Fully applied or fully absent: the private window matches the replica.
                    let here = shared.with_table(|t| regions_in(t, private, PRIVATE_STRIDE)).unwrap();
                    assert_eq!(here, regions_in(&replica, private, PRIVATE_STRIDE));
                }
            });
        }
    });

    let mut committed = committed.into_inner().unwrap();
    committed.sort_by_key(|(sequence, _, _)| *sequence);
    let sequences: Vec<u64> = committed.iter().map(|(sequence, _, _)| *sequence).collect();
    assert_eq!(sequences, (1..=committed.len() as u64).collect::<Vec<_>>());
    assert_eq!(shared.commits().unwrap(), committed.len() as u64);
    let failed = failures.load(Ordering::Relaxed);
    assert!(
        failed > 0 && committed.len() > 100,
        "{failed} failed, {} committed",
        committed.len()
    );
    assert_eq!(
        HAMMER_SHOOTDOWNS.load(Ordering::Relaxed),
        shootdowns_reported.load(Ordering::Relaxed)
    );

    // The serial replay in commit order gives the same table.
    let mut serial = table(1024);
    serial
        .transaction()
        .map(COMMON, COMMON_SIZE, MA::Writeback)
        .commit()
        .unwrap();
    for (sequence, thread, ops) in &committed[1..] {
        let result = serial.transaction().extend(ops.iter().copied()).commit();
        assert!(
            result.is_ok(),
            "commit {sequence} (thread {thread}) failed in the replay: {result:?}"
        );
    }
    let table = shared.into_inner();
    assert_eq!(
        table.regions().collect::<Vec<_>>(),
        serial.regions().collect::<Vec<_>>()
    );
    assert_eq!(table.table_pages(), serial.table_pages());
    // Every retired page went back after its shootdown: nothing leaked.
    assert_eq!(table.allocator().live_pages(), table.table_pages());
}

fn op_va(op: &Op) -> u64 {
    match *op {
        Op::Map { va, .. } | Op::Unmap { va, .. } | Op::Protect { va, .. } => va,
    }
}

/// Counts frees; the hook reads the count to see whether pages went back before it ran.
struct CountingPool {
    pool: PagePool,
    frees: &'static AtomicUsize,
}

impl PageAllocator for CountingPool {
    fn allocate_page(&mut self, align: u64, size: u64) -> Result<u64, PtError> {
        self.pool.allocate_page(align, size)
    }
    fn free_page(&mut self, address: u64, size: u64) {
        self.frees.fetch_add(1, Ordering::SeqCst);
        self.pool.free_page(address, size)
    }
    fn physical_to_pointer(&self, address: u64) -> *mut u8 {
        self.pool.physical_to_pointer(address)
    }
}

type CountingTable = X64PageTable<CountingPool, RecordingMmu>;

fn counting_table(frees: &'static AtomicUsize) -> CountingTable {
    let t = X64PageTable::with_mmu(
        CountingPool {
            pool: PagePool::new(64),
            frees,
        },
        PagingType::Paging4Level,
        X64Config { one_gib_pages: true },
        RecordingMmu::new(),
    )
    .unwrap();
    t.install_page_table().unwrap();
    t.mmu().take_log();
    t
}

static ORDER_FREES: AtomicUsize = AtomicUsize::new(0);
static ORDER_TABLE: OnceLock<SharedTable<CountingTable>> = OnceLock::new();
/// What the hook saw: frees so far, a query of the table from inside the hook, full flush?, pages.
type Seen = (usize, Result<MA, PtError>, bool, usize);
static ORDER_SEEN: Mutex<Vec<Seen>> = Mutex::new(Vec::new());

fn order_hook(batch: &FlushBatch) {
    let query = ORDER_TABLE.get().unwrap().query(0, KIB4);
    ORDER_SEEN.lock().unwrap().push((
        ORDER_FREES.load(Ordering::SeqCst),
        query,
        batch.is_full(),
        batch.page_count(),
    ));
}

#[test]
fn shootdown_runs_once_outside_the_section_before_pages_go_back() {
    let shared = ORDER_TABLE
        .get_or_init(|| SharedTable::with_shootdown(counting_table(&ORDER_FREES), order_hook as fn(&FlushBatch)));
    assert!(shared.shoots_down());

    // Invalid -> valid: nothing to invalidate anywhere, no shootdown.
    let report = shared.commit([Op::Map {
        va: 0,
        pa: 0,
        size: 2 * MIB2,
        attributes: MA::Writeback,
    }]);
    assert!(!report.unwrap().shootdown_ran);
    assert!(ORDER_SEEN.lock().unwrap().is_empty());

    // A split changes a live 2 MiB entry: one shootdown, nothing retired.
    let report = shared
        .commit([Op::Protect {
            va: 0,
            size: KIB4,
            attributes: MA::ReadOnly,
        }])
        .unwrap();
    assert!(report.shootdown_ran);
    assert_eq!(report.report.tables_allocated, 1);
    assert_eq!(ORDER_SEEN.lock().unwrap().len(), 1);

    // Unmapping everything retires the PT, PD and PDPT: they go back after the hook.
    let before = ORDER_FREES.load(Ordering::SeqCst);
    let report = shared.commit([Op::Unmap { va: 0, size: 2 * MIB2 }]).unwrap();
    assert!(report.shootdown_ran);
    assert_eq!(report.report.tables_freed, 3);
    let seen = ORDER_SEEN.lock().unwrap().clone();
    assert_eq!(seen.len(), 2, "one hook call per commit");
    let (frees_at_hook, query_in_hook, full, pages) = seen[1];
    assert_eq!(frees_at_hook, before, "pages went back before the shootdown");
    assert_eq!(ORDER_FREES.load(Ordering::SeqCst), before + 3);
    // The hook ran outside the section: the table answered (already unmapped), no refusal.
    assert_eq!(query_in_hook, Err(PtError::NoMapping));
    assert!(full || pages > 0, "the hook got the batch");
    assert_eq!(
        shared.with_table(|t| (t.table_pages(), t.allocator().pool.live_pages())),
        Ok((1, 1))
    );
}

static FULL_SEEN: Mutex<Vec<(bool, usize)>> = Mutex::new(Vec::new());

#[test]
fn the_hook_gets_the_batch_pages_or_a_full_flush() {
    let hook = |batch: &FlushBatch| FULL_SEEN.lock().unwrap().push((batch.is_full(), batch.page_count()));
    let shared = SharedTable::with_shootdown(table(64), hook);
    shared
        .commit([Op::Map {
            va: 0,
            pa: 0,
            size: MIB2,
            attributes: MA::Writeback,
        }])
        .unwrap();
    // 3 single pages: invalidated one by one.
    let small: Vec<Op> = (0..3)
        .map(|i| Op::Protect {
            va: i * 2 * KIB4,
            size: KIB4,
            attributes: MA::ReadOnly,
        })
        .collect();
    assert!(shared.commit(small).unwrap().shootdown_ran);
    // 40 separate pages: more than 33, one full flush.
    let many: Vec<Op> = (0..40)
        .map(|i| Op::Protect {
            va: i * 2 * KIB4,
            size: KIB4,
            attributes: MA::ExecuteProtect,
        })
        .collect();
    let report = shared.commit(many).unwrap();
    assert!(report.shootdown_ran);
    assert_eq!(report.report.full_flushes, 1);
    assert_eq!(*FULL_SEEN.lock().unwrap(), vec![(false, 3), (true, 0)]);
}

#[test]
fn without_a_hook_freed_pages_go_back_in_the_commit() {
    let shared = SharedTable::new(table(64));
    assert!(!shared.shoots_down());
    let map = Op::Map {
        va: 0,
        pa: 0,
        size: MIB2,
        attributes: MA::Writeback,
    };
    shared.commit([map]).unwrap();
    let split = Op::Protect {
        va: 0,
        size: KIB4,
        attributes: MA::ReadOnly,
    };
    let report = shared.commit([split]).unwrap();
    assert!(!report.shootdown_ran);
    let report = shared.commit([Op::Unmap { va: 0, size: MIB2 }]).unwrap();
    assert_eq!(
        (report.report.tables_freed, report.shootdown_ran, report.sequence),
        (3, false, 3)
    );
    assert_eq!(shared.with_table(|t| t.allocator().live_pages()), Ok(1));
}

#[test]
fn aarch64_needs_no_shootdown() {
    let calls = AtomicUsize::new(0);
    let table = Aarch64PageTable::with_mmu(
        PagePool::new(64),
        PagingType::Paging4Level,
        Aarch64Config::default(),
        RecordingMmu::new(),
    )
    .unwrap();
    // Installed, so its commits invalidate (a table being built needs no TLBI at all).
    table.set_live(true);
    let shared = SharedTable::with_shootdown(table, |_: &FlushBatch| {
        calls.fetch_add(1, Ordering::Relaxed);
    });
    assert!(!shared.shoots_down());
    let map = Op::Map {
        va: 0,
        pa: 0,
        size: MIB2,
        attributes: MA::Writeback,
    };
    shared.commit([map]).unwrap();
    let report = shared.commit([Op::Unmap { va: 0, size: MIB2 }]).unwrap();
    assert!(!report.shootdown_ran && report.report.invalidation_batches == 1);
    assert_eq!(calls.load(Ordering::Relaxed), 0);
    assert_eq!(shared.with_table(|t| t.allocator().live_pages()), Ok(1));
}

#[test]
fn plan_query_and_dump_through_the_handle() {
    let shared = SharedTable::new(table(64));
    let ops = [
        Op::Map {
            va: 0,
            pa: 0,
            size: 4 * MIB2,
            attributes: MA::Writeback,
        },
        Op::Protect {
            va: MIB2,
            size: KIB4,
            attributes: MA::ReadOnly,
        },
    ];
    let plan = shared.plan(ops).unwrap();
    assert_eq!(plan.tables_to_allocate, 3);
    assert_eq!(shared.query(0, KIB4), Err(PtError::NoMapping), "a plan changes nothing");
    assert_eq!(shared.commit(ops).unwrap().report.tables_allocated, 3);
    assert_eq!(shared.query(MIB2, KIB4), Ok(MA::Writeback | MA::ReadOnly));
    assert_eq!(shared.query(MIB2, MIB2), Err(PtError::NonUniformMemoryAttributes));
    let bad = shared.plan([Op::Unmap {
        va: 0x1000_0000,
        size: KIB4,
    }]);
    assert_eq!(
        bad.unwrap_err(),
        TxnError::at(0, PtError::NoMapping)
            .with_range(0x1000_0000, KIB4)
            .with_detail(Reason::NotMapped, 0x1000_0000)
    );
    let mut dump = String::new();
    shared.dump_to(&mut dump, MIB2, KIB4).unwrap();
    assert!(dump.contains("PT") && dump.lines().count() > 4, "{dump}");
    let regions = shared.with_table(|t| t.regions().count()).unwrap();
    assert_eq!(regions, 3);
}
