//! AArch64 system registers of the current Exception level (EL1 or EL2), the PL011 UART,
//! the generic timer, PSCI and semihosting.

use core::arch::asm;

/// The current Exception level (CurrentEL[3:2]).
pub fn current_el() -> u64 {
    let value: u64;
    // SAFETY: reading CurrentEL has no side effects.
    unsafe { asm!("mrs {}, CurrentEL", out(reg) value, options(nomem, nostack, preserves_flags)) };
    (value >> 2) & 3
}

macro_rules! el_register {
    ($read:ident, $write:ident, $el1:literal, $el2:literal) => {
        /// Reads the register of the current Exception level.
        pub fn $read() -> u64 {
            let value: u64;
            if current_el() == 2 {
                // SAFETY: reading a system register of the current EL has no side effects.
                unsafe { asm!(concat!("mrs {}, ", $el2), out(reg) value, options(nomem, nostack, preserves_flags)) };
            } else {
                // SAFETY: as above.
                unsafe { asm!(concat!("mrs {}, ", $el1), out(reg) value, options(nomem, nostack, preserves_flags)) };
            }
            value
        }

        /// Writes the register of the current Exception level, then ISB.
        ///
        /// # Safety
        /// The caller accounts for the new value's effect.
        #[allow(dead_code)]
        pub unsafe fn $write(value: u64) {
            if current_el() == 2 {
                // SAFETY: guaranteed by the caller.
                unsafe { asm!(concat!("msr ", $el2, ", {}"), "isb", in(reg) value, options(nostack, preserves_flags)) };
            } else {
                // SAFETY: guaranteed by the caller.
                unsafe { asm!(concat!("msr ", $el1, ", {}"), "isb", in(reg) value, options(nostack, preserves_flags)) };
            }
        }
    };
}

el_register!(read_mair, write_mair, "mair_el1", "mair_el2");
el_register!(read_tcr, write_tcr, "tcr_el1", "tcr_el2");
el_register!(read_ttbr0, write_ttbr0, "ttbr0_el1", "ttbr0_el2");
el_register!(read_sctlr, write_sctlr, "sctlr_el1", "sctlr_el2");
el_register!(read_vbar, write_vbar, "vbar_el1", "vbar_el2");

/// Invalidates every translation of the current regime on every core, with the barriers
/// around it (Arm ARM D8.14 / K13.5: DSB ISHST, TLBI, DSB ISH, ISB).
pub fn flush_all() {
    if current_el() == 2 {
        // SAFETY: TLB maintenance only drops cached translations.
        unsafe {
            asm!(
                "dsb ishst",
                "tlbi alle2is",
                "dsb ish",
                "isb",
                options(nostack, preserves_flags)
            )
        };
    } else {
        // SAFETY: as above.
        unsafe {
            asm!(
                "dsb ishst",
                "tlbi vmalle1is",
                "dsb ish",
                "isb",
                options(nostack, preserves_flags)
            )
        };
    }
}

/// Masks interrupts (DAIF.I and F) and returns whether IRQs were unmasked.
pub fn disable_interrupts() -> bool {
    let daif: u64;
    // SAFETY: reads DAIF and sets I and F; `restore_interrupts` undoes it.
    unsafe { asm!("mrs {}, daif", "msr daifset, #3", out(reg) daif, options(nomem, nostack, preserves_flags)) };
    daif & (1 << 7) == 0
}

/// Unmasks IRQs and FIQs again if `enabled`.
pub fn restore_interrupts(enabled: bool) {
    if enabled {
        // SAFETY: re-enables what `disable_interrupts` found enabled.
        unsafe { asm!("msr daifclr, #3", options(nomem, nostack, preserves_flags)) };
    }
}

/// Affinity fields of MPIDR_EL1: this core's identity.
pub fn mpidr() -> u64 {
    let value: u64;
    // SAFETY: reading MPIDR_EL1 has no side effects (allowed at EL1 and EL2).
    unsafe { asm!("mrs {}, mpidr_el1", out(reg) value, options(nomem, nostack, preserves_flags)) };
    value & 0xFF_00FF_FFFF
}

/// The virtual counter and its frequency.
pub fn counter() -> u64 {
    let value: u64;
    // SAFETY: reading the counter has no side effects.
    unsafe { asm!("isb", "mrs {}, cntvct_el0", out(reg) value, options(nomem, nostack, preserves_flags)) };
    value
}

/// QEMU virt's PL011 UART (set up by the firmware).
const UART: u64 = 0x0900_0000;
const UART_FR: u64 = UART + 0x18;

pub fn uart_put(byte: u8) {
    // SAFETY: the PL011's flag and data registers, mapped as device memory by the firmware
    // and by every table this application installs; waiting while TXFF is set.
    unsafe {
        while core::ptr::read_volatile(UART_FR as *const u32) & (1 << 5) != 0 {
            core::hint::spin_loop();
        }
        core::ptr::write_volatile(UART as *mut u32, u32::from(byte));
    }
}

pub fn uart_get() -> Option<u8> {
    // SAFETY: as for `uart_put`; reading DR only when RXFE is clear.
    unsafe {
        if core::ptr::read_volatile(UART_FR as *const u32) & (1 << 4) != 0 {
            None
        } else {
            Some(core::ptr::read_volatile(UART as *const u32) as u8)
        }
    }
}

/// A PSCI call through the conduit of the current EL (HVC at EL1, SMC at EL2: QEMU virt
/// with virtualization=on implements PSCI at the SMC conduit).
///
/// # Safety
/// The function and its arguments must be valid PSCI (DEN0022) and their effect accounted for.
pub unsafe fn psci(function: u64, a: u64, b: u64, c: u64) -> i64 {
    let result: i64;
    if current_el() == 2 {
        // SAFETY: guaranteed by the caller.
        unsafe {
            asm!("smc #0", inout("x0") function as i64 => result, inout("x1") a => _, inout("x2") b => _, inout("x3") c => _, options(nostack))
        };
    } else {
        // SAFETY: guaranteed by the caller.
        unsafe {
            asm!("hvc #0", inout("x0") function as i64 => result, inout("x1") a => _, inout("x2") b => _, inout("x3") c => _, options(nostack))
        };
    }
    result
}

/// Ends the run through semihosting SYS_EXIT (QEMU `-semihosting`): QEMU exits with `code`.
pub fn semihosting_exit(code: u64) -> ! {
    // ADP_Stopped_ApplicationExit and the exit code (Arm semihosting, SYS_EXIT on AArch64).
    let block: [u64; 2] = [0x2_0026, code];
    loop {
        // SAFETY: HLT #0xF000 is the semihosting call; QEMU ends the machine.
        unsafe { asm!("hlt #0xf000", in("x0") 0x18u64, in("x1") block.as_ptr(), options(nostack)) };
    }
}
