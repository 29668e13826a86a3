//! Errors: `PtError` (the familiar codes) and `TxnError` (which op of a transaction failed).

use core::fmt;

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
    /// The range is empty, non-canonical or beyond what the paging mode translates.
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

/// A failed transaction: the error, and the index of the op (in queue order) that caused it.
///
/// `op` is `None` when no single op is to blame (an allocation failure, an internal error).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TxnError {
    /// Index of the first failing op, in the order the ops were queued.
    pub op: Option<usize>,
    /// What went wrong.
    pub error: PtError,
}

impl TxnError {
    /// An error caused by op number `op`.
    pub const fn at(op: usize, error: PtError) -> Self {
        Self { op: Some(op), error }
    }

    /// An error of the transaction as a whole.
    pub const fn whole(error: PtError) -> Self {
        Self { op: None, error }
    }
}

impl fmt::Display for TxnError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.op {
            Some(op) => write!(f, "op {op} failed: {}", self.error),
            None => write!(f, "transaction failed: {}", self.error),
        }
    }
}

impl core::error::Error for TxnError {}

impl From<TxnError> for PtError {
    fn from(e: TxnError) -> Self {
        e.error
    }
}
