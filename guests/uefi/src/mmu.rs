//! The application's MMU: txpaging's real one (`X64Mmu`: INVLPG, CR3 or CR4.PGE flush,
//! IA32_PAT, EFER.NXE, CR3 at install; `Aarch64Mmu`: TLBI, DSB, ISB, MAIR/TCR/TTBR0),
//! counted, with a switch that drops every invalidation. The switch exists for the
//! negative controls: with it on, a live change must be seen stale.

use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use txpaging::{Barrier, InstallRequest, Mmu, PtError, Tlb};

/// The counters and the switch, whatever the architecture.
#[derive(Default)]
pub struct MmuState {
    drop_invalidations: AtomicBool,
    pub page_invalidations: AtomicU64,
    pub full_flushes: AtomicU64,
    pub dropped: AtomicU64,
    pub installs: AtomicU64,
}

impl MmuState {
    pub fn set_dropping(&self, dropping: bool) {
        self.drop_invalidations.store(dropping, Ordering::SeqCst);
    }

    fn dropping(&self) -> bool {
        if self.drop_invalidations.load(Ordering::SeqCst) {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            true
        } else {
            false
        }
    }

    pub fn count(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

pub struct AppMmu<M> {
    real: M,
    pub state: MmuState,
}

impl<M> AppMmu<M> {
    pub fn new(real: M) -> Self {
        Self {
            real,
            state: MmuState::default(),
        }
    }
}

impl<M: Tlb> Tlb for AppMmu<M> {
    fn invalidate_page(&self, va: u64) {
        if !self.state.dropping() {
            self.state.page_invalidations.fetch_add(1, Ordering::Relaxed);
            self.real.invalidate_page(va);
        }
    }

    fn invalidate_all(&self) {
        if !self.state.dropping() {
            self.state.full_flushes.fetch_add(1, Ordering::Relaxed);
            self.real.invalidate_all();
        }
    }

    fn barrier(&self, barrier: Barrier) {
        self.real.barrier(barrier);
    }
}

impl<M: Mmu> Mmu for AppMmu<M> {
    fn install(&self, request: &InstallRequest) -> Result<(), PtError> {
        self.state.installs.fetch_add(1, Ordering::Relaxed);
        self.real.install(request)
    }
}
