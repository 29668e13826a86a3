//! Proof on a real (emulated) MMU, AArch64: tables built by the library are installed by a
//! bare-metal guest (`guests/aarch64/probe.elf`) under `qemu-system-aarch64 -M virt -cpu max`
//! with the MAIR_EL1, TCR_EL1 and TTBR0_EL1 values of `install_request()`, and the guest
//! reports what the MMU did for each probe: `AT S1E1R` / `AT S1E1W` (PAR_EL1: output address,
//! memory attribute, fault and level), and real loads, stores and branches (ESR_EL1, FAR_EL1,
//! the value read). The expected outcome of every probe comes from the reference model fed
//! the same ops (`tests/qemu_support/aarch64.rs` says how), never from the library.
//!
//! The `el2_*` tests do the same for the EL2 regime: the guest starts at EL2 under
//! `-M virt,virtualization=on`, programs MAIR_EL2, TCR_EL2 and TTBR0_EL2 from an EL2 table's
//! install request, and probes with `AT S1E2R` / `AT S1E2W` and real accesses (ESR_EL2,
//! FAR_EL2).
//!
//! Needs `qemu-system-aarch64` (Debian package `qemu-system-arm`); without it each test
//! prints a SKIP line, or fails when `TXPAGING_REQUIRE_QEMU=1`. Seeds: `TXPAGING_SEED` as
//! for the model tests. `TXPAGING_KEEP_QEMU=1` keeps each run's RAM file, images and probe
//! block.

#[path = "qemu_support/aarch64.rs"]
mod a64_probe;
mod model_support;
mod qemu_support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use a64_probe::{
    access_name, check, check_build, describe_walk, out_of_range_vas, probes_for, touches_el2_guest, walk_image, Build,
    Checked, Runs, Walk, TABLES_PA, WINDOW,
};
use model_support::{base_seed, describe_ops, test_seed, Gen, MOp, ModelTarget, Rng, GIB, MIB2, PAGE};
use model_support::{Aarch64Cfg, Aarch64Target};
use qemu_support::{assert_no_mismatch, find_qemu, fold_ops, probe_vas, Access, Probe};
use txpaging::aarch64::{El1, El2, Regime};
use txpaging::{MemoryAttributes as MA, MmuOp, PageTable};

const KIB4: u64 = PAGE;

/// Prints how to replay a failing test (its seed) when it panics.
struct Replay(&'static str);

impl Drop for Replay {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "\n=== `{}` FAILED. Replay: TXPAGING_SEED={:#x} cargo test --test qemu_aarch64 {} ===\n",
                self.0,
                base_seed(),
                self.0
            );
        }
    }
}

fn qemu(test: &str) -> Option<PathBuf> {
    find_qemu(test, "qemu-system-aarch64", "qemu-system-arm")
}

/// The four table shapes: (3 levels?, 1 GiB blocks?).
const CONFIGS: [(bool, bool); 4] = [(false, true), (false, false), (true, true), (true, false)];

fn map(va: u64, pa: u64, size: u64, attrs: MA) -> MOp {
    MOp::MapAliased { va, pa, size, attrs }
}

/// Probes run by one test, by expected outcome.
#[derive(Default)]
struct Totals {
    probes: usize,
    tally: BTreeMap<&'static str, usize>,
    start: Option<Instant>,
}

impl Totals {
    fn new() -> Self {
        Self {
            start: Some(Instant::now()),
            ..Self::default()
        }
    }

    fn add(&mut self, checked: &Checked) {
        self.probes += checked.probes;
        for (k, v) in &checked.tally {
            *self.tally.entry(k).or_default() += v;
        }
    }

    fn print(&self, test: &str) {
        let by_kind: Vec<String> = self.tally.iter().map(|(k, v)| format!("{v} {k}")).collect();
        println!(
            "{test}: {} probes in {:?}: {}",
            self.probes,
            self.start.map(|s| s.elapsed()).unwrap_or_default(),
            by_kind.join(", ")
        );
    }
}

/// Probes `build` at the model's interesting addresses plus `extra`, checks, and fails
/// loudly on any disagreement (with the ops that built the table).
fn probe_and_assert<R: Regime>(
    qemu: &Path,
    test: &str,
    build: &Build<R>,
    rng: &mut Rng,
    (samples, cap): (usize, usize),
    extra: &[u64],
    totals: &mut Totals,
) {
    let mut extra = extra.to_vec();
    extra.extend(out_of_range_vas(build.shape));
    let vas: Vec<u64> = probe_vas(&build.model, build.shape, rng, samples, &extra, cap)
        .into_iter()
        .map(|va| va & !7)
        .collect();
    let runs = Runs::new(&build.model);
    let probes = probes_for(&runs, build.shape, &vas);
    let checked = check_build(qemu, test, build, &probes);
    if !checked.mismatches.is_empty() {
        let mut ops = String::new();
        for (i, batch) in build.history.iter().enumerate().rev().take(40) {
            ops.push_str(&format!("batch {i}:\n{}", describe_ops(batch)));
        }
        eprintln!(
            "{test} ({}): the last batches, newest first:\n{ops}",
            build.config_name()
        );
    }
    let name = format!("{test} ({})", build.config_name());
    assert_no_mismatch(&name, checked.probes, &checked.mismatches);
    println!("  QEMU time {:?}", checked.elapsed);
    totals.add(&checked);
}

// ------------------------------------------------------------------------------------------
// (1) A realistic firmware map
// ------------------------------------------------------------------------------------------

type Row = (String, u64, u64, u64);

fn parse_csv(text: &str) -> Vec<Row> {
    text.lines()
        .skip(1)
        .filter(|line| !line.trim().is_empty())
        .map(|line| {
            let cols: Vec<&str> = line.split(',').collect();
            let hex = |s: &str| u64::from_str_radix(s.trim_start_matches("0x"), 16).unwrap();
            (
                cols[0].to_string(),
                hex(cols[1]),
                cols[3].parse().unwrap(),
                hex(cols[4]),
            )
        })
        .collect()
}

const MEMMAP_4G: &str = include_str!("data/uefi-memmap-aarch64-virt-4G.csv");
const MAT_4G: &str = include_str!("data/uefi-mat-aarch64-virt-4G.csv");

/// The batches firmware would issue for the captured QEMU `virt` memory map (4 GiB): one map
/// per descriptor (one cache type each, the cheapest the descriptor allows; code executable,
/// data ExecuteProtect), then the Memory Attributes Table as one protect batch, a null guard,
/// a stack guard, a hole, a mixed transaction, and an alias of the window's GiB.
fn firmware_batches() -> Vec<Vec<MOp>> {
    let mut batches = Vec::new();
    for (kind, start, pages, attributes) in parse_csv(MEMMAP_4G) {
        let uefi = MA::from_bits_truncate(attributes);
        let cache = [MA::Writeback, MA::WriteCombining, MA::WriteThrough, MA::Uncached]
            .into_iter()
            .find(|&c| uefi.contains(c))
            .expect("every row names a cache type");
        let code = matches!(
            kind.as_str(),
            "EfiLoaderCode" | "EfiBootServicesCode" | "EfiRuntimeServicesCode"
        );
        let access = if code { MA::empty() } else { MA::ExecuteProtect };
        batches.push(vec![MOp::Map {
            va: start,
            size: pages * KIB4,
            attrs: cache | access,
        }]);
    }
    // The Memory Attributes Table: one transaction of protects (access bits only).
    batches.push(
        parse_csv(MAT_4G)
            .into_iter()
            .map(|(_, start, pages, attributes)| MOp::Protect {
                va: start,
                size: pages * KIB4,
                attrs: MA::from_bits_truncate(attributes).access(),
            })
            .collect(),
    );
    batches.push(vec![MOp::Protect {
        va: 0x4000_0000,
        size: KIB4,
        attrs: MA::ReadProtect | MA::ExecuteProtect,
    }]);
    batches.push(vec![MOp::Protect {
        va: 0x4400_0000,
        size: KIB4,
        attrs: MA::ReadProtect,
    }]);
    batches.push(vec![MOp::Unmap {
        va: 0x4401_0000,
        size: 2 * KIB4,
    }]);
    batches.push(vec![
        MOp::Protect {
            va: 0x0901_0000,
            size: KIB4,
            attrs: MA::UncachedExport,
        },
        MOp::Unmap {
            va: 0x0500_0000,
            size: MIB2 + KIB4,
        },
        MOp::Map {
            va: 0x8800_0000,
            size: MIB2,
            attrs: MA::WriteProtect | MA::ReadOnly,
        },
        MOp::Map {
            va: 0x8820_0000,
            size: MIB2 + 0x3000,
            attrs: MA::WriteThrough | MA::ExecuteProtect,
        },
        MOp::Protect {
            va: 0x9000_0000,
            size: 64 * MIB2,
            attrs: MA::ReadOnly,
        },
    ]);
    // The window's GiB again at 16 GiB, executable (a 1 GiB block where allowed).
    batches.push(vec![map(0x4_0000_0000, WINDOW, GIB, MA::Writeback)]);
    batches
}

#[test]
fn firmware_map_identity_and_folded() {
    firmware_map_at::<El1>("firmware_map_identity_and_folded");
}

#[test]
fn el2_firmware_map_identity_and_folded() {
    firmware_map_at::<El2>("el2_firmware_map_identity_and_folded");
}

fn firmware_map_at<R: Regime>(test: &'static str) {
    let Some(qemu) = qemu(test) else { return };
    let _replay = Replay(test);
    let mut totals = Totals::new();
    let mut rng = Rng::new(test_seed(test));
    for folded in [false, true] {
        for (three_level, one_gib) in [(false, true), (false, false)] {
            let mut b = Build::<R>::new(three_level, one_gib);
            for batch in firmware_batches() {
                let batch = if folded {
                    fold_ops(&batch, b.shape, WINDOW)
                } else {
                    batch
                };
                if batch.len() == 1 {
                    b.one(batch[0]);
                } else {
                    b.ok(&batch);
                }
            }
            let name = format!("{test} ({})", if folded { "folded" } else { "identity" });
            probe_and_assert(&qemu, &name, &b, &mut rng, (6000, 30_000), &[], &mut totals);
        }
    }
    totals.print(test);
}

// ------------------------------------------------------------------------------------------
// (2) Splits and merges
// ------------------------------------------------------------------------------------------

#[test]
fn splits_and_merges() {
    splits_and_merges_at::<El1>("splits_and_merges", &CONFIGS);
}

#[test]
fn el2_splits_and_merges() {
    splits_and_merges_at::<El2>("el2_splits_and_merges", &[CONFIGS[0], CONFIGS[3]]);
}

fn splits_and_merges_at<R: Regime>(test: &'static str, configs: &[(bool, bool)]) {
    let Some(qemu) = qemu(test) else { return };
    let _replay = Replay(test);
    let mut totals = Totals::new();
    let mut rng = Rng::new(test_seed(test));
    let va = 0x10_0000_0000; // 64 GiB: inside 3-level and 4-level spaces
    let wb = MA::Writeback;
    // Addresses each stage touches, probed explicitly besides the model's own choice.
    let spots: Vec<u64> = [
        0,
        0x1234_5000,
        0x2000_0000,
        0x3000_7000,
        0x0800_0000,
        0x1000_0000 - KIB4,
        0x1020_1000,
        0x3FFF_F000,
    ]
    .iter()
    .flat_map(|&off| [va + off, va + off + 0xFF8, va + off - 8])
    .collect();
    let stages: Vec<(&str, Vec<MOp>)> = vec![
        ("map 1 GiB", vec![map(va, WINDOW, GIB, wb)]),
        (
            "split: a read-only page, an execute-protected 2 MiB, a hole, a remapped page",
            vec![
                MOp::Protect {
                    va: va + 0x1234_5000,
                    size: KIB4,
                    attrs: wb | MA::ReadOnly,
                },
                MOp::Protect {
                    va: va + 0x2000_0000,
                    size: MIB2,
                    attrs: MA::ExecuteProtect,
                },
                MOp::Unmap {
                    va: va + 0x3000_7000,
                    size: KIB4,
                },
                map(va + 0x0800_0000, WINDOW + 0x3000_0000, KIB4, MA::WriteThrough),
            ],
        ),
        (
            "more splits: a hole across a 2 MiB boundary, read-protected pages, device memory",
            vec![
                MOp::Unmap {
                    va: va + 0x1000_0000 - KIB4,
                    size: MIB2 + 2 * KIB4,
                },
                MOp::Protect {
                    va: va + 0x1040_0000,
                    size: 4 * KIB4,
                    attrs: MA::ReadProtect,
                },
                MOp::Protect {
                    va: va + 0x3FE0_0000,
                    size: MIB2,
                    attrs: MA::Uncached,
                },
            ],
        ),
        (
            "merge back: the whole GiB uniform and read-only again",
            vec![map(va, WINDOW, GIB, wb | MA::ReadOnly)],
        ),
        (
            "protect in place: writable, execute-protected",
            vec![MOp::Protect {
                va,
                size: GIB,
                attrs: MA::ExecuteProtect,
            }],
        ),
        (
            "unmap all but one page in the middle",
            vec![
                MOp::Unmap { va, size: 0x2000_0000 },
                MOp::Unmap {
                    va: va + 0x2000_1000,
                    size: GIB - 0x2000_1000,
                },
            ],
        ),
        (
            "unmap the last page: the tables go",
            vec![MOp::Unmap {
                va: va + 0x2000_0000,
                size: KIB4,
            }],
        ),
    ];
    for &(three_level, one_gib) in configs {
        let mut b = Build::<R>::new(three_level, one_gib);
        // The root, plus at EL2 the tables of the guest's own mapping.
        let base_pages = b.table.table_pages();
        for (i, (what, ops)) in stages.iter().enumerate() {
            b.ok(ops);
            if i == stages.len() - 1 {
                assert_eq!(
                    b.table.table_pages(),
                    base_pages,
                    "everything unmapped leaves only the root (and the EL2 guest's tables)"
                );
            }
            let name = format!("{test} stage {i} ({what})");
            probe_and_assert(&qemu, &name, &b, &mut rng, (800, 6000), &spots, &mut totals);
        }
    }
    totals.print(test);
}

// ------------------------------------------------------------------------------------------
// (3) Aliases, and the edges of the address spaces
// ------------------------------------------------------------------------------------------

/// Several VAs on the same physical pages with different attributes, 4 KiB, 2 MiB and 1 GiB
/// at a time, an alias that cannot use a block (misaligned output), the top of the TTBR0
/// space and the top of the 48-bit physical space.
fn alias_batches(three_level: bool) -> Vec<Vec<MOp>> {
    let space = if three_level { 1u64 << 39 } else { 1 << 48 };
    let page = WINDOW + 0x5000;
    let mut b = vec![
        vec![
            map(0x1000, page, KIB4, MA::Writeback),
            map(0x2000, page, KIB4, MA::WriteThrough | MA::ReadOnly),
            map(0x3000, page, KIB4, MA::Uncached),
            map(0x4000, page, KIB4, MA::UncachedExport | MA::ExecuteProtect),
            map(0x5000, page, KIB4, MA::WriteCombining),
            map(0x6000, page, KIB4, MA::WriteProtect | MA::ReadOnly | MA::ExecuteProtect),
            map(0x7000, page, KIB4, MA::Writeback | MA::ReadProtect),
        ],
        vec![
            map(0x20_0000, WINDOW + 0x20_0000, MIB2, MA::Writeback),
            map(0x40_0000, WINDOW + 0x20_0000, MIB2, MA::WriteThrough | MA::ReadOnly),
            // Misaligned output: 512 pages, no block.
            map(0x60_0000, WINDOW + 0x1000, MIB2, MA::Writeback | MA::ExecuteProtect),
        ],
        vec![
            map(GIB, WINDOW, GIB, MA::Writeback),
            map(2 * GIB, WINDOW, GIB, MA::WriteCombining | MA::ReadOnly),
            map(3 * GIB, WINDOW, GIB, MA::Uncached),
            // 1 GiB of VA on a misaligned (2 MiB aligned) output: 2 MiB blocks only.
            map(4 * GIB, WINDOW + 0x3000_0000, 0x1000_0000, MA::Writeback),
            map(4 * GIB + 0x1000_0000, WINDOW, 0x3000_0000, MA::Writeback),
        ],
        vec![
            // The top of the TTBR0 space: the last GiB and the last page.
            map(space - GIB, WINDOW, GIB, MA::Writeback | MA::ExecuteProtect),
            map(space - KIB4, WINDOW + 0x7000, KIB4, MA::WriteThrough),
            // Output addresses outside RAM, up to the top of the 48-bit physical space (AT only).
            map(0x100_0000, 0xFFFF_FFFF_F000, KIB4, MA::Writeback),
            map(0x101_0000, 0x8000_0000_0000, 16 * KIB4, MA::WriteThrough),
        ],
        vec![MOp::Protect {
            va: space - KIB4,
            size: KIB4,
            attrs: MA::ReadOnly,
        }],
    ];
    if !three_level {
        // Across the first 512 GiB boundary (an L0 entry).
        b.push(vec![map(
            512 * GIB - MIB2,
            WINDOW + 0x100_0000,
            2 * MIB2,
            MA::Writeback,
        )]);
    }
    b
}

#[test]
fn aliases_and_space_edges() {
    aliases_and_space_edges_at::<El1>("aliases_and_space_edges", &CONFIGS);
}

#[test]
fn el2_aliases_and_space_edges() {
    aliases_and_space_edges_at::<El2>("el2_aliases_and_space_edges", &[CONFIGS[1], CONFIGS[2]]);
}

fn aliases_and_space_edges_at<R: Regime>(test: &'static str, configs: &[(bool, bool)]) {
    let Some(qemu) = qemu(test) else { return };
    let _replay = Replay(test);
    let mut totals = Totals::new();
    let mut rng = Rng::new(test_seed(test));
    for &(three_level, one_gib) in configs {
        let mut b = Build::<R>::new(three_level, one_gib);
        for batch in alias_batches(three_level) {
            b.ok(&batch);
        }
        let spots: Vec<u64> = (0..8).map(|i| 0x1000 * i + 8 * i).collect();
        probe_and_assert(&qemu, test, &b, &mut rng, (3000, 20_000), &spots, &mut totals);
    }
    totals.print(test);
}

// ------------------------------------------------------------------------------------------
// (5) Random layouts
// ------------------------------------------------------------------------------------------

/// Random transactions (model_support::Gen, the AArch64 windows), their output folded into
/// the pattern window, several seeds per shape, probed after every few transactions.
fn random_layouts<R: Regime>(config: (bool, bool), test: &'static str) {
    let Some(qemu) = qemu(test) else { return };
    let _replay = Replay(test);
    let mut totals = Totals::new();
    let (three_level, one_gib_blocks) = config;
    let target = <Aarch64Target>::build(
        Aarch64Cfg {
            three_level,
            one_gib_blocks,
        },
        16,
    );
    let gen = Gen::new(&target);
    let (mut committed, mut failed) = (0, 0);
    for seed in 0..3u64 {
        let mut rng = Rng::new(test_seed(test) ^ seed.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let mut b = Build::<R>::new(three_level, one_gib_blocks);
        for checkpoint in 0..3 {
            for _ in 0..20 {
                let ops = fold_ops(&gen.transaction::<Aarch64Target>(&mut rng, &b.model), b.shape, WINDOW);
                // At EL2 the guest runs through its own 2 GiB of the table: leave it alone
                // (the generator's windows never reach it; this only makes sure).
                if R::EL == 2 && ops.iter().any(op_touches_el2_guest) {
                    continue;
                }
                let one_op = ops.len() == 1 && rng.chance(50);
                match b.apply(&ops, one_op) {
                    Ok(()) => committed += 1,
                    Err(_) => failed += 1,
                }
            }
            let name = format!("{test} seed {seed} checkpoint {checkpoint}");
            probe_and_assert(&qemu, &name, &b, &mut rng, (1500, 9000), &[], &mut totals);
        }
    }
    println!("{test}: {committed} transactions committed, {failed} rejected as the model predicted");
    totals.print(test);
}

fn op_touches_el2_guest(op: &MOp) -> bool {
    let (va, size) = match *op {
        MOp::Map { va, size, .. }
        | MOp::MapAliased { va, size, .. }
        | MOp::Unmap { va, size }
        | MOp::Protect { va, size, .. } => (va, size),
    };
    touches_el2_guest(va, size)
}

#[test]
fn random_layouts_4_level_1g() {
    random_layouts::<El1>(CONFIGS[0], "random_layouts_4_level_1g");
}

#[test]
fn random_layouts_4_level_2m() {
    random_layouts::<El1>(CONFIGS[1], "random_layouts_4_level_2m");
}

#[test]
fn random_layouts_3_level_1g() {
    random_layouts::<El1>(CONFIGS[2], "random_layouts_3_level_1g");
}

#[test]
fn random_layouts_3_level_2m() {
    random_layouts::<El1>(CONFIGS[3], "random_layouts_3_level_2m");
}

#[test]
fn el2_random_layouts_4_level_1g() {
    random_layouts::<El2>(CONFIGS[0], "el2_random_layouts_4_level_1g");
}

#[test]
fn el2_random_layouts_3_level_2m() {
    random_layouts::<El2>(CONFIGS[3], "el2_random_layouts_3_level_2m");
}

// ------------------------------------------------------------------------------------------
// The install path, and (6) negative controls
// ------------------------------------------------------------------------------------------

/// `install_page_table` hands the MMU exactly the values the guest is given.
#[test]
fn install_request_is_what_install_programs() {
    for (three_level, one_gib) in CONFIGS {
        let b = <Build>::new(three_level, one_gib);
        b.table.install_page_table().expect("install on the recording MMU");
        let log = b.table.mmu().take_log();
        let installs: Vec<_> = log
            .iter()
            .filter_map(|op| match op {
                MmuOp::Install(request) => Some(*request),
                _ => None,
            })
            .collect();
        assert_eq!(installs, vec![b.table.install_request()]);
        let (mair, tcr, ttbr0) = b.install();
        assert_eq!(ttbr0, b.table.root());
        assert_eq!(mair >> 56, 0, "MAIR_EL1 Attr7 must stay free for the guest");
        assert_eq!(tcr & 0x3F, if three_level { 25 } else { 16 }, "T0SZ");

        let b = Build::<El2>::new(three_level, one_gib);
        b.table.install_page_table().expect("install on the recording MMU");
        let installs: Vec<_> = b
            .table
            .mmu()
            .take_log()
            .into_iter()
            .filter_map(|op| match op {
                MmuOp::Install(request) => Some(request),
                _ => None,
            })
            .collect();
        assert_eq!(installs, vec![b.table.install_request()]);
        let (_, tcr, ttbr0) = b.install();
        assert_eq!(ttbr0, b.table.root());
        assert_eq!(tcr & 0x3F, if three_level { 25 } else { 16 }, "T0SZ");
        assert_eq!(tcr & (1 << 31 | 1 << 23), 1 << 31 | 1 << 23, "TCR_EL2 RES1 bits");
    }
}

/// One descriptor of the built image changed on purpose: the harness must report the probes
/// it affects, naming the VA and showing the changed descriptor.
#[test]
fn negative_control_corrupted_descriptors() {
    let test = "negative_control_corrupted_descriptors";
    let Some(qemu) = qemu(test) else { return };
    let _replay = Replay(test);
    let mut b = <Build>::new(false, true);
    for batch in alias_batches(false) {
        b.ok(&batch);
    }
    let image = b.image();
    let install = b.install();
    let runs = Runs::new(&b.model);
    let vas: Vec<u64> = [
        0x1000u64,
        0x2000,
        0x3000,
        0x5000,
        0x20_0000,
        0x20_1008,
        GIB + 0x1238,
        0x60_0000,
    ]
    .into_iter()
    .collect();
    let probes = probes_for(&runs, b.shape, &vas);

    // The untouched image passes.
    let clean = check(&qemu, test, 1, &b.model, b.shape, &image, install, &probes);
    assert_no_mismatch(&format!("{test} (clean image)"), clean.probes, &clean.mismatches);

    // (VA whose leaf is changed, what is changed, bits to flip, the access that must notice).
    let cases: [(u64, &str, u64, Access); 6] = [
        (0x1000, "AP[2] set (read-only)", 1 << 7, Access::AtWrite),
        (0x5000, "AttrIndx 2 -> 6", 0b100 << 2, Access::AtRead),
        (0x20_0000, "output address + 2 MiB (2 MiB block)", 1 << 21, Access::Read),
        (
            GIB + 0x1238,
            "output address + 1 GiB (1 GiB block)",
            1 << 30,
            Access::AtRead,
        ),
        (0x1000, "PXN and UXN set", 3 << 53, Access::Execute),
        (0x60_0000, "valid bit cleared", 1, Access::AtRead),
    ];
    for (va, what, flip, access) in cases {
        let steps = walk_image(&image, install.2, b.shape.levels, va);
        let leaf = *steps.last().expect("a walk");
        assert!(
            matches!(runs.walk(b.shape, va), Walk::Leaf { .. }),
            "{va:#x} must be mapped for this control"
        );
        let mut bad = image.clone();
        let off = (leaf.at - TABLES_PA) as usize;
        let raw = leaf.raw ^ flip;
        bad[off..off + 8].copy_from_slice(&raw.to_le_bytes());
        let checked = check(&qemu, test, 1, &b.model, b.shape, &bad, install, &probes);
        let named = format!("{va:#x}");
        let hit = checked
            .mismatches
            .iter()
            .find(|m| m.contains(&format!("{} {named}", access_label(access))));
        assert!(
            hit.is_some(),
            "negative control `{what}` on the L{} descriptor of {va:#x} ({:#x} -> {raw:#x}) was not reported for \
             the expected probe; {} mismatches:\n{}\nwalk:\n{}",
            leaf.level,
            leaf.raw,
            checked.mismatches.len(),
            checked.mismatches.join("\n"),
            describe_walk(&bad, install.2, b.shape.levels, va)
        );
        let hit = hit.unwrap();
        assert!(
            hit.contains(&format!("{raw:#018x}")),
            "the report shows the changed descriptor:\n{hit}"
        );
        println!(
            "negative control `{what}` at {va:#x}: {} probes disagree, e.g.\n{hit}",
            checked.mismatches.len()
        );
    }

    // The wrong TTBR0 (the root moved by a page) and the wrong T0SZ are noticed too.
    for (what, bad_install) in [
        ("TTBR0 + 4 KiB", (install.0, install.1, install.2 + KIB4)),
        (
            "T0SZ 16 -> 25 (a 4-level table walked as 3 levels)",
            (install.0, install.1 + 9, install.2),
        ),
    ] {
        let checked = check(&qemu, test, 1, &b.model, b.shape, &image, bad_install, &probes);
        assert!(
            !checked.mismatches.is_empty(),
            "negative control `{what}` was not noticed"
        );
        println!(
            "negative control `{what}`: {} probes disagree",
            checked.mismatches.len()
        );
    }

    // A probe list the model does not back (a load expected to return the pattern at the
    // wrong PA) is reported: the comparison itself is not vacuous.
    let wrong: Vec<Probe> = vec![Probe {
        va: 0x1000,
        access: Access::Read,
        pattern_pa: Some(WINDOW + 0x6000),
    }];
    let mut other = b.model.clone();
    other.map(0x1000, 0x2000, WINDOW + 0x6000, MA::Writeback);
    let checked = check(&qemu, test, 1, &other, b.shape, &image, install, &wrong);
    assert_eq!(checked.mismatches.len(), 1, "{:?}", checked.mismatches);
}

fn access_label(access: Access) -> &'static str {
    access_name(access, 1)
}

/// At EL2: descriptors changed on purpose in the EL2-specific bits (XN at bit 54, AP[2]) are
/// reported for the probes they affect, and an EL2 table run at EL1 (the guest then programs
/// the EL1 registers) or a TCR_EL2 walked with the wrong size are noticed.
#[test]
fn el2_negative_control_corrupted_descriptors() {
    let test = "el2_negative_control_corrupted_descriptors";
    let Some(qemu) = qemu(test) else { return };
    let _replay = Replay(test);
    let mut b = Build::<El2>::new(false, true);
    for batch in alias_batches(false) {
        b.ok(&batch);
    }
    let image = b.image();
    let install = b.install();
    let runs = Runs::new(&b.model);
    let vas: Vec<u64> = vec![0x1000, 0x2000, 0x4000, 0x6000, 0x20_0000, 0x20_1008, GIB + 0x1238];
    let probes = probes_for(&runs, b.shape, &vas);
    let clean = check(&qemu, test, 2, &b.model, b.shape, &image, install, &probes);
    assert_no_mismatch(&format!("{test} (clean image)"), clean.probes, &clean.mismatches);

    // (VA whose leaf is changed, what, bits to flip, the probe that must notice).
    let cases: [(u64, &str, u64, Access); 4] = [
        (0x1000, "AP[2] set (read-only)", 1 << 7, Access::AtWrite),
        (0x1000, "XN (bit 54) set", 1 << 54, Access::Execute),
        (
            GIB + 0x1238,
            "XN (bit 54) set on a 1 GiB block",
            1 << 54,
            Access::Execute,
        ),
        (0x20_0000, "output address + 2 MiB (2 MiB block)", 1 << 21, Access::Read),
    ];
    for (va, what, flip, access) in cases {
        let leaf = *walk_image(&image, install.2, b.shape.levels, va)
            .last()
            .expect("a walk");
        let mut bad = image.clone();
        let off = (leaf.at - TABLES_PA) as usize;
        let raw = leaf.raw ^ flip;
        bad[off..off + 8].copy_from_slice(&raw.to_le_bytes());
        let checked = check(&qemu, test, 2, &b.model, b.shape, &bad, install, &probes);
        let hit = checked
            .mismatches
            .iter()
            .find(|m| m.contains(&format!("{} {va:#x}", access_name(access, 2))));
        assert!(
            hit.is_some(),
            "EL2 negative control `{what}` at {va:#x} was not reported; {} mismatches:\n{}",
            checked.mismatches.len(),
            checked.mismatches.join("\n")
        );
        println!(
            "EL2 negative control `{what}` at {va:#x}: {} probes disagree, e.g.\n{}",
            checked.mismatches.len(),
            hit.unwrap()
        );
    }
    // Bit 53 is RES0 at EL2 and does not forbid execution there: a table that wrote PXN for
    // ExecuteProtect (the EL1&0 encoding) would let EL2 execute. Clearing XN and setting PXN
    // on the execute-protected Normal page at 0x6000 must be noticed.
    let leaf = *walk_image(&image, install.2, b.shape.levels, 0x6000).last().unwrap();
    let mut bad = image.clone();
    let off = (leaf.at - TABLES_PA) as usize;
    let raw = (leaf.raw & !(1 << 54)) | 1 << 53;
    bad[off..off + 8].copy_from_slice(&raw.to_le_bytes());
    let checked = check(&qemu, test, 2, &b.model, b.shape, &bad, install, &probes);
    assert!(
        checked.mismatches.iter().any(|m| m.contains("branch 0x6000")),
        "PXN instead of XN at EL2 was not noticed: {:?}",
        checked.mismatches
    );
    // The EL2 table run at EL1 (the guest programs the EL1 registers): noticed.
    let checked = check(&qemu, test, 1, &b.model, b.shape, &image, install, &probes);
    assert!(
        !checked.mismatches.is_empty(),
        "an EL2 table probed at EL1 was not noticed"
    );
    println!("EL2 table probed at EL1: {} mismatches", checked.mismatches.len());
}
