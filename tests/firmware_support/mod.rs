//! What the firmware tests (`tests/firmware_x64.rs`, `tests/firmware_aarch64.rs`) share:
//! finding the UEFI toolchain, the firmware and QEMU; building a UEFI application under
//! `guests/`; booting it from a host folder as the ESP; reading its `TXP ` result lines as
//! they arrive, answering through the serial port and the QEMU monitor; and the exit status.
//!
//! The applications never judge the run on their own alone: they report what they did and
//! saw, and the tests check those reports (and QEMU's own view of the tables) against what
//! the applications' changes asked for.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Set to `1` to make a missing toolchain, firmware or QEMU a failure instead of a SKIP line
/// (CI sets it).
pub const REQUIRE_ENV: &str = "TXPAGING_REQUIRE_QEMU";

/// What a firmware test needs on the host.
pub struct Prerequisites {
    /// The QEMU system emulator.
    pub qemu: PathBuf,
    /// The firmware image given to `-bios`.
    pub firmware: PathBuf,
}

/// Debian's Rust with the standard library sources (rustc-web, cargo-web, rust-web-src):
/// UEFI targets need `-Zbuild-std`, which rustup's stable toolchain here cannot do offline.
const DEBIAN_CARGO: &str = "/usr/bin/cargo";
const DEBIAN_RUSTC: &str = "/usr/bin/rustc";
const RUST_SOURCES: &str = "/usr/lib/rustlib/src/rust/library";

/// The prerequisites, or `None` after one SKIP line naming what to install (a failure when
/// `TXPAGING_REQUIRE_QEMU=1`).
pub fn prerequisites(test: &str, qemu: &str, firmware: &str, packages: &str) -> Option<Prerequisites> {
    let on_path = |binary: &str| {
        std::env::var_os("PATH").and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|dir| dir.join(binary))
                .find(|candidate| candidate.is_file())
        })
    };
    let mut missing = Vec::new();
    for needed in [DEBIAN_CARGO, DEBIAN_RUSTC, RUST_SOURCES, firmware] {
        if !Path::new(needed).exists() {
            missing.push(needed.to_string());
        }
    }
    let qemu_path = on_path(qemu);
    if qemu_path.is_none() {
        missing.push(qemu.to_string());
    }
    if missing.is_empty() {
        return Some(Prerequisites {
            qemu: qemu_path.expect("checked"),
            firmware: PathBuf::from(firmware),
        });
    }
    let line = format!(
        "SKIP {test}: missing {}; install the Debian packages {packages}",
        missing.join(", ")
    );
    if std::env::var(REQUIRE_ENV).as_deref() == Ok("1") {
        panic!("{line} ({REQUIRE_ENV}=1 makes this a failure)");
    }
    let _ = writeln!(std::io::stderr(), "{line}");
    None
}

/// Builds `guests/uefi` for `arch` (`x86_64` or `aarch64`) with its `build.sh`; returns the
/// `.efi` path and the build's wall time.
pub fn build_application(arch: &str) -> (PathBuf, Duration) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let script = root.join("guests").join("uefi").join("build.sh");
    let target_dir = root.join("target").join("firmware");
    let start = Instant::now();
    let output = Command::new("bash")
        .arg(&script)
        .arg(arch)
        .arg(&target_dir)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
    let took = start.elapsed();
    if !output.status.success() {
        panic!(
            "{} failed ({}):\n{}",
            script.display(),
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let efi = PathBuf::from(stdout.lines().last().expect("build.sh prints the .efi path").trim());
    assert!(efi.is_file(), "{} did not produce {}", script.display(), efi.display());
    (efi, took)
}

/// A scratch folder for one boot: the ESP and the monitor socket.
pub struct Scratch {
    pub dir: PathBuf,
}

impl Scratch {
    pub fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("txpaging-firmware-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("scratch folder");
        Self { dir }
    }

    /// An ESP holding `efi` as the removable-media boot file `EFI/BOOT/<boot_name>`.
    pub fn esp(&self, efi: &Path, boot_name: &str) -> PathBuf {
        let esp = self.dir.join("esp");
        let boot = esp.join("EFI").join("BOOT");
        std::fs::create_dir_all(&boot).expect("ESP folders");
        std::fs::copy(efi, boot.join(boot_name)).expect("copy the application");
        esp
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if std::env::var("TXPAGING_KEEP_QEMU").as_deref() != Ok("1") {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// A running machine: its serial console lines as they arrive, its serial input, and its
/// monitor socket.
pub struct Machine {
    child: Child,
    lines: mpsc::Receiver<String>,
    serial_in: Option<ChildStdin>,
    monitor: PathBuf,
    /// Every console line so far (the firmware's and the application's).
    pub console: Vec<String>,
    deadline: Instant,
}

/// How a boot ended.
#[derive(Debug)]
pub struct Ending {
    /// QEMU's exit status (`None` when killed at the deadline).
    pub status: Option<i32>,
    /// The application's `TXP ` lines, without the prefix.
    pub results: Vec<String>,
    /// Every console line.
    pub console: Vec<String>,
    /// Wall time from start to exit.
    pub took: Duration,
}

impl Machine {
    /// Starts QEMU with `args`, the serial console on stdin/stdout and a monitor socket;
    /// the run is killed at `timeout`.
    pub fn start(qemu: &Path, scratch: &Scratch, args: &[String], timeout: Duration) -> Self {
        let monitor = scratch.dir.join("monitor.sock");
        let mut child = Command::new(qemu)
            .args(args)
            .args(["-serial", "stdio", "-display", "none", "-no-reboot", "-net", "none"])
            .arg("-monitor")
            .arg(format!("unix:{},server=on,wait=off", monitor.display()))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", qemu.display()));
        let stdout = child.stdout.take().expect("piped stdout");
        let (sender, lines) = mpsc::channel();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            let mut raw = Vec::new();
            loop {
                raw.clear();
                match reader.read_until(b'\n', &mut raw) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        let line = String::from_utf8_lossy(&raw).trim_end_matches(['\r', '\n']).to_string();
                        if sender.send(line).is_err() {
                            break;
                        }
                    }
                }
            }
        });
        let serial_in = child.stdin.take();
        Self {
            child,
            lines,
            serial_in,
            monitor,
            console: Vec::new(),
            deadline: Instant::now() + timeout,
        }
    }

    /// The next `TXP ` line (without the prefix), or `None` once the machine has stopped or
    /// the deadline passed.
    pub fn next_result(&mut self) -> Option<String> {
        loop {
            let left = self.deadline.checked_duration_since(Instant::now())?;
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.console.push(line.clone());
                    if let Some(position) = line.find("TXP ") {
                        return Some(line[position + 4..].to_string());
                    }
                }
                Err(_) => return None,
            }
        }
    }

    /// Sends `byte` to the guest's serial input.
    pub fn send_serial(&mut self, byte: u8) {
        if let Some(input) = self.serial_in.as_mut() {
            input.write_all(&[byte]).expect("serial input");
            input.flush().expect("serial input");
        }
    }

    /// Runs one human-monitor command and returns its output.
    pub fn monitor(&self, command: &str) -> String {
        let mut stream = None;
        for _ in 0..50 {
            if let Ok(connected) = UnixStream::connect(&self.monitor) {
                stream = Some(connected);
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let mut stream = stream.expect("QEMU monitor socket");
        stream.set_read_timeout(Some(Duration::from_secs(60))).expect("timeout");
        let read_to_prompt = |stream: &mut UnixStream| {
            let mut text = Vec::new();
            let mut buffer = [0u8; 65536];
            while !text.ends_with(b"(qemu) ") {
                match stream.read(&mut buffer) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => text.extend_from_slice(&buffer[..n]),
                }
            }
            String::from_utf8_lossy(&text).into_owned()
        };
        read_to_prompt(&mut stream);
        stream
            .write_all(format!("{command}\n").as_bytes())
            .expect("monitor command");
        read_to_prompt(&mut stream)
    }

    /// Waits for QEMU to exit (or kills it at the deadline) and gathers the rest.
    pub fn finish(mut self, started: Instant) -> Ending {
        let mut results = Vec::new();
        while let Some(line) = self.next_result() {
            results.push(line);
        }
        let status = loop {
            match self.child.try_wait() {
                Ok(Some(status)) => break status.code(),
                Ok(None) if Instant::now() < self.deadline + Duration::from_secs(5) => {
                    std::thread::sleep(Duration::from_millis(50));
                }
                _ => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    break None;
                }
            }
        };
        Ending {
            status,
            results,
            console: self.console,
            took: started.elapsed(),
        }
    }
}

/// The value of `key=value` in a result line, parsed as a number (decimal or `0x` hex).
pub fn field(line: &str, key: &str) -> Option<u64> {
    let value = line
        .split_whitespace()
        .find_map(|word| word.strip_prefix(key).and_then(|rest| rest.strip_prefix('=')))?;
    match value.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => value.parse().ok(),
    }
}

/// The result lines that start with `tag `.
pub fn tagged<'a>(results: &'a [String], tag: &str) -> Vec<&'a str> {
    results
        .iter()
        .filter(|line| line.split_whitespace().next() == Some(tag))
        .map(String::as_str)
        .collect()
}

/// QEMU's exit status for a pass: the application's pass code 0x10 through isa-debug-exit
/// (`(code << 1) | 1`) on X64, the same value through semihosting on AArch64.
pub const PASS_STATUS: i32 = 0x21;

/// One boot of the application: what it reported and what the host saw.
pub struct Boot {
    /// The `TXP ` lines, without the prefix.
    pub results: Vec<String>,
    /// QEMU's exit status.
    pub status: Option<i32>,
    /// Wall time of the build and of the boot.
    pub build_time: Duration,
    pub boot_time: Duration,
    /// `info tlb`, `info mem` and the number of changes before them, when the application
    /// asked for the monitor cross-check.
    pub monitor: Option<(String, String, usize)>,
    /// The last console lines (for failure messages).
    pub console_tail: String,
}

impl Boot {
    /// Everything the application reported, and the console's end, for a failure message.
    pub fn context(&self) -> String {
        // The OP lines (one per op of the build) would push the line that failed out of
        // what CI keeps of the output; they are counted instead.
        let is_op = |line: &&String| line.starts_with("OP ");
        let ops = self.results.iter().filter(is_op).count();
        let reports: Vec<&str> = self
            .results
            .iter()
            .filter(|line| !is_op(line))
            .map(String::as_str)
            .collect();
        format!(
            "results ({ops} OP lines left out):\n{}\nconsole tail:\n{}",
            reports.join("\n"),
            self.console_tail
        )
    }

    /// The first line tagged `tag`.
    pub fn line(&self, tag: &str) -> &str {
        tagged(&self.results, tag)
            .first()
            .copied()
            .unwrap_or_else(|| panic!("no {tag} line; {}", self.context()))
    }
}

/// Builds the application for `arch`, boots it with `machine` (QEMU arguments before the
/// ESP drive) and the ESP drive options `drive_options` (appended to `format=raw,file=...`),
/// answers its monitor request, and collects its reports.
pub fn boot(
    test: &str,
    arch: &str,
    prerequisites: &Prerequisites,
    machine: &[&str],
    boot_file: &str,
    drive_options: &str,
) -> Boot {
    let (efi, build_time) = build_application(arch);
    let scratch = Scratch::new(test);
    let esp = scratch.esp(&efi, boot_file);
    let mut args: Vec<String> = machine.iter().map(|s| s.to_string()).collect();
    args.extend([
        "-bios".to_string(),
        prerequisites.firmware.display().to_string(),
        "-drive".to_string(),
    ]);
    args.push(format!("format=raw,file=fat:rw:{}{drive_options}", esp.display()));
    let started = Instant::now();
    let mut machine = Machine::start(&prerequisites.qemu, &scratch, &args, Duration::from_secs(600));
    let mut results = Vec::new();
    let mut monitor = None;
    while let Some(line) = machine.next_result() {
        if line.starts_with("MONITOR ready") {
            let ops = field(&line, "ops").expect("ops=") as usize;
            monitor = Some((machine.monitor("info tlb"), machine.monitor("info mem"), ops));
            machine.send_serial(b'g');
        }
        let end = line.starts_with("END ");
        results.push(line);
        if end {
            break;
        }
    }
    let ending = machine.finish(started);
    results.extend(ending.results);
    let console_tail = ending
        .console
        .iter()
        .rev()
        .take(40)
        .rev()
        .cloned()
        .collect::<Vec<_>>()
        .join("\n");
    Boot {
        results,
        status: ending.status,
        build_time,
        boot_time: ending.took,
        monitor,
        console_tail,
    }
}

/// The checks every architecture's run must pass: the exit status and END line, no FATAL or
/// MISMATCH, boot services on the new table, each probe pass, the live changes and their
/// negative control, the other cores (the remap rounds tagged `coherence` and their negative
/// control, the mapping service and its serial replay). Returns the lines worth printing.
pub fn check_common(boot: &Boot, coherence: &str) -> Vec<String> {
    let context = || boot.context();
    let results = &boot.results;
    // The specific checks come first, so that a failure names what failed; the exit status
    // and the END line's count close the list.
    assert!(tagged(results, "FATAL").is_empty(), "{}", context());
    assert!(tagged(results, "MISMATCH").is_empty(), "{}", context());
    let boot_services = boot.line("BOOT_SERVICES");
    for key in ["console", "pages", "pool", "timer"] {
        assert_eq!(field(boot_services, key), Some(1), "{boot_services}");
    }

    // Probes: none mismatched, and each pass made enough of each access to mean something.
    let passes = tagged(results, "PROBES");
    assert_eq!(passes.len(), 2, "{}", context());
    for pass in &passes {
        assert_eq!(field(pass, "mismatches"), Some(0), "{pass}");
        assert!(field(pass, "addresses").expect("addresses") >= 3000, "{pass}");
        assert!(field(pass, "reads").expect("reads") >= 1000, "{pass}");
        assert!(field(pass, "writes").expect("writes") >= 1000, "{pass}");
        assert!(field(pass, "executes").expect("executes") >= 100, "{pass}");
        assert!(field(pass, "faults").expect("faults") >= 100, "{pass}");
    }

    // Live changes: nothing stale with the library's invalidations, the split and merge
    // happened, and the same sequence without invalidations was seen stale.
    let live = boot.line("LIVE");
    assert_eq!(field(live, "stale"), Some(0), "{live}");
    assert!(field(live, "changes").expect("changes") >= 200, "{live}");
    assert!(field(live, "tables_split").expect("split") >= 1, "{live}");
    assert!(field(live, "tables_merged").expect("merged") >= 1, "{live}");
    assert!(field(live, "invalidations").expect("invalidations") >= 200, "{live}");
    assert!(field(live, "full_flushes").expect("full flushes") >= 1, "{live}");
    let negative = boot.line("NEGATIVE_LIVE");
    assert!(field(negative, "stale_reads").expect("stale reads") > 0, "{negative}");
    assert_eq!(field(negative, "invalidations"), Some(0), "{negative}");

    // The other cores: every one loaded the table and saw the alias; with the coherence
    // mechanism no core read a stale frame, without it at least one did; the requests
    // through the mapping service equal their serial replay in queue order, and every core
    // reads the frame the last request mapped; all cores left the table.
    let mp = boot.line("MP");
    let ap_lines = tagged(results, "AP");
    let aps = ap_lines.iter().filter(|l| l.contains("table_loaded=1")).count() as u64;
    assert_eq!(aps, 3, "{}", context());
    let rounds = boot.line(coherence);
    assert_eq!(field(rounds, "stale"), Some(0), "{rounds}");
    assert_eq!(field(rounds, "ap_reads"), Some(20 * aps), "{rounds}");
    let negative_tag = format!("NEGATIVE_{coherence}");
    let no_coherence = boot.line(&negative_tag);
    assert!(field(no_coherence, "stale").expect("stale") > 0, "{no_coherence}");
    let service = boot.line("SERVICE");
    assert_eq!(field(service, "requests"), Some(12 * aps), "{service}");
    assert_eq!(
        field(service, "failed"),
        Some(aps),
        "one failing request per core: {service}"
    );
    assert_eq!(field(service, "replay_mismatches"), Some(0), "{service}");
    assert_eq!(field(service, "direct_ap_commits"), Some(1), "{service}");
    let shared: Vec<&&str> = ap_lines.iter().filter(|l| l.contains("shared_frame=")).collect();
    assert_eq!(shared.len() as u64, aps, "{}", context());
    for line in &shared {
        assert_eq!(field(line, "shared_frame"), field(line, "expected"), "{line}");
    }
    let returned = tagged(results, "MP")
        .into_iter()
        .find(|l| l.contains("aps_returned"))
        .expect("aps_returned");
    assert_eq!(field(returned, "aps_returned"), Some(1), "{}", context());
    assert_eq!(field(boot.line("END"), "failures"), Some(0), "{}", context());
    assert_eq!(boot.status, Some(PASS_STATUS), "exit status; {}", context());

    let mut summary = vec![format!(
        "build {:.1} s, boot {:.1} s",
        boot.build_time.as_secs_f64(),
        boot.boot_time.as_secs_f64()
    )];
    summary.extend(passes.iter().map(|l| l.to_string()));
    summary.extend([live, negative, mp].map(str::to_string));
    summary.extend(ap_lines.iter().map(|l| l.to_string()));
    summary.extend([rounds, no_coherence, service].map(str::to_string));
    summary
}
