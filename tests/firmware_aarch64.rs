//! txpaging inside real AArch64 firmware: `guests/uefi` built for `aarch64-unknown-uefi`
//! boots under AAVMF on `qemu-system-aarch64 -M virt -cpu max -smp 4`, at EL1 and (with
//! `virtualization=on`) at EL2. It reads the firmware's table under AAVMF's MAIR, builds
//! and installs its own with the library's install at the current EL (MAIR/TCR/TTBR0_EL1 or
//! _EL2), keeps the firmware running on it, probes it (loads, stores, `BLR`, and `AT` walks
//! compared with the model), checks that a break of the running code is refused when it is
//! pinned, changes it live with break-before-make, and shares it with three secondaries
//! brought up through PSCI, whose TLBs the broadcast TLBIs reach.
//!
//! Without the toolchain, AAVMF or QEMU it prints one SKIP line; `TXPAGING_REQUIRE_QEMU=1`
//! makes that a failure. docs/verification.md ("In firmware") says what this proves.

mod firmware_support;

use firmware_support::field;

const AAVMF: &str = "/usr/share/qemu-efi-aarch64/QEMU_EFI.fd";

fn run_at(el: u64, machine: &str) {
    let test = format!("firmware_aarch64_el{el}");
    let Some(prerequisites) = firmware_support::prerequisites(
        &test,
        "qemu-system-aarch64",
        AAVMF,
        "rustc-web cargo-web rust-web-src qemu-efi-aarch64 qemu-system-arm",
    ) else {
        return;
    };
    let args = ["-M", machine, "-cpu", "max", "-smp", "4", "-m", "2G", "-semihosting"];
    let boot = firmware_support::boot(&test, "aarch64", &prerequisites, &args, "BOOTAA64.EFI", ",if=virtio");
    let mut summary = firmware_support::check_common(&boot, "BROADCAST");

    // The EL the firmware ran the application at, and the regime the library used there.
    let (entry, installed, restored) = (boot.line("ENTRY"), boot.line("INSTALLED"), boot.line("RESTORED"));
    assert_eq!(field(entry, "el"), Some(el), "{entry}");
    let regime = if el == 2 { "regime=EL2" } else { "regime=EL1&0" };
    assert!(installed.contains(regime), "{installed}");
    assert_eq!(
        field(installed, "mair"),
        Some(txpaging::aarch64::MAIR_LAYOUT),
        "{installed}"
    );
    assert_eq!(field(installed, "ttbr0"), field(installed, "root"), "{installed}");
    for register in ["mair", "tcr", "ttbr0"] {
        assert_eq!(field(restored, register), field(entry, register), "{restored}");
    }
    assert!(field(boot.line("ADOPT"), "regions").expect("regions") > 0);
    // Every probed address was also walked with AT and compared.
    for pass in firmware_support::tagged(&boot.results, "PROBES") {
        assert_eq!(field(pass, "translations"), field(pass, "addresses"), "{pass}");
    }
    // A break of the running code is refused when pinned; an in-place change is not.
    let pinned = boot.line("PINNED");
    assert!(pinned.contains("memory_type_change=Err(PinnedRangeBreak)"), "{pinned}");
    assert_eq!(field(pinned, "translation_unchanged"), Some(1), "{pinned}");
    assert_eq!(field(pinned, "in_place_change_ok"), Some(1), "{pinned}");
    let conduit = if el == 2 { "conduit=smc" } else { "conduit=hvc" };
    assert!(boot.line("MP").contains(conduit), "{}", boot.line("MP"));
    // No shootdown hook on AArch64: the broadcast TLBI reaches the secondaries.
    assert_eq!(field(boot.line("BROADCAST"), "hook_ran"), Some(0));
    summary.push(pinned.to_string());
    println!("{test}:\n  {}", summary.join("\n  "));
}

#[test]
fn txpaging_runs_inside_aavmf_at_el1() {
    run_at(1, "virt");
}

#[test]
fn txpaging_runs_inside_aavmf_at_el2() {
    run_at(2, "virt,virtualization=on");
}
