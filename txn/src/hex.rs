//! `Hex`: an address, size or entry value that prints as `0x…` in `Debug` and `Display`.

use core::fmt;

/// An address, a size or a raw entry value, printed in hex (`0x200000`) by both `Debug`
/// and `Display`. The manual `Debug` impls of this crate's public types use it, so
/// `{:?}` shows addresses the way firmware logs and manuals write them.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Hex(pub u64);

impl fmt::Debug for Hex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}", self.0)
    }
}

impl fmt::Display for Hex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}", self.0)
    }
}

/// A list of `(address, pages)` runs printed as `[(0x100000, 1), …]`: hex address,
/// decimal count.
pub(crate) struct HexRuns<'a>(pub(crate) &'a [(u64, u64)]);

impl fmt::Debug for HexRuns<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.0.iter().map(|&(va, pages)| (Hex(va), pages)))
            .finish()
    }
}

/// A list of addresses printed as `[0x1000, 0x2000]`.
pub(crate) struct HexList<'a>(pub(crate) &'a [u64]);

impl fmt::Debug for HexList<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.0.iter().map(|&a| Hex(a))).finish()
    }
}
