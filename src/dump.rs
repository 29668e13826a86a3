//! `dump_page_tables`: a bit-column table of every non-empty entry on the walk of a range,
//! one row per entry, with the part of the asked range the entry covers (the seed's format),
//! and one "not mapped" row for each run of the range that nothing maps.

use core::fmt::{self, Write};

use txpaging_txn::{Codec, Geometry, PageAllocator, PtError, Tables, Tlb};

/// How one architecture's entries are laid out in a dump.
pub struct DumpFormat {
    /// Name of each level, leaf level first.
    pub level_names: &'static [&'static str],
    /// Column legend lines, aligned with the bit columns of a row.
    pub header: &'static [&'static str],
    /// (lowest bit, width) of each column, most significant first.
    pub columns: &'static [(u32, u32)],
    /// Printed width of each column (at least its bit width; the bits are right-aligned),
    /// or empty for the bit widths.
    pub cells: &'static [usize],
}

/// Width of the row prefix `NAME | [0x... 0x...] `.
const PREFIX: usize = 47;
const RULE: &str = "------------------------------------------------------------------------------------------------------------------------------------";

/// Writes the dump of `size` bytes at `address` to `out`.
pub(crate) fn write<C: Codec, P: PageAllocator, T: Tlb>(
    tables: &Tables<C, P, T>,
    format: &DumpFormat,
    out: &mut dyn Write,
    address: u64,
    size: u64,
) -> Result<(), PtError> {
    let last = address
        .checked_add(size.saturating_sub(1))
        .ok_or(PtError::AdditionOverflow)?;
    let mut result: fmt::Result = Ok(());
    let mut header = || -> fmt::Result {
        let title = alloc::format!("[0x{address:016X} 0x{last:016X}]");
        let side = RULE.len().saturating_sub(title.len()) / 2;
        writeln!(
            out,
            "{}{}{}",
            &RULE[..side],
            title,
            &RULE[..RULE.len() - side - title.len()]
        )?;
        for line in format.header {
            writeln!(out, "{:PREFIX$}{}", "", line)?;
        }
        writeln!(out, "{RULE}")
    };
    // Validate the range before printing anything.
    tables.visit_entries(address, size, &mut |_, _, _| {})?;
    header().map_err(|_| PtError::InternalError)?;
    // The run of the range nothing maps, not printed yet (first and last byte).
    let mut hole: Option<(u64, u64)> = None;
    tables.visit_entries(address, size, &mut |level, va, raw| {
        if result.is_err() {
            return;
        }
        // The part of the asked range this entry covers (canonical addresses: the range
        // was checked not to cross the canonical hole).
        let from = va.max(address);
        let to = va.wrapping_add(Geometry::entry_size(level) - 1).min(last);
        if raw == 0 {
            hole = match hole {
                Some((start, end)) if end.wrapping_add(1) == from => Some((start, to)),
                earlier => {
                    result = earlier.map_or(Ok(()), |(start, end)| write_hole(out, start, end));
                    Some((from, to))
                }
            };
            return;
        }
        if let Some((start, end)) = hole.take() {
            result = write_hole(out, start, end);
        }
        let name = format.level_names.get(usize::from(level)).copied().unwrap_or("?");
        result = result.and_then(|()| write_row(out, format, name, from, to, raw));
    })?;
    if let Some((start, end)) = hole {
        result = result.and_then(|()| write_hole(out, start, end));
    }
    result
        .and_then(|()| writeln!(out, "{RULE}"))
        .map_err(|_| PtError::InternalError)
}

fn write_row(out: &mut dyn Write, format: &DumpFormat, name: &str, va: u64, end: u64, raw: u64) -> fmt::Result {
    write!(out, "{name:<4} | [0x{va:016X} 0x{end:016X}] |")?;
    for (column, &(low, width)) in format.columns.iter().enumerate() {
        let value = (raw >> low) & ((1u64 << width) - 1);
        let bits = alloc::format!("{value:0width$b}", width = width as usize);
        let cell = format.cells.get(column).copied().unwrap_or(0);
        write!(out, "{bits:>cell$}|")?;
    }
    writeln!(out)
}

/// The row of a run of the range that no entry maps.
fn write_hole(out: &mut dyn Write, start: u64, end: u64) -> fmt::Result {
    writeln!(out, "{:<4} | [0x{start:016X} 0x{end:016X}] | not mapped", "")
}

/// Writes the dump through `log::info!`, one record per line.
pub(crate) fn log<C: Codec, P: PageAllocator, T: Tlb>(
    tables: &Tables<C, P, T>,
    format: &DumpFormat,
    address: u64,
    size: u64,
) -> Result<(), PtError> {
    let mut lines = LogLines(alloc::string::String::new());
    write(tables, format, &mut lines, address, size)
}

/// A `fmt::Write` that sends each completed line to `log::info!`.
struct LogLines(alloc::string::String);

impl Write for LogLines {
    fn write_str(&mut self, text: &str) -> fmt::Result {
        for piece in text.split_inclusive('\n') {
            match piece.strip_suffix('\n') {
                Some(line) => {
                    log::info!("{}{}", self.0, line);
                    self.0.clear();
                }
                None => self.0.push_str(piece),
            }
        }
        Ok(())
    }
}
