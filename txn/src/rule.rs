//! `Rule`: the protection rules a final state can break. A leaf module: the policy checks
//! them and errors name them.

use core::fmt;

/// The rule a final state breaks: what a [`Reason::PolicyViolation`](crate::Reason) names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Rule {
    /// [`Rules::NO_NULL_PAGE`](crate::Rules::NO_NULL_PAGE): a present page at virtual 0..4 KiB.
    NullPage,
    /// [`Rules::WRITE_XOR_EXECUTE`](crate::Rules::WRITE_XOR_EXECUTE): a page both writable and executable.
    WriteXorExecute,
    /// [`Rules::NO_EXECUTABLE_MMIO`](crate::Rules::NO_EXECUTABLE_MMIO): an executable `Uncached`/`UncachedExport` page.
    ExecutableMmio,
    /// A present page of a registered code range without `ReadOnly`.
    WritableCode,
    /// A present page of a registered data range without `ExecuteProtect`.
    ExecutableData,
}

impl Rule {
    /// A short name for reports: `W^X`, `NULL page`, ...
    pub const fn name(self) -> &'static str {
        match self {
            Rule::NullPage => "NULL page",
            Rule::WriteXorExecute => "W^X",
            Rule::ExecutableMmio => "executable MMIO",
            Rule::WritableCode => "writable code",
            Rule::ExecutableData => "executable data",
        }
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = match self {
            Rule::NullPage => "NULL page: virtual 0..0x1000 must not be mapped present",
            Rule::WriteXorExecute => "W^X: a present page must be ReadOnly or ExecuteProtect",
            Rule::ExecutableMmio => "executable MMIO: an Uncached/UncachedExport page must be ExecuteProtect",
            Rule::WritableCode => "writable code: a registered code range must stay ReadOnly",
            Rule::ExecutableData => "executable data: a registered data range must stay ExecuteProtect",
        };
        f.write_str(text)
    }
}
