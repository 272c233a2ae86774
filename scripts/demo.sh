#!/usr/bin/env bash
# The main job: installs what is missing, builds, and runs stories260K on four
# tensor-parallel ranks with FlashComm1 + FlashComm2 (K = 2), checking the
# logits against an unsharded pass. Extra arguments go to `flashcomm run`.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
models="$root/../shared/models/stories260K"
"$root/scripts/install-deps.sh"
"$root/scripts/build.sh" flashcomm
exec "${BUILD_DIR:-$root/build}/flashcomm" run \
  --model "$models/stories260K.bin" --tokenizer "$models/tok512.bin" \
  --tp 4 --flashcomm1 --flashcomm2 2 --steps 256 --check "$@"
