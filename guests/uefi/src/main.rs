//! txpaging inside UEFI firmware (OVMF on q35, AAVMF on virt): a UEFI application that
//! builds a table from the firmware's own (adopted from CR3 / TTBR0 under the attribute
//! layout in force) and the memory map, applies a DXE-style protection batch as one
//! transaction, installs it with the library's `install_page_table`, keeps using boot
//! services on it, probes it, changes it live, shares it with the other cores, and restores
//! the firmware's registers before it exits.
//!
//! Results go to the serial port as `TXP ` lines (see `serial`), read by
//! `tests/firmware_x64.rs` and `tests/firmware_aarch64.rs`. Everything that differs between
//! the architectures is in `arch`.

#![no_std]
#![no_main]

extern crate alloc;

mod arch;
mod cores;
mod heap;
mod live;
pub mod mmu;
mod model;
mod pages;
mod pe;
mod probes;
mod serial;
mod sync;

use alloc::vec::Vec;

use txpaging::{MemoryAttributes, Op, TxnError};
use uefi::boot::{self, AllocateType, OpenProtocolAttributes, OpenProtocolParams};
use uefi::mem::memory_map::{MemoryMap, MemoryType};
use uefi::prelude::*;
use uefi::proto::loaded_image::LoadedImage;

use arch::Table;
use model::{uefi_attr, Change, Model};
use probes::{Expected, Kind, Memory, Rng};

const PAGE: u64 = 4096;
/// Pages of the application's own stack, above one guard page.
const STACK_PAGES: u64 = 64;
/// How long to wait for the host's monitor cross-check.
const MONITOR_WAIT_SECONDS: u64 = 60;

/// The application's stack guard page.
static STACK_GUARD: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);

#[entry]
fn main() -> Status {
    uefi::helpers::init().expect("uefi helpers");
    heap::set_bsp();
    let pages = 1 + STACK_PAGES as usize;
    let stack = boot::allocate_pages(AllocateType::AnyPages, MemoryType::LOADER_DATA, pages).expect("stack");
    let guard = stack.as_ptr() as u64;
    STACK_GUARD.store(guard, core::sync::atomic::Ordering::SeqCst);
    // SAFETY: the new stack is ours (LoaderData pages), 16-byte aligned at its top, and
    // `run` never returns.
    unsafe { arch::run_on_stack(guard + pages as u64 * PAGE) }
}

/// The whole run, on the application's own stack.
pub fn run() -> ! {
    let mut failures = Failures::default();
    let guard = STACK_GUARD.load(core::sync::atomic::Ordering::SeqCst);
    txp!("BEGIN arch={} stack_guard={guard:#x}", arch::NAME);
    let entry = arch::Entry::read();
    entry.report();

    // A 2 MiB-aligned buffer for the live changes, allocated before the memory map is read
    // so the map (and so the protection batch) sees it as one LoaderData range.
    let buffer = allocate_2mib_buffer();
    live::fill(buffer);
    txp!("BUFFER base={buffer:#x}");

    // The memory map and the loaded images.
    let descriptors = memory_map();
    txp!("MEMMAP descriptors={}", descriptors.len());
    let images = loaded_images();
    txp!("IMAGES count={}", images.len());

    // The firmware's live table, adopted under the attribute layout in force.
    let (firmware_regions, summary) = arch::adopt(&entry).unwrap_or_else(|e| fail(&alloc::format!("adopt: {e}")));
    txp!("ADOPT {summary}");

    // The new table: everything the firmware maps, plus what the memory map lists that the
    // firmware's table does not map.
    let mut model = Model::new();
    let mut table: Table = arch::new_table(&entry).unwrap_or_else(|e| fail(&alloc::format!("new table: {e}")));
    let mut build: Vec<Change> = firmware_regions
        .iter()
        .map(|r| Change::Map {
            va: r.va,
            pa: r.pa,
            size: r.size,
            attributes: r.attributes.bits(),
        })
        .collect();
    for &(ty, start, end, _) in &descriptors {
        for (gap_start, gap_end) in uncovered(&firmware_regions, start, end) {
            let attributes = if is_ram(ty) {
                arch::RAM_CACHE
            } else {
                uefi_attr::UC | uefi_attr::XP
            };
            build.push(Change::Map {
                va: gap_start,
                pa: gap_start,
                size: gap_end - gap_start,
                attributes,
            });
        }
    }
    commit(&mut table, &mut model, &build, "build");

    // The DXE-style protection batch, one transaction.
    let null_mapped = model.expect(0).is_some();
    let batch = protection_batch(&descriptors, &images, guard, null_mapped);
    commit(&mut table, &mut model, &batch, "protect");

    // Install with the library's own install.
    failures.add("install", arch::install(&table));

    // The firmware keeps working on our table.
    failures.add("boot_services", boot_services_still_work());

    // Probes of the installed table.
    let memory = Memory::new(
        descriptors
            .iter()
            .map(|&(ty, start, end, _)| (start, end, if is_ram(ty) { Kind::Ram } else { Kind::Other }))
            .collect(),
    );
    let mut rng = Rng::new(entry.seed());
    let setup = arch::ProbeSetup::enter();
    let expected = Expected::new(&model);
    let vas = probes::addresses(&model, &expected, &[0, guard, guard + PAGE], &mut rng, 3000);
    let tally = probes::run("installed", &vas, &expected, &memory);
    report_tally("installed", &tally);
    failures.add("probes_installed", tally.mismatches);
    drop(setup);

    // QEMU's own decoder: the host reads the monitor's view of the tables while this CPU
    // waits here on the installed table, then answers on the serial port (X64 only: QEMU's
    // monitor decodes no AArch64 table; there the probes' AT walks play that part).
    if arch::MONITOR_CROSS_CHECK {
        txp!("MONITOR ready ops={}", model.changes().len());
        let answered = serial::read_byte(MONITOR_WAIT_SECONDS).is_some();
        txp!("MONITOR answered={}", u8::from(answered));
    }

    // What a live change may not do to the code running it.
    failures.add("pinned", arch::pinned_ranges(&mut table, &mut model));

    // Live changes, each followed by probes of what it touched; then the same sequence with
    // every invalidation dropped, which must be seen as stale translations.
    let real = live::run(&mut table, &mut model, buffer, false);
    report_live("LIVE", &real);
    failures.add("live", real.stale);
    arch::mmu_state(&table).set_dropping(true);
    let negative = live::run(&mut table, &mut model, buffer, true);
    arch::mmu_state(&table).set_dropping(false);
    arch::flush_local();
    report_live("NEGATIVE_LIVE", &negative);
    if negative.stale == 0 {
        failures.add("negative_live", 1);
        txp!("MISMATCH negative control: no stale translation seen without invalidations");
    }

    // Several cores on the table.
    let (table, mp_failures) = arch::mp::run(table, &mut model, buffer);
    failures.add("cores", mp_failures);

    // The whole table again, after the live changes.
    let setup = arch::ProbeSetup::enter();
    let expected = Expected::new(&model);
    let extra = [
        buffer,
        buffer + PAGE,
        buffer + 2 * PAGE,
        buffer + 4 * PAGE,
        live::ALIAS,
        cores::ALIAS,
        cores::SHARED_PAGE,
        guard,
    ]
    .into_iter()
    .chain(arch::ALWAYS_PROBED.iter().copied())
    .collect::<Vec<u64>>();
    let vas = probes::addresses(&model, &expected, &extra, &mut rng, 1000);
    let tally = probes::run("after-live", &vas, &expected, &memory);
    report_tally("after-live", &tally);
    failures.add("probes_after_live", tally.mismatches);
    drop(setup);

    // Back to the firmware's table.
    failures.add("restore", arch::restore(&entry));
    let pages = table.allocator();
    let mmu = arch::mmu_state(&table);
    txp!(
        "PAGES in_use={} freed={} table_pages={} invalidations={} full_flushes={} installs={}",
        pages.in_use,
        pages.freed,
        table.table_pages(),
        mmu::MmuState::count(&mmu.page_invalidations),
        mmu::MmuState::count(&mmu.full_flushes),
        mmu::MmuState::count(&mmu.installs)
    );
    txp!("END failures={} failed_in={}", failures.total, failures.phases());
    arch::exit(failures.total == 0)
}

/// The failures of the run, by the phase that counted them (the END line names the
/// phases, so a failing run says where without the rest of its output).
#[derive(Default)]
struct Failures {
    total: usize,
    by_phase: Vec<(&'static str, usize)>,
}

impl Failures {
    fn add(&mut self, phase: &'static str, count: usize) {
        if count > 0 {
            self.total += count;
            self.by_phase.push((phase, count));
        }
    }

    /// `phase:count,...`, or `none`.
    fn phases(&self) -> alloc::string::String {
        if self.by_phase.is_empty() {
            return "none".into();
        }
        let named: Vec<alloc::string::String> = self
            .by_phase
            .iter()
            .map(|(phase, count)| alloc::format!("{phase}:{count}"))
            .collect();
        named.join(",")
    }
}

/// Reports a fatal error and ends the run.
pub fn fail(message: &str) -> ! {
    txp!("FATAL {message}");
    arch::exit(false)
}

fn report_tally(phase: &str, tally: &probes::Tally) {
    txp!(
        "PROBES phase={phase} addresses={} reads={} writes={} executes={} translations={} faults={} mismatches={} skipped={}",
        tally.addresses,
        tally.reads,
        tally.writes,
        tally.executes,
        tally.translations,
        tally.faults,
        tally.mismatches,
        tally.skipped
    );
}

fn report_live(tag: &str, tally: &live::LiveTally) {
    txp!(
        "{tag} changes={} checks={} stale={} stale_reads={} tables_split={} tables_merged={} invalidations={} full_flushes={}",
        tally.changes,
        tally.checks,
        tally.stale,
        tally.stale_reads,
        tally.tables_split,
        tally.tables_merged,
        tally.invalidations,
        tally.full_flushes
    );
}

/// A 2 MiB-aligned, 2 MiB LoaderData buffer (4 MiB allocated, the aligned half used).
fn allocate_2mib_buffer() -> u64 {
    const MIB2: u64 = 0x20_0000;
    let pages = (2 * MIB2 / PAGE) as usize;
    let base = boot::allocate_pages(AllocateType::AnyPages, MemoryType::LOADER_DATA, pages)
        .unwrap_or_else(|_| fail("buffer"))
        .as_ptr() as u64;
    (base + MIB2 - 1) & !(MIB2 - 1)
}

/// `(type, start, end, attribute)` of every descriptor.
fn memory_map() -> Vec<(u32, u64, u64, u64)> {
    let map = boot::memory_map(MemoryType::LOADER_DATA).unwrap_or_else(|_| fail("memory map"));
    map.entries()
        .map(|d| (d.ty.0, d.phys_start, d.phys_start + d.page_count * PAGE, d.att.bits()))
        .collect()
}

/// RAM types of the memory map (UEFI 2.10, 7.2, table 7-6).
fn is_ram(ty: u32) -> bool {
    matches!(ty, 1..=7 | 9 | 10 | 14)
}

/// Data types whose memory must not execute: LoaderData, BootServicesData,
/// RuntimeServicesData, Conventional, ACPI reclaim and NVS.
fn is_data(ty: u32) -> bool {
    matches!(ty, 2 | 4 | 6 | 7 | 9 | 10)
}

/// `(base, size)` of every loaded image.
fn loaded_images() -> Vec<(u64, u64)> {
    let handles = boot::find_handles::<LoadedImage>().unwrap_or_default();
    let mut images = Vec::new();
    for handle in handles {
        let params = OpenProtocolParams {
            handle,
            agent: boot::image_handle(),
            controller: None,
        };
        // SAFETY: GetProtocol does not take the protocol away from anyone; only read.
        if let Ok(image) = unsafe { boot::open_protocol::<LoadedImage>(params, OpenProtocolAttributes::GetProtocol) } {
            let (base, size) = image.info();
            if !base.is_null() && size > 0 {
                images.push((base as u64, size));
            }
        }
    }
    images.sort_unstable();
    images
}

/// The parts of `[start, end)` that no region covers.
fn uncovered(regions: &[txpaging::MappedRegion], start: u64, end: u64) -> Vec<(u64, u64)> {
    let mut gaps = Vec::new();
    let mut cursor = start;
    for region in regions {
        let (r_start, r_end) = (region.va, region.va + region.size);
        if r_end <= cursor || r_start >= end {
            continue;
        }
        if r_start > cursor {
            gaps.push((cursor, r_start));
        }
        cursor = cursor.max(r_end);
        if cursor >= end {
            break;
        }
    }
    if cursor < end {
        gaps.push((cursor, end));
    }
    gaps
}

/// The protection batch: data-type memory XP; each image's headers RO+XP, code RO,
/// read-only data RO+XP, data XP; the NULL page (if mapped) and the stack guard page not
/// present.
fn protection_batch(
    descriptors: &[(u32, u64, u64, u64)],
    images: &[(u64, u64)],
    guard: u64,
    null_mapped: bool,
) -> Vec<Change> {
    use uefi_attr::{RO, RP, XP};
    let mut batch = Vec::new();
    for &(ty, start, end, _) in descriptors {
        if is_data(ty) {
            batch.push(Change::Protect {
                va: start,
                size: end - start,
                attributes: XP,
            });
        }
    }
    let (mut protected, mut skipped) = (0, 0);
    for &(base, size) in images {
        // SAFETY: the loaded image protocol says `size` bytes at `base` are the image.
        let bytes = unsafe { core::slice::from_raw_parts(base as *const u8, size as usize) };
        match pe::pieces(bytes) {
            Ok(pieces) => {
                protected += 1;
                let image_end = (base + size + PAGE - 1) & !(PAGE - 1);
                for (offset, length, piece) in pieces {
                    let start = base + offset;
                    let end = (start + length).min(image_end);
                    if start >= end || start % PAGE != 0 {
                        continue;
                    }
                    let attributes = match piece {
                        pe::Piece::Headers | pe::Piece::ReadOnlyData => RO | XP,
                        pe::Piece::Code => RO,
                        pe::Piece::Data => XP,
                    };
                    batch.push(Change::Protect {
                        va: start,
                        size: end - start,
                        attributes,
                    });
                }
            }
            Err(pe::Skip::SectionAlignment(_)) => skipped += 1,
            Err(pe::Skip::NotPe) => fail(&alloc::format!("loaded image at {base:#x} is not PE32+")),
        }
    }
    // Images whose sections are not page aligned (most of OVMF's drivers, SectionAlignment
    // 0x40) mix code and data in a page: like edk2, they are left as the firmware mapped them.
    txp!("IMAGES protected={protected} unaligned_left_alone={skipped}");
    // The NULL page not present (a protect needs it mapped; AAVMF leaves it unmapped).
    if null_mapped {
        batch.push(Change::Protect {
            va: 0,
            size: PAGE,
            attributes: RP,
        });
    }
    batch.push(Change::Protect {
        va: guard,
        size: PAGE,
        attributes: RP | XP,
    });
    batch
}

/// The txpaging op of a change.
pub fn op_of(change: &Change) -> Op {
    let attributes = |bits: u64| MemoryAttributes::from_bits_retain(bits);
    match *change {
        Change::Map {
            va,
            pa,
            size,
            attributes: bits,
        } => Op::Map {
            va,
            pa,
            size,
            attributes: attributes(bits),
        },
        Change::Unmap { va, size } => Op::Unmap { va, size },
        Change::Protect {
            va,
            size,
            attributes: bits,
        } => Op::Protect {
            va,
            size,
            attributes: attributes(bits),
        },
    }
}

/// Prints every change (for the host's replay), plans and commits them as one transaction,
/// and records them in the model. Ends the run if the transaction fails.
fn commit(table: &mut Table, model: &mut Model, changes: &[Change], name: &str) -> txpaging::CommitReport {
    match try_commit(table, model, changes, name) {
        Ok(report) => report,
        Err(error) => fail(&alloc::format!("{name}: {error}")),
    }
}

fn try_commit(
    table: &mut Table,
    model: &mut Model,
    changes: &[Change],
    name: &str,
) -> Result<txpaging::CommitReport, TxnError> {
    use txpaging::TransactionalTable;
    let plan = table.plan_ops(changes.iter().map(op_of))?;
    txp!(
        "PLAN name={name} ops={} ranges={} tables_to_allocate={} tables_to_free={} entries_to_write={} pages_to_invalidate={} full_flush={} breaks={}",
        changes.len(),
        plan.ranges.len(),
        plan.tables_to_allocate,
        plan.tables_to_free,
        plan.entries_to_write,
        plan.pages_to_invalidate.len(),
        u8::from(plan.full_flush),
        plan.breaks
    );
    let committed = table.commit_ops(changes.iter().map(op_of))?;
    let report = committed.report;
    table.release_retired(committed.retired);
    txp!(
        "COMMIT name={name} entries_written={} tables_allocated={} tables_freed={} pages_invalidated={} full_flushes={} breaks={}",
        report.entries_written,
        report.tables_allocated,
        report.tables_freed,
        report.pages_invalidated,
        report.full_flushes,
        report.breaks
    );
    for change in changes {
        let (kind, va, pa, size, attributes) = change.fields();
        txp!("OP {kind} {va:#x} {pa:#x} {size:#x} {attributes:#x}");
        model.push(*change);
    }
    Ok(report)
}

/// Console output, page and pool allocations and a timer event, on the installed table.
fn boot_services_still_work() -> usize {
    use core::fmt::Write;
    let mut failures = 0;
    let printed = uefi::system::with_stdout(|out| writeln!(out, "txpaging: the firmware runs on the new table"));
    let pages = boot::allocate_pages(AllocateType::AnyPages, MemoryType::LOADER_DATA, 4);
    let pages_ok = match pages {
        Ok(pages) => {
            let pattern = 0x5458_5041_4749_4e47u64;
            let words = pages.as_ptr().cast::<u64>();
            // SAFETY: 4 pages just allocated for this application.
            unsafe {
                words.write_volatile(pattern);
                words.add(2047).write_volatile(!pattern);
            }
            // SAFETY: as above.
            let back = unsafe { (words.read_volatile(), words.add(2047).read_volatile()) };
            // SAFETY: allocated above, no longer used.
            let freed = unsafe { boot::free_pages(pages, 4) }.is_ok();
            back == (pattern, !pattern) && freed
        }
        Err(_) => false,
    };
    let pool: Vec<u64> = (0..10_000u64).collect();
    let pool_ok = pool.iter().sum::<u64>() == 10_000 * 9_999 / 2;
    drop(pool);
    let timer_ok = timer_fires();
    txp!(
        "BOOT_SERVICES console={} pages={} pool={} timer={}",
        u8::from(printed.is_ok()),
        u8::from(pages_ok),
        u8::from(pool_ok),
        u8::from(timer_ok)
    );
    for ok in [printed.is_ok(), pages_ok, pool_ok, timer_ok] {
        failures += usize::from(!ok);
    }
    failures
}

/// A 10 ms relative timer event, waited for: the timer interrupt runs on the new table.
fn timer_fires() -> bool {
    use uefi::boot::{EventType, TimerTrigger, Tpl};
    // SAFETY: a timer event without a notification function.
    let Ok(event) = (unsafe { boot::create_event(EventType::TIMER, Tpl::CALLBACK, None, None) }) else {
        return false;
    };
    let fired = boot::set_timer(&event, TimerTrigger::Relative(100_000)).is_ok()
        // SAFETY: the event handle stays valid until closed below.
        && boot::wait_for_event(&mut [unsafe { event.unsafe_clone() }]).is_ok();
    let _ = boot::close_event(event);
    fired
}
