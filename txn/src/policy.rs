//! `Policy`: protection rules a table's final state must obey, checked when a transaction
//! is validated, before any store.
//!
//! The check runs over the overlay (the final state of every range the transaction
//! touches), so its cost follows the change, not the table. Only a protect that names no
//! cache type and leaves its pages executable reads the table (for the cache type each
//! page keeps), and only over its own range.

use alloc::vec::Vec;
use bitflags::bitflags;

use crate::attributes::MemoryAttributes;
use crate::error::PtError;
use crate::geometry::{Geometry, PAGE_SIZE};
use crate::overlay::{Action, Segment};
use crate::rule::Rule;

bitflags! {
    /// The table-wide rules of a [`Policy`].
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
    pub struct Rules: u8 {
        /// No page both writable and executable (W^X): every present page has `ReadOnly`
        /// or `ExecuteProtect`.
        const WRITE_XOR_EXECUTE = 1;
        /// The NULL page (virtual 0..4 KiB) is never present.
        const NO_NULL_PAGE = 2;
        /// No executable `Uncached` or `UncachedExport` (MMIO) page.
        const NO_EXECUTABLE_MMIO = 4;
    }
}

/// Protection rules for a table, checked when a transaction is planned or committed.
///
/// Off by default ([`Policy::default`]): no rule, the seed API's meaning. A transaction whose
/// final state breaks a rule fails with [`PtError::IncompatibleMemoryAttributes`] and
/// [`Reason::PolicyViolation`](crate::Reason::PolicyViolation) before any store; the error
/// names the rule, the last op covering the first offending address, and that address.
///
/// ```
/// use txpaging::{MemoryAttributes as A, PagePool, PageTable, PagingType, Policy, PtError, Reason, Rule, X64PageTable};
///
/// let mut table = X64PageTable::new(PagePool::new(16), PagingType::Paging4Level)?;
/// table.set_policy(Policy::strict().code(0x10_0000, 0x1_0000))?;
/// let error = table
///     .transaction()
///     .map(0x10_0000, 0x1_0000, A::Writeback | A::ReadOnly) // code: read-only, executable
///     .map(0x20_0000, 0x1000, A::Writeback) // writable and executable
///     .commit()
///     .unwrap_err();
/// assert_eq!(error.reason, Reason::PolicyViolation { rule: Rule::WriteXorExecute });
/// assert_eq!((error.op, error.address), (Some(1), Some(0x20_0000)));
/// assert_eq!(error.error, PtError::IncompatibleMemoryAttributes);
/// assert_eq!(table.table_pages(), 1); // nothing changed
/// # Ok::<(), Box<dyn core::error::Error>>(())
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy {
    rules: Rules,
    code: Vec<(u64, u64)>,
    data: Vec<(u64, u64)>,
}

impl Policy {
    /// No rule: every change the table accepts is allowed.
    pub const fn off() -> Self {
        Self {
            rules: Rules::empty(),
            code: Vec::new(),
            data: Vec::new(),
        }
    }

    /// W^X, no NULL page and no executable MMIO.
    pub const fn strict() -> Self {
        Self {
            rules: Rules::all(),
            code: Vec::new(),
            data: Vec::new(),
        }
    }

    /// This policy with exactly the table-wide `rules`.
    pub fn with_rules(mut self, rules: Rules) -> Self {
        self.rules = rules;
        self
    }

    /// This policy with `size` bytes at virtual `address` registered as code: every
    /// present page there must be `ReadOnly`.
    pub fn code(mut self, address: u64, size: u64) -> Self {
        self.code.push((address, size));
        self
    }

    /// This policy with `size` bytes at virtual `address` registered as data: every
    /// present page there must be `ExecuteProtect`.
    pub fn data(mut self, address: u64, size: u64) -> Self {
        self.data.push((address, size));
        self
    }

    /// The table-wide rules.
    pub fn rules(&self) -> Rules {
        self.rules
    }

    /// The registered code ranges, as `(address, size)`.
    pub fn code_ranges(&self) -> &[(u64, u64)] {
        &self.code
    }

    /// The registered data ranges, as `(address, size)`.
    pub fn data_ranges(&self) -> &[(u64, u64)] {
        &self.data
    }

    /// Whether no rule applies (no table-wide rule, no registered range).
    pub fn is_off(&self) -> bool {
        self.rules.is_empty() && self.code.is_empty() && self.data.is_empty()
    }
}

/// A policy in a table's linear addresses.
#[derive(Debug, Clone, Default)]
pub(crate) struct LinearPolicy {
    pub(crate) rules: Rules,
    pub(crate) code: Vec<(u64, u64)>,
    pub(crate) data: Vec<(u64, u64)>,
}

impl LinearPolicy {
    /// `policy` with its ranges checked and made linear in `geometry`.
    pub(crate) fn new(policy: &Policy, geometry: &Geometry) -> Result<Self, PtError> {
        // Sorted and merged, so a segment finds the ranges it overlaps by binary search.
        let linear = |ranges: &[(u64, u64)]| -> Result<Vec<(u64, u64)>, PtError> {
            let mut linear = ranges
                .iter()
                .map(|&(a, s)| geometry.linear_range(a, s))
                .collect::<Result<Vec<_>, _>>()?;
            linear.sort_unstable();
            let mut merged: Vec<(u64, u64)> = Vec::with_capacity(linear.len());
            for (start, end) in linear {
                match merged.last_mut() {
                    Some(last) if start <= last.1 => last.1 = last.1.max(end),
                    _ => merged.push((start, end)),
                }
            }
            Ok(merged)
        };
        Ok(Self {
            rules: policy.rules,
            code: linear(&policy.code)?,
            data: linear(&policy.data)?,
        })
    }

    /// The first linear address of `segments` (sorted) whose final state breaks a rule,
    /// with the rule. `mmio_in(start, end)` gives the first linear address in `start..end`
    /// the table maps `Uncached`/`UncachedExport` today (for protects that keep the cache
    /// type).
    pub(crate) fn first_violation(
        &self,
        segments: &[Segment],
        mmio_in: &mut dyn FnMut(u64, u64) -> Option<u64>,
    ) -> Option<(Rule, u64)> {
        segments.iter().find_map(|segment| self.violation_in(segment, mmio_in))
    }

    fn violation_in(&self, s: &Segment, mmio_in: &mut dyn FnMut(u64, u64) -> Option<u64>) -> Option<(Rule, u64)> {
        let attributes = s.attributes;
        if matches!(s.action, Action::Unmap) || attributes.contains(MemoryAttributes::ReadProtect) {
            return None;
        }
        let writable = !attributes.contains(MemoryAttributes::ReadOnly);
        let executable = !attributes.contains(MemoryAttributes::ExecuteProtect);
        let mut found: Option<(Rule, u64)> = None;
        let mut note = |rule: Rule, address: u64| {
            if found.is_none_or(|(r, a)| (address, rule) < (a, r)) {
                found = Some((rule, address));
            }
        };
        if self.rules.contains(Rules::NO_NULL_PAGE) && s.start < PAGE_SIZE {
            note(Rule::NullPage, s.start);
        }
        if self.rules.contains(Rules::WRITE_XOR_EXECUTE) && writable && executable {
            note(Rule::WriteXorExecute, s.start);
        }
        if self.rules.contains(Rules::NO_EXECUTABLE_MMIO) && executable {
            let mmio = MemoryAttributes::Uncached | MemoryAttributes::UncachedExport;
            let cache = attributes.cache();
            let kept = matches!(s.action, Action::Protect) && cache.is_empty();
            if kept {
                if let Some(address) = mmio_in(s.start, s.end) {
                    note(Rule::ExecutableMmio, address);
                }
            } else if cache.intersects(mmio) {
                note(Rule::ExecutableMmio, s.start);
            }
        }
        let mut overlap = |ranges: &[(u64, u64)], rule: Rule| {
            // The first range ending after the segment's start: the only one that can hold
            // the segment's first offending address.
            let first = ranges.partition_point(|&(_, end)| end <= s.start);
            if let Some(&(start, _)) = ranges.get(first).filter(|&&(start, _)| start < s.end) {
                note(rule, start.max(s.start));
            }
        };
        if writable {
            overlap(&self.code, Rule::WritableCode);
        }
        if executable {
            overlap(&self.data, Rule::ExecutableData);
        }
        found
    }
}
