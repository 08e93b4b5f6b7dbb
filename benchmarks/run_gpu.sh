#!/usr/bin/env bash
# The GPU benchmark run (at most 8 minutes on one GPU): bash benchmarks/run_gpu.sh [--tiny] [--out FILE.json]
# --tiny runs the same code at toy sizes on the CPU (about 90 s). Writes FILE.json and FILE.md (default
# outputs/benchmarks/gpu.json) and prints the table. See docs/benchmarks.md.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
# On the CPU (--tiny) memory is the peak RSS: glibc then maps every buffer of 64 KiB or more on its own and
# returns it when freed, so RSS follows the live tensors even at toy sizes.
for arg in "$@"; do
  if [ "$arg" = --tiny ]; then export MALLOC_MMAP_THRESHOLD_=${MALLOC_MMAP_THRESHOLD_:-65536}; fi
done
exec python -m benchmarks.gpu_suite "$@"
