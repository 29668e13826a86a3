//! Secondary cores (placeholder while the PSCI bring-up is written).
use crate::arch::Table;
use crate::model::Model;

pub const ALIAS: u64 = crate::live::ALIAS + 0x4000_0000;
pub const SHARED_PAGE: u64 = crate::live::ALIAS + 0xC000_0000;

pub fn run(table: Table, _model: &mut Model, _buffer: u64) -> (Table, usize) {
    (table, 0)
}
