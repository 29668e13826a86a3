#!/usr/bin/env bash
# Builds the UEFI application for x86_64-unknown-uefi or aarch64-unknown-uefi with Debian's
# Rust (rustc-web, cargo-web, rust-web-src: Rust 1.96 with the standard library sources, for
# -Zbuild-std) and rustup's rust-lld; warnings are errors. Prints the path of the .efi file on its
# last line.
# Usage: guests/uefi/build.sh x86_64|aarch64 [TARGET_DIR]
set -euo pipefail
arch="${1:?usage: build.sh x86_64|aarch64 [TARGET_DIR]}"
here="$(cd "$(dirname "$0")" && pwd)"
target_dir="${2:-$here/../../target/firmware}"
target="$arch-unknown-uefi"
linker="$(rustc --print sysroot)/lib/rustlib/x86_64-unknown-linux-gnu/bin/rust-lld"
[ -x "$linker" ] || linker="$(command -v rust-lld || command -v ld.lld)"
variable="CARGO_TARGET_$(echo "$target" | tr 'a-z-' 'A-Z_')_LINKER"
cd "$here"
env RUSTC=/usr/bin/rustc RUSTC_BOOTSTRAP=1 RUSTFLAGS="-D warnings" "$variable=$linker" \
    /usr/bin/cargo build --release --locked -Zbuild-std=core,alloc -Zbuild-std-features=compiler-builtins-mem \
    --target "$target" --target-dir "$target_dir" >&2
echo "$target_dir/$target/release/txpaging-uefi.efi"
