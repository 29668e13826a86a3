//! The real AArch64 MMU at EL1: TLBI, DSB, ISB, and installing a table (MAIR_EL1,
//! TCR_EL1, TTBR0_EL1).
//!
//! Compiled on every aarch64 target so it is type-checked there, but only the default on
//! bare-metal and UEFI targets: the instructions need EL1.

use core::arch::asm;

use txpaging_txn::{Barrier, PtError, Tlb};

use super::encoding::{tlbi_va_operand, PA_RANGE_48};
use crate::mmu::{InstallRequest, Mmu};

/// ID_AA64MMFR0_EL1.TGran4 (bits 31:28) value meaning "4 KiB granule not supported"
/// (0b0000 and 0b0001 both mean supported).
const TGRAN4_NOT_SUPPORTED: u64 = 0b1111;

/// The MMU of the running CPU, for the EL1&0 translation regime. Its instructions trap
/// below EL1; [`install`](Mmu::install) refuses to run anywhere but EL1.
#[derive(Debug, Default, Clone, Copy)]
pub struct Aarch64Mmu;

impl Aarch64Mmu {
    /// The MMU of the running CPU.
    pub const fn new() -> Self {
        Self
    }
}

fn id_aa64mmfr0() -> u64 {
    let value: u64;
    // SAFETY: reading an ID register has no side effects; it is readable at EL1 and above,
    // where this type is used (see the type's documentation).
    unsafe { asm!("mrs {}, id_aa64mmfr0_el1", out(reg) value, options(nomem, nostack, preserves_flags)) };
    value
}

/// The exception level this code runs at.
fn current_el() -> u64 {
    let value: u64;
    // SAFETY: reading CurrentEL has no side effects and is allowed at EL1 and above.
    unsafe { asm!("mrs {}, CurrentEL", out(reg) value, options(nomem, nostack, preserves_flags)) };
    (value >> 2) & 3
}

/// ID_AA64MMFR0_EL1.PARange, capped at 48 bits (the widest output address the descriptors hold).
#[cfg_attr(not(any(target_os = "none", target_os = "uefi")), allow(dead_code))]
pub(crate) fn pa_range() -> u8 {
    ((id_aa64mmfr0() & 0xF) as u8).min(PA_RANGE_48)
}

impl Tlb for Aarch64Mmu {
    fn invalidate_page(&self, va: u64) {
        // SAFETY: TLBI only drops cached translations (of every level of the walk for `va`,
        // on every PE of the Inner Shareable domain); it cannot make memory unsafe, and the
        // engine orders it after the table stores with `Barrier::Stores`.
        unsafe { asm!("tlbi vae1is, {}", in(reg) tlbi_va_operand(va), options(nostack, preserves_flags)) };
    }

    fn invalidate_all(&self) {
        // SAFETY: as above, for every EL1&0 translation of the current VMID.
        unsafe { asm!("tlbi vmalle1is", options(nostack, preserves_flags)) };
    }

    fn barrier(&self, barrier: Barrier) {
        // SAFETY: barriers only order and complete earlier accesses and maintenance. Without
        // `nomem` each is also a compiler barrier, so no table store moves across it.
        unsafe {
            match barrier {
                Barrier::Stores => asm!("dsb ishst", options(nostack, preserves_flags)),
                Barrier::Invalidations => asm!("dsb ish", options(nostack, preserves_flags)),
                Barrier::Instructions => asm!("isb", options(nostack, preserves_flags)),
            }
        }
    }
}

impl Mmu for Aarch64Mmu {
    /// Programs the request at EL1 (sequence in the `txpaging::aarch64` documentation).
    /// `InvalidParameter` for a request of another architecture; `UnsupportedPagingType`
    /// outside EL1 or without the 4 KiB granule.
    fn install(&self, request: &InstallRequest) -> Result<(), PtError> {
        let InstallRequest::Aarch64 { mair, tcr, ttbr0 } = *request else {
            return Err(PtError::InvalidParameter);
        };
        if current_el() != 1 || (id_aa64mmfr0() >> 28) & 0xF == TGRAN4_NOT_SUPPORTED {
            return Err(PtError::UnsupportedPagingType);
        }
        // SAFETY: the MAIR value is the layout the descriptors were encoded for and the TCR
        // value describes this table (granule, size, walk attributes); the caller of
        // `install_page_table` guarantees the table maps the running code, stack and data
        // (the documented contract of `PageTable::install_page_table`). The TLBI after the
        // switch drops everything cached from the previous table or attributes.
        unsafe {
            asm!(
                "dsb ishst",
                "msr mair_el1, {mair}",
                "msr tcr_el1, {tcr}",
                "msr ttbr0_el1, {ttbr0}",
                "isb",
                "tlbi vmalle1is",
                "dsb ish",
                "isb",
                mair = in(reg) mair,
                tcr = in(reg) tcr,
                ttbr0 = in(reg) ttbr0,
                options(nostack, preserves_flags),
            )
        };
        Ok(())
    }
}
