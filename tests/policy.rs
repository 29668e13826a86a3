//! The protection policy: each rule accepted and refused, through transactions (`plan` and
//! `commit`), the one-op calls (fast path included) and the shared handle, on X64 and on
//! AArch64 (EL1&0 and EL2). A refusal names the rule, the op and the first offending
//! address, leaves the table bit-for-bit unchanged, and asks the allocator for nothing.
//! A randomized test checks the refusals against a prediction from a table without policy.

use txpaging::aarch64::{El1, El2, Regime};
use txpaging::{
    Aarch64Config, Aarch64PageTable, MappedRegion, MemoryAttributes as MA, Op, PagePool, PageTable, PagingType, Policy,
    PtError, Reason, RecordingMmu, Rule, Rules, SharedTable, TxnError, X64Config, X64PageTable,
};

const KIB4: u64 = 0x1000;

/// Code at 0x60_0000 (64 KiB), data at 0x20_0000 (2 MiB).
fn policy() -> Policy {
    Policy::strict().code(0x60_0000, 0x1_0000).data(0x20_0000, 0x20_0000)
}

/// What both architectures' tables offer the tests.
trait Subject: PageTable {
    fn set_policy(&mut self, policy: Policy) -> Result<(), PtError>;
    fn commit(&mut self, ops: &[Op]) -> Result<(), TxnError>;
    fn plan(&mut self, ops: &[Op]) -> Result<(), TxnError>;
    fn protect(&mut self, va: u64, size: u64, attributes: MA) -> Result<(), PtError>;
    fn last(&self) -> Option<TxnError>;
    fn snapshot(&self) -> Snapshot;
    fn translate(&self, va: u64) -> Option<(u64, MA)>;
}

#[derive(Debug, PartialEq, Eq)]
struct Snapshot {
    pages: Vec<(u64, Vec<u8>)>,
    live: usize,
    allocations: usize,
    regions: Vec<MappedRegion>,
}

fn snapshot_of(pool: &PagePool, regions: Vec<MappedRegion>) -> Snapshot {
    Snapshot {
        pages: pool.live().map(|pa| (pa, pool.page(pa).unwrap().to_vec())).collect(),
        live: pool.live_pages(),
        allocations: pool.allocations(),
        regions,
    }
}

macro_rules! subject {
    ($ty:ty) => {
        impl Subject for $ty {
            fn set_policy(&mut self, policy: Policy) -> Result<(), PtError> {
                <$ty>::set_policy(self, policy)
            }
            fn commit(&mut self, ops: &[Op]) -> Result<(), TxnError> {
                self.transaction()
                    .extend(ops.iter().copied())
                    .commit()
                    .map(|_| ())
            }
            fn plan(&mut self, ops: &[Op]) -> Result<(), TxnError> {
                self.transaction().extend(ops.iter().copied()).plan().map(|_| ())
            }
            fn protect(&mut self, va: u64, size: u64, attributes: MA) -> Result<(), PtError> {
                self.protect_memory_region(va, size, attributes)
            }
            fn last(&self) -> Option<TxnError> {
                self.last_error()
            }
            fn snapshot(&self) -> Snapshot {
                snapshot_of(self.allocator(), self.regions().collect())
            }
            fn translate(&self, va: u64) -> Option<(u64, MA)> {
                <$ty>::translate(self, va)
            }
        }
    };
}

type X64 = X64PageTable<PagePool, RecordingMmu>;
type A64<R> = Aarch64PageTable<PagePool, RecordingMmu, R>;
subject!(X64);
subject!(A64<El1>);
subject!(A64<El2>);

/// 0x20_0000..0x40_0000 write-back, execute-never (one 2 MiB page: data);
/// 0x40_0000..0x40_4000 uncached, execute-never (MMIO, 4 KiB pages); nothing at 0.
fn fill<S: Subject>(mut t: S) -> S {
    t.map_memory_region(0x20_0000, 0x20_0000, MA::Writeback | MA::ExecuteProtect)
        .unwrap();
    t.map_memory_region(0x40_0000, 0x4000, MA::Uncached | MA::ExecuteProtect)
        .unwrap();
    t
}

fn x64() -> X64 {
    fill(
        X64PageTable::with_mmu(
            PagePool::new(64),
            PagingType::Paging4Level,
            X64Config::default(),
            RecordingMmu::new(),
        )
        .unwrap(),
    )
}

fn a64<R: Regime>() -> A64<R>
where
    A64<R>: Subject,
{
    fill(
        Aarch64PageTable::with_regime(
            PagePool::new(64),
            PagingType::Paging4Level,
            Aarch64Config::default(),
            RecordingMmu::new(),
            R::default(),
        )
        .unwrap(),
    )
}

fn map(va: u64, size: u64, attributes: MA) -> Op {
    Op::Map {
        va,
        pa: va,
        size,
        attributes,
    }
}

fn protect(va: u64, size: u64, attributes: MA) -> Op {
    Op::Protect { va, size, attributes }
}

const WB: MA = MA::Writeback;
const UC: MA = MA::Uncached;
const RO: MA = MA::ReadOnly;
const XP: MA = MA::ExecuteProtect;
const RP: MA = MA::ReadProtect;

/// (refused op, rule, first offending address, an accepted op in its place).
fn cases() -> Vec<(Op, Rule, u64, Op)> {
    vec![
        (
            map(0x80_0000, KIB4, WB),
            Rule::WriteXorExecute,
            0x80_0000,
            map(0x80_0000, KIB4, WB | XP),
        ),
        (
            map(0x80_0000, KIB4, WB),
            Rule::WriteXorExecute,
            0x80_0000,
            map(0x80_0000, KIB4, WB | RO),
        ),
        (map(0, 0x2000, WB | XP), Rule::NullPage, 0, map(KIB4, KIB4, WB | XP)),
        (map(0, KIB4, WB | XP), Rule::NullPage, 0, map(0, KIB4, WB | XP | RP)),
        (
            map(0x90_0000, KIB4, UC | RO),
            Rule::ExecutableMmio,
            0x90_0000,
            map(0x90_0000, KIB4, UC | RO | XP),
        ),
        // A protect naming no cache type keeps the page's Uncached: read from the table.
        (
            protect(0x40_1000, KIB4, RO),
            Rule::ExecutableMmio,
            0x40_1000,
            protect(0x40_1000, KIB4, RO | XP),
        ),
        (
            protect(0x40_1000, KIB4, RO),
            Rule::ExecutableMmio,
            0x40_1000,
            protect(0x40_1000, KIB4, RO | WB),
        ),
        (
            map(0x5F_F000, 0x2000, WB | XP),
            Rule::WritableCode,
            0x60_0000,
            map(0x60_0000, 0x1_0000, WB | RO),
        ),
        (
            protect(0x30_0000, KIB4, RO),
            Rule::ExecutableData,
            0x30_0000,
            protect(0x30_0000, KIB4, RO | XP),
        ),
    ]
}

/// Every case, refused with the policy and accepted without it, as the second op of a
/// transaction and as a one-op call.
fn each_rule_is_enforced<S: Subject>(make: impl Fn() -> S) {
    for (bad, rule, address, good) in cases() {
        let what = format!("{bad:?} ({rule:?})");
        let ok = map(0x100_0000, KIB4, WB | XP);
        // Refused: by plan and commit, before any store or allocation.
        let mut t = make();
        t.set_policy(policy()).unwrap();
        let before = t.snapshot();
        let expected = TxnError::at(1, PtError::IncompatibleMemoryAttributes)
            .with_range(bad_va(&bad), bad_size(&bad))
            .with_detail(Reason::PolicyViolation { rule }, address);
        assert_eq!(t.plan(&[ok, bad]), Err(expected), "plan {what}");
        assert_eq!(t.commit(&[ok, bad]), Err(expected), "commit {what}");
        assert_eq!(
            t.snapshot(),
            before,
            "{what}: table changed, a page leaked or was asked for"
        );
        // The one-op call (the fast path when the op stays in one last-level table).
        let code = match bad {
            Op::Map {
                va, size, attributes, ..
            } => t.map_memory_region(va, size, attributes),
            Op::Protect { va, size, attributes } => t.protect(va, size, attributes),
            Op::Unmap { .. } => unreachable!(),
        };
        assert_eq!(code, Err(PtError::IncompatibleMemoryAttributes), "one-op {what}");
        assert_eq!(
            t.last(),
            Some(TxnError {
                op: Some(0),
                ..expected
            }),
            "one-op {what}"
        );
        assert_eq!(t.snapshot(), before, "{what}: one-op call changed the table");
        // Accepted in its place.
        t.commit(&[ok, good])
            .unwrap_or_else(|e| panic!("{good:?} refused: {e}"));
        // Without the policy, the refused op is what the seed API always did.
        let mut t = make();
        t.commit(&[ok, bad])
            .unwrap_or_else(|e| panic!("{what} without policy: {e}"));
    }
}

fn bad_va(op: &Op) -> u64 {
    op.va()
}

fn bad_size(op: &Op) -> u64 {
    op.size()
}

#[test]
fn x64_each_rule_is_refused_before_any_store_and_its_fix_accepted() {
    each_rule_is_enforced(x64);
}

#[test]
fn aarch64_el1_each_rule_is_refused_before_any_store_and_its_fix_accepted() {
    each_rule_is_enforced(a64::<El1>);
}

#[test]
fn aarch64_el2_each_rule_is_refused_before_any_store_and_its_fix_accepted() {
    each_rule_is_enforced(a64::<El2>);
}

#[test]
fn the_error_reads_as_rule_op_and_address() {
    let mut t = x64();
    t.set_policy(policy()).unwrap();
    let error = t.commit(&[map(0x80_0000, 0x2000, WB)]).unwrap_err();
    assert_eq!(
        error.to_string(),
        "op 0 (0x800000, size 0x2000) failed at 0x800000: incompatible memory attributes: the protection \
         policy forbids it: W^X: a present page must be ReadOnly or ExecuteProtect"
    );
}

#[test]
fn a_later_op_that_fixes_an_earlier_one_makes_the_transaction_legal() {
    let mut t = x64();
    t.set_policy(policy()).unwrap();
    // The final state counts, not the steps.
    t.commit(&[map(0x80_0000, 0x2000, WB), protect(0x80_0000, 0x2000, RO)])
        .unwrap();
    assert_eq!(t.query_memory_region(0x80_0000, 0x2000), Ok(WB | RO));
    // Unmapping is always allowed, also over registered code.
    t.commit(&[Op::Unmap {
        va: 0x80_0000,
        size: 0x2000,
    }])
    .unwrap();
}

#[test]
fn the_op_blamed_is_the_last_covering_the_offending_address() {
    let mut t = x64();
    t.set_policy(policy()).unwrap();
    let error = t
        .commit(&[
            map(0x80_0000, 0x4000, WB | XP),
            map(0x90_0000, KIB4, WB | XP),
            protect(0x80_2000, KIB4, WB),
        ])
        .unwrap_err();
    assert_eq!((error.op, error.address), (Some(2), Some(0x80_2000)));
}

#[test]
fn pages_mapped_before_the_policy_are_not_checked_by_unrelated_changes() {
    let mut t = x64();
    t.map_memory_region(0x80_0000, KIB4, WB).unwrap(); // W+X, before the policy
    t.set_policy(policy()).unwrap();
    t.commit(&[map(0x90_0000, KIB4, WB | XP)]).unwrap();
    // Touching it again must fix it.
    assert_eq!(
        t.protect(0x80_0000, KIB4, WB),
        Err(PtError::IncompatibleMemoryAttributes)
    );
    assert_eq!(t.protect(0x80_0000, KIB4, XP), Ok(()));
}

#[test]
fn policy_off_is_the_default_and_can_be_restored() {
    let mut t = x64();
    assert!(t.policy().is_off());
    t.set_policy(Policy::strict()).unwrap();
    assert_eq!(t.policy().rules(), Rules::all());
    t.set_policy(Policy::off()).unwrap();
    t.commit(&[map(0, KIB4, WB)]).unwrap();
}

#[test]
fn a_bad_registered_range_is_refused_and_the_policy_kept() {
    let mut t = x64();
    t.set_policy(Policy::strict()).unwrap();
    assert_eq!(
        t.set_policy(Policy::strict().code(0x1001, KIB4)),
        Err(PtError::UnalignedAddress)
    );
    assert_eq!(*t.policy(), Policy::strict());
}

#[test]
fn the_shared_handle_enforces_its_tables_policy() {
    let shared = SharedTable::new(x64());
    shared.set_policy(policy()).unwrap();
    let error = shared.commit([map(0x80_0000, KIB4, WB)]).unwrap_err();
    assert_eq!(
        error.reason,
        Reason::PolicyViolation {
            rule: Rule::WriteXorExecute
        }
    );
    shared.commit([map(0x80_0000, KIB4, WB | XP)]).unwrap();
}

#[test]
fn a_refused_commit_under_allocation_failure_still_changes_nothing() {
    // The accepted version of a splitting change commits or fails cleanly at every
    // allocation; the refused version never reaches the allocator.
    for fail in 0..4 {
        let mut t = x64();
        t.set_policy(policy()).unwrap();
        let before = t.snapshot();
        t.allocator_mut().fail_at(Some(before.allocations + fail));
        let bad = [protect(0x20_0000, KIB4, RO | XP), map(0x80_0000, KIB4, WB)];
        assert_eq!(
            t.commit(&bad).unwrap_err().reason,
            Reason::PolicyViolation {
                rule: Rule::WriteXorExecute
            }
        );
        assert_eq!(t.snapshot(), before);
        let good = [protect(0x20_0000, KIB4, RO | XP), map(0x80_0000, KIB4, WB | XP)];
        match t.commit(&good) {
            Ok(()) => assert_eq!(t.query_memory_region(0x20_0000, KIB4), Ok(WB | RO | XP)),
            Err(error) => {
                assert_eq!(error.error, PtError::OutOfResources);
                let after = t.snapshot();
                assert_eq!(
                    (after.pages, after.live, after.regions),
                    (before.pages, before.live, before.regions)
                );
            }
        }
    }
}

/// The rule a present page with `attributes` at `va` breaks under [`policy`], by the same
/// order of precedence the engine documents (address first, then rule).
fn predicted_rule(va: u64, attributes: MA) -> Option<Rule> {
    if attributes.contains(RP) {
        return None;
    }
    let writable = !attributes.contains(RO);
    let executable = !attributes.contains(XP);
    let in_code = (0x60_0000..0x61_0000).contains(&va);
    let in_data = (0x20_0000..0x40_0000).contains(&va);
    [
        (va < KIB4, Rule::NullPage),
        (writable && executable, Rule::WriteXorExecute),
        (
            executable && attributes.intersects(UC | MA::UncachedExport),
            Rule::ExecutableMmio,
        ),
        (writable && in_code, Rule::WritableCode),
        (executable && in_data, Rule::ExecutableData),
    ]
    .into_iter()
    .find_map(|(broken, rule)| broken.then_some(rule))
}

/// A small xorshift generator: no dependency, replayable.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn random_op(rng: &mut Rng, aarch64: bool) -> Op {
    // Pages around the NULL page, the data and MMIO ranges, the code range.
    let bases = [0, 0x3F_E000, 0x40_0000, 0x5F_E000, 0x80_0000];
    let va = bases[rng.below(bases.len() as u64) as usize] + rng.below(8) * KIB4;
    let size = (1 + rng.below(4)) * KIB4;
    let caches = [WB, UC, MA::WriteCombining, MA::UncachedExport];
    let access = MA::from_bits_retain(
        [RO, XP, RP]
            .iter()
            .filter(|_| rng.below(3) == 0)
            .fold(0, |bits, a| bits | a.bits()),
    );
    let cache = caches[rng.below(4) as usize];
    match rng.below(4) {
        0 | 1 => map(va, size, cache | access),
        2 => Op::Unmap { va, size },
        _ if aarch64 || rng.below(2) == 0 => protect(va, size, access),
        _ => protect(va, size, access | cache),
    }
}

/// Random transactions on a table with the policy and on a copy without: the copy (the
/// model of the final state) predicts every refusal: the first touched page whose final
/// attributes break a rule, and the last op covering it.
fn refusals_match_the_prediction<S: Subject>(make: impl Fn() -> S, aarch64: bool, seed: u64) {
    let mut rng = Rng(seed);
    let mut with = make();
    with.set_policy(policy()).unwrap();
    let mut accepted: Vec<Vec<Op>> = Vec::new();
    let mut refused = 0;
    for round in 0..400 {
        let ops: Vec<Op> = (0..1 + rng.below(3)).map(|_| random_op(&mut rng, aarch64)).collect();
        // The model: replay the accepted transactions without the policy, then this one.
        let mut model = make();
        for txn in &accepted {
            model.commit(txn).unwrap();
        }
        let outcome = with.commit(&ops);
        let Ok(()) = model.commit(&ops) else {
            assert!(
                outcome.is_err(),
                "round {round}: {ops:x?} accepted, the model refused it"
            );
            assert_ne!(outcome.unwrap_err().error, PtError::IncompatibleMemoryAttributes);
            continue;
        };
        let mut touched: Vec<u64> = ops
            .iter()
            .flat_map(|op| (op.va()..op.va() + op.size()).step_by(KIB4 as usize))
            .collect();
        touched.sort();
        touched.dedup();
        let predicted = touched.iter().find_map(|&va| {
            let (_, attributes) = model.translate(va)?;
            predicted_rule(va, attributes).map(|rule| (rule, va))
        });
        match predicted {
            None => {
                assert_eq!(outcome, Ok(()), "round {round}: {ops:x?}");
                accepted.push(ops);
            }
            Some((rule, va)) => {
                let error = outcome.expect_err(&format!("round {round}: {ops:x?} breaks {rule:?} at {va:#x}"));
                let last = ops.iter().rposition(|op| (op.va()..op.va() + op.size()).contains(&va));
                assert_eq!(
                    (error.reason, error.address, error.op),
                    (Reason::PolicyViolation { rule }, Some(va), last),
                    "round {round}: {ops:x?}"
                );
                refused += 1;
            }
        }
        assert_eq!(
            with.snapshot().regions,
            model_regions(&make, &accepted),
            "round {round}"
        );
    }
    assert!(
        refused > 20 && accepted.len() > 20,
        "{refused} refused, {} accepted",
        accepted.len()
    );
}

fn model_regions<S: Subject>(make: &impl Fn() -> S, accepted: &[Vec<Op>]) -> Vec<MappedRegion> {
    let mut model = make();
    for txn in accepted {
        model.commit(txn).unwrap();
    }
    model.snapshot().regions
}

#[test]
fn x64_random_refusals_match_the_model() {
    refusals_match_the_prediction(x64, false, 0x9E37_79B9_7F4A_7C15);
}

#[test]
fn aarch64_random_refusals_match_the_model() {
    refusals_match_the_prediction(a64::<El1>, true, 0xD1B5_4A32_D192_ED03);
}
