//! Random table images (up to 4 pages, root first) through the plain `from_existing*` of
//! both architectures, then every read API, the audit and a transaction: no panic, no
//! loop, no read outside the sandbox (hostile pointers read a zero page).
#![no_main]

mod common;

use common::{Bytes, Sandbox};
use libfuzzer_sys::fuzz_target;
use txpaging::aarch64::El1;
use txpaging::{
    Aarch64Config, Aarch64PageTable, MemoryAttributes as A, PageTable, PagingType, RecordingMmu, X64Config,
    X64PageTable,
};

fuzz_target!(|data: &[u8]| {
    let mut bytes = Bytes(data);
    let selector = bytes.u8();
    let used = 1 + usize::from(selector >> 1 & 3);
    let image = &bytes.0[..bytes.0.len().min(used * 4096)];
    let ops = Bytes(&bytes.0[image.len()..]);
    let sandbox = Sandbox::new(image, used);
    if selector & 1 == 0 {
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
            exercise(&mut t, ops, |t, va, size| {
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
            exercise(&mut t, ops, |t, va, size| {
                t.dump_to(&mut String::new(), va, size).map(drop)
            });
            let _ = t.audit(&[(0, 1 << 32, 7)]);
            let _ = t.regions().count();
        }
    }
});

fn exercise<T: PageTable>(t: &mut T, mut ops: Bytes<'_>, dump: impl Fn(&T, u64, u64) -> Result<(), txpaging::PtError>) {
    while !ops.is_empty() {
        let kind = ops.u8();
        let va = ops.u64() & 0x0000_7FFF_FFFF_F000;
        let size = (u64::from(ops.u8()) + 1) * 0x1000;
        let _ = t.query_memory_region(va, size);
        let _ = dump(t, va, size);
        let _ = match kind % 3 {
            0 => t.map_memory_region(va, size, A::Writeback),
            1 => t.unmap_memory_region(va, size),
            _ => t.map_memory_region(va, size, A::Uncached | A::ExecuteProtect),
        };
    }
}
