#!/usr/bin/env bash
# Rebuilds the X64 probe guest image guests/x64/probe.bin from probe.S and link.ld with GNU
# binutils for x86_64 (Debian package `binutils` on an x86_64 host, `binutils-x86-64-linux-gnu`
# elsewhere). The image is a flat Multiboot-1 binary; it holds no paths or timestamps, so the
# same sources give the same bytes.
#   bash guests/x64/build.sh           rebuild the checked-in image
#   bash guests/x64/build.sh --check   rebuild into a temporary directory and fail if the bytes
#                                      differ from the checked-in image
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"

case "${1:-}" in
    "") check=0 ;;
    --check) check=1 ;;
    *) echo "usage: $0 [--check]" >&2; exit 2 ;;
esac

tool() {
    if command -v "x86_64-linux-gnu-$1" >/dev/null 2>&1; then
        echo "x86_64-linux-gnu-$1"
    elif [ "$(uname -m)" = x86_64 ] && command -v "$1" >/dev/null 2>&1; then
        echo "$1"
    else
        echo "guests/x64/build.sh: no x86_64 $1 found; install binutils-x86-64-linux-gnu" >&2
        exit 1
    fi
}
AS="$(tool as)"
LD="$(tool ld)"
OBJCOPY="$(tool objcopy)"

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

"$AS" --64 -o "$tmp/probe.o" "$here/probe.S"
# The single load segment is RWX on purpose (code and data share the guest's 2 MiB pages).
rwx=""
if "$LD" --help 2>/dev/null | grep -c -- --no-warn-rwx-segments >/dev/null; then
    rwx="--no-warn-rwx-segments"
fi
"$LD" -nostdlib -static --build-id=none -z noexecstack $rwx -T "$here/link.ld" -o "$tmp/probe.elf" "$tmp/probe.o"
"$OBJCOPY" -O binary "$tmp/probe.elf" "$tmp/probe.bin"

if [ "$check" = 1 ]; then
    if cmp -s "$tmp/probe.bin" "$here/probe.bin"; then
        echo "guests/x64/probe.bin is up to date"
    else
        echo "guests/x64/probe.bin differs from a rebuild of guests/x64/probe.S; run bash guests/x64/build.sh" >&2
        exit 1
    fi
else
    cp "$tmp/probe.bin" "$here/probe.bin"
    chmod 644 "$here/probe.bin"
    echo "wrote guests/x64/probe.bin ($(wc -c <"$here/probe.bin") bytes)"
fi
