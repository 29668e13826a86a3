//! Random bytes as MemoryAttributes, addresses and sizes through the familiar API of both
//! architectures: no panic, and a failed call changes nothing. Input format:
//! `common::decode_calls`.
#![no_main]

mod common;

use common::Call;
use libfuzzer_sys::fuzz_target;
use txpaging::{MappedRegion, MemoryAttributes as A, PageTable};

fuzz_target!(|data: &[u8]| {
    let (aarch64, calls) = common::decode_calls(data);
    if !aarch64 {
        let mut t = common::x64(32);
        run(
            &mut t,
            &calls,
            |t| t.regions().collect(),
            |t, va, pa, size, a| t.map_aliased_memory_region(va, pa, size, a),
            |t, va, size, a| t.protect_memory_region(va, size, a),
        );
    } else {
        let mut t = common::a64(32);
        run(
            &mut t,
            &calls,
            |t| t.regions().collect(),
            |t, va, pa, size, a| t.map_aliased_memory_region(va, pa, size, a),
            |t, va, size, a| t.protect_memory_region(va, size, a),
        );
    }
});

type Result = core::result::Result<(), txpaging::PtError>;

fn run<T: PageTable>(
    t: &mut T,
    calls: &[Call],
    regions: impl Fn(&T) -> Vec<MappedRegion>,
    alias: impl Fn(&mut T, u64, u64, u64, A) -> Result,
    protect: impl Fn(&mut T, u64, u64, A) -> Result,
) {
    for &call in calls {
        let before = regions(t);
        let result = match call {
            Call::Map { va, size, attributes } => t.map_memory_region(va, size, attributes),
            Call::Unmap { va, size } => t.unmap_memory_region(va, size),
            Call::Protect { va, size, attributes } => protect(t, va, size, attributes),
            Call::Alias {
                va,
                pa,
                size,
                attributes,
            } => alias(t, va, pa, size, attributes),
            Call::Query { va, size } => t.query_memory_region(va, size).map(drop),
        };
        if result.is_err() {
            assert_eq!(regions(t), before, "a failed call changed the table: {call:x?}");
        }
    }
}
