//! The AArch64 target of the reference-model harness: `Aarch64PageTable` of the EL1&0
//! regime (`Aarch64Target`, `Aarch64Target<El1>`) or of the EL2 regime
//! (`Aarch64Target<El2>`), with 3 levels (39-bit VA, root L1) or 4 levels (48-bit VA, root
//! L0), 1 GiB blocks on or off, a [`RecordingMmu`] and a [`TestPool`].
//!
//! [`Aarch64Target::decode`] is this harness's own reading of the descriptor encoding of
//! `docs/paging.md` A2 and, for EL2, A9 (never the library's codec). It accepts exactly the
//! bit patterns the documented encoding produces and rejects everything else (reserved
//! descriptor types, RES0 and unused bits, AF = 0, SH other than Inner Shareable, AttrIndx 6
//! or 7, device memory that may be executed, inconsistent software bits, unaligned block
//! addresses; at EL2: PXN (bit 53, RES0), AP\[1\] clear (RES1), nG set (RES0)).
//!
//! The test tables are never installed, so commits are not phased: no breaks and no
//! barriers happen here (`take_tlb_log` insists). The sequences of an installed table are
//! checked in `tests/aarch64_sequences.rs`.

use super::*;
use txpaging::aarch64::{El1, Regime};
use txpaging::{Aarch64Config, Aarch64PageTable};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Aarch64Cfg {
    /// `PagingType::Paging3Level` (39-bit VA) instead of `Paging4Level` (48-bit VA).
    pub three_level: bool,
    /// `Aarch64Config::one_gib_blocks`.
    pub one_gib_blocks: bool,
}

pub struct Aarch64Target<R: Regime = El1> {
    pub table: Aarch64PageTable<TestPool, RecordingMmu, R>,
    pub cfg: Aarch64Cfg,
}

/// The documented attribute rules (paging.md A7): unknown bits first (`InvalidParameter`),
/// then the number of cache attributes: exactly one for a map, at most one for a protect.
fn aarch64_check_attributes(attrs: MA, min_caches: u32) -> Result<(), PtError> {
    let known = MA::CacheAttributesMask.bits() | MA::AccessAttributesMask.bits();
    if attrs.bits() & !known != 0 {
        return Err(PtError::InvalidParameter);
    }
    let caches = (attrs.bits() & MA::CacheAttributesMask.bits()).count_ones();
    if caches < min_caches || caches > 1 {
        return Err(PtError::IncompatibleMemoryAttributes);
    }
    Ok(())
}

/// Descriptor fields (Arm ARM D8.3, D8.4, D8.5) and the crate's software bits (paging.md A2).
mod desc {
    /// Bit 0: valid.
    pub const VALID: u64 = 1 << 0;
    /// Bit 1: table (L0-L2) or page (L3) when set, block (L1, L2) when clear.
    pub const TYPE: u64 = 1 << 1;
    /// AttrIndx\[2:0\], bits 4:2.
    pub const ATTR_INDEX: u64 = 7 << 2;
    /// AP\[2\]: read-only.
    pub const AP_READ_ONLY: u64 = 1 << 7;
    /// SH\[1:0\] = 0b11, Inner Shareable.
    pub const SH_INNER: u64 = 3 << 8;
    /// Access flag.
    pub const AF: u64 = 1 << 10;
    /// Output address bits 47:12 (48-bit OA, no FEAT_LPA2).
    pub const OA: u64 = 0x0000_FFFF_FFFF_F000;
    pub const PXN: u64 = 1 << 53;
    pub const UXN: u64 = 1 << 54;
    /// EL2: XN is bit 54 (where EL1&0 has UXN), bit 53 is RES0 (Arm ARM D8.3.2).
    pub const XN_EL2: u64 = 1 << 54;
    /// AP\[1\]: EL0 access at EL1&0 (never set); RES1 at EL2 (Arm ARM D8.4.1.2).
    pub const AP1: u64 = 1 << 6;
    /// Software bit 55: a ReadProtect leaf (then bit 0 is clear).
    pub const SW_READ_PROTECTED: u64 = 1 << 55;
    /// Software bit 56: UXN/PXN forced by device memory, ExecuteProtect not asked.
    pub const SW_XN_FORCED: u64 = 1 << 56;
}

impl<R: Regime> Aarch64Target<R> {
    /// Whether the table is of the EL2 regime (one privilege level).
    fn el2() -> bool {
        R::EL == 2
    }
}

impl<R: Regime> ModelTarget for Aarch64Target<R> {
    type Config = Aarch64Cfg;

    fn build(cfg: Aarch64Cfg, pool_pages: usize) -> Self {
        let paging = if cfg.three_level {
            PagingType::Paging3Level
        } else {
            PagingType::Paging4Level
        };
        let config = Aarch64Config {
            one_gib_blocks: cfg.one_gib_blocks,
            ..Aarch64Config::default()
        };
        let table = Aarch64PageTable::with_regime(
            TestPool::new(pool_pages),
            paging,
            config,
            RecordingMmu::new(),
            R::default(),
        )
        .expect("creating a table");
        Self { table, cfg }
    }

    fn shape(&self) -> Shape {
        Shape {
            levels: if self.cfg.three_level { 3 } else { 4 },
            max_leaf_level: if self.cfg.one_gib_blocks { 2 } else { 1 },
            sign_extended: false,
            pa_bits: 48,
        }
    }

    fn windows(&self) -> Vec<Window> {
        let w = |base, len, weight, gib| Window { base, len, weight, gib };
        let space = self.shape().space();
        let mut v = vec![
            // Page 0 and the first 2 MiB boundaries.
            w(0, 8 << 20, 30, false),
            // Around the first 1 GiB boundary.
            w(GIB - (4 << 20), 8 << 20, 25, false),
            // Whole-GiB playground (small ops too).
            w(4 * GIB, 4 * GIB, 15, true),
            // Around the middle of the space: no hole there, unlike X64.
            w(space / 2 - (4 << 20), 8 << 20, 4, false),
            // The top of the TTBR0 space (ranges clamp to it; bad ops run past it).
            w(space - (4 << 20), 4 << 20, 6, false),
        ];
        if !self.cfg.three_level {
            // Around the first 512 GiB boundary (L0 entry).
            v.push(w((512 * GIB) - (4 << 20), 8 << 20, 15, false));
        }
        v
    }

    fn invalid_addresses(&self) -> Vec<u64> {
        let mut v = vec![1u64 << 48, 0xFFFF_0000_0000_0000, 0x0100_0000_0000_0000];
        if self.cfg.three_level {
            v.push(1u64 << 39);
        }
        v
    }

    fn page_invalidation_limit() -> usize {
        512
    }

    fn check_map_attributes(attrs: MA) -> Result<(), PtError> {
        aarch64_check_attributes(attrs, 1)
    }

    fn check_protect_attributes(attrs: MA) -> Result<(), PtError> {
        aarch64_check_attributes(attrs, 0)
    }

    fn map_cache_optional() -> bool {
        false
    }

    fn transaction(
        &mut self,
        ops: &[MOp],
        plan_first: bool,
    ) -> (Option<Result<Plan, TxnError>>, Result<CommitReport, TxnError>) {
        let mut t = self.table.transaction();
        queue(&mut t, ops);
        let plan = plan_first.then(|| t.plan());
        let result = t.commit();
        assert!(t.ops().is_empty(), "commit must empty the queue");
        if let Some(Ok(plan)) = &plan {
            assert_eq!(plan.breaks, 0, "a table nobody walks planned breaks");
        }
        if let Ok(report) = &result {
            assert_eq!(report.breaks, 0, "a table nobody walks was broken: {report:?}");
            assert!(report.invalidation_batches <= 1, "{report:?}");
        }
        (plan, result)
    }

    fn plan(&mut self, ops: &[MOp]) -> Result<Plan, TxnError> {
        let mut t = self.table.transaction();
        queue(&mut t, ops);
        t.plan()
    }

    fn one_op(&mut self, op: &MOp) -> Result<(), PtError> {
        match *op {
            MOp::Map { va, size, attrs } => self.table.map_memory_region(va, size, attrs),
            MOp::MapAliased { va, pa, size, attrs } => self.table.map_aliased_memory_region(va, pa, size, attrs),
            MOp::Unmap { va, size } => self.table.unmap_memory_region(va, size),
            MOp::Protect { va, size, attrs } => self.table.protect_memory_region(va, size, attrs),
        }
    }

    fn query(&self, va: u64, size: u64) -> Result<MA, PtError> {
        self.table.query_memory_region(va, size)
    }

    fn translate(&self, va: u64) -> Option<(u64, MA)> {
        self.table.translate(va)
    }

    fn regions(&self) -> Vec<MappedRegion> {
        self.table.regions().collect()
    }

    fn table_pages(&self) -> usize {
        self.table.table_pages()
    }

    fn root(&self) -> u64 {
        self.table.root()
    }

    fn read_entry(&self, table: u64, index: usize) -> u64 {
        self.table.tables().read_entry(table, index)
    }

    fn visit_entries(&self, va: u64, size: u64, visit: &mut dyn FnMut(u8, u64, u64)) -> Result<(), PtError> {
        self.table.tables().visit_entries(va, size, visit)
    }

    fn decode(&self, raw: u64, level: u8) -> Result<RawEntry, String> {
        use desc::*;
        if raw == 0 {
            return Ok(RawEntry::Invalid);
        }
        let valid = raw & VALID != 0;
        let read_protected = raw & SW_READ_PROTECTED != 0;
        if !valid && !read_protected {
            return Err(format!(
                "invalid descriptor {raw:#x} at level {level} is neither zero nor a ReadProtect leaf"
            ));
        }
        if valid && read_protected {
            return Err(format!(
                "valid descriptor {raw:#x} at level {level} has the ReadProtect bit"
            ));
        }
        let type_bit = raw & TYPE != 0;
        if level > 0 && type_bit {
            // A table descriptor: 0b11 | next-level table address, nothing else.
            if !valid {
                return Err(format!(
                    "ReadProtect descriptor {raw:#x} at level {level} has the table type bit"
                ));
            }
            if raw & !OA != VALID | TYPE {
                return Err(format!(
                    "table descriptor {raw:#x} at level {level} is not exactly 0b11 | address"
                ));
            }
            return Ok(RawEntry::Table(raw & OA));
        }
        if level == 0 && !type_bit {
            return Err(format!(
                "L3 descriptor {raw:#x} has type 0b{:b}0 (reserved, or a block at L3)",
                raw & VALID
            ));
        }
        if level > self.shape().max_leaf_level {
            return Err(format!(
                "block {raw:#x} at level {level}, above the highest block level"
            ));
        }
        let oa = OA & !(Shape::entry_size(level) - 1);
        let type_bits = if level == 0 { TYPE } else { 0 };
        // EL1&0: PXN and UXN; EL2: XN (bit 54) and AP[1] (RES1), no bit 53 (RES0).
        let regime_bits = if Self::el2() { XN_EL2 | AP1 } else { PXN | UXN };
        let allowed = VALID
            | type_bits
            | ATTR_INDEX
            | AP_READ_ONLY
            | SH_INNER
            | AF
            | oa
            | regime_bits
            | SW_READ_PROTECTED
            | SW_XN_FORCED;
        if raw & !allowed != 0 {
            return Err(format!(
                "leaf {raw:#x} at level {level} has bits {:#x} the encoding never sets \
                 (NS, AP[1] at EL1&0, nG, RES0, PXN at EL2, GP, DBM, Contiguous, SW 58:57, 63:59, \
                 or address bits below the block size)",
                raw & !allowed
            ));
        }
        if Self::el2() && raw & AP1 == 0 {
            return Err(format!(
                "EL2 leaf {raw:#x} at level {level} has AP[1] = 0 (RES1 in a regime with one Exception level)"
            ));
        }
        if raw & SH_INNER != SH_INNER {
            return Err(format!("leaf {raw:#x} at level {level} is not Inner Shareable"));
        }
        if raw & AF == 0 {
            return Err(format!("leaf {raw:#x} at level {level} has AF = 0"));
        }
        let index = (raw & ATTR_INDEX) >> 2;
        // MAIR_LAYOUT: 0, 1 Device-nGnRnE; 2 Normal NC; 3 WT; 4 WB; 5 WT no write-allocate.
        let cache = match index {
            0 => MA::Uncached,
            1 => MA::UncachedExport,
            2 => MA::WriteCombining,
            3 => MA::WriteThrough,
            4 => MA::Writeback,
            5 => MA::WriteProtect,
            _ => {
                return Err(format!(
                    "leaf {raw:#x} at level {level} uses the unused AttrIndx {index}"
                ))
            }
        };
        let device = index <= 1;
        // The execute-never bit of the regime's own level: PXN at EL1&0 (UXN always equal),
        // XN at EL2.
        let pxn = if Self::el2() {
            raw & XN_EL2 != 0
        } else {
            let (pxn, uxn) = (raw & PXN != 0, raw & UXN != 0);
            if pxn != uxn {
                return Err(format!("leaf {raw:#x} at level {level} has PXN != UXN"));
            }
            pxn
        };
        let forced = raw & SW_XN_FORCED != 0;
        if device && !pxn {
            return Err(format!("device leaf {raw:#x} at level {level} is executable"));
        }
        if forced && !device {
            return Err(format!(
                "normal-memory leaf {raw:#x} at level {level} has the forced-XN bit"
            ));
        }
        let mut attrs = cache;
        attrs.set(MA::ReadProtect, !valid);
        attrs.set(MA::ReadOnly, raw & AP_READ_ONLY != 0);
        attrs.set(MA::ExecuteProtect, pxn && !forced);
        Ok(RawEntry::Leaf {
            pa: raw & oa,
            attrs,
            live: valid,
        })
    }

    fn take_tlb_log(&self) -> Vec<TlbOp> {
        let live = self.table.is_live();
        self.table
            .mmu()
            .take_log()
            .into_iter()
            .filter_map(|op| match op {
                MmuOp::InvalidatePage(va) => Some(TlbOp::Page(va)),
                MmuOp::InvalidateAll => Some(TlbOp::All),
                MmuOp::Install(request) => panic!("a commit installed a table: {request:?}"),
                // Ordering barriers change no translation; a table nobody walks gets none.
                MmuOp::Barrier(barrier) => {
                    assert!(live, "a commit on a table nobody walks issued {barrier:?}");
                    None
                }
            })
            .collect()
    }

    fn must_invalidate(&self) -> bool {
        // A table being built needs no TLBI: installing it ends with TLBI VMALLE1IS.
        self.table.is_live()
    }

    fn pool(&self) -> &PagePool {
        &self.table.allocator().pool
    }

    fn fail_allocation_at(&self, call: Option<usize>) {
        self.table.allocator().fail_at.set(call);
    }

    fn set_policy(&mut self, policy: Policy) -> Result<(), PtError> {
        self.table.set_policy(policy)
    }
}

/// The directed AArch64 scenario of `tests/model.rs` (also a fuzz seed) for a space whose
/// top is `top`: the X64 one plus memory-type changes, with the alias at the top of TTBR0.
pub fn aarch64_split_merge_steps(top: u64) -> Vec<Vec<MOp>> {
    let wb = MA::Writeback;
    let mut steps = super::split_merge_opening();
    steps.extend([
        // Memory type changes: device memory is execute-never in hardware, but reads
        // back as mapped.
        vec![MOp::Protect {
            va: GIB + 7 * MIB2,
            size: MIB2,
            attrs: MA::Uncached,
        }],
        vec![MOp::Protect {
            va: GIB + 7 * MIB2,
            size: PAGE,
            attrs: MA::UncachedExport | MA::ExecuteProtect | MA::ReadProtect,
        }],
        vec![MOp::Protect {
            va: GIB + 7 * MIB2,
            size: MIB2,
            attrs: wb,
        }],
        vec![
            MOp::Unmap {
                va: GIB + MIB2,
                size: MIB2,
            },
            MOp::Map {
                va: GIB + MIB2,
                size: MIB2,
                attrs: wb,
            },
        ],
        vec![MOp::MapAliased {
            va: top - MIB2,
            pa: 0x4000_0000,
            size: MIB2,
            attrs: wb,
        }],
        vec![MOp::Unmap { va: GIB, size: GIB }],
        // Built up page by page, then merged to one block by the last page.
        (0..512)
            .map(|i| MOp::Map {
                va: 0x40_0000 + i * PAGE,
                size: PAGE,
                attrs: MA::WriteThrough,
            })
            .collect(),
    ]);
    steps
}
