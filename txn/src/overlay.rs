//! The overlay: the ops of a transaction folded, in queue order, into sorted,
//! non-overlapping segments that say what each touched range becomes.
//!
//! Later ops overwrite earlier ones. An unmap or protect that falls on a range no earlier
//! op touched requires that range to be mapped in the table; the segment remembers the op
//! (`check`) so the planner can verify it against the table. Where a later map overwrites
//! such a segment, the requirement is kept in `deferred_checks`.

use alloc::vec::Vec;

use smallvec::SmallVec;

use crate::attributes::MemoryAttributes;
use crate::error::{Fault, Reason};
use crate::report::FinalState;

/// What a segment does to its range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Map the range to `pa` (the physical address of the segment's first byte).
    Map {
        /// Physical address of `start`.
        pa: u64,
    },
    /// Leave the range unmapped.
    Unmap,
    /// Keep each page's output address, set access bits, and the cache type if given.
    Protect,
}

/// One range of the overlay (linear addresses, page aligned, `start < end`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    /// First byte.
    pub start: u64,
    /// One past the last byte.
    pub end: u64,
    /// What happens to the range.
    pub action: Action,
    /// Attributes for `Map`, the change for `Protect`, empty for `Unmap`.
    pub attributes: MemoryAttributes,
    /// The first op that requires this range to be mapped in the table as it was.
    pub check: Option<u32>,
}

impl Segment {
    /// This segment cut to `start..end` (which must lie inside it).
    fn cut(&self, start: u64, end: u64) -> Segment {
        let action = match self.action {
            Action::Map { pa } => Action::Map {
                pa: pa + (start - self.start),
            },
            other => other,
        };
        Segment {
            start,
            end,
            action,
            ..*self
        }
    }

    /// The change the segment makes to its first page.
    pub(crate) fn change(&self) -> Change {
        match self.action {
            Action::Map { pa } => Change::Map {
                pa,
                attributes: self.attributes,
            },
            Action::Unmap => Change::Unmap,
            Action::Protect => Change::Protect {
                attributes: self.attributes,
            },
        }
    }

    /// Whether `next` continues `self` with the same effect (ignoring `check`).
    #[inline]
    pub fn continued_by(&self, next: &Segment) -> bool {
        self.end == next.start
            && self.attributes == next.attributes
            && match (self.action, next.action) {
                (Action::Map { pa }, Action::Map { pa: next_pa }) => {
                    pa.checked_add(self.end - self.start) == Some(next_pa)
                }
                (Action::Unmap, Action::Unmap) | (Action::Protect, Action::Protect) => true,
                _ => false,
            }
    }
}

/// A range the table (before the transaction) must have fully mapped, and the op that needs it.
pub type Check = (u64, u64, u32);

impl From<Change> for FinalState {
    /// What a range becomes, as a plan reports it, from the change a segment makes.
    fn from(change: Change) -> Self {
        match change {
            Change::Map { pa, attributes } => FinalState::Mapped { pa, attributes },
            Change::Unmap => FinalState::Unmapped,
            Change::Protect { attributes } => FinalState::Reprotected { attributes },
        }
    }
}

/// One checked op, ready to fold: its number, linear range and change.
pub(crate) type Folding = (u32, u64, u64, Change);

/// The folded ops of a transaction.
#[derive(Debug, Clone, Default)]
pub struct Overlay {
    segments: SmallVec<[Segment; 2]>,
    deferred_checks: SmallVec<[Check; 1]>,
}

/// An op's effect on the overlay, before it is folded.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Change {
    Map { pa: u64, attributes: MemoryAttributes },
    Unmap,
    Protect { attributes: MemoryAttributes },
}

impl Overlay {
    /// The segments, sorted by address.
    pub fn segments(&self) -> &[Segment] {
        &self.segments
    }

    /// Requirements whose segments were overwritten by later maps.
    pub fn deferred_checks(&self) -> &[Check] {
        &self.deferred_checks
    }

    /// Folds op number `op` changing linear `start..end`. Fails with [`Reason::NotMapped`]
    /// at the first such linear address if it unmaps or protects a range an earlier op of
    /// the transaction left unmapped.
    #[inline]
    pub(crate) fn fold(&mut self, op: u32, start: u64, end: u64, change: Change) -> Result<(), Fault> {
        // Ops in address order (the common batch) only append: no search, no splice.
        let after_all = self.segments.last().is_none_or(|last| last.end <= start);
        if after_all {
            let piece = fresh(op, start, start, end, change);
            match self.segments.last_mut() {
                Some(last) if last.continued_by(&piece) && last.check == piece.check => last.end = end,
                _ => self.segments.push(piece),
            }
            return Ok(());
        }
        self.fold_inside(op, start, end, change)
    }

    /// [`fold`](Self::fold) for an op that starts before the end of the last segment.
    fn fold_inside(&mut self, op: u32, start: u64, end: u64, change: Change) -> Result<(), Fault> {
        let first = self.segments.partition_point(|s| s.end <= start);
        let mut last = first;
        while last < self.segments.len() && self.segments[last].start < end {
            last += 1;
        }
        // Pieces that replace segments[first..last].
        let mut pieces: SmallVec<[Segment; 4]> = SmallVec::new();
        let mut cursor = start;
        let overlapped = first..last;
        for i in overlapped.clone() {
            let old = self.segments[i];
            if old.start < start {
                pieces.push(old.cut(old.start, start));
            }
            let (from, to) = (old.start.max(start), old.end.min(end));
            if cursor < from {
                pieces.push(fresh(op, start, cursor, from, change));
            }
            pieces.push(self.overwrite(op, start, &old.cut(from, to), change)?);
            cursor = to;
            if old.end > end {
                pieces.push(old.cut(end, old.end));
            }
        }
        if cursor < end {
            // Keep `pieces` sorted: the tail of the last old segment (if any) comes after.
            let at = pieces.iter().position(|p| p.start >= end).unwrap_or(pieces.len());
            pieces.insert(at, fresh(op, start, cursor, end, change));
        }
        // Coalesce the pieces with each other and with the neighbours.
        let lo = if first > 0 { first - 1 } else { first };
        let hi = if last < self.segments.len() { last + 1 } else { last };
        let mut merged: SmallVec<[Segment; 4]> = SmallVec::new();
        let neighbours_before = self.segments[lo..first].iter();
        let neighbours_after = self.segments[last..hi].iter();
        for piece in neighbours_before.chain(pieces.iter()).chain(neighbours_after) {
            match merged.last_mut() {
                Some(prev) if prev.continued_by(piece) && prev.check == piece.check => prev.end = piece.end,
                _ => merged.push(*piece),
            }
        }
        let replaced = hi - lo;
        let common = replaced.min(merged.len());
        self.segments[lo..lo + common].copy_from_slice(&merged[..common]);
        if merged.len() > replaced {
            self.segments.insert_many(lo + common, merged[common..].iter().copied());
        } else {
            self.segments.drain(lo + common..hi);
        }
        Ok(())
    }

    /// The overlay of `ops` (checked, in queue order) built by one sweep over their sorted
    /// endpoints, for a batch whose ops are not in address order: folding such ops one by
    /// one inserts into the middle of the sorted segments and shifts all after each time.
    /// Each stretch between two consecutive endpoints gets the ops covering it applied in
    /// queue order, exactly as [`fold`](Self::fold) would, so the segments and deferred
    /// checks are the same. `None` where folding would fail: the caller folds again, one op
    /// at a time, to name the failure.
    pub(crate) fn sweep(ops: &[Folding]) -> Option<Overlay> {
        let mut points: Vec<u64> = ops.iter().flat_map(|&(_, start, end, _)| [start, end]).collect();
        points.sort_unstable();
        points.dedup();
        let mut by_start: Vec<(u64, usize)> = ops.iter().enumerate().map(|(i, op)| (op.1, i)).collect();
        by_start.sort_unstable();
        let mut overlay = Overlay::default();
        // Indices into `ops` of the ops covering the current stretch, in queue order.
        let mut active: SmallVec<[usize; 8]> = SmallVec::new();
        let mut next = 0;
        for stretch in points.windows(2) {
            let (start, end) = (stretch[0], stretch[1]);
            active.retain(|&mut i| ops[i].2 > start);
            while let Some(&(_, i)) = by_start.get(next).filter(|&&(op_start, _)| op_start <= start) {
                let at = active.partition_point(|&j| j < i);
                active.insert(at, i);
                next += 1;
            }
            let mut covered: Option<Segment> = None;
            for &i in &active {
                let (op, op_start, _, change) = ops[i];
                covered = Some(match covered {
                    None => fresh(op, op_start, start, end, change),
                    Some(old) => overlay.overwrite(op, op_start, &old, change).ok()?,
                });
            }
            if let Some(segment) = covered {
                match overlay.segments.last_mut() {
                    Some(last) if last.continued_by(&segment) && last.check == segment.check => last.end = end,
                    _ => overlay.segments.push(segment),
                }
            }
        }
        Some(overlay)
    }

    /// What `old` (already cut to the overlapped part) becomes under `change` by `op`,
    /// whose range starts at `op_start`.
    fn overwrite(&mut self, op: u32, op_start: u64, old: &Segment, change: Change) -> Result<Segment, Fault> {
        let (action, attributes, check) = match (change, old.action) {
            (Change::Map { .. }, _) => {
                if let Some(check) = old.check {
                    self.deferred_checks.push((old.start, old.end, check));
                }
                return Ok(fresh(op, op_start, old.start, old.end, change));
            }
            (Change::Unmap | Change::Protect { .. }, Action::Unmap) => {
                return Err(Fault::new(Reason::NotMapped, old.start))
            }
            (Change::Unmap, Action::Map { .. }) => (Action::Unmap, MemoryAttributes::empty(), None),
            (Change::Unmap, Action::Protect) => (Action::Unmap, MemoryAttributes::empty(), old.check),
            (Change::Protect { attributes }, Action::Map { pa }) => {
                (Action::Map { pa }, old.attributes.reprotected(attributes), None)
            }
            (Change::Protect { attributes }, Action::Protect) => {
                (Action::Protect, old.attributes.reprotected(attributes), old.check)
            }
        };
        Ok(Segment {
            start: old.start,
            end: old.end,
            action,
            attributes,
            check,
        })
    }
}

/// The segment `change` by `op` (whose range starts at `op_start`) creates over
/// `start..end` where no earlier op was.
#[inline]
fn fresh(op: u32, op_start: u64, start: u64, end: u64, change: Change) -> Segment {
    let (action, attributes, check) = match change {
        Change::Map { pa, attributes } => (
            Action::Map {
                pa: pa + (start - op_start),
            },
            attributes,
            None,
        ),
        Change::Unmap => (Action::Unmap, MemoryAttributes::empty(), Some(op)),
        Change::Protect { attributes } => (Action::Protect, attributes, Some(op)),
    };
    Segment {
        start,
        end,
        action,
        attributes,
        check,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WB: MemoryAttributes = MemoryAttributes::Writeback;
    const RO: MemoryAttributes = MemoryAttributes::ReadOnly;

    fn map(pa: u64) -> Change {
        Change::Map { pa, attributes: WB }
    }

    /// Deferred checks as sorted, coalesced (op, start, end): folding and sweeping may cut
    /// the same requirement into different pieces.
    fn normal_checks(checks: &[Check]) -> alloc::vec::Vec<(u32, u64, u64)> {
        let mut sorted: alloc::vec::Vec<_> = checks.iter().map(|&(start, end, op)| (op, start, end)).collect();
        sorted.sort_unstable();
        let mut merged: alloc::vec::Vec<(u32, u64, u64)> = alloc::vec::Vec::new();
        for (op, start, end) in sorted {
            match merged.last_mut() {
                Some(last) if last.0 == op && last.2 >= start => last.2 = last.2.max(end),
                _ => merged.push((op, start, end)),
            }
        }
        merged
    }

    #[test]
    fn a_sweep_builds_what_folding_in_order_builds() {
        let mut seed = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = move |bound: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % bound
        };
        let (mut agreed, mut refused) = (0, 0);
        for _ in 0..20_000 {
            let count = 2 + next(7) as u32;
            let ops: alloc::vec::Vec<Folding> = (0..count)
                .map(|op| {
                    let start = next(24) * 0x1000;
                    let end = start + (1 + next(8)) * 0x1000;
                    let attributes = [WB, RO, WB | RO, MemoryAttributes::ExecuteProtect][next(4) as usize];
                    let change = match next(3) {
                        0 => Change::Map {
                            pa: next(4) * 0x1000,
                            attributes,
                        },
                        1 => Change::Unmap,
                        _ => Change::Protect { attributes },
                    };
                    (op, start, end, change)
                })
                .collect();
            let mut folded = Overlay::default();
            let folded_ok = ops
                .iter()
                .all(|&(op, start, end, change)| folded.fold(op, start, end, change).is_ok());
            match (folded_ok, Overlay::sweep(&ops)) {
                (true, Some(swept)) => {
                    assert_eq!(swept.segments(), folded.segments(), "{ops:?}");
                    assert_eq!(
                        normal_checks(swept.deferred_checks()),
                        normal_checks(folded.deferred_checks()),
                        "{ops:?}"
                    );
                    agreed += 1;
                }
                (false, None) => refused += 1,
                (folded_ok, swept) => panic!("fold ok: {folded_ok}, sweep: {swept:?}, ops {ops:?}"),
            }
        }
        assert!(agreed > 1000 && refused > 1000, "{agreed} agreed, {refused} refused");
    }

    #[test]
    fn adjacent_contiguous_maps_coalesce_into_one_segment() {
        let mut overlay = Overlay::default();
        for page in 0..16u64 {
            overlay
                .fold(page as u32, page * 0x1000, (page + 1) * 0x1000, map(page * 0x1000))
                .unwrap();
        }
        assert_eq!(overlay.segments().len(), 1);
        assert_eq!(overlay.segments()[0].end, 0x10000);
    }

    #[test]
    fn later_op_overwrites_the_middle_of_an_earlier_one() {
        let mut overlay = Overlay::default();
        overlay.fold(0, 0, 0x4000, map(0x10_0000)).unwrap();
        overlay
            .fold(1, 0x1000, 0x2000, Change::Protect { attributes: RO })
            .unwrap();
        let s = overlay.segments();
        assert_eq!(s.len(), 3);
        assert_eq!(s[1].action, Action::Map { pa: 0x10_1000 });
        assert_eq!(s[1].attributes, WB | RO, "protect keeps the mapped cache type");
        assert_eq!(s[2].action, Action::Map { pa: 0x10_2000 });
        assert!(s.iter().all(|s| s.check.is_none()));
    }

    #[test]
    fn unmap_over_untouched_range_requires_the_table_mapping() {
        let mut overlay = Overlay::default();
        overlay.fold(3, 0x1000, 0x3000, Change::Unmap).unwrap();
        assert_eq!(overlay.segments()[0].check, Some(3));
    }

    #[test]
    fn unmap_of_a_range_unmapped_earlier_in_the_transaction_fails() {
        let mut overlay = Overlay::default();
        overlay.fold(0, 0, 0x2000, map(0)).unwrap();
        overlay.fold(1, 0, 0x2000, Change::Unmap).unwrap();
        let not_mapped = Err(Fault::new(Reason::NotMapped, 0x1000));
        assert_eq!(overlay.fold(2, 0x1000, 0x3000, Change::Unmap), not_mapped);
        assert_eq!(
            overlay.fold(2, 0x1000, 0x2000, Change::Protect { attributes: RO }),
            not_mapped
        );
    }

    #[test]
    fn map_over_a_checked_range_keeps_the_check_aside() {
        let mut overlay = Overlay::default();
        overlay.fold(0, 0, 0x2000, Change::Protect { attributes: RO }).unwrap();
        overlay.fold(1, 0x1000, 0x3000, map(0x1000)).unwrap();
        assert_eq!(overlay.deferred_checks(), &[(0x1000, 0x2000, 0)]);
        assert_eq!(overlay.segments()[0].check, Some(0));
        assert_eq!(overlay.segments()[1].check, None);
    }
}
