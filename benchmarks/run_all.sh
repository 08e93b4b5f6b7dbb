#!/usr/bin/env bash
# Every benchmark, one after the other, each printing its table (the one-command GPU run is run_gpu.sh).
# Pass DEVICE=cuda on a GPU machine (the train-step benchmark then runs at the real size: batch 32,768 and the
# full SAIL-L head; the loss benchmark measures process memory on the CPU).
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1} TOKENIZERS_PARALLELISM=false
DEVICE=${DEVICE:-cpu}

echo "== encode: pipeline rows/s vs pure backbone forward (EfficientNet-Lite0, MiniLM)"
python -m benchmarks.bench_encode --device "$DEVICE"
echo; echo "== losses: chunked vs dense SigLIP fwd+bwd, N = 4k..32k, d = 1024"
python -m benchmarks.bench_loss
echo; echo "== align: train step FLOP/s vs matmul peak; batch assembly share of the step"
if [ "$DEVICE" = cpu ]; then
  python -m benchmarks.bench_train
else
  python -m benchmarks.bench_train --device "$DEVICE" --scale 1 --batch-size 32768
fi
echo; echo "== align: our step vs SAIL's formula in plain PyTorch, batch 2,048 and 8,192 (SAIL-L / 8); profile"
python -m benchmarks.bench_sail
echo; echo "== vlm2vec: GradCache vs plain step time; peak memory vs batch at a fixed chunk"
python -m benchmarks.bench_gradcache --device "$DEVICE"
