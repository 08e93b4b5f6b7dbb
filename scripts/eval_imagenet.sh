#!/usr/bin/env bash
# Zero-shot ImageNet-1k: 1000 OpenAI class names x 80 templates (open_clip), top-1 / top-5 / mean per-class recall.
# Edit the variables, then run from anywhere: bash scripts/eval_imagenet.sh
set -euo pipefail

MODEL="open_clip:ViT-B-32/laion2b_s34b_b79k"   # or an align/ run or checkpoint directory
DATA="../shared/data/imagenet-sample"          # ImageFolder root with val/{wnid}/ and wnids.txt
OUTPUT_DIR="eval_results"
BATCH_SIZE=64
DEVICE="cpu"                                   # cuda for a GPU

cd "$(dirname "$0")/.."
python -m evaluate zeroshot --model "$MODEL" --data "$DATA" --batch-size "$BATCH_SIZE" --device "$DEVICE" \
    --output "$OUTPUT_DIR/zeroshot_$(basename "$DATA").json"
