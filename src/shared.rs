//! [`SharedTable`]: one page table shared by several cores (or host threads), every use
//! inside one critical section, with an optional TLB shootdown hook for the other cores.
//!
//! The table lives in an embassy-sync blocking mutex over a
//! [`CriticalSectionRawMutex`](https://docs.rs/embassy-sync/0.8/embassy_sync/blocking_mutex/raw/struct.CriticalSectionRawMutex.html).
//! On a single core the section masks interrupts, on several
//! cores the `critical-section` implementation also takes a lock shared by all cores; on the
//! host, `critical-section`'s `std` implementation is a global re-entrant lock. The firmware
//! provides the implementation; on several cores it must exclude the other cores too, not
//! only mask this core's interrupts.
//!
//! # What runs inside a section
//!
//! [`commit`](SharedTable::commit), [`plan`](SharedTable::plan),
//! [`query`](SharedTable::query) and [`dump_to`](SharedTable::dump_to) each take one section.
//! A commit's work inside it is bounded by its ops: the engine validates and plans with one
//! read-only walk, then takes every table page it needs from the allocator, and only then
//! stores (and issues this CPU's invalidations). Nothing inside waits for another CPU.
//!
//! # Re-entry is refused
//!
//! The page allocator runs inside the section (a commit allocates there). An allocator, or
//! anything else running inside a section of this table, that calls back into the same
//! table gets [`PtError::ReentrantCall`] (for commits, a [`TxnError`] with `op: None`)
//! instead of a deadlock or a recursion into a half-done commit: the critical section is
//! re-entrant on one CPU, and the table sits in a `RefCell` whose borrow is only tried.
//!
//! # Other CPUs' TLBs
//!
//! Each commit's invalidations are issued on the committing CPU. On X64 other CPUs need the
//! same ([`TransactionalTable::BROADCAST_INVALIDATION`] is `false`): give
//! [`SharedTable::with_shootdown`] a hook that sends them an IPI for the [`FlushBatch`]
//! (pages, or a full flush) and returns once they have done it. A commit then runs:
//!
//! 1. section: plan, allocate, store, invalidate locally, keep the freed table pages
//!    (`commit_retiring`);
//! 2. outside any section of this table: the hook, once, if the commit invalidated
//!    anything (an IPI from inside a section could wait forever for a CPU that is itself
//!    spinning, interrupts masked, to enter the section);
//! 3. section: give the freed table pages to the allocator. Until the hook returned, another
//!    CPU could still be walking them through a stale paging-structure cache entry.
//!
//! Without a hook, or on AArch64 where `TLBI ...IS` already reached every CPU when the
//! commit returns, the freed pages go back in the commit's own section.
//! [`SharedCommitReport::shootdown_ran`] says whether the hook ran.

use core::cell::RefCell;
use core::fmt;

use embassy_sync::blocking_mutex::raw::CriticalSectionRawMutex;
use embassy_sync::blocking_mutex::Mutex;
use txpaging_txn::{CommitReport, FlushBatch, MemoryAttributes, Op, Plan, PtError, Reason, Retired, TxnError};

use crate::transactional::TransactionalTable;

/// The default hook type of a [`SharedTable`] built without one.
pub type ShootdownFn = fn(&FlushBatch);

/// What a [`SharedTable::commit`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SharedCommitReport {
    /// The engine's report of the commit.
    pub report: CommitReport,
    /// Whether the shootdown hook ran for this commit (never without a hook, never when the
    /// architecture's invalidations are broadcast, never when the commit invalidated nothing).
    pub shootdown_ran: bool,
    /// The commit's number on this table: 1 for the first successful commit through the
    /// handle, then 2, 3, ... in the order the commits took effect.
    pub sequence: u64,
}

struct Inner<T> {
    table: T,
    commits: u64,
}

/// A page table of any architecture ([`TransactionalTable`]) shared by several cores: every
/// commit, plan, query and dump runs inside one critical section. See the
/// [module documentation](self) for the shootdown and re-entry rules.
///
/// `SharedTable<T>` is `Sync` when `T` is `Send` (and the hook `Sync`), so it can sit in a
/// `static` (for example behind a `OnceLock` or `StaticCell`) or be borrowed by threads.
///
/// An X64 table shared by the cores, with a shootdown hook (here it only counts; firmware
/// sends an IPI and waits until the other cores ran the same INVLPGs or CR3 reload):
///
/// ```
/// use core::sync::atomic::{AtomicUsize, Ordering};
/// use txpaging::{FlushBatch, MemoryAttributes as A, Op, PagePool, PageTable, PagingType, SharedTable, X64PageTable};
///
/// static SHOOTDOWNS: AtomicUsize = AtomicUsize::new(0);
/// fn shoot_down(batch: &FlushBatch) {
///     // Firmware: send an IPI to every other core running on this table; each invalidates
///     // `batch.pages()` one by one, or everything when `batch.is_full()`; then return.
///     let _pages: Vec<u64> = batch.pages().collect();
///     SHOOTDOWNS.fetch_add(1, Ordering::Relaxed);
/// }
///
/// let mut table = X64PageTable::new(PagePool::new(16), PagingType::Paging4Level)?;
/// table.map_memory_region(0, 0x40_0000, A::Writeback)?;
/// table.install_page_table()?; // other cores may now cache its translations
/// let shared = SharedTable::with_shootdown(table, shoot_down);
///
/// // Any core: one commit, one local invalidation batch, one shootdown.
/// let done = shared.commit([
///     Op::Protect { va: 0x1000, size: 0x1000, attributes: A::ReadOnly },
///     Op::Unmap { va: 0x20_0000, size: 0x20_0000 },
/// ])?;
/// assert!(done.shootdown_ran);
/// assert_eq!(SHOOTDOWNS.load(Ordering::Relaxed), 1);
/// assert_eq!(shared.query(0x1000, 0x1000)?, A::Writeback | A::ReadOnly);
/// # Ok::<(), Box<dyn core::error::Error>>(())
/// ```
pub struct SharedTable<T, H = ShootdownFn> {
    inner: Mutex<CriticalSectionRawMutex, RefCell<Inner<T>>>,
    shootdown: Option<H>,
}

impl<T: TransactionalTable> SharedTable<T> {
    /// Shares `table` without a shootdown hook: freed table pages go back to the allocator
    /// inside the commit's section. Right for one core, or for AArch64.
    pub const fn new(table: T) -> Self {
        Self {
            inner: Mutex::new(RefCell::new(Inner { table, commits: 0 })),
            shootdown: None,
        }
    }
}

impl<T: TransactionalTable, H: Fn(&FlushBatch)> SharedTable<T, H> {
    /// Shares `table`; after each commit that invalidated something, `hook` is called once,
    /// outside the section, with the commit's [`FlushBatch`] (the pages this CPU invalidated
    /// one by one, or a full flush). It must make every other CPU that may use the table do
    /// the same (an IPI on X64) and return when they have. Not called on architectures whose
    /// invalidations are broadcast ([`TransactionalTable::BROADCAST_INVALIDATION`]).
    pub const fn with_shootdown(table: T, hook: H) -> Self {
        Self {
            inner: Mutex::new(RefCell::new(Inner { table, commits: 0 })),
            shootdown: Some(hook),
        }
    }

    /// Commits `ops` as one transaction (all or nothing, one invalidation batch), then runs
    /// the shootdown hook and gives back the freed table pages as the
    /// [module documentation](self) describes.
    ///
    /// ## Errors
    /// The transaction's error (the table is unchanged), or `op: None` with
    /// [`PtError::ReentrantCall`] when called from inside a section of this table.
    pub fn commit(&self, ops: impl IntoIterator<Item = Op>) -> Result<SharedCommitReport, TxnError> {
        let deferred = self.shootdown.is_some() && !T::BROADCAST_INVALIDATION;
        let (report, invalidations, retired, sequence) = self
            .exclusive(|inner| {
                let committed = inner.table.commit_ops(ops)?;
                inner.commits += 1;
                let retired = if deferred {
                    Some(committed.retired)
                } else {
                    inner.table.release_retired(committed.retired);
                    None
                };
                Ok((committed.report, committed.invalidations, retired, inner.commits))
            })
            .map_err(reentered)??;
        let mut shootdown_ran = false;
        if let (Some(hook), Some(retired)) = (&self.shootdown, retired) {
            if !invalidations.is_empty() || !retired.pages().is_empty() {
                hook(&invalidations);
                shootdown_ran = true;
            }
            if !retired.pages().is_empty() {
                self.release_after_shootdown(retired);
            }
        }
        Ok(SharedCommitReport {
            report,
            shootdown_ran,
            sequence,
        })
    }

    fn release_after_shootdown(&self, retired: Retired) {
        let released = self.exclusive(move |inner| inner.table.release_retired(retired));
        // The commit's own section succeeded on this CPU a moment ago and no borrow outlives a
        // section, so this one cannot be refused. Were it refused, the pages would leak (the
        // closure drops them unreleased) rather than be reused while a CPU might walk them.
        debug_assert!(released.is_ok(), "release of retired table pages refused");
    }
}

impl<T: TransactionalTable, H> SharedTable<T, H> {
    /// Runs `f` on the table inside one section, exclusively; `ReentrantCall` if this CPU is
    /// already inside a section of this table.
    fn exclusive<R>(&self, f: impl FnOnce(&mut Inner<T>) -> R) -> Result<R, PtError> {
        self.inner.lock(|cell| match cell.try_borrow_mut() {
            Ok(mut inner) => Ok(f(&mut inner)),
            Err(_) => Err(PtError::ReentrantCall),
        })
    }

    /// [`exclusive`](Self::exclusive) for an operation that reports a [`TxnError`].
    fn exclusive_txn<R>(&self, f: impl FnOnce(&mut Inner<T>) -> Result<R, TxnError>) -> Result<R, TxnError> {
        self.exclusive(f).map_err(reentered)?
    }

    /// Runs `f` on the table inside one section, shared (reads may nest in reads).
    fn shared<R>(&self, f: impl FnOnce(&Inner<T>) -> R) -> Result<R, PtError> {
        self.inner.lock(|cell| match cell.try_borrow() {
            Ok(inner) => Ok(f(&inner)),
            Err(_) => Err(PtError::ReentrantCall),
        })
    }

    /// Dry run of `ops` as one transaction against the table as it is now. Another CPU may
    /// change the table before a later commit.
    ///
    /// ## Errors
    /// The error a commit would return, or `op: None` with [`PtError::ReentrantCall`].
    pub fn plan(&self, ops: impl IntoIterator<Item = Op>) -> Result<Plan, TxnError> {
        self.exclusive_txn(|inner| inner.table.plan_ops(ops))
    }

    /// The attributes of `size` bytes at `address`, read inside one section.
    ///
    /// ## Errors
    /// As [`PageTable::query_memory_region`](crate::PageTable::query_memory_region), or
    /// [`PtError::ReentrantCall`] from inside a commit of this table.
    pub fn query(&self, address: u64, size: u64) -> Result<MemoryAttributes, PtError> {
        self.shared(|inner| inner.table.query(address, size))?
    }

    /// Writes the dump of `size` bytes at `address` to `out` inside one section (so write to
    /// a buffer, not to a slow device).
    ///
    /// ## Errors
    /// Range errors, a formatting error, or [`PtError::ReentrantCall`].
    pub fn dump_to(&self, out: &mut dyn fmt::Write, address: u64, size: u64) -> Result<(), PtError> {
        self.shared(|inner| inner.table.dump_to(out, address, size))?
    }

    /// Runs `f` with the table inside one section, for reads the handle does not wrap
    /// (regions, translations, raw entries).
    ///
    /// ## Errors
    /// [`PtError::ReentrantCall`] from inside a commit of this table.
    pub fn with_table<R>(&self, f: impl FnOnce(&T) -> R) -> Result<R, PtError> {
        self.shared(|inner| f(&inner.table))
    }

    /// Runs `f` with exclusive access to the table inside one section (installing it,
    /// pinning ranges, test hooks). Changes made through `f` bypass the shootdown hook and
    /// the commit count: commit through [`commit`](SharedTable::commit) instead.
    ///
    /// ## Errors
    /// [`PtError::ReentrantCall`] from inside a section of this table.
    pub fn with_table_mut<R>(&self, f: impl FnOnce(&mut T) -> R) -> Result<R, PtError> {
        self.exclusive(|inner| f(&mut inner.table))
    }

    /// Sets the protection policy every later commit (and every request of a
    /// [`MappingService`](crate::MappingService) running on this handle) must obey.
    ///
    /// ## Errors
    /// Range errors for a registered range, or [`PtError::ReentrantCall`] from inside a
    /// section of this table.
    pub fn set_policy(&self, policy: crate::Policy) -> Result<(), PtError> {
        self.exclusive(|inner| inner.table.set_policy(policy))?
    }

    /// Successful commits made through [`commit`](SharedTable::commit) so far.
    ///
    /// ## Errors
    /// [`PtError::ReentrantCall`] from inside a commit of this table.
    pub fn commits(&self) -> Result<u64, PtError> {
        self.shared(|inner| inner.commits)
    }

    /// Whether a shootdown hook is set and the architecture needs it.
    pub fn shoots_down(&self) -> bool {
        self.shootdown.is_some() && !T::BROADCAST_INVALIDATION
    }

    /// Gives up sharing and returns the table.
    pub fn into_inner(self) -> T {
        self.inner.into_inner().into_inner().table
    }
}

impl<T: TransactionalTable, H> fmt::Debug for SharedTable<T, H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedTable")
            .field("shoots_down", &self.shoots_down())
            .finish_non_exhaustive()
    }
}

/// The transaction error of a call refused because this CPU re-entered the table.
fn reentered(error: PtError) -> TxnError {
    TxnError::whole(error).with_reason(Reason::Reentered)
}
