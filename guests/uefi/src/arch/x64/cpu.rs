//! The CPU registers the application reads and restores, and port I/O for isa-debug-exit.

use core::arch::asm;

pub const IA32_PAT: u32 = 0x277;
pub const IA32_EFER: u32 = 0xC000_0080;
/// CR0.WP: supervisor writes honour read-only pages (SDM 2.5, 4.6.1).
pub const CR0_WP: u64 = 1 << 16;

pub fn read_cr0() -> u64 {
    let value: u64;
    // SAFETY: reading CR0 has no side effects (CPL 0 in UEFI).
    unsafe { asm!("mov {}, cr0", out(reg) value, options(nomem, nostack, preserves_flags)) };
    value
}

/// # Safety
/// The caller accounts for the new CR0 value's effect.
pub unsafe fn write_cr0(value: u64) {
    // SAFETY: guaranteed by the caller.
    unsafe { asm!("mov cr0, {}", in(reg) value, options(nostack, preserves_flags)) };
}

pub fn read_cr3() -> u64 {
    let value: u64;
    // SAFETY: reading CR3 has no side effects.
    unsafe { asm!("mov {}, cr3", out(reg) value, options(nomem, nostack, preserves_flags)) };
    value
}

/// # Safety
/// `value` must be the root of a table that maps everything the CPU uses next.
pub unsafe fn write_cr3(value: u64) {
    // SAFETY: guaranteed by the caller.
    unsafe { asm!("mov cr3, {}", in(reg) value, options(nostack, preserves_flags)) };
}

pub fn read_cr4() -> u64 {
    let value: u64;
    // SAFETY: reading CR4 has no side effects.
    unsafe { asm!("mov {}, cr4", out(reg) value, options(nomem, nostack, preserves_flags)) };
    value
}

pub fn read_msr(msr: u32) -> u64 {
    let (low, high): (u32, u32);
    // SAFETY: RDMSR of an architectural MSR has no side effects.
    unsafe { asm!("rdmsr", in("ecx") msr, out("eax") low, out("edx") high, options(nomem, nostack, preserves_flags)) };
    u64::from(high) << 32 | u64::from(low)
}

/// # Safety
/// `value` must be valid for `msr`, and its effect accounted for by the caller.
pub unsafe fn write_msr(msr: u32, value: u64) {
    // SAFETY: guaranteed by the caller.
    unsafe {
        asm!("wrmsr", in("ecx") msr, in("eax") value as u32, in("edx") (value >> 32) as u32, options(nostack, preserves_flags))
    };
}

/// Masks interrupts and returns whether they were enabled.
pub fn disable_interrupts() -> bool {
    let flags: u64;
    // SAFETY: reads RFLAGS and clears IF; the caller restores IF with `restore_interrupts`.
    unsafe { asm!("pushfq", "pop {}", "cli", out(reg) flags, options(nomem, preserves_flags)) };
    flags & (1 << 9) != 0
}

/// Sets IF again if `enabled`.
pub fn restore_interrupts(enabled: bool) {
    if enabled {
        // SAFETY: re-enables interrupts that `disable_interrupts` found enabled.
        unsafe { asm!("sti", options(nomem, nostack)) };
    }
}

/// The local APIC ID of this core (CPUID 1, `EBX[31:24]`).
pub fn apic_id() -> u32 {
    let ebx = core::arch::x86_64::__cpuid(1).ebx;
    ebx >> 24
}

/// Reloads CR3 with its own value: drops every non-global translation of this core.
pub fn reload_cr3() {
    // SAFETY: the table stays the same; only cached translations are dropped.
    unsafe { write_cr3(read_cr3()) };
}

pub fn outb(port: u16, value: u8) {
    // SAFETY: used for COM1's data port and isa-debug-exit only.
    unsafe { asm!("out dx, al", in("dx") port, in("al") value, options(nomem, nostack, preserves_flags)) };
}

pub fn inb(port: u16) -> u8 {
    let value: u8;
    // SAFETY: used for COM1's registers only; reading them has no effect beyond the UART.
    unsafe { asm!("in al, dx", in("dx") port, out("al") value, options(nomem, nostack, preserves_flags)) };
    value
}

/// Tells QEMU's isa-debug-exit device (port 0xf4) to exit with status `(code << 1) | 1`.
pub fn qemu_exit(code: u8) -> ! {
    loop {
        // SAFETY: the isa-debug-exit port ends the virtual machine.
        unsafe { asm!("out dx, al", in("dx") 0xf4u16, in("al") code, options(nomem, nostack)) };
        core::hint::spin_loop();
    }
}
