//! Reading a table: query, translate, the mapped-region iterator and the entry visitor.

use core::ops::ControlFlow;

use crate::allocator::PageAllocator;
use crate::attributes::MemoryAttributes;
use crate::codec::{Codec, Entry};
use crate::error::{Fault, PtError, Reason, TxnError};
use crate::geometry::{Geometry, ENTRIES_PER_TABLE};
use crate::hex::Hex;
use crate::memory::TableMemory;
use crate::table::Tables;
use crate::tlb::Tlb;

/// A run of mapped memory: adjacent pages with contiguous output addresses and the same
/// attributes. `Debug` prints `va`, `pa` and `size` in hex.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct MappedRegion {
    /// Canonical virtual address of the first byte.
    pub va: u64,
    /// Physical address of the first byte.
    pub pa: u64,
    /// Bytes.
    pub size: u64,
    /// Attributes, exactly as mapped.
    pub attributes: MemoryAttributes,
}

impl core::fmt::Debug for MappedRegion {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("MappedRegion")
            .field("va", &Hex(self.va))
            .field("pa", &Hex(self.pa))
            .field("size", &Hex(self.size))
            .field("attributes", &self.attributes)
            .finish()
    }
}

impl<C: Codec, P: PageAllocator, T: Tlb> Tables<C, P, T> {
    /// The attributes of `size` bytes at `address` if all are mapped with the same ones.
    ///
    /// Errors: range errors as for a map, `NoMapping` if any page is unmapped,
    /// `NonUniformMemoryAttributes` if the pages differ.
    pub fn query(&self, address: u64, size: u64) -> Result<MemoryAttributes, PtError> {
        let (start, end) = self.geometry().linear_range(address, size)?;
        // The common query lies inside one entry: one walk, no visitor.
        let (entry, _, entry_end) = self.entry_at(start);
        if end <= entry_end {
            return match entry {
                Entry::Leaf { attributes, .. } => Ok(attributes),
                Entry::Invalid | Entry::Table(_) => Err(PtError::NoMapping),
            };
        }
        let mut found: Option<MemoryAttributes> = None;
        let mut uniform = true;
        let flow = self.visit_leaves(start, end, &mut |_, _, leaf| match leaf {
            None => ControlFlow::Break(()),
            Some((_, attributes)) => {
                match found {
                    None => found = Some(attributes),
                    Some(first) => uniform &= first == attributes,
                }
                ControlFlow::Continue(())
            }
        });
        match (flow, found) {
            (ControlFlow::Break(()), _) | (_, None) => Err(PtError::NoMapping),
            (_, Some(_)) if !uniform => Err(PtError::NonUniformMemoryAttributes),
            (_, Some(attributes)) => Ok(attributes),
        }
    }

    /// [`query`](Self::query) with the detail of a failure: the range error's reason, or the
    /// first unmapped page, or (when every page is mapped) the first page whose attributes
    /// differ from those at `address`. Same codes as `query`.
    pub fn query_detail(&self, address: u64, size: u64) -> Result<MemoryAttributes, TxnError> {
        let error = |fault: Fault| {
            TxnError::whole(fault.code())
                .with_range(address, size)
                .with_detail(fault.reason, fault.address)
        };
        let geometry = self.geometry();
        let (start, end) = geometry.check_range(address, size).map_err(error)?;
        let mut first: Option<MemoryAttributes> = None;
        let mut differs: Option<u64> = None;
        let mut unmapped: Option<u64> = None;
        let _ = self.visit_leaves(start, end, &mut |va, _, leaf| match leaf {
            None => {
                unmapped = Some(va);
                ControlFlow::Break(())
            }
            Some((_, attributes)) => {
                match first {
                    None => first = Some(attributes),
                    Some(at_start) if at_start != attributes && differs.is_none() => differs = Some(va),
                    Some(_) => {}
                }
                ControlFlow::Continue(())
            }
        });
        match (unmapped, differs, first) {
            (Some(va), _, _) => Err(error(Fault::new(Reason::QueriedNotMapped, geometry.to_canonical(va)))),
            (None, Some(va), _) => Err(error(Fault::new(Reason::AttributesDiffer, geometry.to_canonical(va)))),
            (None, None, Some(attributes)) => Ok(attributes),
            (None, None, None) => Err(error(Fault::new(Reason::QueriedNotMapped, address))),
        }
    }

    /// Where canonical `va` translates to: its physical address and attributes.
    pub fn translate(&self, va: u64) -> Option<(u64, MemoryAttributes)> {
        let linear = self.geometry().to_linear(va)?;
        match self.entry_at(linear) {
            (Entry::Leaf { pa, attributes }, start, _) => Some((pa + (linear - start), attributes)),
            _ => None,
        }
    }

    /// The entry that ends the walk for linear `va` (a leaf or an invalid entry), with the
    /// linear start and end of its range.
    fn entry_at(&self, va: u64) -> (Entry, u64, u64) {
        let memory = TableMemory::new(self.allocator());
        let mut table = self.root();
        let mut level = self.geometry().top_level();
        loop {
            let size = Geometry::entry_size(level);
            let start = va & !(size - 1);
            match C::decode(memory.read(table, Geometry::index(va, level)), level) {
                Entry::Table(next) if level > 0 => {
                    table = next;
                    level -= 1;
                }
                entry => return (entry, start, start + size),
            }
        }
    }

    /// The mapped regions, in address order, adjacent identical pieces merged.
    pub fn regions(&self) -> Regions<'_, C, P> {
        Regions::new(TableMemory::new(self.allocator()), self.geometry(), self.root())
    }

    /// Calls `visit(level, canonical_va, raw)` for every entry, at every level, whose range
    /// overlaps `size` bytes at `address`, parents before children.
    pub fn visit_entries(&self, address: u64, size: u64, visit: &mut dyn FnMut(u8, u64, u64)) -> Result<(), PtError> {
        let (start, end) = self.geometry().linear_range(address, size)?;
        let memory = TableMemory::new(self.allocator());
        let geometry = self.geometry();
        visit_table::<C, P>(
            &memory,
            &geometry,
            self.root(),
            geometry.top_level(),
            0,
            start,
            end,
            visit,
        );
        Ok(())
    }

    /// The first linear address in `start..end` mapped `Uncached` or `UncachedExport`.
    pub(crate) fn first_mmio(&self, start: u64, end: u64) -> Option<u64> {
        let mmio = MemoryAttributes::Uncached | MemoryAttributes::UncachedExport;
        let mut found = None;
        let _ = self.visit_leaves(start, end, &mut |piece, _, leaf| match leaf {
            Some((_, attributes)) if attributes.intersects(mmio) => {
                found = Some(piece);
                ControlFlow::Break(())
            }
            _ => ControlFlow::Continue(()),
        });
        found
    }

    /// Calls `f(linear_start, linear_end, leaf)` for each piece of `start..end`, with
    /// `leaf` the (pa of the piece's start, attributes), or `None` where unmapped.
    pub(crate) fn visit_leaves(
        &self,
        start: u64,
        end: u64,
        f: &mut dyn FnMut(u64, u64, Option<(u64, MemoryAttributes)>) -> ControlFlow<()>,
    ) -> ControlFlow<()> {
        fn walk<C: Codec, P: PageAllocator>(
            memory: &TableMemory<'_, P>,
            table: u64,
            level: u8,
            table_va: u64,
            start: u64,
            end: u64,
            f: &mut dyn FnMut(u64, u64, Option<(u64, MemoryAttributes)>) -> ControlFlow<()>,
        ) -> ControlFlow<()> {
            let size = Geometry::entry_size(level);
            let mut va = start;
            while va < end {
                let index = Geometry::index(va, level);
                let entry_va = table_va + index as u64 * size;
                let piece_end = (entry_va + size).min(end);
                match C::decode(memory.read(table, index), level) {
                    Entry::Invalid => f(va, piece_end, None)?,
                    Entry::Leaf { pa, attributes } => f(va, piece_end, Some((pa + (va - entry_va), attributes)))?,
                    Entry::Table(child) => walk::<C, P>(memory, child, level - 1, entry_va, va, piece_end, f)?,
                }
                va = piece_end;
            }
            ControlFlow::Continue(())
        }
        let memory = TableMemory::new(self.allocator());
        walk::<C, P>(&memory, self.root(), self.geometry().top_level(), 0, start, end, f)
    }
}

#[allow(clippy::too_many_arguments)]
fn visit_table<C: Codec, P: PageAllocator>(
    memory: &TableMemory<'_, P>,
    geometry: &Geometry,
    table: u64,
    level: u8,
    table_va: u64,
    start: u64,
    end: u64,
    visit: &mut dyn FnMut(u8, u64, u64),
) {
    let size = Geometry::entry_size(level);
    let mut va = start;
    while va < end {
        let index = Geometry::index(va, level);
        let entry_va = table_va + index as u64 * size;
        let piece_end = (entry_va + size).min(end);
        let raw = memory.read(table, index);
        visit(level, geometry.to_canonical(entry_va), raw);
        if let Entry::Table(child) = C::decode(raw, level) {
            visit_table::<C, P>(memory, geometry, child, level - 1, entry_va, va, piece_end, visit);
        }
        va = piece_end;
    }
}

/// Iterator over the mapped regions of a table (see [`Tables::regions`]).
pub struct Regions<'a, C: Codec, P: PageAllocator> {
    memory: TableMemory<'a, P>,
    geometry: Geometry,
    /// (table, level, next index, table's linear va), root first.
    stack: heapless::Vec<(u64, u8, usize, u64), 6>,
    /// The region being grown, in linear addresses.
    pending: Option<MappedRegion>,
    _codec: core::marker::PhantomData<C>,
}

impl<'a, C: Codec, P: PageAllocator> Regions<'a, C, P> {
    fn new(memory: TableMemory<'a, P>, geometry: Geometry, root: u64) -> Self {
        let mut stack = heapless::Vec::new();
        let _ = stack.push((root, geometry.top_level(), 0, 0));
        Self {
            memory,
            geometry,
            stack,
            pending: None,
            _codec: core::marker::PhantomData,
        }
    }

    /// The next leaf in address order: (linear va, pa, size, attributes).
    fn next_leaf(&mut self) -> Option<(u64, u64, u64, MemoryAttributes)> {
        loop {
            let (table, level, index, table_va) = self.stack.last_mut()?;
            if *index == ENTRIES_PER_TABLE {
                self.stack.pop();
                continue;
            }
            let (table, level, this, table_va) = (*table, *level, *index, *table_va);
            *index += 1;
            let size = Geometry::entry_size(level);
            let entry_va = table_va + this as u64 * size;
            match C::decode(self.memory.read(table, this), level) {
                Entry::Invalid => {}
                Entry::Leaf { pa, attributes } => return Some((entry_va, pa, size, attributes)),
                Entry::Table(child) => {
                    // Depth is bounded by the number of levels (at most 5 < 6).
                    let _ = self.stack.push((child, level - 1, 0, entry_va));
                }
            }
        }
    }

    fn to_canonical(&self, mut region: MappedRegion) -> MappedRegion {
        region.va = self.geometry.to_canonical(region.va);
        region
    }
}

impl<C: Codec, P: PageAllocator> Iterator for Regions<'_, C, P> {
    type Item = MappedRegion;

    fn next(&mut self) -> Option<MappedRegion> {
        let hole = self
            .geometry
            .sign_extended
            .then(|| 1u64 << (self.geometry.va_bits() - 1));
        while let Some((va, pa, size, attributes)) = self.next_leaf() {
            match &mut self.pending {
                Some(p)
                    if p.va + p.size == va
                        && p.pa.checked_add(p.size) == Some(pa)
                        && p.attributes == attributes
                        && Some(va) != hole =>
                {
                    p.size += size;
                }
                _ => {
                    let done = self.pending.replace(MappedRegion {
                        va,
                        pa,
                        size,
                        attributes,
                    });
                    if let Some(done) = done {
                        return Some(self.to_canonical(done));
                    }
                }
            }
        }
        self.pending.take().map(|r| self.to_canonical(r))
    }
}
