#!/usr/bin/env bash
# Builds the libFuzzer targets (fuzz/) with clang in build-fuzz/ (override with
# FUZZ_BUILD_DIR) and runs each for FUZZ_SECONDS seconds (default 30) from a
# copy of its seed corpus fuzz/corpus/<name>/, so the checkout is not changed.
# FUZZ_TARGETS="a b" runs only those. Any crash, sanitizer report, uncaught
# exception other than flashcomm::Error, slow input or allocation above the
# limits below fails the run; the reproducer stays in
# build-fuzz/fuzz-artifacts/<name>/ and its path is printed.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="${FUZZ_BUILD_DIR:-$root/build-fuzz}"
seconds="${FUZZ_SECONDS:-30}"

CC=clang CXX=clang++ cmake -S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DFLASHCOMM_FUZZ=ON -DFLASHCOMM_BUILD_TESTS=OFF >/dev/null
echo "fuzz: building in $build"
cmake --build "$build" --parallel "$(nproc)" --target fuzz_targets

read -r -a targets <<<"${FUZZ_TARGETS:-$(tr '\n' ' ' <"$build/fuzz/targets.txt")}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"

failed=()
for name in "${targets[@]}"; do
  binary="$build/fuzz/fuzz_$name"
  if [ ! -x "$binary" ] || [ ! -d "$root/fuzz/corpus/$name" ]; then
    echo "fuzz: no target $name (want $binary and fuzz/corpus/$name/)" >&2
    exit 2
  fi
  artifacts="$build/fuzz-artifacts/$name"
  rm -rf "$artifacts"
  mkdir -p "$artifacts"
  cp -r "$root/fuzz/corpus/$name" "$work/$name"
  log="$build/fuzz-artifacts/$name.log"
  echo "fuzz: $name for ${seconds}s"
  # The inputs are a few KB, so no honest parse needs more than a few MB: a
  # malloc above 64 MB means a size taken from a header without checking it
  # against the input's length. -timeout catches a hang on one input.
  if "$binary" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=1024 -malloc_limit_mb=64 \
    -use_value_profile=1 -print_final_stats=1 -artifact_prefix="$artifacts/" \
    "$work/$name" >"$log" 2>&1; then
    grep -E "^stat::number_of_executed_units|^stat::peak_rss_mb" "$log" | tr '\n' ' '
    echo
  else
    failed+=("$name")
    tail -n 60 "$log" >&2
    for reproducer in "$artifacts"/*; do
      [ -f "$reproducer" ] || continue
      echo "fuzz: $name failed; reproducer: $reproducer" >&2
      echo "fuzz: rerun it with: $binary $reproducer" >&2
    done
    echo "fuzz: full log: $log" >&2
  fi
done

if [ ${#failed[@]} -ne 0 ]; then
  echo "fuzz: failed: ${failed[*]}" >&2
  exit 1
fi
echo "fuzz: ${#targets[@]} targets ran ${seconds}s each without a failure"
