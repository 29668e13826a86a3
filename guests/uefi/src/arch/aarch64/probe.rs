//! Probing the live table on AArch64: the application's own vector table at the current EL
//! (VBAR_EL1 or VBAR_EL2) for the probe phase, with IRQs and FIQs masked, and probe routines
//! that load, write (`STSETB` of zero: an atomic write access that stores what it read) or
//! execute (`BLR` to a `RET`) at an address. A data or instruction abort inside a routine
//! resumes at its recovery point; ESR and FAR give the normalized fault.

use core::arch::global_asm;
use core::sync::atomic::{AtomicU64, Ordering};

use super::cpu;
use crate::probes::{Outcome, FAULT_FETCH, FAULT_PRESENT, FAULT_WRITE};

/// What the routines and the handler share, in this order (the asm uses the offsets).
#[repr(C)]
pub struct ProbeState {
    recover: AtomicU64,
    saved_sp: AtomicU64,
    saved_lr: AtomicU64,
    esr: AtomicU64,
    far: AtomicU64,
    elr: AtomicU64,
    vector: AtomicU64,
}

#[no_mangle]
static TXP_STATE: ProbeState = ProbeState {
    recover: AtomicU64::new(0),
    saved_sp: AtomicU64::new(0),
    saved_lr: AtomicU64::new(0),
    esr: AtomicU64::new(0),
    far: AtomicU64::new(0),
    elr: AtomicU64::new(0),
    vector: AtomicU64::new(0),
};

global_asm!(
    r#"
    .arch_extension lse
    .text

    .macro state reg
    adrp \reg, TXP_STATE
    add \reg, \reg, :lo12:TXP_STATE
    .endm

    .global txp_probe_read
txp_probe_read:
    state x9
    adr x10, 1f
    str x10, [x9, #0]
    ldr x10, [x0]
    str x10, [x1]
    str xzr, [x9, #0]
    mov x0, #0
    ret
1:  mov x0, #1
    ret

    .global txp_probe_write
txp_probe_write:
    state x9
    adr x10, 1f
    str x10, [x9, #0]
    stsetb wzr, [x0]
    str xzr, [x9, #0]
    mov x0, #0
    ret
1:  mov x0, #1
    ret

    .global txp_probe_exec
txp_probe_exec:
    state x9
    adr x10, 1f
    str x10, [x9, #0]
    mov x10, sp
    str x10, [x9, #8]
    str x30, [x9, #16]
    blr x0
    state x9
    ldr x30, [x9, #16]
    str xzr, [x9, #0]
    mov x0, #0
    ret
1:  state x9
    ldr x10, [x9, #8]
    mov sp, x10
    ldr x30, [x9, #16]
    mov x0, #1
    ret

    .macro handler el, id
    sub sp, sp, #32
    stp x9, x10, [sp]
    state x9
    mov x10, #\id
    str x10, [x9, #48]
    mrs x10, esr_el\el
    str x10, [x9, #24]
    mrs x10, far_el\el
    str x10, [x9, #32]
    mrs x10, elr_el\el
    str x10, [x9, #40]
    ldr x10, [x9, #0]
    cbz x10, 2f
    msr elr_el\el, x10
    str xzr, [x9, #0]
    ldp x9, x10, [sp]
    add sp, sp, #32
    eret
2:  mov x9, sp
    and x9, x9, #~15
    mov sp, x9
    bl txp_unexpected_exception
3:  wfi
    b 3b
    .endm

    .macro vectors el
    .balign 2048
    .global txp_vectors_el\el
txp_vectors_el\el:
    .set id, 0
    .rept 16
    .balign 128
    handler \el, id
    .set id, id + 1
    .endr
    .endm

    vectors 1
    vectors 2
"#
);

extern "C" {
    fn txp_probe_read(va: u64, out: *mut u64) -> u64;
    fn txp_probe_write(va: u64) -> u64;
    fn txp_probe_exec(va: u64) -> u64;
    static txp_vectors_el1: u8;
    static txp_vectors_el2: u8;
}

/// Called by the handler for an exception outside a probe: reports it and ends the run.
#[no_mangle]
extern "C" fn txp_unexpected_exception() -> ! {
    crate::txp!(
        "FATAL exception vector={} esr={:#x} elr={:#x} far={:#x}",
        TXP_STATE.vector.load(Ordering::Relaxed),
        TXP_STATE.esr.load(Ordering::Relaxed),
        TXP_STATE.elr.load(Ordering::Relaxed),
        TXP_STATE.far.load(Ordering::Relaxed)
    );
    cpu::semihosting_exit(3)
}

/// The outcome of the abort the handler just recorded (Arm ARM D17.2.37 ESR_ELx): a data
/// abort (EC 0x25) or instruction abort (EC 0x21) taken to the current EL with a
/// translation fault (FSC 0b0001LL) or permission fault (0b0011LL) becomes the normalized
/// code (permission, WnR, fetch); anything else is `Other(ESR)`.
fn fault() -> Outcome {
    let esr = TXP_STATE.esr.load(Ordering::Relaxed);
    let far = TXP_STATE.far.load(Ordering::Relaxed);
    let class = esr >> 26 & 0x3F;
    let fsc = esr & 0x3F;
    let kind = match fsc >> 2 {
        0b0001 => 0,
        0b0011 => FAULT_PRESENT,
        _ => return Outcome::Other(esr),
    };
    match class {
        0x25 => Outcome::Fault {
            code: kind | if esr & (1 << 6) != 0 { FAULT_WRITE } else { 0 },
            address: far,
        },
        0x21 => Outcome::Fault {
            code: kind | FAULT_FETCH,
            address: far,
        },
        _ => Outcome::Other(esr),
    }
}

/// Loads the qword at `va`.
pub fn read(va: u64) -> Outcome {
    let mut value = 0;
    // SAFETY: the probe phase has the application's vector table installed, so an abort at
    // `va` resumes at the routine's recovery point; the caller only reads pages whose read
    // has no side effect.
    match unsafe { txp_probe_read(va, &mut value) } {
        0 => Outcome::Done(value),
        _ => fault(),
    }
}

/// An atomic `STSETB` of zero at `va`: a write access that stores the byte it read.
pub fn write(va: u64) -> Outcome {
    // SAFETY: as for `read`; the store writes back the value it read, atomically, and the
    // caller only writes to RAM.
    match unsafe { txp_probe_write(va) } {
        0 => Outcome::Done(0),
        _ => fault(),
    }
}

/// Calls `va`, which must hold a `RET` if it is executable.
pub fn execute(va: u64) -> Outcome {
    // SAFETY: as for `read`; the caller found a `RET` at `va`, so a successful fetch returns
    // at once, and an abort resumes with SP and LR restored.
    match unsafe { txp_probe_exec(va) } {
        0 => Outcome::Done(0),
        _ => fault(),
    }
}

/// The probe phase: the application's vectors at the current EL, IRQs and FIQs masked.
/// Dropping it restores the firmware's VBAR and interrupt mask.
pub struct ProbePhase {
    firmware_vbar: u64,
    interrupts: bool,
}

/// The vector table for the current EL.
pub fn vectors() -> u64 {
    if cpu::current_el() == 2 {
        core::ptr::addr_of!(txp_vectors_el2) as u64
    } else {
        core::ptr::addr_of!(txp_vectors_el1) as u64
    }
}

impl ProbePhase {
    pub fn enter() -> Self {
        let interrupts = cpu::disable_interrupts();
        let firmware_vbar = cpu::read_vbar();
        // SAFETY: the table is 2 KiB aligned (checked) and handles every vector; IRQs and
        // FIQs are masked for the phase.
        unsafe { cpu::write_vbar(vectors()) };
        Self {
            firmware_vbar,
            interrupts,
        }
    }
}

impl Drop for ProbePhase {
    fn drop(&mut self) {
        // SAFETY: restores the firmware's vectors.
        unsafe { cpu::write_vbar(self.firmware_vbar) };
        cpu::restore_interrupts(self.interrupts);
    }
}

/// `AT S1E1R`/`S1E1W` (or `S1E2R`/`S1E2W` at EL2) of `va`: the stage 1 walk of the current
/// regime, as PAR_EL1 reports it (Arm ARM D17.2.113): `None` when F (bit 0) is set, else the
/// output page address (PA[47:12]) and ATTR (bits 63:56, in MAIR's encoding).
fn address_translate(va: u64, write: bool) -> Option<(u64, u8)> {
    let par: u64;
    let el2 = cpu::current_el() == 2;
    // SAFETY: AT only walks the table and writes PAR_EL1, which nothing else here uses.
    unsafe {
        match (el2, write) {
            (false, false) => {
                core::arch::asm!("at s1e1r, {va}", "isb", "mrs {par}, par_el1", va = in(reg) va, par = out(reg) par, options(nostack, preserves_flags))
            }
            (false, true) => {
                core::arch::asm!("at s1e1w, {va}", "isb", "mrs {par}, par_el1", va = in(reg) va, par = out(reg) par, options(nostack, preserves_flags))
            }
            (true, false) => {
                core::arch::asm!("at s1e2r, {va}", "isb", "mrs {par}, par_el1", va = in(reg) va, par = out(reg) par, options(nostack, preserves_flags))
            }
            (true, true) => {
                core::arch::asm!("at s1e2w, {va}", "isb", "mrs {par}, par_el1", va = in(reg) va, par = out(reg) par, options(nostack, preserves_flags))
            }
        }
    }
    (par & 1 == 0).then_some((par & 0x0000_FFFF_FFFF_F000, (par >> 56) as u8))
}

/// The MAIR byte txpaging's layout gives a cache attribute (docs/paging.md, `MAIR_LAYOUT`).
fn mair_byte(attributes: u64) -> u8 {
    use crate::model::uefi_attr;
    match attributes & uefi_attr::CACHE {
        uefi_attr::WC => 0x44,
        uefi_attr::WT => 0xBB,
        uefi_attr::WB => 0xFF,
        uefi_attr::WP => 0xAA,
        _ => 0x00,
    }
}

/// Whether the hardware walk (AT, PAR) agrees with the model at page `va`: present and
/// writable as expected, to the expected output page, with the expected memory type.
/// `None` where the architecture has no such instruction (never, here).
pub fn translation_matches(va: u64, mapping: Option<(u64, u64)>, access: crate::model::Access) -> Option<bool> {
    let read = address_translate(va, false);
    let write = address_translate(va, true);
    let matches = match mapping {
        Some((pa, attributes)) if access.present => {
            read == Some((pa & !0xFFF, mair_byte(attributes))) && write.is_some() == access.writable
        }
        _ => read.is_none() && write.is_none(),
    };
    Some(matches)
}
