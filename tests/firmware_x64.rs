//! txpaging inside real UEFI firmware: `guests/uefi` (a UEFI application on the `uefi`
//! crate) boots under OVMF on `qemu-system-x86_64 -M q35 -cpu max -smp 4`, adopts the
//! firmware's table, builds and installs its own with the library's `install_page_table`,
//! keeps the firmware running on it, probes it, changes it live and shares it with the APs.
//!
//! This test builds the application (Debian's rustc-web, `-Zbuild-std`), boots it, answers
//! its monitor request with QEMU's own `info tlb` (a decoder none of us wrote) and checks
//! every report: the exit status, each probe pass, the live changes and their negative
//! control, the APs, and QEMU's view of the installed table against the changes the
//! application made, replayed by the model the application itself uses for its probes.
//!
//! Without the toolchain, OVMF or QEMU it prints one SKIP line; `TXPAGING_REQUIRE_QEMU=1`
//! makes that a failure. docs/verification.md ("In firmware") says what this proves.

extern crate alloc;

mod firmware_support;
#[path = "../guests/uefi/src/model.rs"]
#[allow(dead_code)]
mod model;

use firmware_support::{field, tagged};
use model::{uefi_attr, Change, Model};

const OVMF: &str = "/usr/share/ovmf/OVMF.fd";

#[test]
fn txpaging_runs_inside_ovmf_on_a_live_multicore_machine() {
    let Some(prerequisites) = firmware_support::prerequisites(
        "firmware_x64",
        "qemu-system-x86_64",
        OVMF,
        "rustc-web cargo-web rust-web-src ovmf qemu-system-x86",
    ) else {
        return;
    };
    let machine = [
        "-M",
        "q35",
        "-cpu",
        "max",
        "-smp",
        "4",
        "-m",
        "2G",
        "-vga",
        "none",
        "-device",
        "isa-debug-exit,iobase=0xf4,iosize=0x04",
    ];
    let boot = firmware_support::boot("x64", "x86_64", &prerequisites, &machine, "BOOTX64.EFI", "");
    let mut summary = firmware_support::check_common(&boot, "SHOOTDOWN");

    // The firmware's table was adopted and the library's install programmed the registers.
    let (entry, installed, restored) = (boot.line("ENTRY"), boot.line("INSTALLED"), boot.line("RESTORED"));
    assert_eq!(field(installed, "pat"), Some(txpaging::x64::PAT_LAYOUT), "{installed}");
    assert_eq!(field(installed, "cr3"), field(installed, "root"), "{installed}");
    assert_ne!(
        field(installed, "efer").expect("efer") & 1 << 11,
        0,
        "EFER.NXE: {installed}"
    );
    assert_eq!(field(restored, "cr3"), field(entry, "cr3"), "{restored}");
    assert_eq!(field(restored, "pat"), field(entry, "pat"), "{restored}");
    assert!(field(boot.line("ADOPT"), "leaves").expect("leaves") > 0);
    let shootdowns = boot.line("SHOOTDOWN");
    assert_eq!(field(shootdowns, "hook_ran"), Some(20), "{shootdowns}");

    // QEMU's own decoder agrees with the changes the application made.
    let (tlb, mem, ops) = boot
        .monitor
        .clone()
        .expect("the application asked for the monitor cross-check");
    let saved = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/firmware");
    let _ = std::fs::write(saved.join("info-tlb-x64.txt"), &tlb);
    let _ = std::fs::write(saved.join("info-mem-x64.txt"), &mem);
    let model = replay(&boot.results, ops);
    let present = parse_info_mem(&mem).unwrap_or_else(|e| panic!("{e}"));
    compare_with_info_mem(&model, &present).unwrap_or_else(|e| panic!("{e}"));
    let checked = compare_with_info_tlb(&model, &tlb, &present).unwrap_or_else(|e| panic!("{e}"));
    summary.push(format!(
        "info tlb: {} leaves, {} pages checked; info mem: {} ranges",
        checked.0,
        checked.1,
        present.len()
    ));
    println!("firmware_x64:\n  {}", summary.join("\n  "));
}

/// The first `ops` changes the application printed (`OP kind va pa size attributes`).
fn replay(results: &[String], ops: usize) -> Model {
    let mut model = Model::new();
    for line in tagged(results, "OP").into_iter().take(ops) {
        let words: Vec<&str> = line.split_whitespace().collect();
        let number = |i: usize| u64::from_str_radix(words[i].trim_start_matches("0x"), 16).expect("hex");
        let change = Change::from_fields(words[1], number(2), number(3), number(4), number(5)).expect("op kind");
        model.push(change);
    }
    assert_eq!(
        model.changes().len(),
        ops,
        "every change before the cross-check was printed"
    );
    model
}

/// PCD, PWT and PAT of a cache attribute in txpaging's documented IA32_PAT layout
/// (docs/paging.md): the index is PAT * 4 + PCD * 2 + PWT.
fn pat_index(attributes: u64) -> u64 {
    match attributes & uefi_attr::CACHE {
        uefi_attr::UC => 3,
        uefi_attr::WC => 7,
        uefi_attr::WT => 1,
        uefi_attr::WB => 4,
        uefi_attr::UCE => 2,
        uefi_attr::WP => 5,
        _ => 0,
    }
}

/// `info mem`'s present ranges, `start-end size prot` (prot: `u`/`-`, `r`, `w`/`-`), merged.
fn parse_info_mem(mem: &str) -> Result<Vec<(u64, u64, bool)>, String> {
    let mut ranges: Vec<(u64, u64, bool)> = Vec::new();
    for line in mem.lines() {
        let mut words = line.split_whitespace();
        let (Some(span), Some(_size), Some(prot)) = (words.next(), words.next(), words.next()) else {
            continue;
        };
        let Some((start, end)) = span.split_once('-') else {
            continue;
        };
        let (Ok(start), Ok(end)) = (u64::from_str_radix(start, 16), u64::from_str_radix(end, 16)) else {
            continue;
        };
        if prot.len() != 3 {
            continue;
        }
        let writable = prot.ends_with('w');
        match ranges.last_mut() {
            Some(last) if last.1 == start && last.2 == writable => last.1 = end,
            _ => ranges.push((start, end, writable)),
        }
    }
    if ranges.is_empty() {
        return Err(format!("no ranges in `info mem`:\n{mem}"));
    }
    Ok(ranges)
}

/// The model's present pages, as merged `(start, end, writable)` ranges, equal what
/// `info mem` lists.
fn compare_with_info_mem(model: &Model, present: &[(u64, u64, bool)]) -> Result<(), String> {
    let mut expected: Vec<(u64, u64, bool)> = Vec::new();
    for (start, end, mapping) in model.runs() {
        let Some((_, attributes)) = mapping else { continue };
        if attributes & uefi_attr::RP != 0 {
            continue;
        }
        let writable = attributes & uefi_attr::RO == 0;
        match expected.last_mut() {
            Some(last) if last.1 == start && last.2 == writable => last.1 = end,
            _ => expected.push((start, end, writable)),
        }
    }
    if expected != present {
        let first = expected.iter().zip(present).find(|(a, b)| a != b);
        return Err(format!(
            "`info mem` ({} ranges) differs from the model's present pages ({} ranges); first difference: {first:x?}",
            present.len(),
            expected.len()
        ));
    }
    Ok(())
}

/// Checks every leaf `info tlb` lists against the model, and that every page the model
/// says is present is listed. A large leaf (`P`) at a 1 GiB boundary is a 1 GiB page when
/// `info mem` shows the whole GiB present and `info tlb` lists nothing else inside it.
/// Returns (leaves, 4 KiB pages checked).
fn compare_with_info_tlb(model: &Model, tlb: &str, present: &[(u64, u64, bool)]) -> Result<(usize, u64), String> {
    const PAGE: u64 = 4096;
    // `VA: PA FLAGS`, FLAGS = X G P D A C T U W or '-' (QEMU's target/i386/monitor.c): P is
    // PS, shown for large leaves only (a PTE's bit 7, its PAT bit, is masked off), so the
    // PAT bit is not visible and only PCD and PWT are compared.
    let mut leaves = Vec::new();
    for line in tlb.lines() {
        let line = line.trim();
        let Some((va, rest)) = line.split_once(": ") else {
            continue;
        };
        let mut parts = rest.split_whitespace();
        let (Some(pa), Some(flags)) = (parts.next(), parts.next()) else {
            continue;
        };
        let (Ok(va), Ok(pa)) = (u64::from_str_radix(va, 16), u64::from_str_radix(pa, 16)) else {
            continue;
        };
        if flags.len() != 9 {
            continue;
        }
        leaves.push((va, pa, flags.as_bytes().to_vec()));
    }
    if leaves.is_empty() {
        return Err(format!("no leaves in `info tlb`:\n{tlb}"));
    }
    leaves.sort_unstable_by_key(|leaf| leaf.0);
    let runs = model.runs();
    let expect = |va: u64| model::lookup(&runs, va);
    let mut mismatches = Vec::new();
    let mut pages = 0u64;
    let mut listed: Vec<(u64, u64)> = Vec::new();
    for (index, (va, pa, flags)) in leaves.iter().enumerate() {
        // A leaf's size: 4 KiB, or for `P` (PS) 2 MiB or 1 GiB (see above).
        let whole_gib_present = |va: u64| {
            let index = present.partition_point(|r| r.1 <= va);
            present.get(index).is_some_and(|r| r.0 <= va && r.1 >= va + (1 << 30))
        };
        let size = if flags[2] == b'P' {
            let alone_in_gib = leaves.get(index + 1).is_none_or(|next| next.0 >= va + (1 << 30));
            if va % (1 << 30) == 0 && pa % (1 << 30) == 0 && alone_in_gib && whole_gib_present(*va) {
                1 << 30
            } else {
                1 << 21
            }
        } else {
            PAGE
        };
        listed.push((*va, va + size));
        let nx = flags[0] == b'X';
        let pcd = flags[5] == b'C';
        let pwt = flags[6] == b'T';
        let writable = flags[8] == b'W';
        // Every 4 KiB page of the leaf (sampled every 64 KiB in large leaves, plus the edges).
        let mut offset = 0;
        while offset < size {
            let page_va = va + offset;
            pages += 1;
            match expect(page_va) {
                None => mismatches.push(format!("{page_va:#x}: listed by info tlb, unmapped in the model")),
                Some((_, attributes)) if attributes & uefi_attr::RP != 0 => {
                    mismatches.push(format!("{page_va:#x}: listed present, ReadProtect in the model"))
                }
                Some((expected_pa, attributes)) => {
                    let index = pat_index(attributes);
                    let problems = [
                        (pa + offset != expected_pa, "output address"),
                        (writable == (attributes & uefi_attr::RO != 0), "R/W"),
                        (nx != (attributes & uefi_attr::XP != 0), "NX"),
                        (pcd != (index & 2 != 0), "PCD"),
                        (pwt != (index & 1 != 0), "PWT"),
                    ];
                    for (wrong, what) in problems {
                        if wrong {
                            mismatches.push(format!(
                                "{page_va:#x}: {what} differs (info tlb pa {:#x} flags {}; model pa {expected_pa:#x} attributes {attributes:#x})",
                                pa + offset,
                                String::from_utf8_lossy(flags)
                            ));
                        }
                    }
                }
            }
            offset += if size > PAGE && offset + 64 * 1024 < size && offset != 0 {
                64 * 1024
            } else {
                PAGE
            };
        }
    }
    // Every present run of the model is listed (sampled at both ends of each run).
    for &(start, end, mapping) in &runs {
        let Some((_, attributes)) = mapping else { continue };
        if attributes & uefi_attr::RP != 0 {
            continue;
        }
        for va in [start, end - PAGE] {
            let index = listed.partition_point(|l| l.1 <= va);
            if listed.get(index).is_none_or(|l| va < l.0) {
                mismatches.push(format!("{va:#x}: present in the model, not listed by info tlb"));
            }
        }
    }
    if !mismatches.is_empty() {
        return Err(format!(
            "{} mismatches between QEMU's `info tlb` and the model, first ones:\n{}",
            mismatches.len(),
            mismatches.iter().take(20).cloned().collect::<Vec<_>>().join("\n")
        ));
    }
    Ok((leaves.len(), pages))
}

/// The cross-check with QEMU's monitor is itself checked: on `info tlb`/`info mem` text in
/// QEMU's format it accepts the replay that matches and rejects replays that differ in an
/// output address, a permission, a cache bit or presence (the negative control of the
/// comparison, without QEMU).
#[test]
fn monitor_cross_check_rejects_a_replay_that_differs() {
    use uefi_attr::{RO, UC, XP};
    // A 2 MiB page (RW, UC: PCD|PWT), a 4 KiB read-only NX page and a 4 KiB page aliased to
    // another frame, as QEMU 7.2 prints them.
    let tlb = "\
0000000000200000: 0000000000200000 --P-ACT-W
0000000000400000: 0000000000400000 X---A----
0000000000401000: 0000000000800000 ---D----W
(qemu) ";
    let mem = "\
0000000000200000-0000000000400000 0000000000200000 -rw
0000000000400000-0000000000401000 0000000000001000 -r-
0000000000401000-0000000000402000 0000000000001000 -rw
(qemu) ";
    let changes = [
        Change::Map {
            va: 0x20_0000,
            pa: 0x20_0000,
            size: 0x20_0000,
            attributes: UC,
        },
        Change::Map {
            va: 0x40_0000,
            pa: 0x40_0000,
            size: 0x1000,
            attributes: RO | XP,
        },
        Change::Map {
            va: 0x40_1000,
            pa: 0x80_0000,
            size: 0x1000,
            attributes: 0,
        },
    ];
    let model_of = |changes: &[Change]| {
        let mut model = Model::new();
        for change in changes {
            model.push(*change);
        }
        model
    };
    let check = |changes: &[Change]| {
        let model = model_of(changes);
        let present = parse_info_mem(mem)?;
        compare_with_info_mem(&model, &present)?;
        compare_with_info_tlb(&model, tlb, &present)
    };
    assert_eq!(check(&changes).expect("the matching replay passes").0, 3);
    let perturbations: [(usize, Change); 5] = [
        (
            0,
            Change::Map {
                va: 0x20_0000,
                pa: 0x20_0000,
                size: 0x20_0000,
                attributes: 0,
            },
        ), // cache
        (
            1,
            Change::Map {
                va: 0x40_0000,
                pa: 0x40_0000,
                size: 0x1000,
                attributes: RO,
            },
        ), // NX
        (
            1,
            Change::Map {
                va: 0x40_0000,
                pa: 0x40_0000,
                size: 0x1000,
                attributes: XP,
            },
        ), // R/W
        (
            2,
            Change::Map {
                va: 0x40_1000,
                pa: 0x90_0000,
                size: 0x1000,
                attributes: 0,
            },
        ), // address
        (
            2,
            Change::Unmap {
                va: 0x40_1000,
                size: 0x1000,
            },
        ), // presence
    ];
    for (index, perturbed) in perturbations {
        let mut wrong = changes;
        wrong[index] = perturbed;
        assert!(check(&wrong).is_err(), "a replay with {perturbed:x?} must be rejected");
    }
}
