//! Live changes on the installed table, each followed by probes of the pages it touched: a
//! 2 MiB page split under a buffer, pages made read-only, execute-protected and not present,
//! an alias remapped between frames one page and 64 pages at a time, the buffer merged back
//! into its 2 MiB page, and the alias unmapped. Each step first touches the pages so the TLB
//! holds the old translation; a missing INVLPG or CR3 reload then shows as a stale read,
//! write or fetch.
//!
//! Every page of the buffer starts with its own physical address XOR `MAGIC` and is return
//! instructions after that: a read tells which frame a translation reached, a call at
//! offset 8 whether the page executes.

use core::sync::atomic::Ordering;

use crate::arch::{probe, Table};
use crate::model::{uefi_attr, Access, Change, Model};
use crate::probes::{expected_fault, Outcome, FAULT_FETCH, FAULT_WRITE};

const PAGE: u64 = 4096;
const MIB2: u64 = 0x20_0000;
pub const MAGIC: u64 = 0x5458_5041_4749_4e47;
/// The alias window: an address no firmware mapping reaches (above the 1 TiB identity map).
pub const ALIAS: u64 = 0x7F00_0000_0000;
/// Single-page remaps of the alias.
const REMAPS: usize = 200;
/// Pages of the multi-page alias (above the 33-page INVLPG limit: one CR3 reload).
const WIDE: u64 = 64;

/// Fills the 2 MiB buffer at `buffer`: each page's first qword is its address ^ MAGIC, the
/// rest return instructions.
pub fn fill(buffer: u64) {
    for page in (buffer..buffer + MIB2).step_by(PAGE as usize) {
        // SAFETY: the buffer is the application's LoaderData allocation, identity mapped.
        let bytes = unsafe { core::slice::from_raw_parts_mut(page as *mut u8, PAGE as usize) };
        crate::arch::fill_with_returns(bytes);
        bytes[..8].copy_from_slice(&(page ^ MAGIC).to_le_bytes());
    }
    crate::arch::sync_instructions(buffer, MIB2);
}

/// What the live run saw.
#[derive(Debug, Default, Clone, Copy)]
pub struct LiveTally {
    pub changes: usize,
    pub checks: usize,
    /// Accesses whose outcome was not the model's: stale translations (or worse).
    pub stale: usize,
    pub stale_reads: usize,
    pub tables_split: usize,
    pub tables_merged: usize,
    pub invalidations: u64,
    pub full_flushes: u64,
}

struct Run<'a> {
    table: &'a mut Table,
    model: &'a mut Model,
    tally: LiveTally,
    /// Count mismatches without printing them.
    quiet: bool,
}

impl Run<'_> {
    /// Touches `vas` the way `check` will, so the TLB caches their translations.
    fn warm(&self, vas: &[u64]) {
        let _phase = probe::ProbePhase::enter();
        for &va in vas {
            let _ = probe::read(va);
            let _ = probe::write(va + 8);
            let _ = probe::execute(va + 8);
        }
    }

    /// Commits `changes` as one transaction (a one-op call when there is one) and records
    /// them in the model.
    fn change(&mut self, changes: &[Change]) {
        let before = self.table.table_pages();
        let result = if let [one] = changes {
            match *one {
                Change::Map {
                    va,
                    pa,
                    size,
                    attributes,
                } => self.table.map_aliased_memory_region(
                    va,
                    pa,
                    size,
                    txpaging::MemoryAttributes::from_bits_retain(attributes),
                ),
                Change::Unmap { va, size } => txpaging::PageTable::unmap_memory_region(self.table, va, size),
                Change::Protect { va, size, attributes } => {
                    self.table
                        .protect_memory_region(va, size, txpaging::MemoryAttributes::from_bits_retain(attributes))
                }
            }
            .map_err(|e| alloc::format!("{e}"))
        } else {
            use txpaging::TransactionalTable;
            self.table
                .commit_ops(changes.iter().map(crate::op_of))
                .map(|committed| self.table.release_retired(committed.retired))
                .map_err(|e| alloc::format!("{e}"))
        };
        if let Err(error) = result {
            crate::fail(&alloc::format!("live change {changes:x?}: {error}"));
        }
        let after = self.table.table_pages();
        self.tally.tables_split += after.saturating_sub(before);
        self.tally.tables_merged += before.saturating_sub(after);
        self.tally.changes += 1;
        for change in changes {
            self.model.push(*change);
        }
    }

    /// Reads, writes and executes each of `vas` and compares with the model.
    fn check(&mut self, step: &str, vas: &[u64]) {
        let _phase = probe::ProbePhase::enter();
        for &va in vas {
            let mapping = self.model.expect(va);
            let access = Access::of(mapping);
            self.tally.checks += 1;
            let read = probe::read(va);
            let read_ok = match (read, mapping) {
                (Outcome::Done(value), Some((pa, _))) if access.present => value == pa ^ MAGIC,
                (Outcome::Fault { code: 0, address }, _) if !access.present => address == va,
                _ => false,
            };
            let as_expected = |kind: u64, outcome: Outcome, at: u64| match (expected_fault(access, kind), outcome) {
                (None, Outcome::Done(_)) => true,
                (Some(code), Outcome::Fault { code: got, address }) => code == got && address == at,
                _ => false,
            };
            let write_ok = as_expected(FAULT_WRITE, probe::write(va + 8), va + 8);
            let execute_ok = as_expected(FAULT_FETCH, probe::execute(va + 8), va + 8);
            if !(read_ok && write_ok && execute_ok) {
                self.tally.stale += 1;
                self.tally.stale_reads += usize::from(!read_ok);
                if !self.quiet && self.tally.stale <= 20 {
                    crate::txp!(
                        "MISMATCH phase=live step={step} va={va:#x} expected={mapping:x?} read={read:x?} write_ok={write_ok} execute_ok={execute_ok}"
                    );
                }
            }
        }
    }

    /// One step: warm the TLB for `vas`, change, check `vas`.
    fn step(&mut self, name: &str, changes: &[Change], vas: &[u64]) {
        self.warm(vas);
        self.change(changes);
        self.check(name, vas);
    }
}

/// Runs the sequence on the 2 MiB `buffer` (identity mapped as one 2 MiB page, XP). With
/// `quiet`, mismatches are counted, not printed (the negative control expects them). The
/// changes are recorded in `model`, not printed: the host's replay stops before them.
pub fn run(table: &mut Table, model: &mut Model, buffer: u64, quiet: bool) -> LiveTally {
    use uefi_attr::{RO, RP, WB, XP};
    let invalidations = crate::arch::mmu_state(table).page_invalidations.load(Ordering::Relaxed);
    let full = crate::arch::mmu_state(table).full_flushes.load(Ordering::Relaxed);
    let mut run = Run {
        table: &mut *table,
        model,
        tally: LiveTally::default(),
        quiet,
    };
    let (base_attributes, frame_a, frame_b) = (
        run.model.expect(buffer).map_or(XP, |m| m.1),
        buffer + 0x10_0000,
        buffer + 0x14_0000,
    );
    let page = |i: u64| buffer + i * PAGE;
    let touched = [page(1), page(2), page(3), page(4), page(5)];

    // Split: one page read-only inside the 2 MiB page.
    run.step(
        "split",
        &[Change::Protect {
            va: page(1),
            size: PAGE,
            attributes: RO | XP,
        }],
        &touched,
    );
    // Read-only and executable, execute-protected, not present.
    run.step(
        "read-only",
        &[Change::Protect {
            va: page(2),
            size: PAGE,
            attributes: RO,
        }],
        &touched,
    );
    run.step(
        "execute-protect",
        &[Change::Protect {
            va: page(3),
            size: PAGE,
            attributes: XP,
        }],
        &touched,
    );
    run.step(
        "not-present",
        &[Change::Protect {
            va: page(4),
            size: PAGE,
            attributes: RP | XP,
        }],
        &touched,
    );
    // Back to writable and executable again, in place.
    run.step(
        "writable",
        &[Change::Protect {
            va: page(2),
            size: 2 * PAGE,
            attributes: 0,
        }],
        &touched,
    );

    // The alias: one page remapped between two frames, read after each remap.
    run.change(&[Change::Map {
        va: ALIAS,
        pa: frame_a,
        size: PAGE,
        attributes: WB | XP,
    }]);
    run.check("alias", &[ALIAS]);
    for index in 0..REMAPS {
        let frame = if index % 2 == 0 { frame_b } else { frame_a };
        run.warm(&[ALIAS]);
        run.change(&[Change::Map {
            va: ALIAS,
            pa: frame,
            size: PAGE,
            attributes: WB | XP,
        }]);
        run.check("remap", &[ALIAS]);
    }
    // 64 pages at once: beyond the INVLPG limit, so one CR3 reload (or CR4.PGE toggle).
    let wide: alloc::vec::Vec<u64> = (0..WIDE).map(|i| ALIAS + 0x20_0000 + i * PAGE).collect();
    run.step(
        "wide-map",
        &[Change::Map {
            va: wide[0],
            pa: frame_a,
            size: WIDE * PAGE,
            attributes: WB,
        }],
        &wide,
    );
    run.step(
        "wide-remap",
        &[Change::Map {
            va: wide[0],
            pa: frame_b,
            size: WIDE * PAGE,
            attributes: WB | RO,
        }],
        &wide,
    );

    // Merge back: the whole buffer uniform again, so its page table goes.
    run.step(
        "merge",
        &[Change::Protect {
            va: buffer,
            size: MIB2,
            attributes: base_attributes & uefi_attr::ACCESS,
        }],
        &touched,
    );
    // Unmap the aliases.
    let mut gone = alloc::vec![ALIAS];
    gone.extend_from_slice(&wide);
    run.step(
        "unmap",
        &[
            Change::Unmap { va: ALIAS, size: PAGE },
            Change::Unmap {
                va: wide[0],
                size: WIDE * PAGE,
            },
        ],
        &gone,
    );
    let mut tally = run.tally;
    tally.invalidations = crate::arch::mmu_state(table).page_invalidations.load(Ordering::Relaxed) - invalidations;
    tally.full_flushes = crate::arch::mmu_state(table).full_flushes.load(Ordering::Relaxed) - full;
    tally
}
