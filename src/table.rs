//! [`PagingTable`]: the page table of every architecture, one type over an [`Arch`]. What
//! all architectures share (transactions, queries, the familiar [`PageTable`] calls, the
//! policy and audit, dumps) is written here once; what only one has (constructors, checked
//! opens of existing tables, AArch64's regimes and pinned ranges) is in its own module's
//! impl of `PagingTable<X64, P, M>` or `PagingTable<Aarch64<R>, P, M>`.

use core::fmt;

use txpaging_txn::{
    MappedRegion, MemoryAttributes, Op, PageAllocator, PtError, Regions, Retired, Tables, Transaction, TxnError,
};

use crate::arch::Arch;
use crate::dump;
use crate::mmu::{InstallRequest, Mmu};
use crate::{PageTable, PagingType};

/// A page table of architecture `A` ([`X64`](crate::x64::X64) or
/// [`Aarch64<R>`](crate::aarch64::Aarch64)), its pages from allocator `P`, its TLB
/// maintenance and installation done by `M`. Identity maps by default; see
/// [`transaction`](Self::transaction) for batched and aliased changes.
///
/// Usually named through its aliases, which also pick the default MMU:
/// [`X64PageTable`](crate::X64PageTable), [`Aarch64PageTable`](crate::Aarch64PageTable)
/// (EL1&0) and [`Aarch64El2PageTable`](crate::aarch64::Aarch64El2PageTable). Code written
/// against `PagingTable<A, P, M>` works for every architecture:
///
/// ```
/// use txpaging::{
///     Aarch64PageTable, Arch, MemoryAttributes as A, Mmu, PageAllocator, PagePool, PageTable, PagingTable,
///     PagingType, PtError, X64PageTable,
/// };
///
/// /// Maps a read-only, non-executable window and returns how many table pages that took.
/// fn map_window<T: Arch, P: PageAllocator, M: Mmu>(table: &mut PagingTable<T, P, M>) -> Result<usize, PtError> {
///     table.map_memory_region(0x4000_0000, 0x20_0000, A::Writeback | A::ReadOnly | A::ExecuteProtect)?;
///     assert_eq!(table.translate(0x4000_1234), Some((0x4000_1234, A::Writeback | A::ReadOnly | A::ExecuteProtect)));
///     Ok(table.table_pages())
/// }
///
/// let mut x64 = X64PageTable::new(PagePool::new(8), PagingType::Paging4Level)?;
/// let mut aarch64 = Aarch64PageTable::new(PagePool::new(8), PagingType::Paging4Level)?;
/// // Root, one table per level above the 2 MiB block: PML4, PDPT, PD; L0, L1, L2.
/// assert_eq!(map_window(&mut x64)?, 3);
/// assert_eq!(map_window(&mut aarch64)?, 3);
/// # Ok::<(), PtError>(())
/// ```
pub struct PagingTable<A: Arch, P: PageAllocator, M: Mmu> {
    tables: Tables<A::Codec, P, M>,
    paging_type: PagingType,
    config: A::Config,
}

impl<A: Arch, P: PageAllocator, M: Mmu> PagingTable<A, P, M> {
    /// Creates an empty table (one zeroed root page) of `paging_type` for `config`.
    pub(crate) fn create(allocator: P, paging_type: PagingType, config: A::Config, mmu: M) -> Result<Self, PtError> {
        let tables = Tables::new(allocator, A::geometry(paging_type, config)?, mmu)?;
        Ok(Self {
            tables,
            paging_type,
            config,
        })
    }

    /// Opens the table at `root` without checking its entries (the architecture's
    /// `from_existing` constructors check them before or after).
    ///
    /// # Safety
    /// `root` must be the root of a table of `paging_type` whose pages `allocator` reaches,
    /// and nothing else may change it while this value is in use.
    pub(crate) unsafe fn open(
        root: u64,
        allocator: P,
        paging_type: PagingType,
        config: A::Config,
        mmu: M,
    ) -> Result<Self, PtError> {
        let geometry = A::geometry(paging_type, config)?;
        // SAFETY: forwarded contract.
        let tables = unsafe { Tables::from_existing(root, allocator, geometry, mmu)? };
        Ok(Self {
            tables,
            paging_type,
            config,
        })
    }

    /// What installing this table programs: on X64 IA32_PAT, IA32_EFER.NXE and CR3 (see
    /// [`X64`](crate::x64::X64)); on AArch64 MAIR_ELx, TCR_ELx and TTBR0_ELx of the
    /// table's regime (see [`Aarch64`](crate::aarch64::Aarch64)).
    /// [`PageTable::install_page_table`] hands it to the MMU.
    pub fn install_request(&self) -> InstallRequest {
        A::install_request(self.root(), self.paging_type, self.tables.geometry(), self.config)
    }

    /// Physical address of the root table (the value for CR3, TTBR0_EL1 or TTBR0_EL2).
    pub fn root(&self) -> u64 {
        self.tables.root()
    }

    /// Gives up ownership and returns the root; the tables stay in memory.
    pub fn into_page_table_root(self) -> u64 {
        self.tables.root()
    }

    /// The paging mode.
    pub fn paging_type(&self) -> PagingType {
        self.paging_type
    }

    /// The CPU configuration the table was built for.
    pub fn config(&self) -> A::Config {
        self.config
    }

    /// The MMU (a [`RecordingMmu`](crate::RecordingMmu) on the host).
    pub fn mmu(&self) -> &M {
        self.tables.tlb()
    }

    /// The page allocator.
    pub fn allocator(&self) -> &P {
        self.tables.allocator()
    }

    /// The page allocator, mutably (for example to inject failures in tests). Do not use it
    /// to change or free the table's own pages.
    pub fn allocator_mut(&mut self) -> &mut P {
        self.tables.allocator_mut()
    }

    /// The full error of the last failed one-op call (`map_memory_region`,
    /// `unmap_memory_region`, `protect_memory_region`, `map_aliased_memory_region`): which
    /// address, which rule. Those calls return only its [`PtError`] code, as the seed API
    /// does, and log it with `log::warn!`.
    ///
    /// ```
    /// use txpaging::{Aarch64PageTable, MemoryAttributes, PagePool, PageTable, PagingType, PtError, Reason, X64PageTable};
    ///
    /// let mut table = X64PageTable::new(PagePool::new(8), PagingType::Paging4Level)?;
    /// let code = table.unmap_memory_region(0x20_0000, 0x1000).unwrap_err();
    /// assert_eq!(code, PtError::NoMapping);
    /// let error = table.last_error().unwrap();
    /// assert_eq!((error.reason, error.address), (Reason::NotMapped, Some(0x20_0000)));
    ///
    /// // AArch64 needs a cache attribute in every map.
    /// let mut table = Aarch64PageTable::new(PagePool::new(8), PagingType::Paging4Level)?;
    /// let code = table.map_memory_region(0x20_0000, 0x1000, MemoryAttributes::ReadOnly).unwrap_err();
    /// assert_eq!(code, PtError::IncompatibleMemoryAttributes);
    /// assert_eq!(table.last_error().unwrap().reason, Reason::MissingCacheAttribute);
    /// # Ok::<(), PtError>(())
    /// ```
    pub fn last_error(&self) -> Option<TxnError> {
        self.tables.last_error()
    }

    /// The engine-level table, for tools that walk raw entries.
    pub fn tables(&self) -> &Tables<A::Codec, P, M> {
        &self.tables
    }

    /// The engine-level table, mutably, for the architectures' own settings (AArch64's
    /// pinned ranges).
    pub(crate) fn tables_mut(&mut self) -> &mut Tables<A::Codec, P, M> {
        &mut self.tables
    }

    /// Starts a transaction: queue maps, unmaps and protects, then `plan` or `commit`.
    pub fn transaction(&mut self) -> Transaction<'_, A::Codec, P, M> {
        self.tables.transaction()
    }

    /// Gives back the table pages a [`Transaction::commit_retiring`] retired, once no CPU
    /// can still walk them.
    pub fn release(&mut self, retired: Retired) {
        self.tables.release(retired)
    }

    /// Whether the table is installed: commits on a live table invalidate the TLB entries
    /// they change (and on AArch64 follow break-before-make). `install_page_table` makes it
    /// live, and so does an AArch64 `from_existing`.
    pub fn is_live(&self) -> bool {
        self.tables.is_live()
    }

    /// Declares the table installed (or not) on some CPU, for tables installed by other code.
    pub fn set_live(&self, live: bool) {
        self.tables.set_live(live)
    }

    /// Sets the protection policy later transactions and one-op calls must obey: a
    /// change whose final state breaks it fails before any store with
    /// `IncompatibleMemoryAttributes` and [`Reason::PolicyViolation`](crate::Reason).
    /// [`Policy::off`](crate::Policy::off) (the default) removes it.
    ///
    /// ## Errors
    /// Range errors for a registered code or data range (the policy is then unchanged).
    pub fn set_policy(&mut self, policy: crate::Policy) -> Result<(), PtError> {
        self.tables.set_policy(policy)
    }

    /// The protection policy (off unless one was set).
    pub fn policy(&self) -> &crate::Policy {
        self.tables.policy()
    }

    /// Walks the whole table and reports W+X pages, executable pages outside the policy's
    /// code ranges, writable code, a mapped NULL page, executable MMIO, pages whose physical
    /// address `memory_map` (a UEFI memory map; empty: not checked) does not cover, and the
    /// mapped bytes per attribute combination. Its `Display` is a report for a bug.
    pub fn audit(&self, memory_map: &[crate::MemoryMapEntry]) -> crate::Audit {
        self.tables.audit(memory_map)
    }

    /// Maps `size` bytes at virtual `va` to physical `pa` (one-op transaction).
    pub fn map_aliased_memory_region(
        &mut self,
        va: u64,
        pa: u64,
        size: u64,
        attributes: MemoryAttributes,
    ) -> Result<(), PtError> {
        self.commit_one(Op::Map {
            va,
            pa,
            size,
            attributes,
        })
    }

    /// Changes the attributes of `size` mapped bytes at `address`, keeping the output
    /// addresses and, when `attributes` names no cache type, each page's cache type.
    pub fn protect_memory_region(
        &mut self,
        address: u64,
        size: u64,
        attributes: MemoryAttributes,
    ) -> Result<(), PtError> {
        self.commit_one(Op::Protect {
            va: address,
            size,
            attributes,
        })
    }

    /// [`query_memory_region`](PageTable::query_memory_region) with the detail of a failure:
    /// the rule and the first failing address (the first unmapped page, or the first page
    /// whose attributes differ from those at `address`), with the same codes.
    pub fn query_detail(&self, address: u64, size: u64) -> Result<MemoryAttributes, TxnError> {
        self.tables.query_detail(address, size)
    }

    /// Where `va` translates to, with the attributes of its page.
    pub fn translate(&self, va: u64) -> Option<(u64, MemoryAttributes)> {
        self.tables.translate(va)
    }

    /// The mapped regions in address order, adjacent identical pieces merged.
    pub fn regions(&self) -> Regions<'_, A::Codec, P> {
        self.tables.regions()
    }

    /// Iterator alias of [`regions`](Self::regions) using the familiar name.
    pub fn iter_mapped_regions(&self) -> impl Iterator<Item = MappedRegion> + '_ {
        self.tables.regions()
    }

    /// Number of table pages in use, the root included.
    pub fn table_pages(&self) -> usize {
        self.tables.table_pages()
    }

    /// Writes the dump of `size` bytes at `address` (see [`PageTable::dump_page_tables`]) to `out`.
    pub fn dump_to(&self, out: &mut dyn fmt::Write, address: u64, size: u64) -> Result<(), PtError> {
        dump::write(&self.tables, A::dump_format(), out, address, size)
    }

    /// Commits `op` alone, with the familiar calls' error: the seed's code, the full error
    /// logged and kept for [`last_error`](Self::last_error).
    fn commit_one(&mut self, op: Op) -> Result<(), PtError> {
        self.tables.commit_op(op).map(drop).map_err(crate::familiar_error)
    }
}

impl<A: Arch, P: PageAllocator, M: Mmu> PageTable for PagingTable<A, P, M> {
    fn map_memory_region(&mut self, address: u64, size: u64, attributes: MemoryAttributes) -> Result<(), PtError> {
        self.commit_one(Op::Map {
            va: address,
            pa: address,
            size,
            attributes,
        })
    }

    fn unmap_memory_region(&mut self, address: u64, size: u64) -> Result<(), PtError> {
        self.commit_one(Op::Unmap { va: address, size })
    }

    /// Hands the MMU the table's [`install_request`](PagingTable::install_request) (on X64:
    /// IA32_PAT, IA32_EFER.NXE, CR3; on AArch64: MAIR_ELx, TCR_ELx, TTBR0_ELx, see
    /// [`X64`](crate::x64::X64) and [`Aarch64`](crate::aarch64::Aarch64)) and marks the
    /// table live: later commits invalidate what they change (on AArch64 following
    /// break-before-make).
    fn install_page_table(&self) -> Result<(), PtError> {
        self.tables.tlb().install(&self.install_request())?;
        self.tables.set_live(true);
        Ok(())
    }

    fn query_memory_region(&self, address: u64, size: u64) -> Result<MemoryAttributes, PtError> {
        self.tables.query(address, size).inspect_err(|_| {
            if log::log_enabled!(log::Level::Debug) {
                if let Err(detail) = self.tables.query_detail(address, size) {
                    log::debug!("query_memory_region: {detail}");
                }
            }
        })
    }

    fn dump_page_tables(&self, address: u64, size: u64) {
        if let Err(error) = dump::log(&self.tables, A::dump_format(), address, size) {
            log::error!("dump_page_tables({address:#x}, {size:#x}) failed: {error}");
        }
    }
}
