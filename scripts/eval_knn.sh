#!/usr/bin/env bash
# DINO-style weighted kNN probe (k = 10, 20, 100, 200; T = 0.07) of a model's image embeddings.
# DATA: an ImageFolder pair DATA/train/{class}/... and DATA/val/{class}/...
set -euo pipefail

MODEL="open_clip:ViT-B-32/laion2b_s34b_b79k"
DATA="data/imagenet-subset"
KS=(10 20 100 200)
TEMPERATURE=0.07
OUTPUT="eval_results/knn_$(basename "$DATA").json"
BATCH_SIZE=64
DEVICE="cpu"

cd "$(dirname "$0")/.."
python -m evaluate knn --model "$MODEL" --data "$DATA" --k "${KS[@]}" --temperature "$TEMPERATURE" \
    --batch-size "$BATCH_SIZE" --device "$DEVICE" --output "$OUTPUT"
