//! `Op`: one requested change, and the check of its arguments. A leaf module: the engine's
//! other modules use it, it uses none of them.

use core::fmt;

use crate::attributes::MemoryAttributes;
use crate::codec::Codec;
use crate::error::{Fault, PtError, Reason};
use crate::geometry::Geometry;
use crate::hex::Hex;
use crate::overlay::Change;

/// One queued request. `Debug` prints addresses and sizes in hex.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// Map `size` bytes at virtual `va` to physical `pa`.
    Map {
        /// Virtual address.
        va: u64,
        /// Physical address.
        pa: u64,
        /// Bytes.
        size: u64,
        /// Attributes of the new mapping.
        attributes: MemoryAttributes,
    },
    /// Unmap `size` bytes at `va` (all must be mapped).
    Unmap {
        /// Virtual address.
        va: u64,
        /// Bytes.
        size: u64,
    },
    /// Change the attributes of `size` mapped bytes at `va`, keeping output addresses.
    Protect {
        /// Virtual address.
        va: u64,
        /// Bytes.
        size: u64,
        /// New access bits, and the new cache type if one is given.
        attributes: MemoryAttributes,
    },
}

impl Op {
    /// The op's virtual address.
    pub const fn va(&self) -> u64 {
        match *self {
            Op::Map { va, .. } | Op::Unmap { va, .. } | Op::Protect { va, .. } => va,
        }
    }

    /// The op's size in bytes.
    pub const fn size(&self) -> u64 {
        match *self {
            Op::Map { size, .. } | Op::Unmap { size, .. } | Op::Protect { size, .. } => size,
        }
    }

    /// `self` and `next` as one map, if both map and `next` maps the virtual bytes right
    /// after `self`'s to the physical bytes right after, with the same attributes.
    #[inline]
    pub(crate) fn joined(&self, next: &Op) -> Option<Op> {
        match (*self, *next) {
            (
                Op::Map {
                    va,
                    pa,
                    size,
                    attributes,
                },
                Op::Map {
                    va: next_va,
                    pa: next_pa,
                    size: next_size,
                    attributes: next_attributes,
                },
            ) if attributes == next_attributes
                && va.checked_add(size) == Some(next_va)
                && pa.checked_add(size) == Some(next_pa) =>
            {
                Some(Op::Map {
                    va,
                    pa,
                    size: size.checked_add(next_size)?,
                    attributes,
                })
            }
            _ => None,
        }
    }
}

impl fmt::Debug for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Op::Map {
                va,
                pa,
                size,
                attributes,
            } => f
                .debug_struct("Map")
                .field("va", &Hex(va))
                .field("pa", &Hex(pa))
                .field("size", &Hex(size))
                .field("attributes", &attributes)
                .finish(),
            Op::Unmap { va, size } => f
                .debug_struct("Unmap")
                .field("va", &Hex(va))
                .field("size", &Hex(size))
                .finish(),
            Op::Protect { va, size, attributes } => f
                .debug_struct("Protect")
                .field("va", &Hex(va))
                .field("size", &Hex(size))
                .field("attributes", &attributes)
                .finish(),
        }
    }
}

/// Checks one op's arguments and turns it into a linear range and a change. Inlined: the
/// batch path calls it once per op, and the common case is a few compares.
#[inline(always)]
pub(crate) fn check_op<C: Codec>(geometry: &Geometry, op: &Op) -> Result<(u64, u64, Change), Fault> {
    match *op {
        Op::Map {
            va,
            pa,
            size,
            attributes,
        } => {
            let (start, end) = geometry.check_range(va, size)?;
            geometry.check_physical(pa, size).map_err(|fault| {
                let high_half = geometry.sign_extended && va >> 63 == 1;
                match fault.reason {
                    Reason::PhysicalBeyondWidth { pa_bits } if va == pa && high_half => {
                        Fault::new(Reason::HighHalfIdentityMap { pa_bits }, va)
                    }
                    _ => fault,
                }
            })?;
            C::check_map_attributes(attributes).map_err(|error| attribute_fault(error, attributes, va))?;
            Ok((start, end, Change::Map { pa, attributes }))
        }
        Op::Unmap { va, size } => {
            let (start, end) = geometry.check_range(va, size)?;
            Ok((start, end, Change::Unmap))
        }
        Op::Protect { va, size, attributes } => {
            let (start, end) = geometry.check_range(va, size)?;
            C::check_protect_attributes(attributes).map_err(|error| attribute_fault(error, attributes, va))?;
            Ok((start, end, Change::Protect { attributes }))
        }
    }
}

/// The reason a codec refused `attributes` with `error`, for an op at `va`.
#[cold]
fn attribute_fault(error: PtError, attributes: MemoryAttributes, va: u64) -> Fault {
    let reason = match error {
        PtError::InvalidParameter => Reason::UnknownAttributeBits {
            bits: attributes.unknown_bits(),
        },
        PtError::IncompatibleMemoryAttributes if attributes.cache().is_empty() => Reason::MissingCacheAttribute,
        PtError::IncompatibleMemoryAttributes => Reason::SeveralCacheAttributes,
        _ => Reason::Internal,
    };
    Fault::new(reason, va)
}
