//! `Geometry`: the shape of one paging mode (levels, leaf levels, address width).
//!
//! Levels are numbered from the leaf up: level 0 entries map 4 KiB, level 1 entries
//! 2 MiB, level 2 entries 1 GiB, and the root table holds entries of level `levels - 1`.
//! Inside the engine virtual addresses are *linear*: the canonical sign extension is
//! stripped, so the whole translated space is `0..1 << va_bits` with no hole.

use crate::error::{Fault, PtError, Reason};

/// Size of a page and of a table page.
pub const PAGE_SIZE: u64 = 4096;
/// Entries in one table.
pub const ENTRIES_PER_TABLE: usize = 512;

/// The shape of one paging mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    /// Number of table levels (3, 4 or 5).
    pub levels: u8,
    /// The highest level whose entries may be leaves (1: up to 2 MiB, 2: up to 1 GiB).
    pub max_leaf_level: u8,
    /// Whether virtual addresses are sign-extended from the top translated bit (X64),
    /// or must have all upper bits clear (AArch64 TTBR0).
    pub sign_extended: bool,
    /// Width of physical addresses the descriptors can hold.
    pub pa_bits: u8,
}

impl Geometry {
    /// Number of virtual address bits translated.
    pub const fn va_bits(&self) -> u32 {
        12 + 9 * self.levels as u32
    }

    /// Level of the root table's entries.
    pub const fn top_level(&self) -> u8 {
        self.levels - 1
    }

    /// Bytes mapped by one entry of `level`.
    pub const fn entry_size(level: u8) -> u64 {
        1u64 << (12 + 9 * level as u32)
    }

    /// Index of linear address `va` in a table of `level`.
    pub const fn index(va: u64, level: u8) -> usize {
        ((va >> (12 + 9 * level as u32)) & 511) as usize
    }

    /// Whether entries of `level` may be leaves in this mode.
    pub const fn leaf_allowed(&self, level: u8) -> bool {
        level <= self.max_leaf_level
    }

    /// Linear address of `va`, or `None` if `va` is not canonical for this mode.
    pub const fn to_linear(&self, va: u64) -> Option<u64> {
        let bits = self.va_bits();
        let mask = (1u64 << bits) - 1;
        let upper = va >> (bits - 1);
        let ok = if self.sign_extended {
            upper == 0 || upper == (u64::MAX >> (bits - 1))
        } else {
            va >> bits == 0
        };
        if ok {
            Some(va & mask)
        } else {
            None
        }
    }

    /// Canonical virtual address of linear address `linear`.
    pub const fn to_canonical(&self, linear: u64) -> u64 {
        let bits = self.va_bits();
        if self.sign_extended && (linear >> (bits - 1)) & 1 == 1 {
            linear | !((1u64 << bits) - 1)
        } else {
            linear
        }
    }

    /// Checks a virtual range and returns it as linear `start..end`.
    ///
    /// Errors, in this order: `InvalidMemoryRange` (size 0), `UnalignedAddress`,
    /// `UnalignedMemoryRange`, `AdditionOverflow` (last byte beyond 2^64 - 1),
    /// `InvalidMemoryRange` (non-canonical, beyond the width, or across the canonical hole).
    pub const fn linear_range(&self, address: u64, size: u64) -> Result<(u64, u64), PtError> {
        match self.check_range(address, size) {
            Ok(range) => Ok(range),
            Err(fault) => Err(fault.code()),
        }
    }

    /// [`linear_range`](Self::linear_range) with the reason and the first failing address.
    #[inline]
    pub(crate) const fn check_range(&self, address: u64, size: u64) -> Result<(u64, u64), Fault> {
        // The common case first: a page-aligned range inside the lower half, where linear
        // and canonical addresses are the same (the checks below give the same answer).
        let lower_half_end = 1u64 << (self.va_bits() - 1);
        if size != 0
            && (address | size) % PAGE_SIZE == 0
            && address < lower_half_end
            && size <= lower_half_end - address
        {
            return Ok((address, address + size));
        }
        self.check_range_fully(address, size)
    }

    /// [`check_range`](Self::check_range) for every range.
    const fn check_range_fully(&self, address: u64, size: u64) -> Result<(u64, u64), Fault> {
        if size == 0 {
            return Err(Fault::new(Reason::EmptyRange, address));
        }
        if address % PAGE_SIZE != 0 {
            return Err(Fault::new(Reason::UnalignedAddress, address));
        }
        if size % PAGE_SIZE != 0 {
            return Err(Fault::new(Reason::UnalignedSize, address));
        }
        let last = match address.checked_add(size - 1) {
            Some(last) => last,
            None => return Err(Fault::new(Reason::AddressOverflow, address)),
        };
        let start = match self.to_linear(address) {
            Some(start) => start,
            None => return Err(Fault::new(self.non_canonical_reason(address), address)),
        };
        match self.to_linear(last) {
            Some(last_linear) if last_linear - start == size - 1 => Ok((start, last_linear + 1)),
            // The first address past the translated range the op runs into.
            _ => {
                let bits = self.va_bits();
                let va_bits = bits as u8;
                if self.sign_extended && address >> (bits - 1) == 0 {
                    Err(Fault::new(Reason::CrossesCanonicalHole { va_bits }, 1 << (bits - 1)))
                } else {
                    Err(Fault::new(Reason::BeyondAddressWidth { va_bits }, 1 << bits))
                }
            }
        }
    }

    /// Why `va`, which [`to_linear`](Self::to_linear) refused, is refused.
    const fn non_canonical_reason(&self, va: u64) -> Reason {
        let bits = self.va_bits();
        let va_bits = bits as u8;
        let upper = va >> bits;
        if self.sign_extended && (upper == 0 || upper == u64::MAX >> bits) {
            Reason::NonCanonical { va_bits }
        } else {
            Reason::BeyondAddressWidth { va_bits }
        }
    }

    /// Checks the physical range of an aliased map: `UnalignedPageBase` if `pa` is not
    /// page aligned, `AdditionOverflow` on overflow, `InvalidMemoryRange` beyond `pa_bits`.
    pub const fn check_physical_range(&self, pa: u64, size: u64) -> Result<(), PtError> {
        match self.check_physical(pa, size) {
            Ok(()) => Ok(()),
            Err(fault) => Err(fault.code()),
        }
    }

    /// [`check_physical_range`](Self::check_physical_range) with the reason and the first
    /// failing physical address.
    pub(crate) const fn check_physical(&self, pa: u64, size: u64) -> Result<(), Fault> {
        if pa % PAGE_SIZE != 0 {
            return Err(Fault::new(Reason::UnalignedPhysicalAddress, pa));
        }
        let last = match pa.checked_add(size.saturating_sub(1)) {
            Some(last) => last,
            None => return Err(Fault::new(Reason::PhysicalOverflow, pa)),
        };
        if last >> self.pa_bits != 0 {
            let top = 1u64 << self.pa_bits;
            let first = if pa > top { pa } else { top };
            return Err(Fault::new(Reason::PhysicalBeyondWidth { pa_bits: self.pa_bits }, first));
        }
        Ok(())
    }
}
