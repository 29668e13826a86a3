//! Shared by the fuzz targets: a sandboxed page space and table constructors.

#![allow(dead_code)]

use std::cell::RefCell;

use txpaging::aarch64::El1;
use txpaging::{
    Aarch64Config, Aarch64PageTable, PageAllocator, PagePool, PagingType, PtError, RecordingMmu, X64Config,
    X64PageTable,
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
