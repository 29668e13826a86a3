//! [`Arch`]: what one architecture contributes to a [`PagingTable`](crate::PagingTable): its
//! entry encoding, its CPU configuration, the geometry of each paging mode, the register
//! values that install a table, the dump layout and whether its TLB invalidations reach
//! every CPU.
//!
//! Implemented by [`X64`](crate::x64::X64) and by [`Aarch64<R>`](crate::aarch64::Aarch64)
//! for each translation regime `R`. Everything else a table does (transactions, queries,
//! the familiar [`PageTable`](crate::PageTable) calls, dumps) is written once, in
//! [`PagingTable`](crate::PagingTable), for every architecture.

use core::fmt::Debug;

use txpaging_txn::{Codec, Geometry, PtError};

use crate::mmu::InstallRequest;
use crate::PagingType;

pub(crate) mod sealed {
    use crate::dump::DumpFormat;

    /// The crate-private part of [`Arch`](super::Arch), and what seals it.
    pub trait Sealed {
        /// How a dump lays out this architecture's entries.
        fn dump_format() -> &'static DumpFormat;
    }
}

/// One architecture (and, on AArch64, one translation regime) a [`PagingTable`](crate::PagingTable)
/// can be built for: a zero-sized marker type, named as the first parameter of the table.
///
/// Sealed: each architecture's encoding, registers and dump layout are written out in this
/// crate. Adding an architecture, or an AArch64 regime, adds one such type.
///
/// ```
/// use txpaging::aarch64::{Aarch64, El2};
/// use txpaging::x64::X64;
/// use txpaging::{Arch, PagingType, PtError};
///
/// // X64 has no 3-level mode; AArch64 (4 KiB granule) has no 5-level one.
/// let x64 = X64::geometry(PagingType::Paging4Level, Default::default())?;
/// assert_eq!((x64.va_bits(), x64.sign_extended), (48, true));
/// assert_eq!(X64::geometry(PagingType::Paging3Level, Default::default()), Err(PtError::UnsupportedPagingType));
/// let el2 = <Aarch64<El2>>::geometry(PagingType::Paging3Level, Default::default())?;
/// assert_eq!((el2.va_bits(), el2.sign_extended), (39, false));
/// assert!(!X64::BROADCAST_INVALIDATION && <Aarch64<El2>>::BROADCAST_INVALIDATION);
/// # Ok::<(), PtError>(())
/// ```
pub trait Arch: sealed::Sealed + Sized + 'static {
    /// How entries are encoded and decoded, and how the TLB is maintained, in the engine.
    type Codec: Codec;

    /// What the CPU supports, as far as the tables and their installation are concerned.
    type Config: Copy + Debug + PartialEq + Eq;

    /// Whether the invalidations a commit issues already reach every CPU, and are complete,
    /// when the commit returns. Then no shootdown is needed and retired table pages can go
    /// back to the allocator at once (see
    /// [`TransactionalTable::BROADCAST_INVALIDATION`](crate::TransactionalTable::BROADCAST_INVALIDATION)).
    const BROADCAST_INVALIDATION: bool;

    /// The shape of `paging_type` under `config`: levels, the largest leaf, the address
    /// widths. `UnsupportedPagingType` for a mode the architecture does not have.
    fn geometry(paging_type: PagingType, config: Self::Config) -> Result<Geometry, PtError>;

    /// What installing the table at `root` of `paging_type` (shaped `geometry`) programs.
    fn install_request(root: u64, paging_type: PagingType, geometry: Geometry, config: Self::Config) -> InstallRequest;
}
