//! What the QEMU proof tests (`tests/qemu_x64.rs`, `tests/qemu_aarch64.rs`) share: finding
//! QEMU, guest RAM backed by a host file, running a guest under a timeout, the probe-block
//! and result wire format both probe guests speak (docs/verification.md), and the choice of
//! probe addresses and output addresses from the reference model.
//!
//! The guests never judge a probe: they report what the MMU did, and each architecture's
//! test compares that with what the model says the mapping requests asked for.
#![allow(dead_code)]

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::model_support::{MOp, Model, Rng, Shape, GIB, MIB2, PAGE};

/// Set to `1` to make a missing QEMU a test failure instead of a SKIP line (CI sets it).
pub const REQUIRE_ENV: &str = "TXPAGING_REQUIRE_QEMU";
/// Set to `1` to keep each run's scratch directory (RAM file, images, probe block).
pub const KEEP_ENV: &str = "TXPAGING_KEEP_QEMU";

/// `Some(path)` if `binary` is on `PATH`. Otherwise prints one `SKIP` line naming the Debian
/// package to install and returns `None`, or panics with that line when
/// `TXPAGING_REQUIRE_QEMU=1`.
pub fn find_qemu(test: &str, binary: &str, package: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(binary))
            .find(|candidate| candidate.is_file())
    });
    if found.is_none() {
        let line = format!("SKIP {test}: {binary} not found on PATH; install the Debian package {package}");
        if std::env::var(REQUIRE_ENV).as_deref() == Ok("1") {
            panic!("{line} ({REQUIRE_ENV}=1 makes this a failure)");
        }
        // Written to stderr directly, past the test harness's capture, so the one line shows in
        // a plain `cargo test`.
        let _ = writeln!(std::io::stderr(), "{line}");
    }
    found
}

/// A scratch directory for one guest run, removed on drop unless `TXPAGING_KEEP_QEMU=1`.
pub struct Scratch {
    dir: PathBuf,
}

impl Scratch {
    pub fn new(test: &str) -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let name: String = test
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect();
        let dir = std::env::temp_dir().join(format!("txpaging-qemu-{}-{name}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
        Self { dir }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if std::env::var(KEEP_ENV).as_deref() == Ok("1") {
            println!("kept QEMU scratch directory {}", self.dir.display());
        } else {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

/// Guest RAM backed by a sparse host file, so the host reads what the guest wrote after
/// QEMU exits.
pub struct RamFile {
    path: PathBuf,
    ram_base: u64,
    size: u64,
}

impl RamFile {
    /// A zero-filled (sparse) file of `size` bytes standing for guest RAM at `ram_base`.
    pub fn create(path: PathBuf, ram_base: u64, size: u64) -> Self {
        assert!(size % (1 << 20) == 0, "RAM size must be a whole number of MiB");
        let file = File::create(&path).unwrap_or_else(|e| panic!("cannot create {}: {e}", path.display()));
        file.set_len(size).expect("size the RAM file");
        Self { path, ram_base, size }
    }

    /// The `-object memory-backend-file` and `-m` arguments; the machine option must name the
    /// backend too (see [`RamFile::machine_arg`]).
    pub fn qemu_args(&self) -> Vec<String> {
        vec![
            "-object".into(),
            format!(
                "memory-backend-file,id=ram,size={},mem-path={},share=on",
                self.size,
                self.path.display()
            ),
            "-m".into(),
            format!("{}M", self.size >> 20),
        ]
    }

    /// `machine` with the RAM backend attached, e.g. `q35,memory-backend=ram`.
    pub fn machine_arg(&self, machine: &str) -> String {
        format!("{machine},memory-backend=ram")
    }

    /// `len` bytes at guest physical address `pa`.
    pub fn read(&self, pa: u64, len: usize) -> Vec<u8> {
        assert!(
            pa >= self.ram_base && pa - self.ram_base + len as u64 <= self.size,
            "{pa:#x}+{len:#x} is outside guest RAM"
        );
        let mut file = File::open(&self.path).expect("open the RAM file");
        file.seek(SeekFrom::Start(pa - self.ram_base))
            .expect("seek in the RAM file");
        let mut bytes = vec![0; len];
        file.read_exact(&mut bytes).expect("read the RAM file");
        bytes
    }

    /// Writes `bytes` at guest physical address `pa` (before the guest starts).
    pub fn write(&self, pa: u64, bytes: &[u8]) {
        assert!(
            pa >= self.ram_base && pa - self.ram_base + bytes.len() as u64 <= self.size,
            "{pa:#x}+{:#x} is outside guest RAM",
            bytes.len()
        );
        let mut file = OpenOptions::new()
            .write(true)
            .open(&self.path)
            .expect("open the RAM file");
        file.seek(SeekFrom::Start(pa - self.ram_base))
            .expect("seek in the RAM file");
        file.write_all(bytes).expect("write the RAM file");
    }
}

/// Writes `bytes` to `name` in `scratch` and returns the arguments that make QEMU place them
/// at guest physical address `pa` before the guest starts.
pub fn loader_args(scratch: &Scratch, name: &str, bytes: &[u8], pa: u64) -> Vec<String> {
    let path = scratch.path(name);
    fs::write(&path, bytes).unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
    vec![
        "-device".into(),
        format!("loader,file={},addr={pa:#x},force-raw=on", path.display()),
    ]
}

/// How a QEMU run ended.
#[derive(Debug)]
pub struct GuestExit {
    /// Exit code (`None` if killed).
    pub code: Option<i32>,
    /// Killed after the timeout.
    pub timed_out: bool,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

/// Runs `qemu` with exactly `args` and kills it after `timeout`.
pub fn run_qemu(qemu: &Path, args: &[String], timeout: Duration) -> GuestExit {
    let start = Instant::now();
    let mut child = Command::new(qemu)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", qemu.display()));
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut text = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut text);
            }
            String::from_utf8_lossy(&text).into_owned()
        })
    };
    let stdout = drain(child.stdout.take().map(|p| Box::new(p) as Box<dyn Read + Send>));
    let stderr = drain(child.stderr.take().map(|p| Box::new(p) as Box<dyn Read + Send>));
    let mut timed_out = false;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for QEMU") {
            break status;
        }
        if start.elapsed() > timeout {
            timed_out = true;
            let _ = child.kill();
            break child.wait().expect("wait for the killed QEMU");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    GuestExit {
        code: if timed_out { None } else { status.code() },
        timed_out,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
        elapsed: start.elapsed(),
    }
}

// ------------------------------------------------------------------------------------------
// Wire format (docs/verification.md, "The probe guests")
// ------------------------------------------------------------------------------------------

/// "TXPROBE1": first qword of the probe block.
pub const PROBE_MAGIC: u64 = u64::from_le_bytes(*b"TXPROBE1");
/// "TXPDONE!": first qword of the results area, written last by the guest.
pub const DONE_MAGIC: u64 = u64::from_le_bytes(*b"TXPDONE!");
/// Bytes of the probe-block and results-area headers.
pub const HEADER_BYTES: usize = 0x100;
/// Bytes of one probe and of one result record.
pub const RECORD_BYTES: usize = 32;
/// `pattern_pa` value meaning "write no pattern".
pub const NO_PATTERN: u64 = u64::MAX;

/// What a probe does at its address.
#[repr(u64)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Access {
    /// A data load.
    Read = 0,
    /// A data store. X64: a read-modify-write of the same value (a fault reports a write).
    /// AArch64: a store of the pattern's complement, read back through the guest's own
    /// mapping into `value` (shows where the store landed).
    Write = 1,
    /// A call / branch-with-link to the address.
    Execute = 2,
    /// AArch64 `AT S1E1R` (result in PAR_EL1, no exception).
    AtRead = 3,
    /// AArch64 `AT S1E1W`.
    AtWrite = 4,
}

/// One probe: an access at `va`, after writing the pattern for `pattern_pa` if given.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Probe {
    pub va: u64,
    pub access: Access,
    pub pattern_pa: Option<u64>,
}

/// The probe block: header (magic, count, results address, flags, `params`) and the probes.
pub fn probe_block(params: [u64; 8], results_pa: u64, probes: &[Probe]) -> Vec<u8> {
    let mut block = vec![0u8; HEADER_BYTES + RECORD_BYTES * probes.len()];
    let mut put = |offset: usize, value: u64| block[offset..offset + 8].copy_from_slice(&value.to_le_bytes());
    put(0x00, PROBE_MAGIC);
    put(0x08, probes.len() as u64);
    put(0x10, results_pa);
    put(0x18, 0);
    for (i, p) in params.iter().enumerate() {
        put(0x20 + 8 * i, *p);
    }
    for (i, probe) in probes.iter().enumerate() {
        let at = HEADER_BYTES + RECORD_BYTES * i;
        put(at, probe.va);
        put(at + 8, probe.access as u64);
        put(at + 16, probe.pattern_pa.unwrap_or(NO_PATTERN));
        put(at + 24, 0);
    }
    block
}

/// Bytes the results area of `n` probes takes.
pub fn results_bytes(n: usize) -> usize {
    HEADER_BYTES + RECORD_BYTES * n
}

/// One probe's result as the guest wrote it (meaning per architecture: docs/verification.md).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RawResult {
    /// 0: the access completed; 1: it raised an exception.
    pub status: u64,
    /// X64: `(vector << 32) | error code`; AArch64: ESR_EL1.
    pub syndrome: u64,
    /// The qword read (read probes) or PAR_EL1 (AT probes).
    pub value: u64,
    /// X64: CR2 of a #PF; AArch64: FAR_EL1.
    pub address: u64,
}

/// The results area.
#[derive(Clone, Debug)]
pub struct GuestReport {
    pub completed: u64,
    /// Nonzero: the guest met something it did not expect (architecture-specific code).
    pub guest_error: u64,
    pub detail: u64,
    pub results: Vec<RawResult>,
}

/// Reads the results area of `n` probes; `Err` if the guest never wrote the final magic.
pub fn read_results(ram: &RamFile, results_pa: u64, n: usize) -> Result<GuestReport, String> {
    let bytes = ram.read(results_pa, results_bytes(n));
    let qword = |offset: usize| u64::from_le_bytes(bytes[offset..offset + 8].try_into().unwrap());
    let report = GuestReport {
        completed: qword(0x08),
        guest_error: qword(0x10),
        detail: qword(0x18),
        results: (0..n)
            .map(|i| {
                let at = HEADER_BYTES + RECORD_BYTES * i;
                RawResult {
                    status: qword(at),
                    syndrome: qword(at + 8),
                    value: qword(at + 16),
                    address: qword(at + 24),
                }
            })
            .collect(),
    };
    if qword(0) != DONE_MAGIC {
        return Err(format!(
            "the guest did not finish: results magic {:#x}, {} of {n} probes completed, guest error {:#x} \
             (detail {:#x})",
            qword(0),
            report.completed,
            report.guest_error,
            report.detail
        ));
    }
    Ok(report)
}

// ------------------------------------------------------------------------------------------
// Output addresses and probe addresses from the model
// ------------------------------------------------------------------------------------------

/// Rewrites `ops` so every page they map has its output address in `[window, window + 1 GiB)`.
///
/// `Map` and `MapAliased` become `MapAliased` with `pa' = window + (pa mod 1 GiB)`, split where
/// `pa` crosses a 1 GiB boundary, so alignment within a GiB (hence 2 MiB / 1 GiB pages) is
/// kept. An op that `shape`'s documented checks reject (its range, or its output range:
/// unaligned, overflowing, beyond the physical width) is kept as it is, so it still fails the
/// same way (folding it could make a bad op valid). `Unmap` and `Protect` are unchanged.
pub fn fold_ops(ops: &[MOp], shape: Shape, window: u64) -> Vec<MOp> {
    assert!(window % GIB == 0, "the pattern window must be 1 GiB aligned");
    let mut out = Vec::with_capacity(ops.len());
    for op in ops {
        let (va, pa, size, attrs) = match *op {
            MOp::Map { va, size, attrs } => (va, va, size, attrs),
            MOp::MapAliased { va, pa, size, attrs } => (va, pa, size, attrs),
            other => {
                out.push(other);
                continue;
            }
        };
        if shape.check_range(va, size).is_err() || shape.check_pa(pa, size).is_err() {
            out.push(*op);
            continue;
        }
        let mut done = 0;
        while done < size {
            let piece_pa = pa + done;
            let piece = (GIB - piece_pa % GIB).min(size - done);
            out.push(MOp::MapAliased {
                va: va + done,
                pa: window + piece_pa % GIB,
                size: piece,
                attrs,
            });
            done += piece;
        }
    }
    out
}

/// Probe addresses (canonical) for `model`: the first and last page of every run, the page
/// on either side of every run boundary, the pages around every 2 MiB and 1 GiB boundary
/// inside a run or at its ends, `samples` random addresses inside runs and `samples` anywhere
/// in the shape's space (both at random 8-byte offsets within the page), plus `extra`.
/// Sorted and deduplicated; above `cap`, a random subset of `cap` of them.
pub fn probe_vas(model: &Model, shape: Shape, rng: &mut Rng, samples: usize, extra: &[u64], cap: usize) -> Vec<u64> {
    let space = shape.space();
    let mut linear: Vec<u64> = Vec::new();
    let push = |page: u64, out: &mut Vec<u64>| {
        if page < space {
            out.push(page);
        }
    };
    let runs = model.run_vec();
    for r in &runs {
        push(r.start, &mut linear);
        push(r.end - PAGE, &mut linear);
        push(r.start.wrapping_sub(PAGE), &mut linear);
        push(r.end, &mut linear);
        push(r.start + (((r.end - r.start) / 2) & !(PAGE - 1)), &mut linear);
        for step in [MIB2, GIB] {
            // The first two and the last two `step` boundaries of the run, and its ends'
            // own `step` boundaries.
            let first = r.start.next_multiple_of(step);
            let last = (r.end - PAGE) & !(step - 1);
            for boundary in [first, first + step, last.saturating_sub(step), last] {
                if boundary > r.start.saturating_sub(step) && boundary <= r.end {
                    push(boundary, &mut linear);
                    push(boundary.wrapping_sub(PAGE), &mut linear);
                }
            }
        }
    }
    let offset = |rng: &mut Rng| rng.below(PAGE / 8) * 8;
    if !runs.is_empty() {
        for _ in 0..samples {
            let r = runs[rng.below(runs.len() as u64) as usize];
            let page = r.start + rng.below((r.end - r.start) / PAGE) * PAGE;
            linear.push(page + offset(rng));
        }
    }
    for _ in 0..samples {
        let page = rng.below(space / PAGE) * PAGE;
        linear.push(page + offset(rng));
    }
    let mut vas: Vec<u64> = linear.into_iter().map(|l| shape.to_canonical(l)).collect();
    vas.extend_from_slice(extra);
    vas.sort_unstable();
    vas.dedup();
    if vas.len() > cap {
        // A random subset, kept in address order.
        for i in 0..cap {
            let j = i + rng.below((vas.len() - i) as u64) as usize;
            vas.swap(i, j);
        }
        vas.truncate(cap);
        vas.sort_unstable();
    }
    vas
}

/// Fails with a readable report if any probe disagreed with the model (prints at most 20 in
/// full), else prints how many probes agreed.
pub fn assert_no_mismatch(test: &str, probes_run: usize, mismatches: &[String]) {
    if mismatches.is_empty() {
        println!("{test}: {probes_run} probes, all as the model expects");
        return;
    }
    let mut text = format!(
        "{test}: {} of {probes_run} probes disagree with the model\n",
        mismatches.len()
    );
    for m in mismatches.iter().take(20) {
        text.push_str(m);
        text.push('\n');
    }
    if mismatches.len() > 20 {
        text.push_str(&format!("... and {} more\n", mismatches.len() - 20));
    }
    panic!("{text}");
}
