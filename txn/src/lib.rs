//! The architecture-neutral transaction engine of `txpaging`.
//!
//! A [`Tables`] value owns a page table of one architecture (a [`Codec`]). Changes are
//! queued in a [`Transaction`], folded into an overlay (`overlay`), planned by one
//! read-only walk that validates everything and records every store and every table page
//! needed (`plan`), then committed: all pages allocated, the recorded stores applied
//! (which cannot fail), and one batch of TLB invalidations issued (`apply`).
//!
//! Users normally reach this through the `txpaging` crate.
#![no_std]
#![deny(missing_docs)]
#![deny(clippy::undocumented_unsafe_blocks)]
#![deny(unsafe_op_in_unsafe_fn)]

extern crate alloc;

mod allocator;
mod apply;
mod attributes;
mod audit;
mod codec;
mod commit;
mod decide;
mod direct;
mod error;
mod fast;
mod geometry;
mod hex;
mod inspect;
mod memory;
mod op;
mod overlay;
mod plan;
mod policy;
mod report;
mod rule;
mod table;
mod tlb;
mod transaction;

pub use allocator::PageAllocator;
pub use attributes::MemoryAttributes;
pub use audit::{Audit, AuditRange, MemoryMapEntry};
pub use codec::{Codec, Entry, INVALID_ENTRY};
pub use error::{Blame, PtError, Reason, TxnError};
pub use geometry::{Geometry, ENTRIES_PER_TABLE, PAGE_SIZE};
pub use hex::Hex;
pub use inspect::{MappedRegion, Regions};
pub use memory::read_table_entry;
pub use op::Op;
pub use plan::Counts;
pub use policy::{Policy, Rules};
pub use report::{CommitReport, Committed, FinalState, Plan, PlannedRange, Retired};
pub use rule::Rule;
pub use table::Tables;
pub use tlb::{Barrier, FlushBatch, Tlb};
pub use transaction::Transaction;
