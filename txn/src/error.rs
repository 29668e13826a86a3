//! Errors: `PtError` (the familiar codes), `Reason` (the rule behind one), and `TxnError`
//! (which op of a transaction failed, where, and why).

use core::fmt;

use crate::hex::Hex;

/// Why a paging operation failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PtError {
    /// An argument is invalid (for example unknown attribute bits).
    InvalidParameter,
    /// The allocator ran out of memory.
    OutOfResources,
    /// Part of the range is not mapped.
    NoMapping,
    /// The attributes conflict (more than one cache type, or none where one is required).
    IncompatibleMemoryAttributes,
    /// A physical base address is not aligned to the page size.
    UnalignedPageBase,
    /// The address is not aligned to the page size.
    UnalignedAddress,
    /// The size is not a multiple of the page size.
    UnalignedMemoryRange,
    /// The range is empty, non-canonical or beyond what the paging mode translates, or its
    /// physical range is beyond what the entries hold. [`Reason`] says which.
    InvalidMemoryRange,
    /// The range holds both mapped and unmapped pages.
    InconsistentMappingAcrossRange,
    /// The paging mode is not supported by this table type.
    UnsupportedPagingType,
    /// Address plus size overflows 64 bits.
    AdditionOverflow,
    /// An address computation underflowed.
    SubtractionUnderflow,
    /// An internal invariant broke: a bug in this crate.
    InternalError,
    /// The page allocator failed to provide a table page.
    AllocationFailure,
    /// The pages of the range do not all have the same attributes.
    NonUniformMemoryAttributes,
    /// The table was entered again while an operation on it was in progress (for example
    /// by the page allocator); the inner call is refused.
    ReentrantCall,
    /// The commit would have to break (briefly unmap) a live entry covering a range the
    /// caller pinned (the code, stack or tables running the commit).
    PinnedRangeBreak,
}

impl fmt::Display for PtError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = match self {
            Self::InvalidParameter => "invalid parameter",
            Self::OutOfResources => "out of resources",
            Self::NoMapping => "part of the range is not mapped",
            Self::IncompatibleMemoryAttributes => "incompatible memory attributes",
            Self::UnalignedPageBase => "physical base address is not page aligned",
            Self::UnalignedAddress => "address is not page aligned",
            Self::UnalignedMemoryRange => "size is not a multiple of the page size",
            Self::InvalidMemoryRange => "invalid memory range",
            Self::InconsistentMappingAcrossRange => "range is partly mapped",
            Self::UnsupportedPagingType => "unsupported paging type",
            Self::AdditionOverflow => "address computation overflows",
            Self::SubtractionUnderflow => "address computation underflows",
            Self::InternalError => "internal error",
            Self::AllocationFailure => "page allocation failed",
            Self::NonUniformMemoryAttributes => "attributes differ across the range",
            Self::PinnedRangeBreak => "the change needs break-before-make on a pinned range",
            Self::ReentrantCall => "the table is busy with an operation of this CPU (re-entered)",
        };
        f.write_str(text)
    }
}

impl core::error::Error for PtError {}

/// The rule an input broke, or what else went wrong: the detail beside a [`PtError`].
///
/// Several reasons share one `PtError` (the seed's codes, which code matches on): size 0,
/// a non-canonical address and a physical address beyond 2^52 are all
/// [`PtError::InvalidMemoryRange`], and [`Reason::code`] gives that code back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Reason {
    /// No detail recorded (an error built from a bare [`PtError`]).
    Unspecified,
    /// The size is 0 (`InvalidMemoryRange`).
    EmptyRange,
    /// The virtual address is not a multiple of 4 KiB (`UnalignedAddress`).
    UnalignedAddress,
    /// The size is not a multiple of 4 KiB (`UnalignedMemoryRange`).
    UnalignedSize,
    /// Address plus size runs past 2^64 (`AdditionOverflow`).
    AddressOverflow,
    /// The address is at or above 2^`va_bits` and (on X64) not in the high half: beyond
    /// what this paging mode translates (`InvalidMemoryRange`).
    BeyondAddressWidth {
        /// Virtual address bits the table translates (39, 48 or 57).
        va_bits: u8,
    },
    /// X64: the address is below 2^`va_bits` but not canonical: bits 63 down to
    /// `va_bits - 1` must all be equal (`InvalidMemoryRange`).
    NonCanonical {
        /// Virtual address bits the table translates (48 or 57).
        va_bits: u8,
    },
    /// X64: the range starts in the low half and runs into the non-canonical hole at
    /// 2^(`va_bits` - 1) (`InvalidMemoryRange`).
    CrossesCanonicalHole {
        /// Virtual address bits the table translates (48 or 57).
        va_bits: u8,
    },
    /// An identity map (VA == PA) of a high-half address: as a physical address it is at or
    /// above 2^`pa_bits` (`InvalidMemoryRange`). Map it with an aliased map instead.
    HighHalfIdentityMap {
        /// Physical address bits an entry holds.
        pa_bits: u8,
    },
    /// The physical range reaches 2^`pa_bits` or beyond (`InvalidMemoryRange`).
    PhysicalBeyondWidth {
        /// Physical address bits an entry holds (52 on X64, 48 on AArch64).
        pa_bits: u8,
    },
    /// The physical address is not a multiple of 4 KiB (`UnalignedPageBase`).
    UnalignedPhysicalAddress,
    /// Physical address plus size runs past 2^64 (`AdditionOverflow`).
    PhysicalOverflow,
    /// The attributes hold bits that are no UEFI cache or access attribute (`InvalidParameter`).
    UnknownAttributeBits {
        /// The unknown bits.
        bits: u64,
    },
    /// More than one cache attribute (`IncompatibleMemoryAttributes`).
    SeveralCacheAttributes,
    /// AArch64: a map names no cache attribute; exactly one is required
    /// (`IncompatibleMemoryAttributes`).
    MissingCacheAttribute,
    /// Unmap and protect need the whole range mapped; nothing is mapped here (`NoMapping`).
    NotMapped,
    /// A query needs the whole range mapped; nothing is mapped here (`NoMapping`).
    QueriedNotMapped,
    /// A query's pages differ: the attributes here are not those at the start of the range
    /// (`NonUniformMemoryAttributes`).
    AttributesDiffer,
    /// The commit would break a live entry covering a pinned range (`PinnedRangeBreak`).
    PinnedRangeBreak,
    /// The page allocator failed to give a table page; the code is its error.
    AllocatorFailed,
    /// The page allocator returned a table page that is not 4 KiB aligned (`UnalignedPageBase`).
    UnalignedTablePage,
    /// The table was re-entered during an operation on it (`ReentrantCall`).
    Reentered,
    /// A request to the mapping service holds more ops than it accepts (`InvalidParameter`).
    TooManyOps {
        /// Ops in the request.
        ops: usize,
        /// Most ops one request may hold.
        max: usize,
    },
    /// The final state breaks a rule of the table's [`Policy`](crate::Policy)
    /// (`IncompatibleMemoryAttributes`: the attributes asked for are not allowed there).
    PolicyViolation {
        /// The rule.
        rule: crate::rule::Rule,
    },
    /// An internal invariant broke: a bug in this crate (`InternalError`).
    Internal,
}

impl Reason {
    /// The familiar code this reason is reported with, or `None` where it depends on the
    /// caller ([`Unspecified`](Self::Unspecified), and [`AllocatorFailed`](Self::AllocatorFailed),
    /// which carries the allocator's own code).
    pub const fn code(&self) -> Option<PtError> {
        Some(match self {
            Self::Unspecified | Self::AllocatorFailed => return None,
            Self::EmptyRange
            | Self::BeyondAddressWidth { .. }
            | Self::NonCanonical { .. }
            | Self::CrossesCanonicalHole { .. }
            | Self::HighHalfIdentityMap { .. }
            | Self::PhysicalBeyondWidth { .. } => PtError::InvalidMemoryRange,
            Self::UnalignedAddress => PtError::UnalignedAddress,
            Self::UnalignedSize => PtError::UnalignedMemoryRange,
            Self::AddressOverflow | Self::PhysicalOverflow => PtError::AdditionOverflow,
            Self::UnalignedPhysicalAddress | Self::UnalignedTablePage => PtError::UnalignedPageBase,
            Self::UnknownAttributeBits { .. } | Self::TooManyOps { .. } => PtError::InvalidParameter,
            Self::SeveralCacheAttributes | Self::MissingCacheAttribute | Self::PolicyViolation { .. } => {
                PtError::IncompatibleMemoryAttributes
            }
            Self::NotMapped | Self::QueriedNotMapped => PtError::NoMapping,
            Self::AttributesDiffer => PtError::NonUniformMemoryAttributes,
            Self::PinnedRangeBreak => PtError::PinnedRangeBreak,
            Self::Reentered => PtError::ReentrantCall,
            Self::Internal => PtError::InternalError,
        })
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::Unspecified => f.write_str("no detail recorded"),
            Self::EmptyRange => f.write_str("the size is 0"),
            Self::UnalignedAddress => f.write_str("the address must be a multiple of 4 KiB (0x1000)"),
            Self::UnalignedSize => f.write_str("the size must be a multiple of 4 KiB (0x1000)"),
            Self::AddressOverflow => f.write_str("address + size runs past 2^64"),
            Self::BeyondAddressWidth { va_bits } => write!(
                f,
                "the address is at or above 2^{va_bits}, beyond the {va_bits}-bit virtual range this table translates"
            ),
            Self::NonCanonical { va_bits } => write!(
                f,
                "the address is not canonical: bits 63..{} must all equal bit {}",
                va_bits - 1,
                va_bits - 1
            ),
            Self::CrossesCanonicalHole { va_bits } => write!(
                f,
                "the range runs from the low half into the non-canonical hole, which starts at 2^{}",
                va_bits - 1
            ),
            Self::HighHalfIdentityMap { pa_bits } => write!(
                f,
                "an identity map (VA == PA) of a high-half address: as a physical address it is at or above \
                 2^{pa_bits}; map it aliased to a lower physical address"
            ),
            Self::PhysicalBeyondWidth { pa_bits } => {
                write!(f, "the physical range reaches 2^{pa_bits}, beyond what an entry holds")
            }
            Self::UnalignedPhysicalAddress => f.write_str("the physical address must be a multiple of 4 KiB (0x1000)"),
            Self::PhysicalOverflow => f.write_str("physical address + size runs past 2^64"),
            Self::UnknownAttributeBits { bits } => write!(
                f,
                "unknown attribute bits {bits:#x}: only the UEFI cache and access attributes are accepted"
            ),
            Self::SeveralCacheAttributes => f.write_str("more than one cache attribute: name at most one"),
            Self::MissingCacheAttribute => f.write_str(
                "no cache attribute: AArch64 needs exactly one of Uncached, WriteCombining, WriteThrough or \
                 Writeback (or UncachedExport, WriteProtect)",
            ),
            Self::NotMapped => f.write_str("nothing is mapped there; unmap and protect need the whole range mapped"),
            Self::QueriedNotMapped => f.write_str("nothing is mapped there; a query needs the whole range mapped"),
            Self::AttributesDiffer => f.write_str("the attributes here differ from those at the start of the range"),
            Self::PinnedRangeBreak => f.write_str("a live entry covering a pinned range would be broken"),
            Self::AllocatorFailed => f.write_str("the page allocator gave no table page"),
            Self::UnalignedTablePage => f.write_str("the page allocator returned a page that is not 4 KiB aligned"),
            Self::Reentered => f.write_str("the table was entered again during an operation on it"),
            Self::TooManyOps { ops, max } => write!(f, "{ops} ops in one request; at most {max} are accepted"),
            Self::PolicyViolation { rule } => write!(f, "the protection policy forbids it: {rule}"),
            Self::Internal => f.write_str("an internal invariant broke (a bug in txpaging)"),
        }
    }
}

/// A failed transaction: which op failed (in queue order), its range, the first address
/// where it failed, the familiar code, and the rule it broke.
///
/// `op` is `None` when no single op is to blame (an allocation failure, a pinned-range
/// break, an internal error); `range` is then `None` too. A query's error
/// (`query_detail`) has no op and the queried range.
///
/// ```
/// use txpaging_txn::{PtError, Reason, TxnError};
///
/// let e = TxnError::at(2, PtError::NoMapping)
///     .with_range(0x20_0000, 0x2000)
///     .with_detail(Reason::NotMapped, 0x20_1000);
/// assert_eq!(
///     e.to_string(),
///     "op 2 (0x200000, size 0x2000) failed at 0x201000: part of the range is not mapped: \
///      nothing is mapped there; unmap and protect need the whole range mapped"
/// );
/// assert_eq!(PtError::from(e), PtError::NoMapping);
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TxnError {
    /// Index of the first failing op, in the order the ops were queued.
    pub op: Option<usize>,
    /// What went wrong, as the familiar code.
    pub error: PtError,
    /// The rule that was broken, or what else went wrong.
    pub reason: Reason,
    /// The failing op's virtual range as given: `(address, size)`.
    pub range: Option<(u64, u64)>,
    /// The first address where the op failed: virtual for range and mapping errors,
    /// physical for [`Reason::PhysicalBeyondWidth`] and the other physical reasons, the
    /// returned page for [`Reason::UnalignedTablePage`].
    pub address: Option<u64>,
}

/// Whom a failure blames: one op, or the transaction as a whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Blame {
    /// Op number `n` (in queue order).
    Op(usize),
    /// No single op (an allocation failure, a pinned-range break, an internal error).
    Transaction,
}

impl TxnError {
    /// An error caused by op number `op`.
    pub const fn at(op: usize, error: PtError) -> Self {
        Self {
            op: Some(op),
            error,
            reason: Reason::Unspecified,
            range: None,
            address: None,
        }
    }

    /// An error of the transaction as a whole.
    pub const fn whole(error: PtError) -> Self {
        Self {
            op: None,
            error,
            reason: Reason::Unspecified,
            range: None,
            address: None,
        }
    }

    /// An error that `blame` names.
    pub const fn blaming(blame: Blame, error: PtError) -> Self {
        match blame {
            Blame::Op(op) => Self::at(op, error),
            Blame::Transaction => Self::whole(error),
        }
    }

    /// Whom the error blames.
    pub const fn blame(&self) -> Blame {
        match self.op {
            Some(op) => Blame::Op(op),
            None => Blame::Transaction,
        }
    }

    /// This error with the failing op's range.
    pub const fn with_range(mut self, address: u64, size: u64) -> Self {
        self.range = Some((address, size));
        self
    }

    /// This error with its reason and the first failing address.
    pub const fn with_detail(mut self, reason: Reason, address: u64) -> Self {
        self.reason = reason;
        self.address = Some(address);
        self
    }

    /// This error with its reason (no address applies).
    pub const fn with_reason(mut self, reason: Reason) -> Self {
        self.reason = reason;
        self
    }

    /// The op number and the familiar code: what a caller that only knows the seed's
    /// codes compares.
    pub const fn code(&self) -> (Option<usize>, PtError) {
        (self.op, self.error)
    }
}

impl fmt::Debug for TxnError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TxnError")
            .field("op", &self.op)
            .field("error", &self.error)
            .field("reason", &self.reason)
            .field("range", &self.range.map(|(a, s)| (Hex(a), Hex(s))))
            .field("address", &self.address.map(Hex))
            .finish()
    }
}

impl fmt::Display for TxnError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.op, self.range) {
            (Some(op), _) => write!(f, "op {op}")?,
            // A range without an op: the error of a query (`query_detail`).
            (None, Some(_)) => f.write_str("query")?,
            (None, None) => f.write_str("transaction")?,
        }
        if let Some((address, size)) = self.range {
            write!(f, " ({address:#x}, size {size:#x})")?;
        }
        f.write_str(" failed")?;
        if let Some(address) = self.address {
            write!(f, " at {address:#x}")?;
        }
        write!(f, ": {}", self.error)?;
        if self.reason != Reason::Unspecified {
            write!(f, ": {}", self.reason)?;
        }
        Ok(())
    }
}

impl core::error::Error for TxnError {}

impl From<TxnError> for PtError {
    fn from(e: TxnError) -> Self {
        e.error
    }
}

/// A failed check: the code, the rule, and the address where it failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Fault {
    pub(crate) reason: Reason,
    pub(crate) address: u64,
}

impl Fault {
    /// A fault of `reason` at `address`. `reason` must have a fixed [`Reason::code`].
    pub(crate) const fn new(reason: Reason, address: u64) -> Self {
        Self { reason, address }
    }

    /// The familiar code.
    pub(crate) const fn code(&self) -> PtError {
        match self.reason.code() {
            Some(code) => code,
            None => PtError::InternalError,
        }
    }

    /// The transaction error of op `op` (which covers `address`, `size`).
    pub(crate) const fn at_op(&self, op: usize, address: u64, size: u64) -> TxnError {
        TxnError::at(op, self.code())
            .with_range(address, size)
            .with_detail(self.reason, self.address)
    }
}

impl From<Fault> for PtError {
    fn from(fault: Fault) -> Self {
        fault.code()
    }
}
