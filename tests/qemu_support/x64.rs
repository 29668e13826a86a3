//! X64 side of the QEMU probe harness (`tests/qemu_x64.rs`): the guest memory layout, table
//! construction through the public API next to the reference model, expected probe
//! outcomes derived from the model alone, the guest run, and an independent reading of the
//! raw entries on a walk (Intel SDM Vol. 3A 4.5, tables 4-15..4-20) for mismatch reports.
//!
//! Guest: `guests/x64/probe.S` (see its header comment and `guests/x64/README.md`).
#![allow(dead_code)]

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use txpaging::{
    InstallRequest, MemoryAttributes as MA, MmuOp, PagePool, PageTable, PagingType, PtError, RecordingMmu, TxnError,
    X64Config, X64PageTable,
};

use crate::model_support::{describe_ops, min_table_pages, MOp, Model, Shape, X64Target, GIB, PAGE};
use crate::qemu_support::{self as qs, Access, GuestReport, Probe, RawResult};

// ------------------------------------------------------------------------------------------
// Guest memory layout (q35, 2 GiB of RAM at PA 0, all below 4 GiB)
// ------------------------------------------------------------------------------------------

/// The guest image is a Multiboot kernel loaded at 1 MiB (guests/x64/link.ld).
pub const GUEST_LOAD_PA: u64 = 0x0010_0000;
/// Where the table pool's pages live (`PagePool::with_physical_base`).
pub const TABLES_PA: u64 = 0x0100_0000;
/// Table pages of the pool: 32 MiB, up to 0x0300_0000.
pub const POOL_PAGES: usize = 8192;
/// The probe block. Fixed: `PROBES_PA` in guests/x64/probe.S.
pub const PROBES_PA: u64 = 0x0800_0000;
/// The results area.
pub const RESULTS_PA: u64 = 0x1000_0000;
/// The pattern window: mapped output addresses that are accessed must lie in it.
pub const WINDOW: u64 = 0x4000_0000;
/// Guest RAM.
pub const RAM_SIZE: u64 = 2 << 30;
/// The root slot the guest overwrites with its own high alias (probe block params[3]).
pub const GUEST_SLOT: u64 = 511;
/// The guest's high alias of PA 0 (root slot 511 in both paging modes).
pub const GUEST_HIGH: u64 = 0xFFFF_FF80_0000_0000;
/// Probes that fit between the probe block and the results area.
pub const MAX_PROBES: usize = ((RESULTS_PA - PROBES_PA) as usize - qs::HEADER_BYTES) / qs::RECORD_BYTES;
/// One guest run may take this long before it is killed (the runs take well under a second).
pub const TIMEOUT: Duration = Duration::from_secs(120);

/// Pattern qword the guest stores at PA `p`: `(p << 8) | 0xC3` (low byte `ret`).
pub fn pattern(pa: u64) -> u64 {
    (pa << 8) | 0xC3
}

/// The checked-in guest image.
pub fn guest_image() -> PathBuf {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("guests/x64/probe.bin");
    assert!(
        path.is_file(),
        "{} is missing: run `bash guests/x64/build.sh`",
        path.display()
    );
    path
}

// ------------------------------------------------------------------------------------------
// Configurations and the table under test with its model
// ------------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    pub five_level: bool,
    pub one_gib_pages: bool,
}

impl Config {
    pub const ALL: [Config; 4] = [
        Config {
            five_level: false,
            one_gib_pages: true,
        },
        Config {
            five_level: false,
            one_gib_pages: false,
        },
        Config {
            five_level: true,
            one_gib_pages: true,
        },
        Config {
            five_level: true,
            one_gib_pages: false,
        },
    ];

    pub fn levels(self) -> u8 {
        if self.five_level {
            5
        } else {
            4
        }
    }

    pub fn paging(self) -> PagingType {
        if self.five_level {
            PagingType::Paging5Level
        } else {
            PagingType::Paging4Level
        }
    }

    /// The model's shape (the documented geometry, docs/paging.md section 1).
    pub fn shape(self) -> Shape {
        Shape {
            levels: self.levels(),
            max_leaf_level: if self.one_gib_pages { 2 } else { 1 },
            sign_extended: true,
            pa_bits: 52,
        }
    }

    pub fn model_cfg(self) -> crate::model_support::X64Cfg {
        crate::model_support::X64Cfg {
            five_level: self.five_level,
            one_gib_pages: self.one_gib_pages,
        }
    }
}

impl std::fmt::Display for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}-level, 1 GiB pages {}",
            self.levels(),
            if self.one_gib_pages { "on" } else { "off" }
        )
    }
}

pub type Table = X64PageTable<PagePool, RecordingMmu>;

/// How ops reach the library.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Api {
    /// All ops in one `transaction()` / `commit()`.
    Transaction,
    /// Each op through `map_aliased_memory_region` & co.
    OneOp,
}

/// A table built by the library, and the model of the same requests.
pub struct Build {
    pub cfg: Config,
    pub shape: Shape,
    pub table: Table,
    pub model: Model,
    /// Every op applied so far (for failure reports).
    pub history: Vec<MOp>,
}

impl Build {
    pub fn new(cfg: Config) -> Self {
        let table = X64PageTable::with_mmu(
            PagePool::with_physical_base(POOL_PAGES, TABLES_PA),
            cfg.paging(),
            X64Config {
                one_gib_pages: cfg.one_gib_pages,
            },
            RecordingMmu::new(),
        )
        .expect("creating the table");
        Self {
            cfg,
            shape: cfg.shape(),
            table,
            model: Model::default(),
            history: Vec::new(),
        }
    }

    /// Applies `ops` to the library and to the model; the library must succeed or fail as the
    /// model predicts. Returns the model's verdict (all or nothing for a transaction; the
    /// first failing op for one-op calls, the others still applied).
    pub fn apply(&mut self, ops: &[MOp], api: Api) -> Result<(), TxnError> {
        let result = match api {
            Api::Transaction => {
                let predicted = self.model.predict::<X64Target>(&self.shape, ops);
                let mut t = self.table.transaction();
                crate::model_support::queue(&mut t, ops);
                let got = t.commit().map(drop);
                let want = predicted.as_ref().map(drop).map_err(|e| *e);
                assert_eq!(
                    got.map_err(|e| e.code()),
                    want.map_err(|e| e.code()),
                    "{}: commit() vs the model for\n{}",
                    self.cfg,
                    describe_ops(ops)
                );
                if let Ok(next) = predicted {
                    self.model = next;
                    self.history.extend_from_slice(ops);
                }
                want
            }
            Api::OneOp => {
                let mut first_error = None;
                for (i, op) in ops.iter().enumerate() {
                    let predicted = self.model.predict::<X64Target>(&self.shape, std::slice::from_ref(op));
                    let got = match *op {
                        MOp::Map { va, size, attrs } => self.table.map_memory_region(va, size, attrs),
                        MOp::MapAliased { va, pa, size, attrs } => {
                            self.table.map_aliased_memory_region(va, pa, size, attrs)
                        }
                        MOp::Unmap { va, size } => self.table.unmap_memory_region(va, size),
                        MOp::Protect { va, size, attrs } => self.table.protect_memory_region(va, size, attrs),
                    };
                    let want: Result<(), PtError> = predicted.as_ref().map(drop).map_err(|e| e.error);
                    assert_eq!(
                        got,
                        want,
                        "{}: one-op call vs the model for\n{}",
                        self.cfg,
                        describe_ops(&[*op])
                    );
                    match predicted {
                        Ok(next) => {
                            self.model = next;
                            self.history.push(*op);
                        }
                        Err(e) => {
                            first_error.get_or_insert(TxnError::at(i, e.error));
                        }
                    }
                }
                first_error.map_or(Ok(()), Err)
            }
        };
        assert_eq!(
            self.root_entry(GUEST_SLOT as usize),
            0,
            "{}: the tables use root slot {GUEST_SLOT}, which the guest needs for itself, after\n{}",
            self.cfg,
            describe_ops(ops)
        );
        result
    }

    /// Like [`apply`](Self::apply), but every op must succeed.
    pub fn apply_ok(&mut self, ops: &[MOp], api: Api) {
        if let Err(e) = self.apply(ops, api) {
            panic!("{}: {e:?} for\n{}", self.cfg, describe_ops(ops));
        }
    }

    /// Raw root entry `index`, read from the pool image.
    pub fn root_entry(&self, index: usize) -> u64 {
        read_u64(
            self.table.allocator().image(),
            self.table.root() - TABLES_PA + 8 * index as u64,
        )
        .expect("root inside the pool")
    }

    /// The table pages must be the fewest the model's mapping allows (merges happened).
    pub fn assert_minimal(&self) {
        assert_eq!(
            self.table.table_pages(),
            min_table_pages(&self.shape, &self.model),
            "{}: table pages vs the minimum for the model",
            self.cfg
        );
    }

    /// `install_page_table()` on the recording MMU: (CR3, IA32_PAT) as the library would load them.
    pub fn install(&self) -> (u64, u64) {
        let _ = self.table.mmu().take_log();
        self.table.install_page_table().expect("install_page_table");
        let installs: Vec<InstallRequest> = self
            .table
            .mmu()
            .take_log()
            .into_iter()
            .filter_map(|op| match op {
                MmuOp::Install(request) => Some(request),
                _ => None,
            })
            .collect();
        match installs.as_slice() {
            [InstallRequest::X64 {
                root,
                five_level,
                pat,
                nx,
            }] => {
                assert_eq!(*five_level, self.cfg.five_level, "install request paging mode");
                assert!(*nx, "install request without NX");
                assert_eq!(*root, self.table.root(), "install request root");
                assert_eq!(*pat, txpaging::x64::PAT_LAYOUT, "install request IA32_PAT");
                (*root, *pat)
            }
            other => panic!("install_page_table() recorded {other:?}"),
        }
    }

    /// The pool image up to its last live page (the bytes loaded at [`TABLES_PA`]).
    pub fn image(&self) -> Vec<u8> {
        let pool = self.table.allocator();
        let last = pool.live().max().expect("the root is live");
        let len = (last - TABLES_PA + PAGE) as usize;
        pool.image()[..len].to_vec()
    }
}

/// `qemu_support::fold_ops` into [`WINDOW`] for `shape`: a map the checks reject is kept as
/// it is, so it still fails.
pub fn fold(ops: &[MOp], shape: Shape) -> Vec<MOp> {
    qs::fold_ops(ops, shape, WINDOW)
}

/// Whether every page the model maps has its output inside [`WINDOW`].
pub fn all_in_window(model: &Model) -> bool {
    model
        .runs()
        .all(|r| r.pa >= WINDOW && r.pa + (r.end - r.start) <= WINDOW + GIB)
}

/// A canonical VA under the root slot the guest reserves (never probed).
pub fn in_guest_slot(shape: Shape, va: u64) -> bool {
    shape.is_canonical(va) && shape.to_linear(va) >> (12 + 9 * u32::from(shape.levels - 1)) == GUEST_SLOT
}

// ------------------------------------------------------------------------------------------
// Outcomes
// ------------------------------------------------------------------------------------------

/// What one probe did, as the guest reports it (or as the model says it must).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// No exception. `value`: the qword read (read probes), else 0.
    Completed { value: u64 },
    /// An exception: vector, error code, CR2 (#PF only, else 0).
    Exception { vector: u64, error_code: u64, address: u64 },
}

pub const PF: u64 = 14;
pub const GP: u64 = 13;
/// #PF error code bits (SDM 4.7).
pub const EC_P: u64 = 1 << 0;
pub const EC_W: u64 = 1 << 1;
pub const EC_RSVD: u64 = 1 << 3;
pub const EC_ID: u64 = 1 << 4;

impl Outcome {
    pub fn from_raw(access: Access, raw: &RawResult) -> Self {
        match raw.status {
            0 => Outcome::Completed {
                value: if access == Access::Read { raw.value } else { 0 },
            },
            _ => Outcome::Exception {
                vector: raw.syndrome >> 32,
                error_code: raw.syndrome & 0xFFFF_FFFF,
                address: raw.address,
            },
        }
    }

    fn page_fault(error_code: u64, va: u64) -> Self {
        Outcome::Exception {
            vector: PF,
            error_code,
            address: va,
        }
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            Outcome::Completed { value } => write!(f, "completed, value {value:#x}"),
            Outcome::Exception {
                vector: PF,
                error_code,
                address,
            } => {
                let bits: Vec<&str> = [
                    (EC_P, "P"),
                    (EC_W, "W"),
                    (1 << 2, "U"),
                    (EC_RSVD, "RSVD"),
                    (EC_ID, "I/D"),
                    (1 << 5, "PK"),
                    (1 << 6, "SS"),
                ]
                .iter()
                .filter(|(b, _)| error_code & b != 0)
                .map(|(_, n)| *n)
                .collect();
                write!(
                    f,
                    "#PF error code {error_code:#x} [{}], CR2 {address:#x}",
                    bits.join(" ")
                )
            }
            Outcome::Exception {
                vector,
                error_code,
                address,
            } => write!(
                f,
                "exception {vector} error code {error_code:#x} (address {address:#x})"
            ),
        }
    }
}

/// What the MMU must do for `access` at `va` given the model, and the pattern PA to write
/// first. `None`: the model maps `va` outside the pattern window, so the probe must not
/// touch memory and is left out.
pub fn expect(shape: Shape, model: &Model, va: u64, access: Access) -> Option<(Outcome, Option<u64>)> {
    let not_present = match access {
        Access::Read => 0,
        Access::Write => EC_W,
        Access::Execute => EC_ID,
        other => panic!("{other:?} is an AArch64 probe"),
    };
    if !shape.is_canonical(va) {
        // Not canonical in this paging mode (for 4 levels: every address needing 57 bits).
        return Some((
            Outcome::Exception {
                vector: GP,
                error_code: 0,
                address: 0,
            },
            None,
        ));
    }
    let offset = va % PAGE;
    let Some((page_pa, attrs)) = model.lookup(shape.to_linear(va - offset)) else {
        return Some((Outcome::page_fault(not_present, va), None));
    };
    let pa = page_pa + offset;
    if !(WINDOW..=WINDOW + GIB - 8).contains(&pa) || pa % 8 != 0 {
        return None;
    }
    let outcome = if attrs.contains(MA::ReadProtect) {
        // Documented encoding: ReadProtect is a non-present entry.
        Outcome::page_fault(not_present, va)
    } else {
        match access {
            Access::Read => Outcome::Completed { value: pattern(pa) },
            Access::Write if attrs.contains(MA::ReadOnly) => Outcome::page_fault(EC_P | EC_W, va),
            Access::Execute if attrs.contains(MA::ExecuteProtect) => Outcome::page_fault(EC_P | EC_ID, va),
            _ => Outcome::Completed { value: 0 },
        }
    };
    Some((outcome, Some(pa)))
}

/// Probes with their expected outcomes.
#[derive(Clone, Default)]
pub struct ProbeSet {
    pub probes: Vec<Probe>,
    pub expected: Vec<Outcome>,
    /// Probes left out because their output address is outside the window.
    pub skipped: usize,
}

pub const ALL_ACCESSES: [Access; 3] = [Access::Read, Access::Write, Access::Execute];

impl ProbeSet {
    /// Each VA (never one under the guest's root slot) with each access in `accesses`.
    pub fn new(shape: Shape, model: &Model, vas: &[u64], accesses: &[Access]) -> Self {
        let mut set = ProbeSet::default();
        for &va in vas {
            if in_guest_slot(shape, va) {
                continue;
            }
            for &access in accesses {
                match expect(shape, model, va, access) {
                    Some((outcome, pattern_pa)) => {
                        set.probes.push(Probe { va, access, pattern_pa });
                        set.expected.push(outcome);
                    }
                    None => set.skipped += 1,
                }
            }
        }
        assert!(set.probes.len() <= MAX_PROBES, "{} probes do not fit", set.probes.len());
        set
    }

    pub fn len(&self) -> usize {
        self.probes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.probes.is_empty()
    }
}

// ------------------------------------------------------------------------------------------
// Running the guest
// ------------------------------------------------------------------------------------------

/// What the guest is told: the values `install_page_table()` would load.
#[derive(Clone, Copy, Debug)]
pub struct Install {
    pub root: u64,
    pub pat: u64,
    pub levels: u8,
}

/// The results of one guest run.
pub struct GuestRun {
    pub report: GuestReport,
    pub elapsed: Duration,
    /// What the guest read back after installing the tables.
    pub registers: Registers,
}

/// The control registers and MSRs the guest read back after loading CR3 (results header
/// 0x40..0x68).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Registers {
    pub cr3: u64,
    pub ia32_pat: u64,
    pub cr0: u64,
    pub cr4: u64,
    pub ia32_efer: u64,
}

impl Registers {
    /// The state the probes' expectations assume (SDM 2.5, 4.1): paging on with CR0.WP (so
    /// supervisor writes honour R/W), PAE, LA57 exactly for 5 levels, long mode active with
    /// NXE (XD honoured), and CR3 / IA32_PAT as `install_page_table()` asked.
    pub fn check(&self, install: Install) -> Result<(), String> {
        let bit = |value: u64, n: u32| value >> n & 1 == 1;
        let mut problems = Vec::new();
        if self.cr3 != install.root {
            problems.push(format!("CR3 {:#x}, the root is {:#x}", self.cr3, install.root));
        }
        if self.ia32_pat != install.pat {
            problems.push(format!("IA32_PAT {:#x}, asked {:#x}", self.ia32_pat, install.pat));
        }
        if !(bit(self.cr0, 31) && bit(self.cr0, 16) && bit(self.cr0, 0)) {
            problems.push(format!("CR0 {:#x}: PG, WP and PE must be set", self.cr0));
        }
        if !bit(self.cr4, 5) || bit(self.cr4, 12) != (install.levels == 5) {
            problems.push(format!("CR4 {:#x}: PAE, and LA57 for 5 levels only", self.cr4));
        }
        if !(bit(self.ia32_efer, 8) && bit(self.ia32_efer, 10) && bit(self.ia32_efer, 11)) {
            problems.push(format!("IA32_EFER {:#x}: LME, LMA and NXE must be set", self.ia32_efer));
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("; "))
        }
    }
}

/// Runs the guest with `image` loaded at [`TABLES_PA`] (`cpu`: QEMU's `-cpu`, normally
/// `max`). `Err` with everything known if the guest did not finish cleanly.
pub fn run_guest(
    qemu: &Path,
    test: &str,
    cpu: &str,
    image: &[u8],
    install: Install,
    probes: &[Probe],
) -> Result<GuestRun, String> {
    assert!(TABLES_PA + image.len() as u64 <= PROBES_PA, "table image too large");
    let scratch = qs::Scratch::new(test);
    let ram = qs::RamFile::create(scratch.path("ram"), 0, RAM_SIZE);
    let params = [
        install.root,
        install.pat,
        u64::from(install.levels),
        GUEST_SLOT,
        0,
        0,
        0,
        0,
    ];
    let block = qs::probe_block(params, RESULTS_PA, probes);
    let mut args: Vec<String> = [
        "-accel",
        "tcg",
        "-machine",
        &ram.machine_arg("q35"),
        "-cpu",
        cpu,
        // One vCPU, but a machine that may have two: TCG then runs locked instructions as real
        // atomics, which are checked for write access before they read, as on hardware (a
        // locked write to a non-present page reports W = 1). With maxcpus = 1 TCG splits them
        // into a load and a store, and the load faults first with W = 0.
        "-smp",
        "1,maxcpus=2",
        "-nographic",
        "-no-reboot",
        "-nodefaults",
        "-device",
        "isa-debug-exit,iobase=0xf4,iosize=0x04",
        "-kernel",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.push(guest_image().display().to_string());
    args.extend(ram.qemu_args());
    args.extend(qs::loader_args(&scratch, "tables.bin", image, TABLES_PA));
    args.extend(qs::loader_args(&scratch, "probes.bin", &block, PROBES_PA));
    let exit = qs::run_qemu(qemu, &args, TIMEOUT);
    let results = qs::read_results(&ram, RESULTS_PA, probes.len());
    let header = ram.read(RESULTS_PA, 0x68);
    let extra = |offset: usize| u64::from_le_bytes(header[offset..offset + 8].try_into().unwrap());
    let describe = |why: &str| {
        format!(
            "{test}: {why}\n  QEMU exit code {:?} (1 = the guest finished), timed out {}, {:.2?}\n  guest error \
             {:#x}, detail {:#x}; exception error code {:#x}, CR2 {:#x}, probe index {} (see guests/x64/probe.S)\n  \
             stdout: {}\n  stderr: {}\n  QEMU: {} {}",
            exit.code,
            exit.timed_out,
            exit.elapsed,
            extra(0x10),
            extra(0x18),
            extra(0x20),
            extra(0x28),
            extra(0x30),
            exit.stdout.trim(),
            exit.stderr.trim(),
            qemu.display(),
            args.join(" ")
        )
    };
    let report = results.map_err(|e| describe(&e))?;
    if report.guest_error != 0 || exit.code != Some(1) || report.completed != probes.len() as u64 {
        return Err(describe(&format!(
            "the guest did not finish cleanly: {} of {} probes completed",
            report.completed,
            probes.len()
        )));
    }
    let registers = Registers {
        cr3: extra(0x40),
        ia32_pat: extra(0x48),
        cr0: extra(0x50),
        cr4: extra(0x58),
        ia32_efer: extra(0x60),
    };
    registers
        .check(install)
        .map_err(|e| describe(&format!("the guest's registers after the install: {e}")))?;
    Ok(GuestRun {
        report,
        elapsed: exit.elapsed,
        registers,
    })
}

/// Compares a guest run with the expected outcomes: one report per disagreeing probe,
/// with the raw walk of `image` (the bytes the guest was given) to its VA.
pub fn compare(set: &ProbeSet, report: &GuestReport, image: &[u8], install: Install) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    for (i, (probe, want)) in set.probes.iter().zip(&set.expected).enumerate() {
        let got = Outcome::from_raw(probe.access, &report.results[i]);
        if got != *want {
            let raw = report.results[i];
            let mut text = format!(
                "probe #{i}: {:?} at {:#x} (pattern at {})\n    expected {want}\n    actual   {got}\n    \
                 raw result: status {}, vector {}, error code {:#x}, CR2 {:#x}, value {:#x}\n    walk:\n",
                probe.access,
                probe.va,
                probe.pattern_pa.map_or("none".to_string(), |p| format!("PA {p:#x}")),
                raw.status,
                raw.syndrome >> 32,
                raw.syndrome & 0xFFFF_FFFF,
                raw.address,
                raw.value,
            );
            text.push_str(&describe_walk(image, install.root, install.levels, probe.va));
            out.push((i, text));
        }
    }
    out
}

/// Runs `set` against `build` and fails the test on any disagreement. Returns the number of
/// probes run and the guest's wall time.
pub fn check(qemu: &Path, test: &str, build: &Build, set: &ProbeSet) -> (usize, Duration) {
    let (root, pat) = build.install();
    let install = Install {
        root,
        pat,
        levels: build.cfg.levels(),
    };
    let image = build.image();
    let run = run_guest(qemu, test, "max", &image, install, &set.probes).unwrap_or_else(|e| panic!("{e}"));
    let mismatches: Vec<String> = compare(set, &run.report, &image, install)
        .into_iter()
        .map(|(_, text)| text)
        .collect();
    if !mismatches.is_empty() {
        eprintln!(
            "{test}: {}, {} ops applied so far:\n{}",
            build.cfg,
            build.history.len(),
            if build.history.len() <= 64 {
                describe_ops(&build.history)
            } else {
                describe_ops(&build.history[build.history.len() - 64..])
            }
        );
    }
    qs::assert_no_mismatch(&format!("{test} ({})", build.cfg), set.len(), &mismatches);
    (set.len(), run.elapsed)
}

// ------------------------------------------------------------------------------------------
// An independent walk of the raw entries (SDM Vol. 3A 4.5, tables 4-15..4-20)
// ------------------------------------------------------------------------------------------

pub fn read_u64(image: &[u8], offset: u64) -> Option<u64> {
    let at = usize::try_from(offset).ok()?;
    let bytes = image.get(at..at.checked_add(8)?)?;
    Some(u64::from_le_bytes(bytes.try_into().unwrap()))
}

/// One entry on a walk: `level` 0 = PT ... 4 = PML5.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Step {
    pub level: u8,
    pub index: u64,
    /// PA of the entry.
    pub entry_pa: u64,
    pub raw: u64,
}

const ADDRESS_MASK: u64 = 0x000F_FFFF_FFFF_F000;

pub fn level_name(level: u8) -> &'static str {
    ["PT", "PD", "PDPT", "PML4", "PML5"][level as usize]
}

/// The entries the walker reads for `va`, root first, up to the first non-present entry
/// or leaf; `Err` holds the steps so far and why the walk left the image.
pub fn walk(image: &[u8], root: u64, levels: u8, va: u64) -> Result<Vec<Step>, (Vec<Step>, String)> {
    let mut steps = Vec::new();
    let mut table = root;
    for level in (0..levels).rev() {
        let index = (va >> (12 + 9 * u32::from(level))) & 511;
        let entry_pa = table + 8 * index;
        let Some(raw) = entry_pa.checked_sub(TABLES_PA).and_then(|off| read_u64(image, off)) else {
            return Err((
                steps,
                format!("{} table {table:#x} is outside the table image", level_name(level)),
            ));
        };
        steps.push(Step {
            level,
            index,
            entry_pa,
            raw,
        });
        let leaf = level == 0 || ((level == 1 || level == 2) && raw & (1 << 7) != 0);
        if raw & 1 == 0 || leaf {
            break;
        }
        table = raw & ADDRESS_MASK;
    }
    Ok(steps)
}

/// The leaf (or last) entry of the walk to `va`: its offset in `image` and level.
pub fn leaf_entry(image: &[u8], root: u64, levels: u8, va: u64) -> (usize, u8, u64) {
    let steps = walk(image, root, levels, va).unwrap_or_else(|(_, why)| panic!("walk to {va:#x}: {why}"));
    let last = steps.last().expect("a walk has a root entry");
    ((last.entry_pa - TABLES_PA) as usize, last.level, last.raw)
}

/// The bits of one entry as the SDM names them.
pub fn describe_entry(raw: u64, level: u8) -> String {
    if raw & 1 == 0 {
        return format!(
            "not present{}",
            if raw & (1 << 9) != 0 {
                " (software bit 9: the library's ReadProtect)"
            } else {
                ""
            }
        );
    }
    let large = (level == 1 || level == 2) && raw & (1 << 7) != 0;
    let leaf = level == 0 || large;
    let mut names = vec!["P"];
    for (bit, name) in [(1, "RW"), (2, "US"), (3, "PWT"), (4, "PCD"), (5, "A")] {
        if raw & (1 << bit) != 0 {
            names.push(name);
        }
    }
    if leaf && raw & (1 << 6) != 0 {
        names.push("D");
    }
    if large {
        names.push("PS");
    }
    if leaf && raw & (1 << 8) != 0 {
        names.push("G");
    }
    let pat = match level {
        0 => raw & (1 << 7) != 0,
        _ if large => raw & (1 << 12) != 0,
        _ => false,
    };
    if pat {
        names.push("PAT");
    }
    if raw & (1 << 63) != 0 {
        names.push("XD");
    }
    let (address, reserved) = if large {
        let size_bits = 12 + 9 * u32::from(level);
        let low = ((1u64 << size_bits) - 1) & !0x1FFF; // bits size-1..13 must be 0
        (raw & ADDRESS_MASK & !((1 << size_bits) - 1), raw & low)
    } else {
        let ps_reserved = if level >= 3 { raw & (1 << 7) } else { 0 };
        (raw & ADDRESS_MASK, ps_reserved)
    };
    let pat_index = if leaf {
        format!(
            ", PAT index {}",
            u64::from(pat) << 2 | (raw >> 4 & 1) << 1 | (raw >> 3 & 1)
        )
    } else {
        String::new()
    };
    let mut text = format!(
        "{} {} -> {address:#x}{pat_index}",
        if leaf { "leaf" } else { "table" },
        names.join("|")
    );
    if reserved != 0 {
        let _ = write!(text, ", RESERVED bits {reserved:#x} set");
    }
    text
}

/// The walk to `va` as text, one line per entry.
pub fn describe_walk(image: &[u8], root: u64, levels: u8, va: u64) -> String {
    let (steps, end) = match walk(image, root, levels, va) {
        Ok(steps) => (steps, None),
        Err((steps, why)) => (steps, Some(why)),
    };
    let mut text = String::new();
    for s in &steps {
        let _ = writeln!(
            text,
            "      {:<4} [{:>3}] at PA {:#010x}: {:#018x}  {}",
            level_name(s.level),
            s.index,
            s.entry_pa,
            s.raw,
            describe_entry(s.raw, s.level)
        );
    }
    if let Some(why) = end {
        let _ = writeln!(text, "      {why}");
    }
    text
}
