//! Translation regimes: the EL1&0 regime (TTBR0_EL1) and the non-VHE EL2 regime
//! (TTBR0_EL2), one zero-sized type each implementing [`Regime`].
//!
//! The two regimes share the VMSAv8-64 descriptor format (Arm ARM D8.3, "Translation table
//! descriptor formats") and this crate's geometry, memory types and break-before-make rules.
//! They differ in what a stage 1 block or page descriptor's upper and lower attributes mean
//! and in the registers that install a table:
//!
//! | | [`El1`] (EL1&0) | [`El2`] (EL2, HCR_EL2.E2H = 0) |
//! |---|---|---|
//! | privilege levels | two (EL1, EL0) | one (EL2) |
//! | bit 54 | UXN: no execution at EL0 | XN: no execution |
//! | bit 53 | PXN: no execution at EL1 | RES0 |
//! | AP\[1\] (bit 6) | EL0 access; 0 here | RES1: written 1 |
//! | nG (bit 11) | ASID-tagged when 1; 0 here | RES0 |
//! | registers | MAIR_EL1, [`tcr_el1`](super::tcr_el1), TTBR0_EL1 (ASID 0) | MAIR_EL2, [`tcr_el2`], TTBR0_EL2 |
//! | TLBI | VAE1IS, VMALLE1IS | VAE2IS, ALLE2IS |
//!
//! Sources (Arm ARM DDI 0487, section numbers of issue J.a, titles because later issues
//! renumber): D8.3.2 ("Block descriptor and Page descriptor formats", the stage 1 upper and
//! lower attributes: bit 53 is PXN "for a translation regime that can support two Exception
//! levels" and RES0 otherwise; bit 54 is UXN there and XN otherwise; nG is RES0 in a regime
//! with one Exception level); D8.4.1.2 ("Data access permissions", the table for a stage 1
//! translation regime that supports one Exception level: AP\[2\] selects read-only, AP\[1\]
//! is RES1); the TCR_EL2 register description (the layout when HCR_EL2.E2H is 0: PS in
//! bits 18:16, bits 31 and 23 RES1); the TLBI VAE2IS and TLBI ALLE2IS descriptions.

use core::fmt::Debug;

use crate::mmu::InstallRequest;

use super::encoding::{tcr, PA_RANGE_48, PXN, UXN};

mod sealed {
    pub trait Sealed {}
}

/// A stage 1 translation regime a table can be built for: [`El1`] or [`El2`].
///
/// Sealed: the descriptor rules of each regime are written out in this crate.
pub trait Regime: sealed::Sealed + Copy + Default + Debug + Send + Sync + 'static {
    /// The Exception level whose registers hold the table (1 or 2).
    const EL: u8;
    /// The regime's name, for messages: "EL1&0" or "EL2".
    const NAME: &'static str;
    /// Bits a leaf sets for `ExecuteProtect` (and device memory): UXN | PXN at EL1&0, XN
    /// (bit 54) at EL2.
    const EXECUTE_NEVER: u64;
    /// The bit that forbids execution at the regime's own privileged level: PXN at EL1&0,
    /// XN at EL2. A decoded leaf is `ExecuteProtect` when it is set.
    const PRIVILEGED_EXECUTE_NEVER: u64;
    /// RES1 bits of a block or page descriptor: none at EL1&0, AP\[1\] (bit 6) at EL2.
    const LEAF_RES1: u64;
    /// Bits of a block or page descriptor that are RES0 in this regime and that the EL1&0
    /// encoding may use: none at EL1&0; PXN (bit 53) and nG (bit 11) at EL2.
    const LEAF_RES0: u64;

    /// The TCR_ELx value for a TTBR0 table translating `va_bits` bits with physical address
    /// size `pa_range` (PARange encoding, capped at 48 bits).
    fn tcr(va_bits: u32, pa_range: u8) -> u64;

    /// What the MMU is asked to program to install a table with these register values.
    fn install_request(mair: u64, tcr: u64, ttbr0: u64) -> InstallRequest;
}

/// The EL1&0 translation regime, TTBR0_EL1: where firmware runs at EL1 (AAVMF under QEMU
/// without `virtualization=on`). The default regime of every AArch64 type.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct El1;

/// The non-VHE EL2 translation regime (HCR_EL2.E2H = 0), TTBR0_EL2: where firmware runs on
/// servers and under QEMU with `virtualization=on`. One privilege level, so one
/// execute-never bit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct El2;

impl sealed::Sealed for El1 {}
impl sealed::Sealed for El2 {}

impl Regime for El1 {
    const EL: u8 = 1;
    const NAME: &'static str = "EL1&0";
    const EXECUTE_NEVER: u64 = UXN | PXN;
    /// PXN decides execution at EL1, where firmware runs; UXN is always written equal.
    const PRIVILEGED_EXECUTE_NEVER: u64 = PXN;
    const LEAF_RES1: u64 = 0;
    const LEAF_RES0: u64 = 0;

    fn tcr(va_bits: u32, pa_range: u8) -> u64 {
        super::encoding::tcr_el1(va_bits, pa_range)
    }

    fn install_request(mair: u64, tcr: u64, ttbr0: u64) -> InstallRequest {
        InstallRequest::Aarch64 { mair, tcr, ttbr0 }
    }
}

/// XN, bit 54 of an EL2 block or page descriptor (the position of UXN at EL1&0).
pub const XN_EL2: u64 = UXN;
/// AP\[1\], bit 6: RES1 in a stage 1 regime with one Exception level (Arm ARM D8.4.1.2).
pub const AP1_RES1_EL2: u64 = 1 << 6;
/// nG, bit 11: RES0 in a regime with one Exception level (Arm ARM D8.3.2).
const NG: u64 = 1 << 11;

impl Regime for El2 {
    const EL: u8 = 2;
    const NAME: &'static str = "EL2";
    /// XN (bit 54) only: bit 53 is RES0 at EL2 (Arm ARM D8.3.2).
    const EXECUTE_NEVER: u64 = XN_EL2;
    const PRIVILEGED_EXECUTE_NEVER: u64 = XN_EL2;
    /// AP\[1\] is RES1 (Arm ARM D8.4.1.2, stage 1 data access permissions for a regime with
    /// one Exception level): written 1, so AP\[2:1\] is 0b01 (read/write) or 0b11 (read-only).
    const LEAF_RES1: u64 = AP1_RES1_EL2;
    const LEAF_RES0: u64 = PXN | NG;

    fn tcr(va_bits: u32, pa_range: u8) -> u64 {
        tcr_el2(va_bits, pa_range)
    }

    fn install_request(mair: u64, tcr: u64, ttbr0: u64) -> InstallRequest {
        InstallRequest::Aarch64El2 { mair, tcr, ttbr0 }
    }
}

/// TCR_EL2 fields when HCR_EL2.E2H is 0 (Arm ARM, TCR_EL2 register description). Bits 15:0
/// (T0SZ, IRGN0, ORGN0, SH0, TG0) are laid out as in TCR_EL1 ([`tcr`]).
pub mod tcr_el2_fields {
    /// PS\[18:16\]: physical address size, PARange encoding (TCR_EL1 calls it IPS, at 34:32).
    pub const PS_SHIFT: u32 = 16;
    /// Bit 23: RES1.
    pub const RES1_23: u64 = 1 << 23;
    /// Bit 31: RES1.
    pub const RES1_31: u64 = 1 << 31;
}

/// The TCR_EL2 value (HCR_EL2.E2H = 0) for a TTBR0_EL2 table translating `va_bits` bits with
/// physical address size `pa_range` (PARange encoding, capped at [`PA_RANGE_48`]): T0SZ =
/// 64 - `va_bits`, 4 KiB granule, walks Inner Shareable Write-Back read/write-allocate (as
/// for EL1), PS = `pa_range`, RES1 bits 31 and 23 set, top byte used (TBI = 0), no hardware
/// AF/dirty management (HA = HD = 0), hierarchical permissions enabled (HPD = 0).
///
/// For 48-bit VAs and PAs it is 0x8085_3510, the value AAVMF programs.
pub const fn tcr_el2(va_bits: u32, pa_range: u8) -> u64 {
    let tsz = (64 - va_bits) as u64;
    let ps = if pa_range > PA_RANGE_48 { PA_RANGE_48 } else { pa_range };
    tsz << tcr::T0SZ_SHIFT
        | tcr::IRGN0_WB_WA
        | tcr::ORGN0_WB_WA
        | tcr::SH0_INNER
        | tcr::TG0_4K
        | (ps as u64) << tcr_el2_fields::PS_SHIFT
        | tcr_el2_fields::RES1_23
        | tcr_el2_fields::RES1_31
}

const _: () = assert!(tcr_el2(48, PA_RANGE_48) == 0x8085_3510);

/// The translation regime of the running code, as `CurrentEL` says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ExceptionLevel {
    /// EL1: the EL1&0 regime ([`El1`]).
    El1,
    /// EL2 with HCR_EL2.E2H = 0: the EL2 regime ([`El2`]).
    El2,
}

impl ExceptionLevel {
    /// The Exception level of the running code: `UnsupportedPagingType` at EL0, EL3, or at EL2
    /// with HCR_EL2.E2H = 1 (the EL2&0 regime, whose descriptors follow the EL1&0 rules and
    /// which this crate does not serve).
    #[cfg(all(target_arch = "aarch64", any(target_os = "none", target_os = "uefi")))]
    pub fn current() -> Result<Self, txpaging_txn::PtError> {
        super::instructions::current_regime()
    }
}
