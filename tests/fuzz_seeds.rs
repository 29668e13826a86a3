//! The fuzz targets' seed corpus: `fuzz/corpus/<target>/seed-*`, generated here from the
//! model tests' scenarios (`model_support`: the directed split-and-merge sequences, the
//! generator's random transactions, one-op calls and bad ops, the policy runs' generator)
//! on X64 and AArch64, encoded with the targets' own format (`fuzz/fuzz_targets/common.rs`,
//! included below: there is no second copy of the format).
//!
//! `cargo test --test fuzz_seeds` checks that the checked-in seeds are exactly what this
//! generator writes (no seed changed, missing or left over) and that every seed decodes
//! back to what was encoded. `TXPAGING_WRITE_FUZZ_SEEDS=1 cargo test --test fuzz_seeds`
//! rewrites them. Other files in the corpus directories (what local fuzzing adds, named by
//! hash) are neither checked nor checked in (`fuzz/.gitignore`).

#[path = "../fuzz/fuzz_targets/common.rs"]
mod common;
mod model_support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use common::{Call, ImageInput, ImageOp};
use model_support::*;
use txpaging::aarch64::El1;
use txpaging::{
    Aarch64Config, Aarch64PageTable, MemoryAttributes as MA, Op, PagePool, PageTable, PagingType, RecordingMmu,
    X64Config, X64PageTable,
};

/// The generator's seed: fixed, whatever `TXPAGING_SEED` says.
const SEED: u64 = 0x5EED_F022_2026_0013;

/// Seeds by `target/file name`.
type Corpus = BTreeMap<String, Vec<u8>>;

const X64_CFG: X64Cfg = X64Cfg {
    five_level: false,
    one_gib_pages: true,
};
const A64_CFG: Aarch64Cfg = Aarch64Cfg {
    three_level: false,
    one_gib_blocks: true,
};

fn arch_name(aarch64: bool) -> &'static str {
    if aarch64 {
        "aarch64"
    } else {
        "x64"
    }
}

fn window(base: u64, len: u64) -> Window {
    Window {
        base,
        len,
        weight: 1,
        gib: false,
    }
}

// ------------------------------------------------------------------------------------------
// familiar_api: one-op call sequences
// ------------------------------------------------------------------------------------------

fn call_of(op: MOp) -> Call {
    match op {
        MOp::Map { va, size, attrs } => Call::Map {
            va,
            size,
            attributes: attrs,
        },
        MOp::MapAliased { va, pa, size, attrs } => Call::Alias {
            va,
            pa,
            size,
            attributes: attrs,
        },
        MOp::Unmap { va, size } => Call::Unmap { va, size },
        MOp::Protect { va, size, attrs } => Call::Protect {
            va,
            size,
            attributes: attrs,
        },
    }
}

/// Random one-op calls as the model's one-op runs draw them, with a query every few calls.
fn random_calls<T: ModelTarget>(t: &T, rng: &mut Rng, n: usize) -> Vec<Call> {
    let gen = Gen::new(t);
    let shape = t.shape();
    let mut model = Model::default();
    let mut calls = Vec::new();
    for i in 0..n {
        if i % 5 == 4 {
            let (va, size) = match gen.mapped_range(rng, &model) {
                Some(range) if rng.chance(60) => range,
                _ => gen.range(rng),
            };
            calls.push(Call::Query { va, size });
            continue;
        }
        let op = gen.op::<T>(rng, &model);
        if let Ok(next) = model.predict::<T>(&shape, &[op]) {
            model = next;
        }
        calls.push(call_of(op));
    }
    calls
}

fn bad_calls<T: ModelTarget>(t: &T, rng: &mut Rng, n: usize) -> Vec<Call> {
    let gen = Gen::new(t);
    let mut calls = vec![Call::Map {
        va: 0,
        size: 0x4000,
        attributes: MA::Writeback,
    }];
    calls.extend((0..n).map(|_| call_of(gen.bad_op::<T>(rng))));
    calls
}

fn familiar_seeds(corpus: &mut Corpus, rng: &mut Rng) {
    let x64 = X64Target::build(X64_CFG, 1);
    let a64 = <Aarch64Target>::build(A64_CFG, 1);
    for aarch64 in [false, true] {
        let arch = arch_name(aarch64);
        // The last step builds a 2 MiB page from 512 one-page maps: the first 32 keep the
        // seed small and quick to run.
        let directed: Vec<Call> = if aarch64 {
            aarch64_split_merge_steps(a64.shape().space())
        } else {
            x64_split_merge_steps()
        }
        .into_iter()
        .flat_map(|step| step.into_iter().take(32))
        .map(call_of)
        .collect();
        let mut seeds = vec![("directed-split-merge".to_string(), directed)];
        let bad = if aarch64 {
            bad_calls(&a64, rng, 24)
        } else {
            bad_calls(&x64, rng, 24)
        };
        seeds.push(("bad-args".to_string(), bad));
        for k in 0..4 {
            let calls = if aarch64 {
                random_calls(&a64, rng, 40)
            } else {
                random_calls(&x64, rng, 40)
            };
            seeds.push((format!("random-{k}"), calls));
        }
        for (name, calls) in seeds {
            // Left out: the calls the format cannot carry (sizes above 1 GiB, below 2^62), and
            // aliased maps of more than 16 MiB whose output is not 2 MiB aligned with their
            // input: the planner records each of their 4 KiB entries before it finds the pool
            // (32 pages) too small, ~140 ms a GiB under AddressSanitizer, and such seeds would
            // slow the whole run (see `WIDE_SIZE_CAP`).
            let slow =
                |c: &Call| matches!(*c, Call::Alias { va, pa, size, .. } if size > 16 << 20 && (va ^ pa) % MIB2 != 0);
            let calls: Vec<Call> = calls
                .into_iter()
                .filter(|c| common::encode_calls(aarch64, &[*c]).is_some() && !slow(c))
                .collect();
            let bytes = common::encode_calls(aarch64, &calls).expect("every call encodes");
            assert_eq!(
                common::decode_calls(&bytes),
                (aarch64, calls),
                "familiar_api {arch} {name}: decode(encode(x)) != x"
            );
            corpus.insert(format!("familiar_api/seed-{arch}-{name}"), bytes);
        }
    }
}

// ------------------------------------------------------------------------------------------
// ops_policy: transactions near the policy's code range, the NULL page and MMIO
// ------------------------------------------------------------------------------------------

/// `op` as close as the `ops_policy` format gets: identity maps, 1 to 4 pages, its cache
/// types (others become Writeback), no unknown bits, and on AArch64 protects without a
/// cache type; `None` if its address is outside the format's windows.
fn policy_op(op: MOp, aarch64: bool) -> Option<Op> {
    let clamp = |size: u64| size.clamp(PAGE, 4 * PAGE);
    let access = |a: MA| a & (MA::ReadOnly | MA::ExecuteProtect | MA::ReadProtect);
    let cache = |a: MA| {
        let c = a & MA::CacheAttributesMask;
        if common::POLICY_CACHES.contains(&c) {
            c
        } else {
            MA::Writeback
        }
    };
    let op = match op {
        MOp::Map { va, size, attrs } | MOp::MapAliased { va, size, attrs, .. } => Op::Map {
            va,
            pa: va,
            size: clamp(size),
            attributes: cache(attrs) | access(attrs),
        },
        MOp::Unmap { va, size } => Op::Unmap { va, size: clamp(size) },
        MOp::Protect { va, size, attrs } => Op::Protect {
            va,
            size: clamp(size),
            attributes: if aarch64 {
                access(attrs)
            } else {
                cache(attrs) | access(attrs)
            },
        },
    };
    common::encode_policy_op(&op, aarch64).map(|_| op)
}

fn mop_of(op: &Op) -> MOp {
    match *op {
        Op::Map {
            va,
            pa,
            size,
            attributes,
        } => MOp::MapAliased {
            va,
            pa,
            size,
            attrs: attributes,
        },
        Op::Unmap { va, size } => MOp::Unmap { va, size },
        Op::Protect { va, size, attributes } => MOp::Protect {
            va,
            size,
            attrs: attributes,
        },
    }
}

/// Transactions of the policy runs' generator, drawn in the format's windows.
fn policy_txns<T: ModelTarget>(t: &T, rng: &mut Rng, aarch64: bool) -> Vec<Vec<Op>> {
    let windows = common::POLICY_BASES.iter().map(|&b| window(b, 8 * PAGE)).collect();
    let mut gen = Gen::new(t).with_windows(windows);
    gen.tame_percent = 90;
    gen.bad_percent = 0;
    let shape = t.shape();
    let mut model = Model::default();
    let mut txns = Vec::new();
    while txns.len() < common::POLICY_MAX_TXNS {
        let ops: Vec<Op> = gen
            .transaction::<T>(rng, &model)
            .into_iter()
            .filter_map(|op| policy_op(op, aarch64))
            .take(4)
            .collect();
        if ops.is_empty() {
            continue;
        }
        let mops: Vec<MOp> = ops.iter().map(mop_of).collect();
        if let Ok(next) = model.predict::<T>(&shape, &mops) {
            model = next;
        }
        txns.push(ops);
    }
    txns
}

/// Each rule of `ops_policy`'s policy broken once and then obeyed.
fn policy_rules(aarch64: bool) -> Vec<Vec<Op>> {
    let (wb, uc, ro, xp, rp) = (
        MA::Writeback,
        MA::Uncached,
        MA::ReadOnly,
        MA::ExecuteProtect,
        MA::ReadProtect,
    );
    let map = |va, pages, attributes| Op::Map {
        va,
        pa: va,
        size: pages * PAGE,
        attributes,
    };
    // X64 protects name the cache type in this format.
    let protect = |va, pages, access: MA, cache: MA| Op::Protect {
        va,
        size: pages * PAGE,
        attributes: if aarch64 { access } else { access | cache },
    };
    vec![
        vec![map(0, 1, wb | xp)],
        vec![map(0x1000, 2, wb | xp)],
        vec![map(0x3F_E000, 2, wb)],
        vec![map(0x3F_E000, 2, wb | xp), map(0x40_0000, 4, uc | ro)],
        vec![map(0x40_0000, 4, uc | xp)],
        vec![protect(0x40_0000, 1, ro, uc)],
        vec![map(0x5F_E000, 4, wb | xp)],
        vec![map(0x5F_E000, 2, wb | xp), map(0x60_0000, 2, wb | ro)],
        vec![protect(0x60_0000, 1, xp, wb)],
        vec![
            protect(0x60_1000, 1, rp, wb),
            Op::Unmap {
                va: 0x60_0000,
                size: PAGE,
            },
        ],
        vec![map(0x80_0000, 4, wb | rp), protect(0x80_1000, 2, xp, wb)],
        vec![
            Op::Unmap {
                va: 0x80_0000,
                size: 4 * PAGE,
            },
            map(0x80_0000, 1, wb | ro | xp),
        ],
    ]
}

fn policy_seeds(corpus: &mut Corpus, rng: &mut Rng) {
    let x64 = X64Target::build(X64_CFG, 1);
    let a64 = <Aarch64Target>::build(A64_CFG, 1);
    for aarch64 in [false, true] {
        let arch = arch_name(aarch64);
        let mut seeds = vec![("rules".to_string(), policy_rules(aarch64))];
        for k in 0..3 {
            let txns = if aarch64 {
                policy_txns(&a64, rng, aarch64)
            } else {
                policy_txns(&x64, rng, aarch64)
            };
            seeds.push((format!("model-{k}"), txns));
        }
        for (name, txns) in seeds {
            let bytes = common::encode_txns(aarch64, &txns).expect("every transaction encodes");
            assert_eq!(
                common::decode_txns(&bytes),
                (aarch64, txns),
                "ops_policy {arch} {name}: decode(encode(x)) != x"
            );
            corpus.insert(format!("ops_policy/seed-{arch}-{name}"), bytes);
        }
    }
}

// ------------------------------------------------------------------------------------------
// table_image: tables the library built, then changes
// ------------------------------------------------------------------------------------------

/// Table pages of an image seed: the root at 0x1000, as the target opens it.
const IMAGE_PAGES: usize = 4;

/// A 4-level table in `IMAGE_PAGES` pool pages at 0x1000 after `txns` (commits that fail,
/// for want of pages too, are skipped): the image and its page count.
fn image_after(aarch64: bool, txns: &[Vec<MOp>]) -> (Vec<u8>, usize) {
    // One-op calls in turn; a failing op ends its transaction (the image is a seed, not a
    // check).
    macro_rules! build {
        ($t:expr) => {
            for ops in txns {
                for op in ops {
                    let result = match *op {
                        MOp::Map { va, size, attrs } => $t.map_memory_region(va, size, attrs),
                        MOp::MapAliased { va, pa, size, attrs } => $t.map_aliased_memory_region(va, pa, size, attrs),
                        MOp::Unmap { va, size } => $t.unmap_memory_region(va, size),
                        MOp::Protect { va, size, attrs } => $t.protect_memory_region(va, size, attrs),
                    };
                    if result.is_err() {
                        break;
                    }
                }
            }
        };
    }
    fn take(pool: &PagePool, root: u64, pages: usize) -> (Vec<u8>, usize) {
        assert_eq!(root, 0x1000, "the root comes first");
        // Pages freed on the way may leave a gap: the image keeps up to the last live page.
        let used = pool.live().map(|pa| (pa / 0x1000) as usize).max().unwrap_or(1);
        assert!(pages <= used && used <= IMAGE_PAGES);
        (pool.image()[..used * 4096].to_vec(), used)
    }
    let pool = PagePool::with_physical_base(IMAGE_PAGES, 0x1000);
    if aarch64 {
        let mut t = Aarch64PageTable::with_regime(
            pool,
            PagingType::Paging4Level,
            Aarch64Config::default(),
            RecordingMmu::new(),
            El1,
        )
        .unwrap();
        build!(t);
        take(t.allocator(), t.root(), t.table_pages())
    } else {
        let mut t = X64PageTable::with_mmu(
            pool,
            PagingType::Paging4Level,
            X64Config { one_gib_pages: false },
            RecordingMmu::new(),
        )
        .unwrap();
        build!(t);
        take(t.allocator(), t.root(), t.table_pages())
    }
}

fn image_op(op: MOp) -> Option<ImageOp> {
    let (va, size) = op.range();
    let size = size.clamp(PAGE, 256 * PAGE);
    if va & !common::IMAGE_VA_MASK != 0 {
        return None;
    }
    Some(match op {
        MOp::Map { attrs, .. } | MOp::MapAliased { attrs, .. }
            if attrs.intersects(MA::Uncached | MA::UncachedExport) =>
        {
            ImageOp::MapMmio { va, size }
        }
        MOp::Map { .. } | MOp::MapAliased { .. } => ImageOp::MapWriteback { va, size },
        MOp::Unmap { .. } => ImageOp::Unmap { va, size },
        MOp::Protect { .. } => return None,
    })
}

fn image_seeds(corpus: &mut Corpus, rng: &mut Rng) {
    let x64 = X64Target::build(X64_CFG, 1);
    let a64 = <Aarch64Target>::build(A64_CFG, 1);
    let wb = MA::Writeback;
    for aarch64 in [false, true] {
        let arch = arch_name(aarch64);
        let top = if aarch64 { 1 << 48 } else { 0 };
        // A 2 MiB page split by a read-only page, device pages beside it (root, L1, L2, L3).
        let split = vec![
            vec![MOp::Map {
                va: 0x20_0000,
                size: MIB2,
                attrs: wb,
            }],
            vec![MOp::Protect {
                va: 0x20_1000,
                size: PAGE,
                attrs: MA::ReadOnly,
            }],
            vec![MOp::Map {
                va: 0x40_0000,
                size: 4 * PAGE,
                attrs: MA::Uncached | MA::ExecuteProtect,
            }],
            vec![MOp::Map {
                va: 0x40_4000,
                size: PAGE,
                attrs: MA::WriteCombining | MA::ReadProtect,
            }],
        ];
        // The top of the space: X64's high half, AArch64's top of TTBR0.
        let high = vec![vec![MOp::MapAliased {
            va: if aarch64 { top - MIB2 } else { 0xFFFF_FFFF_FFE0_0000 },
            pa: 0x4000_0000,
            size: MIB2,
            attrs: wb,
        }]];
        // The model's random transactions inside the first 2 MiB (at most one L3 table).
        let (random, changes) = {
            let draw = |rng: &mut Rng, windows: Vec<Window>, txns: usize| -> Vec<Vec<MOp>> {
                let mut out = Vec::new();
                let mut model = Model::default();
                macro_rules! go {
                    ($t:expr, $ty:ty) => {{
                        let gen = Gen::new($t).with_windows(windows.clone());
                        for _ in 0..txns {
                            let ops = gen.transaction::<$ty>(rng, &model);
                            if let Ok(next) = model.predict::<$ty>(&$t.shape(), &ops) {
                                model = next;
                            }
                            out.push(ops);
                        }
                    }};
                }
                if aarch64 {
                    go!(&a64, Aarch64Target)
                } else {
                    go!(&x64, X64Target)
                }
                out
            };
            let random = draw(rng, vec![window(0, MIB2)], 24);
            let changes: Vec<ImageOp> = draw(rng, vec![window(0, 8 * MIB2), window(GIB - MIB2, 2 * MIB2)], 12)
                .into_iter()
                .flatten()
                .filter_map(image_op)
                .take(8)
                .collect();
            (random, changes)
        };
        for (name, txns) in [("split", split), ("top", high), ("model", random)] {
            let (image, used) = image_after(aarch64, &txns);
            let input = ImageInput {
                aarch64,
                used,
                image: &image,
                ops: changes.clone(),
            };
            let bytes = common::encode_image(&input).expect("the image encodes");
            assert_eq!(
                common::decode_image(&bytes),
                input,
                "table_image {arch} {name}: decode(encode(x)) != x"
            );
            corpus.insert(format!("table_image/seed-{arch}-{name}"), bytes);
        }
    }
}

// ------------------------------------------------------------------------------------------
// Generate, compare, write
// ------------------------------------------------------------------------------------------

fn generate() -> Corpus {
    let mut rng = Rng::new(SEED);
    let mut corpus = Corpus::new();
    familiar_seeds(&mut corpus, &mut rng);
    policy_seeds(&mut corpus, &mut rng);
    image_seeds(&mut corpus, &mut rng);
    corpus
}

const TARGETS: [&str; 3] = ["familiar_api", "ops_policy", "table_image"];

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz").join("corpus")
}

/// The checked-in seeds (`seed-*` files) of every target.
fn read_seeds(dir: &Path) -> Corpus {
    let mut corpus = Corpus::new();
    for target in TARGETS {
        let Ok(entries) = std::fs::read_dir(dir.join(target)) else {
            continue;
        };
        for entry in entries {
            let entry = entry.unwrap();
            let name = entry.file_name().into_string().unwrap();
            if name.starts_with("seed-") {
                corpus.insert(format!("{target}/{name}"), std::fs::read(entry.path()).unwrap());
            }
        }
    }
    corpus
}

/// How `on_disk` differs from `wanted`: one line per changed, missing or extra seed.
fn differences(on_disk: &Corpus, wanted: &Corpus) -> Vec<String> {
    let mut out = Vec::new();
    for (name, bytes) in wanted {
        match on_disk.get(name) {
            None => out.push(format!("missing: {name}")),
            Some(have) if have != bytes => out.push(format!("changed: {name}")),
            Some(_) => {}
        }
    }
    out.extend(
        on_disk
            .keys()
            .filter(|name| !wanted.contains_key(*name))
            .map(|name| format!("not generated any more: {name}")),
    );
    out
}

#[test]
fn seed_corpus_is_what_the_model_scenarios_encode_to() {
    let wanted = generate();
    let dir = corpus_dir();
    if std::env::var_os("TXPAGING_WRITE_FUZZ_SEEDS").is_some_and(|v| v == "1") {
        for name in read_seeds(&dir).keys() {
            std::fs::remove_file(dir.join(name)).unwrap();
        }
        for (name, bytes) in &wanted {
            let path = dir.join(name);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, bytes).unwrap();
        }
    }
    let problems = differences(&read_seeds(&dir), &wanted);
    assert!(
        problems.is_empty(),
        "the seed corpus in {} is not what tests/fuzz_seeds.rs generates:\n  {}\n\
         Rewrite it with: TXPAGING_WRITE_FUZZ_SEEDS=1 cargo test --test fuzz_seeds",
        dir.display(),
        problems.join("\n  ")
    );
    let total: usize = wanted.values().map(Vec::len).sum();
    println!("{} seeds, {total} bytes", wanted.len());
    for target in TARGETS {
        let n = wanted.keys().filter(|k| k.starts_with(&format!("{target}/"))).count();
        assert!(n >= 6, "{target}: only {n} seeds");
    }
}

/// The drift check notices a changed byte, a missing seed and a left-over one.
#[test]
fn negative_control_drift_is_reported() {
    let wanted = generate();
    assert!(differences(&wanted, &wanted).is_empty());
    let first = wanted.keys().next().unwrap().clone();
    let mut changed = wanted.clone();
    changed.get_mut(&first).unwrap()[0] ^= 1;
    assert_eq!(differences(&changed, &wanted), [format!("changed: {first}")]);
    let mut missing = wanted.clone();
    missing.remove(&first);
    assert_eq!(differences(&missing, &wanted), [format!("missing: {first}")]);
    let mut extra = wanted.clone();
    extra.insert("ops_policy/seed-old".into(), vec![0]);
    assert_eq!(
        differences(&extra, &wanted),
        ["not generated any more: ops_policy/seed-old"]
    );
}

/// The round-trip checks can fail: a different kind byte decodes to something else.
#[test]
fn negative_control_round_trip_notices_a_wrong_encoding() {
    let calls = vec![Call::Unmap {
        va: 0x1000,
        size: 0x1000,
    }];
    let mut bytes = common::encode_calls(false, &calls).unwrap();
    assert_eq!(common::decode_calls(&bytes), (false, calls.clone()));
    bytes[1] = 2; // protect, not unmap
    assert_ne!(common::decode_calls(&bytes), (false, calls));
    let txns = policy_rules(true);
    let mut bytes = common::encode_txns(true, &txns).unwrap();
    *bytes.last_mut().unwrap() = 2; // the last op an unmap
    assert_ne!(common::decode_txns(&bytes), (true, txns));
    // What the format cannot carry is refused, not approximated.
    let alias = Op::Map {
        va: 0x1000,
        pa: 0x2000,
        size: 0x1000,
        attributes: MA::Writeback,
    };
    assert_eq!(common::encode_policy_op(&alias, false), None);
    let huge = Call::Map {
        va: 0,
        size: 2 << 30,
        attributes: MA::Writeback,
    };
    assert_eq!(common::encode_calls(false, &[huge]), None);
}
