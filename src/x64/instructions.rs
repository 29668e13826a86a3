//! The real X64 MMU: INVLPG, CR3 reload, and installing a table (IA32_PAT, IA32_EFER.NXE, CR3).
//!
//! Compiled on every x86_64 target so it is type-checked on the host, but only the
//! default on bare-metal and UEFI targets: the instructions need CPL 0.

use core::arch::asm;

use txpaging_txn::{PtError, Tlb};

use super::{full_flush, FullFlush};
use crate::mmu::{InstallRequest, Mmu};

/// IA32_EFER MSR number and its NXE bit (SDM Vol. 4, table 2-2).
const IA32_EFER: u32 = 0xC000_0080;
const EFER_NXE: u64 = 1 << 11;
/// CR4.LA57: 5-level paging is on (SDM 4.1.1, 4.1.2).
const CR4_LA57: u64 = 1 << 12;
/// CR4.PGE: global pages are enabled (SDM 4.10.2.4).
const CR4_PGE: u64 = 1 << 7;

/// The X64 MMU of the running CPU. Its instructions fault outside CPL 0.
#[derive(Debug, Default, Clone, Copy)]
pub struct X64Mmu;

impl X64Mmu {
    /// The MMU of the running CPU.
    pub const fn new() -> Self {
        Self
    }
}

fn read_msr(msr: u32) -> u64 {
    let (low, high): (u32, u32);
    // SAFETY: RDMSR of an architectural MSR has no memory effects; this type is only
    // used at CPL 0 (see the type's documentation).
    unsafe { asm!("rdmsr", in("ecx") msr, out("eax") low, out("edx") high, options(nomem, nostack, preserves_flags)) };
    u64::from(high) << 32 | u64::from(low)
}

/// # Safety
/// `value` must be a valid value for `msr` whose effect the caller accounts for.
unsafe fn write_msr(msr: u32, value: u64) {
    // SAFETY: guaranteed by the caller.
    unsafe {
        asm!("wrmsr", in("ecx") msr, in("eax") value as u32, in("edx") (value >> 32) as u32, options(nostack, preserves_flags))
    };
}

/// The IA32_PAT MSR of this CPU.
#[cfg_attr(not(any(target_os = "none", target_os = "uefi")), allow(dead_code))]
pub(crate) fn read_pat() -> u64 {
    read_msr(super::encoding::IA32_PAT)
}

/// MAXPHYADDR: CPUID 8000_0008h `EAX[7:0]` (SDM 4.1.4), 36 where the leaf is missing.
#[cfg_attr(not(any(target_os = "none", target_os = "uefi")), allow(dead_code))]
pub(crate) fn max_phys_bits() -> u8 {
    use core::arch::x86_64::__cpuid;
    #[allow(unused_unsafe)]
    // SAFETY: CPUID exists on every x86_64 CPU and only reads identification registers.
    let max_extended = unsafe { __cpuid(0x8000_0000) }.eax;
    if max_extended < 0x8000_0008 {
        return 36;
    }
    #[allow(unused_unsafe)]
    // SAFETY: as above; the leaf exists (checked against the maximum leaf).
    let eax = unsafe { __cpuid(0x8000_0008) }.eax;
    eax as u8
}

/// Whether the CPU supports NX (CPUID 8000_0001h `EDX[20]`) and 1 GiB pages (`EDX[26]`).
pub(crate) fn cpu_features() -> (bool, bool) {
    use core::arch::x86_64::__cpuid;
    #[allow(unused_unsafe)]
    // SAFETY: CPUID exists on every x86_64 CPU and only reads identification registers.
    let max_extended = unsafe { __cpuid(0x8000_0000) }.eax;
    if max_extended < 0x8000_0001 {
        return (false, false);
    }
    #[allow(unused_unsafe)]
    // SAFETY: as above; leaf 8000_0001h exists (checked against the maximum leaf).
    let edx = unsafe { __cpuid(0x8000_0001) }.edx;
    (edx & (1 << 20) != 0, edx & (1 << 26) != 0)
}

impl Tlb for X64Mmu {
    fn invalidate_page(&self, va: u64) {
        // SAFETY: INVLPG only drops cached translations (SDM 4.10.4.1); it cannot make
        // memory unsafe, and the table was already updated.
        unsafe { asm!("invlpg [{}]", in(reg) va, options(nostack, preserves_flags)) };
    }

    fn invalidate_all(&self) {
        let cr4: u64;
        // SAFETY: reading CR4 has no side effects.
        unsafe { asm!("mov {}, cr4", out(reg) cr4, options(nomem, nostack, preserves_flags)) };
        match full_flush(cr4) {
            FullFlush::ToggleGlobalPages => {
                // SAFETY: clearing and restoring CR4.PGE invalidates all TLB entries, global
                // ones included, and the paging-structure caches (SDM 4.10.4.1, "MOV to CR4");
                // no other CR4 bit changes. A table adopted from firmware may hold global
                // leaves, which a CR3 reload would keep.
                unsafe {
                    asm!(
                        "mov cr4, {without}",
                        "mov cr4, {with}",
                        without = in(reg) cr4 & !CR4_PGE,
                        with = in(reg) cr4,
                        options(nostack, preserves_flags)
                    );
                }
            }
            FullFlush::ReloadCr3 => {
                // SAFETY: reloading CR3 with its own value flushes non-global TLB entries and
                // the paging-structure caches (SDM 4.10.4.1); with CR4.PGE clear no entry is
                // global. The tables are unchanged by it.
                unsafe {
                    asm!("mov {tmp}, cr3", "mov cr3, {tmp}", tmp = out(reg) _, options(nostack, preserves_flags));
                }
            }
        }
    }
}

impl Mmu for X64Mmu {
    fn install(&self, request: &InstallRequest) -> Result<(), PtError> {
        let InstallRequest::X64 {
            root,
            five_level,
            pat,
            nx,
        } = *request
        else {
            return Err(PtError::InvalidParameter);
        };
        let cr4: u64;
        // SAFETY: reading CR4 has no side effects.
        unsafe { asm!("mov {}, cr4", out(reg) cr4, options(nomem, nostack, preserves_flags)) };
        // LA57 cannot change while long mode is active (SDM 4.1.2): the table must match the mode.
        if (cr4 & CR4_LA57 != 0) != five_level {
            return Err(PtError::UnsupportedPagingType);
        }
        if nx {
            if !cpu_features().0 {
                return Err(PtError::UnsupportedPagingType);
            }
            // SAFETY: setting EFER.NXE only makes bit 63 of entries meaningful (SDM 4.1.3);
            // all tables this crate writes are valid with it set.
            unsafe { write_msr(IA32_EFER, read_msr(IA32_EFER) | EFER_NXE) };
        }
        // SAFETY: the PAT layout is the one the entries were encoded for (SDM 11.12.2); the
        // CR3 load that follows flushes translations cached with the old layout.
        unsafe { write_msr(super::encoding::IA32_PAT, pat) };
        // SAFETY: the caller of `install_page_table` guarantees the table maps the running
        // code, stack and data (the documented contract of `PageTable::install_page_table`).
        unsafe { asm!("mov cr3, {}", in(reg) root, options(nostack, preserves_flags)) };
        if full_flush(cr4) == FullFlush::ToggleGlobalPages {
            // The CR3 load kept the global translations of the previous table (SDM
            // 4.10.4.1); the previous table may be the firmware's, with G set.
            self.invalidate_all();
        }
        Ok(())
    }
}
