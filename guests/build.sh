#!/usr/bin/env bash
# Rebuilds both QEMU probe guests from their assembly sources (GNU as: Debian packages
# `binutils` and `binutils-aarch64-linux-gnu`).
#   bash guests/build.sh           rebuild the checked-in images
#   bash guests/build.sh --check   rebuild into a temporary directory and fail if the bytes differ
set -euo pipefail
cd "$(dirname "$0")"
bash x64/build.sh "$@"
bash aarch64/build.sh "$@"
