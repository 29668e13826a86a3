//! The real AArch64 MMU at EL1 or EL2: TLBI, DSB, ISB, and installing a table (MAIR_ELx,
//! TCR_ELx, TTBR0_ELx).
//!
//! Compiled on every aarch64 target so it is type-checked there, but only the default on
//! bare-metal and UEFI targets: the instructions need EL1 (EL2 for [`Aarch64Mmu<El2>`]).

use core::arch::asm;
use core::marker::PhantomData;

use txpaging_txn::{Barrier, PtError, Tlb};

use super::encoding::{tlbi_va_operand, PA_RANGE_48};
use super::regime::{El1, El2, ExceptionLevel, Regime};
use crate::mmu::{InstallRequest, Mmu};

/// ID_AA64MMFR0_EL1.TGran4 (bits 31:28) value meaning "4 KiB granule not supported"
/// (0b0000 and 0b0001 both mean supported).
const TGRAN4_NOT_SUPPORTED: u64 = 0b1111;

/// The MMU of the running CPU, for translation regime `R`: the EL1&0 regime by default
/// (TLBI VAE1IS / VMALLE1IS, instructions that trap below EL1), or the EL2 regime
/// ([`El2`]: TLBI VAE2IS / ALLE2IS, UNDEFINED below EL2). [`install`](Mmu::install) refuses
/// to run anywhere but the regime's own Exception level.
#[derive(Debug, Default, Clone, Copy)]
pub struct Aarch64Mmu<R: Regime = El1> {
    _regime: PhantomData<R>,
}

impl Aarch64Mmu {
    /// The MMU of the running CPU, EL1&0 regime.
    pub const fn new() -> Self {
        Self { _regime: PhantomData }
    }
}

impl<R: Regime> Aarch64Mmu<R> {
    /// The MMU of the running CPU for `regime` (`Aarch64Mmu::for_regime(El2)`).
    pub const fn for_regime(regime: R) -> Self {
        let _ = regime;
        Self { _regime: PhantomData }
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

/// HCR_EL2.E2H (bit 34): the EL2&0 (VHE) regime when set. Read at EL2 only.
fn hcr_el2_e2h() -> bool {
    let value: u64;
    // SAFETY: reading HCR_EL2 has no side effects; called only at EL2, where it is accessible.
    unsafe { asm!("mrs {}, hcr_el2", out(reg) value, options(nomem, nostack, preserves_flags)) };
    value & (1 << 34) != 0
}

/// The regime of the running code: EL1, or EL2 with E2H = 0; anything else is unsupported.
#[cfg_attr(not(any(target_os = "none", target_os = "uefi")), allow(dead_code))]
pub(crate) fn current_regime() -> Result<ExceptionLevel, PtError> {
    match current_el() {
        1 => Ok(ExceptionLevel::El1),
        2 if !hcr_el2_e2h() => Ok(ExceptionLevel::El2),
        _ => Err(PtError::UnsupportedPagingType),
    }
}

/// Whether the code runs in regime `R`'s own Exception level and regime.
fn in_regime<R: Regime>() -> bool {
    matches!(
        (R::EL, current_regime()),
        (1, Ok(ExceptionLevel::El1)) | (2, Ok(ExceptionLevel::El2))
    )
}

/// MAIR_ELx, TCR_ELx and TTBR0_ELx of the running regime, as read from the CPU: what a
/// table adopted with [`foreign`](super::foreign) was built for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CurrentTranslation {
    /// The running regime.
    pub el: ExceptionLevel,
    /// MAIR_EL1 or MAIR_EL2.
    pub mair: u64,
    /// TCR_EL1 or TCR_EL2.
    pub tcr: u64,
    /// TTBR0_EL1 or TTBR0_EL2.
    pub ttbr0: u64,
}

impl CurrentTranslation {
    /// Reads the registers of the running regime (`UnsupportedPagingType` where
    /// [`ExceptionLevel::current`] fails).
    pub fn read() -> Result<Self, PtError> {
        let el = current_regime()?;
        let (mair, tcr, ttbr0): (u64, u64, u64);
        // SAFETY: reading the translation registers of the current regime has no side
        // effects and is allowed at that Exception level (checked just above).
        unsafe {
            match el {
                ExceptionLevel::El1 => asm!(
                    "mrs {0}, mair_el1", "mrs {1}, tcr_el1", "mrs {2}, ttbr0_el1",
                    out(reg) mair, out(reg) tcr, out(reg) ttbr0,
                    options(nomem, nostack, preserves_flags)
                ),
                ExceptionLevel::El2 => asm!(
                    "mrs {0}, mair_el2", "mrs {1}, tcr_el2", "mrs {2}, ttbr0_el2",
                    out(reg) mair, out(reg) tcr, out(reg) ttbr0,
                    options(nomem, nostack, preserves_flags)
                ),
            }
        }
        Ok(Self { el, mair, tcr, ttbr0 })
    }

    /// The root and paging type of the table in use
    /// ([`table_of_registers`](super::foreign::table_of_registers)).
    pub fn table(&self) -> Result<(u64, crate::PagingType), super::ForeignTableError> {
        super::foreign::table_of_registers(self.tcr, self.ttbr0)
    }
}

const _: () = assert!(<El2 as Regime>::EL == 2);

/// ID_AA64MMFR0_EL1.PARange, capped at 48 bits (the widest output address the descriptors hold).
#[cfg_attr(not(any(target_os = "none", target_os = "uefi")), allow(dead_code))]
pub(crate) fn pa_range() -> u8 {
    ((id_aa64mmfr0() & 0xF) as u8).min(PA_RANGE_48)
}

impl<R: Regime> Tlb for Aarch64Mmu<R> {
    fn invalidate_page(&self, va: u64) {
        // SAFETY: TLBI only drops cached translations (of every level of the walk for `va`,
        // on every PE of the Inner Shareable domain); it cannot make memory unsafe, and the
        // engine orders it after the table stores with `Barrier::Stores`. VAE2IS takes the
        // same operand (Arm ARM, TLBI VAE2IS: ASID and TTL fields RES0 / 0 here).
        unsafe {
            if R::EL == 2 {
                asm!("tlbi vae2is, {}", in(reg) tlbi_va_operand(va), options(nostack, preserves_flags))
            } else {
                asm!("tlbi vae1is, {}", in(reg) tlbi_va_operand(va), options(nostack, preserves_flags))
            }
        };
    }

    fn invalidate_all(&self) {
        // SAFETY: as above, for every EL1&0 translation of the current VMID (VMALLE1IS) or
        // every EL2 translation (ALLE2IS).
        unsafe {
            if R::EL == 2 {
                asm!("tlbi alle2is", options(nostack, preserves_flags))
            } else {
                asm!("tlbi vmalle1is", options(nostack, preserves_flags))
            }
        };
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

impl<R: Regime> Mmu for Aarch64Mmu<R> {
    /// Programs the request at EL1, or at EL2 for [`Aarch64Mmu<El2>`] (sequence in the
    /// `txpaging::aarch64` documentation). `InvalidParameter` for a request of another
    /// architecture or regime; `UnsupportedPagingType` outside the regime's Exception level
    /// (or at EL2 with HCR_EL2.E2H = 1) or without the 4 KiB granule.
    fn install(&self, request: &InstallRequest) -> Result<(), PtError> {
        let (el2, mair, tcr, ttbr0) = match *request {
            InstallRequest::Aarch64 { mair, tcr, ttbr0 } if R::EL == 1 => (false, mair, tcr, ttbr0),
            InstallRequest::Aarch64El2 { mair, tcr, ttbr0 } if R::EL == 2 => (true, mair, tcr, ttbr0),
            _ => return Err(PtError::InvalidParameter),
        };
        if !in_regime::<R>() || (id_aa64mmfr0() >> 28) & 0xF == TGRAN4_NOT_SUPPORTED {
            return Err(PtError::UnsupportedPagingType);
        }
        if el2 {
            // SAFETY: as below, for the EL2 registers (Arm ARM D8.14, the same DSB/ISB
            // discipline at every Exception level; TLBI ALLE2IS drops every EL2 translation).
            unsafe {
                asm!(
                    "dsb ishst",
                    "msr mair_el2, {mair}",
                    "msr tcr_el2, {tcr}",
                    "msr ttbr0_el2, {ttbr0}",
                    "isb",
                    "tlbi alle2is",
                    "dsb ish",
                    "isb",
                    mair = in(reg) mair,
                    tcr = in(reg) tcr,
                    ttbr0 = in(reg) ttbr0,
                    options(nostack, preserves_flags),
                )
            };
            return Ok(());
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
