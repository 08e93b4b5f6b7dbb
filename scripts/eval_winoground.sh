#!/usr/bin/env bash
# Winoground text / image / group scores (400 examples).
# DATA: a `datasets` copy of facebook/winoground saved with save_to_disk, or the release's examples.jsonl + images/.
set -euo pipefail

MODEL="open_clip:ViT-B-32/laion2b_s34b_b79k"
DATA="data/winoground"
OUTPUT="eval_results/winoground.json"
BATCH_SIZE=64
DEVICE="cpu"

cd "$(dirname "$0")/.."
python -m evaluate winoground --model "$MODEL" --data "$DATA" --batch-size "$BATCH_SIZE" --device "$DEVICE" \
    --output "$OUTPUT"
