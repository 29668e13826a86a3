//! The expected state: every change the application asked of the table, replayed without
//! txpaging. A probe's expectation and the host's cross-check with QEMU's `info tlb` both
//! come from here (the host test includes this file), never from the table under test.
//!
//! Semantics, as txpaging documents them: a map sets the output address and all attributes;
//! an unmap removes the mapping; a protect keeps the output address, replaces the access
//! bits (ReadProtect, ExecuteProtect, ReadOnly) and changes the cache type only if it names
//! one.

use alloc::vec::Vec;

/// UEFI attribute values (UEFI 2.10, 7.2 `EFI_MEMORY_*`).
pub mod uefi_attr {
    pub const UC: u64 = 0x1;
    pub const WC: u64 = 0x2;
    pub const WT: u64 = 0x4;
    pub const WB: u64 = 0x8;
    pub const UCE: u64 = 0x10;
    pub const WP: u64 = 0x1000;
    pub const RP: u64 = 0x2000;
    pub const XP: u64 = 0x4000;
    pub const RO: u64 = 0x20000;
    pub const CACHE: u64 = UC | WC | WT | WB | UCE | WP;
    pub const ACCESS: u64 = RP | XP | RO;
}

/// One change, with raw UEFI attribute bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Map {
        va: u64,
        pa: u64,
        size: u64,
        attributes: u64,
    },
    Unmap {
        va: u64,
        size: u64,
    },
    Protect {
        va: u64,
        size: u64,
        attributes: u64,
    },
}

impl Change {
    fn range(&self) -> (u64, u64) {
        match *self {
            Self::Map { va, size, .. } | Self::Unmap { va, size } | Self::Protect { va, size, .. } => (va, va + size),
        }
    }

    /// `kind va pa size attributes`, the form the application prints and the host parses.
    pub fn fields(&self) -> (&'static str, u64, u64, u64, u64) {
        match *self {
            Self::Map {
                va,
                pa,
                size,
                attributes,
            } => ("map", va, pa, size, attributes),
            Self::Unmap { va, size } => ("unmap", va, 0, size, 0),
            Self::Protect { va, size, attributes } => ("protect", va, 0, size, attributes),
        }
    }

    /// The inverse of `fields` (the host test's replay uses it).
    #[allow(dead_code)]
    pub fn from_fields(kind: &str, va: u64, pa: u64, size: u64, attributes: u64) -> Option<Self> {
        match kind {
            "map" => Some(Self::Map {
                va,
                pa,
                size,
                attributes,
            }),
            "unmap" => Some(Self::Unmap { va, size }),
            "protect" => Some(Self::Protect { va, size, attributes }),
            _ => None,
        }
    }
}

/// A page's expected output address and attributes.
pub type Mapping = (u64, u64);

/// A run of pages `[start, end)`: unmapped, or mapped with one set of attributes to output
/// addresses that grow with the address (the mapping is that of `start`).
pub type Run = (u64, u64, Option<Mapping>);

/// The mapping at `va` in `runs` (sorted, as [`Model::runs`] returns them).
pub fn lookup(runs: &[Run], va: u64) -> Option<Mapping> {
    let index = runs.partition_point(|run| run.1 <= va);
    match runs.get(index) {
        Some(&(start, end, Some((pa, attributes)))) if va >= start && va < end => Some((pa + (va - start), attributes)),
        _ => None,
    }
}

/// What the CPU must allow at a page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Access {
    pub present: bool,
    pub writable: bool,
    pub executable: bool,
}

impl Access {
    pub fn of(mapping: Option<Mapping>) -> Self {
        match mapping {
            None => Self {
                present: false,
                writable: false,
                executable: false,
            },
            Some((_, attributes)) => {
                let present = attributes & uefi_attr::RP == 0;
                Self {
                    present,
                    writable: present && attributes & uefi_attr::RO == 0,
                    executable: present && attributes & uefi_attr::XP == 0,
                }
            }
        }
    }
}

/// The changes so far, oldest first.
#[derive(Debug, Default, Clone)]
pub struct Model {
    changes: Vec<Change>,
}

impl Model {
    pub const fn new() -> Self {
        Self { changes: Vec::new() }
    }

    pub fn push(&mut self, change: Change) {
        self.changes.push(change);
    }

    pub fn changes(&self) -> &[Change] {
        &self.changes
    }

    /// The output address and attributes at `va`, or `None` if unmapped.
    pub fn expect(&self, va: u64) -> Option<Mapping> {
        let mut access: Option<u64> = None;
        let mut cache: Option<u64> = None;
        for change in self.changes.iter().rev() {
            let (start, end) = change.range();
            if va < start || va >= end {
                continue;
            }
            match *change {
                Change::Unmap { .. } => return None,
                Change::Protect { attributes, .. } => {
                    access.get_or_insert(attributes & uefi_attr::ACCESS);
                    if attributes & uefi_attr::CACHE != 0 {
                        cache.get_or_insert(attributes & uefi_attr::CACHE);
                    }
                }
                Change::Map {
                    va: map_va,
                    pa,
                    attributes,
                    ..
                } => {
                    let access = access.unwrap_or(attributes & uefi_attr::ACCESS);
                    let cache = cache.unwrap_or(attributes & uefi_attr::CACHE);
                    return Some((pa + (va - map_va), access | cache));
                }
            }
        }
        None
    }

    /// The expected state as runs `(start, end, mapping at start)`: within a run the output
    /// address grows with the address and the attributes are the same.
    pub fn runs(&self) -> Vec<Run> {
        let mut edges: Vec<u64> = self
            .changes
            .iter()
            .flat_map(|c| {
                let (start, end) = c.range();
                [start, end]
            })
            .collect();
        edges.sort_unstable();
        edges.dedup();
        let mut runs: Vec<Run> = Vec::new();
        for pair in edges.windows(2) {
            let (start, end) = (pair[0], pair[1]);
            let mapping = self.expect(start);
            if let Some(last) = runs.last_mut() {
                let continues = match (last.2, mapping) {
                    (None, None) => true,
                    (Some((pa, attributes)), Some((next_pa, next_attributes))) => {
                        attributes == next_attributes && pa + (start - last.0) == next_pa
                    }
                    _ => false,
                };
                if continues && last.1 == start {
                    last.1 = end;
                    continue;
                }
            }
            runs.push((start, end, mapping));
        }
        runs
    }
}
