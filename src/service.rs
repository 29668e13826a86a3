//! [`MappingService`]: an asynchronous, batched mapping service on embassy-sync.
//!
//! Tasks [`submit`](MappingService::submit) a request (one or more [`Op`]s, one transaction)
//! and `.await` its own result. One runner task ([`MappingService::run`]) takes whatever is
//! queued, up to the batch size, and commits the requests that can be committed as **one**
//! transaction, with one invalidation batch, through a [`SharedTable`].
//!
//! ```text
//! submit(ops) ── wait for a free slot (back-pressure) ── copy ops into the slot
//!     └─ queue (bounded Channel of slot numbers) ─> runner: take 1, drain up to batch size
//!           └─ plan + validate the batch (the first step of its commit, one section)
//!                 op error in request k  -> k gets the error, retry without k
//!                 allocation failure     -> commit each request alone, in queue order
//!           └─ commit (same section) ─> flush once ─> shootdown hook (outside the section)
//!     <─ result (Signal of the slot) ─ slot freed ─ next waiting submitter goes on
//! ```
//!
//! No heap per request: requests live in a fixed array of slots (`heapless::Vec<Op,
//! MAX_OPS>` each) inside the service. No executor either: `submit` and `run` are plain
//! futures for embassy or any other executor.
//!
//! # Semantics
//!
//! * **Queue order.** Requests take effect in the order they entered the queue. The table
//!   after the runner is the table that committing each successful request alone, one after
//!   the other in that order, would give; a failed request changes nothing.
//! * **Only failing requests are dropped.** The engine reports the first failing op in queue
//!   order, so when the batch fails at an op of request *k*, every request before *k* is
//!   fine on top of the ones before it, and *k* fails on top of them: *k* gets that error
//!   (op index relative to its own ops) and the runner retries with the rest. A failed
//!   attempt stops before any store (engine invariant), so each retry starts from the same
//!   table. If the batch fails as a whole (no op to blame: the allocator ran out), every
//!   request of the batch is committed alone, in queue order, and gets its own result.
//! * **Results.** A successful request gets a [`RequestReport`]: its place in queue order,
//!   its runner batch, and the report of the commit that applied it. The counts in that
//!   report are the whole commit's: the shares of the requests committed together are not
//!   separable (a table split by one request may be merged back by the next), so the report
//!   says how many requests shared the commit rather than inventing a split.
//! * **Back-pressure.** A full service (all `SLOTS` slots in flight) makes `submit` wait;
//!   nothing is dropped. Waiting submitters are not served in FIFO order: the queue order is
//!   the order in which they got a slot.
//! * **Cancellation.** Dropping a `submit` future before it got a slot changes nothing;
//!   dropping it after its request was queued does not cancel the request (it is committed
//!   or fails as usual) and the slot comes back once the runner is done with it.
//! * Run exactly one runner per service; two would each keep queue order only within their
//!   own batches.

use core::cell::{Cell, RefCell};
use core::future::poll_fn;
use core::task::Poll;

use embassy_sync::blocking_mutex::raw::CriticalSectionRawMutex;
use embassy_sync::blocking_mutex::Mutex;
use embassy_sync::channel::Channel;
use embassy_sync::signal::Signal;
use embassy_sync::waitqueue::MultiWakerRegistration;
use heapless::Vec;
use txpaging_txn::{FlushBatch, Op, PtError, Reason, TxnError};

use crate::shared::{SharedCommitReport, SharedTable};
use crate::transactional::TransactionalTable;

type Cs = CriticalSectionRawMutex;

/// How many submitters waiting for a free slot are remembered individually. Beyond that
/// many at once, waiting submitters are all woken whenever one more starts waiting (still
/// correct, just more polling).
pub const SUBMIT_WAITERS: usize = 32;

/// The result of a successful request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestReport {
    /// The request's place in queue order: 0 for the first request the runner took, counting
    /// failed requests too.
    pub sequence: u64,
    /// The runner batch that took it (1 for the first).
    pub batch: u64,
    /// How many requests the commit applied together (1 when committed alone).
    pub requests_in_commit: usize,
    /// The commit that applied it. Its counts are the whole commit's, shared by
    /// `requests_in_commit` requests; `commit.sequence` identifies the commit on the table.
    pub commit: SharedCommitReport,
}

/// Counters of a [`MappingService`] since it was created.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ServiceStats {
    /// Requests the runner took.
    pub requests: u64,
    /// Requests that failed.
    pub failed: u64,
    /// Runner batches.
    pub batches: u64,
    /// Successful commits (one invalidation batch each).
    pub commits: u64,
    /// Batches committed request by request after the batch as a whole failed.
    pub fallbacks: u64,
}

/// What one [`MappingService::run_batch`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchSummary {
    /// The batch number (1 for the first).
    pub batch: u64,
    /// Requests taken from the queue.
    pub requests: usize,
    /// Requests that failed.
    pub failed: usize,
    /// Successful commits made (1 normally; 0 if every request failed; one per successful
    /// request after a fallback).
    pub commits: usize,
    /// Whether the batch was committed request by request.
    pub fell_back: bool,
}

type Outcome = Result<RequestReport, TxnError>;

struct SlotState<const MAX_OPS: usize> {
    ops: Vec<Op, MAX_OPS>,
    /// The submitter stopped waiting: the runner frees the slot instead of signalling.
    abandoned: bool,
}

struct Slot<const MAX_OPS: usize> {
    request: Mutex<Cs, RefCell<SlotState<MAX_OPS>>>,
    done: Signal<Cs, Outcome>,
}

impl<const MAX_OPS: usize> Slot<MAX_OPS> {
    const fn new() -> Self {
        Self {
            request: Mutex::new(RefCell::new(SlotState {
                ops: Vec::new(),
                abandoned: false,
            })),
            done: Signal::new(),
        }
    }

    fn ops(&self) -> Vec<Op, MAX_OPS> {
        self.request.lock(|state| state.borrow().ops.clone())
    }
}

/// Free slots and the submitters waiting for one.
struct Gate<const SLOTS: usize> {
    free: Vec<usize, SLOTS>,
    /// Slots `fresh..SLOTS` were never used (so `new` can be `const`).
    fresh: usize,
    waiters: MultiWakerRegistration<SUBMIT_WAITERS>,
}

/// A request taken by the runner.
struct Taken {
    slot: usize,
    len: usize,
    outcome: Option<Outcome>,
}

/// An asynchronous batched mapping service with `SLOTS` request slots of up to `MAX_OPS`
/// ops each. See the [module documentation](self).
///
/// `new` is `const`, so a service can be a `static`:
///
/// ```
/// use txpaging::service::MappingService;
/// static SERVICE: MappingService<8, 4> = MappingService::new(8);
/// assert_eq!(SERVICE.batch_size(), 8);
/// ```
pub struct MappingService<const SLOTS: usize, const MAX_OPS: usize> {
    slots: [Slot<MAX_OPS>; SLOTS],
    gate: Mutex<Cs, RefCell<Gate<SLOTS>>>,
    queue: Channel<Cs, usize, SLOTS>,
    batch_size: usize,
    stats: Mutex<Cs, Cell<ServiceStats>>,
}

impl<const SLOTS: usize, const MAX_OPS: usize> MappingService<SLOTS, MAX_OPS> {
    /// A service whose runner commits up to `batch_size` requests at a time (clamped to
    /// `1..=SLOTS`).
    ///
    /// # Panics
    /// If `SLOTS` is 0 (at compile time when used in a `static`).
    pub const fn new(batch_size: usize) -> Self {
        assert!(SLOTS > 0, "a mapping service needs at least one slot");
        let batch_size = if batch_size == 0 {
            1
        } else if batch_size > SLOTS {
            SLOTS
        } else {
            batch_size
        };
        Self {
            slots: [const { Slot::new() }; SLOTS],
            gate: Mutex::new(RefCell::new(Gate {
                free: Vec::new(),
                fresh: 0,
                waiters: MultiWakerRegistration::new(),
            })),
            queue: Channel::new(),
            batch_size,
            stats: Mutex::new(Cell::new(ServiceStats {
                requests: 0,
                failed: 0,
                batches: 0,
                commits: 0,
                fallbacks: 0,
            })),
        }
    }

    /// The most requests one runner batch takes.
    pub fn batch_size(&self) -> usize {
        self.batch_size
    }

    /// Requests queued and not yet taken by the runner.
    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    /// The counters so far.
    pub fn stats(&self) -> ServiceStats {
        self.stats.lock(Cell::get)
    }

    /// Queues `ops` as one request and waits for its result. Waits first for a free slot
    /// while all `SLOTS` are in flight (back-pressure).
    ///
    /// ## Errors
    /// The request's own [`TxnError`], with `op` counted from the start of `ops`. A request
    /// of more than `MAX_OPS` ops is refused before anything is queued: `op: None`,
    /// [`PtError::InvalidParameter`], reason [`Reason::TooManyOps`] ("70 ops in one request;
    /// at most 64 are accepted"). Split such a request, or use a transaction.
    pub async fn submit(&self, ops: &[Op]) -> Result<RequestReport, TxnError> {
        if ops.len() > MAX_OPS {
            return Err(
                TxnError::whole(PtError::InvalidParameter).with_reason(Reason::TooManyOps {
                    ops: ops.len(),
                    max: MAX_OPS,
                }),
            );
        }
        let index = poll_fn(|cx| {
            self.gate.lock(|gate| {
                let mut gate = gate.borrow_mut();
                if let Some(index) = gate.free.pop() {
                    Poll::Ready(index)
                } else if gate.fresh < SLOTS {
                    gate.fresh += 1;
                    Poll::Ready(gate.fresh - 1)
                } else {
                    gate.waiters.register(cx.waker());
                    Poll::Pending
                }
            })
        })
        .await;
        // From here to the wait there is no await point: the request is queued as one step.
        let slot = &self.slots[index];
        slot.done.reset();
        slot.request.lock(|state| {
            let mut state = state.borrow_mut();
            state.ops.clear();
            let copied = state.ops.extend_from_slice(ops);
            debug_assert!(copied.is_ok(), "length checked above");
            state.abandoned = false;
        });
        // At most SLOTS slot numbers exist, so the SLOTS-deep queue always has room.
        if self.queue.try_send(index).is_err() {
            self.free_slot(index);
            return Err(TxnError::whole(PtError::InternalError));
        }
        let mut waiting = Waiting {
            service: self,
            index,
            armed: true,
        };
        let outcome = slot.done.wait().await;
        waiting.armed = false;
        self.free_slot(index);
        outcome
    }

    /// Serves requests forever: [`run_batch`](Self::run_batch) in a loop. Run it as one task
    /// of whatever executor the firmware uses.
    pub async fn run<T: TransactionalTable, H: Fn(&FlushBatch)>(&self, table: &SharedTable<T, H>) -> ! {
        loop {
            self.run_batch(table).await;
        }
    }

    /// Waits for one request, takes whatever else is queued up to the batch size, commits
    /// the batch through `table` as the [module documentation](self) describes, and hands
    /// every request its result, in queue order.
    pub async fn run_batch<T: TransactionalTable, H: Fn(&FlushBatch)>(
        &self,
        table: &SharedTable<T, H>,
    ) -> BatchSummary {
        let first = self.queue.receive().await;
        // No await point from here on: a taken request is always answered.
        let mut batch: Vec<Taken, SLOTS> = Vec::new();
        let mut next = Some(first);
        while let Some(slot) = next {
            let len = self.slots[slot].request.lock(|state| state.borrow().ops.len());
            if let Err(taken) = batch.push(Taken {
                slot,
                len,
                outcome: None,
            }) {
                // Cannot happen (batch_size <= SLOTS), but never drop a request.
                self.finish(taken.slot, Err(TxnError::whole(PtError::InternalError)));
                break;
            }
            next = if batch.len() < self.batch_size {
                self.queue.try_receive().ok()
            } else {
                None
            };
        }
        let (first_sequence, number) = self.stats.lock(|cell| {
            let mut stats = cell.get();
            let first_sequence = stats.requests;
            stats.requests += batch.len() as u64;
            stats.batches += 1;
            cell.set(stats);
            (first_sequence, stats.batches)
        });
        let (commits, fell_back) = self.commit_batch(table, &mut batch, first_sequence, number);
        let mut failed = 0;
        for taken in &mut batch {
            let outcome = taken
                .outcome
                .take()
                .unwrap_or(Err(TxnError::whole(PtError::InternalError)));
            failed += usize::from(outcome.is_err());
            self.finish(taken.slot, outcome);
        }
        self.stats.lock(|cell| {
            let mut stats = cell.get();
            stats.failed += failed as u64;
            stats.commits += commits as u64;
            stats.fallbacks += u64::from(fell_back);
            cell.set(stats);
        });
        BatchSummary {
            batch: number,
            requests: batch.len(),
            failed,
            commits,
            fell_back,
        }
    }

    /// Commits `batch`, dropping the requests that fail; fills in every outcome. Returns the
    /// number of successful commits and whether it fell back to one request at a time.
    fn commit_batch<T: TransactionalTable, H: Fn(&FlushBatch)>(
        &self,
        table: &SharedTable<T, H>,
        batch: &mut [Taken],
        first_sequence: u64,
        number: u64,
    ) -> (usize, bool) {
        let mut accepted: Vec<usize, SLOTS> = (0..batch.len()).collect();
        while !accepted.is_empty() {
            let ops = accepted.iter().flat_map(|&k| self.slots[batch[k].slot].ops());
            match table.commit(ops) {
                Ok(commit) => {
                    for &k in &accepted {
                        batch[k].outcome = Some(Ok(RequestReport {
                            sequence: first_sequence + k as u64,
                            batch: number,
                            requests_in_commit: accepted.len(),
                            commit,
                        }));
                    }
                    return (1, false);
                }
                Err(failure @ TxnError { op: Some(op), .. }) => {
                    // The request holding op number `op` of the accepted ops fails on top
                    // of the accepted requests before it.
                    let mut start = 0;
                    let mut culprit = None;
                    for (position, &k) in accepted.iter().enumerate() {
                        if op < start + batch[k].len {
                            culprit = Some((position, op - start));
                            break;
                        }
                        start += batch[k].len;
                    }
                    let Some((position, relative)) = culprit else {
                        break; // Not in any request: let each request find its own result.
                    };
                    let k = accepted.remove(position);
                    // Same failure, with the op counted from the start of its own request.
                    batch[k].outcome = Some(Err(TxnError {
                        op: Some(relative),
                        ..failure
                    }));
                }
                Err(_) => break,
            }
        }
        if accepted.is_empty() {
            return (0, false);
        }
        // The batch failed as a whole: commit every request alone, in queue order.
        let mut commits = 0;
        for (k, taken) in batch.iter_mut().enumerate() {
            let outcome = table.commit(self.slots[taken.slot].ops()).map(|commit| RequestReport {
                sequence: first_sequence + k as u64,
                batch: number,
                requests_in_commit: 1,
                commit,
            });
            commits += usize::from(outcome.is_ok());
            taken.outcome = Some(outcome);
        }
        (commits, true)
    }

    /// Hands `outcome` to the slot's submitter, or frees the slot if it stopped waiting.
    fn finish(&self, index: usize, outcome: Outcome) {
        let slot = &self.slots[index];
        let abandoned = slot.request.lock(|state| {
            let mut state = state.borrow_mut();
            if state.abandoned {
                state.abandoned = false;
                true
            } else {
                slot.done.signal(outcome);
                false
            }
        });
        if abandoned {
            self.free_slot(index);
        }
    }

    /// Returns slot `index` and wakes the submitters waiting for one.
    fn free_slot(&self, index: usize) {
        self.gate.lock(|gate| {
            let mut gate = gate.borrow_mut();
            let pushed = gate.free.push(index);
            debug_assert!(pushed.is_ok(), "more slots freed than exist");
            gate.waiters.wake();
        });
    }
}

impl<const SLOTS: usize, const MAX_OPS: usize> Default for MappingService<SLOTS, MAX_OPS> {
    /// A service whose batches take up to `SLOTS` requests.
    fn default() -> Self {
        Self::new(SLOTS)
    }
}

/// A queued request whose submitter is waiting; if the `submit` future is dropped, the
/// request still runs and its slot is freed once answered.
struct Waiting<'s, const SLOTS: usize, const MAX_OPS: usize> {
    service: &'s MappingService<SLOTS, MAX_OPS>,
    index: usize,
    armed: bool,
}

impl<const SLOTS: usize, const MAX_OPS: usize> Drop for Waiting<'_, SLOTS, MAX_OPS> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let slot = &self.service.slots[self.index];
        let answered = slot.request.lock(|state| {
            let mut state = state.borrow_mut();
            let answered = slot.done.try_take().is_some();
            state.abandoned = !answered;
            answered
        });
        if answered {
            self.service.free_slot(self.index);
        }
    }
}
