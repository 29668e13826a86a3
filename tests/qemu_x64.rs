//! Proof on a real MMU (X64): tables built by the library are installed by a bare-metal guest
//! (`guests/x64/probe.S`) under QEMU (TCG, `-cpu max`), which reports what the MMU did for
//! each probe: the value a read returned, or the exception (vector, error code, CR2). The
//! expected outcome of every probe comes from the reference model (`tests/model_support`)
//! applied to the same requests, never from the library's own query or translate.
//!
//! Scenarios: the OVMF q35 memory map with its MAT protections, splits and merges, aliased
//! mappings, randomized transactions, on 4- and 5-level paging, with and without 1 GiB pages,
//! in both halves of the address space; and negative controls that corrupt one entry of the
//! image the guest gets and require exactly the probes it affects to disagree.
//!
//! Without `qemu-system-x86_64` on PATH each test prints one SKIP line (a failure with
//! `TXPAGING_REQUIRE_QEMU=1`). Seeds: `TXPAGING_SEED` as for the model tests;
//! `TXPAGING_QEMU_SEEDS` sets how many seeds each random test runs (default 3, for a soak run).
//! `TXPAGING_KEEP_QEMU=1` keeps each run's RAM file, table image and probe block.

#[allow(unused_imports)] // model_support re-exports its AArch64 target, unused here
mod model_support;
mod qemu_support;
#[path = "qemu_support/x64.rs"]
mod x64_probe;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use model_support::{base_seed, test_seed, Gen, MOp, Rng, Shape, X64Target, GIB, MIB2, PAGE};
use qemu_support::{find_qemu, probe_vas, Access};
use txpaging::MemoryAttributes as MA;
use x64_probe::{
    all_in_window, check, compare, expect, fold, in_guest_slot, leaf_entry, run_guest, Api, Build, Config, Install,
    Outcome, ProbeSet, ALL_ACCESSES, EC_ID, EC_P, EC_W, PF, WINDOW,
};

const MIB: u64 = 1 << 20;

fn qemu(test: &str) -> Option<PathBuf> {
    find_qemu(test, "qemu-system-x86_64", "qemu-system-x86")
}

/// Prints how to replay a failing test.
struct SeedNote(&'static str);

impl Drop for SeedNote {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "\n=== `{}` FAILED. Replay: TXPAGING_SEED={:#x} cargo test --test qemu_x64 {} ===\n",
                self.0,
                base_seed(),
                self.0
            );
        }
    }
}

/// Totals of one test, printed at the end.
#[derive(Default)]
struct Tally {
    runs: usize,
    probes: usize,
    skipped: usize,
    guest_time: Duration,
}

impl Tally {
    fn check(&mut self, qemu: &std::path::Path, test: &str, build: &Build, set: &ProbeSet) {
        let (n, elapsed) = check(qemu, test, build, set);
        self.runs += 1;
        self.probes += n;
        self.skipped += set.skipped;
        self.guest_time += elapsed;
    }

    fn print(&self, test: &str, started: Instant) {
        println!(
            "{test}: {} guest runs, {} probes as the model expects ({} left out: output outside the window), \
             QEMU {:.2?}, total {:.2?}",
            self.runs,
            self.probes,
            self.skipped,
            self.guest_time,
            started.elapsed()
        );
    }
}

/// Addresses that are never canonical in `cfg`'s mode (4-level: also those needing 57 bits).
fn non_canonical(cfg: Config) -> Vec<u64> {
    let mut v = vec![
        0x8000_0000_0000_0000,
        0x0100_0000_0000_0000,
        0x7FFF_FFFF_FFFF_F000,
        0xFEFF_FFFF_FFFF_F008,
    ];
    if !cfg.five_level {
        v.extend([
            0x0000_8000_0000_0000,
            0x0000_8000_0000_1000,
            0xFFFF_7FFF_FFFF_F000,
            0x00FF_FFFF_FFFF_F000,
            0x0001_0000_0000_0000,
            0xFF00_0000_0000_0000,
            0xFFFF_0000_0000_0000,
        ]);
    }
    v
}

/// Maps, then probes with every access at `probe_vas` of the model.
fn probe_set(build: &Build, rng: &mut Rng, samples: usize, extra: &[u64], cap: usize) -> ProbeSet {
    let mut extra = extra.to_vec();
    extra.extend(non_canonical(build.cfg));
    let vas = probe_vas(&build.model, build.shape, rng, samples, &extra, cap);
    ProbeSet::new(build.shape, &build.model, &vas, &ALL_ACCESSES)
}

/// Moves every op by `offset` in the virtual address space, keeping the output addresses.
fn shift(ops: &[MOp], offset: u64) -> Vec<MOp> {
    ops.iter()
        .map(|op| match *op {
            MOp::Map { va, size, attrs } => MOp::MapAliased {
                va: va.wrapping_add(offset),
                pa: va,
                size,
                attrs,
            },
            MOp::MapAliased { va, pa, size, attrs } => MOp::MapAliased {
                va: va.wrapping_add(offset),
                pa,
                size,
                attrs,
            },
            MOp::Unmap { va, size } => MOp::Unmap {
                va: va.wrapping_add(offset),
                size,
            },
            MOp::Protect { va, size, attrs } => MOp::Protect {
                va: va.wrapping_add(offset),
                size,
                attrs,
            },
        })
        .collect()
}

// ------------------------------------------------------------------------------------------
// (1) The OVMF q35 memory map and its protections (the policy of examples/firmware_map.rs)
// ------------------------------------------------------------------------------------------

const MEMMAP_CSV: &str = include_str!("../examples/data/uefi-memmap-x64-q35-4G.csv");
const MAT_CSV: &str = include_str!("../examples/data/uefi-mat-x64-q35-4G.csv");
const IMAGES_CSV: &str = include_str!("../examples/data/uefi-images-x64-q35-4G.csv");

struct Descriptor {
    kind: &'static str,
    start: u64,
    size: u64,
    attributes: u64,
}

fn hex(field: &str) -> u64 {
    u64::from_str_radix(field.trim_start_matches("0x"), 16).unwrap_or_else(|_| panic!("bad hex field {field:?}"))
}

fn rows(csv: &'static str, header: &str) -> impl Iterator<Item = Vec<&'static str>> {
    let mut lines = csv.lines();
    assert_eq!(lines.next(), Some(header));
    lines.filter(|l| !l.is_empty()).map(|l| l.split(',').collect())
}

fn descriptors(csv: &'static str) -> Vec<Descriptor> {
    rows(csv, "type,start,end,pages,attributes")
        .map(|f| Descriptor {
            kind: f[0],
            start: hex(f[1]),
            size: f[3].parse::<u64>().expect("pages") * PAGE,
            attributes: hex(f[4]),
        })
        .collect()
}

fn map_attributes(d: &Descriptor) -> MA {
    let capable = MA::from_bits_truncate(d.attributes).cache();
    let mmio = matches!(d.kind, "EfiMemoryMappedIO" | "EfiMemoryMappedIOPortSpace");
    let preference: &[MA] = if mmio {
        &[
            MA::Uncached,
            MA::UncachedExport,
            MA::WriteCombining,
            MA::WriteThrough,
            MA::Writeback,
        ]
    } else {
        &[
            MA::Writeback,
            MA::WriteThrough,
            MA::WriteCombining,
            MA::Uncached,
            MA::UncachedExport,
        ]
    };
    let mut attrs = *preference.iter().find(|&&c| capable.contains(c)).expect("a cache type");
    let code = matches!(
        d.kind,
        "EfiLoaderCode" | "EfiBootServicesCode" | "EfiRuntimeServicesCode" | "EfiPalCode"
    );
    if !code {
        attrs |= MA::ExecuteProtect;
    }
    attrs
}

/// (memory map ops, protection batch ops), identity addresses.
fn firmware_ops() -> (Vec<MOp>, Vec<MOp>) {
    let map: Vec<MOp> = descriptors(MEMMAP_CSV)
        .iter()
        .map(|d| MOp::Map {
            va: d.start,
            size: d.size,
            attrs: map_attributes(d),
        })
        .collect();
    let mut batch = vec![MOp::Protect {
        va: 0,
        size: PAGE,
        attrs: MA::ReadProtect,
    }];
    for d in descriptors(MAT_CSV) {
        batch.push(MOp::Protect {
            va: d.start,
            size: d.size,
            attrs: MA::from_bits_truncate(d.attributes).access(),
        });
    }
    for f in rows(IMAGES_CSV, "name,base,size,code_type,data_type,region_type") {
        batch.push(MOp::Protect {
            va: hex(f[1]),
            size: PAGE,
            attrs: MA::ReadOnly | MA::ExecuteProtect,
        });
    }
    // The example's stand-in stack guard page.
    batch.push(MOp::Protect {
        va: 0x7EA0_0000 - 128 * 1024 - PAGE,
        size: PAGE,
        attrs: MA::ReadProtect | MA::ExecuteProtect,
    });
    (map, batch)
}

fn firmware_map(test: &'static str, cfg: Config, va_offset: u64, batch_api: Api) {
    let Some(qemu) = qemu(test) else { return };
    let _note = SeedNote(test);
    let started = Instant::now();
    let mut rng = Rng::new(test_seed(test));
    let (map, batch) = firmware_ops();
    let mut build = Build::new(cfg);
    build.apply_ok(&fold(&shift(&map, va_offset), build.shape), Api::Transaction);
    build.assert_minimal();
    assert!(all_in_window(&build.model));
    let mut tally = Tally::default();
    let set = probe_set(&build, &mut rng, 3000, &[], 15_000);
    tally.check(&qemu, test, &build, &set);
    build.apply_ok(&fold(&shift(&batch, va_offset), build.shape), batch_api);
    build.assert_minimal();
    let set = probe_set(&build, &mut rng, 3000, &[], 15_000);
    tally.check(&qemu, test, &build, &set);
    tally.print(test, started);
}

#[test]
fn firmware_map_4_level() {
    firmware_map(
        "firmware_map_4_level",
        Config {
            five_level: false,
            one_gib_pages: true,
        },
        0,
        Api::Transaction,
    );
}

#[test]
fn firmware_map_4_level_high_half_without_1gib_pages() {
    firmware_map(
        "firmware_map_4_level_high_half_without_1gib_pages",
        Config {
            five_level: false,
            one_gib_pages: false,
        },
        0xFFFF_8000_0000_0000,
        Api::OneOp,
    );
}

#[test]
fn firmware_map_5_level_above_2_pow_47() {
    firmware_map(
        "firmware_map_5_level_above_2_pow_47",
        Config {
            five_level: true,
            one_gib_pages: true,
        },
        0x00F0_0000_0000_0000,
        Api::Transaction,
    );
}

#[test]
fn firmware_map_5_level_high_half_without_1gib_pages() {
    firmware_map(
        "firmware_map_5_level_high_half_without_1gib_pages",
        Config {
            five_level: true,
            one_gib_pages: false,
        },
        0xFF80_0000_0000_0000,
        Api::Transaction,
    );
}

// ------------------------------------------------------------------------------------------
// (2) Splits and merges
// ------------------------------------------------------------------------------------------

/// 1 GiB-aligned bases with 3 GiB of room: one low (above 2^47 on 5 levels), one high.
fn bases(cfg: Config) -> [u64; 2] {
    if cfg.five_level {
        [0x0001_0000_0000_0000, 0xFF00_0000_0000_0000]
    } else {
        [0x0000_0040_0000_0000, 0xFFFF_8080_0000_0000]
    }
}

/// Stage 0: a GiB (a 1 GiB page, or 512 2 MiB pages) and 8 MiB of 2 MiB pages.
fn split_stage_map(b: u64) -> Vec<MOp> {
    vec![
        MOp::MapAliased {
            va: b,
            pa: WINDOW,
            size: GIB,
            attrs: MA::Writeback,
        },
        MOp::MapAliased {
            va: b + 2 * GIB,
            pa: WINDOW + 4 * MIB,
            size: 8 * MIB,
            attrs: MA::WriteThrough | MA::ExecuteProtect,
        },
    ]
}

/// Stage 1: changes in the middle of the large pages (splits).
fn split_stage_split(b: u64) -> Vec<MOp> {
    vec![
        MOp::Protect {
            va: b + 512 * MIB + 0x3000,
            size: PAGE,
            attrs: MA::ReadOnly,
        },
        MOp::Unmap {
            va: b + 700 * MIB,
            size: PAGE,
        },
        MOp::Protect {
            va: b + 300 * MIB,
            size: MIB2,
            attrs: MA::ExecuteProtect,
        },
        MOp::Protect {
            va: b + GIB - PAGE,
            size: PAGE,
            attrs: MA::ReadOnly | MA::ExecuteProtect | MA::Uncached,
        },
        MOp::Protect {
            va: b + 2 * GIB + 2 * MIB + 0x5000,
            size: 0x3000,
            attrs: MA::ReadProtect | MA::ExecuteProtect,
        },
        MOp::Unmap {
            va: b + 2 * GIB + 6 * MIB,
            size: MIB2,
        },
    ]
}

/// Stage 2: everything back as in stage 0 (merges).
fn split_stage_restore(b: u64) -> Vec<MOp> {
    vec![
        MOp::Protect {
            va: b + 512 * MIB + 0x3000,
            size: PAGE,
            attrs: MA::empty(),
        },
        MOp::MapAliased {
            va: b + 700 * MIB,
            pa: WINDOW + 700 * MIB,
            size: PAGE,
            attrs: MA::Writeback,
        },
        MOp::Protect {
            va: b + 300 * MIB,
            size: MIB2,
            attrs: MA::Writeback,
        },
        MOp::Protect {
            va: b + GIB - PAGE,
            size: PAGE,
            attrs: MA::Writeback,
        },
        MOp::Protect {
            va: b + 2 * GIB + 2 * MIB + 0x5000,
            size: 0x3000,
            attrs: MA::ExecuteProtect,
        },
        MOp::MapAliased {
            va: b + 2 * GIB + 6 * MIB,
            pa: WINDOW + 10 * MIB,
            size: MIB2,
            attrs: MA::WriteThrough | MA::ExecuteProtect,
        },
    ]
}

/// The pages each stage changes, and their neighbours.
fn split_extra(b: u64) -> Vec<u64> {
    let mut v = Vec::new();
    for at in [
        b,
        b + 512 * MIB + 0x3000,
        b + 512 * MIB,
        b + 700 * MIB,
        b + 300 * MIB,
        b + 302 * MIB,
        b + GIB - PAGE,
        b + GIB,
        b + 2 * GIB + 2 * MIB + 0x5000,
        b + 2 * GIB + 2 * MIB + 0x8000,
        b + 2 * GIB + 6 * MIB,
        b + 2 * GIB + 8 * MIB,
    ] {
        v.extend([at.wrapping_sub(PAGE), at, at + PAGE, at + 0xFF8]);
    }
    v
}

fn splits_and_merges(test: &'static str, five_level: bool) {
    let Some(qemu) = qemu(test) else { return };
    let _note = SeedNote(test);
    let started = Instant::now();
    let mut rng = Rng::new(test_seed(test));
    let mut tally = Tally::default();
    for cfg in Config::ALL.into_iter().filter(|c| c.five_level == five_level) {
        let bs = bases(cfg);
        let extra: Vec<u64> = bs.iter().flat_map(|&b| split_extra(b)).collect();
        let mut build = Build::new(cfg);
        let stage = |f: fn(u64) -> Vec<MOp>| -> Vec<MOp> { bs.iter().flat_map(|&b| f(b)).collect() };
        let stages: [(&str, Vec<MOp>, Api); 3] = [
            ("map", stage(split_stage_map), Api::Transaction),
            ("split", stage(split_stage_split), Api::Transaction),
            ("restore", stage(split_stage_restore), Api::OneOp),
        ];
        let mut pages_after_map = 0;
        for (name, ops, api) in stages {
            build.apply_ok(&ops, api);
            build.assert_minimal();
            match name {
                "map" => pages_after_map = build.table.table_pages(),
                "restore" => assert_eq!(
                    build.table.table_pages(),
                    pages_after_map,
                    "{cfg}: restoring the uniform mapping must merge back to the same tables"
                ),
                _ => {}
            }
            let set = probe_set(&build, &mut rng, 1500, &extra, 8000);
            tally.check(&qemu, test, &build, &set);
        }
        // Everything unmapped: the table shrinks to its root, every probe faults.
        let all: Vec<MOp> = bs
            .iter()
            .flat_map(|&b| {
                [
                    MOp::Unmap { va: b, size: GIB },
                    MOp::Unmap {
                        va: b + 2 * GIB,
                        size: 8 * MIB,
                    },
                ]
            })
            .collect();
        build.apply_ok(&all, Api::Transaction);
        assert_eq!(build.table.table_pages(), 1);
        let set = probe_set(&build, &mut rng, 500, &extra, 4000);
        tally.check(&qemu, test, &build, &set);
    }
    tally.print(test, started);
}

#[test]
fn splits_and_merges_4_level() {
    splits_and_merges("splits_and_merges_4_level", false);
}

#[test]
fn splits_and_merges_5_level() {
    splits_and_merges("splits_and_merges_5_level", true);
}

// ------------------------------------------------------------------------------------------
// (3) Aliased mappings: several VAs, one PA, different rights and cache types
// ------------------------------------------------------------------------------------------

/// 1 GiB-aligned VAs for the aliases, spread over both halves (and above 2^47 on 5 levels).
fn alias_vas(cfg: Config) -> [u64; 7] {
    if cfg.five_level {
        [
            0x0000_0010_0000_0000,
            0x0000_7FFF_C000_0000,
            0x0001_0000_4000_0000,
            0x00FF_FFFF_8000_0000,
            0xFF00_0000_0000_0000,
            0xFFF0_0000_4000_0000,
            0xFFFE_FFFF_C000_0000,
        ]
    } else {
        [
            0x0000_0010_0000_0000,
            0x0000_0010_4000_0000,
            0x0000_7FFF_8000_0000,
            0x0000_7FFF_C000_0000,
            0xFFFF_8000_0000_0000,
            0xFFFF_A000_4000_0000,
            0xFFFF_FF7F_C000_0000,
        ]
    }
}

fn alias_ops(cfg: Config) -> (Vec<MOp>, Vec<MOp>, Vec<u64>) {
    let [a, b, c, d, e, f, g] = alias_vas(cfg);
    let p = WINDOW + 0x1000_0000 + 3 * MIB2;
    let first = vec![
        MOp::MapAliased {
            va: a + 8 * MIB2,
            pa: p,
            size: MIB2,
            attrs: MA::Writeback,
        },
        MOp::MapAliased {
            va: b,
            pa: p,
            size: MIB2,
            attrs: MA::Writeback | MA::ReadOnly,
        },
        // Not 2 MiB aligned against the PA: 4 KiB pages.
        MOp::MapAliased {
            va: c + PAGE,
            pa: p,
            size: MIB2,
            attrs: MA::WriteThrough | MA::ExecuteProtect,
        },
        MOp::MapAliased {
            va: d,
            pa: p,
            size: MIB2,
            attrs: MA::WriteCombining | MA::ReadOnly | MA::ExecuteProtect,
        },
        MOp::Protect {
            va: d,
            size: 16 * PAGE,
            attrs: MA::ReadProtect,
        },
        // The whole window: a 1 GiB page (when enabled) that contains `p` too.
        MOp::MapAliased {
            va: e,
            pa: WINDOW,
            size: GIB,
            attrs: MA::Uncached,
        },
        MOp::MapAliased {
            va: f + 0x5000,
            pa: p + 0x5000,
            size: 0x3000,
            attrs: MA::WriteProtect | MA::ReadOnly,
        },
        MOp::MapAliased {
            va: g + GIB - PAGE,
            pa: p + MIB2 - PAGE,
            size: PAGE,
            attrs: MA::UncachedExport,
        },
        MOp::MapAliased {
            va: g,
            pa: p,
            size: 4 * MIB2,
            attrs: MA::Writeback,
        },
    ];
    let second = vec![
        // Re-point one alias, cut another, make a third writable again.
        MOp::MapAliased {
            va: b,
            pa: p + MIB2,
            size: MIB2,
            attrs: MA::Writeback | MA::ExecuteProtect,
        },
        MOp::Unmap {
            va: c + 0x10_0000,
            size: 0x4_0000,
        },
        MOp::Protect {
            va: d + 16 * PAGE,
            size: MIB2 - 16 * PAGE,
            attrs: MA::empty(),
        },
        MOp::Unmap {
            va: e + 0x1000_0000,
            size: 0x1000_0000,
        },
    ];
    let mut extra = Vec::new();
    for base in [a + 8 * MIB2, b, c, d, e + 0x1000_0000 + 3 * MIB2, f, g, g + GIB - PAGE] {
        for off in [
            0,
            PAGE,
            0x5000,
            0x7FF8,
            0x8000,
            16 * PAGE,
            0x10_0000,
            0x14_0000,
            MIB2 - PAGE,
            MIB2,
        ] {
            extra.push(base + off);
        }
    }
    (first, second, extra)
}

#[test]
fn aliased_mappings() {
    let test = "aliased_mappings";
    let Some(qemu) = qemu(test) else { return };
    let _note = SeedNote(test);
    let started = Instant::now();
    let mut rng = Rng::new(test_seed(test));
    let mut tally = Tally::default();
    for cfg in Config::ALL {
        let (first, second, extra) = alias_ops(cfg);
        let mut build = Build::new(cfg);
        build.apply_ok(&first, Api::Transaction);
        build.assert_minimal();
        let set = probe_set(&build, &mut rng, 1000, &extra, 6000);
        tally.check(&qemu, test, &build, &set);
        build.apply_ok(&second, Api::OneOp);
        build.assert_minimal();
        let set = probe_set(&build, &mut rng, 1000, &extra, 6000);
        tally.check(&qemu, test, &build, &set);
    }
    tally.print(test, started);
}

// ------------------------------------------------------------------------------------------
// (5) Randomized layouts
// ------------------------------------------------------------------------------------------

/// A generator for `cfg` whose windows avoid the guest's root slot (the top window of the
/// high half moves down one root slot; weights are unchanged).
fn generator(cfg: Config) -> Gen {
    let target = <X64Target as model_support::ModelTarget>::build(cfg.model_cfg(), 1);
    let mut gen = Gen::new(&target);
    let shape = cfg.shape();
    let slot_size = Shape::entry_size(shape.top_level());
    for w in &mut gen.windows {
        if in_guest_slot(shape, w.base) || in_guest_slot(shape, w.base + (w.len - 1)) {
            w.base -= slot_size;
            assert!(!in_guest_slot(shape, w.base) && !in_guest_slot(shape, w.base + (w.len - 1)));
        }
    }
    gen
}

/// Seeds per random test unless `TXPAGING_QEMU_SEEDS` says otherwise (a soak run).
const SEEDS: u64 = 3;
const ROUNDS: usize = 3;
const TRANSACTIONS_PER_ROUND: usize = 25;

fn random_layouts(test: &'static str, cfg: Config) {
    let Some(qemu) = qemu(test) else { return };
    let _note = SeedNote(test);
    let started = Instant::now();
    let mut tally = Tally::default();
    let (mut commits, mut failures) = (0, 0);
    let seeds = std::env::var("TXPAGING_QEMU_SEEDS")
        .ok()
        .map(|v| v.parse().expect("TXPAGING_QEMU_SEEDS must be a number"))
        .unwrap_or(SEEDS);
    for s in 0..seeds {
        let mut rng = Rng::new(test_seed(&format!("{test}/{s}")));
        let gen = generator(cfg);
        let mut build = Build::new(cfg);
        for _ in 0..ROUNDS {
            for _ in 0..TRANSACTIONS_PER_ROUND {
                let ops = gen.transaction::<X64Target>(&mut rng, &build.model);
                let api = if rng.chance(25) { Api::OneOp } else { Api::Transaction };
                match build.apply(&fold(&ops, build.shape), api) {
                    Ok(()) => commits += 1,
                    Err(_) => failures += 1,
                }
            }
            build.assert_minimal();
            assert!(
                all_in_window(&build.model),
                "an output address outside the pattern window"
            );
            let set = probe_set(&build, &mut rng, 2500, &[], 10_000);
            tally.check(&qemu, test, &build, &set);
        }
    }
    println!("{test}: {commits} transactions committed, {failures} failed as the model predicted");
    tally.print(test, started);
}

#[test]
fn random_layouts_4_level() {
    random_layouts(
        "random_layouts_4_level",
        Config {
            five_level: false,
            one_gib_pages: true,
        },
    );
}

#[test]
fn random_layouts_4_level_without_1gib_pages() {
    random_layouts(
        "random_layouts_4_level_without_1gib_pages",
        Config {
            five_level: false,
            one_gib_pages: false,
        },
    );
}

#[test]
fn random_layouts_5_level() {
    random_layouts(
        "random_layouts_5_level",
        Config {
            five_level: true,
            one_gib_pages: true,
        },
    );
}

#[test]
fn random_layouts_5_level_without_1gib_pages() {
    random_layouts(
        "random_layouts_5_level_without_1gib_pages",
        Config {
            five_level: true,
            one_gib_pages: false,
        },
    );
}

// ------------------------------------------------------------------------------------------
// (6) Negative controls: one corrupted entry, exactly the affected probes disagree
// ------------------------------------------------------------------------------------------

/// One corruption of the leaf that maps `va`.
struct Corruption {
    what: &'static str,
    va: u64,
    /// Leaf level the scenario must have there (0 = 4 KiB, 1 = 2 MiB, 2 = 1 GiB).
    level: u8,
    change: fn(u64, u8) -> u64,
    /// Which accesses the control probes with.
    accesses: &'static [Access],
    /// What a probe under the leaf must now report, if it changes: from (access, expected, va).
    now: fn(Access, Outcome, u64) -> Option<Outcome>,
}

fn corruptions(b: u64) -> Vec<Corruption> {
    vec![
        Corruption {
            what: "R/W cleared in a 4 KiB leaf",
            va: b + 512 * MIB + 0x4000,
            level: 0,
            change: |raw, _| raw & !2,
            accesses: &ALL_ACCESSES,
            now: |access, want, va| match (access, want) {
                (Access::Write, Outcome::Completed { .. }) => Some(Outcome::Exception {
                    vector: PF,
                    error_code: EC_P | EC_W,
                    address: va,
                }),
                _ => None,
            },
        },
        Corruption {
            what: "XD set in a 2 MiB leaf",
            va: b + 100 * MIB,
            level: 1,
            change: |raw, _| raw | 1 << 63,
            accesses: &ALL_ACCESSES,
            now: |access, want, va| match (access, want) {
                (Access::Execute, Outcome::Completed { .. }) => Some(Outcome::Exception {
                    vector: PF,
                    error_code: EC_P | EC_ID,
                    address: va,
                }),
                _ => None,
            },
        },
        Corruption {
            // Reads only: an instruction fetch or write at the wrong PA is not predictable.
            what: "output address of a 4 KiB leaf moved by one page",
            va: b + 700 * MIB + PAGE,
            level: 0,
            change: |raw, _| raw + PAGE,
            accesses: &[Access::Read],
            now: |_, want, _| match want {
                Outcome::Completed { value } => Some(Outcome::Completed {
                    // The wrong PA holds its own pattern, or nothing yet.
                    value: value ^ u64::MAX,
                }),
                _ => None,
            },
        },
        Corruption {
            what: "P cleared in a 2 MiB leaf",
            va: b + 2 * GIB + 4 * MIB,
            level: 1,
            change: |raw, _| raw & !1,
            accesses: &ALL_ACCESSES,
            now: |access, want, va| {
                let code = match access {
                    Access::Read => 0,
                    Access::Write => EC_W,
                    _ => EC_ID,
                };
                let fault = Outcome::Exception {
                    vector: PF,
                    error_code: code,
                    address: va,
                };
                (want != fault).then_some(fault)
            },
        },
    ]
}

#[test]
fn negative_controls_one_corrupted_entry_is_noticed() {
    let test = "negative_controls_one_corrupted_entry_is_noticed";
    let Some(qemu) = qemu(test) else { return };
    let _note = SeedNote(test);
    let cfg = Config {
        five_level: false,
        one_gib_pages: true,
    };
    let b = bases(cfg)[0];
    let mut build = Build::new(cfg);
    build.apply_ok(&split_stage_map(b), Api::Transaction);
    build.apply_ok(&split_stage_split(b), Api::Transaction);
    let (root, pat) = build.install();
    let install = Install { root, pat, levels: 4 };
    let clean = build.image();
    let mut rng = Rng::new(test_seed(test));
    for c in corruptions(b) {
        let (offset, level, raw) = leaf_entry(&clean, root, 4, c.va);
        assert_eq!(
            level, c.level,
            "{}: the scenario has no such leaf at {:#x}",
            c.what, c.va
        );
        let size = Shape::entry_size(level);
        let leaf_va = c.va & !(size - 1);
        let bad = (c.change)(raw, level);
        let mut image = clean.clone();
        image[offset..offset + 8].copy_from_slice(&bad.to_le_bytes());

        // Probes in and around the leaf, and elsewhere.
        let mut vas: Vec<u64> = (0..64).map(|_| leaf_va + rng.below(size / 8) * 8).collect();
        vas.extend([
            leaf_va,
            leaf_va + size - 8,
            leaf_va.wrapping_sub(8),
            leaf_va + size,
            c.va,
        ]);
        vas.extend(probe_vas(&build.model, build.shape, &mut rng, 500, &[], 3000));
        vas.sort_unstable();
        vas.dedup();
        let set = ProbeSet::new(build.shape, &build.model, &vas, c.accesses);
        let under = |va: u64| build.shape.is_canonical(va) && va & !(size - 1) == leaf_va;
        let predicted: Vec<(usize, Outcome)> = (0..set.len())
            .filter(|&i| under(set.probes[i].va))
            .filter_map(|i| (c.now)(set.probes[i].access, set.expected[i], set.probes[i].va).map(|o| (i, o)))
            .collect();
        assert!(
            !predicted.is_empty(),
            "{}: the control probes nothing it changes",
            c.what
        );

        let run = run_guest(&qemu, test, "max", &image, install, &set.probes).unwrap_or_else(|e| panic!("{e}"));
        let mismatches = compare(&set, &run.report, &image, install);
        let got: Vec<usize> = mismatches.iter().map(|(i, _)| *i).collect();
        let want: Vec<usize> = predicted.iter().map(|(i, _)| *i).collect();
        assert!(
            got == want,
            "{}: the harness reported {} mismatches, {} predicted; first reported:\n{}",
            c.what,
            got.len(),
            want.len(),
            mismatches.first().map_or("(none)", |(_, t)| t.as_str())
        );
        for (i, outcome) in &predicted {
            let actual = Outcome::from_raw(set.probes[*i].access, &run.report.results[*i]);
            match outcome {
                // A moved output address: anything but the expected pattern.
                Outcome::Completed { .. } if c.accesses == [Access::Read] => {
                    assert!(matches!(actual, Outcome::Completed { .. }), "{}: {actual}", c.what)
                }
                _ => assert_eq!(actual, *outcome, "{}: probe #{i}", c.what),
            }
        }
        let report = &mismatches[0].1;
        assert!(
            report.contains(&format!("{bad:#018x}")),
            "{}: the report must show the corrupted entry:\n{report}",
            c.what
        );
        println!(
            "{test}: {} at {leaf_va:#x}: all {} affected of {} probes disagree, no other; e.g.\n{report}",
            c.what,
            got.len(),
            set.len()
        );
        // The same probes on the clean image agree with the model.
        let run = run_guest(&qemu, test, "max", &clean, install, &set.probes).unwrap_or_else(|e| panic!("{e}"));
        let mismatches = compare(&set, &run.report, &clean, install);
        assert!(mismatches.is_empty(), "clean image: {}", mismatches[0].1);
    }
}

// ------------------------------------------------------------------------------------------
// The guest's own checks
// ------------------------------------------------------------------------------------------

/// A CPU without 1 GiB pages, or without LA57 for 5-level tables: the guest reports its
/// error code (4 or 5, guests/x64/probe.S) instead of running the probes.
#[test]
fn guest_reports_a_missing_cpu_feature() {
    let test = "guest_reports_a_missing_cpu_feature";
    let Some(qemu) = qemu(test) else { return };
    for (five_level, cpu, error) in [(false, "max,pdpe1gb=off", 4), (true, "max,la57=off", 5)] {
        let cfg = Config {
            five_level,
            one_gib_pages: false,
        };
        let mut build = Build::new(cfg);
        let va = 0x20_0000;
        build.apply_ok(
            &[MOp::MapAliased {
                va,
                pa: WINDOW,
                size: PAGE,
                attrs: MA::Writeback,
            }],
            Api::Transaction,
        );
        let (root, pat) = build.install();
        let (want, pattern_pa) = expect(build.shape, &build.model, va, Access::Read).unwrap();
        let probe = qemu_support::Probe {
            va,
            access: Access::Read,
            pattern_pa,
        };
        let install = Install {
            root,
            pat,
            levels: cfg.levels(),
        };
        let err = match run_guest(&qemu, test, cpu, &build.image(), install, &[probe]) {
            Ok(_) => panic!("{cfg}: the guest ran on `-cpu {cpu}`"),
            Err(e) => e,
        };
        assert!(
            err.contains(&format!("guest error {error:#x},")),
            "{cfg}, -cpu {cpu}: {err}"
        );
        // The same probe on `-cpu max` works.
        let run = run_guest(&qemu, test, "max", &build.image(), install, &[probe]).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(Outcome::from_raw(Access::Read, &run.report.results[0]), want);
    }
}
