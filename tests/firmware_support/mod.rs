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
