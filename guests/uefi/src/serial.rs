//! Result lines on the firmware's serial port (COM1 on q35, the PL011 on virt), written
//! directly so they never depend on boot services and can be written from any core or with
//! interrupts off.
//!
//! Every line the host test reads starts with `TXP `; the firmware's own console output
//! (the same UART) is ignored by the host.

use core::fmt::{self, Write};
use core::sync::atomic::{AtomicBool, Ordering};

use crate::arch;

/// One writer at a time, whatever core it runs on.
static LOCK: AtomicBool = AtomicBool::new(false);

struct Uart;

impl Write for Uart {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for byte in s.bytes() {
            arch::uart_put(byte);
        }
        Ok(())
    }
}

/// Writes one `TXP ` line.
pub fn line(args: fmt::Arguments<'_>) {
    while LOCK
        .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
        .is_err()
    {
        core::hint::spin_loop();
    }
    let _ = Uart.write_str("\r\nTXP ");
    let _ = Uart.write_fmt(args);
    let _ = Uart.write_str("\r\n");
    LOCK.store(false, Ordering::Release);
}

/// Waits up to about `seconds` for a byte from the host.
pub fn read_byte(seconds: u64) -> Option<u8> {
    let start = arch::ticks();
    while arch::ticks().wrapping_sub(start) < seconds * arch::TICKS_PER_SECOND {
        if let Some(byte) = arch::uart_get() {
            return Some(byte);
        }
        core::hint::spin_loop();
    }
    None
}

/// `txp!("key value ...")`: one structured line for the host test.
#[macro_export]
macro_rules! txp {
    ($($arg:tt)*) => { $crate::serial::line(format_args!($($arg)*)) };
}
