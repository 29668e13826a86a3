//! Shared by the fuzz targets: a sandboxed page space, table constructors, and each
//! target's input format, decoder and encoder side by side.
//!
//! The format lives only here: the targets decode with it, and `tests/fuzz_seeds.rs`
//! (`#[path]`-includes this file) encodes the model tests' scenarios with it into the seed
//! corpus `fuzz/corpus/<target>/seed-*`. For every value an encoder accepts,
//! `decode(encode(x)) == x`; the seed test checks that on every seed.

#![allow(dead_code)]

use std::cell::RefCell;

use txpaging::aarch64::El1;
use txpaging::{
    Aarch64Config, Aarch64PageTable, MemoryAttributes as A, Op, PageAllocator, PagePool, PagingType, PtError,
    RecordingMmu, X64Config, X64PageTable,
};

/// Physical pages 1..=PAGES (0x1000 * k) live in a buffer; every other physical address
/// reads as one shared zero page, so a hostile pointer can never leave the sandbox.
pub const PAGES: usize = 8;

#[repr(C, align(4096))]
pub struct Page(pub [u64; 512]);

pub struct Sandbox {
    pub pages: RefCell<Vec<Page>>,
    pub outside: RefCell<Box<Page>>,
    pub next: usize,
}

impl Sandbox {
    /// The pages filled from `bytes` (zero past its end), none allocatable except the
    /// unused tail.
    pub fn new(bytes: &[u8], used: usize) -> Self {
        let mut pages: Vec<Page> = (0..PAGES).map(|_| Page([0; 512])).collect();
        for (i, chunk) in bytes.chunks(8).take(used * 512).enumerate() {
            let mut raw = [0u8; 8];
            raw[..chunk.len()].copy_from_slice(chunk);
            pages[i / 512].0[i % 512] = u64::from_le_bytes(raw);
        }
        Self {
            pages: RefCell::new(pages),
            outside: RefCell::new(Box::new(Page([0; 512]))),
            next: used,
        }
    }
}

impl PageAllocator for Sandbox {
    fn allocate_page(&mut self, _align: u64, _size: u64) -> Result<u64, PtError> {
        if self.next >= PAGES {
            return Err(PtError::OutOfResources);
        }
        self.pages.borrow_mut()[self.next].0 = [0; 512];
        self.next += 1;
        Ok(0x1000 * self.next as u64)
    }

    fn free_page(&mut self, _address: u64, _size: u64) {}

    fn physical_to_pointer(&self, address: u64) -> *mut u8 {
        let k = address / 0x1000;
        if address % 0x1000 == 0 && (1..=PAGES as u64).contains(&k) {
            self.pages.borrow_mut()[k as usize - 1].0.as_mut_ptr().cast()
        } else {
            self.outside.borrow_mut().0.as_mut_ptr().cast()
        }
    }
}

pub type X64 = X64PageTable<PagePool, RecordingMmu>;
pub type A64 = Aarch64PageTable<PagePool, RecordingMmu, El1>;

pub fn x64(pages: usize) -> X64 {
    X64PageTable::with_mmu(
        PagePool::new(pages),
        PagingType::Paging4Level,
        X64Config::default(),
        RecordingMmu::new(),
    )
    .unwrap()
}

pub fn a64(pages: usize) -> A64 {
    Aarch64PageTable::with_regime(
        PagePool::new(pages),
        PagingType::Paging4Level,
        Aarch64Config::default(),
        RecordingMmu::new(),
        El1,
    )
    .unwrap()
}

/// Reads little-endian integers off the input.
pub struct Bytes<'a>(pub &'a [u8]);

impl Bytes<'_> {
    pub fn u8(&mut self) -> u8 {
        match self.0.split_first() {
            Some((&b, rest)) => {
                self.0 = rest;
                b
            }
            None => 0,
        }
    }
    pub fn u64(&mut self) -> u64 {
        (0..8).fold(0, |v, i| v | u64::from(self.u8()) << (8 * i))
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Writes little-endian integers: the inverse of [`Bytes`].
#[derive(Debug, Default)]
pub struct Out(pub Vec<u8>);

impl Out {
    pub fn u8(&mut self, value: u8) {
        self.0.push(value);
    }
    pub fn u64(&mut self, value: u64) {
        self.0.extend_from_slice(&value.to_le_bytes());
    }
}

// ------------------------------------------------------------------------------------------
// familiar_api: `[arch] call*`
//
// arch: bit 0 clear = X64, set = AArch64 (4-level tables of 32 pool pages).
// call: `kind` byte; `kind % 5` is map, unmap, protect, aliased map, query. Narrow (bit 7
// clear): `va` byte (pages), `size` byte (pages), attributes u64 masked to 0x2_700F, alias
// output `va ^ 0x10_0000`. Wide (bit 7 set): `va` u64, `size` u64, attributes u64, and for
// an aliased map the output u64.
// ------------------------------------------------------------------------------------------

/// A familiar-API call of `familiar_api`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Call {
    Map { va: u64, size: u64, attributes: A },
    Unmap { va: u64, size: u64 },
    Protect { va: u64, size: u64, attributes: A },
    Alias { va: u64, pa: u64, size: u64, attributes: A },
    Query { va: u64, size: u64 },
}

/// Attribute bits a narrow call can carry.
pub const NARROW_ATTRIBUTES: u64 = 0x2_700F;

/// Wide sizes below 2^62 are reduced to at most this (modulo `WIDE_SIZE_CAP + 1`). The
/// planner records every store before it allocates, so a map needing millions of 4 KiB
/// entries takes time and memory in proportion (found by `familiar_api`: 184 GiB aliased
/// 1 MiB off alignment, ~48M stores, out of memory; see docs/verification.md). 1 GiB keeps
/// the model tests' whole-GiB ops of one GiB; larger sizes (2^62 and up) still reach the
/// range checks.
pub const WIDE_SIZE_CAP: u64 = 1 << 30;

impl Call {
    fn kind(&self) -> u8 {
        match self {
            Call::Map { .. } => 0,
            Call::Unmap { .. } => 1,
            Call::Protect { .. } => 2,
            Call::Alias { .. } => 3,
            Call::Query { .. } => 4,
        }
    }

    fn parts(&self) -> (u64, u64, A) {
        match *self {
            Call::Map { va, size, attributes }
            | Call::Protect { va, size, attributes }
            | Call::Alias {
                va, size, attributes, ..
            } => (va, size, attributes),
            Call::Unmap { va, size } | Call::Query { va, size } => (va, size, A::empty()),
        }
    }
}

/// Decodes a `familiar_api` input: whether it is for AArch64, and the calls.
pub fn decode_calls(data: &[u8]) -> (bool, Vec<Call>) {
    let mut bytes = Bytes(data);
    let aarch64 = bytes.u8() & 1 == 1;
    let mut calls = Vec::new();
    while !bytes.is_empty() {
        let kind = bytes.u8();
        let wide = kind & 0x80 != 0;
        let va = if wide { bytes.u64() } else { u64::from(bytes.u8()) << 12 };
        let size = if wide {
            let raw = bytes.u64();
            if raw >> 62 == 0 {
                raw % (WIDE_SIZE_CAP + 1)
            } else {
                raw
            }
        } else {
            u64::from(bytes.u8()) << 12
        };
        let attributes = A::from_bits_retain(if wide {
            bytes.u64()
        } else {
            bytes.u64() & NARROW_ATTRIBUTES
        });
        calls.push(match kind % 5 {
            0 => Call::Map { va, size, attributes },
            1 => Call::Unmap { va, size },
            2 => Call::Protect { va, size, attributes },
            3 => Call::Alias {
                va,
                pa: if wide { bytes.u64() } else { va ^ 0x10_0000 },
                size,
                attributes,
            },
            _ => Call::Query { va, size },
        });
    }
    (aarch64, calls)
}

/// Encodes `calls` for `familiar_api`, narrow where the call fits; `None` if a size is one
/// the decoder cannot produce (above `WIDE_SIZE_CAP`, below 2^62).
pub fn encode_calls(aarch64: bool, calls: &[Call]) -> Option<Vec<u8>> {
    let mut out = Out::default();
    out.u8(u8::from(aarch64));
    for call in calls {
        let (va, size, attributes) = call.parts();
        let small = |v: u64| v % 0x1000 == 0 && v >> 12 <= 0xFF;
        let alias_narrow = match *call {
            Call::Alias { va, pa, .. } => pa == va ^ 0x10_0000,
            _ => true,
        };
        let narrow = small(va) && small(size) && attributes.bits() & !NARROW_ATTRIBUTES == 0 && alias_narrow;
        if narrow {
            out.u8(call.kind());
            out.u8((va >> 12) as u8);
            out.u8((size >> 12) as u8);
            out.u64(attributes.bits());
        } else {
            if size >> 62 == 0 && size > WIDE_SIZE_CAP {
                return None;
            }
            // The first byte with bit 7 set whose remainder mod 5 is the call's kind.
            out.u8((0x80..=0xFF)
                .find(|b| b % 5 == call.kind())
                .expect("every remainder occurs"));
            out.u64(va);
            out.u64(size);
            out.u64(attributes.bits());
            if let Call::Alias { pa, .. } = *call {
                out.u64(pa);
            }
        }
    }
    Some(out.0)
}

// ------------------------------------------------------------------------------------------
// ops_policy: `[arch] (count op{count})*`, at most 16 transactions
//
// arch: bit 0 clear = X64, set = AArch64. count: `1 + byte % 4` ops. op: seven bytes: base
// (`% 4`: 0, 0x3F_E000, 0x5F_E000, 0x80_0000), page offset (`% 8`), size (`1 + byte % 4`
// pages), access (bit 0 ReadProtect, bit 1 ExecuteProtect), ReadOnly (bit 0), cache (`% 4`:
// Writeback, Uncached, WriteCombining, UncachedExport), kind (`% 4`: 0 and 1 identity map
// with the cache and access, 2 unmap, 3 protect: access only on AArch64, access and cache
// on X64).
// ------------------------------------------------------------------------------------------

/// The base addresses an `ops_policy` op can start near.
pub const POLICY_BASES: [u64; 4] = [0, 0x3F_E000, 0x5F_E000, 0x80_0000];
/// The cache types an `ops_policy` op can name.
pub const POLICY_CACHES: [A; 4] = [A::Writeback, A::Uncached, A::WriteCombining, A::UncachedExport];
/// Transactions per `ops_policy` input.
pub const POLICY_MAX_TXNS: usize = 16;

/// Decodes an `ops_policy` input: whether it is for AArch64, and the transactions.
pub fn decode_txns(data: &[u8]) -> (bool, Vec<Vec<Op>>) {
    let mut bytes = Bytes(data);
    let aarch64 = bytes.u8() & 1 == 1;
    let mut txns: Vec<Vec<Op>> = Vec::new();
    while !bytes.is_empty() && txns.len() < POLICY_MAX_TXNS {
        let n = 1 + bytes.u8() % 4;
        txns.push((0..n).map(|_| decode_policy_op(&mut bytes, aarch64)).collect());
    }
    (aarch64, txns)
}

fn decode_policy_op(bytes: &mut Bytes<'_>, aarch64: bool) -> Op {
    let va = POLICY_BASES[usize::from(bytes.u8() % 4)] + u64::from(bytes.u8() % 8) * 0x1000;
    let size = (1 + u64::from(bytes.u8() % 4)) * 0x1000;
    let access = A::from_bits_retain(
        u64::from(bytes.u8() % 8) << 13 & 0x2_6000 | if bytes.u8() & 1 == 1 { A::ReadOnly.bits() } else { 0 },
    );
    let access = access & (A::ReadOnly | A::ExecuteProtect | A::ReadProtect);
    let cache = POLICY_CACHES[usize::from(bytes.u8() % 4)];
    match bytes.u8() % 4 {
        0 | 1 => Op::Map {
            va,
            pa: va,
            size,
            attributes: cache | access,
        },
        2 => Op::Unmap { va, size },
        _ if aarch64 => Op::Protect {
            va,
            size,
            attributes: access,
        },
        _ => Op::Protect {
            va,
            size,
            attributes: access | cache,
        },
    }
}

/// Encodes transactions for `ops_policy`; `None` if one does not fit the format (1 to 4 ops
/// each, at most 16, every op one [`encode_policy_op`] accepts).
pub fn encode_txns(aarch64: bool, txns: &[Vec<Op>]) -> Option<Vec<u8>> {
    if txns.len() > POLICY_MAX_TXNS {
        return None;
    }
    let mut out = Out::default();
    out.u8(u8::from(aarch64));
    for ops in txns {
        if !(1..=4).contains(&ops.len()) {
            return None;
        }
        out.u8(ops.len() as u8 - 1);
        for op in ops {
            out.0.extend_from_slice(&encode_policy_op(op, aarch64)?);
        }
    }
    Some(out.0)
}

/// The seven bytes of one `ops_policy` op, or `None` if the format cannot express it.
pub fn encode_policy_op(op: &Op, aarch64: bool) -> Option<[u8; 7]> {
    let (va, size) = (op.va(), op.size());
    let base = POLICY_BASES
        .iter()
        .rposition(|&b| b <= va && va - b < 8 * 0x1000 && (va - b) % 0x1000 == 0)?;
    let offset = ((va - POLICY_BASES[base]) / 0x1000) as u8;
    if size % 0x1000 != 0 || !(1..=4).contains(&(size / 0x1000)) {
        return None;
    }
    let pages = (size / 0x1000 - 1) as u8;
    let split = |attributes: A| -> Option<(u8, u8, Option<u8>)> {
        let access = attributes & (A::ReadOnly | A::ExecuteProtect | A::ReadProtect);
        let rest = attributes & !access;
        let cache = if rest.is_empty() {
            None
        } else {
            Some(POLICY_CACHES.iter().position(|&c| c == rest)? as u8)
        };
        let bits = u8::from(access.contains(A::ReadProtect)) | u8::from(access.contains(A::ExecuteProtect)) << 1;
        Some((bits, u8::from(access.contains(A::ReadOnly)), cache))
    };
    let (access, read_only, cache, kind) = match *op {
        Op::Map { va, pa, attributes, .. } if pa == va => {
            let (access, read_only, cache) = split(attributes)?;
            (access, read_only, cache?, 0)
        }
        Op::Map { .. } => return None,
        Op::Unmap { .. } => (0, 0, 0, 2),
        Op::Protect { attributes, .. } => {
            let (access, read_only, cache) = split(attributes)?;
            match (aarch64, cache) {
                (true, None) => (access, read_only, 0, 3),
                (false, Some(cache)) => (access, read_only, cache, 3),
                _ => return None,
            }
        }
    };
    Some([base as u8, offset, pages, access, read_only, cache, kind])
}

// ------------------------------------------------------------------------------------------
// table_image: `[selector] image (kind va size)*`
//
// selector: bit 0 clear = X64, set = AArch64 (4-level, root at physical 0x1000); bits 2:1 =
// table pages in the image minus one. image: that many pages (page k at physical 0x1000 * k,
// zero past the input's end). Then ops: `kind` byte (`% 3`: map Writeback, unmap, map
// Uncached | ExecuteProtect), `va` u64 masked to 0x0000_7FFF_FFFF_F000, size byte (`1 +
// byte` pages); each is preceded by a query and a dump of its range.
// ------------------------------------------------------------------------------------------

/// A decoded `table_image` input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageInput<'a> {
    pub aarch64: bool,
    /// Table pages the sandbox fills from `image` (1 to 4).
    pub used: usize,
    pub image: &'a [u8],
    pub ops: Vec<ImageOp>,
}

/// One change `table_image` makes after opening the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageOp {
    MapWriteback { va: u64, size: u64 },
    Unmap { va: u64, size: u64 },
    MapMmio { va: u64, size: u64 },
}

/// The virtual addresses a `table_image` op can name.
pub const IMAGE_VA_MASK: u64 = 0x0000_7FFF_FFFF_F000;

impl ImageOp {
    pub fn range(&self) -> (u64, u64) {
        match *self {
            ImageOp::MapWriteback { va, size } | ImageOp::Unmap { va, size } | ImageOp::MapMmio { va, size } => {
                (va, size)
            }
        }
    }
}

/// Decodes a `table_image` input.
pub fn decode_image(data: &[u8]) -> ImageInput<'_> {
    let mut bytes = Bytes(data);
    let selector = bytes.u8();
    let used = 1 + usize::from(selector >> 1 & 3);
    let image = &bytes.0[..bytes.0.len().min(used * 4096)];
    let mut rest = Bytes(&bytes.0[image.len()..]);
    let mut ops = Vec::new();
    while !rest.is_empty() {
        let kind = rest.u8();
        let va = rest.u64() & IMAGE_VA_MASK;
        let size = (u64::from(rest.u8()) + 1) * 0x1000;
        ops.push(match kind % 3 {
            0 => ImageOp::MapWriteback { va, size },
            1 => ImageOp::Unmap { va, size },
            _ => ImageOp::MapMmio { va, size },
        });
    }
    ImageInput {
        aarch64: selector & 1 == 1,
        used,
        image,
        ops,
    }
}

/// Encodes a `table_image` input; `None` if it does not fit the format (1 to 4 pages, an
/// image no longer than them and exactly as long if ops follow, ops the format can express).
pub fn encode_image(input: &ImageInput<'_>) -> Option<Vec<u8>> {
    if !(1..=4).contains(&input.used) || input.image.len() > input.used * 4096 {
        return None;
    }
    let mut out = Out::default();
    out.u8(u8::from(input.aarch64) | ((input.used - 1) as u8) << 1);
    out.0.extend_from_slice(input.image);
    if input.ops.is_empty() {
        return Some(out.0);
    }
    if input.image.len() != input.used * 4096 {
        return None;
    }
    for op in &input.ops {
        let (va, size) = op.range();
        if va & !IMAGE_VA_MASK != 0 || size % 0x1000 != 0 || !(1..=256).contains(&(size / 0x1000)) {
            return None;
        }
        out.u8(match op {
            ImageOp::MapWriteback { .. } => 0,
            ImageOp::Unmap { .. } => 1,
            ImageOp::MapMmio { .. } => 2,
        });
        out.u64(va);
        out.u8((size / 0x1000 - 1) as u8);
    }
    Some(out.0)
}
