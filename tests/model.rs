//! Randomized reference-model tests: random transactions and one-op calls on 4- and
//! 5-level X64 tables and 3- and 4-level AArch64 tables, with and without 1 GiB pages
//! (blocks), checked after every commit against a reference model (see `model_support`),
//! plus allocation-failure injection. The `policy_*` runs do the same on tables with a
//! strict protection policy (`model_policy`): the model also predicts every refusal (rule,
//! op, address), and a refused transaction must change no byte, allocate nothing and leak
//! no page.
//!
//! `TXPAGING_SEED=<n>` replays a run (a failing test prints its seed), `TXPAGING_SEED=random`
//! explores a fresh one;
//! `TXPAGING_MODEL_OPS=<n>` sets the total number of ops (default 120,000, split by the shares below).

mod model_support;

use model_support::*;
use txpaging::aarch64::El2;
use txpaging::{MemoryAttributes as MA, PtError, Reason, Rule, TxnError};

const X64_4L_1G: X64Cfg = X64Cfg {
    five_level: false,
    one_gib_pages: true,
};
const X64_4L_2M: X64Cfg = X64Cfg {
    five_level: false,
    one_gib_pages: false,
};
const X64_5L_1G: X64Cfg = X64Cfg {
    five_level: true,
    one_gib_pages: true,
};
const X64_5L_2M: X64Cfg = X64Cfg {
    five_level: true,
    one_gib_pages: false,
};
const A64_3L_1G: Aarch64Cfg = Aarch64Cfg {
    three_level: true,
    one_gib_blocks: true,
};
const A64_3L_2M: Aarch64Cfg = Aarch64Cfg {
    three_level: true,
    one_gib_blocks: false,
};
const A64_4L_1G: Aarch64Cfg = Aarch64Cfg {
    three_level: false,
    one_gib_blocks: true,
};
const A64_4L_2M: Aarch64Cfg = Aarch64Cfg {
    three_level: false,
    one_gib_blocks: false,
};

/// Shares of the total op budget, in per mille, per configuration: 8 configurations (4 X64,
/// 4 AArch64) of 130 add up to 1040, about 62,400 ops per architecture by default.
const TXN_SHARE: u64 = 90;
const ONE_OP_SHARE: u64 = 20;
const ALLOC_SHARE: u64 = 20;
/// Batches in address order (the engine's batch path): 5 configurations, and 2 under
/// allocation failure.
const SORTED_SHARE: u64 = 80;
const SORTED_ALLOC_SHARE: u64 = 40;
/// Policy-on runs: 8 more configurations (5 transactional, 3 one-op).
const POLICY_TXN_SHARE: u64 = 30;
const POLICY_ONE_OP_SHARE: u64 = 15;

fn random_transactions<T: ModelTarget>(test: &str, cfg: T::Config) {
    let mut runner = Runner::<T>::new(test, cfg);
    runner.run_random(ops_budget(TXN_SHARE), false, 150);
    println!("{}", runner.summary(test));
}

fn random_one_ops<T: ModelTarget>(test: &str, cfg: T::Config) {
    let mut runner = Runner::<T>::new(test, cfg);
    runner.run_random(ops_budget(ONE_OP_SHARE), true, 300);
    println!("{}", runner.summary(test));
}

/// Mostly batches in address order of small ops near each other (`Gen::sorted_batch`).
fn sorted_batches<T: ModelTarget>(test: &str, cfg: T::Config) {
    let mut runner = Runner::<T>::new(test, cfg);
    runner.gen.sorted_percent = 70;
    runner.gen.bad_percent = 1;
    runner.run_random(ops_budget(SORTED_SHARE), false, 150);
    println!("{}", runner.summary(test));
}

/// `sorted_batches` with every allocation of each commit failing in turn.
fn sorted_batch_allocation_failures<T: ModelTarget>(test: &str, cfg: T::Config) {
    let mut runner = Runner::<T>::new(test, cfg);
    runner.gen.sorted_percent = 70;
    runner.gen.bad_percent = 1;
    runner.run_alloc_failures(ops_budget(SORTED_ALLOC_SHARE), 60);
    println!("{}", runner.summary(test));
}

fn allocation_failures<T: ModelTarget>(test: &str, cfg: T::Config) {
    let mut runner = Runner::<T>::new(test, cfg);
    // Fewer bad ops: the point is commits that allocate.
    runner.gen.bad_percent = 1;
    runner.run_alloc_failures(ops_budget(ALLOC_SHARE), 60);
    println!("{}", runner.summary(test));
}

/// Every rule the policy-on runs must see refused at least once, and commits accepted.
fn policy_coverage<T: ModelTarget>(test: &str, runner: &Runner<T>) {
    let rules = [
        Rule::NullPage,
        Rule::WriteXorExecute,
        Rule::ExecutableMmio,
        Rule::WritableCode,
        Rule::ExecutableData,
    ];
    for rule in rules {
        assert!(
            runner.stats.refusals.get(&rule).copied().unwrap_or(0) > 0,
            "{test}: no transaction refused for {rule:?}: {:?}",
            runner.stats.refusals
        );
    }
    assert!(
        runner.stats.commits > runner.stats.refusals.values().sum::<u64>(),
        "{test}: more refusals than commits"
    );
}

/// A run on a table with the model's strict policy: `sorted_percent` of the transactions
/// drawn as batches in address order, one-op calls if `one_op_api`.
fn policy_run<T: ModelTarget>(test: &str, cfg: T::Config, sorted_percent: u64, one_op_api: bool) {
    let policy = model_policy(&T::build(cfg, 1));
    let mut runner = Runner::<T>::with_policy(test, cfg, policy);
    runner.gen.sorted_percent = sorted_percent;
    let (share, episode) = match one_op_api {
        true => (POLICY_ONE_OP_SHARE, 300),
        false => (POLICY_TXN_SHARE, 150),
    };
    runner.run_random(ops_budget(share), one_op_api, episode);
    println!("{}", runner.summary(test));
    policy_coverage(test, &runner);
}

fn policy_transactions<T: ModelTarget>(test: &str, cfg: T::Config) {
    policy_run::<T>(test, cfg, 0, false);
}

/// `policy_transactions` with a third of batches in address order (the batch path, which
/// checks the policy on the folded ops first). A third: a sorted batch of up to 40 ops
/// breaks a strict policy more often than not.
fn policy_sorted_batches<T: ModelTarget>(test: &str, cfg: T::Config) {
    policy_run::<T>(test, cfg, 35, false);
}

fn policy_one_ops<T: ModelTarget>(test: &str, cfg: T::Config) {
    policy_run::<T>(test, cfg, 0, true);
}

macro_rules! model_tests {
    ($($name:ident: $driver:ident($target:ty, $cfg:expr);)*) => {
        $(
            #[test]
            fn $name() {
                $driver::<$target>(stringify!($name), $cfg);
            }
        )*
    };
}

model_tests! {
    transactions_x64_4level_1g: random_transactions(X64Target, X64_4L_1G);
    transactions_x64_4level_2m: random_transactions(X64Target, X64_4L_2M);
    transactions_x64_5level_1g: random_transactions(X64Target, X64_5L_1G);
    transactions_x64_5level_2m: random_transactions(X64Target, X64_5L_2M);
    one_op_api_x64_4level_1g: random_one_ops(X64Target, X64_4L_1G);
    one_op_api_x64_4level_2m: random_one_ops(X64Target, X64_4L_2M);
    one_op_api_x64_5level_1g: random_one_ops(X64Target, X64_5L_1G);
    one_op_api_x64_5level_2m: random_one_ops(X64Target, X64_5L_2M);
    allocation_failures_x64_4level_1g: allocation_failures(X64Target, X64_4L_1G);
    allocation_failures_x64_4level_2m: allocation_failures(X64Target, X64_4L_2M);
    allocation_failures_x64_5level_1g: allocation_failures(X64Target, X64_5L_1G);
    allocation_failures_x64_5level_2m: allocation_failures(X64Target, X64_5L_2M);
    transactions_aarch64_3level_1g: random_transactions(Aarch64Target, A64_3L_1G);
    transactions_aarch64_3level_2m: random_transactions(Aarch64Target, A64_3L_2M);
    transactions_aarch64_4level_1g: random_transactions(Aarch64Target, A64_4L_1G);
    transactions_aarch64_4level_2m: random_transactions(Aarch64Target, A64_4L_2M);
    one_op_api_aarch64_3level_1g: random_one_ops(Aarch64Target, A64_3L_1G);
    one_op_api_aarch64_3level_2m: random_one_ops(Aarch64Target, A64_3L_2M);
    one_op_api_aarch64_4level_1g: random_one_ops(Aarch64Target, A64_4L_1G);
    one_op_api_aarch64_4level_2m: random_one_ops(Aarch64Target, A64_4L_2M);
    allocation_failures_aarch64_3level_1g: allocation_failures(Aarch64Target, A64_3L_1G);
    allocation_failures_aarch64_3level_2m: allocation_failures(Aarch64Target, A64_3L_2M);
    allocation_failures_aarch64_4level_1g: allocation_failures(Aarch64Target, A64_4L_1G);
    allocation_failures_aarch64_4level_2m: allocation_failures(Aarch64Target, A64_4L_2M);
    transactions_aarch64_el2_3level_2m: random_transactions(Aarch64Target<El2>, A64_3L_2M);
    transactions_aarch64_el2_4level_1g: random_transactions(Aarch64Target<El2>, A64_4L_1G);
    one_op_api_aarch64_el2_3level_1g: random_one_ops(Aarch64Target<El2>, A64_3L_1G);
    one_op_api_aarch64_el2_4level_2m: random_one_ops(Aarch64Target<El2>, A64_4L_2M);
    allocation_failures_aarch64_el2_3level_1g: allocation_failures(Aarch64Target<El2>, A64_3L_1G);
    allocation_failures_aarch64_el2_4level_2m: allocation_failures(Aarch64Target<El2>, A64_4L_2M);
    sorted_batches_x64_4level_1g: sorted_batches(X64Target, X64_4L_1G);
    sorted_batches_x64_5level_2m: sorted_batches(X64Target, X64_5L_2M);
    sorted_batches_aarch64_3level_1g: sorted_batches(Aarch64Target, A64_3L_1G);
    sorted_batches_aarch64_4level_2m: sorted_batches(Aarch64Target, A64_4L_2M);
    sorted_batches_aarch64_el2_4level_1g: sorted_batches(Aarch64Target<El2>, A64_4L_1G);
    sorted_batch_allocation_failures_x64_4level_2m: sorted_batch_allocation_failures(X64Target, X64_4L_2M);
    sorted_batch_allocation_failures_aarch64_3level_2m: sorted_batch_allocation_failures(Aarch64Target, A64_3L_2M);
    policy_transactions_x64_4level_1g: policy_transactions(X64Target, X64_4L_1G);
    policy_transactions_x64_5level_2m: policy_transactions(X64Target, X64_5L_2M);
    policy_one_op_api_x64_4level_2m: policy_one_ops(X64Target, X64_4L_2M);
    policy_sorted_batches_x64_4level_2m: policy_sorted_batches(X64Target, X64_4L_2M);
    policy_sorted_batches_aarch64_4level_1g: policy_sorted_batches(Aarch64Target, A64_4L_1G);
    policy_transactions_aarch64_3level_1g: policy_transactions(Aarch64Target, A64_3L_1G);
    policy_transactions_aarch64_4level_2m: policy_transactions(Aarch64Target, A64_4L_2M);
    policy_one_op_api_aarch64_4level_1g: policy_one_ops(Aarch64Target, A64_4L_1G);
    policy_transactions_aarch64_el2_4level_1g: policy_transactions(Aarch64Target<El2>, A64_4L_1G);
    policy_one_op_api_aarch64_el2_3level_2m: policy_one_ops(Aarch64Target<El2>, A64_3L_2M);
}

// ------------------------------------------------------------------------------------------
// The model and the calculator on known cases, and a few directed sequences
// ------------------------------------------------------------------------------------------

fn shape(cfg: X64Cfg) -> Shape {
    X64Target::build(cfg, 1).shape()
}

fn model_of(cfg: X64Cfg, ops: &[MOp]) -> Model {
    Model::default()
        .predict::<X64Target>(&shape(cfg), ops)
        .expect("valid ops")
}

#[test]
fn calculator_known_cases() {
    let wb = MA::Writeback;
    let map = |va, size| MOp::Map { va, size, attrs: wb };
    let alias = |va, pa, size| MOp::MapAliased {
        va,
        pa,
        size,
        attrs: wb,
    };
    let s4 = shape(X64_4L_1G);
    let s4m = shape(X64_4L_2M);
    let s5 = shape(X64_5L_1G);
    let count = |cfg, ops: &[MOp]| min_table_pages(&shape(cfg), &model_of(cfg, ops));
    assert_eq!(min_table_pages(&s4, &Model::default()), 1);
    // 2 MiB leaves: root, PDPT, PD.
    assert_eq!(count(X64_4L_1G, &[map(0x20_0000, 0x40_0000)]), 3);
    // One 4 KiB page: root, PDPT, PD, PT (one more level on 5-level).
    assert_eq!(count(X64_4L_1G, &[map(0x1000, 0x1000)]), 4);
    assert_eq!(count(X64_5L_1G, &[map(0x1000, 0x1000)]), 5);
    // A whole GiB: a 1 GiB leaf, or one PD of 2 MiB leaves.
    assert_eq!(count(X64_4L_1G, &[map(GIB, GIB)]), 2);
    assert_eq!(count(X64_4L_2M, &[map(GIB, GIB)]), 3);
    // A GiB aliased 4 KiB off alignment: 512 PTs below one PD.
    assert_eq!(count(X64_4L_1G, &[alias(GIB, GIB + PAGE, GIB)]), 2 + 1 + 512);
    // 2 MiB-aligned but not 1 GiB-aligned: one PD of 2 MiB leaves.
    assert_eq!(count(X64_4L_1G, &[alias(GIB, 3 * MIB2, GIB)]), 3);
    // Across a 1 GiB boundary, one page each side: two PDs, two PTs.
    assert_eq!(count(X64_4L_1G, &[map(GIB - PAGE, 2 * PAGE)]), 1 + 1 + 2 + 2);
    // Two halves of a 2 MiB page with different attributes: a PT.
    let ops = [
        map(0x20_0000, 0x20_0000),
        MOp::Protect {
            va: 0x20_0000,
            size: PAGE,
            attrs: MA::ReadOnly,
        },
    ];
    assert_eq!(count(X64_4L_1G, &ops), 4);
    // Protecting it back merges.
    let mut back = ops.to_vec();
    back.push(MOp::Protect {
        va: 0x20_0000,
        size: PAGE,
        attrs: MA::empty(),
    });
    assert_eq!(count(X64_4L_1G, &back), 3);
    // The high half on its own: root plus one table per level below.
    let high = alias(0xFFFF_8000_0000_0000, 0, 0x20_0000);
    assert_eq!(count(X64_4L_1G, &[high]), 3);
    // Regions never merge across the hole, the model does (in linear space).
    let m = model_of(
        X64_4L_1G,
        &[
            alias(0x0000_7FFF_FFFF_F000, 0x10_0000, PAGE),
            alias(0xFFFF_8000_0000_0000, 0x10_1000, PAGE),
        ],
    );
    assert_eq!(m.len(), 1);
    assert_eq!(m.regions(&s4).len(), 2);
    assert_eq!(min_table_pages(&s4, &m), 1 + 2 * 3);
    let _ = (s4m, s5);
}

#[test]
fn model_predicts_errors() {
    let s = shape(X64_4L_1G);
    let wb = MA::Writeback;
    let m = model_of(
        X64_4L_1G,
        &[MOp::Map {
            va: 0,
            size: 0x4000,
            attrs: wb,
        }],
    );
    let err = |ops: &[MOp]| m.predict::<X64Target>(&s, ops).err().map(|e| e.code());
    let at = |op, error| Some((Some(op), error));
    assert_eq!(
        err(&[MOp::Unmap {
            va: 0x3000,
            size: 0x2000
        }]),
        at(0, PtError::NoMapping)
    );
    assert_eq!(
        err(&[
            MOp::Unmap { va: 0, size: 0x1000 },
            MOp::Protect {
                va: 0,
                size: 0x1000,
                attrs: wb
            }
        ]),
        at(1, PtError::NoMapping)
    );
    assert_eq!(
        err(&[MOp::Unmap {
            va: 0x800,
            size: 0x1000
        }]),
        at(0, PtError::UnalignedAddress)
    );
    assert_eq!(
        err(&[MOp::Unmap { va: 0, size: 0x800 }]),
        at(0, PtError::UnalignedMemoryRange)
    );
    assert_eq!(
        err(&[MOp::Unmap { va: 0, size: 0 }]),
        at(0, PtError::InvalidMemoryRange)
    );
    assert_eq!(
        err(&[MOp::Unmap {
            va: 0xFFFF_FFFF_FFFF_F000,
            size: 0x2000
        }]),
        at(0, PtError::AdditionOverflow)
    );
    assert_eq!(
        err(&[MOp::Unmap {
            va: 0x0000_7FFF_FFFF_F000,
            size: 0x2000
        }]),
        at(0, PtError::InvalidMemoryRange)
    );
    assert_eq!(
        err(&[MOp::Map {
            va: 0xFFFF_8000_0000_0000,
            size: 0x1000,
            attrs: wb
        }]),
        at(0, PtError::InvalidMemoryRange)
    );
    assert_eq!(
        err(&[MOp::Map {
            va: 0,
            size: 0x1000,
            attrs: wb | MA::Uncached
        }]),
        at(0, PtError::IncompatibleMemoryAttributes)
    );
    assert_eq!(
        err(&[MOp::Protect {
            va: 0,
            size: 0x1000,
            attrs: MA::from_bits_retain(0x40)
        }]),
        at(0, PtError::InvalidParameter)
    );
    assert_eq!(
        err(&[MOp::MapAliased {
            va: 0,
            pa: 0x10,
            size: 0x1000,
            attrs: wb
        }]),
        at(0, PtError::UnalignedPageBase)
    );
    // Protect keeps the cache type unless the change names one.
    let p = m
        .predict::<X64Target>(
            &s,
            &[
                MOp::Protect {
                    va: 0,
                    size: 0x1000,
                    attrs: MA::ReadOnly,
                },
                MOp::Protect {
                    va: 0x1000,
                    size: 0x1000,
                    attrs: MA::Uncached | MA::ExecuteProtect,
                },
            ],
        )
        .unwrap();
    assert_eq!(p.lookup(0).unwrap().1, MA::ReadOnly | wb);
    assert_eq!(p.lookup(0x1000).unwrap().1, MA::Uncached | MA::ExecuteProtect);
}

/// Directed: the sequences that must split and merge at 2 MiB and 1 GiB, in every mode.
#[test]
fn directed_split_and_merge() {
    let wb = MA::Writeback;
    for (name, cfg) in [
        ("4l_1g", X64_4L_1G),
        ("4l_2m", X64_4L_2M),
        ("5l_1g", X64_5L_1G),
        ("5l_2m", X64_5L_2M),
    ] {
        let mut r = Runner::<X64Target>::new(&format!("directed_split_and_merge_{name}"), cfg);
        let steps = x64_split_merge_steps();
        for ops in steps {
            assert!(r.step(&ops, false), "directed step failed: {ops:x?}");
        }
        // The last page of the low half and the first of the high half, PA-contiguous and
        // with the same attributes: adjacent in linear space, but two regions.
        let half = r.shape.space() / 2;
        let (low_top, high_bottom) = (r.shape.to_canonical(half - PAGE), r.shape.to_canonical(half));
        let ops = [
            MOp::MapAliased {
                va: low_top,
                pa: 0x10_0000,
                size: PAGE,
                attrs: wb,
            },
            MOp::MapAliased {
                va: high_bottom,
                pa: 0x10_1000,
                size: PAGE,
                attrs: wb,
            },
        ];
        assert!(r.step(&ops, false));
        let regions: Vec<_> = r.target.regions().into_iter().filter(|g| g.pa < 0x20_0000).collect();
        assert_eq!(regions.len(), 2, "{regions:x?}");
        assert_eq!((regions[0].va, regions[1].va), (low_top, high_bottom));
        r.teardown();
    }
}

/// Regression (found by the random tests, fixed in f81b69e): a 2 MiB leaf rewritten
/// entirely by two overlay pieces that do not continue each other (here two protects with
/// different changes) but end up uniform must be one leaf again.
#[test]
fn regression_split_leaf_fully_rewritten_merges() {
    let mut r = Runner::<X64Target>::new("regression_split_leaf_fully_rewritten_merges", X64_4L_1G);
    let wb = MA::Writeback;
    assert!(r.step(
        &[MOp::Map {
            va: 0x20_0000,
            size: 0x20_0000,
            attrs: wb | MA::ReadOnly
        }],
        false
    ));
    assert_eq!(r.target.table_pages(), 3);
    // Both halves become Writeback, read-write: one 2 MiB leaf, still 3 table pages.
    let ops = [
        MOp::Protect {
            va: 0x20_0000,
            size: 0x10_0000,
            attrs: wb,
        },
        MOp::Protect {
            va: 0x30_0000,
            size: 0x10_0000,
            attrs: MA::empty(),
        },
    ];
    r.target.transaction(&ops, false).1.unwrap();
    assert_eq!(r.target.query(0x20_0000, 0x20_0000), Ok(wb));
    assert_eq!(r.target.table_pages(), 3, "the split 2 MiB leaf was not merged back");
}

/// Regression (found by the random tests, fixed in 1ca23a3): an unmap that replaces a whole
/// subtree checked each invalid entry in it only against the overlay piece at the entry's
/// first address, so a NoMapping of an earlier op further into that entry was missed and a
/// later op was blamed.
#[test]
fn regression_unmap_subtree_blames_first_op() {
    let mut r = Runner::<X64Target>::new("regression_unmap_subtree_blames_first_op", X64_4L_1G);
    let wb = MA::Writeback;
    // One page mapped: the 1 GiB entry at 0 is a table.
    assert!(r.step(
        &[MOp::Map {
            va: 0,
            size: PAGE,
            attrs: wb
        }],
        false
    ));
    // Op 0 protects an unmapped page, op 1 unmaps the whole GiB: both fail, op 0 first.
    let ops = [
        MOp::Protect {
            va: 0x20_1000,
            size: PAGE,
            attrs: wb,
        },
        MOp::Unmap { va: 0, size: GIB },
    ];
    let expected = TxnError::at(0, PtError::NoMapping)
        .with_range(0x20_1000, PAGE)
        .with_detail(Reason::NotMapped, 0x20_1000);
    assert_eq!(r.target.transaction(&ops, false).1.err(), Some(expected));
}

/// Regression (same root cause, fixed in 1ca23a3): when the piece at the invalid entry's
/// first page was mapped earlier in the transaction, the rest of that entry was never
/// checked and an unmap of a partly unmapped range succeeded.
#[test]
fn regression_unmap_subtree_detects_no_mapping() {
    let mut r = Runner::<X64Target>::new("regression_unmap_subtree_detects_no_mapping", X64_4L_1G);
    let wb = MA::Writeback;
    // The first GiB mapped except 2 MiB..4 MiB.
    let setup = [
        MOp::Map {
            va: 0,
            size: 0x20_0000,
            attrs: wb,
        },
        MOp::Map {
            va: 0x40_0000,
            size: GIB - 0x40_0000,
            attrs: wb,
        },
    ];
    assert!(r.step(&setup, false));
    // Op 1 unmaps the GiB, but 2 MiB + 4 KiB .. 4 MiB is still unmapped at that point.
    let ops = [
        MOp::Map {
            va: 0x20_0000,
            size: PAGE,
            attrs: wb,
        },
        MOp::Unmap { va: 0, size: GIB },
    ];
    // The first page op 1 finds unmapped is 2 MiB + 4 KiB (op 0 maps 2 MiB).
    let expected = TxnError::at(1, PtError::NoMapping)
        .with_range(0, GIB)
        .with_detail(Reason::NotMapped, 0x20_1000);
    let before = snapshot(r.target.pool());
    assert_eq!(r.target.transaction(&ops, false).1.err(), Some(expected));
    assert!(snapshot(r.target.pool()) == before, "the table changed");
}

// ------------------------------------------------------------------------------------------
// AArch64: the model and the harness's own decoder on known cases, directed sequences
// ------------------------------------------------------------------------------------------

const A64_CONFIGS: [(&str, Aarch64Cfg); 4] = [
    ("3l_1g", A64_3L_1G),
    ("3l_2m", A64_3L_2M),
    ("4l_1g", A64_4L_1G),
    ("4l_2m", A64_4L_2M),
];

fn a64_shape(cfg: Aarch64Cfg) -> Shape {
    <Aarch64Target>::build(cfg, 1).shape()
}

#[test]
fn aarch64_calculator_known_cases() {
    let wb = MA::Writeback;
    let map = |va, size| MOp::Map { va, size, attrs: wb };
    let count = |cfg, ops: &[MOp]| {
        let shape = a64_shape(cfg);
        let model = Model::default()
            .predict::<Aarch64Target>(&shape, ops)
            .expect("valid ops");
        min_table_pages(&shape, &model)
    };
    // A whole GiB: a 1 GiB block in the root (3 levels) or in an L1 table (4 levels), or an
    // L2 table of 2 MiB blocks.
    assert_eq!(count(A64_3L_1G, &[map(GIB, GIB)]), 1);
    assert_eq!(count(A64_3L_2M, &[map(GIB, GIB)]), 2);
    assert_eq!(count(A64_4L_1G, &[map(GIB, GIB)]), 2);
    assert_eq!(count(A64_4L_2M, &[map(GIB, GIB)]), 3);
    // One page: a table per level.
    assert_eq!(count(A64_3L_1G, &[map(PAGE, PAGE)]), 3);
    assert_eq!(count(A64_4L_1G, &[map(PAGE, PAGE)]), 4);
    // Across the middle of the space (no hole on AArch64): one run, one region.
    for (_, cfg) in A64_CONFIGS {
        let shape = a64_shape(cfg);
        let mid = shape.space() / 2;
        let model = Model::default()
            .predict::<Aarch64Target>(&shape, &[map(mid - PAGE, 2 * PAGE)])
            .unwrap();
        assert_eq!(model.regions(&shape).len(), 1);
        assert_eq!(min_table_pages(&shape, &model), 1 + 2 * (shape.levels as usize - 1));
    }
}

/// An error as the model predicts it: the failing op and the familiar code.
type Code = (Option<usize>, PtError);

/// The model's AArch64 errors, each also run against the library through the runner (which
/// asserts that the library returns exactly what the model predicts, table unchanged).
#[test]
fn aarch64_model_predicts_errors() {
    let wb = MA::Writeback;
    let at = |op, error| Some((Some(op), error));
    for (name, cfg) in A64_CONFIGS {
        let mut r = Runner::<Aarch64Target>::new(&format!("aarch64_model_predicts_errors_{name}"), cfg);
        assert!(r.step(
            &[MOp::Map {
                va: 0,
                size: 0x4000,
                attrs: wb
            }],
            false
        ));
        let top = r.shape.space();
        let cases: Vec<(MOp, Option<Code>)> = vec![
            // No cache attribute: AArch64 has no default memory type.
            (
                MOp::Map {
                    va: 0x10_0000,
                    size: PAGE,
                    attrs: MA::ReadOnly,
                },
                at(0, PtError::IncompatibleMemoryAttributes),
            ),
            (
                MOp::MapAliased {
                    va: 0x10_0000,
                    pa: 0x20_0000,
                    size: PAGE,
                    attrs: MA::empty(),
                },
                at(0, PtError::IncompatibleMemoryAttributes),
            ),
            // Unknown bits are checked before the cache count.
            (
                MOp::Map {
                    va: 0x10_0000,
                    size: PAGE,
                    attrs: MA::from_bits_retain(0x8000),
                },
                at(0, PtError::InvalidParameter),
            ),
            (
                MOp::Map {
                    va: 0x10_0000,
                    size: PAGE,
                    attrs: wb | MA::WriteCombining,
                },
                at(0, PtError::IncompatibleMemoryAttributes),
            ),
            // A protect may name no cache type.
            (
                MOp::Protect {
                    va: 0,
                    size: PAGE,
                    attrs: MA::ReadOnly,
                },
                None,
            ),
            (
                MOp::Protect {
                    va: 0,
                    size: PAGE,
                    attrs: MA::Uncached | MA::UncachedExport,
                },
                at(0, PtError::IncompatibleMemoryAttributes),
            ),
            // TTBR0 only: upper bits set, past the top, across the top.
            (
                MOp::Map {
                    va: top,
                    size: PAGE,
                    attrs: wb,
                },
                at(0, PtError::InvalidMemoryRange),
            ),
            (
                MOp::Map {
                    va: top - PAGE,
                    size: 2 * PAGE,
                    attrs: wb,
                },
                at(0, PtError::InvalidMemoryRange),
            ),
            (
                MOp::Unmap {
                    va: 0xFFFF_0000_0000_0000,
                    size: PAGE,
                },
                at(0, PtError::InvalidMemoryRange),
            ),
            (
                MOp::Unmap {
                    va: 1 << 48,
                    size: PAGE,
                },
                at(0, PtError::InvalidMemoryRange),
            ),
            // The last page of the space is fine.
            (
                MOp::MapAliased {
                    va: top - PAGE,
                    pa: 0x1234_5000,
                    size: PAGE,
                    attrs: wb,
                },
                None,
            ),
            // Physical ranges end at 2^48.
            (
                MOp::MapAliased {
                    va: 0x10_0000,
                    pa: (1 << 48) - PAGE,
                    size: 2 * PAGE,
                    attrs: wb,
                },
                at(0, PtError::InvalidMemoryRange),
            ),
            (
                MOp::MapAliased {
                    va: 0x10_0000,
                    pa: (1 << 48) - PAGE,
                    size: PAGE,
                    attrs: wb,
                },
                None,
            ),
        ];
        for (op, want) in cases {
            let got = r
                .model
                .predict::<Aarch64Target>(&r.shape, &[op])
                .err()
                .map(|e| e.code());
            assert_eq!(got, want, "{name}: {op:x?}");
            let ok = r.step(&[op], false);
            assert_eq!(ok, want.is_none());
            let ok = r.step(&[op], true);
            assert_eq!(ok, want.is_none());
        }
        // 1 << 39 is the top of 3-level tables, an ordinary address on 4 levels.
        let op = MOp::Map {
            va: 1 << 39,
            size: PAGE,
            attrs: wb,
        };
        let want = cfg.three_level.then_some((Some(0), PtError::InvalidMemoryRange));
        assert_eq!(
            r.model
                .predict::<Aarch64Target>(&r.shape, &[op])
                .err()
                .map(|e| e.code()),
            want
        );
        assert_eq!(r.step(&[op], false), want.is_none());
        r.teardown();
    }
}

/// Directed: the sequences that must split and merge at 2 MiB and 1 GiB, on 3 and 4
/// levels, plus the top of the space and a run across its middle.
#[test]
fn aarch64_directed_split_and_merge() {
    let wb = MA::Writeback;
    for (name, cfg) in A64_CONFIGS {
        let mut r = Runner::<Aarch64Target>::new(&format!("aarch64_directed_split_and_merge_{name}"), cfg);
        let top = r.shape.space();
        let steps = aarch64_split_merge_steps(top);
        for ops in steps {
            assert!(r.step(&ops, false), "directed step failed: {ops:x?}");
        }
        assert_eq!(r.target.query(0x40_0000, MIB2), Ok(MA::WriteThrough));
        // Across the middle of the space: one region (there is no hole to split it).
        let mid = top / 2;
        let ops = [MOp::MapAliased {
            va: mid - PAGE,
            pa: 0x10_0000,
            size: 2 * PAGE,
            attrs: wb,
        }];
        assert!(r.step(&ops, false));
        let regions: Vec<_> = r.target.regions().into_iter().filter(|g| g.pa == 0x10_0000).collect();
        assert_eq!(regions.len(), 1, "{regions:x?}");
        assert_eq!((regions[0].va, regions[0].size), (mid - PAGE, 2 * PAGE));
        r.teardown();
    }
}

/// Negative controls for the harness's AArch64 decoder: single-field corruptions of
/// descriptors the library wrote must be rejected, permission flips accepted.
#[test]
fn aarch64_decoder_rejects_foreign_bits() {
    let wb = MA::Writeback;
    let mut r = Runner::<Aarch64Target>::new("aarch64_decoder_rejects_foreign_bits", A64_4L_1G);
    let setup = [
        MOp::Map {
            va: GIB,
            size: GIB,
            attrs: wb,
        },
        MOp::Map {
            va: 0x20_0000,
            size: MIB2,
            attrs: MA::Uncached,
        },
        MOp::Map {
            va: 0x40_0000,
            size: PAGE,
            attrs: MA::WriteCombining | MA::ReadProtect,
        },
        MOp::Map {
            va: 0x40_1000,
            size: PAGE,
            attrs: MA::UncachedExport | MA::ExecuteProtect,
        },
        MOp::Map {
            va: 0x40_2000,
            size: PAGE,
            attrs: MA::WriteProtect | MA::ReadOnly,
        },
    ];
    assert!(r.step(&setup, false));
    let mut leaves = Vec::new();
    let mut tables = Vec::new();
    r.target
        .visit_entries(0, 2 * GIB, &mut |level, _, raw| match r.target.decode(raw, level) {
            Ok(RawEntry::Leaf { .. }) => leaves.push((level, raw)),
            Ok(RawEntry::Table(_)) => tables.push((level, raw)),
            Ok(RawEntry::Invalid) => {}
            Err(e) => panic!("{e}"),
        })
        .unwrap();
    assert_eq!(leaves.len(), 5, "{leaves:x?}");
    assert!(leaves.iter().any(|&(level, _)| level == 2), "a 1 GiB block");
    assert!(leaves.iter().any(|&(level, _)| level == 1), "a 2 MiB block");
    let t = &r.target;
    let rejected = |raw: u64, level: u8| t.decode(raw, level).is_err();
    for &(level, raw) in &leaves {
        let attrs = match t.decode(raw, level).unwrap() {
            RawEntry::Leaf { attrs, .. } => attrs,
            other => panic!("{other:?}"),
        };
        let device = attrs.intersects(MA::Uncached | MA::UncachedExport);
        // NS, AP[1], SH (each bit), AF, nG, RES0 49:48, GP, DBM, Contiguous, PXN or UXN
        // alone, SW 55 (valid <-> ReadProtect marker), SW 57, 58, bits 63:59.
        let mut bits = vec![
            5, 6, 8, 9, 10, 11, 48, 49, 50, 51, 52, 53, 54, 55, 57, 58, 59, 60, 61, 62, 63,
        ];
        // The valid bit alone (a ReadProtect leaf needs SW 55 with it).
        bits.push(0);
        // The type bit: a page at L3 becomes reserved 0b01; a block becomes a "table" with
        // leaf bits.
        bits.push(1);
        // Address bits below the block size.
        if level > 0 {
            bits.extend([12, 20]);
        }
        if level > 1 {
            bits.extend([21, 29]);
        }
        for bit in bits {
            assert!(
                rejected(raw ^ (1 << bit), level),
                "bit {bit} flipped in {raw:#x} (level {level}, {attrs:?}) was accepted"
            );
        }
        // AttrIndx 6 and 7 are never written.
        for index in [6u64, 7] {
            assert!(rejected(raw & !(7 << 2) | index << 2, level), "AttrIndx {index}");
        }
        // The forced-XN software bit on normal memory; device memory without XN.
        if device {
            assert!(
                rejected(raw & !(3 << 53) & !(1 << 56), level),
                "executable device memory"
            );
        } else {
            assert!(rejected(raw | 1 << 56, level), "forced XN on normal memory");
        }
        // Not above the highest block level, and never a block at L0.
        assert!(rejected(raw & !2, 3), "a block at L0");
        // ReadOnly flips in place; a different page address is just another mapping.
        let flipped = raw ^ (1 << 7);
        match t.decode(flipped, level) {
            Ok(RawEntry::Leaf { attrs: a, .. }) => assert_eq!(a, attrs ^ MA::ReadOnly),
            other => panic!("AP[2] flip of {raw:#x}: {other:?}"),
        }
        assert!(t.decode(raw ^ (1 << 40), level).is_ok());
    }
    // A 1 GiB block where 1 GiB blocks are off.
    let two_mib = <Aarch64Target>::build(A64_4L_2M, 4);
    let &(_, gib_block) = leaves.iter().find(|&&(level, _)| level == 2).unwrap();
    assert!(two_mib.decode(gib_block, 2).is_err());
    // Table descriptors: 0b11 | address and nothing else.
    assert!(!tables.is_empty());
    for &(level, raw) in &tables {
        for bit in [0, 2, 5, 6, 7, 8, 10, 11, 48, 52, 53, 54, 55, 59, 60, 61, 62, 63] {
            assert!(
                rejected(raw ^ (1 << bit), level),
                "bit {bit} flipped in table descriptor {raw:#x} (level {level}) was accepted"
            );
        }
    }
    // Stray bits in an invalid descriptor.
    for level in 0..4 {
        assert!(rejected(1 << 10, level));
        assert!(rejected(2, level));
        assert_eq!(t.decode(0, level), Ok(RawEntry::Invalid));
    }
    r.teardown();
}
