#!/usr/bin/env bash
# Configures and builds flashcomm in build/ (override with BUILD_DIR); with
# arguments, only those targets (e.g. `scripts/build.sh flashcomm`).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="${BUILD_DIR:-$root/build}"
cmake -S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE="${BUILD_TYPE:-RelWithDebInfo}" >/dev/null
echo "build: building in $build"
cmake --build "$build" --parallel "$(nproc)" ${1:+--target "$@"}
