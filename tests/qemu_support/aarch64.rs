//! The AArch64 half of the QEMU proof (`tests/qemu_aarch64.rs`): builds tables with the
//! library, runs `guests/aarch64/probe.elf` on them under `qemu-system-aarch64 -M virt
//! -cpu max`, and compares what the MMU did for each probe with what the reference model
//! (`model_support::Model`, fed the same ops) says the requests asked for. Nothing here reads
//! the library's own decoding (`translate`, `query`, `regions`, its codec).
//!
//! Layout of guest physical memory (RAM is [0x4000_0000, 0xC000_0000), `-m 2G`):
//!
//! | PA | what |
//! |---|---|
//! | 0x4010_0000 | the guest (`guests/aarch64/link.ld`) |
//! | [`TABLES_PA`] 0x4100_0000 | the table image (`PagePool::with_physical_base`) |
//! | [`PROBES_PA`] 0x4800_0000 | probe block (fixed in the guest too) |
//! | [`RESULTS_PA`] 0x5000_0000 | results |
//! | [`WINDOW`] 0x8000_0000 | the 1 GiB pattern window: the only output addresses real accesses reach |
//!
//! Expected outcomes (Arm ARM DDI 0487 J.a; D8.3 descriptor formats, D8.4 access control,
//! D8.5 memory attributes; the ESR_EL1, FAR_EL1 and PAR_EL1 register descriptions):
//!
//! - The walk: the model's pages under the documented canonical form (docs/paging.md,
//!   "Splits, merges, and the fewest table pages"): an entry is a leaf exactly when its
//!   whole range is one uniform, contiguous, aligned run at a level that may hold leaves,
//!   invalid exactly when its whole range is unmapped, else a table. A `ReadProtect` leaf is
//!   an invalid descriptor. So the model alone gives the level of every fault.
//! - A VA with any bit at or above the TTBR0 size set, and not in the TTBR1 range, is out of
//!   range: translation fault at level 0. The Arm ARM pseudocode (`AArch64.TranslationTableWalk`,
//!   J.a: "if !basefound || disabled then level = 0; ... AArch64.TranslationFault") reports
//!   an address outside both ranges as a level 0 Translation fault, whatever the starting
//!   level; TBI0 = 0 in the library's TCR so the top byte counts.
//! - `AT S1E1R`: a translation gives PAR_EL1.F = 0, PA = the model's PA, ATTR = the MAIR_EL1
//!   byte of the page's cache attribute (docs/paging.md A3: Uncached, UncachedExport 0x00,
//!   WriteCombining 0x44, WriteThrough 0xBB, Writeback 0xFF, WriteProtect 0xAA) and, for
//!   cacheable memory, SH = 0b11. Otherwise F = 1 with FST = translation fault at the level.
//!   `AT S1E1W` adds: `ReadOnly` (AP\[2\]) gives a permission fault at the leaf's level.
//! - A load returns the pattern; a store on `ReadOnly` is a data abort (EC 0x25) with a
//!   permission fault and WnR = 1; an instruction fetch from `ExecuteProtect` or Device
//!   memory is an instruction abort (EC 0x21) with a permission fault; an unmapped or
//!   `ReadProtect` page is a translation fault. FAR_EL1 is the VA, with FnV, EA, CM and S1PTW
//!   clear.
//!
//! At EL2 (`-M virt,virtualization=on`, the guest starts at EL2 and stays there with
//! HCR_EL2.E2H = 0) the same outcomes hold for the EL2 regime: `AT S1E2R` / `AT S1E2W`
//! (results in PAR_EL1), ESR_EL2 and FAR_EL2 (EC 0x21 and 0x25 are "same EL" at EL2 too),
//! MAIR_EL2 / TCR_EL2 / TTBR0_EL2 programmed exactly as the library's install request says.
//! The EL2 regime has no TTBR1, so the guest runs through the table under test: an EL2
//! [`Build`] first maps [`EL2_GUEST_VA`] + 2 GiB to RAM (Writeback, read/write, executable)
//! through the library and the model alike, and no op may touch that range.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use txpaging::aarch64::{El1, Regime, PA_RANGE_48};
use txpaging::{
    Aarch64Config, Aarch64PageTable, InstallRequest, MemoryAttributes as MA, PagePool, PageTable, PagingType, PtError,
    RecordingMmu, TxnError,
};

use crate::model_support::Aarch64Target;
use crate::model_support::{describe_ops, queue, MOp, Model, Run, Shape, GIB, PAGE};
use crate::qemu_support::{
    loader_args, probe_block, read_results, run_qemu, Access, GuestReport, Probe, RamFile, RawResult, Scratch,
};

/// Guest RAM base and size on `-M virt` with `-m 2G`.
pub const RAM_BASE: u64 = 0x4000_0000;
pub const RAM_SIZE: u64 = 2 * GIB;
/// Physical address of the table image (the library's pool base).
pub const TABLES_PA: u64 = 0x4100_0000;
/// Pool size: 8192 pages (32 MiB, up to 0x4300_0000). Only the pages up to the highest one in
/// use are loaded.
pub const TABLE_POOL_PAGES: usize = 8192;
/// Where the probe block goes (the guest's `PROBES_PA`).
pub const PROBES_PA: u64 = 0x4800_0000;
/// Where the guest writes the results.
pub const RESULTS_PA: u64 = 0x5000_0000;
/// The pattern window: 1 GiB of RAM nothing else uses.
pub const WINDOW: u64 = 0x8000_0000;
/// The guest's own mapping: TTBR1 addresses from here up (T1SZ = 25). Probes never go there.
pub const HIGH: u64 = 0xFFFF_FF80_0000_0000;
/// The MAIR_EL1 index the guest takes for its own mapping (must be unused by the library).
pub const GUEST_ATTR_INDEX: u32 = 7;
/// TCR_EL1 bits the guest replaces (TTBR1 half: T1SZ, EPD1, IRGN1, ORGN1, SH1, TG1) and
/// what it puts there (T1SZ 25, EPD1 0, WB RA/WA walks, Inner Shareable, TG1 4 KiB).
pub const TCR_T1_MASK: u64 = 0xFFBF_0000;
pub const TCR_T1_GUEST: u64 = 0xB519_0000;

/// At EL2 the guest runs at this VA + (PA - RAM_BASE), through the table under test
/// (`guests/aarch64/probe.S`, `EL2_GUEST_VA`): 504 GiB, inside 39- and 48-bit spaces.
pub const EL2_GUEST_VA: u64 = 0x7E_0000_0000;
/// The guest's own mapping at EL2: all of RAM.
pub const EL2_GUEST_SIZE: u64 = RAM_SIZE;

/// Whether `[va, va + size)` touches the guest's own EL2 mapping.
pub fn touches_el2_guest(va: u64, size: u64) -> bool {
    va < EL2_GUEST_VA + EL2_GUEST_SIZE && va.saturating_add(size) > EL2_GUEST_VA
}

/// Exception classes (ESR_EL1.EC).
pub const EC_INSTRUCTION_ABORT_SAME_EL: u64 = 0x21;
pub const EC_DATA_ABORT_SAME_EL: u64 = 0x25;

/// Largest number of probes one guest run takes (probe block and results below the window).
pub const MAX_PROBES_PER_RUN: usize = 200_000;

/// The guest image, checked in and rebuilt by `guests/aarch64/build.sh`.
pub fn guest_elf() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("guests/aarch64/probe.elf")
}

/// The pattern qword the guest writes at `pa` before a probe: `((pa >> 12) << 32) | ret`.
pub fn pattern(pa: u64) -> u64 {
    ((pa >> 12) << 32) | 0xD65F_03C0
}

/// What a write probe stores (and reads back through the guest's own mapping).
pub fn stored(pa: u64) -> u64 {
    !pattern(pa)
}

/// The MAIR_EL1 byte of a cache attribute (docs/paging.md A3), and whether it is Device.
pub fn memory_type(attrs: MA) -> (u8, bool) {
    let cache = attrs & MA::CacheAttributesMask;
    if cache == MA::Uncached || cache == MA::UncachedExport {
        (0x00, true)
    } else if cache == MA::WriteCombining {
        (0x44, false)
    } else if cache == MA::WriteThrough {
        (0xBB, false)
    } else if cache == MA::Writeback {
        (0xFF, false)
    } else if cache == MA::WriteProtect {
        (0xAA, false)
    } else {
        panic!("a mapping without exactly one cache attribute: {attrs:?}")
    }
}

// ------------------------------------------------------------------------------------------
// Building: the library's table and the model, fed the same ops
// ------------------------------------------------------------------------------------------

pub type Table<R = El1> = Aarch64PageTable<PagePool, RecordingMmu, R>;

/// The shape of an AArch64 table (`model_support` terms).
pub fn shape(three_level: bool, one_gib_blocks: bool) -> Shape {
    Shape {
        levels: if three_level { 3 } else { 4 },
        max_leaf_level: if one_gib_blocks { 2 } else { 1 },
        sign_extended: false,
        pa_bits: 48,
    }
}

/// A table under test and the model of what it must map, for regime `R`.
pub struct Build<R: Regime = El1> {
    pub table: Table<R>,
    pub model: Model,
    pub shape: Shape,
    pub one_gib_blocks: bool,
    /// Every batch applied, for failure reports.
    pub history: Vec<Vec<MOp>>,
}

impl<R: Regime> Build<R> {
    /// An empty table; at EL2 it already maps the guest's own 2 GiB (see the module
    /// documentation), in the table and in the model.
    pub fn new(three_level: bool, one_gib_blocks: bool) -> Self {
        let paging = if three_level {
            PagingType::Paging3Level
        } else {
            PagingType::Paging4Level
        };
        let config = Aarch64Config {
            one_gib_blocks,
            pa_range: PA_RANGE_48,
        };
        let pool = PagePool::with_physical_base(TABLE_POOL_PAGES, TABLES_PA);
        let table = Aarch64PageTable::with_regime(pool, paging, config, RecordingMmu::new(), R::default())
            .expect("creating a table");
        let mut build = Self {
            table,
            model: Model::default(),
            shape: shape(three_level, one_gib_blocks),
            one_gib_blocks,
            history: Vec::new(),
        };
        if R::EL == 2 {
            build.ok(&[MOp::MapAliased {
                va: EL2_GUEST_VA,
                pa: RAM_BASE,
                size: EL2_GUEST_SIZE,
                attrs: MA::Writeback,
            }]);
        }
        build
    }

    /// The Exception level the table is for (1 or 2).
    pub fn el(&self) -> u8 {
        R::EL
    }

    /// A short name of the configuration.
    pub fn config_name(&self) -> String {
        format!(
            "{}, {}-level, 1 GiB blocks {}",
            R::NAME,
            self.shape.levels,
            if self.one_gib_blocks { "on" } else { "off" }
        )
    }

    /// Applies `ops` as one transaction (or, for a single op with `one_op_api`, through the
    /// familiar one-op calls) to the table and to the model; both must agree on success or on
    /// the error. Returns the error, if any.
    pub fn apply(&mut self, ops: &[MOp], one_op_api: bool) -> Result<(), TxnError> {
        if R::EL == 2 && !self.history.is_empty() {
            for op in ops {
                let (va, size) = match *op {
                    MOp::Map { va, size, .. }
                    | MOp::MapAliased { va, size, .. }
                    | MOp::Unmap { va, size }
                    | MOp::Protect { va, size, .. } => (va, size),
                };
                assert!(
                    !touches_el2_guest(va, size),
                    "test bug: {op:x?} touches the EL2 guest's own mapping"
                );
            }
        }
        let predicted = self.model.predict::<Aarch64Target>(&self.shape, ops);
        let actual: Result<(), TxnError> = if one_op_api && ops.len() == 1 {
            let result = match ops[0] {
                MOp::Map { va, size, attrs } => self.table.map_memory_region(va, size, attrs),
                MOp::MapAliased { va, pa, size, attrs } => self.table.map_aliased_memory_region(va, pa, size, attrs),
                MOp::Unmap { va, size } => self.table.unmap_memory_region(va, size),
                MOp::Protect { va, size, attrs } => self.table.protect_memory_region(va, size, attrs),
            };
            result.map_err(|error: PtError| TxnError::at(0, error))
        } else {
            let mut t = self.table.transaction();
            queue(&mut t, ops);
            t.commit().map(drop)
        };
        match (&predicted, &actual) {
            (Ok(next), Ok(())) => {
                self.model = next.clone();
                self.history.push(ops.to_vec());
                Ok(())
            }
            (Err(p), Err(a)) if p.error == a.error && (one_op_api && ops.len() == 1 || p.op == a.op) => Err(*a),
            _ => panic!(
                "library and model disagree on a batch ({}): model {:?}, library {:?}\n{}",
                self.config_name(),
                predicted.map(drop),
                actual,
                describe_ops(ops)
            ),
        }
    }

    /// Applies `ops`, which must succeed.
    pub fn ok(&mut self, ops: &[MOp]) {
        if let Err(e) = self.apply(ops, false) {
            panic!("batch failed: {e:?}\n{}", describe_ops(ops));
        }
    }

    /// One op through the one-op API, which must succeed.
    pub fn one(&mut self, op: MOp) {
        if let Err(e) = self.apply(&[op], true) {
            panic!("op failed: {e:?}\n{}", describe_ops(&[op]));
        }
    }

    /// The register values the library's install would program.
    pub fn install(&self) -> (u64, u64, u64) {
        match self.table.install_request() {
            InstallRequest::Aarch64 { mair, tcr, ttbr0 } if R::EL == 1 => (mair, tcr, ttbr0),
            InstallRequest::Aarch64El2 { mair, tcr, ttbr0 } if R::EL == 2 => (mair, tcr, ttbr0),
            other => panic!("an AArch64 {} table asked for {other:?}", R::NAME),
        }
    }

    /// The pool image up to the highest page in use (loaded at [`TABLES_PA`]).
    pub fn image(&self) -> Vec<u8> {
        let pool = self.table.allocator();
        assert_eq!(pool.base(), TABLES_PA);
        let last = pool.live().last().expect("the root is live");
        let len = (last - TABLES_PA + PAGE) as usize;
        pool.image()[..len].to_vec()
    }
}

// ------------------------------------------------------------------------------------------
// The model's walk
// ------------------------------------------------------------------------------------------

/// Where the model says a walk of one VA ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Walk {
    /// Outside the TTBR0 range: translation fault at level 0.
    OutOfRange,
    /// No mapping: an invalid descriptor at Arm level `level`.
    Unmapped { level: u8 },
    /// A leaf at Arm level `level` (a `ReadProtect` leaf is an invalid descriptor there);
    /// `pa` is the output address of the VA's byte.
    Leaf { level: u8, pa: u64, attrs: MA },
}

/// The model's runs, sorted, for fast lookups.
pub struct Runs(Vec<Run>);

enum Cover {
    Empty,
    Single(Run),
    Mixed,
}

impl Runs {
    pub fn new(model: &Model) -> Self {
        Runs(model.run_vec())
    }

    fn cover(&self, start: u64, end: u64) -> Cover {
        let i = self.0.partition_point(|r| r.end <= start);
        match self.0.get(i) {
            None => Cover::Empty,
            Some(r) if r.start >= end => Cover::Empty,
            Some(r) if r.start <= start && r.end >= end => Cover::Single(*r),
            Some(_) => Cover::Mixed,
        }
    }

    /// The walk of `va` over the canonical form of the model's mapping.
    pub fn walk(&self, shape: Shape, va: u64) -> Walk {
        if va >> shape.va_bits() != 0 {
            return Walk::OutOfRange;
        }
        let page = va & !(PAGE - 1);
        for level in (0..shape.levels).rev() {
            let size = Shape::entry_size(level);
            let base = page & !(size - 1);
            let arm = 3 - level;
            match self.cover(base, base + size) {
                Cover::Empty => return Walk::Unmapped { level: arm },
                Cover::Single(r) if shape.leaf_allowed(level) && (r.pa + (base - r.start)) % size == 0 => {
                    return Walk::Leaf {
                        level: arm,
                        pa: r.pa + (va - r.start),
                        attrs: r.attrs,
                    }
                }
                _ => {}
            }
        }
        unreachable!("a 4 KiB page is either mapped or not")
    }
}

// ------------------------------------------------------------------------------------------
// Outcomes
// ------------------------------------------------------------------------------------------

/// A fault status code (ESR_ELx DFSC/IFSC, PAR_EL1.FST), 4 KiB granule, no FEAT_LPA2.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    AddressSize(u8),
    Translation(u8),
    AccessFlag(u8),
    Permission(u8),
    Other(u8),
}

impl Fault {
    pub fn decode(fsc: u64) -> Self {
        let fsc = (fsc & 0x3F) as u8;
        let level = fsc & 3;
        match fsc >> 2 {
            0 => Fault::AddressSize(level),
            1 => Fault::Translation(level),
            2 => Fault::AccessFlag(level),
            3 => Fault::Permission(level),
            _ => Fault::Other(fsc),
        }
    }
}

impl std::fmt::Display for Fault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            Fault::AddressSize(l) => write!(f, "address size fault, level {l}"),
            Fault::Translation(l) => write!(f, "translation fault, level {l}"),
            Fault::AccessFlag(l) => write!(f, "access flag fault, level {l}"),
            Fault::Permission(l) => write!(f, "permission fault, level {l}"),
            Fault::Other(fsc) => write!(f, "fault status {fsc:#04x}"),
        }
    }
}

/// What a probe did (actual), or must do (expected), in comparable form.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A load completed; `None` in an expectation: the value is not checked.
    Loaded(Option<u64>),
    /// A store completed; the pattern qword read back afterwards (`None`: not checked).
    Stored(Option<u64>),
    /// The branch reached the page and its `ret` came back.
    Executed,
    /// AT: PAR_EL1.F = 0 with this page address and MAIR byte; `sh` is checked for
    /// cacheable memory only (Some in an expectation).
    Translated { pa: u64, attr: u8, sh: Option<u8> },
    /// AT: PAR_EL1.F = 1.
    AtFault(Fault),
    /// A synchronous exception: EC, fault, WnR, FAR.
    Abort { ec: u64, fault: Fault, wnr: bool, far: u64 },
    /// Anything else (decoded text).
    Unexpected,
}

/// Decodes ESR_EL1 for a report.
pub fn describe_esr(esr: u64) -> String {
    let ec = esr >> 26;
    let iss = esr & 0x1FF_FFFF;
    let name = match ec {
        0x00 => "unknown reason",
        0x20 => "instruction abort, lower EL",
        0x21 => "instruction abort, same EL",
        0x22 => "PC alignment",
        0x24 => "data abort, lower EL",
        0x25 => "data abort, same EL",
        0x26 => "SP alignment",
        0x3C => "BRK",
        _ => "other",
    };
    let mut s = format!(
        "ESR {esr:#x} (EC {ec:#04x} {name}, IL {}, ISS {iss:#x}",
        (esr >> 25) & 1
    );
    if ec == 0x21 || ec == 0x25 || ec == 0x20 || ec == 0x24 {
        let _ = write!(
            s,
            ": FSC {:#04x} = {}, WnR {}, S1PTW {}, CM {}, EA {}, FnV {}",
            iss & 0x3F,
            Fault::decode(iss),
            (iss >> 6) & 1,
            (iss >> 7) & 1,
            (iss >> 8) & 1,
            (iss >> 9) & 1,
            (iss >> 10) & 1
        );
    }
    s.push(')');
    s
}

/// Decodes PAR_EL1 (64-bit format) for a report.
pub fn describe_par(par: u64) -> String {
    if par & 1 == 0 {
        format!(
            "PAR {par:#x} (F 0, PA {:#x}, ATTR {:#04x}, SH {:#04b}, NS {})",
            par & 0x0000_FFFF_FFFF_F000,
            par >> 56,
            (par >> 7) & 3,
            (par >> 9) & 1
        )
    } else {
        format!(
            "PAR {par:#x} (F 1, FST {:#04x} = {}, PTW {}, S {})",
            (par >> 1) & 0x3F,
            Fault::decode(par >> 1),
            (par >> 8) & 1,
            (par >> 9) & 1
        )
    }
}

/// The comparable form of a raw result.
pub fn actual(probe: &Probe, r: &RawResult) -> Outcome {
    if r.status == 1 {
        let ec = r.syndrome >> 26;
        let iss = r.syndrome & 0x1FF_FFFF;
        // FnV, EA, CM, S1PTW must be clear for an ordinary stage 1 fault.
        if (ec == EC_DATA_ABORT_SAME_EL || ec == EC_INSTRUCTION_ABORT_SAME_EL) && iss & 0x780 == 0 {
            return Outcome::Abort {
                ec,
                fault: Fault::decode(iss),
                wnr: iss & 0x40 != 0,
                far: r.address,
            };
        }
        return Outcome::Unexpected;
    }
    if r.status != 0 {
        return Outcome::Unexpected;
    }
    match probe.access {
        Access::Read => Outcome::Loaded(Some(r.value)),
        Access::Write => Outcome::Stored(probe.pattern_pa.map(|_| r.value)),
        Access::Execute => Outcome::Executed,
        Access::AtRead | Access::AtWrite => {
            let par = r.value;
            if par & 1 == 0 {
                Outcome::Translated {
                    pa: par & 0x0000_FFFF_FFFF_F000,
                    attr: (par >> 56) as u8,
                    sh: Some(((par >> 7) & 3) as u8),
                }
            } else if par & 0x300 == 0 {
                Outcome::AtFault(Fault::decode(par >> 1))
            } else {
                Outcome::Unexpected
            }
        }
    }
}

/// What the model says `probe` must do.
pub fn expected(walk: Walk, probe: &Probe) -> Outcome {
    let va = probe.va;
    let data_abort = |fault| Outcome::Abort {
        ec: EC_DATA_ABORT_SAME_EL,
        fault,
        wnr: probe.access == Access::Write,
        far: va,
    };
    let translation = match walk {
        Walk::OutOfRange => Some(Fault::Translation(0)),
        Walk::Unmapped { level } => Some(Fault::Translation(level)),
        Walk::Leaf { level, attrs, .. } if attrs.contains(MA::ReadProtect) => Some(Fault::Translation(level)),
        Walk::Leaf { .. } => None,
    };
    if let Some(fault) = translation {
        return match probe.access {
            Access::AtRead | Access::AtWrite => Outcome::AtFault(fault),
            Access::Read | Access::Write => data_abort(fault),
            Access::Execute => Outcome::Abort {
                ec: EC_INSTRUCTION_ABORT_SAME_EL,
                fault,
                wnr: false,
                far: va,
            },
        };
    }
    let Walk::Leaf { level, pa, attrs } = walk else {
        unreachable!()
    };
    let (attr, device) = memory_type(attrs);
    let read_only = attrs.contains(MA::ReadOnly);
    let pattern_here = probe.pattern_pa == Some(pa);
    match probe.access {
        Access::AtRead | Access::AtWrite if probe.access == Access::AtWrite && read_only => {
            Outcome::AtFault(Fault::Permission(level))
        }
        Access::AtRead | Access::AtWrite => Outcome::Translated {
            pa: pa & !(PAGE - 1),
            attr,
            // Inner Shareable as written for cacheable memory; Device and Non-cacheable
            // memory are Outer Shareable whatever SH says (D8.5), and PAR.SH may report either.
            sh: (!device && attr != 0x44).then_some(0b11),
        },
        Access::Read => Outcome::Loaded(pattern_here.then(|| pattern(pa))),
        Access::Write if read_only => data_abort(Fault::Permission(level)),
        Access::Write => Outcome::Stored(pattern_here.then(|| stored(pa))),
        Access::Execute if device || attrs.contains(MA::ExecuteProtect) => Outcome::Abort {
            ec: EC_INSTRUCTION_ABORT_SAME_EL,
            fault: Fault::Permission(level),
            wnr: false,
            far: va,
        },
        Access::Execute => Outcome::Executed,
    }
}

/// Whether `actual` is what `expected` asks for (unchecked parts of `expected` are `None`).
pub fn agrees(expected: &Outcome, actual: &Outcome) -> bool {
    match (expected, actual) {
        (Outcome::Loaded(None), Outcome::Loaded(_)) | (Outcome::Stored(None), Outcome::Stored(_)) => true,
        (
            Outcome::Translated { pa, attr, sh: None },
            Outcome::Translated {
                pa: apa, attr: aattr, ..
            },
        ) => pa == apa && attr == aattr,
        _ => expected == actual,
    }
}

// ------------------------------------------------------------------------------------------
// Descriptors on a walk, read from the table image (for reports and negative controls)
// ------------------------------------------------------------------------------------------

/// One descriptor on the walk of a VA.
#[derive(Clone, Copy, Debug)]
pub struct Step {
    /// Arm level (0-3).
    pub level: u8,
    pub index: u64,
    pub raw: u64,
    /// Physical address of the descriptor.
    pub at: u64,
}

/// Output address bits 47:12.
const OA: u64 = 0x0000_FFFF_FFFF_F000;

/// Reads the descriptor at physical `at` from `image` (loaded at [`TABLES_PA`]).
fn read_desc(image: &[u8], at: u64) -> Option<u64> {
    let off = usize::try_from(at.checked_sub(TABLES_PA)?).ok()?;
    let bytes = image.get(off..off + 8)?;
    Some(u64::from_le_bytes(bytes.try_into().unwrap()))
}

/// The descriptors a stage 1 walk of `va` reads from `image` (root at `ttbr0`, `levels`
/// levels): Arm ARM D8.3, bits 1:0 = 0b11 is a table at L0-L2 and a page at L3, 0b01 a block
/// at L1 and L2 (reserved at L0 and L3), bit 0 = 0 invalid.
pub fn walk_image(image: &[u8], ttbr0: u64, levels: u8, va: u64) -> Vec<Step> {
    let mut steps = Vec::new();
    let va_bits = 12 + 9 * u32::from(levels);
    if va >> va_bits != 0 {
        return steps;
    }
    let mut table = ttbr0 & OA;
    for level in (4 - levels)..=3 {
        let shift = 12 + 9 * u32::from(3 - level);
        let index = (va >> shift) & 511;
        let at = table + 8 * index;
        let Some(raw) = read_desc(image, at) else {
            break;
        };
        steps.push(Step { level, index, raw, at });
        if raw & 3 == 3 && level < 3 {
            table = raw & OA;
        } else {
            break;
        }
    }
    steps
}

/// A descriptor's fields, decoded from the manual.
pub fn describe_desc(level: u8, raw: u64) -> String {
    if raw & 1 == 0 {
        return if raw == 0 {
            "invalid (0)".into()
        } else {
            format!(
                "invalid (bit 0 clear; software bit 55 {}: {})",
                (raw >> 55) & 1,
                if raw & (1 << 55) != 0 {
                    "the library's ReadProtect leaf"
                } else {
                    "garbage"
                }
            )
        };
    }
    let kind = match (level, raw & 2 != 0) {
        (0..=2, true) => {
            return format!(
                "table -> {:#x} (NSTable {}, APTable {:#04b}, UXNTable {}, PXNTable {})",
                raw & OA,
                raw >> 63,
                (raw >> 61) & 3,
                (raw >> 60) & 1,
                (raw >> 59) & 1
            )
        }
        (3, true) => "page",
        (1 | 2, false) => "block",
        _ => return "reserved type 0b01 (faults as invalid)".into(),
    };
    let size_bits = 12 + 9 * u32::from(3 - level);
    format!(
        "{kind} OA {:#x} AttrIndx {} AP {:#04b} SH {:#04b} AF {} nG {} PXN {} UXN {} Contig {} DBM {} SW {:#x}{}",
        raw & OA & !((1u64 << size_bits) - 1),
        (raw >> 2) & 7,
        (raw >> 6) & 3,
        (raw >> 8) & 3,
        (raw >> 10) & 1,
        (raw >> 11) & 1,
        (raw >> 53) & 1,
        (raw >> 54) & 1,
        (raw >> 52) & 1,
        (raw >> 51) & 1,
        (raw >> 55) & 0xF,
        if raw & (OA & ((1u64 << size_bits) - 1)) != 0 {
            " (address bits below the block size set: RES0)"
        } else {
            ""
        }
    )
}

/// The walk of `va`, one line per descriptor.
pub fn describe_walk(image: &[u8], ttbr0: u64, levels: u8, va: u64) -> String {
    let steps = walk_image(image, ttbr0, levels, va);
    if steps.is_empty() {
        return format!(
            "    (no descriptors: {va:#x} is outside the {}-bit TTBR0 range)\n",
            12 + 9 * levels as u32
        );
    }
    let mut s = String::new();
    for st in steps {
        let _ = writeln!(
            s,
            "    L{}[{:3}] @ {:#x} = {:#018x}  {}",
            st.level,
            st.index,
            st.at,
            st.raw,
            describe_desc(st.level, st.raw)
        );
    }
    s
}

// ------------------------------------------------------------------------------------------
// Probes
// ------------------------------------------------------------------------------------------

/// The probes for `vas` (8-byte aligned, below [`HIGH`]): `AT S1E1R` and `AT S1E1W` for every
/// VA; a load, a store and a branch where the model's output address is in the pattern
/// window (with the pattern at that PA), or where every access must fault; elsewhere only
/// the real accesses that must fault on permissions (store to ReadOnly, branch to
/// ExecuteProtect or Device memory), so nothing outside the window is ever touched.
pub fn probes_for(runs: &Runs, shape: Shape, vas: &[u64]) -> Vec<Probe> {
    let mut probes = Vec::with_capacity(vas.len() * 5);
    for &va in vas {
        assert!(va < HIGH, "probe {va:#x} would hit the guest's own TTBR1 mapping");
        assert!(va % 8 == 0, "probe {va:#x} is not 8-byte aligned");
        let p = |access, pattern_pa| Probe { va, access, pattern_pa };
        probes.push(p(Access::AtRead, None));
        probes.push(p(Access::AtWrite, None));
        match runs.walk(shape, va) {
            Walk::Leaf { pa, attrs, .. } if !attrs.contains(MA::ReadProtect) => {
                if (WINDOW..WINDOW + GIB).contains(&pa) {
                    for access in [Access::Read, Access::Write, Access::Execute] {
                        probes.push(p(access, Some(pa)));
                    }
                } else {
                    if attrs.contains(MA::ReadOnly) {
                        probes.push(p(Access::Write, None));
                    }
                    if attrs.contains(MA::ExecuteProtect) || memory_type(attrs).1 {
                        probes.push(p(Access::Execute, None));
                    }
                }
            }
            _ => {
                for access in [Access::Read, Access::Write, Access::Execute] {
                    probes.push(p(access, None));
                }
            }
        }
    }
    probes
}

/// Addresses outside the TTBR0 range of `shape` and below the guest's TTBR1 range.
pub fn out_of_range_vas(shape: Shape) -> Vec<u64> {
    let mut v = vec![
        1 << 48,
        0x0001_0000_0000_1008,
        0x00FF_FFFF_FFFF_F000,
        0x0100_0000_0000_0000,
        0x8000_0000_0000_0000,
        0xFFFF_0000_0000_0000,
        HIGH - PAGE,
        HIGH - 8,
    ];
    if shape.levels == 3 {
        v.extend([
            1 << 39,
            (1 << 39) + 0x1000,
            0x0000_8000_0000_0000,
            0x0000_FFFF_FFFF_F000,
        ]);
    }
    v
}

// ------------------------------------------------------------------------------------------
// Running the guest and checking
// ------------------------------------------------------------------------------------------

/// What one guest run reported, with the register values it actually programmed.
pub struct GuestRun {
    pub report: GuestReport,
    /// The Exception level the guest ran at (CurrentEL.EL).
    pub el: u64,
    pub mair: u64,
    pub tcr: u64,
    pub ttbr0: u64,
    pub sctlr: u64,
    pub id_aa64mmfr0: u64,
    pub elapsed: Duration,
}

fn qword(bytes: &[u8], offset: usize) -> u64 {
    u64::from_le_bytes(bytes[offset..offset + 8].try_into().unwrap())
}

/// Describes the guest's error codes (guests/aarch64/probe.S) and its extra header words.
fn describe_guest_error(header: &[u8]) -> String {
    let code = qword(header, 0x10);
    let detail = qword(header, 0x18);
    let name = match code {
        0x10 => "the library's MAIR_EL1 uses Attr7, the guest's slot",
        0x11 => "unknown access kind",
        0x12 => "pattern PA outside RAM or unaligned",
        0x20 => "exception with no probe in flight",
        0x21 => "exception through an unexpected vector",
        _ => "unknown",
    };
    let mut s = format!("guest error {code:#x} ({name}), detail {detail:#x}");
    if code == 0x20 || code == 0x21 {
        let _ = write!(
            s,
            "; {}, ELR {:#x}, FAR {:#x}, vector {}, SPSR {:#x}",
            describe_esr(detail),
            qword(header, 0x20),
            qword(header, 0x28),
            qword(header, 0x30),
            qword(header, 0x38)
        );
    }
    let _ = write!(s, "; at probe {}", qword(header, 0x68));
    s
}

/// Runs the guest on `image` with the install values `(mair, tcr, ttbr0)` and `probes`, at
/// EL1 (`-M virt`) or at EL2 (`el` = 2: `-M virt,virtualization=on`).
pub fn run_guest(
    qemu: &Path,
    test: &str,
    el: u8,
    image: &[u8],
    install: (u64, u64, u64),
    probes: &[Probe],
) -> Result<GuestRun, String> {
    assert!(probes.len() <= MAX_PROBES_PER_RUN, "{} probes in one run", probes.len());
    assert!(
        TABLES_PA + image.len() as u64 <= PROBES_PA,
        "the table image overlaps the probe block"
    );
    let scratch = Scratch::new(test);
    let ram = RamFile::create(scratch.path("ram.img"), RAM_BASE, RAM_SIZE);
    let (mair, tcr, ttbr0) = install;
    let block = probe_block([mair, tcr, ttbr0, 0, 0, 0, 0, 0], RESULTS_PA, probes);
    let machine = if el == 2 { "virt,virtualization=on" } else { "virt" };
    let mut args: Vec<String> = vec!["-M".into(), ram.machine_arg(machine), "-cpu".into(), "max".into()];
    args.extend(ram.qemu_args());
    args.extend(
        ["-nographic", "-no-reboot", "-nodefaults", "-semihosting", "-kernel"]
            .iter()
            .map(|s| s.to_string()),
    );
    args.push(guest_elf().display().to_string());
    args.extend(loader_args(&scratch, "tables.bin", image, TABLES_PA));
    args.extend(loader_args(&scratch, "probes.bin", &block, PROBES_PA));
    let timeout = Duration::from_secs(60 + probes.len() as u64 / 2000);
    let exit = run_qemu(qemu, &args, timeout);
    let header = ram.read(RESULTS_PA, 0x100);
    let context = || {
        format!(
            "QEMU exit {:?}{} after {:?}; stdout {:?}; stderr {:?}; results magic {:#x}, {} of {} probes done; {}\n\
             command: {} {}",
            exit.code,
            if exit.timed_out { " (timed out)" } else { "" },
            exit.elapsed,
            exit.stdout,
            exit.stderr,
            qword(&header, 0),
            qword(&header, 8),
            probes.len(),
            describe_guest_error(&header),
            qemu.display(),
            args.join(" ")
        )
    };
    // Exit codes of the guest: 0 ok, 1 guest error in the results, 2 bad probe block,
    // 3 exception inside the exception handler, 4 not started at EL1 or EL2.
    if exit.code != Some(0) || qword(&header, 0x10) != 0 {
        return Err(format!("the guest failed: {}", context()));
    }
    let report = read_results(&ram, RESULTS_PA, probes.len()).map_err(|e| format!("{e}; {}", context()))?;
    if report.completed != probes.len() as u64 {
        return Err(format!(
            "the guest completed {} probes; {}",
            report.completed,
            context()
        ));
    }
    Ok(GuestRun {
        report,
        el: qword(&header, 0x70),
        mair: qword(&header, 0x40),
        tcr: qword(&header, 0x48),
        ttbr0: qword(&header, 0x50),
        sctlr: qword(&header, 0x58),
        id_aa64mmfr0: qword(&header, 0x60),
        elapsed: exit.elapsed,
    })
}

/// How a probe is named in reports (the AT instruction of the Exception level `el`).
pub fn access_name(a: Access, el: u8) -> &'static str {
    match (a, el) {
        (Access::Read, _) => "load",
        (Access::Write, _) => "store",
        (Access::Execute, _) => "branch",
        (Access::AtRead, 2) => "AT S1E2R",
        (Access::AtWrite, 2) => "AT S1E2W",
        (Access::AtRead, _) => "AT S1E1R",
        (Access::AtWrite, _) => "AT S1E1W",
    }
}

fn describe_raw(probe: &Probe, r: &RawResult) -> String {
    match (r.status, probe.access) {
        (1, _) => format!("exception: {}, FAR {:#x}", describe_esr(r.syndrome), r.address),
        (0, Access::AtRead | Access::AtWrite) => format!("completed: {}", describe_par(r.value)),
        (0, Access::Read) => format!("completed, read {:#x}", r.value),
        (0, Access::Write) => format!("completed, pattern qword read back {:#x}", r.value),
        (0, Access::Execute) => "completed (returned)".into(),
        (s, _) => format!(
            "status {s}? syndrome {:#x} value {:#x} address {:#x}",
            r.syndrome, r.value, r.address
        ),
    }
}

/// A walk, for reports (addresses in hex).
pub fn describe_walk_model(walk: &Walk) -> String {
    match *walk {
        Walk::OutOfRange => "outside the TTBR0 range".into(),
        Walk::Unmapped { level } => format!("unmapped (invalid descriptor at level {level})"),
        Walk::Leaf { level, pa, attrs } => format!("L{level} leaf, PA {pa:#x}, {attrs:?}"),
    }
}

/// An outcome, for reports (addresses in hex).
pub fn describe_outcome(o: &Outcome) -> String {
    let opt = |v: Option<u64>| v.map_or("(not checked)".to_string(), |v| format!("{v:#x}"));
    match *o {
        Outcome::Loaded(v) => format!("load completes, value {}", opt(v)),
        Outcome::Stored(v) => format!("store completes, pattern qword afterwards {}", opt(v)),
        Outcome::Executed => "branch completes (the pattern's ret comes back)".into(),
        Outcome::Translated { pa, attr, sh } => format!(
            "PAR.F 0, PA {pa:#x}, ATTR {attr:#04x}, SH {}",
            sh.map_or("(not checked)".to_string(), |sh| format!("{sh:#04b}"))
        ),
        Outcome::AtFault(f) => format!("PAR.F 1, {f}"),
        Outcome::Abort { ec, fault, wnr, far } => {
            format!("exception EC {ec:#04x}, {fault}, WnR {}, FAR {far:#x}", u8::from(wnr))
        }
        Outcome::Unexpected => "something else".into(),
    }
}

/// A coarse class of an expected outcome, for the coverage tally.
pub fn outcome_class(o: &Outcome) -> &'static str {
    match o {
        Outcome::Loaded(Some(_)) => "load of the pattern",
        Outcome::Loaded(None) => "load, value unchecked",
        Outcome::Stored(Some(_)) => "store, landing checked",
        Outcome::Stored(None) => "store, landing unchecked",
        Outcome::Executed => "branch that returns",
        Outcome::Translated { .. } => "AT translation",
        Outcome::AtFault(Fault::Translation(_)) => "AT translation fault",
        Outcome::AtFault(Fault::Permission(_)) => "AT permission fault",
        Outcome::AtFault(_) => "AT other fault",
        Outcome::Abort {
            ec: EC_DATA_ABORT_SAME_EL,
            fault: Fault::Translation(_),
            ..
        } => "data abort, translation",
        Outcome::Abort {
            ec: EC_DATA_ABORT_SAME_EL,
            fault: Fault::Permission(_),
            ..
        } => "data abort, permission",
        Outcome::Abort {
            fault: Fault::Translation(_),
            ..
        } => "instruction abort, translation",
        Outcome::Abort {
            fault: Fault::Permission(_),
            ..
        } => "instruction abort, permission",
        _ => "other",
    }
}

/// Compares a run's results with the model; one report per disagreeing probe. Adds each
/// expected outcome's class to `tally`.
#[allow(clippy::too_many_arguments)]
pub fn compare(
    runs: &Runs,
    shape: Shape,
    el: u8,
    image: &[u8],
    install: (u64, u64, u64),
    probes: &[Probe],
    results: &[RawResult],
    tally: &mut BTreeMap<&'static str, usize>,
) -> Vec<String> {
    let mut out = Vec::new();
    for (i, (probe, r)) in probes.iter().zip(results).enumerate() {
        let walk = runs.walk(shape, probe.va);
        let want = expected(walk, probe);
        *tally.entry(outcome_class(&want)).or_default() += 1;
        let got = actual(probe, r);
        if agrees(&want, &got) {
            continue;
        }
        out.push(format!(
            "probe {i}: {} {:#x}{}\n  model:    {}\n  expected: {}\n  actual:   {}\n  raw:      {}\n  \
             descriptors on the walk (TTBR0 {:#x}):\n{}",
            access_name(probe.access, el),
            probe.va,
            probe
                .pattern_pa
                .map_or(String::new(), |p| format!(" (pattern at PA {p:#x})")),
            describe_walk_model(&walk),
            describe_outcome(&want),
            describe_outcome(&got),
            describe_raw(probe, r),
            install.2,
            describe_walk(image, install.2, shape.levels, probe.va)
        ));
    }
    out
}

/// Everything one check did.
pub struct Checked {
    pub probes: usize,
    /// Expected outcomes by class (see [`outcome_class`]).
    pub tally: BTreeMap<&'static str, usize>,
    pub mismatches: Vec<String>,
    pub elapsed: Duration,
}

/// Runs `probes` on `image` under `install` and compares them with `model`, in runs of at
/// most [`MAX_PROBES_PER_RUN`]. Guest-level failures (no results, guest error, registers not
/// programmed as asked) come back as one mismatch each.
#[allow(clippy::too_many_arguments)]
pub fn check(
    qemu: &Path,
    test: &str,
    el: u8,
    model: &Model,
    shape: Shape,
    image: &[u8],
    install: (u64, u64, u64),
    probes: &[Probe],
) -> Checked {
    let runs = Runs::new(model);
    let mut mismatches = Vec::new();
    let mut elapsed = Duration::ZERO;
    let mut tally = BTreeMap::new();
    for chunk in probes.chunks(MAX_PROBES_PER_RUN) {
        match run_guest(qemu, test, el, image, install, chunk) {
            Err(e) => mismatches.push(e),
            Ok(run) => {
                elapsed += run.elapsed;
                let (mair, tcr, ttbr0) = install;
                // At EL1 the guest adds its TTBR1 half and Attr7; at EL2 it programs exactly
                // the library's values.
                let (want_mair, want_tcr) = if el == 2 {
                    (mair, tcr)
                } else {
                    (
                        mair | 0xFF << (8 * GUEST_ATTR_INDEX),
                        (tcr & !TCR_T1_MASK) | TCR_T1_GUEST,
                    )
                };
                if run.el != u64::from(el) {
                    mismatches.push(format!("the guest ran at EL{}, not at EL{el}", run.el));
                }
                if (run.mair, run.tcr, run.ttbr0) != (want_mair, want_tcr, ttbr0) {
                    mismatches.push(format!(
                        "the registers read back differ from what the guest wrote: MAIR {:#x} (wrote {want_mair:#x}), \
                         TCR {:#x} (wrote {want_tcr:#x}), TTBR0 {:#x} (wrote {ttbr0:#x}); SCTLR {:#x}, \
                         ID_AA64MMFR0 {:#x}",
                        run.mair, run.tcr, run.ttbr0, run.sctlr, run.id_aa64mmfr0
                    ));
                }
                mismatches.extend(compare(
                    &runs,
                    shape,
                    el,
                    image,
                    install,
                    chunk,
                    &run.report.results,
                    &mut tally,
                ));
            }
        }
    }
    Checked {
        probes: probes.len(),
        tally,
        mismatches,
        elapsed,
    }
}

/// Checks `build`'s table against its model with `probes`, at the table's Exception level.
pub fn check_build<R: Regime>(qemu: &Path, test: &str, build: &Build<R>, probes: &[Probe]) -> Checked {
    let image = build.image();
    check(
        qemu,
        test,
        build.el(),
        &build.model,
        build.shape,
        &image,
        build.install(),
        probes,
    )
}
