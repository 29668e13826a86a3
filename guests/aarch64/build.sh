#!/usr/bin/env bash
# Rebuilds the AArch64 probe guest (GNU binutils for aarch64: Debian binutils-aarch64-linux-gnu).
#   bash guests/aarch64/build.sh           rebuild the checked-in guests/aarch64/probe.elf
#   bash guests/aarch64/build.sh --check   rebuild into a temporary directory and fail if the
#                                          bytes differ from the checked-in image
# The output is deterministic: no timestamps, no build id, fixed section layout.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
prefix="${CROSS_PREFIX:-aarch64-linux-gnu-}"
for tool in as ld; do
    command -v "${prefix}${tool}" >/dev/null || {
        echo "error: ${prefix}${tool} not found; install the Debian package binutils-aarch64-linux-gnu" >&2
        exit 2
    }
done

build() { # $1 = output directory
    "${prefix}as" -march=armv8-a -o "$1/probe.o" "$here/probe.S"
    "${prefix}ld" -nostdlib -static --build-id=none -z max-page-size=4096 -z noexecstack \
        -T "$here/link.ld" -o "$1/probe.elf" "$1/probe.o"
}

case "${1:-}" in
"")
    tmp="$(mktemp -d)"
    trap 'rm -rf "$tmp"' EXIT
    build "$tmp"
    cp "$tmp/probe.elf" "$here/probe.elf"
    echo "built $here/probe.elf ($(stat -c %s "$here/probe.elf") bytes)"
    ;;
--check)
    tmp="$(mktemp -d)"
    trap 'rm -rf "$tmp"' EXIT
    build "$tmp"
    if ! cmp -s "$tmp/probe.elf" "$here/probe.elf"; then
        echo "error: guests/aarch64/probe.elf differs from a rebuild of probe.S; run guests/aarch64/build.sh" >&2
        exit 1
    fi
    echo "guests/aarch64/probe.elf is up to date"
    ;;
*)
    echo "usage: $0 [--check]" >&2
    exit 2
    ;;
esac
