//! What differs between X64 and AArch64: registers, the serial port, exceptions and probes,
//! adopting the firmware's table, installing, restoring, and bringing up the other cores.
//! Each architecture module offers the same names; `main` and the shared modules use only
//! those.

#[cfg(target_arch = "aarch64")]
mod aarch64;
#[cfg(target_arch = "aarch64")]
pub use aarch64::*;
#[cfg(target_arch = "x86_64")]
mod x64;
#[cfg(target_arch = "x86_64")]
pub use x64::*;
