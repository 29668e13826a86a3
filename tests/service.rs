//! The async batched mapping service: many producers, batch sizes 1..N, bad requests mixed
//! in, back-pressure, allocation fallback, cancellation.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::Context;

use embassy_futures::select::{select, Either};
use embassy_sync::blocking_mutex::raw::CriticalSectionRawMutex;
use embassy_sync::signal::Signal;
use futures::executor::block_on;
use futures::future::join_all;
use txpaging::service::{MappingService, RequestReport};
use txpaging::{
    FlushBatch, MemoryAttributes as MA, Op, PageAllocator, PagePool, PagingType, PtError, Reason, RecordingMmu,
    SharedTable, TransactionalTable, TxnError, X64Config, X64PageTable,
};

type Table = X64PageTable<PagePool, RecordingMmu>;

const KIB4: u64 = 0x1000;
const MIB2: u64 = 0x20_0000;
/// Mapped before the service starts; every producer maps and protects here (overlapping).
const COMMON: u64 = 0x4000_0000;
const COMMON_SIZE: u64 = 8 << 20;
/// Producer `p` alone maps and unmaps at `PRIVATE + p * 4 MiB`.
const PRIVATE: u64 = 0x8000_0000;
const PRIVATE_SIZE: u64 = 4 << 20;
/// Never mapped: unmap and protect here fail with `NoMapping` whatever the order.
const HOLE: u64 = 0x7000_0000;

const ATTRS: [MA; 4] = [
    MA::Writeback,
    MA::Writeback.union(MA::ExecuteProtect),
    MA::Uncached.union(MA::ExecuteProtect),
    MA::Writeback.union(MA::ReadOnly),
];

fn table(pages: usize) -> Table {
    X64PageTable::with_mmu(
        PagePool::new(pages),
        PagingType::Paging4Level,
        X64Config { one_gib_pages: true },
        RecordingMmu::new(),
    )
    .unwrap()
}

fn base_ops() -> [Op; 1] {
    [Op::Map {
        va: COMMON,
        pa: COMMON,
        size: COMMON_SIZE,
        attributes: MA::Writeback,
    }]
}

struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
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

fn pages_in(rng: &mut Rng, base: u64, size: u64) -> (u64, u64) {
    let pages = size / KIB4;
    let start = rng.below(pages);
    let count = 1 + rng.below(48.min(pages - start));
    (base + start * KIB4, count * KIB4)
}

/// A request that is valid whatever the table holds (COMMON stays mapped; a private range is
/// unmapped only after the same request mapped it), or the same with one bad op at a random
/// index: returns the ops and the error the request must get.
fn request(rng: &mut Rng, producer: u64, bad: bool, max_ops: usize) -> (Vec<Op>, Option<TxnError>) {
    let private = PRIVATE + producer * PRIVATE_SIZE;
    let good_ops = if bad { max_ops - 1 } else { max_ops };
    let target = 1 + rng.below(good_ops as u64) as usize;
    let mut ops = Vec::new();
    while ops.len() < target {
        let attributes = ATTRS[rng.below(ATTRS.len() as u64) as usize];
        match rng.below(4) {
            0 => {
                let (va, size) = pages_in(rng, COMMON, COMMON_SIZE);
                ops.push(Op::Map {
                    va,
                    pa: va,
                    size,
                    attributes,
                });
            }
            1 => {
                let (va, size) = pages_in(rng, COMMON, COMMON_SIZE);
                let attributes = [MA::ReadOnly, MA::ExecuteProtect][rng.below(2) as usize];
                ops.push(Op::Protect { va, size, attributes });
            }
            _ if ops.len() + 2 <= good_ops => {
                let (va, size) = pages_in(rng, private, PRIVATE_SIZE);
                ops.push(Op::Map {
                    va,
                    pa: va,
                    size,
                    attributes,
                });
                if rng.below(2) == 0 {
                    ops.push(Op::Unmap { va, size: KIB4 });
                }
            }
            _ => {}
        }
    }
    if !bad {
        return (ops, None);
    }
    let at = rng.below(ops.len() as u64 + 1) as usize;
    let (op, error) = match rng.below(5) {
        0 => (
            Op::Map {
                va: COMMON + 0x800,
                pa: COMMON + 0x800,
                size: KIB4,
                attributes: MA::Writeback,
            },
            PtError::UnalignedAddress,
        ),
        1 => (
            Op::Map {
                va: COMMON,
                pa: COMMON,
                size: KIB4,
                attributes: MA::Writeback | MA::Uncached,
            },
            PtError::IncompatibleMemoryAttributes,
        ),
        2 => (Op::Unmap { va: HOLE, size: MIB2 }, PtError::NoMapping),
        3 => (
            Op::Protect {
                va: HOLE + KIB4,
                size: KIB4,
                attributes: MA::ReadOnly,
            },
            PtError::NoMapping,
        ),
        _ => (Op::Unmap { va: COMMON, size: 0 }, PtError::InvalidMemoryRange),
    };
    ops.insert(at, op);
    (ops, Some(TxnError::at(at, error)))
}

/// Everything a producer submitted and got back.
type Outcomes = Vec<(Vec<Op>, Option<TxnError>, Result<RequestReport, TxnError>)>;

/// Checks the outcomes against each other, the shootdown count and a one-by-one replay.
fn check<const S: usize, const M: usize, H: Fn(&FlushBatch)>(
    service: &MappingService<S, M>,
    shared: SharedTable<Table, H>,
    outcomes: &[Outcomes],
    shootdowns: usize,
) -> (usize, usize) {
    let mut commits: BTreeMap<u64, (RequestReport, usize)> = BTreeMap::new();
    let mut applied = Vec::new();
    let mut failed = 0;
    for (ops, expected, outcome) in outcomes.iter().flatten() {
        match (expected, outcome) {
            (None, Ok(report)) => {
                let entry = commits.entry(report.commit.sequence).or_insert((*report, 0));
                entry.1 += 1;
                // Requests of one commit share its report, batch and size.
                assert_eq!(
                    (entry.0.commit, entry.0.batch, entry.0.requests_in_commit),
                    (report.commit, report.batch, report.requests_in_commit)
                );
                applied.push((report.sequence, ops));
            }
            (Some(expected), Err(error)) => {
                assert_eq!(error.code(), expected.code(), "wrong error for {ops:?}");
                let op = ops[expected.op.unwrap()];
                assert_eq!(error.range, Some((op.va(), op.size())), "range of {error}");
                failed += 1;
            }
            _ => panic!("expected {expected:?}, got {outcome:?} for {ops:?}"),
        }
    }
    let stats = service.stats();
    let requests: usize = outcomes.iter().map(Vec::len).sum();
    assert_eq!(stats.requests, requests as u64);
    assert_eq!(stats.failed, failed as u64);
    assert_eq!(stats.commits, commits.len() as u64);
    assert_eq!(stats.fallbacks, 0);
    let mut ran = 0;
    for (report, count) in commits.values() {
        assert_eq!(report.requests_in_commit, *count);
        assert!(*count <= service.batch_size());
        // One invalidation batch per commit, one shootdown per batch that invalidated.
        assert!(report.commit.report.invalidation_batches <= 1);
        assert_eq!(
            report.commit.shootdown_ran,
            report.commit.report.invalidation_batches == 1
        );
        ran += usize::from(report.commit.shootdown_ran);
    }
    assert_eq!(shootdowns, ran);
    // Queue order: replaying the successful requests one by one, in that order, gives the table.
    applied.sort_by_key(|(sequence, _)| *sequence);
    let sequences: Vec<u64> = applied.iter().map(|(sequence, _)| *sequence).collect();
    assert!(sequences.windows(2).all(|pair| pair[0] < pair[1]), "sequences repeat");
    let mut serial = table(512);
    serial.transaction().extend(base_ops()).commit().unwrap();
    for (sequence, ops) in &applied {
        let result = serial.transaction().extend(ops.iter().copied()).commit();
        assert!(result.is_ok(), "request {sequence} fails alone: {result:?}");
    }
    let table = shared.into_inner();
    assert_eq!(
        table.regions().collect::<Vec<_>>(),
        serial.regions().collect::<Vec<_>>()
    );
    assert_eq!(table.table_pages(), serial.table_pages());
    assert_eq!(table.allocator().live_pages(), table.table_pages());
    (commits.len(), applied.len())
}

fn shared_table(shootdowns: &AtomicUsize) -> SharedTable<Table, impl Fn(&FlushBatch) + '_> {
    let shared = SharedTable::with_shootdown(table(512), move |_: &FlushBatch| {
        shootdowns.fetch_add(1, Ordering::Relaxed);
    });
    shared.commit(base_ops()).unwrap();
    shootdowns.store(0, Ordering::Relaxed);
    shared
}

async fn producer<const S: usize, const M: usize>(service: &MappingService<S, M>, seed: u64, id: u64) -> Outcomes {
    let mut rng = Rng::new(seed * 1000 + id);
    let mut outcomes = Vec::new();
    for _ in 0..6 {
        let bad = rng.below(4) == 0;
        let (ops, expected) = request(&mut rng, id, bad, M);
        let outcome = service.submit(&ops).await;
        outcomes.push((ops, expected, outcome));
    }
    outcomes
}

/// Runs `work` next to the service's runner on one thread; returns `work`'s output.
fn with_runner<T, H: Fn(&FlushBatch), const S: usize, const M: usize, R>(
    service: &MappingService<S, M>,
    shared: &SharedTable<T, H>,
    work: impl Future<Output = R>,
) -> R
where
    T: TransactionalTable,
{
    match block_on(select(service.run(shared), work)) {
        Either::First(never) => never,
        Either::Second(output) => output,
    }
}

#[test]
fn producers_get_exactly_their_own_results_for_every_batch_size() {
    const PRODUCERS: u64 = 12;
    for batch_size in 1..=8 {
        let service: MappingService<8, 5> = MappingService::new(batch_size);
        let shootdowns = AtomicUsize::new(0);
        let shared = shared_table(&shootdowns);
        let producers = (0..PRODUCERS).map(|id| producer(&service, batch_size as u64, id));
        let outcomes = with_runner(&service, &shared, join_all(producers));
        let (commits, applied) = check(&service, shared, &outcomes, shootdowns.load(Ordering::Relaxed));
        if batch_size == 1 {
            assert_eq!(commits, applied);
        } else {
            assert!(
                commits < applied,
                "batch size {batch_size}: {commits} commits for {applied} requests"
            );
        }
    }
}

#[test]
fn producers_on_threads_share_one_runner() {
    const THREADS: u64 = 4;
    let service: MappingService<4, 5> = MappingService::new(4);
    let shootdowns = AtomicUsize::new(0);
    let shared = shared_table(&shootdowns);
    let stop: Signal<CriticalSectionRawMutex, ()> = Signal::new();
    let outcomes = std::thread::scope(|scope| {
        let runner = scope.spawn(|| match block_on(select(service.run(&shared), stop.wait())) {
            Either::First(never) => never,
            Either::Second(()) => (),
        });
        let producers: Vec<_> = (0..THREADS)
            .map(|id| {
                let service = &service;
                scope.spawn(move || {
                    let mut outcomes = Vec::new();
                    for round in 0..10 {
                        outcomes.extend(block_on(producer(service, 100 + round, id)));
                    }
                    outcomes
                })
            })
            .collect();
        let outcomes: Vec<Outcomes> = producers.into_iter().map(|p| p.join().unwrap()).collect();
        stop.signal(());
        runner.join().unwrap();
        outcomes
    });
    check(&service, shared, &outcomes, shootdowns.load(Ordering::Relaxed));
}

fn map(va: u64, size: u64) -> Op {
    Op::Map {
        va,
        pa: va,
        size,
        attributes: MA::Writeback,
    }
}

#[test]
fn a_full_queue_makes_submit_wait_and_loses_nothing() {
    let service: MappingService<4, 2> = MappingService::new(4);
    let shared = SharedTable::new(table(64));
    let requests: Vec<[Op; 1]> = (0..10).map(|i| [map(i * MIB2, KIB4)]).collect();
    let mut submits = pin!(join_all(requests.iter().map(|ops| service.submit(ops))));
    // No runner yet: four requests fill the slots, the other six wait.
    let waker = futures::task::noop_waker();
    assert!(submits.as_mut().poll(&mut Context::from_waker(&waker)).is_pending());
    assert_eq!(service.queued(), 4);
    assert_eq!(service.stats().requests, 0);
    let results = with_runner(&service, &shared, submits);
    assert_eq!(results.len(), 10);
    let mut sequences: Vec<u64> = results.iter().map(|r| r.as_ref().unwrap().sequence).collect();
    // The four that were queued first went first, as one batch.
    assert_eq!(
        results[..4].iter().map(|r| r.unwrap().batch).collect::<Vec<_>>(),
        [1; 4]
    );
    assert_eq!(results[0].unwrap().requests_in_commit, 4);
    sequences.sort_unstable();
    assert_eq!(sequences, (0..10).collect::<Vec<_>>());
    for i in 0..10 {
        assert_eq!(shared.query(i * MIB2, KIB4), Ok(MA::Writeback));
    }
    assert_eq!(service.stats().requests, 10);
    assert_eq!(service.queued(), 0);
}

/// Lets the table hold at most `cap` pages.
struct CappedPool {
    pool: PagePool,
    cap: usize,
}

impl PageAllocator for CappedPool {
    fn allocate_page(&mut self, align: u64, size: u64) -> Result<u64, PtError> {
        if self.pool.live_pages() >= self.cap {
            return Err(PtError::OutOfResources);
        }
        self.pool.allocate_page(align, size)
    }
    fn free_page(&mut self, address: u64, size: u64) {
        self.pool.free_page(address, size)
    }
    fn physical_to_pointer(&self, address: u64) -> *mut u8 {
        self.pool.physical_to_pointer(address)
    }
}

#[test]
fn an_allocation_failure_falls_back_to_one_request_at_a_time() {
    let mut table = X64PageTable::with_mmu(
        CappedPool {
            pool: PagePool::new(64),
            cap: 64,
        },
        PagingType::Paging4Level,
        X64Config { one_gib_pages: true },
        RecordingMmu::new(),
    )
    .unwrap();
    table.transaction().map(0, KIB4, MA::Writeback).commit().unwrap();
    // Root, PDPT, PD, PT; each request below needs a PD and a PT (its own GiB): 6 in all,
    // but only 5 more pages may exist.
    table.allocator_mut().cap = table.allocator().pool.live_pages() + 5;
    let shared = SharedTable::new(table);
    let service: MappingService<4, 2> = MappingService::new(4);
    let requests: Vec<[Op; 1]> = (1..=3).map(|gib| [map(gib << 30, KIB4)]).collect();
    let results = with_runner(
        &service,
        &shared,
        join_all(requests.iter().map(|ops| service.submit(ops))),
    );
    let ok: Vec<&RequestReport> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
    assert_eq!(ok.len(), 2);
    assert!(ok.iter().all(|r| r.requests_in_commit == 1 && r.batch == 1));
    assert_ne!(ok[0].commit.sequence, ok[1].commit.sequence);
    assert_eq!(
        results[2],
        Err(TxnError::whole(PtError::OutOfResources).with_reason(Reason::AllocatorFailed))
    );
    let stats = service.stats();
    assert_eq!(
        (stats.batches, stats.commits, stats.fallbacks, stats.failed),
        (1, 2, 1, 1)
    );
    assert_eq!(shared.query(1 << 30, KIB4), Ok(MA::Writeback));
    assert_eq!(shared.query(2 << 30, KIB4), Ok(MA::Writeback));
    assert_eq!(shared.query(3 << 30, KIB4), Err(PtError::NoMapping));
}

#[test]
fn a_dropped_submit_still_runs_and_gives_its_slot_back() {
    let service: MappingService<1, 1> = MappingService::new(1);
    let shared = SharedTable::new(table(64));
    let first = [map(0, KIB4)];
    {
        let mut submit = pin!(service.submit(&first));
        let waker = futures::task::noop_waker();
        assert!(submit.as_mut().poll(&mut Context::from_waker(&waker)).is_pending());
        assert_eq!(service.queued(), 1);
    } // dropped while queued
      // The only slot is taken until the runner answers the abandoned request.
    let second = [map(MIB2, KIB4)];
    let result = with_runner(&service, &shared, service.submit(&second)).unwrap();
    assert_eq!(result.sequence, 1);
    assert_eq!(shared.query(0, KIB4), Ok(MA::Writeback));
    assert_eq!(shared.query(MIB2, KIB4), Ok(MA::Writeback));
    // And the slot is free again.
    let third = [map(2 * MIB2, KIB4)];
    assert_eq!(
        with_runner(&service, &shared, service.submit(&third)).unwrap().sequence,
        2
    );
}

#[test]
fn an_oversized_request_is_refused_without_queueing() {
    let service: MappingService<2, 2> = MappingService::new(2);
    let ops = [map(0, KIB4), map(MIB2, KIB4), map(2 * MIB2, KIB4)];
    let result = block_on(service.submit(&ops));
    let error = result.unwrap_err();
    // Its own error, blaming the request as a whole (no op of it is at fault).
    assert_eq!(
        error,
        TxnError::whole(PtError::InvalidParameter).with_reason(Reason::TooManyOps { ops: 3, max: 2 })
    );
    assert_eq!(
        error.to_string(),
        "transaction failed: invalid parameter: 3 ops in one request; at most 2 are accepted"
    );
    assert_eq!(service.queued(), 0);
}

#[test]
fn a_batch_keeps_queue_order_where_requests_overlap() {
    let service: MappingService<8, 2> = MappingService::new(8);
    let shared = SharedTable::new(table(64));
    let ro = MA::Writeback | MA::ReadOnly;
    let requests = [
        vec![map(0, MIB2)],
        vec![Op::Protect {
            va: 0,
            size: KIB4,
            attributes: MA::ReadOnly,
        }],
        vec![Op::Unmap { va: KIB4, size: KIB4 }],
        vec![Op::Unmap { va: KIB4, size: KIB4 }], // fails: already unmapped by the one before
        vec![Op::Map {
            va: 2 * KIB4,
            pa: 2 * KIB4,
            size: KIB4,
            attributes: ro,
        }],
    ];
    let results = with_runner(
        &service,
        &shared,
        join_all(requests.iter().map(|ops| service.submit(ops))),
    );
    // Op 0 of its own request, with its range and the page found unmapped.
    assert_eq!(
        results[3],
        Err(TxnError::at(0, PtError::NoMapping)
            .with_range(KIB4, KIB4)
            .with_detail(Reason::NotMapped, KIB4))
    );
    for i in [0, 1, 2, 4] {
        let report = results[i].unwrap();
        assert_eq!((report.sequence, report.requests_in_commit), (i as u64, 4));
    }
    assert_eq!(shared.query(0, KIB4), Ok(ro));
    assert_eq!(shared.query(KIB4, KIB4), Err(PtError::NoMapping));
    assert_eq!(shared.query(2 * KIB4, KIB4), Ok(ro));
    assert_eq!(shared.query(3 * KIB4, KIB4), Ok(MA::Writeback));
    assert_eq!(service.stats().commits, 1);
}
