#!/usr/bin/env bash
# Installs the Debian 12 packages flashcomm needs to build, run and test.
# Run as root (or through sudo). Does nothing when all are already present.
set -euo pipefail

packages=(
  build-essential cmake ninja-build
  openmpi-bin libopenmpi-dev
  libopenblas-dev
  libgtest-dev
  libcli11-dev nlohmann-json3-dev libspdlog-dev libfmt-dev
  libsentencepiece-dev
  clang-format clang-tidy
  # the sanitizer and fuzz runs: clang, its ASan/UBSan/libFuzzer runtimes, and
  # llvm-symbolizer (from llvm) for readable stack traces
  clang libclang-rt-dev llvm
  gnuplot-nox libbenchmark-dev
  # the shaped testbed (bench --testbed shaped): ip and tc; its report script: jq
  iproute2 jq
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then
    exec sudo "$0" "$@"
  fi
  echo "install-deps: missing packages (${missing[*]}) and not root; run as root" >&2
  exit 1
fi
echo "install-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
