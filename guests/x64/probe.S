/*
 * X64 probe guest: installs page tables built by txpaging and reports, for each probe,
 * what the MMU did. It never judges a probe; tests/qemu_x64.rs compares the results with
 * its reference model. Wire format: docs/verification.md ("The probe guests").
 *
 * Boot: QEMU `-kernel` loads this flat image as a Multiboot-1 kernel (a.out kludge header,
 * flags bit 16) at 1 MiB and enters `_start` in 32-bit protected mode, paging off.
 *
 *  1. Checks the probe block (fixed at PROBES_PA) and the CPU: long mode, NX, PAE, PAT,
 *     1 GiB pages (CPUID 8000_0001h:EDX bits 29, 20, 26; 1:EDX bits 6, 16) and, for
 *     5-level paging, LA57 (CPUID 7.0:ECX bit 16). LA57 can only be set before paging is
 *     enabled (SDM 4.1.1), so the guest enters the paging mode the tables under test need.
 *  2. Builds its own bootstrap tables in .bss: 2 MiB pages identity-mapping the low 4 GiB,
 *     and the same PDPT again at root slot 511, the HIGH ALIAS: VA HIGH + PA for PA below
 *     4 GiB. In 5-level paging PML5[511] -> the PML4, whose [511] -> the PDPT, so HIGH is
 *     the same constant in both modes.
 *  3. Enables long mode (CR4.PAE [+ LA57], EFER.LME + NXE, CR0.PG + WP: WP makes
 *     supervisor writes honour R/W, SDM 4.6) and jumps to its high alias. From then on it
 *     runs only there: code, stack, GDT and IDT (GDTR/IDTR hold high-alias addresses), the
 *     probe block and the results (HIGH + PA). The 64-bit code reaches its own data
 *     RIP-relatively, so the same bytes work at either address.
 *  4. Copies its root[511] entry into the tables under test (root params[0], slot
 *     params[3]), writes IA32_PAT = params[1] and loads CR3 = params[0].
 *  5. Runs the probes. A probe first stores pattern(pattern_pa) = (pattern_pa << 8) | 0xC3
 *     at HIGH + pattern_pa (unless pattern_pa is all ones), then accesses its VA:
 *       read    `mov (%rdi), %rax`, the value is recorded
 *       write   `lock addq $0, (%rdi)`: a locked read-modify-write of the same value, so the
 *               access is a write from the start (a fault reports W = 1 even when the page
 *               is not present) and memory keeps its value
 *       execute `call *%rdi`: the pattern's low byte is `ret`
 *     Every exception vector has a handler. During a probe it records (vector << 32 |
 *     error code), CR2 for #PF, and resumes at the probe's recovery point with the probe's
 *     stack pointer (RIP and RSP patched in the IRETQ frame). Non-canonical addresses
 *     raise #GP(0), which is just another result.
 *     It reads CR3, IA32_PAT, CR0, CR4 and IA32_EFER back into the results header (0x40,
 *     0x48, 0x50, 0x58, 0x60) for the host to check.
 *  6. Writes the count and then the magic LAST, and writes 0 to the isa-debug-exit port
 *     (QEMU exits with 1 = success).
 *
 * Guest errors (results header 0x10, detail at 0x18; the exit port gets the code, so QEMU
 * exits with 2 * code + 1):
 *   1  bad probe block magic (no results written: the results address is unknown)
 *   2  no long mode, PAE, PAT or MSRs            detail = CPUID 8000_0001h:EDX
 *   3  no NX                                     detail = CPUID 8000_0001h:EDX
 *   4  no 1 GiB pages                            detail = CPUID 8000_0001h:EDX
 *   5  5-level paging asked, no LA57             detail = CPUID 7.0:ECX
 *   6  bad parameter: detail 1 levels (not 4 or 5), 2 root (not 4 KiB aligned below 4 GiB),
 *      3 slot (not 511), 4 results area (not 8-byte aligned, or not below 4 GiB)
 *   7  bad probe (access kind or pattern address) detail = probe index
 *   0x100 + vector: exception outside a probe    detail = RIP; header 0x20 = error code,
 *                                                0x28 = CR2, 0x30 = probe index
 */

    .set HIGH,            0xFFFFFF8000000000   /* root slot 511, PDPT slot 0 */
    .set PROBES_PA,       0x08000000
    .set PROBE_MAGIC_LO,  0x52505854           /* "TXPROBE1" = 0x3145424F_52505854 */
    .set PROBE_MAGIC_HI,  0x3145424F
    .set DONE_MAGIC_LO,   0x44505854           /* "TXPDONE!" = 0x21454E4F_44505854 */
    .set DONE_MAGIC_HI,   0x21454E4F
    .set MB_MAGIC,        0x1BADB002
    .set MB_FLAGS,        0x00010000           /* addresses in the header (a.out kludge) */
    .set CODE32,          0x08
    .set CODE64,          0x10
    .set DATA,            0x18
    .set EXIT_PORT,       0xf4
    .set MSR_EFER,        0xC0000080
    .set MSR_PAT,         0x277
    .set FOUR_GIB,        0x100000000

/* ------------------------------------------------------------------------------------ */
    .section .multiboot, "a"
    .balign 4
mb_header:
    .long MB_MAGIC
    .long MB_FLAGS
    .long -(MB_MAGIC + MB_FLAGS)
    .long mb_header             /* header_addr */
    .long __load_start          /* load_addr */
    .long __load_end            /* load_end_addr */
    .long __bss_end             /* bss_end_addr */
    .long _start                /* entry_addr */

/* ------------------------------------------------------------------------------------ */
    .text
    .code32
    .globl _start
_start:
    cli
    cld
    lgdt gdt_ptr32
    ljmp $CODE32, $1f
1:  mov $DATA, %ax
    mov %ax, %ds
    mov %ax, %es
    mov %ax, %ss
    mov %ax, %fs
    mov %ax, %gs
    /* Zero .bss (QEMU's loader does too; the tables below rely on it). */
    mov $__bss_start, %edi
    mov $__bss_end, %ecx
    sub %edi, %ecx
    shr $2, %ecx
    xor %eax, %eax
    rep stosl
    mov $stack_top, %esp

    /* The probe block. */
    mov $PROBES_PA, %esi
    cmpl $PROBE_MAGIC_LO, (%esi)
    jne bad_magic
    cmpl $PROBE_MAGIC_HI, 4(%esi)
    jne bad_magic
    /* The results area must lie below 4 GiB: results + 0x100 + 32 * count. */
    cmpl $0, 0x14(%esi)
    jne bad_results
    cmpl $0, 0x0C(%esi)
    jne bad_results
    mov 0x08(%esi), %eax
    cmp $0x04000000, %eax
    jae bad_results
    shl $5, %eax
    add $0x100, %eax
    add 0x10(%esi), %eax
    jc bad_results
    mov 0x10(%esi), %eax
    mov %eax, results32
    test $7, %eax
    jnz bad_results

    /* Parameters: [0] root, [1] PAT, [2] levels, [3] slot. */
    mov 0x30(%esi), %eax
    cmpl $0, 0x34(%esi)
    jne bad_levels
    cmp $4, %eax
    je 2f
    cmp $5, %eax
    jne bad_levels
2:  mov %eax, levels
    cmpl $0, 0x24(%esi)
    jne bad_root
    testl $0xFFF, 0x20(%esi)
    jnz bad_root
    /* The slot must be 511: HIGH lies under it (and under nothing else). */
    cmpl $0, 0x3C(%esi)
    jne bad_slot
    cmpl $511, 0x38(%esi)
    jne bad_slot

    /* CPU features. */
    mov $0x80000000, %eax
    cpuid
    cmp $0x80000001, %eax
    jb no_long_mode
    mov $0x80000001, %eax
    cpuid
    mov %edx, %ebx
    bt $29, %ebx
    jnc no_long_mode
    bt $20, %ebx
    jnc no_nx
    bt $26, %ebx
    jnc no_1g
    mov $1, %eax
    cpuid
    bt $5, %edx             /* MSR */
    jnc no_long_mode
    bt $6, %edx             /* PAE */
    jnc no_long_mode
    bt $16, %edx            /* PAT */
    jnc no_long_mode
    cmpl $5, levels
    jne 3f
    xor %eax, %eax
    cpuid
    cmp $7, %eax
    jb no_la57_leaf
    mov $7, %eax
    xor %ecx, %ecx
    cpuid
    mov %ecx, %ebx
    bt $16, %ecx
    jnc no_la57
3:
    /* Bootstrap tables: 4 PDs of 2 MiB pages for PA 0..4 GiB (P | RW | PS). */
    mov $boot_pd, %edi
    xor %ecx, %ecx
4:  mov %ecx, %eax
    shl $21, %eax
    or $0x83, %eax
    mov %eax, (%edi,%ecx,8)
    mov %ecx, %eax
    shr $11, %eax           /* bits 32+ of (ecx << 21) */
    mov %eax, 4(%edi,%ecx,8)
    inc %ecx
    cmp $2048, %ecx
    jne 4b
    /* PDPT[0..4] -> the PDs. */
    mov $boot_pdpt, %edi
    mov $boot_pd + 3, %eax
    xor %ecx, %ecx
5:  mov %eax, (%edi,%ecx,8)
    add $4096, %eax
    inc %ecx
    cmp $4, %ecx
    jne 5b
    /* PML4[0] = PML4[511] -> PDPT; PML5[0] = PML5[511] -> PML4. */
    movl $boot_pdpt + 3, boot_pml4
    movl $boot_pdpt + 3, boot_pml4 + 511 * 8
    movl $boot_pml4 + 3, boot_pml5
    movl $boot_pml4 + 3, boot_pml5 + 511 * 8

    /* CR4: PAE, and LA57 for 5-level paging (before paging is on: SDM 4.1.1). */
    mov %cr4, %eax
    or $(1 << 5), %eax
    mov $boot_pml4, %edx
    cmpl $5, levels
    jne 6f
    or $(1 << 12), %eax
    mov $boot_pml5, %edx
6:  mov %eax, %cr4
    mov %edx, %cr3
    /* EFER: LME and NXE. */
    mov $MSR_EFER, %ecx
    rdmsr
    or $((1 << 8) | (1 << 11)), %eax
    wrmsr
    /* CR0: PE, WP, PG. */
    mov %cr0, %eax
    or $((1 << 31) | (1 << 16) | 1), %eax
    mov %eax, %cr0
    ljmp $CODE64, $long_mode

/* 32-bit failure paths: eax = error code, ebx = detail. */
bad_magic:
    mov $1, %eax
    xor %ebx, %ebx
    jmp fail32
bad_levels:
    mov $6, %eax
    mov $1, %ebx
    jmp fail32
bad_root:
    mov $6, %eax
    mov $2, %ebx
    jmp fail32
bad_slot:
    mov $6, %eax
    mov $3, %ebx
    jmp fail32
bad_results:
    movl $0, results32
    mov $6, %eax
    mov $4, %ebx
    jmp fail32
no_long_mode:
    mov $2, %eax
    jmp fail32
no_nx:
    mov $3, %eax
    jmp fail32
no_1g:
    mov $4, %eax
    jmp fail32
no_la57_leaf:
    xor %ebx, %ebx
no_la57:
    mov $5, %eax
    jmp fail32

fail32:
    mov results32, %edi
    test %edi, %edi
    jz 1f
    movl $0, 0x08(%edi)
    movl $0, 0x0C(%edi)
    mov %eax, 0x10(%edi)
    movl $0, 0x14(%edi)
    mov %ebx, 0x18(%edi)
    movl $0, 0x1C(%edi)
    movl $DONE_MAGIC_LO, 0x00(%edi)
    movl $DONE_MAGIC_HI, 0x04(%edi)
1:  mov $EXIT_PORT, %dx
    out %eax, %dx
2:  hlt
    jmp 2b

/* ------------------------------------------------------------------------------------ */
    .code64
long_mode:
    /* Still at the identity address: go to the high alias. */
    movabs $(HIGH + high_entry), %rax
    jmp *%rax

high_entry:
    lea stack_top(%rip), %rsp
    mov $DATA, %ax
    mov %ax, %ds
    mov %ax, %es
    mov %ax, %ss
    mov %ax, %fs
    mov %ax, %gs
    /* GDTR and IDTR with high-alias bases; reload CS from the new GDT. */
    lea gdt(%rip), %rax
    mov %rax, gdt_ptr64 + 2(%rip)
    lgdt gdt_ptr64(%rip)
    lea 1f(%rip), %rax
    pushq $CODE64
    push %rax
    lretq
1:
    lea idt(%rip), %rdi
    lea isr_stubs(%rip), %rsi
    mov $256, %ecx
2:  mov %rsi, %rax
    mov %ax, 0(%rdi)                /* offset 15:0 */
    movw $CODE64, 2(%rdi)
    movw $0x8E00, 4(%rdi)           /* present, DPL 0, 64-bit interrupt gate, IST 0 */
    shr $16, %rax
    mov %ax, 6(%rdi)                /* offset 31:16 */
    shr $16, %rax
    mov %eax, 8(%rdi)               /* offset 63:32 */
    movl $0, 12(%rdi)
    add $16, %rsi
    add $16, %rdi
    dec %ecx
    jnz 2b
    lea idt(%rip), %rax
    mov %rax, idt_ptr + 2(%rip)
    lidt idt_ptr(%rip)

    movabs $HIGH, %r14
    lea PROBES_PA(%r14), %rbx       /* the probe block */
    mov 0x10(%rbx), %rax
    lea (%r14,%rax), %rax
    mov %rax, results_base(%rip)

    /* Our root[511] into the tables under test, at root params[0], slot params[3]. */
    lea boot_pml4(%rip), %rsi
    cmpq $5, 0x30(%rbx)
    jne 3f
    lea boot_pml5(%rip), %rsi
3:  mov 511 * 8(%rsi), %rax
    mov 0x20(%rbx), %rdi
    mov 0x38(%rbx), %rcx
    lea (%r14,%rdi), %rdi
    mov %rax, (%rdi,%rcx,8)
    /* IA32_PAT = params[1] (SDM 11.12.4: flush caches around a PAT change). */
    wbinvd
    mov $MSR_PAT, %ecx
    mov 0x28(%rbx), %rax
    mov %rax, %rdx
    shr $32, %rdx
    wrmsr
    wbinvd
    /* CR3 = params[0]: from here on only the tables under test translate. */
    mov 0x20(%rbx), %rax
    mov %rax, %cr3
    /* Read the installed state back into the results header for the host to check:
     * 0x40 CR3, 0x48 IA32_PAT, 0x50 CR0, 0x58 CR4, 0x60 IA32_EFER. */
    mov results_base(%rip), %rdi
    mov %cr3, %rax
    mov %rax, 0x40(%rdi)
    mov $MSR_PAT, %ecx
    rdmsr
    shl $32, %rdx
    or %rdx, %rax
    mov %rax, 0x48(%rdi)
    mov %cr0, %rax
    mov %rax, 0x50(%rdi)
    mov %cr4, %rax
    mov %rax, 0x58(%rdi)
    mov $MSR_EFER, %ecx
    rdmsr
    shl $32, %rdx
    or %rdx, %rax
    mov %rax, 0x60(%rdi)

    /* The probes. */
    mov 0x08(%rbx), %r12            /* count */
    xor %r13, %r13                  /* index */
    lea 0x100(%rbx), %r15           /* probe record */
    mov results_base(%rip), %rbp
    add $0x100, %rbp                /* result record */
probe_loop:
    cmp %r12, %r13
    jae probes_done
    mov %r13, probe_index(%rip)
    mov %rbp, cur_result(%rip)
    movq $0, 0(%rbp)
    movq $0, 8(%rbp)
    movq $0, 16(%rbp)
    movq $0, 24(%rbp)
    mov 0(%r15), %rdi               /* va */
    mov 8(%r15), %rdx               /* access */
    mov 16(%r15), %rax              /* pattern_pa */
    cmp $-1, %rax
    je 1f
    movabs $(FOUR_GIB - 8), %rcx
    cmp %rcx, %rax
    ja bad_probe
    mov %rax, %rcx
    shl $8, %rcx
    or $0xC3, %rcx
    mov %rcx, (%r14,%rax)
1:  cmp $2, %rdx
    ja bad_probe
    mov %rsp, probe_rsp(%rip)
    movb $1, probe_active(%rip)
    cmp $1, %rdx
    je probe_write
    ja probe_execute
probe_read:
    mov (%rdi), %rax
    mov %rax, 16(%rbp)
    jmp probe_recover
probe_write:
    lock addq $0, (%rdi)
    jmp probe_recover
probe_execute:
    call *%rdi
probe_recover:                      /* the exception handler resumes here */
    movb $0, probe_active(%rip)
    inc %r13
    add $32, %r15
    add $32, %rbp
    jmp probe_loop

probes_done:
    mov results_base(%rip), %rdi
    mov %r13, 0x08(%rdi)
    movq $0, 0x10(%rdi)
    movq $0, 0x18(%rdi)
    mfence
    movabs $((DONE_MAGIC_HI << 32) | DONE_MAGIC_LO), %rax
    mov %rax, 0x00(%rdi)
    mfence
    mov $EXIT_PORT, %dx
    xor %eax, %eax
    out %eax, %dx
1:  hlt
    jmp 1b

bad_probe:
    mov $7, %eax
    mov %r13, %rcx
    /* fall through */

/* 64-bit failure: eax = error code, rcx = detail. */
fail64:
    mov results_base(%rip), %rdi
    mov probe_index(%rip), %rdx
    mov %rdx, 0x08(%rdi)
    mov %rax, 0x10(%rdi)
    mov %rcx, 0x18(%rdi)
    mfence
    movabs $((DONE_MAGIC_HI << 32) | DONE_MAGIC_LO), %rdx
    mov %rdx, 0x00(%rdi)
    mfence
    mov $EXIT_PORT, %dx
    out %eax, %dx
1:  hlt
    jmp 1b

/* Exception entry: 256 stubs of 16 bytes; each pushes a dummy error code where the CPU
 * pushes none (all but 8, 10-14, 17, 21, 29, 30), then its vector. */
    .balign 16
isr_stubs:
    .set vec, 0
    .rept 256
    .balign 16
    .if (vec == 8) || ((vec >= 10) && (vec <= 14)) || (vec == 17) || (vec == 21) || (vec == 29) || (vec == 30)
    .else
    pushq $0
    .endif
    pushq $vec
    jmp isr_common
    .set vec, vec + 1
    .endr

/* Stack: rdx, rcx, rax (pushed here), vector, error code, RIP, CS, RFLAGS, RSP, SS. */
isr_common:
    push %rax
    push %rcx
    push %rdx
    cmpb $0, probe_active(%rip)
    je unexpected
    mov cur_result(%rip), %rax
    movq $1, 0(%rax)                /* status: exception */
    mov 24(%rsp), %rcx              /* vector */
    shl $32, %rcx
    mov 32(%rsp), %edx              /* error code (32 bits) */
    or %rdx, %rcx
    mov %rcx, 8(%rax)
    cmpq $14, 24(%rsp)
    jne 1f
    mov %cr2, %rcx
    mov %rcx, 24(%rax)
1:  lea probe_recover(%rip), %rcx
    mov %rcx, 40(%rsp)              /* RIP */
    mov probe_rsp(%rip), %rcx
    mov %rcx, 64(%rsp)              /* RSP */
    movb $0, probe_active(%rip)
    pop %rdx
    pop %rcx
    pop %rax
    add $16, %rsp
    iretq

unexpected:
    mov results_base(%rip), %rdi
    test %rdi, %rdi
    jz 1f                           /* before the results address was known */
    mov 32(%rsp), %rcx
    mov %rcx, 0x20(%rdi)            /* error code */
    mov %cr2, %rcx
    mov %rcx, 0x28(%rdi)
    mov probe_index(%rip), %rcx
    mov %rcx, 0x30(%rdi)
1:  mov 24(%rsp), %rax
    add $0x100, %rax
    mov 40(%rsp), %rcx              /* RIP */
    test %rdi, %rdi
    jnz fail64
    mov $EXIT_PORT, %dx
    out %eax, %dx
2:  hlt
    jmp 2b

/* ------------------------------------------------------------------------------------ */
    .data
    .balign 16
gdt:
    .quad 0
    .quad 0x00CF9A000000FFFF        /* 0x08: 32-bit code */
    .quad 0x00AF9A000000FFFF        /* 0x10: 64-bit code */
    .quad 0x00CF92000000FFFF        /* 0x18: data */
gdt_end:
    .balign 8
    .word 0, 0, 0
gdt_ptr32:
    .word gdt_end - gdt - 1
    .long gdt
    .balign 8
    .word 0, 0, 0
gdt_ptr64:                          /* base written at run time (high alias) */
    .word gdt_end - gdt - 1
    .quad 0
    .balign 8
    .word 0, 0, 0
idt_ptr:
    .word 256 * 16 - 1
    .quad 0
    .balign 8
results32:      .long 0
levels:         .long 0
results_base:   .quad 0             /* HIGH + results PA */
cur_result:     .quad 0
probe_rsp:      .quad 0
probe_index:    .quad 0
probe_active:   .byte 0

/* ------------------------------------------------------------------------------------ */
    .bss
    .balign 4096
boot_pml5:  .skip 4096
boot_pml4:  .skip 4096
boot_pdpt:  .skip 4096
boot_pd:    .skip 4 * 4096
idt:        .skip 4096
stack:      .skip 16384
stack_top:
