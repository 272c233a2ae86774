#!/usr/bin/env bash
# Runs clang-tidy (.clang-tidy) over the library and CLI sources; any warning fails.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="${BUILD_DIR:-$root/build}"
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
run-clang-tidy -p "$build" -quiet -j "$(nproc)" "$root/src/" >"$log" 2>&1 || true
if grep -E "(warning|error): " "$log"; then
  echo "check-tidy: clang-tidy found the problems above" >&2
  exit 1
fi
echo "check-tidy: clean"
