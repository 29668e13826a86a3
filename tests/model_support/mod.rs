//! Harness of the randomized reference-model tests (`tests/model.rs`).
//!
//! - [`Model`]: the reference: sorted, maximal runs of linear page ranges mapped to a
//!   physical address with attributes, and the documented semantics of map, unmap and
//!   protect, argument checks included, applied op by op (all or nothing per transaction).
//! - [`min_table_pages`]: the table pages of the canonical form of a model, computed from
//!   the runs alone.
//! - [`ModelTarget`]: what an architecture supplies (table construction, shape, raw entry
//!   decoding, interesting address windows): [`X64Target`], and [`Aarch64Target`] in
//!   `aarch64.rs`.
//! - [`Runner`]: generates random transactions, predicts them with the model, runs them on
//!   the target and checks everything after each commit (or that a failed commit changed
//!   no byte).
//! - [`ModelPolicy`]: with a protection [`Policy`] on the table, the model predicts which
//!   valid transactions the policy refuses (the rule, the op and the first offending
//!   address), from the model's final state over the touched ranges.
//!
//! Seeds: `TXPAGING_SEED` (decimal or 0x-hex) fixes the base seed, `TXPAGING_SEED=random`
//! draws a fresh one; unset, a fixed default keeps CI repeatable. A failing test prints it. `TXPAGING_MODEL_OPS` sets the total number
//! of ops of the model tests (default [`DEFAULT_TOTAL_OPS`]).
#![allow(dead_code)]

use std::cell::Cell;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::sync::OnceLock;

use txpaging::{
    Codec, CommitReport, MappedRegion, MemoryAttributes as MA, MmuOp, PageAllocator, PagePool, PageTable, PagingType,
    Plan, Policy, PtError, Reason, RecordingMmu, Rule, Rules, Tlb, Transaction, TxnError, X64Config, X64PageTable,
};

pub const PAGE: u64 = 4096;
pub const MIB2: u64 = 2 << 20;
pub const GIB: u64 = 1 << 30;

/// Total ops of all model tests of one `cargo test` run unless `TXPAGING_MODEL_OPS` says otherwise.
pub const DEFAULT_TOTAL_OPS: u64 = 120_000;

// ------------------------------------------------------------------------------------------
// Random numbers and seeds
// ------------------------------------------------------------------------------------------

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// xorshift64*, seeded through splitmix64.
#[derive(Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        let s = splitmix(seed);
        Rng(if s == 0 { 0x2545_F491_4F6C_DD1D } else { s })
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `0..n` (0 if `n == 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        ((self.next_u64() as u128 * n as u128) >> 64) as u64
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }

    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    pub fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len() as u64) as usize]
    }
}

fn parse_u64(text: &str) -> Option<u64> {
    let text = text.trim().replace('_', "");
    match text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => text.parse().ok(),
    }
}

/// The base seed used when `TXPAGING_SEED` is not set, so CI runs are repeatable.
pub const DEFAULT_SEED: u64 = 0x7A5E_ED00_2026_1125;

/// The base seed of this run: `TXPAGING_SEED` (a number, or `random` for one drawn from
/// the clock), else [`DEFAULT_SEED`].
pub fn base_seed() -> u64 {
    static SEED: OnceLock<u64> = OnceLock::new();
    *SEED.get_or_init(|| match std::env::var("TXPAGING_SEED").as_deref() {
        Err(_) => DEFAULT_SEED,
        Ok(text) if text != "random" => {
            parse_u64(text).unwrap_or_else(|| panic!("TXPAGING_SEED={text:?} is not a number"))
        }
        Ok(_) => {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0);
            splitmix(nanos ^ u64::from(std::process::id()).rotate_left(32))
        }
    })
}

/// The seed of one test: the base seed mixed with the test's name.
pub fn test_seed(test: &str) -> u64 {
    let mut h: u64 = 0xCBF2_9CE4_8422_2325;
    for b in test.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01B3);
    }
    splitmix(base_seed() ^ h)
}

/// Ops for a test that gets `per_mille` of the total.
pub fn ops_budget(per_mille: u64) -> u64 {
    let total = match std::env::var("TXPAGING_MODEL_OPS") {
        Ok(text) => parse_u64(&text).unwrap_or_else(|| panic!("TXPAGING_MODEL_OPS={text:?} is not a number")),
        Err(_) => DEFAULT_TOTAL_OPS,
    };
    (total * per_mille).div_ceil(1000).max(1)
}

/// Prints how to replay a test when it panics, with the last context recorded.
pub struct Replay {
    pub test: String,
    pub context: String,
}

impl Replay {
    pub fn new(test: &str) -> Self {
        Self {
            test: test.to_string(),
            context: String::new(),
        }
    }
}

impl Drop for Replay {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "\n=== model test `{}` FAILED. Replay: TXPAGING_SEED={:#x} cargo test --test model {} ===\n{}\n",
                self.test,
                base_seed(),
                self.test,
                self.context
            );
        }
    }
}

// ------------------------------------------------------------------------------------------
// Shape of a paging mode (the model's own reading of the documented rules)
// ------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    /// Table levels; the root holds entries of level `levels - 1`.
    pub levels: u8,
    /// Highest level whose entries may be leaves.
    pub max_leaf_level: u8,
    /// Canonical addresses sign-extend the top translated bit (X64).
    pub sign_extended: bool,
    /// Physical address width.
    pub pa_bits: u8,
}

impl Shape {
    pub fn va_bits(self) -> u32 {
        12 + 9 * u32::from(self.levels)
    }

    pub fn top_level(self) -> u8 {
        self.levels - 1
    }

    pub fn entry_size(level: u8) -> u64 {
        1u64 << (12 + 9 * u32::from(level))
    }

    pub fn leaf_allowed(self, level: u8) -> bool {
        level <= self.max_leaf_level
    }

    /// Size of the whole linear space.
    pub fn space(self) -> u64 {
        1u64 << self.va_bits()
    }

    /// Linear address of the first page of the high half (where regions never merge).
    pub fn hole(self) -> Option<u64> {
        self.sign_extended.then(|| 1u64 << (self.va_bits() - 1))
    }

    pub fn is_canonical(self, va: u64) -> bool {
        let bits = self.va_bits();
        if self.sign_extended {
            let upper = va >> (bits - 1);
            upper == 0 || upper == u64::MAX >> (bits - 1)
        } else {
            va >> bits == 0
        }
    }

    pub fn to_linear(self, va: u64) -> u64 {
        assert!(self.is_canonical(va), "{va:#x} is not canonical");
        va & (self.space() - 1)
    }

    pub fn to_canonical(self, linear: u64) -> u64 {
        match self.hole() {
            Some(hole) if linear >= hole => linear | !(self.space() - 1),
            _ => linear,
        }
    }

    /// The documented range checks, in their documented order; returns linear `start..end`.
    pub fn check_range(self, va: u64, size: u64) -> Result<(u64, u64), PtError> {
        if size == 0 {
            return Err(PtError::InvalidMemoryRange);
        }
        if va % PAGE != 0 {
            return Err(PtError::UnalignedAddress);
        }
        if size % PAGE != 0 {
            return Err(PtError::UnalignedMemoryRange);
        }
        let Some(last) = va.checked_add(size - 1) else {
            return Err(PtError::AdditionOverflow);
        };
        if !self.is_canonical(va) || !self.is_canonical(last) {
            return Err(PtError::InvalidMemoryRange);
        }
        // Both canonical: the range crosses the hole iff the halves differ.
        let (start, last) = (self.to_linear(va), self.to_linear(last));
        if last < start || last - start != size - 1 {
            return Err(PtError::InvalidMemoryRange);
        }
        Ok((start, last + 1))
    }

    /// The documented checks of an aliased map's physical range.
    pub fn check_pa(self, pa: u64, size: u64) -> Result<(), PtError> {
        if pa % PAGE != 0 {
            return Err(PtError::UnalignedPageBase);
        }
        let Some(last) = pa.checked_add(size.saturating_sub(1)) else {
            return Err(PtError::AdditionOverflow);
        };
        if last >> self.pa_bits != 0 {
            return Err(PtError::InvalidMemoryRange);
        }
        Ok(())
    }
}

// ------------------------------------------------------------------------------------------
// Ops
// ------------------------------------------------------------------------------------------

/// One op as the tests issue it (canonical addresses).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MOp {
    /// Identity map (`map` / `map_memory_region`).
    Map {
        va: u64,
        size: u64,
        attrs: MA,
    },
    /// `map_aliased` / `map_aliased_memory_region`.
    MapAliased {
        va: u64,
        pa: u64,
        size: u64,
        attrs: MA,
    },
    Unmap {
        va: u64,
        size: u64,
    },
    Protect {
        va: u64,
        size: u64,
        attrs: MA,
    },
}

impl MOp {
    pub fn range(&self) -> (u64, u64) {
        match *self {
            MOp::Map { va, size, .. }
            | MOp::MapAliased { va, size, .. }
            | MOp::Unmap { va, size }
            | MOp::Protect { va, size, .. } => (va, size),
        }
    }
}

/// Queues `ops` on a transaction of any table, through the builder calls
/// (`map`, `map_aliased`, `unmap`, `protect`).
pub fn queue<C: Codec, P: PageAllocator, T: Tlb>(t: &mut Transaction<'_, C, P, T>, ops: &[MOp]) {
    for op in ops {
        match *op {
            MOp::Map { va, size, attrs } => t.map(va, size, attrs),
            MOp::MapAliased { va, pa, size, attrs } => t.map_aliased(va, pa, size, attrs),
            MOp::Unmap { va, size } => t.unmap(va, size),
            MOp::Protect { va, size, attrs } => t.protect(va, size, attrs),
        };
    }
}

/// Formats ops as Rust-ish lines (for failure reports and bug write-ups).
pub fn describe_ops(ops: &[MOp]) -> String {
    let mut s = String::new();
    for (i, op) in ops.iter().enumerate() {
        let _ = match *op {
            MOp::Map { va, size, attrs } => writeln!(s, "  [{i}] map({va:#x}, {size:#x}, {attrs:?})"),
            MOp::MapAliased { va, pa, size, attrs } => {
                writeln!(s, "  [{i}] map_aliased({va:#x}, {pa:#x}, {size:#x}, {attrs:?})")
            }
            MOp::Unmap { va, size } => writeln!(s, "  [{i}] unmap({va:#x}, {size:#x})"),
            MOp::Protect { va, size, attrs } => writeln!(s, "  [{i}] protect({va:#x}, {size:#x}, {attrs:?})"),
        };
    }
    s
}

// ------------------------------------------------------------------------------------------
// The reference model
// ------------------------------------------------------------------------------------------

/// A run of mapped pages (linear addresses): `start..end` maps to `pa..` with `attrs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Run {
    pub start: u64,
    pub end: u64,
    pub pa: u64,
    pub attrs: MA,
}

impl Run {
    pub fn clip(&self, start: u64, end: u64) -> Run {
        let s = self.start.max(start);
        Run {
            start: s,
            end: self.end.min(end),
            pa: self.pa + (s - self.start),
            attrs: self.attrs,
        }
    }

    /// Whether `next` continues this run: adjacent, contiguous output, same attributes.
    pub fn continued_by(&self, next: &Run) -> bool {
        self.end == next.start
            && self.pa.checked_add(self.end - self.start) == Some(next.pa)
            && self.attrs == next.attrs
    }
}

/// What protect does to one page's attributes (the documented rule).
pub fn reprotect(old: MA, change: MA) -> MA {
    let cache_mask = MA::CacheAttributesMask.bits();
    let access_mask = MA::AccessAttributesMask.bits();
    let cache = if change.bits() & cache_mask != 0 {
        change.bits() & cache_mask
    } else {
        old.bits() & cache_mask
    };
    MA::from_bits_retain((change.bits() & access_mask) | cache)
}

/// The reference: maximal runs keyed by linear start (merged wherever continued, in
/// linear space, so the representation of a mapping is unique).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Model {
    runs: BTreeMap<u64, Run>,
}

impl Model {
    pub fn runs(&self) -> impl Iterator<Item = &Run> + '_ {
        self.runs.values()
    }

    pub fn run_vec(&self) -> Vec<Run> {
        self.runs.values().copied().collect()
    }

    pub fn len(&self) -> usize {
        self.runs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.runs.is_empty()
    }

    pub fn nth(&self, n: usize) -> Option<Run> {
        self.runs.values().nth(n).copied()
    }

    /// The runs overlapping `start..end`, clipped to it, in order.
    pub fn clipped(&self, start: u64, end: u64) -> Vec<Run> {
        let mut out = Vec::new();
        if let Some((_, r)) = self.runs.range(..start).next_back() {
            if r.end > start {
                out.push(r.clip(start, end));
            }
        }
        out.extend(self.runs.range(start..end).map(|(_, r)| r.clip(start, end)));
        out
    }

    pub fn lookup(&self, page: u64) -> Option<(u64, MA)> {
        let (_, r) = self.runs.range(..=page).next_back()?;
        (page < r.end).then(|| (r.pa + (page - r.start), r.attrs))
    }

    pub fn run_at(&self, page: u64) -> Option<Run> {
        let (_, r) = self.runs.range(..=page).next_back()?;
        (page < r.end).then_some(*r)
    }

    pub fn covered(&self, start: u64, end: u64) -> bool {
        self.first_hole(start, end).is_none()
    }

    /// The first linear page of `start..end` that is not mapped, if any.
    pub fn first_hole(&self, start: u64, end: u64) -> Option<u64> {
        let mut at = start;
        for r in self.clipped(start, end) {
            if r.start != at {
                return Some(at);
            }
            at = r.end;
        }
        (at != end).then_some(at)
    }

    fn remove(&mut self, start: u64, end: u64) {
        for r in self.clipped(start, end) {
            let key = self.run_at(r.start).expect("clipped run exists").start;
            let whole = self.runs.remove(&key).expect("run exists");
            if whole.start < start {
                self.runs.insert(whole.start, whole.clip(whole.start, start));
            }
            if whole.end > end {
                let tail = whole.clip(end, whole.end);
                self.runs.insert(tail.start, tail);
            }
        }
    }

    /// Inserts `run` into free space, merging with continued neighbours.
    fn insert(&mut self, mut run: Run) {
        if let Some((_, prev)) = self.runs.range(..run.start).next_back() {
            if prev.continued_by(&run) {
                let prev = *prev;
                self.runs.remove(&prev.start);
                run = Run {
                    start: prev.start,
                    pa: prev.pa,
                    ..run
                };
            }
        }
        if let Some(next) = self.runs.get(&run.end).copied() {
            if run.continued_by(&next) {
                self.runs.remove(&next.start);
                run.end = next.end;
            }
        }
        self.runs.insert(run.start, run);
    }

    pub fn map(&mut self, start: u64, end: u64, pa: u64, attrs: MA) {
        self.remove(start, end);
        self.insert(Run { start, end, pa, attrs });
    }

    pub fn unmap(&mut self, start: u64, end: u64) -> Result<(), PtError> {
        if !self.covered(start, end) {
            return Err(PtError::NoMapping);
        }
        self.remove(start, end);
        Ok(())
    }

    pub fn protect(&mut self, start: u64, end: u64, change: MA) -> Result<(), PtError> {
        if !self.covered(start, end) {
            return Err(PtError::NoMapping);
        }
        let pieces = self.clipped(start, end);
        self.remove(start, end);
        for p in pieces {
            self.insert(Run {
                attrs: reprotect(p.attrs, change),
                ..p
            });
        }
        Ok(())
    }

    /// Applies one op with the documented checks (range, physical range, attributes, mapped).
    pub fn apply<T: ModelTarget>(&mut self, shape: &Shape, op: &MOp) -> Result<(), PtError> {
        match *op {
            MOp::Map { va, size, attrs } => {
                let (s, e) = shape.check_range(va, size)?;
                shape.check_pa(va, size)?;
                T::check_map_attributes(attrs)?;
                self.map(s, e, va, attrs);
                Ok(())
            }
            MOp::MapAliased { va, pa, size, attrs } => {
                let (s, e) = shape.check_range(va, size)?;
                shape.check_pa(pa, size)?;
                T::check_map_attributes(attrs)?;
                self.map(s, e, pa, attrs);
                Ok(())
            }
            MOp::Unmap { va, size } => {
                let (s, e) = shape.check_range(va, size)?;
                self.unmap(s, e)
            }
            MOp::Protect { va, size, attrs } => {
                let (s, e) = shape.check_range(va, size)?;
                T::check_protect_attributes(attrs)?;
                self.protect(s, e, attrs)
            }
        }
    }

    /// What a transaction of `ops` does: the new model, or the first failing op. For
    /// `NoMapping` the error also carries the first page of the op's range that is not
    /// mapped at that point of the sequence (`address`, canonical).
    pub fn predict<T: ModelTarget>(&self, shape: &Shape, ops: &[MOp]) -> Result<Model, TxnError> {
        let mut next = self.clone();
        for (i, op) in ops.iter().enumerate() {
            let before = next.clone();
            next.apply::<T>(shape, op).map_err(|error| {
                let failure = TxnError::at(i, error);
                match (error, *op) {
                    (PtError::NoMapping, MOp::Unmap { va, size } | MOp::Protect { va, size, .. }) => {
                        let (s, e) = shape.check_range(va, size).expect("range checked before the mapping");
                        let hole = before.first_hole(s, e).expect("NoMapping means a hole");
                        failure.with_detail(Reason::NotMapped, shape.to_canonical(hole))
                    }
                    _ => failure,
                }
            })?;
        }
        Ok(next)
    }

    /// What `query_memory_region` must return.
    pub fn query<T: ModelTarget>(&self, shape: &Shape, va: u64, size: u64) -> Result<MA, PtError> {
        let (s, e) = shape.check_range(va, size)?;
        if !self.covered(s, e) {
            return Err(PtError::NoMapping);
        }
        let pieces = self.clipped(s, e);
        let first = pieces[0].attrs;
        if pieces.iter().all(|p| p.attrs == first) {
            Ok(first)
        } else {
            Err(PtError::NonUniformMemoryAttributes)
        }
    }

    /// The runs as `regions()` must report them: canonical, never merged across the hole.
    pub fn regions(&self, shape: &Shape) -> Vec<MappedRegion> {
        let mut out = Vec::new();
        for r in self.runs() {
            let mut pieces = vec![*r];
            if let Some(hole) = shape.hole() {
                if r.start < hole && hole < r.end {
                    pieces = vec![r.clip(r.start, hole), r.clip(hole, r.end)];
                }
            }
            for p in pieces {
                out.push(MappedRegion {
                    va: shape.to_canonical(p.start),
                    pa: p.pa,
                    size: p.end - p.start,
                    attributes: p.attrs,
                });
            }
        }
        out
    }
}

// ------------------------------------------------------------------------------------------
// The protection policy, predicted from the model
// ------------------------------------------------------------------------------------------

/// A [`Policy`] as the model reads it (docs of `Policy` and `Rule`): every present page of
/// a transaction's final state, over the ranges its ops touch, must obey the rules; a
/// `ReadProtect` page is not present, an unmapped one is not checked.
#[derive(Debug, Clone)]
pub struct ModelPolicy {
    pub policy: Policy,
    /// Registered code and data ranges, linear `start..end`.
    code: Vec<(u64, u64)>,
    data: Vec<(u64, u64)>,
}

impl ModelPolicy {
    pub fn new(shape: &Shape, policy: Policy) -> Self {
        let linear = |ranges: &[(u64, u64)]| {
            ranges
                .iter()
                .map(|&(va, size)| shape.check_range(va, size).expect("a policy range valid in this mode"))
                .collect()
        };
        Self {
            code: linear(policy.code_ranges()),
            data: linear(policy.data_ranges()),
            policy,
        }
    }

    /// The rule broken first in `after` (the model once `ops` ran) over the ranges `ops`
    /// touch, at its lowest linear address; at one address the first rule in `Rule`'s
    /// order. `None` if the transaction obeys the policy.
    pub fn violation(&self, shape: &Shape, after: &Model, ops: &[MOp]) -> Option<(Rule, u64)> {
        let rules = self.policy.rules();
        let mut touched: Vec<(u64, u64)> = ops
            .iter()
            .map(|op| {
                let (va, size) = op.range();
                shape.check_range(va, size).expect("a valid transaction")
            })
            .collect();
        touched.sort_unstable();
        let mut merged: Vec<(u64, u64)> = Vec::new();
        for (s, e) in touched {
            match merged.last_mut() {
                Some(last) if s <= last.1 => last.1 = last.1.max(e),
                _ => merged.push((s, e)),
            }
        }
        let mut found: Option<(u64, Rule)> = None;
        for (s, e) in merged {
            for piece in after.clipped(s, e) {
                let a = piece.attrs;
                if a.contains(MA::ReadProtect) {
                    continue;
                }
                let writable = !a.contains(MA::ReadOnly);
                let executable = !a.contains(MA::ExecuteProtect);
                let mut candidates = Vec::new();
                if rules.contains(Rules::NO_NULL_PAGE) && piece.start == 0 {
                    candidates.push((0, Rule::NullPage));
                }
                if rules.contains(Rules::WRITE_XOR_EXECUTE) && writable && executable {
                    candidates.push((piece.start, Rule::WriteXorExecute));
                }
                if rules.contains(Rules::NO_EXECUTABLE_MMIO)
                    && executable
                    && a.intersects(MA::Uncached | MA::UncachedExport)
                {
                    candidates.push((piece.start, Rule::ExecutableMmio));
                }
                let overlaps = |ranges: &[(u64, u64)], rule| {
                    ranges
                        .iter()
                        .filter(|&&(rs, re)| rs < piece.end && piece.start < re)
                        .map(|&(rs, _)| (rs.max(piece.start), rule))
                        .min()
                };
                if writable {
                    candidates.extend(overlaps(&self.code, Rule::WritableCode));
                }
                if executable {
                    candidates.extend(overlaps(&self.data, Rule::ExecutableData));
                }
                if let Some(first) = candidates.into_iter().min() {
                    found = Some(found.map_or(first, |f| f.min(first)));
                }
            }
        }
        found.map(|(address, rule)| (rule, address))
    }
}

/// The policy of the policy-on model runs on `t`: strict (W^X, no NULL page, no executable
/// MMIO), 64 KiB of code at 0x60_0000 and 256 KiB at the start of the highest window plus
/// 2 MiB, 2 MiB of data across the first 1 GiB boundary and 3 MiB in the whole-GiB
/// playground. Every range lies in a window the generator draws from.
pub fn model_policy<T: ModelTarget>(t: &T) -> Policy {
    let top = t.windows().iter().map(|w| w.base).max().expect("windows");
    Policy::strict()
        .code(0x60_0000, 0x1_0000)
        .code(top + MIB2, 0x4_0000)
        .data(GIB - 0x10_0000, MIB2)
        .data(5 * GIB + 3 * MIB2, 0x30_0000)
}

/// The directed X64 scenario of `tests/model.rs` (also a fuzz seed): a GiB mapped, a page
/// in it made read-only and back (split and merge at 2 MiB), a 2 MiB hole refilled, an
/// alias at the top of the space, the GiB unmapped, then a 2 MiB page built page by page.
pub fn x64_split_merge_steps() -> Vec<Vec<MOp>> {
    let wb = MA::Writeback;
    let mut steps = split_merge_opening();
    steps.extend([
        vec![
            MOp::Unmap {
                va: GIB + MIB2,
                size: MIB2,
            },
            MOp::Map {
                va: GIB + MIB2,
                size: MIB2,
                attrs: wb,
            },
        ],
        vec![MOp::MapAliased {
            va: 0xFFFF_FFFF_FFE0_0000,
            pa: 0x4000_0000,
            size: MIB2,
            attrs: wb,
        }],
        vec![MOp::Unmap { va: GIB, size: GIB }],
        // Built up page by page, then merged to one leaf by the last page.
        (0..512)
            .map(|i| MOp::Map {
                va: 0x40_0000 + i * PAGE,
                size: PAGE,
                attrs: wb,
            })
            .collect(),
    ]);
    steps
}

/// The opening both directed scenarios share: a GiB mapped, then one page in it made
/// read-only and back (a split of a 2 MiB leaf, then its merge).
pub fn split_merge_opening() -> Vec<Vec<MOp>> {
    let wb = MA::Writeback;
    vec![
        vec![MOp::Map {
            va: GIB,
            size: GIB,
            attrs: wb,
        }],
        vec![MOp::Protect {
            va: GIB + 5 * MIB2 + PAGE,
            size: PAGE,
            attrs: MA::ReadOnly,
        }],
        vec![MOp::Protect {
            va: GIB + 5 * MIB2 + PAGE,
            size: PAGE,
            attrs: MA::empty(),
        }],
    ]
}

// ------------------------------------------------------------------------------------------
// Minimal table pages of the canonical form, from the model alone
// ------------------------------------------------------------------------------------------

/// Table pages below an entry of `level` wholly mapped by one run whose output starts at `pa`.
fn full_entry_tables(shape: &Shape, level: u8, pa: u64) -> usize {
    if level == 0 || (shape.leaf_allowed(level) && pa % Shape::entry_size(level) == 0) {
        return 0;
    }
    // A table; its 512 children are wholly mapped with the same misalignment.
    1 + 512 * full_entry_tables(shape, level - 1, pa)
}

/// Table pages strictly below the table of `level` entries starting at linear `table_va`,
/// given the sorted maximal `runs` that overlap it.
fn tables_below(shape: &Shape, level: u8, table_va: u64, runs: &[Run]) -> usize {
    let size = Shape::entry_size(level);
    let table_end = table_va.saturating_add(size * 512);
    let mut total = 0;
    let (mut pos, mut i) = (table_va, 0);
    loop {
        while i < runs.len() && runs[i].end <= pos {
            i += 1;
        }
        if i == runs.len() {
            break;
        }
        let s = runs[i].start.max(pos);
        if s >= table_end {
            break;
        }
        let entry_va = s & !(size - 1);
        let entry_end = entry_va + size;
        let mut j = i;
        while j < runs.len() && runs[j].start < entry_end {
            j += 1;
        }
        let inside = &runs[i..j];
        if inside.len() == 1 && inside[0].start <= entry_va && inside[0].end >= entry_end {
            total += full_entry_tables(shape, level, inside[0].pa + (entry_va - inside[0].start));
        } else if level > 0 {
            // Partly mapped, or by several runs (maximal runs never continue each other).
            total += 1 + tables_below(shape, level - 1, entry_va, inside);
        }
        pos = entry_end;
    }
    total
}

/// Table pages (root included) of the canonical form of `model`.
pub fn min_table_pages(shape: &Shape, model: &Model) -> usize {
    1 + tables_below(shape, shape.top_level(), 0, &model.run_vec())
}

// ------------------------------------------------------------------------------------------
// Targets
// ------------------------------------------------------------------------------------------

/// A raw entry as the target's own decoder (in this harness) reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RawEntry {
    Invalid,
    Table(u64),
    /// `live`: the hardware may cache it (it is present).
    Leaf {
        pa: u64,
        attrs: MA,
        live: bool,
    },
}

/// An address window the generator draws ranges from (canonical).
#[derive(Debug, Clone, Copy)]
pub struct Window {
    pub base: u64,
    pub len: u64,
    /// Relative weight.
    pub weight: u64,
    /// Whole-GiB ops are drawn here.
    pub gib: bool,
}

/// One TLB maintenance request the target saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlbOp {
    Page(u64),
    All,
}

/// What an architecture supplies to the harness.
pub trait ModelTarget: Sized {
    type Config: Copy + std::fmt::Debug;

    fn build(config: Self::Config, pool_pages: usize) -> Self;
    fn shape(&self) -> Shape;
    /// Address windows worth testing (canonical), with boundaries of every level.
    fn windows(&self) -> Vec<Window>;
    /// Addresses that are not valid for this mode, for negative tests.
    fn invalid_addresses(&self) -> Vec<u64>;
    /// More than this many page invalidations become one full flush.
    fn page_invalidation_limit() -> usize;

    /// The model's rule for map attributes.
    fn check_map_attributes(attrs: MA) -> Result<(), PtError>;
    /// The model's rule for protect attributes.
    fn check_protect_attributes(attrs: MA) -> Result<(), PtError>;
    /// Whether a map may name no cache type.
    fn map_cache_optional() -> bool;

    /// Runs `ops` as one transaction: optionally `plan()` first, then `commit()`.
    fn transaction(
        &mut self,
        ops: &[MOp],
        plan_first: bool,
    ) -> (Option<Result<Plan, TxnError>>, Result<CommitReport, TxnError>);
    /// `plan()` only.
    fn plan(&mut self, ops: &[MOp]) -> Result<Plan, TxnError>;
    /// Runs one op through the familiar one-op API.
    fn one_op(&mut self, op: &MOp) -> Result<(), PtError>;

    fn query(&self, va: u64, size: u64) -> Result<MA, PtError>;
    fn translate(&self, va: u64) -> Option<(u64, MA)>;
    fn regions(&self) -> Vec<MappedRegion>;
    fn table_pages(&self) -> usize;
    fn root(&self) -> u64;
    fn read_entry(&self, table: u64, index: usize) -> u64;
    fn visit_entries(&self, va: u64, size: u64, visit: &mut dyn FnMut(u8, u64, u64)) -> Result<(), PtError>;
    /// Decodes a raw entry, rejecting any bit pattern the encoding should never produce.
    fn decode(&self, raw: u64, level: u8) -> Result<RawEntry, String>;
    fn take_tlb_log(&self) -> Vec<TlbOp>;
    /// Whether commits on this table must invalidate changed translations. A table no CPU
    /// walks may need none (AArch64: installing it invalidates everything).
    fn must_invalidate(&self) -> bool {
        true
    }

    fn pool(&self) -> &PagePool;
    /// Makes allocation call number `call` (pool lifetime count) fail.
    fn fail_allocation_at(&self, call: Option<usize>);
    /// Sets the table's protection policy.
    fn set_policy(&mut self, policy: Policy) -> Result<(), PtError>;
}

/// A [`PagePool`] whose failure injection can be armed through a shared reference.
pub struct TestPool {
    pub pool: PagePool,
    fail_at: Cell<Option<usize>>,
}

impl TestPool {
    pub fn new(pages: usize) -> Self {
        Self {
            pool: PagePool::new(pages),
            fail_at: Cell::new(None),
        }
    }
}

impl PageAllocator for TestPool {
    fn allocate_page(&mut self, align: u64, size: u64) -> Result<u64, PtError> {
        self.pool.fail_at(self.fail_at.get());
        self.pool.allocate_page(align, size)
    }

    fn free_page(&mut self, address: u64, size: u64) {
        self.pool.free_page(address, size)
    }

    fn physical_to_pointer(&self, address: u64) -> *mut u8 {
        self.pool.physical_to_pointer(address)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct X64Cfg {
    pub five_level: bool,
    pub one_gib_pages: bool,
}

pub struct X64Target {
    pub table: X64PageTable<TestPool, RecordingMmu>,
    pub cfg: X64Cfg,
}

fn x64_check_attributes(attrs: MA) -> Result<(), PtError> {
    let known = MA::CacheAttributesMask.bits() | MA::AccessAttributesMask.bits();
    if attrs.bits() & !known != 0 {
        return Err(PtError::InvalidParameter);
    }
    if (attrs.bits() & MA::CacheAttributesMask.bits()).count_ones() > 1 {
        return Err(PtError::IncompatibleMemoryAttributes);
    }
    Ok(())
}

impl ModelTarget for X64Target {
    type Config = X64Cfg;

    fn build(cfg: X64Cfg, pool_pages: usize) -> Self {
        let paging = if cfg.five_level {
            PagingType::Paging5Level
        } else {
            PagingType::Paging4Level
        };
        let config = X64Config {
            one_gib_pages: cfg.one_gib_pages,
        };
        let table = X64PageTable::with_mmu(TestPool::new(pool_pages), paging, config, RecordingMmu::new())
            .expect("creating a table");
        // Installed, so that every commit must invalidate what it changes (a table never
        // installed needs no invalidation; tests/transactions.rs checks that).
        table.install_page_table().expect("installing on the recording MMU");
        table.mmu().take_log();
        Self { table, cfg }
    }

    fn shape(&self) -> Shape {
        Shape {
            levels: if self.cfg.five_level { 5 } else { 4 },
            max_leaf_level: if self.cfg.one_gib_pages { 2 } else { 1 },
            sign_extended: true,
            pa_bits: 52,
        }
    }

    fn windows(&self) -> Vec<Window> {
        let w = |base, len, weight, gib| Window { base, len, weight, gib };
        let mut v = vec![
            // Page 0 and the first 2 MiB boundaries.
            w(0, 8 << 20, 30, false),
            // Around the first 1 GiB boundary.
            w(GIB - (4 << 20), 8 << 20, 25, false),
            // Around the first 512 GiB boundary (PML4 entry).
            w((512 * GIB) - (4 << 20), 8 << 20, 15, false),
            // Whole-GiB playground (small ops too).
            w(4 * GIB, 4 * GIB, 15, true),
        ];
        if self.cfg.five_level {
            v.extend([
                // Around the first 256 TiB boundary (PML5 entry).
                w((1u64 << 48) - (4 << 20), 8 << 20, 6, false),
                // Top of the low half, bottom and top of the high half.
                w(0x00FF_FFFF_FFC0_0000, 4 << 20, 3, false),
                w(0xFF00_0000_0000_0000, 4 << 20, 4, false),
                w(0xFFFF_FFFF_FFC0_0000, 4 << 20, 3, false),
            ]);
        } else {
            v.extend([
                w(0x0000_7FFF_FFC0_0000, 4 << 20, 3, false),
                w(0xFFFF_8000_0000_0000, 4 << 20, 5, false),
                w(0xFFFF_FFFF_FFC0_0000, 4 << 20, 3, false),
            ]);
        }
        v
    }

    fn invalid_addresses(&self) -> Vec<u64> {
        if self.cfg.five_level {
            vec![0x0100_0000_0000_0000, 0x8000_0000_0000_0000, 0xFEFF_FFFF_FFFF_F000]
        } else {
            vec![
                0x0000_8000_0000_0000,
                0x0100_0000_0000_0000,
                0xFFFF_7FFF_FFFF_F000,
                0xFF00_0000_0000_0000,
            ]
        }
    }

    fn page_invalidation_limit() -> usize {
        33
    }

    fn check_map_attributes(attrs: MA) -> Result<(), PtError> {
        x64_check_attributes(attrs)
    }

    fn check_protect_attributes(attrs: MA) -> Result<(), PtError> {
        x64_check_attributes(attrs)
    }

    fn map_cache_optional() -> bool {
        true
    }

    fn transaction(
        &mut self,
        ops: &[MOp],
        plan_first: bool,
    ) -> (Option<Result<Plan, TxnError>>, Result<CommitReport, TxnError>) {
        let mut t = self.table.transaction();
        queue(&mut t, ops);
        let plan = plan_first.then(|| t.plan());
        let result = t.commit();
        assert!(t.ops().is_empty(), "commit must empty the queue");
        (plan, result)
    }

    fn plan(&mut self, ops: &[MOp]) -> Result<Plan, TxnError> {
        let mut t = self.table.transaction();
        queue(&mut t, ops);
        t.plan()
    }

    fn one_op(&mut self, op: &MOp) -> Result<(), PtError> {
        match *op {
            MOp::Map { va, size, attrs } => self.table.map_memory_region(va, size, attrs),
            MOp::MapAliased { va, pa, size, attrs } => self.table.map_aliased_memory_region(va, pa, size, attrs),
            MOp::Unmap { va, size } => self.table.unmap_memory_region(va, size),
            MOp::Protect { va, size, attrs } => self.table.protect_memory_region(va, size, attrs),
        }
    }

    fn query(&self, va: u64, size: u64) -> Result<MA, PtError> {
        self.table.query_memory_region(va, size)
    }

    fn translate(&self, va: u64) -> Option<(u64, MA)> {
        self.table.translate(va)
    }

    fn regions(&self) -> Vec<MappedRegion> {
        self.table.regions().collect()
    }

    fn table_pages(&self) -> usize {
        self.table.table_pages()
    }

    fn root(&self) -> u64 {
        self.table.root()
    }

    fn read_entry(&self, table: u64, index: usize) -> u64 {
        self.table.tables().read_entry(table, index)
    }

    fn visit_entries(&self, va: u64, size: u64, visit: &mut dyn FnMut(u8, u64, u64)) -> Result<(), PtError> {
        self.table.tables().visit_entries(va, size, visit)
    }

    fn decode(&self, raw: u64, level: u8) -> Result<RawEntry, String> {
        // The encoding of api.md / src/x64/encoding.rs, read independently.
        const P: u64 = 1;
        const RW: u64 = 1 << 1;
        const US: u64 = 1 << 2;
        const PWT: u64 = 1 << 3;
        const PCD: u64 = 1 << 4;
        const A: u64 = 1 << 5;
        const D: u64 = 1 << 6;
        const PS: u64 = 1 << 7;
        const G: u64 = 1 << 8;
        const SW_RP: u64 = 1 << 9;
        const PAT_LARGE: u64 = 1 << 12;
        const NX: u64 = 1 << 63;
        const ADDR: u64 = 0x000F_FFFF_FFFF_F000;
        const RESERVED: u64 = (0x7FF << 52) | (3 << 10);
        if raw == 0 {
            return Ok(RawEntry::Invalid);
        }
        let present = raw & P != 0;
        if !present && raw & SW_RP == 0 {
            return Err(format!(
                "non-present entry {raw:#x} at level {level} is neither zero nor ReadProtect"
            ));
        }
        if raw & (US | A | D | G | RESERVED) != 0 {
            return Err(format!(
                "entry {raw:#x} at level {level} has U/S, A, D, G or unused bits set"
            ));
        }
        if present && level > 0 && raw & PS == 0 {
            if raw & !ADDR != P | RW {
                return Err(format!(
                    "table entry {raw:#x} at level {level} is not exactly P|RW|address"
                ));
            }
            return Ok(RawEntry::Table(raw & ADDR));
        }
        if level > self.shape().max_leaf_level {
            return Err(format!("leaf {raw:#x} at level {level}, above the highest leaf level"));
        }
        if present && raw & SW_RP != 0 {
            return Err(format!(
                "present leaf {raw:#x} at level {level} has the ReadProtect software bit"
            ));
        }
        let (pa, pat) = if level > 0 {
            if raw & PS == 0 {
                return Err(format!("large leaf {raw:#x} at level {level} without PS"));
            }
            let pa = raw & ADDR & !PAT_LARGE;
            if pa % Shape::entry_size(level) != 0 {
                return Err(format!("large leaf {raw:#x} at level {level} has an unaligned address"));
            }
            (pa, raw & PAT_LARGE != 0)
        } else {
            (raw & ADDR, raw & PS != 0)
        };
        let index = u64::from(pat) << 2 | u64::from(raw & PCD != 0) << 1 | u64::from(raw & PWT != 0);
        let mut attrs = match index {
            0 => MA::empty(),
            1 => MA::WriteThrough,
            2 => MA::UncachedExport,
            3 => MA::Uncached,
            4 => MA::Writeback,
            5 => MA::WriteProtect,
            7 => MA::WriteCombining,
            _ => return Err(format!("leaf {raw:#x} at level {level} uses the unused PAT index 6")),
        };
        attrs.set(MA::ReadProtect, !present);
        attrs.set(MA::ReadOnly, raw & RW == 0);
        attrs.set(MA::ExecuteProtect, raw & NX != 0);
        Ok(RawEntry::Leaf {
            pa,
            attrs,
            live: present,
        })
    }

    fn take_tlb_log(&self) -> Vec<TlbOp> {
        self.table
            .mmu()
            .take_log()
            .into_iter()
            .filter_map(|op| match op {
                MmuOp::InvalidatePage(va) => Some(TlbOp::Page(va)),
                MmuOp::InvalidateAll => Some(TlbOp::All),
                MmuOp::Install(request) => panic!("a commit installed a table: {request:?}"),
                // Ordering barriers change no translation.
                _ => None,
            })
            .collect()
    }

    fn must_invalidate(&self) -> bool {
        // A table never installed needs no INVLPG: installing it loads CR3.
        self.table.tables().is_live()
    }

    fn pool(&self) -> &PagePool {
        &self.table.allocator().pool
    }

    fn fail_allocation_at(&self, call: Option<usize>) {
        self.table.allocator().fail_at.set(call);
    }

    fn set_policy(&mut self, policy: Policy) -> Result<(), PtError> {
        self.table.set_policy(policy)
    }
}

// ------------------------------------------------------------------------------------------
// Raw walk
// ------------------------------------------------------------------------------------------

/// A leaf found by the raw walk (linear address).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawLeaf {
    pub va: u64,
    pub level: u8,
    pub pa: u64,
    pub attrs: MA,
    pub live: bool,
}

/// Walks every table from the root with `read_entry`; returns the table pages and the leaves.
pub fn raw_walk<T: ModelTarget>(t: &T) -> Result<(Vec<u64>, Vec<RawLeaf>), String> {
    fn walk<T: ModelTarget>(
        t: &T,
        table: u64,
        level: u8,
        table_va: u64,
        tables: &mut Vec<u64>,
        leaves: &mut Vec<RawLeaf>,
    ) -> Result<(), String> {
        tables.push(table);
        let size = Shape::entry_size(level);
        for index in 0..512u64 {
            let raw = t.read_entry(table, index as usize);
            let va = table_va + index * size;
            match t.decode(raw, level)? {
                RawEntry::Invalid => {}
                RawEntry::Table(child) => {
                    if level == 0 {
                        return Err(format!("table pointer {raw:#x} at level 0"));
                    }
                    walk(t, child, level - 1, va, tables, leaves)?
                }
                RawEntry::Leaf { pa, attrs, live } => leaves.push(RawLeaf {
                    va,
                    level,
                    pa,
                    attrs,
                    live,
                }),
            }
        }
        Ok(())
    }
    let (mut tables, mut leaves) = (Vec::new(), Vec::new());
    walk(t, t.root(), t.shape().top_level(), 0, &mut tables, &mut leaves)?;
    Ok((tables, leaves))
}

/// Explains a table count above the minimum: lists the table entries (raw walk) whose
/// range the model says is wholly unmapped or one leaf, and the entries the canonical form
/// needs as tables but that are not.
pub fn redundant_tables<T: ModelTarget>(t: &T, model: &Model) -> String {
    fn walk<T: ModelTarget>(t: &T, model: &Model, table: u64, level: u8, table_va: u64, out: &mut String) {
        let shape = t.shape();
        let size = Shape::entry_size(level);
        for index in 0..512u64 {
            let va = table_va + index * size;
            let raw = t.read_entry(table, index as usize);
            let now = model.clipped(va, va + size);
            let leaf_ok = shape.leaf_allowed(level)
                && now.len() == 1
                && now[0].start == va
                && now[0].end == va + size
                && now[0].pa % size == 0;
            match t.decode(raw, level) {
                Ok(RawEntry::Table(child)) => {
                    if now.is_empty() {
                        let _ = writeln!(
                            out,
                            "  table {child:#x} at level {level} entry va {va:#x}: range unmapped"
                        );
                    } else if leaf_ok {
                        let _ = writeln!(
                            out,
                            "  table {child:#x} at level {level} entry va {va:#x}: range is one leaf {:x?}",
                            now[0]
                        );
                    }
                    walk(t, model, child, level - 1, va, out);
                }
                Ok(RawEntry::Leaf { .. }) if !leaf_ok => {
                    let _ = writeln!(out, "  leaf at level {level} va {va:#x} but the model has {now:x?}");
                }
                Ok(RawEntry::Invalid) if !now.is_empty() => {
                    let _ = writeln!(out, "  invalid at level {level} va {va:#x} but the model has {now:x?}");
                }
                Err(e) => {
                    let _ = writeln!(out, "  {e}");
                }
                _ => {}
            }
        }
    }
    let mut out = String::new();
    walk(t, model, t.root(), t.shape().top_level(), 0, &mut out);
    out
}

/// Merges raw leaves into maximal runs, the way the model stores them.
pub fn leaves_to_runs(leaves: &[RawLeaf]) -> Vec<Run> {
    let mut out: Vec<Run> = Vec::new();
    for l in leaves {
        let run = Run {
            start: l.va,
            end: l.va + Shape::entry_size(l.level),
            pa: l.pa,
            attrs: l.attrs,
        };
        match out.last_mut() {
            Some(prev) if prev.continued_by(&run) => prev.end = run.end,
            _ => out.push(run),
        }
    }
    out
}

/// Bytes of every live pool page, for "nothing changed" checks.
pub fn snapshot(pool: &PagePool) -> Vec<(u64, Vec<u8>)> {
    pool.live()
        .map(|pa| (pa, pool.page(pa).expect("live page").to_vec()))
        .collect()
}

// ------------------------------------------------------------------------------------------
// Random generation
// ------------------------------------------------------------------------------------------

const CACHES: [MA; 6] = [
    MA::Uncached,
    MA::WriteCombining,
    MA::WriteThrough,
    MA::Writeback,
    MA::UncachedExport,
    MA::WriteProtect,
];

fn random_access(rng: &mut Rng) -> MA {
    let mut a = MA::empty();
    if rng.chance(15) {
        a |= MA::ReadOnly;
    }
    if rng.chance(15) {
        a |= MA::ExecuteProtect;
    }
    if rng.chance(7) {
        a |= MA::ReadProtect;
    }
    a
}

fn random_map_attrs<T: ModelTarget>(rng: &mut Rng) -> MA {
    let cache = match rng.below(100) {
        0..=54 => MA::Writeback,
        55..=64 if T::map_cache_optional() => MA::empty(),
        _ => rng.pick(&CACHES),
    };
    cache | random_access(rng)
}

fn random_protect_attrs(rng: &mut Rng) -> MA {
    let cache = match rng.below(100) {
        0..=54 => MA::empty(),
        55..=74 => MA::Writeback,
        _ => rng.pick(&CACHES),
    };
    cache | random_access(rng)
}

/// Attributes that break a rule.
fn bad_attrs(rng: &mut Rng) -> MA {
    if rng.chance(50) {
        let a = rng.pick(&CACHES);
        let mut b = rng.pick(&CACHES);
        while b == a {
            b = rng.pick(&CACHES);
        }
        a | b | random_access(rng)
    } else {
        let unknown = rng.pick(&[0x20u64, 0x40, 0x100, 0x8000, 0x1_0000, 0x4_0000, 1 << 40]);
        MA::from_bits_retain(unknown) | rng.pick(&CACHES)
    }
}

/// Map attributes without a cache type (bad where a map needs one), sometimes with an
/// unknown bit too (then `InvalidParameter` comes first).
fn no_cache_attrs(rng: &mut Rng) -> MA {
    let access = random_access(rng);
    if rng.chance(25) {
        access | MA::from_bits_retain(rng.pick(&[0x20u64, 0x8000, 1 << 40]))
    } else {
        access
    }
}

/// Random op generation against a target's windows.
pub struct Gen {
    pub shape: Shape,
    pub windows: Vec<Window>,
    pub invalid_addresses: Vec<u64>,
    total_weight: u64,
    /// Percent of ops that break an argument rule.
    pub bad_percent: u64,
    /// Percent of valid ops made to obey a strict policy (W^X, no executable MMIO, no NULL
    /// page) where they would not; 0 leaves them as drawn. Policy-on runs set it, so that
    /// most transactions commit and refusals stay frequent.
    pub tame_percent: u64,
    /// Percent of transactions drawn as a batch in address order of small ops near each
    /// other (`sorted_batch`): what the engine's batch path takes; 0 draws none.
    pub sorted_percent: u64,
}

impl Gen {
    pub fn new<T: ModelTarget>(t: &T) -> Self {
        let windows = t.windows();
        let total_weight = windows.iter().map(|w| w.weight).sum();
        Self {
            shape: t.shape(),
            windows,
            invalid_addresses: t.invalid_addresses(),
            total_weight,
            bad_percent: 3,
            tame_percent: 0,
            sorted_percent: 0,
        }
    }

    /// This generator drawing from `windows` only.
    pub fn with_windows(mut self, windows: Vec<Window>) -> Self {
        self.total_weight = windows.iter().map(|w| w.weight).sum();
        self.windows = windows;
        self
    }

    /// `op` made to obey a strict policy, with probability `tame_percent`.
    fn tame(&self, rng: &mut Rng, op: MOp) -> MOp {
        if self.tame_percent == 0 || !rng.chance(self.tame_percent) {
            return op;
        }
        let obey = |rng: &mut Rng, mut a: MA| {
            if a.contains(MA::ReadProtect) {
                return a;
            }
            if !a.intersects(MA::ReadOnly | MA::ExecuteProtect) {
                a |= if rng.chance(65) {
                    MA::ExecuteProtect
                } else {
                    MA::ReadOnly
                };
            }
            if a.intersects(MA::Uncached | MA::UncachedExport) {
                a |= MA::ExecuteProtect;
            }
            a
        };
        match op {
            MOp::Map { va, size, attrs } => {
                // Off the NULL page, where that keeps the range in the space.
                let va = if va == 0 && size < GIB { PAGE } else { va };
                MOp::Map {
                    va,
                    size,
                    attrs: obey(rng, attrs),
                }
            }
            MOp::MapAliased { va, pa, size, attrs } => MOp::MapAliased {
                va: if va == 0 && size < GIB { PAGE } else { va },
                pa,
                size,
                attrs: obey(rng, attrs),
            },
            MOp::Protect { va, size, attrs } => MOp::Protect {
                va,
                size,
                attrs: obey(rng, attrs),
            },
            unmap => unmap,
        }
    }

    pub fn window(&self, rng: &mut Rng) -> Window {
        let mut x = rng.below(self.total_weight);
        for w in &self.windows {
            if x < w.weight {
                return *w;
            }
            x -= w.weight;
        }
        unreachable!()
    }

    /// A page-aligned canonical range inside a window, biased to level boundaries.
    ///
    /// Computed in offsets from the window base: the top window ends at 2^64.
    pub fn range(&self, rng: &mut Rng) -> (u64, u64) {
        let w = self.window(rng);
        let len = w.len;
        let near = |rng: &mut Rng, boundary: u64| -> u64 {
            let k = rng.below(4) * PAGE;
            if rng.chance(50) {
                boundary.saturating_sub(k)
            } else {
                boundary + k
            }
        };
        // Offset of the first 1 GiB boundary of the canonical address (windows are 2 MiB aligned).
        let first_gib = (GIB - w.base % GIB) % GIB;
        let two_mib = rng.below(len / MIB2 + 1) * MIB2;
        let off = match rng.below(100) {
            0..=44 => rng.below(len / PAGE) * PAGE,
            45..=84 => near(rng, two_mib),
            _ if first_gib <= len => {
                let gib = first_gib + rng.below((len - first_gib) / GIB + 1) * GIB;
                near(rng, gib)
            }
            _ => near(rng, two_mib),
        };
        let off = off.min(len - PAGE);
        let (off, size) = match rng.below(100) {
            0..=29 => (off, rng.range(1, 4) * PAGE),
            30..=49 => (off, rng.range(1, 512) * PAGE),
            50..=62 => (off, rng.range(1, 2) * MIB2),
            63..=72 => (off, rng.range(1, 1024) * PAGE),
            73..=86 => {
                // Up to (or just past, or just short of) the next 2 MiB boundary.
                let next = (off + PAGE).next_multiple_of(MIB2);
                let extra = rng.pick(&[0, 0, PAGE, MIB2]);
                let short = if rng.chance(20) { PAGE } else { 0 };
                (off, (next - off + extra).saturating_sub(short))
            }
            87..=95 => (off & !(MIB2 - 1), rng.range(1, 3) * MIB2),
            // Whole GiBs (GiB windows are GiB aligned).
            _ if w.gib => (off & !(GIB - 1), rng.range(1, 2) * GIB),
            _ => (off, rng.range(1, 8) * PAGE),
        };
        let off = off.min(len - PAGE);
        let size = size.clamp(PAGE, len - off);
        (w.base + off, size)
    }

    /// A physical address for an aliased map of `va`.
    pub fn pa_for(&self, rng: &mut Rng, va: u64) -> u64 {
        let base = self.shape.to_linear(va) & ((1 << 46) - 1);
        match rng.below(100) {
            0..=29 => base,
            30..=54 => base + rng.range(1, 4) * GIB,
            55..=69 => base + rng.range(1, 8) * MIB2,
            70..=79 => base + rng.range(1, 7) * PAGE,
            // Masked to half the physical width (changes nothing on X64's 52 bits).
            80..=89 => ((rng.below(1 << 28) << 21) | (va & (MIB2 - 1))) & ((1 << (self.shape.pa_bits - 1)) - 1),
            _ => rng.below(1 << 36) << 12,
        }
    }

    /// A range that `model` maps completely (a stretch of adjacent runs), or `None`.
    pub fn mapped_range(&self, rng: &mut Rng, model: &Model) -> Option<(u64, u64)> {
        if model.is_empty() {
            return None;
        }
        let n = model.len();
        let pivot = model.nth(rng.below(n as u64) as usize)?;
        // Grow to a stretch of adjacent runs (a few on each side).
        let (mut lo, mut hi) = (pivot.start, pivot.end);
        for _ in 0..rng.below(4) {
            match model.run_at(lo.wrapping_sub(PAGE)) {
                Some(r) if lo > 0 => lo = r.start,
                _ => break,
            }
        }
        for _ in 0..rng.below(4) {
            match model.run_at(hi) {
                Some(r) => hi = r.end,
                None => break,
            }
        }
        // The hole splits the linear space into two canonical halves.
        if let Some(hole) = self.shape.hole() {
            if lo < hole && hole < hi {
                if pivot.start >= hole {
                    lo = hole;
                } else {
                    hi = hole;
                }
            }
        }
        let pages = (hi - lo) / PAGE;
        let start = match rng.below(100) {
            0..=34 => lo,
            35..=69 => lo + rng.below(pages) * PAGE,
            _ => {
                let b = (lo + rng.below(pages) * PAGE).next_multiple_of(MIB2);
                if b < hi {
                    b
                } else {
                    lo
                }
            }
        };
        let end = match rng.below(100) {
            0..=34 => hi,
            35..=69 => (start + rng.range(1, 16) * PAGE).min(hi),
            _ => {
                let b = (start + PAGE).next_multiple_of(MIB2);
                if b < hi {
                    b
                } else {
                    hi
                }
            }
        };
        Some((self.shape.to_canonical(start), end - start))
    }

    /// An op that breaks an argument rule (the model predicts which error).
    pub fn bad_op<T: ModelTarget>(&self, rng: &mut Rng) -> MOp {
        let (va, size) = self.range(rng);
        let attrs = random_map_attrs::<T>(rng);
        let (bva, bsize) = match rng.below(8) {
            0 => (va + rng.pick(&[0x10, 0x800, 0xFFF]), size),
            1 => (va, size + rng.pick(&[1, 0x800, 0xFFF])),
            2 => (va, 0),
            3 => (0xFFFF_FFFF_FFFF_F000, rng.range(2, 4) * PAGE),
            4 => (rng.pick(&self.invalid_addresses), size),
            5 => {
                // Across the canonical hole, or off the top of a space without one.
                let last = match self.shape.hole() {
                    Some(hole) => hole - PAGE,
                    None => self.shape.space() - PAGE,
                };
                (self.shape.to_canonical(last), rng.range(2, 16) * PAGE)
            }
            _ => (va, size),
        };
        let kind = rng.below(10);
        match (kind, rng.below(8)) {
            // Argument range errors on any op kind.
            (0..=1, _) if (bva, bsize) != (va, size) => MOp::Unmap { va: bva, size: bsize },
            (2..=3, _) if (bva, bsize) != (va, size) => MOp::Protect {
                va: bva,
                size: bsize,
                attrs: random_protect_attrs(rng),
            },
            (4..=5, _) if (bva, bsize) != (va, size) => MOp::Map {
                va: bva,
                size: bsize,
                attrs,
            },
            (_, 0) => MOp::MapAliased {
                va,
                pa: self.pa_for(rng, va) + rng.pick(&[1, 0x800]),
                size,
                attrs,
            },
            (_, 1) => MOp::MapAliased {
                va,
                pa: (1u64 << self.shape.pa_bits) - PAGE * rng.range(0, 1),
                size: size.max(2 * PAGE),
                attrs,
            },
            (_, 2) => MOp::MapAliased {
                va,
                pa: !(PAGE - 1),
                size: size.max(2 * PAGE),
                attrs,
            },
            (_, 3) => MOp::Protect {
                va,
                size,
                attrs: bad_attrs(rng),
            },
            (_, 4) => MOp::Map {
                va,
                size,
                attrs: if !T::map_cache_optional() && rng.chance(40) {
                    no_cache_attrs(rng)
                } else {
                    bad_attrs(rng)
                },
            },
            (_, 5) => MOp::MapAliased {
                va: bva,
                pa: self.pa_for(rng, va),
                size: bsize,
                attrs,
            },
            _ => {
                // Identity map of a high-half address: PA beyond the physical width.
                let w = self.windows.iter().rfind(|w| w.base >> 63 == 1);
                let va = w.map_or(va, |w| w.base + rng.below(w.len / PAGE) * PAGE);
                MOp::Map { va, size: PAGE, attrs }
            }
        }
    }

    /// One op, drawn against the state `model` (the transaction's working state).
    pub fn op<T: ModelTarget>(&self, rng: &mut Rng, model: &Model) -> MOp {
        if rng.chance(self.bad_percent) {
            return self.bad_op::<T>(rng);
        }
        let op = self.valid_op::<T>(rng, model);
        self.tame(rng, op)
    }

    fn valid_op<T: ModelTarget>(&self, rng: &mut Rng, model: &Model) -> MOp {
        let kind = rng.below(100);
        if kind >= 55 {
            // Unmap or protect: mostly over mapped ranges, sometimes anywhere.
            let (va, size) = match self.mapped_range(rng, model) {
                Some(r) if rng.chance(82) => r,
                None if rng.chance(70) => return self.map_op::<T>(rng),
                _ => self.range(rng),
            };
            if kind < 77 {
                MOp::Unmap { va, size }
            } else {
                MOp::Protect {
                    va,
                    size,
                    attrs: random_protect_attrs(rng),
                }
            }
        } else {
            self.map_op::<T>(rng)
        }
    }

    fn map_op<T: ModelTarget>(&self, rng: &mut Rng) -> MOp {
        let (va, size) = self.range(rng);
        self.map_at::<T>(rng, va, size, |rng| rng.chance(55))
    }

    /// A map of `size` bytes at `va` with random attributes: an identity map where that is
    /// a valid physical range and `identity` says so, else aliased.
    fn map_at<T: ModelTarget>(
        &self,
        rng: &mut Rng,
        va: u64,
        size: u64,
        identity: impl FnOnce(&mut Rng) -> bool,
    ) -> MOp {
        let attrs = random_map_attrs::<T>(rng);
        if self.shape.check_pa(va, size).is_ok() && identity(rng) {
            MOp::Map { va, size, attrs }
        } else {
            MOp::MapAliased {
                va,
                pa: self.pa_for(rng, va),
                size,
                attrs,
            }
        }
    }

    /// A transaction of 1..=16 ops (mostly short), each drawn against the state so far.
    pub fn transaction<T: ModelTarget>(&self, rng: &mut Rng, model: &Model) -> Vec<MOp> {
        if self.sorted_percent > 0 && rng.chance(self.sorted_percent) {
            return self.sorted_batch::<T>(rng, model);
        }
        let n = if rng.chance(80) {
            rng.range(1, 6)
        } else {
            rng.range(7, 16)
        };
        let mut working = model.clone();
        let mut ops = Vec::with_capacity(n as usize);
        for _ in 0..n {
            let op = self.op::<T>(rng, &working);
            // A failing op leaves the working state as it was: later ops are drawn against it.
            let _ = working.apply::<T>(&self.shape, &op);
            ops.push(op);
        }
        ops
    }
}

impl Gen {
    /// A transaction of 2..=40 ops in address order, each a few pages (sometimes a few
    /// hundred) from where the one before ended, mostly starting over mapped memory:
    /// protects, unmaps and maps, with the usual share of bad ops. Most stay inside one
    /// last-level table's span, some cross into the next or jump further.
    pub fn sorted_batch<T: ModelTarget>(&self, rng: &mut Rng, model: &Model) -> Vec<MOp> {
        let n = rng.range(2, 40);
        // Often inside a 2 MiB block of a long run, which a 2 MiB leaf may map (a split).
        let long_runs: Vec<Run> = model.runs().filter(|r| r.end - r.start >= 2 * MIB2).copied().collect();
        let first = match self.mapped_range(rng, model) {
            _ if !long_runs.is_empty() && rng.chance(40) => {
                let run = long_runs[rng.below(long_runs.len() as u64) as usize];
                self.shape
                    .to_canonical(run.start.next_multiple_of(MIB2) + rng.below(512) * PAGE)
            }
            Some((va, _)) if rng.chance(85) => va,
            _ => self.range(rng).0,
        };
        let mut at = self.shape.to_linear(first);
        let mut working = model.clone();
        let mut ops = Vec::with_capacity(n as usize);
        for _ in 0..n {
            at += match rng.below(10) {
                0..=5 => 0,
                6..=8 => rng.range(1, 4) * PAGE,
                _ => rng.range(1, 600) * PAGE,
            };
            let size = if rng.chance(85) {
                rng.range(1, 4) * PAGE
            } else {
                rng.range(5, 300) * PAGE
            };
            let va = self.shape.to_canonical(at);
            if self.shape.check_range(va, size).is_err() {
                break;
            }
            // Protects and unmaps go where the ops so far leave memory mapped (else the
            // batch would mostly fail), maps anywhere.
            let mapped = working.covered(at, at + size);
            // A map continuing the one before (next page, next frame, same attributes): the
            // engine checks and folds such runs as one map.
            let continued = match ops.last() {
                Some(&MOp::Map { va: v, size: s, attrs }) if v.checked_add(s) == Some(va) && rng.chance(40) => {
                    Some(MOp::Map { va, size, attrs })
                }
                Some(&MOp::MapAliased {
                    va: v,
                    pa,
                    size: s,
                    attrs,
                }) if v.checked_add(s) == Some(va) && pa.checked_add(s).is_some() && rng.chance(40) => {
                    Some(MOp::MapAliased {
                        va,
                        pa: pa + s,
                        size,
                        attrs,
                    })
                }
                _ => None,
            };
            let op = if let Some(op) = continued {
                op
            } else if rng.chance(self.bad_percent) {
                self.bad_op::<T>(rng)
            } else {
                match rng.below(100) {
                    0..=49 if mapped => MOp::Protect {
                        va,
                        size,
                        attrs: random_protect_attrs(rng),
                    },
                    50..=64 if mapped => MOp::Unmap { va, size },
                    kind => self.map_at::<T>(rng, va, size, |_| kind < 85),
                }
            };
            let op = self.tame(rng, op);
            let _ = working.apply::<T>(&self.shape, &op);
            ops.push(op);
            at += size;
        }
        ops
    }
}

// ------------------------------------------------------------------------------------------
// The runner: predict, run, check
// ------------------------------------------------------------------------------------------

#[derive(Debug, Default, Clone)]
pub struct Stats {
    pub ops: u64,
    pub transactions: u64,
    pub commits: u64,
    pub expected_errors: u64,
    pub full_checks: u64,
    pub injected_failures: u64,
    pub max_table_pages: usize,
    /// Leaves seen by full raw walks, by level.
    pub leaves_by_level: [u64; 6],
    pub tables_allocated: u64,
    pub tables_freed: u64,
    /// Changed live leaves whose invalidation was verified.
    pub tlb_leaf_checks: u64,
    /// Expected errors by kind ("NoMapping@op>0", ...).
    pub errors: BTreeMap<String, u64>,
    /// Largest number of allocations of one commit under failure injection.
    pub max_injected_n: usize,
    /// Valid transactions the policy refused, by rule.
    pub refusals: BTreeMap<Rule, u64>,
}

pub struct Runner<T: ModelTarget> {
    pub target: T,
    pub cfg: T::Config,
    pub model: Model,
    pub shape: Shape,
    pub gen: Gen,
    pub rng: Rng,
    pub stats: Stats,
    pub replay: Replay,
    pub pool_pages: usize,
    /// Full raw walk after every commit while the table has at most this many pages;
    /// above, every `heavy_every`-th commit.
    pub heavy_limit: usize,
    pub heavy_every: u64,
    /// The table's protection policy, if any (see [`Runner::with_policy`]).
    pub policy: Option<ModelPolicy>,
}

/// Pool size of the model tests: room for a few 4 KiB-mapped GiBs.
pub const POOL_PAGES: usize = 8192;

impl<T: ModelTarget> Runner<T> {
    pub fn new(test: &str, cfg: T::Config) -> Self {
        let target = T::build(cfg, POOL_PAGES);
        let shape = target.shape();
        let gen = Gen::new(&target);
        let seed = test_seed(test);
        let mut replay = Replay::new(test);
        replay.context = format!("config {cfg:?}, test seed {seed:#x}");
        Self {
            target,
            cfg,
            model: Model::default(),
            shape,
            gen,
            rng: Rng::new(seed),
            stats: Stats::default(),
            replay,
            pool_pages: POOL_PAGES,
            heavy_limit: 96,
            heavy_every: 8,
            policy: None,
        }
    }

    /// A runner whose table has `policy`, and whose generator mostly obeys it
    /// ([`Gen::tame_percent`]): the model predicts every refusal.
    pub fn with_policy(test: &str, cfg: T::Config, policy: Policy) -> Self {
        let mut runner = Self::new(test, cfg);
        runner.policy = Some(ModelPolicy::new(&runner.shape, policy));
        runner.gen.tame_percent = 90;
        runner.apply_policy();
        runner
    }

    fn apply_policy(&mut self) {
        if let Some(p) = &self.policy {
            self.target
                .set_policy(p.policy.clone())
                .expect("the policy fits the table");
        }
    }

    /// Starts over with a fresh table and pool (and the same policy).
    pub fn rebuild(&mut self) {
        self.target = T::build(self.cfg, self.pool_pages);
        self.apply_policy();
        self.model = Model::default();
        self.check(true);
    }

    fn note(&mut self, what: &str, ops: &[MOp]) {
        let mut c = format!(
            "config {:?}, test seed {:#x}, after {} transactions / {} commits: {what}\n",
            self.cfg,
            test_seed(&self.replay.test),
            self.stats.transactions,
            self.stats.commits
        );
        c.push_str(&describe_ops(ops));
        if self.model.len() <= 80 {
            let _ = writeln!(c, "model before the ops (linear runs):");
            for r in self.model.runs() {
                let _ = writeln!(c, "  {:#x}..{:#x} -> {:#x} {:?}", r.start, r.end, r.pa, r.attrs);
            }
        }
        self.replay.context = c;
    }

    /// Old leaves (linear) overlapping the valid ranges of `ops`, read before a commit.
    fn leaves_touched(&self, ops: &[MOp]) -> BTreeMap<u64, RawLeaf> {
        let mut out = BTreeMap::new();
        for op in ops {
            let (va, size) = op.range();
            if self.shape.check_range(va, size).is_err() {
                continue;
            }
            let mut error = None;
            self.target
                .visit_entries(
                    va,
                    size,
                    &mut |level, entry_va, raw| match self.target.decode(raw, level) {
                        Ok(RawEntry::Leaf { pa, attrs, live }) => {
                            let va = self.shape.to_linear(entry_va);
                            out.insert(
                                va,
                                RawLeaf {
                                    va,
                                    level,
                                    pa,
                                    attrs,
                                    live,
                                },
                            );
                        }
                        Ok(_) => {}
                        Err(e) => error = Some(e),
                    },
                )
                .expect("visit_entries on a valid range");
            if let Some(e) = error {
                panic!("bad raw entry before commit: {e}");
            }
        }
        out
    }

    /// Every live leaf whose translation changed must be invalidated (or the TLB flushed).
    fn check_tlb(&self, before: &BTreeMap<u64, RawLeaf>, log: &[TlbOp], report: Option<&CommitReport>) -> u64 {
        if !self.target.must_invalidate() {
            assert!(log.is_empty(), "a table no CPU walks got TLB maintenance: {log:?}");
            if let Some(report) = report {
                assert_eq!((report.pages_invalidated, report.full_flushes), (0, 0), "{report:?}");
            }
            return 0;
        }
        let pages: Vec<u64> = log
            .iter()
            .filter_map(|op| match op {
                TlbOp::Page(va) => Some(*va),
                TlbOp::All => None,
            })
            .collect();
        let full = log.iter().filter(|op| **op == TlbOp::All).count();
        assert!(full <= 1, "more than one full flush in one commit: {log:?}");
        assert!(
            full == 0 || pages.is_empty(),
            "a full flush and page invalidations: {log:?}"
        );
        assert!(
            pages.len() <= T::page_invalidation_limit(),
            "{} page invalidations, above the limit",
            pages.len()
        );
        let distinct: BTreeSet<u64> = pages.iter().copied().collect();
        assert_eq!(distinct.len(), pages.len(), "a page invalidated twice: {log:?}");
        if let Some(report) = report {
            assert_eq!(
                report.pages_invalidated,
                pages.len(),
                "report vs log: {report:?} {log:?}"
            );
            assert_eq!(report.full_flushes, full, "report vs log: {report:?} {log:?}");
        }
        if full == 1 {
            return 0;
        }
        let mut checked = 0;
        let linear: BTreeSet<u64> = pages.iter().map(|&va| self.shape.to_linear(va)).collect();
        for leaf in before.values().filter(|l| l.live) {
            let end = leaf.va + Shape::entry_size(leaf.level);
            let now = self.model.clipped(leaf.va, end);
            let same = now.len() == 1
                && now[0]
                    == (Run {
                        start: leaf.va,
                        end,
                        pa: leaf.pa,
                        attrs: leaf.attrs,
                    });
            if !same {
                checked += 1;
                assert!(
                    linear.range(leaf.va..end).next().is_some(),
                    "stale TLB: the live leaf {leaf:x?} changed (now {now:x?}) but nothing in it was invalidated: {log:x?}"
                );
            }
        }
        checked
    }

    /// Runs one transaction (or one op through the one-op API) and checks it.
    pub fn step(&mut self, ops: &[MOp], one_op_api: bool) -> bool {
        assert!(!one_op_api || ops.len() == 1);
        self.stats.transactions += 1;
        self.stats.ops += ops.len() as u64;
        self.note("running", ops);
        let expected = self.model.predict::<T>(&self.shape, ops);
        let live_before = self.target.pool().live_pages();
        let allocations_before = self.target.pool().allocations();
        match expected {
            Err(expected) => {
                self.stats.expected_errors += 1;
                let kind = format!(
                    "{:?}{}",
                    expected.error,
                    if expected.op.unwrap_or(0) > 0 { "@op>0" } else { "@op0" }
                );
                *self.stats.errors.entry(kind).or_default() += 1;
                let before = snapshot(self.target.pool());
                let root = self.target.root();
                if one_op_api {
                    let got = self.target.one_op(&ops[0]);
                    assert_eq!(got, Err(expected.error), "one-op API result");
                } else {
                    let plan_first = self.rng.chance(50);
                    let (plan, got) = self.target.transaction(ops, plan_first);
                    if let Some(plan) = plan {
                        assert_eq!(plan.err(), got.as_ref().err().copied(), "plan() vs commit()");
                    }
                    let got = got.expect_err("commit() must fail");
                    assert_eq!(got.code(), expected.code(), "commit() result");
                    assert_eq!(
                        got.reason.code().unwrap_or(got.error),
                        got.error,
                        "reason {:?}",
                        got.reason
                    );
                    if expected.reason == Reason::NotMapped {
                        assert_eq!(got.reason, Reason::NotMapped, "commit() reason: {got}");
                        assert_eq!(got.address, expected.address, "first unmapped address: {got}");
                    }
                    if let Some(op) = got.op {
                        assert_eq!(got.range, Some(ops[op].range()), "failing op's range: {got}");
                    }
                }
                assert_eq!(self.target.root(), root);
                assert!(
                    snapshot(self.target.pool()) == before,
                    "a failed commit changed table bytes"
                );
                assert_eq!(
                    self.target.pool().live_pages(),
                    live_before,
                    "a failed commit leaked pages"
                );
                assert_eq!(self.target.pool().bad_frees(), 0);
                let log = self.target.take_tlb_log();
                assert!(log.is_empty(), "a failed commit touched the TLB: {log:?}");
                false
            }
            Ok(next) => {
                let violation = self.policy.as_ref().and_then(|p| p.violation(&self.shape, &next, ops));
                if let Some((rule, linear)) = violation {
                    self.refused(ops, one_op_api, rule, linear);
                    return false;
                }
                let leaves = self.leaves_touched(ops);
                let report = if one_op_api {
                    let got = self.target.one_op(&ops[0]);
                    assert_eq!(got, Ok(()), "one-op API result");
                    None
                } else {
                    let plan_first = self.rng.chance(50);
                    let (plan, got) = self.target.transaction(ops, plan_first);
                    let report = match got {
                        Ok(report) => report,
                        Err(e) => panic!("commit() failed with {e:?}, the model expected success"),
                    };
                    if let Some(plan) = plan {
                        let plan = plan.expect("plan() failed where commit() succeeded");
                        assert_eq!(plan.tables_to_allocate, report.tables_allocated, "plan vs commit");
                        assert_eq!(plan.tables_to_free, report.tables_freed, "plan vs commit");
                        assert_eq!(plan.entries_to_write, report.entries_written, "plan vs commit");
                        assert_eq!(
                            plan.pages_to_invalidate.len(),
                            report.pages_invalidated,
                            "plan vs commit"
                        );
                        assert_eq!(usize::from(plan.full_flush), report.full_flushes, "plan vs commit");
                    }
                    let pool = self.target.pool();
                    assert_eq!(pool.allocations() - allocations_before, report.tables_allocated);
                    assert_eq!(
                        pool.live_pages() as i64 - live_before as i64,
                        report.tables_allocated as i64 - report.tables_freed as i64,
                        "pool pages vs report {report:?}"
                    );
                    self.stats.tables_allocated += report.tables_allocated as u64;
                    self.stats.tables_freed += report.tables_freed as u64;
                    Some(report)
                };
                self.stats.commits += 1;
                self.note("checking after commit", ops);
                self.model = next;
                let log = self.target.take_tlb_log();
                self.stats.tlb_leaf_checks += self.check_tlb(&leaves, &log, report.as_ref());
                let heavy = self.target.table_pages() <= self.heavy_limit || self.stats.commits % self.heavy_every == 0;
                self.check(heavy);
                true
            }
        }
    }

    /// Runs `ops`, valid but breaking `rule` at linear `linear` (the model's prediction),
    /// and checks the refusal: the exact error (rule, last op covering the address, the
    /// address), table bytes and root unchanged, no allocation, no page leaked, no TLB
    /// maintenance.
    fn refused(&mut self, ops: &[MOp], one_op_api: bool, rule: Rule, linear: u64) {
        *self.stats.refusals.entry(rule).or_default() += 1;
        let address = self.shape.to_canonical(linear);
        let op = ops
            .iter()
            .rposition(|op| {
                let (va, size) = op.range();
                let (s, e) = self.shape.check_range(va, size).expect("a valid op");
                s <= linear && linear < e
            })
            .expect("an op covers the offending address");
        let before = snapshot(self.target.pool());
        let root = self.target.root();
        let live = self.target.pool().live_pages();
        let allocations = self.target.pool().allocations();
        let context = format!("the model predicts {rule:?} at {address:#x} (op {op})");
        if one_op_api {
            let got = self.target.one_op(&ops[0]);
            assert_eq!(got, Err(PtError::IncompatibleMemoryAttributes), "one-op API: {context}");
        } else {
            let plan_first = self.rng.chance(50);
            let (plan, got) = self.target.transaction(ops, plan_first);
            let got = match got {
                Err(e) => e,
                Ok(report) => panic!("commit() succeeded ({report:?}), but {context}"),
            };
            if let Some(plan) = plan {
                assert_eq!(plan.err(), Some(got), "plan() vs commit()");
            }
            assert_eq!(
                got.code(),
                (Some(op), PtError::IncompatibleMemoryAttributes),
                "{got}: {context}"
            );
            assert_eq!(got.reason, Reason::PolicyViolation { rule }, "{got}: {context}");
            assert_eq!(got.address, Some(address), "{got}: {context}");
            assert_eq!(got.range, Some(ops[op].range()), "{got}: {context}");
        }
        assert_eq!(self.target.root(), root);
        assert!(
            snapshot(self.target.pool()) == before,
            "a refused commit changed table bytes"
        );
        let pool = self.target.pool();
        assert_eq!(pool.live_pages(), live, "a refused commit leaked pages");
        assert_eq!(pool.allocations(), allocations, "a refused commit called the allocator");
        assert_eq!(pool.bad_frees(), 0);
        let log = self.target.take_tlb_log();
        assert!(log.is_empty(), "a refused commit touched the TLB: {log:?}");
    }

    /// All checks of the table against the model.
    pub fn check(&mut self, heavy: bool) {
        let pool = self.target.pool();
        let pages = self.target.table_pages();
        self.stats.max_table_pages = self.stats.max_table_pages.max(pages);
        assert_eq!(pool.bad_frees(), 0, "bad frees");
        assert_eq!(
            pool.live_pages(),
            pages,
            "live pool pages vs table_pages(): leaked or lost pages"
        );
        let minimal = min_table_pages(&self.shape, &self.model);
        if pages != minimal {
            let why = redundant_tables(&self.target, &self.model);
            panic!("table_pages() = {pages}, but the mapping needs {minimal}; the raw walk says:\n{why}");
        }

        // regions()
        let expected = self.model.regions(&self.shape);
        let got = self.target.regions();
        if got != expected {
            let mut diff = String::new();
            for i in 0..got.len().max(expected.len()) {
                let (g, e) = (got.get(i), expected.get(i));
                if g != e {
                    let _ = writeln!(diff, "  #{i}: got {g:x?}\n       want {e:x?}");
                    if diff.len() > 2000 {
                        break;
                    }
                }
            }
            panic!("regions() differ from the model:\n{diff}");
        }

        // query over every maximal region, and random ranges.
        for r in &expected {
            assert_eq!(
                self.target.query(r.va, r.size),
                Ok(r.attributes),
                "query of the region {r:x?}"
            );
        }
        for _ in 0..6 {
            let (va, size) = if self.rng.chance(10) {
                // Bad ranges: unaligned, empty, invalid addresses.
                let (va, size) = self.gen.range(&mut self.rng);
                match self.rng.below(4) {
                    0 => (va + 0x800, size),
                    1 => (va, size + 1),
                    2 => (va, 0),
                    _ => (self.rng.pick(&self.gen.invalid_addresses), size),
                }
            } else if self.rng.chance(50) {
                self.gen.mapped_range(&mut self.rng, &self.model).unwrap_or((0, PAGE))
            } else {
                self.gen.range(&mut self.rng)
            };
            assert_eq!(
                self.target.query(va, size),
                self.model.query::<T>(&self.shape, va, size),
                "query({va:#x}, {size:#x})"
            );
        }

        // translate() on sampled pages.
        for _ in 0..12 {
            let page = match (self.rng.below(4), self.model.len()) {
                (0..=1, n) if n > 0 => {
                    let r = self.model.nth(self.rng.below(n as u64) as usize).unwrap();
                    match self.rng.below(4) {
                        0 => r.start,
                        1 => r.end - PAGE,
                        2 => r.end,
                        _ => r.start + self.rng.below((r.end - r.start) / PAGE) * PAGE,
                    }
                }
                _ => self.shape.to_linear(self.gen.range(&mut self.rng).0),
            };
            if page >= self.shape.space() {
                continue;
            }
            let offset = self.rng.below(PAGE);
            let va = self.shape.to_canonical(page) + offset;
            let want = self.model.lookup(page).map(|(pa, a)| (pa + offset, a));
            assert_eq!(self.target.translate(va), want, "translate({va:#x})");
        }

        // visit_entries() over a sampled range: every entry agrees with the model.
        let (va, size) = self.gen.range(&mut self.rng);
        let (start, end) = self.shape.check_range(va, size).unwrap();
        let mut problems = Vec::new();
        let mut last_level = None;
        self.target
            .visit_entries(va, size, &mut |level, entry_va, raw| {
                let e_start = self.shape.to_linear(entry_va);
                let (s, e) = (e_start.max(start), (e_start + Shape::entry_size(level)).min(end));
                let now = self.model.clipped(s, e);
                match self.target.decode(raw, level) {
                    Err(msg) => problems.push(msg),
                    Ok(RawEntry::Invalid) if !now.is_empty() => {
                        problems.push(format!("invalid entry at {entry_va:#x} level {level}, model {now:x?}"))
                    }
                    Ok(RawEntry::Leaf { pa, attrs, .. }) => {
                        let want = Run {
                            start: s,
                            end: e,
                            pa: pa + (s - e_start),
                            attrs,
                        };
                        if now != [want] {
                            problems.push(format!(
                                "leaf at {entry_va:#x} level {level} = {want:x?}, model {now:x?}"
                            ));
                        }
                    }
                    Ok(RawEntry::Table(_)) if level == 0 => problems.push("table at level 0".into()),
                    _ => {}
                }
                if let Some(prev) = last_level {
                    if level < prev && prev - level != 1 {
                        problems.push(format!("visit order skipped from level {prev} to {level}"));
                    }
                }
                last_level = Some(level);
            })
            .unwrap();
        assert!(problems.is_empty(), "visit_entries({va:#x}, {size:#x}): {problems:#?}");

        if heavy {
            self.stats.full_checks += 1;
            let (tables, leaves) = match raw_walk(&self.target) {
                Ok(x) => x,
                Err(e) => panic!("raw walk: {e}"),
            };
            let set: BTreeSet<u64> = tables.iter().copied().collect();
            assert_eq!(set.len(), tables.len(), "a table page is linked twice");
            let live: BTreeSet<u64> = self.target.pool().live().collect();
            assert_eq!(
                set, live,
                "the tables reached from the root are not exactly the live pool pages"
            );
            for l in &leaves {
                self.stats.leaves_by_level[l.level as usize] += 1;
            }
            let runs = leaves_to_runs(&leaves);
            let want = self.model.run_vec();
            if runs != want {
                let first = runs
                    .iter()
                    .zip(&want)
                    .position(|(a, b)| a != b)
                    .unwrap_or(runs.len().min(want.len()));
                panic!(
                    "raw walk differs from the model at run #{first}: raw {:x?}, model {:x?}",
                    runs.get(first),
                    want.get(first)
                );
            }
        }
    }

    /// Unmaps everything in one transaction: the table must shrink back to its root.
    pub fn teardown(&mut self) {
        let ops: Vec<MOp> = self
            .model
            .regions(&self.shape)
            .iter()
            .map(|r| MOp::Unmap { va: r.va, size: r.size })
            .collect();
        if !ops.is_empty() {
            assert!(self.step(&ops, false), "teardown failed");
        }
        assert_eq!(self.target.table_pages(), 1);
        assert_eq!(self.target.pool().live_pages(), 1);
        assert!(self.target.regions().is_empty());
    }

    /// Random transactions (or one-op calls) until `budget` ops ran.
    pub fn run_random(&mut self, budget: u64, one_op_api: bool, episode_len: u64) {
        let mut in_episode = 0;
        while self.stats.ops < budget {
            let ops = if one_op_api {
                vec![self.gen.op::<T>(&mut self.rng, &self.model)]
            } else {
                self.gen.transaction::<T>(&mut self.rng, &self.model)
            };
            self.step(&ops, one_op_api);
            in_episode += 1;
            if in_episode == episode_len {
                in_episode = 0;
                if self.rng.chance(50) {
                    self.teardown();
                } else {
                    self.rebuild();
                }
            }
        }
    }

    /// Allocation-failure injection: every allocation call of the commit fails in turn.
    pub fn run_alloc_failures(&mut self, budget: u64, episode_len: u64) {
        let mut in_episode = 0;
        while self.stats.ops < budget {
            let ops = self.gen.transaction::<T>(&mut self.rng, &self.model);
            if self.model.predict::<T>(&self.shape, &ops).is_ok() {
                let plan = self.target.plan(&ops).expect("plan() of a valid transaction");
                let n = plan.tables_to_allocate;
                self.stats.max_injected_n = self.stats.max_injected_n.max(n);
                let ks: Vec<usize> = if n <= 48 {
                    (0..n).collect()
                } else {
                    let mut ks: Vec<usize> = (0..8).chain(n - 8..n).collect();
                    ks.extend((0..16).map(|_| self.rng.below(n as u64) as usize));
                    ks
                };
                for k in ks {
                    self.note(&format!("allocation {k} of {n} fails"), &ops);
                    let before = snapshot(self.target.pool());
                    let live = self.target.pool().live_pages();
                    let allocations = self.target.pool().allocations();
                    self.target.fail_allocation_at(Some(allocations + k));
                    let (_, got) = self.target.transaction(&ops, false);
                    self.target.fail_allocation_at(None);
                    self.stats.injected_failures += 1;
                    assert_eq!(
                        got.err().map(|e| e.code()),
                        Some((None, PtError::OutOfResources)),
                        "commit with allocation {k} of {n} failing"
                    );
                    let pool = self.target.pool();
                    assert_eq!(pool.allocations(), allocations + k + 1, "allocation calls");
                    assert_eq!(pool.live_pages(), live, "pages leaked by the failed commit");
                    assert_eq!(pool.bad_frees(), 0, "bad frees");
                    assert!(snapshot(pool) == before, "the failed commit changed table bytes");
                    assert!(
                        self.target.take_tlb_log().is_empty(),
                        "the failed commit touched the TLB"
                    );
                }
            }
            self.step(&ops, false);
            in_episode += 1;
            if in_episode == episode_len {
                in_episode = 0;
                self.teardown();
            }
        }
    }

    pub fn summary(&self, test: &str) -> String {
        let s = &self.stats;
        format!(
            "{test}: {} ops in {} transactions ({} commits, {} expected errors, {} injected allocation failures), \
             {} full raw walks, max {} table pages",
            s.ops, s.transactions, s.commits, s.expected_errors, s.injected_failures, s.full_checks, s.max_table_pages
        ) + &format!(
            "\n    leaves seen by level {:?}, tables allocated {} / freed {}, {} changed live leaves checked for \
             invalidation, max allocations in one injected commit {}\n    expected errors {:?}",
            &s.leaves_by_level[..self.shape.levels as usize],
            s.tables_allocated,
            s.tables_freed,
            s.tlb_leaf_checks,
            s.max_injected_n,
            s.errors
        ) + &if self.policy.is_some() {
            format!("\n    policy refusals {:?}", s.refusals)
        } else {
            String::new()
        }
    }
}

pub mod aarch64;
pub use aarch64::*;
