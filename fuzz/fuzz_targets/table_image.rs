//! Random table images (up to 4 pages, root first) through the plain `from_existing*` of
//! both architectures, then every read API, the audit and a transaction: no panic, no
//! loop, no read outside the sandbox (hostile pointers read a zero page). Input format:
//! `common::decode_image`.
#![no_main]

mod common;

use common::{ImageOp, Sandbox};
use libfuzzer_sys::fuzz_target;
use txpaging::aarch64::El1;
use txpaging::{
    Aarch64Config, Aarch64PageTable, MemoryAttributes as A, PageTable, PagingType, RecordingMmu, X64Config,
    X64PageTable,
};

fuzz_target!(|data: &[u8]| {
    let input = common::decode_image(data);
    let sandbox = Sandbox::new(input.image, input.used);
    if !input.aarch64 {
        // SAFETY: the sandbox turns every physical address into a valid page pointer.
        let opened = unsafe {
            X64PageTable::from_existing_with_mmu(
                0x1000,
                sandbox,
                PagingType::Paging4Level,
                X64Config::default(),
                RecordingMmu::new(),
            )
        };
        if let Ok(mut t) = opened {
            exercise(&mut t, &input.ops, |t, va, size| {
                t.dump_to(&mut String::new(), va, size).map(drop)
            });
            let _ = t.audit(&[(0, 1 << 32, 7)]);
            let _ = t.regions().count();
        }
    } else {
        // SAFETY: as above.
        let opened = unsafe {
            Aarch64PageTable::from_existing_with_regime(
                0x1000,
                sandbox,
                PagingType::Paging4Level,
                Aarch64Config::default(),
                RecordingMmu::new(),
                El1,
            )
        };
        if let Ok(mut t) = opened {
            exercise(&mut t, &input.ops, |t, va, size| {
                t.dump_to(&mut String::new(), va, size).map(drop)
            });
            let _ = t.audit(&[(0, 1 << 32, 7)]);
            let _ = t.regions().count();
        }
    }
});

fn exercise<T: PageTable>(t: &mut T, ops: &[ImageOp], dump: impl Fn(&T, u64, u64) -> Result<(), txpaging::PtError>) {
    for op in ops {
        let (va, size) = op.range();
        let _ = t.query_memory_region(va, size);
        let _ = dump(t, va, size);
        let _ = match op {
            ImageOp::MapWriteback { .. } => t.map_memory_region(va, size, A::Writeback),
            ImageOp::Unmap { .. } => t.unmap_memory_region(va, size),
            ImageOp::MapMmio { .. } => t.map_memory_region(va, size, A::Uncached | A::ExecuteProtect),
        };
    }
}
