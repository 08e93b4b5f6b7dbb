#!/usr/bin/env bash
# MMVP-VLM: pair accuracy per visual pattern and average.
# DATA: the MMVP/MMVP_VLM dataset repository (Questions.csv + "MLLM_VLM Images/{Type}/{Question ID}.jpg").
set -euo pipefail

MODEL="open_clip:ViT-B-32/laion2b_s34b_b79k"
DATA="data/MMVP_VLM"
OUTPUT="eval_results/mmvp.json"
BATCH_SIZE=64
DEVICE="cpu"

cd "$(dirname "$0")/.."
python -m evaluate mmvp --model "$MODEL" --data "$DATA" --batch-size "$BATCH_SIZE" --device "$DEVICE" \
    --output "$OUTPUT"
