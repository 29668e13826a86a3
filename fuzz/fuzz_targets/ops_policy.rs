//! Random transactions on a table with a strict policy and on a copy without: a commit the
//! policy refuses must be one the copy accepts, with a final state that breaks the named
//! rule at the named address; every other outcome must be the copy's, and the tables stay
//! equal. Both architectures. Input format: `common::decode_txns`.
#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;
use txpaging::{MemoryAttributes as A, Op, Policy, Reason, Rule};

const CODE: (u64, u64) = (0x60_0000, 0x1_0000);

fuzz_target!(|data: &[u8]| {
    let (aarch64, txns) = common::decode_txns(data);
    if aarch64 {
        check(
            txns,
            common::a64,
            |t, p| t.set_policy(p),
            |t, ops| t.transaction().extend(ops.iter().copied()).commit().map(drop),
            |t| t.regions().collect(),
            |t, va| t.translate(va),
        );
    } else {
        check(
            txns,
            common::x64,
            |t, p| t.set_policy(p),
            |t, ops| t.transaction().extend(ops.iter().copied()).commit().map(drop),
            |t| t.regions().collect(),
            |t, va| t.translate(va),
        );
    }
});

fn predicted(va: u64, a: A) -> Option<Rule> {
    if a.contains(A::ReadProtect) {
        return None;
    }
    let (w, x) = (!a.contains(A::ReadOnly), !a.contains(A::ExecuteProtect));
    [
        (va < 0x1000, Rule::NullPage),
        (w && x, Rule::WriteXorExecute),
        (x && a.intersects(A::Uncached | A::UncachedExport), Rule::ExecutableMmio),
        (w && (CODE.0..CODE.0 + CODE.1).contains(&va), Rule::WritableCode),
    ]
    .into_iter()
    .find_map(|(b, r)| b.then_some(r))
}

#[allow(clippy::too_many_arguments)]
fn check<T>(
    txns: Vec<Vec<Op>>,
    make: fn(usize) -> T,
    set_policy: impl Fn(&mut T, Policy) -> Result<(), txpaging::PtError>,
    commit: impl Fn(&mut T, &[Op]) -> Result<(), txpaging::TxnError>,
    regions: impl Fn(&T) -> Vec<txpaging::MappedRegion>,
    translate: impl Fn(&T, u64) -> Option<(u64, A)>,
) {
    let mut with = make(64);
    set_policy(&mut with, Policy::strict().code(CODE.0, CODE.1)).unwrap();
    let mut accepted: Vec<Vec<Op>> = Vec::new();
    for ops in txns {
        let mut model = make(64);
        for txn in &accepted {
            commit(&mut model, txn).unwrap();
        }
        let outcome = commit(&mut with, &ops);
        let expected = commit(&mut model, &ops);
        match (outcome, expected) {
            (Ok(()), Ok(())) => {
                for op in &ops {
                    for va in (op.va()..op.va() + op.size()).step_by(0x1000) {
                        if let Some((_, a)) = translate(&model, va) {
                            assert_eq!(predicted(va, a), None, "accepted, but {va:#x} breaks a rule: {ops:x?}");
                        }
                    }
                }
                accepted.push(ops);
            }
            (Err(e), Ok(())) => {
                let Reason::PolicyViolation { rule } = e.reason else {
                    panic!("{e} but the model accepts {ops:x?}")
                };
                let va = e.address.unwrap();
                let (_, a) = translate(&model, va).expect("the offending page is mapped");
                assert!(
                    predicted(va, a).is_some(),
                    "{rule:?} at {va:#x}, attributes {a:?}: {ops:x?}"
                );
            }
            (Err(e), Err(m)) => assert_eq!(e, m),
            (Ok(()), Err(m)) => panic!("accepted, the model refused with {m}: {ops:x?}"),
        }
        let mut model = make(64);
        for txn in &accepted {
            commit(&mut model, txn).unwrap();
        }
        assert_eq!(regions(&with), regions(&model));
    }
}
