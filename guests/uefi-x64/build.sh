#!/usr/bin/env bash
# Builds the UEFI application for x86_64-unknown-uefi with Debian's Rust (rustc-web,
# cargo-web, rust-web-src: Rust 1.96 with the standard library sources) and rustup's
# rust-lld. Prints the path of the .efi file on its last line.
# Usage: guests/uefi-x64/build.sh [TARGET_DIR]
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
target_dir="${1:-$here/../../target/firmware}"
linker="$(rustc --print sysroot)/lib/rustlib/x86_64-unknown-linux-gnu/bin/rust-lld"
[ -x "$linker" ] || linker="$(command -v rust-lld || command -v ld.lld)"
cd "$here"
RUSTC=/usr/bin/rustc RUSTC_BOOTSTRAP=1 CARGO_TARGET_X86_64_UNKNOWN_UEFI_LINKER="$linker" \
    /usr/bin/cargo build --release --locked -Zbuild-std=core,alloc -Zbuild-std-features=compiler-builtins-mem \
    --target x86_64-unknown-uefi --target-dir "$target_dir" >&2
echo "$target_dir/x86_64-unknown-uefi/release/txpaging-uefi-x64.efi"
