//! `Audit`: what a whole table allows, against the protection rules, the registered code
//! ranges and a UEFI memory map, as merged ranges and totals a firmware engineer can paste
//! into a bug.

use core::fmt;

use alloc::collections::BTreeMap;
use alloc::vec::Vec;

use crate::allocator::PageAllocator;
use crate::attributes::MemoryAttributes;
use crate::codec::Codec;
use crate::geometry::PAGE_SIZE;
use crate::hex::Hex;
use crate::table::Tables;
use crate::tlb::Tlb;

/// One UEFI memory map descriptor, as the audit reads it: physical `start..end` and the
/// `EFI_MEMORY_TYPE`.
pub type MemoryMapEntry = (u64, u64, u32);

/// A virtual range the audit reports. `Debug` prints it in hex.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct AuditRange {
    /// Canonical virtual address of the first byte.
    pub va: u64,
    /// Bytes.
    pub size: u64,
}

impl fmt::Debug for AuditRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The end may be 2^64 (a range at the top of the space).
        let end = u128::from(self.va) + u128::from(self.size);
        write!(f, "{:?}..{end:#x}", Hex(self.va))
    }
}

/// The report of [`Tables::audit`]: each finding as merged virtual ranges, in address
/// order, and the mapped bytes per attribute combination. Present pages only
/// (`ReadProtect` pages are not accessible and are counted apart).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Audit {
    /// Present pages neither `ReadOnly` nor `ExecuteProtect` (W^X).
    pub writable_executable: Vec<AuditRange>,
    /// Executable pages outside every code range the policy registers.
    pub executable_outside_code: Vec<AuditRange>,
    /// Present pages of a registered code range without `ReadOnly`.
    pub writable_code: Vec<AuditRange>,
    /// Present pages at virtual 0..4 KiB.
    pub null_page: Vec<AuditRange>,
    /// Executable `Uncached` / `UncachedExport` pages.
    pub executable_mmio: Vec<AuditRange>,
    /// Present pages whose physical address no entry of the given memory map covers
    /// (empty when no map was given).
    pub outside_memory_map: Vec<AuditRange>,
    /// Mapped bytes per attribute combination (`ReadProtect` ones included).
    pub totals: BTreeMap<MemoryAttributes, u64>,
    /// Mapped bytes in all.
    pub mapped: u64,
    /// Whether a memory map was given (else `outside_memory_map` was not checked).
    pub memory_map_checked: bool,
}

impl Audit {
    /// The findings, with a short name each, in report order.
    pub fn findings(&self) -> [(&'static str, &[AuditRange]); 6] {
        [
            ("W^X: writable and executable", &self.writable_executable),
            ("NULL page mapped", &self.null_page),
            ("executable MMIO (Uncached/UncachedExport)", &self.executable_mmio),
            ("writable code (registered code not ReadOnly)", &self.writable_code),
            ("executable outside registered code", &self.executable_outside_code),
            ("mapped outside the UEFI memory map", &self.outside_memory_map),
        ]
    }

    /// Whether nothing was found.
    pub fn is_clean(&self) -> bool {
        self.findings().iter().all(|(_, ranges)| ranges.is_empty())
    }
}

/// Appends `va..va + size` to `ranges`, merged with the last range if adjacent.
fn push(ranges: &mut Vec<AuditRange>, va: u64, size: u64) {
    match ranges.last_mut() {
        Some(last) if last.va.checked_add(last.size) == Some(va) => last.size += size,
        _ => ranges.push(AuditRange { va, size }),
    }
}

/// A half-open range whose end may be 2^64 (a region or code range at the top of the space).
type Span = (u128, u128);

/// `size` bytes at `start` as a [`Span`].
fn span(start: u64, size: u64) -> Span {
    (u128::from(start), u128::from(start) + u128::from(size))
}

/// `emit(start, size)` for a non-empty piece of a span (it fits: a piece is at most a region).
fn piece(a: u128, b: u128, emit: &mut dyn FnMut(u64, u64)) {
    emit(a as u64, (b - a) as u64);
}

/// Calls `emit(start, size)` for each piece of `range` outside every range of `covered`
/// (sorted by start).
fn outside((start, end): Span, covered: &[Span], emit: &mut dyn FnMut(u64, u64)) {
    let mut cursor = start;
    for &(from, to) in covered {
        if to <= cursor || from >= end {
            continue;
        }
        if from > cursor {
            piece(cursor, from, emit);
        }
        cursor = cursor.max(to);
        if cursor >= end {
            return;
        }
    }
    if cursor < end {
        piece(cursor, end, emit);
    }
}

/// Calls `emit(start, size)` for each piece of `range` inside a range of `covered`.
fn inside((start, end): Span, covered: &[Span], emit: &mut dyn FnMut(u64, u64)) {
    for &(from, to) in covered {
        let (a, b) = (from.max(start), to.min(end));
        if a < b {
            piece(a, b, emit);
        }
    }
}

impl<C: Codec, P: PageAllocator, T: Tlb> Tables<C, P, T> {
    /// Walks the whole table and reports what it allows: see [`Audit`]. The registered code
    /// ranges are the policy's ([`Policy::code`](crate::Policy::code)); `memory_map` (may
    /// be empty: not checked) is the UEFI memory map the mappings' physical pages should lie
    /// in.
    pub fn audit(&self, memory_map: &[MemoryMapEntry]) -> Audit {
        let mut code: Vec<Span> = self.policy().code_ranges().iter().map(|&(a, s)| span(a, s)).collect();
        code.sort_unstable();
        let mut map: Vec<Span> = memory_map
            .iter()
            .map(|&(s, e, _)| (u128::from(s), u128::from(e)))
            .collect();
        map.sort_unstable();
        let mut audit = Audit {
            memory_map_checked: !memory_map.is_empty(),
            ..Audit::default()
        };
        let mmio = MemoryAttributes::Uncached | MemoryAttributes::UncachedExport;
        for region in self.regions() {
            let attributes = region.attributes;
            audit.mapped += region.size;
            *audit.totals.entry(attributes).or_insert(0) += region.size;
            if attributes.contains(MemoryAttributes::ReadProtect) {
                continue;
            }
            let va = region.va;
            let writable = !attributes.contains(MemoryAttributes::ReadOnly);
            let executable = !attributes.contains(MemoryAttributes::ExecuteProtect);
            if writable && executable {
                push(&mut audit.writable_executable, va, region.size);
            }
            if executable && attributes.intersects(mmio) {
                push(&mut audit.executable_mmio, va, region.size);
            }
            if va < PAGE_SIZE {
                push(&mut audit.null_page, va, PAGE_SIZE);
            }
            if executable {
                outside(span(va, region.size), &code, &mut |a, size| {
                    push(&mut audit.executable_outside_code, a, size)
                });
            }
            if writable {
                inside(span(va, region.size), &code, &mut |a, size| {
                    push(&mut audit.writable_code, a, size)
                });
            }
            if audit.memory_map_checked {
                let pa = region.pa;
                outside(span(pa, region.size), &map, &mut |a, size| {
                    push(&mut audit.outside_memory_map, va + (a - pa), size)
                });
            }
        }
        audit
    }
}

/// `bytes` as a short size: `4 KiB`, `2 MiB`, `1 GiB` when exact, else `4.25 GiB`
/// (rounded down) in the largest unit it reaches.
struct Size(u64);

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let units = [(1u64 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")];
        // An exact count below 1024 of some unit (`860 KiB`, `2 MiB`).
        for (unit, name) in units {
            if self.0 % unit == 0 && self.0 / unit < 1024 && self.0 >= unit {
                return write!(f, "{} {name}", self.0 / unit);
            }
        }
        // Else two decimals (rounded down) of the largest unit it reaches.
        for (unit, name) in units {
            if self.0 >= unit {
                let hundredths = (u128::from(self.0) * 100 / u128::from(unit)) as u64;
                return write!(f, "{}.{:02} {name}", hundredths / 100, hundredths % 100);
            }
        }
        write!(f, "{:#x} bytes", self.0)
    }
}

/// Attributes as `Writeback | ReadOnly`, or `(none)`.
struct Names(MemoryAttributes);

impl fmt::Display for Names {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("(none)");
        }
        let mut first = true;
        for (name, _) in self.0.iter_names() {
            if !first {
                f.write_str(" | ")?;
            }
            f.write_str(name)?;
            first = false;
        }
        Ok(())
    }
}

/// Ranges listed per finding by `{}`; `{:#}` lists all.
const SHOWN: usize = 8;

/// The report: one section per finding (rule name, count, then `start-end  size` per
/// range, inclusive ends in hex; the first 8 ranges, all with `{:#}`), then the mapped
/// bytes per attribute combination.
impl fmt::Display for Audit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let findings = self.findings();
        let found = findings.iter().filter(|(_, r)| !r.is_empty()).count();
        writeln!(
            f,
            "page table audit: {} mapped ({:#x} bytes), {} finding{}",
            Size(self.mapped),
            self.mapped,
            found,
            if found == 1 { "" } else { "s" }
        )?;
        for (name, ranges) in findings {
            if name.starts_with("mapped outside") && !self.memory_map_checked {
                writeln!(f, "  {name}: not checked (no memory map given)")?;
                continue;
            }
            let bytes: u64 = ranges.iter().map(|r| r.size).sum();
            if ranges.is_empty() {
                writeln!(f, "  {name}: none")?;
                continue;
            }
            writeln!(f, "  {name}: {} range(s), {}", ranges.len(), Size(bytes))?;
            let shown = if f.alternate() {
                ranges.len()
            } else {
                ranges.len().min(SHOWN)
            };
            for r in &ranges[..shown] {
                writeln!(f, "    {:#018x}-{:#018x}  {}", r.va, r.va + (r.size - 1), Size(r.size))?;
            }
            if shown < ranges.len() {
                writeln!(f, "    ... and {} more (`{{:#}}` lists all)", ranges.len() - shown)?;
            }
        }
        writeln!(f, "  mapped by attributes:")?;
        for (attributes, bytes) in &self.totals {
            let (names, size) = (
                alloc::format!("{}", Names(*attributes)),
                alloc::format!("{}", Size(*bytes)),
            );
            writeln!(f, "    {names:<48} {size:>10}")?;
        }
        Ok(())
    }
}
