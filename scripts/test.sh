#!/usr/bin/env bash
# Installs what is missing, builds, checks formatting and clang-tidy, runs every
# test, then runs them again built with ASan and UBSan (scripts/test-sanitizers.sh,
# in build-asan/) and runs every fuzz target for FUZZ_SECONDS, 30 by default
# (scripts/fuzz.sh, in build-fuzz/). Each step prints how long it took.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="${BUILD_DIR:-$root/build}"

step() {
  local start=$SECONDS
  "$@"
  echo "test: $(basename "$1") took $((SECONDS - start)) s"
}

run_ctest() {
  (cd "$build" && ctest --output-on-failure --parallel "$(nproc)" --timeout 900)
}

step "$root/scripts/install-deps.sh"
step "$root/scripts/build.sh"
step "$root/scripts/check-format.sh"
step "$root/scripts/check-tidy.sh"
step run_ctest
step "$root/scripts/test-sanitizers.sh"
step "$root/scripts/fuzz.sh"
