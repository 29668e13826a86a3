//! The architecture-neutral transaction engine of `txpaging`.
//!
//! A [`Tables`] value owns a page table of one architecture (a [`Codec`]). Changes are
//! queued in a [`Transaction`], folded into an overlay, planned by a dry-run walk that
//! validates everything and counts the table pages needed, and committed by a second walk
//! that cannot fail, followed by one batch of TLB invalidations.
//!
//! Users normally reach this through the `txpaging` crate.
#![no_std]
#![deny(missing_docs)]
#![deny(clippy::undocumented_unsafe_blocks)]
#![deny(unsafe_op_in_unsafe_fn)]

extern crate alloc;

mod allocator;
mod attributes;
mod codec;
mod error;
mod geometry;
mod inspect;
mod memory;
mod overlay;
mod plan;
mod table;
mod tlb;
mod transaction;

pub use allocator::PageAllocator;
pub use attributes::MemoryAttributes;
pub use codec::{Codec, Entry, INVALID_ENTRY};
pub use error::{PtError, TxnError};
pub use geometry::{Geometry, ENTRIES_PER_TABLE, PAGE_SIZE};
pub use inspect::{MappedRegion, Regions};
pub use plan::Counts;
pub use table::Tables;
pub use tlb::{FlushBatch, Tlb};
pub use transaction::{CommitReport, FinalState, Op, Plan, PlannedRange, Transaction};
