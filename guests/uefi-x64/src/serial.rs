//! Result lines on COM1 (I/O port 0x3F8, already set up by OVMF), written directly so they
//! never depend on boot services and can be written from any core or with interrupts off.
//!
//! Every line the host test reads starts with `TXP `; the firmware's own console output
//! (the same UART) is ignored by the host.

use core::fmt::{self, Write};
use core::sync::atomic::{AtomicBool, Ordering};

const COM1: u16 = 0x3F8;
const LINE_STATUS: u16 = COM1 + 5;
const TRANSMIT_EMPTY: u8 = 1 << 5;
const DATA_READY: u8 = 1 << 0;

/// One writer at a time, whatever core it runs on.
static LOCK: AtomicBool = AtomicBool::new(false);

fn outb(port: u16, value: u8) {
    // SAFETY: COM1's data port; writing it only sends a byte.
    unsafe { core::arch::asm!("out dx, al", in("dx") port, in("al") value, options(nomem, nostack, preserves_flags)) };
}

fn inb(port: u16) -> u8 {
    let value: u8;
    // SAFETY: reading COM1's line status or data register has no effect beyond the UART.
    unsafe { core::arch::asm!("in al, dx", in("dx") port, out("al") value, options(nomem, nostack, preserves_flags)) };
    value
}

struct Com1;

impl Write for Com1 {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for byte in s.bytes() {
            while inb(LINE_STATUS) & TRANSMIT_EMPTY == 0 {
                core::hint::spin_loop();
            }
            outb(COM1, byte);
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
    let _ = Com1.write_str("\r\nTXP ");
    let _ = Com1.write_fmt(args);
    let _ = Com1.write_str("\r\n");
    LOCK.store(false, Ordering::Release);
}

/// Waits up to `ticks` time-stamp-counter ticks for a byte from the host on COM1.
pub fn read_byte(ticks: u64) -> Option<u8> {
    // SAFETY: RDTSC only reads the time-stamp counter.
    let start = unsafe { core::arch::x86_64::_rdtsc() };
    // SAFETY: as above.
    while unsafe { core::arch::x86_64::_rdtsc() }.wrapping_sub(start) < ticks {
        if inb(LINE_STATUS) & DATA_READY != 0 {
            return Some(inb(COM1));
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
