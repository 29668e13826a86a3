//! Probing the live table: the application's own IDT for the probe phase (interrupts off),
//! and probe routines that load, write (a locked read-modify-write that stores the value it
//! read) or execute (a call to a `ret` byte found in the page) at an address and report
//! whether the CPU faulted, with the #PF error code and CR2.
//!
//! Every vector of the IDT goes to one handler. A fault inside a probe routine resumes at
//! the routine's recovery point; any other exception is reported and ends the run.

use core::arch::{asm, global_asm};
use core::sync::atomic::{AtomicU64, Ordering};

/// Where the handler resumes after a fault in a probe (0: no probe in progress).
#[no_mangle]
static TXP_RECOVER: AtomicU64 = AtomicU64::new(0);
/// RSP saved by the execute probe before its call.
#[no_mangle]
static TXP_SAVED_RSP: AtomicU64 = AtomicU64::new(0);
#[no_mangle]
static TXP_LAST_VECTOR: AtomicU64 = AtomicU64::new(0);
#[no_mangle]
static TXP_LAST_ERROR: AtomicU64 = AtomicU64::new(0);
#[no_mangle]
static TXP_LAST_CR2: AtomicU64 = AtomicU64::new(0);
#[no_mangle]
static TXP_LAST_RIP: AtomicU64 = AtomicU64::new(0);

global_asm!(
    r#"
    .text
    .global txp_probe_read
txp_probe_read:
    lea rax, [rip + 2f]
    mov [rip + TXP_RECOVER], rax
    mov rax, qword ptr [rdi]
    mov qword ptr [rsi], rax
    mov qword ptr [rip + TXP_RECOVER], 0
    xor eax, eax
    ret
2:  mov eax, 1
    ret

    .global txp_probe_write
txp_probe_write:
    lea rax, [rip + 2f]
    mov [rip + TXP_RECOVER], rax
    lock or byte ptr [rdi], 0
    mov qword ptr [rip + TXP_RECOVER], 0
    xor eax, eax
    ret
2:  mov eax, 1
    ret

    .global txp_probe_exec
txp_probe_exec:
    lea rax, [rip + 2f]
    mov [rip + TXP_RECOVER], rax
    mov [rip + TXP_SAVED_RSP], rsp
    call rdi
    mov qword ptr [rip + TXP_RECOVER], 0
    xor eax, eax
    ret
2:  mov rsp, [rip + TXP_SAVED_RSP]
    mov eax, 1
    ret

    .balign 16
    .global txp_isr_stubs
txp_isr_stubs:
    .set vector, 0
    .rept 256
    .balign 16
    .if (vector == 8) || ((vector >= 10) && (vector <= 14)) || (vector == 17) || (vector == 21) || (vector == 29) || (vector == 30)
    push vector
    .else
    push 0
    push vector
    .endif
    jmp txp_isr_common
    .set vector, vector + 1
    .endr

txp_isr_common:
    push rax
    mov rax, [rsp + 8]
    mov [rip + TXP_LAST_VECTOR], rax
    mov rax, [rsp + 16]
    mov [rip + TXP_LAST_ERROR], rax
    mov rax, cr2
    mov [rip + TXP_LAST_CR2], rax
    mov rax, [rsp + 24]
    mov [rip + TXP_LAST_RIP], rax
    mov rax, [rip + TXP_RECOVER]
    test rax, rax
    jz 3f
    mov [rsp + 24], rax
    mov qword ptr [rip + TXP_RECOVER], 0
    pop rax
    add rsp, 16
    iretq
3:  and rsp, -16
    call txp_unexpected_exception
4:  hlt
    jmp 4b
"#
);

extern "sysv64" {
    fn txp_probe_read(va: u64, out: *mut u64) -> u64;
    fn txp_probe_write(va: u64) -> u64;
    fn txp_probe_exec(va: u64) -> u64;
    static txp_isr_stubs: u8;
}

/// Called by the handler for an exception outside a probe: reports it and ends the run.
#[no_mangle]
extern "sysv64" fn txp_unexpected_exception() -> ! {
    crate::txp!(
        "FATAL exception vector={} error={:#x} rip={:#x} cr2={:#x}",
        TXP_LAST_VECTOR.load(Ordering::Relaxed),
        TXP_LAST_ERROR.load(Ordering::Relaxed),
        TXP_LAST_RIP.load(Ordering::Relaxed),
        TXP_LAST_CR2.load(Ordering::Relaxed)
    );
    super::cpu::qemu_exit(3)
}

use crate::probes::Outcome;

/// The outcome of the fault the handler just recorded: a #PF's error code bits P, W/R and
/// I/D (SDM Vol. 3A, 4.7) are the normalized fault code; anything else is another vector.
fn fault() -> Outcome {
    let vector = TXP_LAST_VECTOR.load(Ordering::Relaxed);
    if vector == 14 {
        Outcome::Fault {
            code: TXP_LAST_ERROR.load(Ordering::Relaxed) & 0x1F,
            address: TXP_LAST_CR2.load(Ordering::Relaxed),
        }
    } else {
        Outcome::Other(vector)
    }
}

/// Loads the qword at `va`.
pub fn read(va: u64) -> Outcome {
    let mut value = 0;
    // SAFETY: the probe phase runs with the application's IDT loaded, so a fault at `va`
    // resumes at the routine's recovery point; the caller only reads pages whose read has no
    // side effect.
    match unsafe { txp_probe_read(va, &mut value) } {
        0 => Outcome::Done(value),
        _ => fault(),
    }
}

/// A locked `or byte [va], 0`: a write access that stores the byte it read.
pub fn write(va: u64) -> Outcome {
    // SAFETY: as for `read`; the store writes back the value it read, atomically, and the
    // caller only writes to RAM.
    match unsafe { txp_probe_write(va) } {
        0 => Outcome::Done(0),
        _ => fault(),
    }
}

/// Calls `va`, which must hold a `ret` byte (0xC3) if it is executable.
pub fn execute(va: u64) -> Outcome {
    // SAFETY: as for `read`; the caller found a `ret` byte at `va`, so if the fetch succeeds
    // the call returns at once, and a fetch fault resumes with RSP restored.
    match unsafe { txp_probe_exec(va) } {
        0 => Outcome::Done(0),
        _ => fault(),
    }
}

#[repr(C, packed)]
struct Idtr {
    limit: u16,
    base: u64,
}

#[repr(C, align(16))]
struct Idt([u64; 512]);

static mut IDT: Idt = Idt([0; 512]);

/// The probe phase: the application's IDT loaded, interrupts masked. Dropping it restores
/// the firmware's IDT and interrupt flag.
pub struct ProbePhase {
    firmware_idt: (u16, u64),
    interrupts: bool,
}

impl ProbePhase {
    pub fn enter() -> Self {
        let interrupts = super::cpu::disable_interrupts();
        let mut firmware = Idtr { limit: 0, base: 0 };
        // SAFETY: SIDT stores 10 bytes into `firmware`.
        unsafe { asm!("sidt [{}]", in(reg) &mut firmware, options(nostack, preserves_flags)) };
        let cs: u64;
        // SAFETY: reading CS has no side effects.
        unsafe { asm!("mov {0:x}, cs", out(reg) cs, options(nomem, nostack, preserves_flags)) };
        let stubs = core::ptr::addr_of!(txp_isr_stubs) as u64;
        // SAFETY: interrupts are masked and no other core uses this IDT; it is filled before
        // LIDT loads it.
        let idt = unsafe { &mut *core::ptr::addr_of_mut!(IDT) };
        for vector in 0..256u64 {
            let handler = stubs + 16 * vector;
            // 64-bit interrupt gate, present, DPL 0 (SDM Vol. 3A, 6.14.1).
            idt.0[2 * vector as usize] =
                (handler & 0xFFFF) | (cs & 0xFFFF) << 16 | 0x8E00u64 << 32 | (handler >> 16 & 0xFFFF) << 48;
            idt.0[2 * vector as usize + 1] = handler >> 32;
        }
        let ours = Idtr {
            limit: (core::mem::size_of::<Idt>() - 1) as u16,
            base: idt as *const Idt as u64,
        };
        // SAFETY: the IDT is complete and lives in a static; interrupts are masked.
        unsafe { asm!("lidt [{}]", in(reg) &ours, options(nostack, preserves_flags)) };
        let (limit, base) = (firmware.limit, firmware.base);
        Self {
            firmware_idt: (limit, base),
            interrupts,
        }
    }
}

impl Drop for ProbePhase {
    fn drop(&mut self) {
        let firmware = Idtr {
            limit: self.firmware_idt.0,
            base: self.firmware_idt.1,
        };
        // SAFETY: restores the IDT the firmware had when the phase began.
        unsafe { asm!("lidt [{}]", in(reg) &firmware, options(nostack, preserves_flags)) };
        super::cpu::restore_interrupts(self.interrupts);
    }
}

/// X64 has no instruction that reports a walk without an access: the probes' accesses and
/// the monitor cross-check cover it.
pub fn translation_matches(_va: u64, _mapping: Option<(u64, u64)>, _access: crate::model::Access) -> Option<bool> {
    None
}
