//! Re-entry: an allocator that uses the shared table while a commit of that table runs gets
//! `ReentrantCall`, never a deadlock or a recursion into the half-done commit.

use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use txpaging::{
    FlushBatch, MemoryAttributes as MA, Op, PageAllocator, PagePool, PagingType, PtError, Reason, RecordingMmu,
    SharedTable, TxnError, X64Config, X64PageTable,
};

const KIB4: u64 = 0x1000;
const MIB2: u64 = 0x20_0000;

type Shared = SharedTable<X64PageTable<ReenteringPool, RecordingMmu>>;

/// Forwards to a pool, but first tries every entry point of the shared table it serves and
/// records what each returned.
struct ReenteringPool {
    pool: PagePool,
    table: &'static OnceLock<Shared>,
    /// Return the refusal instead of a page.
    propagate: bool,
    seen: &'static Mutex<Vec<String>>,
}

impl ReenteringPool {
    fn reenter(&self, during: &str) {
        let Some(shared) = self.table.get() else { return };
        let mut seen = Vec::new();
        let map = Op::Map {
            va: 0x4000_0000,
            pa: 0x4000_0000,
            size: KIB4,
            attributes: MA::Writeback,
        };
        seen.push(format!("{during} commit: {:?}", shared.commit([map]).map(drop)));
        seen.push(format!("{during} plan: {:?}", shared.plan([map]).map(drop)));
        seen.push(format!("{during} query: {:?}", shared.query(0, KIB4)));
        seen.push(format!(
            "{during} dump: {:?}",
            shared.dump_to(&mut String::new(), 0, KIB4)
        ));
        seen.push(format!("{during} with_table: {:?}", shared.with_table(|_| ())));
        seen.push(format!("{during} with_table_mut: {:?}", shared.with_table_mut(|_| ())));
        self.seen.lock().unwrap().extend(seen);
    }
}

impl PageAllocator for ReenteringPool {
    fn allocate_page(&mut self, align: u64, size: u64) -> Result<u64, PtError> {
        self.reenter("allocate");
        if self.propagate && self.table.get().is_some() {
            return Err(PtError::ReentrantCall);
        }
        self.pool.allocate_page(align, size)
    }
    fn free_page(&mut self, address: u64, size: u64) {
        self.reenter("free");
        self.pool.free_page(address, size)
    }
    fn physical_to_pointer(&self, address: u64) -> *mut u8 {
        self.pool.physical_to_pointer(address)
    }
}

fn shared_in(
    cell: &'static OnceLock<Shared>,
    seen: &'static Mutex<Vec<String>>,
    propagate: bool,
    base: &[Op],
) -> &'static Shared {
    let pool = ReenteringPool {
        pool: PagePool::new(64),
        table: cell,
        propagate,
        seen,
    };
    let mut table = X64PageTable::with_mmu(
        pool,
        PagingType::Paging4Level,
        X64Config { one_gib_pages: true },
        RecordingMmu::new(),
    )
    .unwrap();
    table.transaction().extend(base.iter().copied()).commit().unwrap();
    // From here on the allocator re-enters.
    assert!(cell.set(SharedTable::new(table)).is_ok());
    cell.get().unwrap()
}

/// Runs `f` on another thread and fails if it does not finish in time (a hang).
fn finishes<R: Send + 'static>(f: impl FnOnce() -> R + Send + 'static) -> R {
    let (send, receive) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = send.send(f());
    });
    receive
        .recv_timeout(Duration::from_secs(10))
        .expect("the re-entered table hung (or the test panicked)")
}

fn assert_all_refused(seen: &[String], during: &str) {
    let lines: Vec<&String> = seen.iter().filter(|line| line.starts_with(during)).collect();
    assert_eq!(lines.len() % 6, 0);
    assert!(!lines.is_empty(), "the allocator was not called during {during}");
    for line in lines {
        assert!(line.contains("ReentrantCall"), "{line}");
    }
}

static REFUSED_CELL: OnceLock<Shared> = OnceLock::new();
static REFUSED_SEEN: Mutex<Vec<String>> = Mutex::new(Vec::new());

#[test]
fn an_allocator_reentering_the_table_is_refused_and_the_commit_goes_on() {
    let seen = finishes(|| {
        let shared = shared_in(&REFUSED_CELL, &REFUSED_SEEN, false, &[]);
        // Needs PDPT, PD and PT: three allocations, each trying six entry points.
        let report = shared
            .commit([Op::Map {
                va: 0,
                pa: 0,
                size: KIB4,
                attributes: MA::Writeback,
            }])
            .unwrap();
        assert_eq!(report.report.tables_allocated, 3);
        // Unmapping frees them: release runs inside the section too.
        let report = shared.commit([Op::Unmap { va: 0, size: KIB4 }]).unwrap();
        assert_eq!(report.report.tables_freed, 3);
        // The table is usable again afterwards.
        assert_eq!(shared.query(0, KIB4), Err(PtError::NoMapping));
        assert_eq!(shared.commits(), Ok(2));
        REFUSED_SEEN.lock().unwrap().clone()
    });
    assert_eq!(seen.len(), 6 * 6, "{seen:#?}");
    assert_all_refused(&seen, "allocate");
    assert_all_refused(&seen, "free");
}

static PROPAGATED_CELL: OnceLock<Shared> = OnceLock::new();
static PROPAGATED_SEEN: Mutex<Vec<String>> = Mutex::new(Vec::new());

#[test]
fn a_refusal_returned_by_the_allocator_fails_the_commit_cleanly() {
    let base = [Op::Map {
        va: 0,
        pa: 0,
        size: MIB2,
        attributes: MA::Writeback,
    }];
    finishes(move || {
        let shared = shared_in(&PROPAGATED_CELL, &PROPAGATED_SEEN, true, &base);
        let before = shared
            .with_table(|t| (t.regions().collect::<Vec<_>>(), t.table_pages()))
            .unwrap();
        // A split needs one PT: the allocator refuses, the commit fails as a whole.
        let result = shared.commit([Op::Protect {
            va: 0,
            size: KIB4,
            attributes: MA::ReadOnly,
        }]);
        // The allocator's own code, and the reason says the allocator refused.
        assert_eq!(
            result,
            Err(TxnError::whole(PtError::ReentrantCall).with_reason(Reason::AllocatorFailed))
        );
        let after = shared
            .with_table(|t| (t.regions().collect::<Vec<_>>(), t.table_pages()))
            .unwrap();
        assert_eq!(before, after, "the failed commit changed the table");
        assert_eq!(shared.with_table(|t| t.allocator().pool.live_pages()), Ok(after.1));
        assert_eq!(shared.commits(), Ok(0));
    });
    assert_all_refused(&PROPAGATED_SEEN.lock().unwrap(), "allocate");
}

type HookShared = SharedTable<X64PageTable<PagePool, RecordingMmu>, fn(&FlushBatch)>;
static HOOK_CELL: OnceLock<HookShared> = OnceLock::new();
static HOOK_SEEN: Mutex<Vec<Result<u64, PtError>>> = Mutex::new(Vec::new());

/// A shootdown hook runs outside the section: it may use the table (not refused).
fn hook_using_the_table(_: &FlushBatch) {
    HOOK_SEEN.lock().unwrap().push(HOOK_CELL.get().unwrap().commits());
}

#[test]
fn the_shootdown_hook_may_use_the_table() {
    finishes(|| {
        let table = X64PageTable::with_mmu(
            PagePool::new(16),
            PagingType::Paging4Level,
            X64Config { one_gib_pages: true },
            RecordingMmu::new(),
        )
        .unwrap();
        let shared = HOOK_CELL.get_or_init(|| SharedTable::with_shootdown(table, hook_using_the_table));
        let map = Op::Map {
            va: 0,
            pa: 0,
            size: MIB2,
            attributes: MA::Writeback,
        };
        shared.commit([map]).unwrap();
        assert!(shared.commit([Op::Unmap { va: 0, size: MIB2 }]).unwrap().shootdown_ran);
    });
    assert_eq!(*HOOK_SEEN.lock().unwrap(), vec![Ok(2)]);
}
