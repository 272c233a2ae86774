#!/usr/bin/env bash
# Builds flashcomm and its tests with AddressSanitizer and UndefinedBehaviorSanitizer
# (clang) in build-asan/ (override with ASAN_BUILD_DIR) and runs the whole CTest suite
# there. Any sanitizer report fails its test: UB does not recover, and leaks are
# reported, except what OpenMPI and its runtime keep until exit
# (scripts/sanitizers/lsan.supp; leak checking stays on for our code).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="${ASAN_BUILD_DIR:-$root/build-asan}"
sanitize="-fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer"
# Unoptimised with line tables: compiling dominates this step (CLI11's headers
# take minutes at -O2 under ASan) while the suite runs quickly either way.
# libstdc++'s assertions add bounds checks that ASan alone misses inside a
# vector's capacity.
debug_flags="-O0 -gline-tables-only -D_GLIBCXX_ASSERTIONS"

CC=clang CXX=clang++ cmake -S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Debug \
  -DCMAKE_CXX_FLAGS_DEBUG="$debug_flags" -DCMAKE_CXX_FLAGS="$sanitize" \
  -DCMAKE_EXE_LINKER_FLAGS="$sanitize" -DCMAKE_SHARED_LINKER_FLAGS="$sanitize" >/dev/null
# The sanitizer settings come before the build: test discovery runs the test
# binaries (some with an MPI main) as they are linked.
mkdir -p "$build"
supp="$root/scripts/sanitizers"
# OpenMPI unloads its plugins in MPI_Finalize; keeping them loaded lets
# LeakSanitizer name them, so that lsan.supp can match them (keep_loaded.c).
clang -shared -fPIC -O2 -o "$build/keep_loaded.so" "$supp/keep_loaded.c"
export LD_PRELOAD="$build/keep_loaded.so"
# The fault tests make a rank raise SIGSEGV on purpose and check it dies by the
# signal, naming itself: ASan's own handlers would turn that into exit code 1.
# A real crash still fails its test (by the signal, without ASan's report).
export ASAN_OPTIONS="detect_leaks=1:detect_stack_use_after_return=1:strict_init_order=1:check_initialization_order=1:handle_segv=0:handle_sigbus=0:handle_sigfpe=0:handle_sigill=0"
export LSAN_OPTIONS="suppressions=$supp/lsan.supp:print_suppressions=0"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
echo "test-sanitizers: building in $build"
cmake --build "$build" --parallel "$(nproc)"

cd "$build"
ctest --output-on-failure --parallel "$(nproc)" --timeout 900
