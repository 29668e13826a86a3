//! Adopting an X64 table that someone else built (the firmware's live table, read from
//! CR3): a checked walk that proves the table is one this crate can read and change, under
//! the IA32_PAT layout in force when it was built.
//!
//! The walk visits every table page reachable from the root once and refuses:
//!
//! - a table page reached twice: a cycle (an entry pointing at its own table or an
//!   ancestor) or a subtree shared by two entries, which a change through one entry would
//!   silently apply to the other;
//! - reserved bits set in a present entry (SDM Vol. 3A, 4.5.4, tables 4-14 to 4-20): PS in
//!   a PML5E or PML4E, address bits at or above MAXPHYADDR, bits 29:13 of a 1 GiB page or
//!   20:13 of a 2 MiB page, and a 1 GiB page on a CPU without them (CPUID 8000_0001h
//!   `EDX[26]`);
//! - a leaf whose PAT index (PAT, PCD, PWT; SDM 11.12.3) selects, under the IA32_PAT in
//!   force, another memory type than the same index selects in [`PAT_LAYOUT`]: its
//!   attributes have no exact `MemoryAttributes` reading, and guessing one would change the
//!   memory type when this crate's layout is installed.
//!
//! Bits this crate never writes but hardware allows (A, D, G, U/S, PWT/PCD on table
//! pointers, software bits 11:9 and 62:52 other than bit 9) are accepted and ignored when
//! reading. A changed entry is written in this crate's encoding, so they do not survive a
//! change; untouched entries keep them. G matters there: a full flush of such a table must
//! drop global translations too (see `X64Mmu`).
//!
//! A non-present entry is unmapped, except that bit 9 set marks this crate's own
//! ReadProtect leaves (see [`encoding`](super::encoding)); in a table built elsewhere such
//! an entry is checked like a leaf.

use alloc::collections::BTreeMap;
use core::fmt;

use txpaging_txn::{Codec, Entry, Geometry, PageAllocator, PtError, Tlb, ENTRIES_PER_TABLE};

use super::encoding::{X64Codec, NX, P, PAT_4K, PAT_LARGE, PCD, PS, PWT};
use super::PAT_LAYOUT;

/// The IA32_PAT value a table was built for and the CPU's physical address width: what is
/// needed to read a table built elsewhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExistingLayout {
    /// The IA32_PAT value in force (SDM 11.12.2).
    pub pat: u64,
    /// MAXPHYADDR (CPUID 8000_0008h `EAX[7:0]`): address bits at or above it are reserved.
    pub max_phys_bits: u8,
}

impl ExistingLayout {
    /// The power-on IA32_PAT (WB, WT, UC-, UC, WB, WT, UC-, UC; SDM table 11-12) with a
    /// 52-bit physical address width.
    pub const POWER_ON: Self = Self {
        pat: 0x0007_0406_0007_0406,
        max_phys_bits: 52,
    };

    /// Reads IA32_PAT and MAXPHYADDR from the running CPU (CPL 0 only).
    #[cfg(all(target_arch = "x86_64", any(target_os = "none", target_os = "uefi")))]
    pub fn current() -> Self {
        Self {
            pat: super::instructions::read_pat(),
            max_phys_bits: super::instructions::max_phys_bits(),
        }
    }

    /// The memory type (SDM table 11-10 encoding) that PAT index `index` selects.
    pub const fn memory_type(&self, index: u8) -> u8 {
        (self.pat >> (8 * index as u32)) as u8
    }
}

/// Why a table built elsewhere cannot be adopted. Every variant names where.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExistingTableError {
    /// X64 has no such paging mode.
    UnsupportedPagingType,
    /// The root is not a 4 KiB-aligned physical address.
    UnalignedRoot {
        /// The root given.
        root: u64,
    },
    /// A table page is reached a second time: a cycle or a shared subtree.
    TableReachedTwice {
        /// The table page.
        table: u64,
        /// The first virtual address of the entry that reached it the second time.
        va: u64,
        /// The level of that entry (0 = PT, 1 = PD, 2 = PDPT, 3 = PML4, 4 = PML5).
        level: u8,
    },
    /// A present entry has reserved bits set.
    ReservedBits {
        /// The first virtual address the entry translates.
        va: u64,
        /// Its level.
        level: u8,
        /// The raw entry.
        raw: u64,
        /// The reserved bits that are set.
        bits: u64,
    },
    /// A leaf's PAT index means another memory type under the layout in force than under
    /// [`PAT_LAYOUT`].
    ForeignMemoryType {
        /// The first virtual address of the leaf.
        va: u64,
        /// The PAT index (PAT * 4 + PCD * 2 + PWT).
        index: u8,
        /// Its memory type under the layout in force.
        in_force: u8,
        /// Its memory type under [`PAT_LAYOUT`].
        ours: u8,
    },
}

impl fmt::Display for ExistingTableError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::UnsupportedPagingType => f.write_str("X64 has no 3-level paging mode"),
            Self::UnalignedRoot { root } => write!(f, "table root {root:#x} is not 4 KiB aligned"),
            Self::TableReachedTwice { table, va, level } => write!(
                f,
                "table page {table:#x} is reached a second time from the level-{level} entry for va {va:#x} \
                 (a cycle or a shared subtree)"
            ),
            Self::ReservedBits { va, level, raw, bits } => write!(
                f,
                "level-{level} entry {raw:#018x} for va {va:#x} sets reserved bits {bits:#x} (SDM 4.5.4)"
            ),
            Self::ForeignMemoryType {
                va,
                index,
                in_force,
                ours,
            } => write!(
                f,
                "leaf at va {va:#x} uses PAT index {index}, memory type {} under the IA32_PAT in force \
                 but {} in txpaging's layout: no exact reading",
                memory_type_name(in_force),
                memory_type_name(ours)
            ),
        }
    }
}

impl core::error::Error for ExistingTableError {}

impl From<ExistingTableError> for PtError {
    fn from(error: ExistingTableError) -> Self {
        match error {
            ExistingTableError::UnsupportedPagingType => PtError::UnsupportedPagingType,
            ExistingTableError::UnalignedRoot { .. } => PtError::UnalignedPageBase,
            ExistingTableError::ForeignMemoryType { .. } => PtError::IncompatibleMemoryAttributes,
            ExistingTableError::TableReachedTwice { .. } | ExistingTableError::ReservedBits { .. } => {
                PtError::InvalidParameter
            }
        }
    }
}

fn memory_type_name(memory_type: u8) -> &'static str {
    match memory_type {
        0 => "UC",
        1 => "WC",
        4 => "WT",
        5 => "WP",
        6 => "WB",
        7 => "UC-",
        _ => "reserved",
    }
}

/// What the checked walk found: the number of table pages and of leaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ExistingTableSummary {
    /// Table pages reachable from the root, the root included.
    pub table_pages: usize,
    /// Present leaves (4 KiB, 2 MiB and 1 GiB pages).
    pub leaves: usize,
    /// Leaves with the G bit set.
    pub global_leaves: usize,
}

/// Walks the table of `tables` as described in the [module documentation](self).
pub(crate) fn check<P: PageAllocator, T: Tlb>(
    tables: &txpaging_txn::Tables<X64Codec, P, T>,
    layout: ExistingLayout,
) -> Result<ExistingTableSummary, ExistingTableError> {
    let root = tables.root();
    if root % 4096 != 0 {
        return Err(ExistingTableError::UnalignedRoot { root });
    }
    let geometry = tables.geometry();
    let mut seen = BTreeMap::new();
    seen.insert(root, ());
    let mut summary = ExistingTableSummary {
        table_pages: 1,
        ..ExistingTableSummary::default()
    };
    // An explicit stack of (table, level, table's linear va, next index): no recursion.
    let mut stack: heapless::Vec<(u64, u8, u64, usize), 6> = heapless::Vec::new();
    let _ = stack.push((root, geometry.top_level(), 0, 0));
    while let Some(&mut (table, level, table_va, ref mut next)) = stack.last_mut() {
        if *next == ENTRIES_PER_TABLE {
            stack.pop();
            continue;
        }
        let index = *next;
        *next += 1;
        let raw = tables.read_entry(table, index);
        let linear = table_va + index as u64 * Geometry::entry_size(level);
        let va = geometry.to_canonical(linear);
        let reserved = reserved_bits(raw, level, &geometry, layout.max_phys_bits);
        if reserved != 0 {
            return Err(ExistingTableError::ReservedBits {
                va,
                level,
                raw,
                bits: reserved,
            });
        }
        match X64Codec::decode(raw, level) {
            Entry::Invalid => {}
            Entry::Table(child) => {
                if seen.insert(child, ()).is_some() {
                    return Err(ExistingTableError::TableReachedTwice {
                        table: child,
                        va,
                        level,
                    });
                }
                summary.table_pages += 1;
                // At most one entry per level is on the stack; the root's level is at most 4.
                let _ = stack.push((child, level - 1, linear, 0));
            }
            Entry::Leaf { .. } => {
                summary.leaves += usize::from(raw & P != 0);
                summary.global_leaves += usize::from(raw & P != 0 && raw & super::encoding::G != 0);
                let index = pat_index(raw, level);
                let (in_force, ours) = (layout.memory_type(index), ExistingLayout::ours().memory_type(index));
                if in_force != ours {
                    return Err(ExistingTableError::ForeignMemoryType {
                        va,
                        index,
                        in_force,
                        ours,
                    });
                }
            }
        }
    }
    Ok(summary)
}

impl ExistingLayout {
    /// This crate's own layout: IA32_PAT = [`PAT_LAYOUT`], 52 physical address bits (what
    /// an entry holds). A table checked under it is read exactly as it was written.
    pub const OURS: Self = Self {
        pat: PAT_LAYOUT,
        max_phys_bits: 52,
    };

    const fn ours() -> Self {
        Self::OURS
    }
}

/// The PAT index of a leaf (SDM 11.12.3): PAT is bit 7 in a PTE and bit 12 in a large page.
fn pat_index(raw: u64, level: u8) -> u8 {
    let pat_bit = if level == 0 { PAT_4K } else { PAT_LARGE };
    u8::from(raw & pat_bit != 0) << 2 | u8::from(raw & PCD != 0) << 1 | u8::from(raw & PWT != 0)
}

/// The reserved bits set in `raw` at `level`, for an entry the walker would use (present, or
/// a ReadProtect leaf of this crate).
fn reserved_bits(raw: u64, level: u8, geometry: &Geometry, max_phys_bits: u8) -> u64 {
    if raw & P == 0 && raw & super::encoding::SW_READ_PROTECTED == 0 {
        return 0;
    }
    // Address bits MAXPHYADDR..51 (tables 4-14 to 4-20: "Reserved (must be 0)").
    let above_maxphyaddr = if max_phys_bits >= 52 {
        0
    } else {
        ((1u64 << 52) - 1) & !((1u64 << max_phys_bits) - 1)
    };
    let mut reserved = raw & above_maxphyaddr;
    let large = raw & PS != 0;
    if level >= 3 {
        // PS is reserved in PML5Es and PML4Es (tables 4-14, 4-15).
        reserved |= raw & PS;
    } else if level >= 1 && large {
        if level > geometry.max_leaf_level {
            // A 1 GiB page on a CPU without them: PS is reserved there (table 4-17).
            reserved |= PS;
        }
        // Bits (page size - 1):13 of a large page's address (tables 4-17 and 4-19).
        let low = (Geometry::entry_size(level) - 1) & !((1u64 << 13) - 1);
        reserved |= raw & low;
    }
    // NX is reserved unless IA32_EFER.NXE = 1 (SDM 4.1.3); this crate installs with NXE set.
    let _ = NX;
    reserved
}
