//! Which addresses to probe, which accesses are safe to make there, and the check of each
//! outcome against the model.

use alloc::vec::Vec;

use crate::arch::probe;
use crate::model::{self, Access, Mapping, Model, Run};

const PAGE: u64 = 4096;
const MIB2: u64 = 0x20_0000;
const GIB: u64 = 0x4000_0000;

/// A fault's normalized code, laid out like the X64 #PF error code (SDM Vol. 3A, 4.7): the
/// access hit a present entry (a permission fault; clear: a translation fault), it was a
/// write, it was an instruction fetch. AArch64 derives the same bits from ESR (D17.2.37).
pub const FAULT_PRESENT: u64 = 1 << 0;
pub const FAULT_WRITE: u64 = 1 << 1;
pub const FAULT_FETCH: u64 = 1 << 4;

/// What one access did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Completed (a read also gives the qword it read).
    Done(u64),
    /// A translation or permission fault with its normalized code, at `address`.
    Fault { code: u64, address: u64 },
    /// Another exception (the architecture's vector or syndrome).
    Other(u64),
}

/// What the UEFI memory map says is at an address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// RAM: reads have no side effect, and a write that stores the value read is harmless.
    Ram,
    /// MMIO known to read without side effects (`arch::QUIET_MMIO`), and addresses no
    /// device decodes (above both RAM and `arch::UNASSIGNED_FROM`), where reads return all
    /// ones or zeros.
    QuietMmio,
    /// Anything else: touched only where a fault is expected.
    Other,
}

/// The memory map as sorted `(start, end, kind)`.
pub struct Memory {
    ranges: Vec<(u64, u64, Kind)>,
    /// Above this nothing decodes addresses.
    unassigned: u64,
}

impl Memory {
    pub fn new(mut ranges: Vec<(u64, u64, Kind)>) -> Self {
        let ram_top = ranges
            .iter()
            .filter(|r| r.2 == Kind::Ram)
            .map(|r| r.1)
            .max()
            .unwrap_or(0);
        let unassigned = ram_top.max(crate::arch::UNASSIGNED_FROM);
        for &(start, end) in crate::arch::QUIET_MMIO {
            ranges.push((start, end, Kind::QuietMmio));
        }
        ranges.sort_unstable_by_key(|r| r.0);
        Self { ranges, unassigned }
    }

    pub fn kind(&self, va: u64) -> Kind {
        let mut kind = if va >= self.unassigned {
            Kind::QuietMmio
        } else {
            Kind::Other
        };
        for &(start, end, k) in &self.ranges {
            if va >= start && va < end {
                kind = k;
                if k == Kind::Ram {
                    return k;
                }
            }
        }
        kind
    }
}

/// The expected state, precomputed for lookups.
pub struct Expected {
    runs: Vec<Run>,
}

impl Expected {
    pub fn new(model: &Model) -> Self {
        Self { runs: model.runs() }
    }

    pub fn at(&self, va: u64) -> Option<Mapping> {
        model::lookup(&self.runs, va)
    }

    /// The end of the mapped space (the last run's end).
    pub fn top(&self) -> u64 {
        self.runs.iter().rev().find(|r| r.2.is_some()).map_or(0, |r| r.1)
    }
}

/// A small deterministic generator (xorshift64*), seeded per run.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed | 1)
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

/// Page addresses to probe: both sides of every change's edges, of every 2 MiB boundary
/// below 4 GiB and of every 1 GiB boundary up to 64 GiB past the mapped top; random pages
/// (most below 4 GiB, some up to 1 GiB past the top, some anywhere in the lower half); and
/// `extra`.
pub fn addresses(model: &Model, expected: &Expected, extra: &[u64], rng: &mut Rng, random: usize) -> Vec<u64> {
    const LIMIT: u64 = 1 << 47;
    let mut vas: Vec<u64> = Vec::new();
    let both_sides = |vas: &mut Vec<u64>, edge: u64| {
        let edge = edge & !(PAGE - 1);
        if edge >= PAGE {
            vas.push(edge - PAGE);
        }
        if edge < LIMIT {
            vas.push(edge);
        }
    };
    for change in model.changes() {
        let (_, va, _, size, _) = change.fields();
        both_sides(&mut vas, va);
        both_sides(&mut vas, va + size);
    }
    let top = expected.top();
    let mut edge = MIB2;
    while edge <= 4 * GIB {
        both_sides(&mut vas, edge);
        edge += MIB2;
    }
    // 1 GiB boundaries up to 64 GiB past the identity-mapped RAM and MMIO (the firmware
    // maps up to 1 TiB here); the alias windows far above are covered by their edges.
    let mut edge = GIB;
    while edge <= (top.min(1 << 40) + 64 * GIB).min(LIMIT) {
        both_sides(&mut vas, edge);
        edge += GIB;
    }
    let span = (top + GIB).min(LIMIT);
    for index in 0..random {
        let bound = match index % 8 {
            7 => LIMIT,
            6 => span,
            _ => 4 * GIB,
        };
        vas.push((rng.next() % bound) & !(PAGE - 1));
    }
    vas.extend(extra.iter().map(|va| va & !(PAGE - 1)));
    vas.sort_unstable();
    vas.dedup();
    vas
}

/// Tallies of one probe pass.
#[derive(Debug, Default, Clone, Copy)]
pub struct Tally {
    pub addresses: usize,
    pub reads: usize,
    pub writes: usize,
    pub executes: usize,
    /// Hardware walks without an access (AArch64 `AT`), compared with the model.
    pub translations: usize,
    pub faults: usize,
    pub mismatches: usize,
    pub skipped: usize,
}

/// The normalized fault code an access of `kind` (0 read, `FAULT_WRITE`, `FAULT_FETCH`)
/// must raise where the model says `access`, or `None` if it must complete.
pub fn expected_fault(access: Access, kind: u64) -> Option<u64> {
    if !access.present {
        return Some(kind);
    }
    match kind {
        FAULT_WRITE if !access.writable => Some(FAULT_PRESENT | FAULT_WRITE),
        FAULT_FETCH if !access.executable => Some(FAULT_PRESENT | FAULT_FETCH),
        _ => None,
    }
}

fn check(tally: &mut Tally, phase: &str, what: &str, va: u64, expected: Option<u64>, outcome: Outcome) {
    let matches = match (expected, outcome) {
        (None, Outcome::Done(_)) => true,
        (Some(code), Outcome::Fault { code: got, address }) => got == code && address == va,
        _ => false,
    };
    if matches!(outcome, Outcome::Fault { .. }) {
        tally.faults += 1;
    }
    if !matches {
        tally.mismatches += 1;
        if tally.mismatches <= 20 {
            crate::txp!("MISMATCH phase={phase} access={what} va={va:#x} expected={expected:x?} got={outcome:x?}");
        }
    }
}

/// Finds a return instruction in the readable page at `va`.
fn return_in(va: u64) -> Option<u64> {
    // SAFETY: the caller read the page without a fault just before; it is RAM, identity or
    // alias mapped, and only read here.
    let page = unsafe { core::slice::from_raw_parts(va as *const u8, PAGE as usize) };
    crate::arch::find_return(page).map(|offset| va + offset as u64)
}

/// Probes every address in `vas` with the accesses that are safe there, under the probe
/// phase, and checks each outcome against `expected`. `memory` classifies by physical
/// address (the output address from the model).
pub fn run(phase: &str, vas: &[u64], expected: &Expected, memory: &Memory) -> Tally {
    let mut tally = Tally {
        addresses: vas.len(),
        ..Tally::default()
    };
    let _phase = probe::ProbePhase::enter();
    for &va in vas {
        let mapping = expected.at(va);
        let access = Access::of(mapping);
        let kind = mapping.map_or(Kind::Other, |(pa, _)| memory.kind(pa));
        if let Some(matches) = probe::translation_matches(va, mapping, access) {
            tally.translations += 1;
            if !matches {
                tally.mismatches += 1;
                if tally.mismatches <= 20 {
                    crate::txp!("MISMATCH phase={phase} access=translate va={va:#x} expected={mapping:x?}");
                }
            }
        }
        // Read: where it cannot have a side effect, or where it must fault.
        if kind != Kind::Other || !access.present {
            tally.reads += 1;
            let outcome = probe::read(va);
            let read_matched = matches!(
                (expected_fault(access, 0), outcome),
                (None, Outcome::Done(_)) | (Some(_), Outcome::Fault { .. })
            );
            check(&mut tally, phase, "read", va, expected_fault(access, 0), outcome);
            if !read_matched {
                continue;
            }
        } else {
            tally.skipped += 1;
            continue;
        }
        // Write: to RAM (the value read is stored back), or where it must fault.
        if kind == Kind::Ram || !access.present {
            tally.writes += 1;
            check(
                &mut tally,
                phase,
                "write",
                va,
                expected_fault(access, FAULT_WRITE),
                probe::write(va),
            );
        }
        // Execute: a call to a return instruction of a present RAM page, or to the page's
        // start where the read just faulted (the fetch must fault the same way).
        let target = if !access.present {
            Some(va)
        } else if kind == Kind::Ram {
            return_in(va)
        } else {
            None
        };
        match target {
            Some(target) => {
                tally.executes += 1;
                check(
                    &mut tally,
                    phase,
                    "execute",
                    target,
                    expected_fault(access, FAULT_FETCH),
                    probe::execute(target),
                );
            }
            None => tally.skipped += 1,
        }
    }
    tally
}
