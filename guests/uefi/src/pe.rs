//! The section layout of a loaded PE/COFF image (PE format: the COFF file header, the
//! PE32+ optional header's SectionAlignment and SizeOfHeaders, and the section table).

use alloc::vec::Vec;

/// One page-aligned piece of an image and what it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Piece {
    Headers,
    Code,
    ReadOnlyData,
    Data,
}

const IMAGE_SCN_MEM_EXECUTE: u32 = 0x2000_0000;
const IMAGE_SCN_MEM_WRITE: u32 = 0x8000_0000;

fn u16_at(bytes: &[u8], offset: usize) -> Option<u16> {
    Some(u16::from_le_bytes(bytes.get(offset..offset + 2)?.try_into().ok()?))
}

fn u32_at(bytes: &[u8], offset: usize) -> Option<u32> {
    Some(u32::from_le_bytes(bytes.get(offset..offset + 4)?.try_into().ok()?))
}

/// Why an image is left as the firmware mapped it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skip {
    NotPe,
    SectionAlignment(u32),
}

/// The image's pieces as `(offset, size, piece)`, page aligned, or why it cannot be split.
pub fn pieces(image: &[u8]) -> Result<Vec<(u64, u64, Piece)>, Skip> {
    let pe = u32_at(image, 0x3C).ok_or(Skip::NotPe)? as usize;
    if u16_at(image, 0) != Some(0x5A4D) || u32_at(image, pe) != Some(0x0000_4550) {
        return Err(Skip::NotPe);
    }
    let coff = pe + 4;
    let sections = u16_at(image, coff + 2).ok_or(Skip::NotPe)? as usize;
    let optional_size = u16_at(image, coff + 16).ok_or(Skip::NotPe)? as usize;
    let optional = coff + 20;
    let section_alignment = u32_at(image, optional + 32).ok_or(Skip::NotPe)?;
    let headers = u32_at(image, optional + 60).ok_or(Skip::NotPe)? as u64;
    if section_alignment % 4096 != 0 {
        return Err(Skip::SectionAlignment(section_alignment));
    }
    let round = |size: u64| (size + 4095) & !4095;
    let mut pieces = Vec::new();
    pieces.push((0, round(headers), Piece::Headers));
    let table = optional + optional_size;
    for index in 0..sections {
        let entry = table + 40 * index;
        let virtual_size = u32_at(image, entry + 8).ok_or(Skip::NotPe)? as u64;
        let address = u32_at(image, entry + 12).ok_or(Skip::NotPe)? as u64;
        let flags = u32_at(image, entry + 36).ok_or(Skip::NotPe)?;
        if virtual_size == 0 {
            continue;
        }
        let piece = if flags & IMAGE_SCN_MEM_EXECUTE != 0 {
            Piece::Code
        } else if flags & IMAGE_SCN_MEM_WRITE != 0 {
            Piece::Data
        } else {
            Piece::ReadOnlyData
        };
        pieces.push((address, round(virtual_size), piece));
    }
    Ok(pieces)
}
