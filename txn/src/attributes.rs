//! `MemoryAttributes`: the UEFI memory attribute bits a mapping carries.

use bitflags::bitflags;

bitflags! {
    /// Cache and access attributes of a mapping, with the UEFI `EFI_MEMORY_*` bit values.
    ///
    /// A mapping carries at most one cache attribute (exactly one on AArch64) and any
    /// combination of the access attributes.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
    pub struct MemoryAttributes: u64 {
        /// Uncacheable (`EFI_MEMORY_UC`).
        const Uncached = 0x0000_0000_0000_0001;
        /// Write-combining (`EFI_MEMORY_WC`).
        const WriteCombining = 0x0000_0000_0000_0002;
        /// Write-through (`EFI_MEMORY_WT`).
        const WriteThrough = 0x0000_0000_0000_0004;
        /// Write-back (`EFI_MEMORY_WB`).
        const Writeback = 0x0000_0000_0000_0008;
        /// Uncacheable, exported, supports fetch-and-add (`EFI_MEMORY_UCE`).
        const UncachedExport = 0x0000_0000_0000_0010;
        /// Write-protected memory type (`EFI_MEMORY_WP`).
        const WriteProtect = 0x0000_0000_0000_1000;
        /// Not readable: the entry is left non-present (`EFI_MEMORY_RP`).
        const ReadProtect = 0x0000_0000_0000_2000;
        /// Not executable: NX on X64, UXN|PXN on AArch64 (`EFI_MEMORY_XP`).
        const ExecuteProtect = 0x0000_0000_0000_4000;
        /// Not writable (`EFI_MEMORY_RO`).
        const ReadOnly = 0x0000_0000_0002_0000;

        /// The six cache attribute bits.
        const CacheAttributesMask = Self::Uncached.bits()
            | Self::WriteCombining.bits()
            | Self::WriteThrough.bits()
            | Self::Writeback.bits()
            | Self::UncachedExport.bits()
            | Self::WriteProtect.bits();

        /// The three access attribute bits.
        const AccessAttributesMask = Self::ReadProtect.bits()
            | Self::ExecuteProtect.bits()
            | Self::ReadOnly.bits();
    }
}

impl MemoryAttributes {
    /// The cache attribute bits of `self` (empty when none is set).
    pub const fn cache(self) -> Self {
        Self::from_bits_retain(self.bits() & Self::CacheAttributesMask.bits())
    }

    /// The access attribute bits of `self`.
    pub const fn access(self) -> Self {
        Self::from_bits_retain(self.bits() & Self::AccessAttributesMask.bits())
    }

    /// Bits of `self` that are neither cache nor access attributes.
    pub const fn unknown_bits(self) -> u64 {
        self.bits() & !(Self::CacheAttributesMask.bits() | Self::AccessAttributesMask.bits())
    }

    /// What a page mapped with `self` becomes after a protect with `change`:
    /// the access bits are replaced, the cache type is replaced only if `change` names one.
    pub const fn reprotected(self, change: Self) -> Self {
        if change.cache().is_empty() {
            Self::from_bits_retain(change.access().bits() | self.cache().bits())
        } else {
            Self::from_bits_retain(change.access().bits() | change.cache().bits())
        }
    }
}
