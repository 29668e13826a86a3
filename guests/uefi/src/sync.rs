//! `critical-section`'s implementation for multi-core UEFI: interrupts masked on this core
//! plus a spinlock owned by one core at a time (by its CPU ID), re-entrant on its owner. The
//! `SharedTable` and the `MappingService` run their sections through it.

use core::sync::atomic::{AtomicU32, Ordering};

use crate::arch;

struct MpCriticalSection;
critical_section::set_impl!(MpCriticalSection);

const NO_OWNER: u32 = u32::MAX;
static OWNER: AtomicU32 = AtomicU32::new(NO_OWNER);
/// Nesting depth; only its owner touches it.
static DEPTH: AtomicU32 = AtomicU32::new(0);

// SAFETY: acquire masks interrupts on this core and takes a spinlock shared by all cores
// (re-entrant for its owner, counted); release undoes both in reverse order, so at most one
// core runs inside a section at a time and a nested section on the owner is harmless.
unsafe impl critical_section::Impl for MpCriticalSection {
    unsafe fn acquire() -> bool {
        let interrupts = arch::disable_interrupts();
        let me = arch::cpu_id();
        if OWNER.load(Ordering::Acquire) == me {
            DEPTH.fetch_add(1, Ordering::Relaxed);
            return interrupts;
        }
        while OWNER
            .compare_exchange_weak(NO_OWNER, me, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            core::hint::spin_loop();
        }
        DEPTH.store(1, Ordering::Relaxed);
        interrupts
    }

    unsafe fn release(interrupts: bool) {
        if DEPTH.fetch_sub(1, Ordering::Relaxed) == 1 {
            OWNER.store(NO_OWNER, Ordering::Release);
        }
        arch::restore_interrupts(interrupts);
    }
}
