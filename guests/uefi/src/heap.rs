//! The global allocator: UEFI pool memory (through the `uefi` crate's allocator) on the
//! bootstrap processor, and a fixed arena for the APs, which must never call boot services
//! (UEFI 2.10, 7.1; PI's MP services run AP procedures outside them). Arena memory is never
//! reused (a bump allocator: the APs allocate little, once); pool memory freed on an AP is
//! kept rather than returned, since returning it would call boot services there.

use core::alloc::{GlobalAlloc, Layout};
use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicU32, AtomicUsize, Ordering};

const ARENA_SIZE: usize = 256 * 1024;

#[repr(C, align(4096))]
struct Arena(UnsafeCell<[u8; ARENA_SIZE]>);

// SAFETY: every byte of the arena is handed out at most once (`NEXT` only grows, atomically),
// so no two owners share a byte.
unsafe impl Sync for Arena {}

static ARENA: Arena = Arena(UnsafeCell::new([0; ARENA_SIZE]));
static NEXT: AtomicUsize = AtomicUsize::new(0);
/// The BSP's APIC ID (`u32::MAX` until set: everything is the BSP until then).
static BSP: AtomicU32 = AtomicU32::new(u32::MAX);

/// Records the calling CPU as the bootstrap processor.
pub fn set_bsp() {
    BSP.store(crate::arch::cpu_id(), Ordering::SeqCst);
}

fn on_bsp() -> bool {
    let bsp = BSP.load(Ordering::Relaxed);
    bsp == u32::MAX || bsp == crate::arch::cpu_id()
}

fn in_arena(ptr: *mut u8) -> bool {
    let base = ARENA.0.get() as usize;
    (base..base + ARENA_SIZE).contains(&(ptr as usize))
}

pub struct AppAllocator;

// SAFETY: BSP allocations are the `uefi` crate's (sound on the BSP while boot services run);
// AP allocations are disjoint, aligned slices of the arena; deallocation never hands memory
// to anyone else.
unsafe impl GlobalAlloc for AppAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if on_bsp() {
            // SAFETY: forwarded contract, on the BSP.
            return unsafe { uefi::allocator::Allocator.alloc(layout) };
        }
        let base = ARENA.0.get() as usize;
        let mut next = NEXT.load(Ordering::Relaxed);
        loop {
            let start = (base + next).next_multiple_of(layout.align()) - base;
            let end = start + layout.size();
            if end > ARENA_SIZE {
                return core::ptr::null_mut();
            }
            match NEXT.compare_exchange_weak(next, end, Ordering::SeqCst, Ordering::Relaxed) {
                Ok(_) => return (base + start) as *mut u8,
                Err(current) => next = current,
            }
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if !in_arena(ptr) && on_bsp() {
            // SAFETY: forwarded contract: `ptr` came from the `uefi` allocator (not the arena).
            unsafe { uefi::allocator::Allocator.dealloc(ptr, layout) };
        }
    }
}

#[global_allocator]
static ALLOCATOR: AppAllocator = AppAllocator;
