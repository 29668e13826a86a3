//! Runs the batched mapping service on the host: several producer tasks send small
//! memory-protection requests (each task all of its requests at once), one runner commits
//! them in batches through a shared table,
//! and each producer prints what it got back. Then the same successful requests are
//! replayed one at a time on an identical table to compare the TLB cost.
//!
//! The service is a `static` (its constructor is `const`), the executor is
//! `futures::executor::LocalPool` (any executor would do: the library has none of its own),
//! and the shootdown hook only counts the IPIs it would send.
//!
//! Run: `cargo run --release --example mapping_service`.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};

use futures::executor::LocalPool;
use futures::future::join_all;
use futures::task::LocalSpawnExt;
use txpaging::service::{MappingService, RequestReport};
use txpaging::{
    FlushBatch, MemoryAttributes as A, Op, PagePool, PageTable, PagingType, RecordingMmu, SharedTable, TxnError,
    X64Config, X64PageTable,
};

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;
const PAGE: u64 = 4 * KIB;

type Table = X64PageTable<PagePool, RecordingMmu>;
type Shared = SharedTable<Table>;

/// 8 request slots of up to 4 ops; the runner takes up to 8 requests per batch.
static SERVICE: MappingService<8, 4> = MappingService::new(8);

/// IPIs the shootdown hook would have sent (one per commit that invalidated something).
static IPIS: AtomicUsize = AtomicUsize::new(0);

fn send_ipi(_batch: &FlushBatch) {
    // Firmware: send an INVLPG-or-CR3-reload IPI to the other cores and wait for them.
    IPIS.fetch_add(1, Ordering::Relaxed);
}

/// 64 MiB of RAM mapped Writeback, as 2 MiB pages, installed before the service starts.
fn base_table() -> Table {
    let mut table = X64PageTable::with_mmu(
        PagePool::new(256),
        PagingType::Paging4Level,
        X64Config { one_gib_pages: true },
        RecordingMmu::new(),
    )
    .expect("table");
    table
        .transaction()
        .map(0, 64 * MIB, A::Writeback)
        .commit()
        .expect("base map");
    // Installed: the cores may now cache its translations, so changes need shootdowns.
    table.install_page_table().expect("install (recorded)");
    table.mmu().take_log();
    table
}

fn protect(va: u64, size: u64, attributes: A) -> Op {
    Op::Protect { va, size, attributes }
}

fn map(va: u64, size: u64, attributes: A) -> Op {
    Op::Map {
        va,
        pa: va,
        size,
        attributes,
    }
}

/// The producers: a name and the requests each sends, in order.
fn producers() -> Vec<(&'static str, Vec<Vec<Op>>)> {
    // Six loaded images at 1 MiB + i * 320 KiB: code RO, data XP, header RO + XP.
    let images = (0..6)
        .map(|i| {
            let base = MIB + i * 320 * KIB;
            vec![
                protect(base, PAGE, A::ReadOnly | A::ExecuteProtect),
                protect(base + PAGE, 192 * KIB, A::ReadOnly),
                protect(base + PAGE + 192 * KIB, 124 * KIB, A::ExecuteProtect),
            ]
        })
        .collect();
    // Guard pages below four 64 KiB stacks at 16 MiB.
    let stacks = (0..4)
        .map(|i| vec![protect(16 * MIB + i * 68 * KIB, PAGE, A::ReadProtect)])
        .collect();
    // MMIO: IOAPIC, HPET, local APIC, uncached and never executable.
    let mmio = [0xFEC0_0000, 0xFED0_0000, 0xFEE0_0000]
        .into_iter()
        .map(|va| vec![map(va, PAGE, A::Uncached | A::ExecuteProtect)])
        .collect();
    // A driver with bugs: an unaligned address, a protect of memory nobody mapped.
    let buggy = vec![
        vec![
            protect(40 * MIB, PAGE, A::ReadOnly),
            protect(40 * MIB + 0x800, PAGE, A::ReadOnly),
        ],
        vec![protect(0x1_0000_0000, PAGE, A::ExecuteProtect)],
        vec![protect(40 * MIB, 2 * PAGE, A::ExecuteProtect)],
    ];
    vec![("loader", images), ("stacks", stacks), ("mmio", mmio), ("buggy", buggy)]
}

type Outcome = Result<RequestReport, TxnError>;
/// What a producer sent and got back: its name, the request's number, the ops, the outcome.
type Answer = (&'static str, usize, Vec<Op>, Outcome);

fn main() {
    let shared: &'static Shared = Box::leak(Box::new(SharedTable::with_shootdown(
        base_table(),
        send_ipi as fn(&FlushBatch),
    )));
    let producers = producers();
    let outcomes: Rc<RefCell<Vec<Answer>>> = Rc::default();

    let mut pool = LocalPool::new();
    let spawner = pool.spawner();
    spawner
        .spawn_local(async move { SERVICE.run(shared).await })
        .expect("spawn runner");
    for (name, requests) in producers {
        let outcomes = Rc::clone(&outcomes);
        spawner
            .spawn_local(async move {
                // All of this producer's requests at once: more than the 8 slots in all, so
                // some submits wait for a slot (back-pressure).
                let results = join_all(requests.iter().map(|ops| SERVICE.submit(ops))).await;
                for (number, (ops, outcome)) in requests.into_iter().zip(results).enumerate() {
                    outcomes.borrow_mut().push((name, number, ops, outcome));
                }
            })
            .expect("spawn producer");
    }
    // Every producer finishes; then only the runner is left, waiting for requests.
    pool.run_until_stalled();

    let mut outcomes = outcomes.take();
    outcomes.sort_by_key(|(name, number, _, _)| (*name, *number));
    println!("What each producer got back:");
    for (name, number, ops, outcome) in &outcomes {
        match outcome {
            Ok(report) => println!(
                "  {name:<6} request {number}: {} op(s) -> ok: queue position {}, batch {}, commit #{} \
                 shared by {} request(s), shootdown {}",
                ops.len(),
                report.sequence,
                report.batch,
                report.commit.sequence,
                report.requests_in_commit,
                if report.commit.shootdown_ran {
                    "sent"
                } else {
                    "not needed"
                },
            ),
            Err(error) => println!("  {name:<6} request {number}: {} op(s) -> error: {error}", ops.len()),
        }
    }

    // The service's cost: one invalidation batch (and one IPI) per commit at most.
    let stats = SERVICE.stats();
    let mut commits: Vec<&RequestReport> = outcomes.iter().filter_map(|(_, _, _, o)| o.as_ref().ok()).collect();
    commits.sort_by_key(|report| report.commit.sequence);
    commits.dedup_by_key(|report| report.commit.sequence);
    let service_flushes: usize = commits.iter().map(|r| r.commit.report.invalidation_batches).sum();
    let service_ipis = IPIS.swap(0, Ordering::Relaxed);

    // The same successful requests, one commit each, in queue order, on an identical table.
    let mut applied: Vec<(u64, &Vec<Op>)> = outcomes
        .iter()
        .filter_map(|(_, _, ops, outcome)| outcome.as_ref().ok().map(|r| (r.sequence, ops)))
        .collect();
    applied.sort_by_key(|(sequence, _)| *sequence);
    let alone = SharedTable::with_shootdown(base_table(), send_ipi as fn(&FlushBatch));
    let mut alone_flushes = 0;
    for (_, ops) in &applied {
        let report = alone
            .commit(ops.iter().copied())
            .expect("a successful request commits alone");
        alone_flushes += report.report.invalidation_batches;
    }
    let alone_ipis = IPIS.load(Ordering::Relaxed);
    let same = shared.with_table(|t| t.regions().collect::<Vec<_>>()).expect("regions")
        == alone.with_table(|t| t.regions().collect::<Vec<_>>()).expect("regions");

    println!();
    println!(
        "Service: {} requests ({} failed) in {} batches, {} commits",
        stats.requests, stats.failed, stats.batches, stats.commits
    );
    println!("  flush batches: {service_flushes}, shootdown IPIs: {service_ipis}");
    println!(
        "One request at a time: {} commits, flush batches: {alone_flushes}, shootdown IPIs: {alone_ipis}",
        applied.len()
    );
    println!("Same final table both ways: {same}");
    assert!(same);
}
