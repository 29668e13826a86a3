// txpaging AArch64 probe guest: installs page tables built by the library on a real
// (emulated) MMU and records what the MMU does for a list of probes.
//
// Contract: /tmp/spec/qemu-spec.md ("QEMU probe harness"), summarised in README.md here and
// in tests/qemu_support/aarch64.rs. The guest never judges a probe: it only records.
//
// Run: qemu-system-aarch64 -M virt,memory-backend=ram -cpu max -m 2G -nographic -no-reboot
//      -nodefaults -semihosting -kernel probe.elf  + RAM file + -device loader (tables, probes)
// -M virt without virtualization=on / secure=on starts an ELF kernel at EL1, MMU off, at
// its entry point, with every DAIF bit set; with virtualization=on it starts it at EL2, and
// the guest then probes the EL2 regime (HCR_EL2.E2H = 0): TTBR0_EL2, AT S1E2R/S1E2W,
// ESR_EL2/FAR_EL2.
//
// Memory (physical):
//   0x4000_0000  RAM base (QEMU may put the DTB here)
//   0x4010_0000  this guest (code, boot tables, stack)
//   PROBES_PA    probe block (0x4800_0000): header + probes, from the host
//   results PA   (from the probe block): results, to the host
//   0x8000_0000  the 1 GiB pattern window (patterns written here, probed through the tables)
//
// Virtual, at EL1: the guest runs from TTBR1, at HIGH + PA for all of RAM [0x4000_0000,
// 0xC000_0000) (T1SZ = 25, 39-bit, two 1 GiB blocks, Normal Write-Back through AttrIndx 7).
// TTBR0 holds only the tables under test once they are installed.
// Virtual, at EL2: the EL2 regime has TTBR0_EL2 only, so the guest runs at EL2_GUEST_VA +
// (PA - RAM_LO) for all of RAM, first through its own boot table, then through the tables
// under test, which must map that 2 GiB the same way (the host maps it with the library, as
// part of the table and of the model: Writeback, read/write, executable).
//
// Registers kept across probes (the exception handler uses x0-x15 only):
//   x19 probe record (VA)        x20 result record (VA)      x21 recovery address
//   x22 1 while a probe access is in flight
//   x23 probe index              x24 probe count N           x25 results area VA (0 = unknown)
//   x26 VA - PA of the guest's own mapping (HIGH at EL1, EL2_OFFSET at EL2)
//   x27 1 while in the exception handler
//   x28 probe block VA           x17 the Exception level (1 or 2)

        .equ HIGH,            0xFFFFFF8000000000   // TTBR1 base for T1SZ = 25
        .equ RAM_LO,          0x40000000
        .equ WINDOW,          0x80000000           // pattern window; host data lives below
        .equ RAM_HI,          0xC0000000           // -m 2G
        .equ PROBES_PA,       0x48000000
        .equ PROBE_MAGIC,     0x3145424F52505854   // "TXPROBE1"
        .equ DONE_MAGIC,      0x21454E4F44505854   // "TXPDONE!"
        .equ RET_INSN,        0xD65F03C0           // ret
        .equ EL2_GUEST_VA,    0x7E00000000         // 504 GiB: inside 39- and 48-bit spaces
        .equ EL2_OFFSET,      (EL2_GUEST_VA - RAM_LO)

        // MAIR_EL1 index the guest takes for its own Write-Back mapping: must be 0 (unused)
        // in the library's MAIR_EL1.
        .equ GUEST_ATTR,      7
        .equ MAIR_BOOT,       0xFF00000000000000   // Attr7 = Normal WB RA/WA, rest Device

        // Block descriptor for the guest's 1 GiB blocks (Arm ARM D8.3): bits 1:0 = 0b01,
        // AttrIndx 7 (bits 4:2), AP = 0b00 (EL1 read/write), SH = 0b11, AF = 1, executable.
        .equ BLOCK,           (1 | (GUEST_ATTR << 2) | (3 << 8) | (1 << 10))

        // EL2 (Arm ARM, the EL2 registers with HCR_EL2.E2H = 0). HCR_EL2: RW (bit 31) only:
        // E2H = 0 (the non-VHE EL2 regime), TGE = 0.
        .equ HCR_EL2_VALUE,   (1 << 31)
        // Boot block descriptor at EL2: as BLOCK, with AP[1] (bit 6) set, RES1 in a regime with
        // one Exception level (D8.4.1.2).
        .equ BLOCK_EL2,       (BLOCK | (1 << 6))
        // TCR_EL2 for the boot table: T0SZ = 25 (walks start at L1), WB RA/WA inner-shareable
        // walks, TG0 4 KiB, PS = 0b101 (48 bits, bits 18:16), RES1 bits 31 and 23; or T0SZ =
        // 16 (walks start at L0) when the library's table has 4 levels. The guest keeps
        // running through TTBR0_EL2 while it switches, so the boot table is walked with the
        // library's T0SZ: a TCR_EL2 write may take effect before the TTBR0_EL2 write.
        .equ TCR_EL2_BOOT,    (TCR_T0 | (5 << 16) | (1 << 23) | (1 << 31))
        .equ TCR_T0_48,       (16 | (1 << 8) | (1 << 10) | (3 << 12))
        .equ TCR_EL2_BOOT_48, (TCR_T0_48 | (5 << 16) | (1 << 23) | (1 << 31))
        // SCTLR_EL2 (E2H = 0): M, C, SA, I, plus the Armv8.0 RES1 bits 4, 5, 11, 16, 18, 22,
        // 23, 28, 29. A = 0, WXN = 0, EE = 0.
        .equ SCTLR_EL2_VALUE, (1 | (1 << 2) | (1 << 3) | (1 << 12) | 0x30C50830)

        // TCR_EL1 for the boot tables: T0SZ = T1SZ = 25 (39 bits, walks start at L1), 4 KiB
        // granules (TG0 = 0b00, TG1 = 0b10), walks Inner/Outer WB RA/WA, Inner Shareable,
        // IPS = 0b101 (48 bits), EPD0 = EPD1 = 0.
        .equ TCR_T0,          (25 | (1 << 8) | (1 << 10) | (3 << 12))
        .equ TCR_T1,          ((25 << 16) | (1 << 24) | (1 << 26) | (3 << 28) | (2 << 30))
        .equ TCR_BOOT,        (TCR_T0 | TCR_T1 | (5 << 32))
        // The TTBR1 fields the guest replaces in the library's TCR_EL1: T1SZ[21:16],
        // EPD1[23], IRGN1[25:24], ORGN1[27:26], SH1[29:28], TG1[31:30].
        .equ TCR_T1_MASK,     0xFFBF0000

        // SCTLR_EL1: M (0), C (2), SA (3), I (12), plus the bits that are RES1 in Armv8.0
        // (11, 20, 22, 23, 28, 29: with later features they are EOS, TSCXT, EIS, SPAN,
        // nTLSMD, LSMAOE, whose value 1 is the Armv8.0 behaviour). A (1) = 0, WXN (19) = 0,
        // EE (25) = 0, no pointer authentication, BTI, MTE or EPAN.
        .equ SCTLR_VALUE,     (1 | (1 << 2) | (1 << 3) | (1 << 12) | 0x30D00800)

        // Semihosting (Arm "Semihosting for AArch32 and AArch64"): SYS_EXIT takes, in
        // AArch64, a pointer to { reason, subcode }; QEMU exits with the subcode when the
        // reason is ADP_Stopped_ApplicationExit.
        .equ SYS_EXIT,        0x18
        .equ ADP_APP_EXIT,    0x20026

        // Exit codes (semihosting subcode -> QEMU exit status).
        .equ EXIT_OK,         0     // all probes ran, results complete
        .equ EXIT_GUEST_ERR,  1     // guest error recorded in the results header
        .equ EXIT_NO_RESULTS, 2     // error before the results area was known (code in x0)
        .equ EXIT_NESTED,     3     // exception inside the exception handler
        .equ EXIT_BAD_EL,     4     // not started at EL1 or EL2

        // Guest error codes (results 0x10; detail at 0x18).
        .equ GE_MAIR_SLOT,    0x10  // library MAIR_EL1 uses Attr7; detail = MAIR
        .equ GE_ACCESS,       0x11  // unknown access kind; detail = access
        .equ GE_PATTERN_PA,   0x12  // pattern PA outside RAM or unaligned; detail = PA
        .equ GE_OUTSIDE,      0x20  // exception with no probe in flight; detail = ESR
        .equ GE_VECTOR,       0x21  // exception through another vector; detail = ESR
        // Results header words the guest adds (spec: 0x20..0x100 free): 0x20 ELR, 0x28 FAR,
        // 0x30 vector number, 0x38 SPSR of a guest error exception; 0x40 MAIR_ELx, 0x48
        // TCR_ELx, 0x50 TTBR0_ELx, 0x58 SCTLR_ELx read back after the switch; 0x60
        // ID_AA64MMFR0_EL1; 0x68 probe index of a guest error; 0x70 the Exception level.

        .section .text.boot, "ax"
        .global _start
_start:
        msr     daifset, #0xf
        mov     x22, #0
        mov     x25, #0
        mov     x27, #0
        adr     x0, stack_top
        mov     sp, x0
        mrs     x0, CurrentEL
        ubfx    x17, x0, #2, #2
        cmp     x17, #1
        b.eq    1f
        cmp     x17, #2
        b.eq    boot_el2
        mov     x0, #EXIT_BAD_EL
        b       semihost_exit
1:
        adr     x0, vectors
        msr     vbar_el1, x0
        ldr     x0, =MAIR_BOOT
        msr     mair_el1, x0
        ldr     x0, =TCR_BOOT
        msr     tcr_el1, x0
        adr     x0, boot_l1_high
        msr     ttbr1_el1, x0
        adr     x0, boot_l1_identity
        msr     ttbr0_el1, x0
        isb
        tlbi    vmalle1
        dsb     nsh
        isb
        // The boot tables were loaded with the MMU off; under QEMU nothing is cached yet.
        ldr     x0, =SCTLR_VALUE
        msr     sctlr_el1, x0
        isb
        // Running through the identity map; move to the high alias.
        ldr     x26, =HIGH
        adr     x0, high_entry
        add     x0, x0, x26
        br      x0

// EL2: one boot table in TTBR0_EL2 (identity of RAM's first GiB, and the guest's 2 GiB at
// EL2_GUEST_VA), walked with the library's T0SZ (16: from boot_l0_el2; else 25: from
// boot_l1_el2), MAIR_EL2 = the library's value with Attr7 for the boot table (so the
// library's own mapping of the guest means the same while the tables are switched); then
// on to the EL2_GUEST_VA alias. The probe block is only read here (MMU off), checked later.
boot_el2:
        ldr     x0, =HCR_EL2_VALUE
        msr     hcr_el2, x0
        adr     x0, vectors
        msr     vbar_el2, x0
        ldr     x3, =PROBES_PA
        ldr     x0, [x3, #32]                 // the library's MAIR_EL2
        bic     x0, x0, #(0xFF << (8 * GUEST_ATTR))
        ldr     x1, =MAIR_BOOT
        orr     x0, x0, x1
        msr     mair_el2, x0
        ldr     x1, [x3, #40]                 // the library's TCR_EL2
        and     x1, x1, #0x3F                 // its T0SZ
        ldr     x0, =TCR_EL2_BOOT
        adr     x2, boot_l1_el2
        cmp     x1, #16
        b.ne    1f
        ldr     x0, =TCR_EL2_BOOT_48
        adr     x2, boot_l0_el2
1:
        msr     tcr_el2, x0
        msr     ttbr0_el2, x2
        isb
        tlbi    alle2
        dsb     nsh
        isb
        ldr     x0, =SCTLR_EL2_VALUE
        msr     sctlr_el2, x0
        isb
        ldr     x26, =EL2_OFFSET
        adr     x0, high_entry
        add     x0, x0, x26
        br      x0

high_entry:
        adr     x0, stack_top
        mov     sp, x0
        adr     x0, vectors
        cmp     x17, #2
        b.eq    1f
        msr     vbar_el1, x0
        b       2f
1:
        msr     vbar_el2, x0
2:
        isb

        // The probe block.
        ldr     x28, =PROBES_PA
        add     x28, x28, x26
        ldr     x0, [x28]
        ldr     x1, =PROBE_MAGIC
        cmp     x0, x1
        b.eq    1f
        mov     x0, #EXIT_NO_RESULTS
        b       semihost_exit
1:
        ldr     x24, [x28, #8]                // N
        ldr     x0, [x28, #16]                // results PA
        // Probes and results must fit below the window: end = base + 0x100 + 32 N.
        lsr     x2, x24, #24                  // N < 2^24
        cbnz    x2, bad_block
        lsl     x2, x24, #5
        add     x2, x2, #0x100
        ldr     x3, =PROBES_PA
        add     x3, x3, x2
        ldr     x4, =WINDOW
        cmp     x3, x4
        b.hi    bad_block
        ldr     x3, =RAM_LO
        cmp     x0, x3
        b.lo    bad_block
        tst     x0, #0xff
        b.ne    bad_block
        add     x3, x0, x2
        cmp     x3, x4
        b.hi    bad_block
        add     x25, x0, x26                  // results VA
        b       2f
bad_block:
        mov     x0, #EXIT_NO_RESULTS
        b       semihost_exit
2:
        str     xzr, [x25, #8]
        stp     xzr, xzr, [x25, #16]

        // Switch to the tables under test (params at 0x20: MAIR, TCR, TTBR0).
        ldp     x0, x1, [x28, #32]
        ldr     x2, [x28, #48]
        cmp     x17, #2
        b.eq    switch_el2
        lsr     x3, x0, #(8 * GUEST_ATTR)
        cbz     x3, 3f
        mov     x1, x0
        mov     x0, #GE_MAIR_SLOT
        b       guest_error
3:
        ldr     x3, =MAIR_BOOT
        orr     x0, x0, x3
        ldr     x3, =TCR_T1_MASK
        bic     x1, x1, x3
        ldr     x3, =TCR_T1
        orr     x1, x1, x3
        msr     mair_el1, x0
        msr     tcr_el1, x1
        msr     ttbr0_el1, x2
        isb
        tlbi    vmalle1
        dsb     ish
        isb
        mrs     x0, mair_el1
        mrs     x1, tcr_el1
        stp     x0, x1, [x25, #0x40]
        mrs     x0, ttbr0_el1
        mrs     x1, sctlr_el1
        stp     x0, x1, [x25, #0x50]
        b       switched

// EL2: the library's TCR_EL2, TTBR0_EL2 and MAIR_EL2 exactly as given. The guest keeps
// running through them: they map its 2 GiB at EL2_GUEST_VA like the boot table, with the
// same T0SZ, and the boot MAIR_EL2 already holds the library's memory types; Attr7 (the
// boot table's) goes last, once TTBR0_EL2 no longer points at the boot table.
switch_el2:
        msr     tcr_el2, x1
        msr     ttbr0_el2, x2
        isb
        msr     mair_el2, x0
        isb
        tlbi    alle2
        dsb     ish
        isb
        mrs     x0, mair_el2
        mrs     x1, tcr_el2
        stp     x0, x1, [x25, #0x40]
        mrs     x0, ttbr0_el2
        mrs     x1, sctlr_el2
        stp     x0, x1, [x25, #0x50]

switched:
        mrs     x0, id_aa64mmfr0_el1
        str     x0, [x25, #0x60]
        str     x17, [x25, #0x70]

        // The probes.
        mov     x23, #0
        add     x19, x28, #0x100
        add     x20, x25, #0x100
probe_loop:
        cmp     x23, x24
        b.hs    probes_done
        ldp     x0, x1, [x19]                 // va, access
        ldr     x2, [x19, #16]                // pattern PA
        stp     xzr, xzr, [x20]
        stp     xzr, xzr, [x20, #16]
        mov     x5, #0                        // value a write stores
        cmn     x2, #1
        b.eq    1f
        // Pattern ((pa >> 12) << 32) | ret at HIGH + pa, visible to data accesses of any
        // memory type (clean and invalidate to the PoC) and to instruction fetch.
        ldr     x3, =RAM_LO
        cmp     x2, x3
        b.lo    bad_pattern
        ldr     x3, =RAM_HI - 8
        cmp     x2, x3
        b.hi    bad_pattern
        tst     x2, #7
        b.ne    bad_pattern
        lsr     x3, x2, #12
        lsl     x3, x3, #32
        ldr     w4, =RET_INSN
        orr     x3, x3, x4
        mvn     x5, x3                        // a write stores !pattern
        add     x6, x2, x26
        str     x3, [x6]
        dc      civac, x6
        dsb     ish
        ic      ivau, x6
        dsb     ish
        isb
1:
        adr     x21, probe_end
        cmp     x1, #4
        b.hi    bad_access
        adr     x3, access_table
        add     x3, x3, x1, lsl #2
        br      x3
access_table:
        b       do_read
        b       do_write
        b       do_execute
        b       do_at_read
        b       do_at_write

do_read:
        mov     x22, #1
        ldr     x3, [x0]
        mov     x22, #0
        str     x3, [x20, #16]
        b       probe_end

do_write:
        mov     x22, #1
        str     x5, [x0]
        mov     x22, #0
        // value = the pattern qword read back through the guest's own mapping (so the host
        // sees whether the store reached the expected PA); 0 without a pattern PA.
        cmn     x2, #1
        b.eq    probe_end
        add     x6, x2, x26
        dsb     ish
        dc      civac, x6
        dsb     ish
        ldr     x3, [x6]
        str     x3, [x20, #16]
        b       probe_end

do_execute:
        mov     x22, #1
        blr     x0
        mov     x22, #0
        b       probe_end

do_at_read:
        cmp     x17, #2
        b.eq    1f
        at      s1e1r, x0
        b       2f
1:
        at      s1e2r, x0
2:
        isb
        mrs     x3, par_el1
        str     x3, [x20, #16]
        b       probe_end

do_at_write:
        cmp     x17, #2
        b.eq    1f
        at      s1e1w, x0
        b       2f
1:
        at      s1e2w, x0
2:
        isb
        mrs     x3, par_el1
        str     x3, [x20, #16]
        b       probe_end

probe_end:
        mov     x22, #0
        add     x23, x23, #1
        str     x23, [x25, #8]
        add     x19, x19, #32
        add     x20, x20, #32
        b       probe_loop

probes_done:
        dsb     sy
        ldr     x0, =DONE_MAGIC
        str     x0, [x25]
        dsb     sy
        mov     x0, #EXIT_OK
        b       semihost_exit

bad_access:
        mov     x0, #GE_ACCESS
        b       guest_error

bad_pattern:
        mov     x1, x2
        mov     x0, #GE_PATTERN_PA
        b       guest_error

// Guest error x0 with detail x1: recorded in the results header (if known), then exit.
guest_error:
        cbz     x25, 1f
        stp     x0, x1, [x25, #16]
        str     x23, [x25, #0x68]
        str     x23, [x25, #8]
        dsb     sy
        ldr     x0, =DONE_MAGIC
        str     x0, [x25]
        dsb     sy
        mov     x0, #EXIT_GUEST_ERR
        b       semihost_exit
1:
        mov     x0, #EXIT_NO_RESULTS
        // fall through

// Semihosting SYS_EXIT with subcode x0.
semihost_exit:
        ldr     x1, =ADP_APP_EXIT
        stp     x1, x0, [sp, #-16]!
        mov     x1, sp
        mov     w0, #SYS_EXIT
        hlt     #0xf000
        b       .

// Exceptions. x9 = vector number (0-15, offset / 0x80). Only a synchronous exception from
// the current EL with SP_ELx (vector 4) while a probe is in flight is expected: it is
// recorded in the current result (status 1, ESR_ELx, FAR_ELx) and the probe resumes at its
// recovery address x21. Anything else is a guest error.
exception:
        cbnz    x27, nested
        mov     x27, #1
        cmp     x17, #2
        b.eq    1f
        mrs     x10, esr_el1
        mrs     x11, far_el1
        mrs     x12, elr_el1
        mrs     x13, spsr_el1
        b       2f
1:
        mrs     x10, esr_el2
        mrs     x11, far_el2
        mrs     x12, elr_el2
        mrs     x13, spsr_el2
2:
        cmp     x9, #4
        b.ne    exc_unexpected
        cbz     x22, exc_outside
        mov     x14, #1
        stp     x14, x10, [x20]               // status 1, syndrome ESR_ELx
        str     x11, [x20, #24]               // address FAR_ELx
        mov     x22, #0
        cmp     x17, #2
        b.eq    1f
        msr     elr_el1, x21
        b       2f
1:
        msr     elr_el2, x21
2:
        mov     x27, #0
        eret
exc_outside:
        mov     x0, #GE_OUTSIDE
        b       1f
exc_unexpected:
        mov     x0, #GE_VECTOR
1:
        mov     x1, x10
        cbz     x25, guest_error
        stp     x12, x11, [x25, #0x20]        // ELR, FAR
        stp     x9, x13, [x25, #0x30]         // vector, SPSR
        b       guest_error
nested:
        mov     x0, #EXIT_NESTED
        b       semihost_exit

        .ltorg

// The vector table (VBAR_EL1 and VBAR_EL2 need 2 KiB alignment): 16 entries of 0x80 bytes, each
// noting its number and branching to the common handler.
        .balign 2048
vectors:
        .irp n, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15
        .balign 0x80
        mov     x9, #\n
        b       exception
        .endr

        .section .data, "aw"
// Boot translation tables (L1, 4 KiB aligned): 1 GiB blocks, AttrIndx 7.
        .balign 4096
boot_l1_high:                                 // TTBR1: HIGH + [1 GiB, 3 GiB) -> [1 GiB, 3 GiB)
        .quad   0
        .quad   0x40000000 | BLOCK
        .quad   0x80000000 | BLOCK
        .fill   509, 8, 0
boot_l1_identity:                             // TTBR0 while turning the MMU on: RAM's first GiB
        .quad   0
        .quad   0x40000000 | BLOCK
        .fill   510, 8, 0
boot_l0_el2:                                  // TTBR0_EL2 at boot for T0SZ = 16 (L0)
        .quad   boot_l1_el2 + 3               // [0] table descriptor -> boot_l1_el2
        .fill   511, 8, 0
boot_l1_el2:                                  // TTBR0_EL2 at boot for T0SZ = 25 (L1)
        .quad   0
        .quad   0x40000000 | BLOCK_EL2        // identity of RAM's first GiB
        .fill   502, 8, 0
        .quad   0x40000000 | BLOCK_EL2        // [504] EL2_GUEST_VA -> RAM's first GiB
        .quad   0x80000000 | BLOCK_EL2        // [505] EL2_GUEST_VA + 1 GiB -> the window GiB
        .fill   6, 8, 0
        .balign 16
stack:
        .fill   4096, 1, 0
stack_top:
