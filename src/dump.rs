//! `dump_page_tables`: a bit-column table of every non-empty entry on the walk of a range,
//! one row per entry, with the virtual range the entry covers.

use core::fmt::{self, Write};

use txpaging_txn::{Codec, Geometry, PageAllocator, PtError, Tables, Tlb};

/// How one architecture's entries are laid out in a dump.
pub(crate) struct DumpFormat {
    /// Name of each level, leaf level first.
    pub level_names: &'static [&'static str],
    /// Column legend lines, aligned with the bit columns of a row.
    pub header: &'static [&'static str],
    /// (lowest bit, width) of each column, most significant first.
    pub columns: &'static [(u32, u32)],
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
    tables.visit_entries(address, size, &mut |level, va, raw| {
        if raw == 0 || result.is_err() {
            return;
        }
        let end = va.wrapping_add(Geometry::entry_size(level) - 1);
        let name = format.level_names.get(usize::from(level)).copied().unwrap_or("?");
        result = write_row(out, format, name, va, end, raw);
    })?;
    result
        .and_then(|()| writeln!(out, "{RULE}"))
        .map_err(|_| PtError::InternalError)
}

fn write_row(out: &mut dyn Write, format: &DumpFormat, name: &str, va: u64, end: u64, raw: u64) -> fmt::Result {
    write!(out, "{name:<4} | [0x{va:016X} 0x{end:016X}] |")?;
    for &(low, width) in format.columns {
        let value = (raw >> low) & ((1u64 << width) - 1);
        write!(out, "{value:0width$b}|", width = width as usize)?;
    }
    writeln!(out)
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
