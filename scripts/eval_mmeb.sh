#!/usr/bin/env bash
# MMEB (36 datasets): Precision@1 per dataset, per meta-task, IND / OOD and overall.
# DATA: TIGER-Lab/MMEB-eval ({subset}/test-*.parquet) with the unzipped images.zip in DATA/eval_images.
set -euo pipefail

MODEL="open_clip:ViT-B-32/laion2b_s34b_b79k"   # two-tower models use score fusion; vlm2vec checkpoints their own encode
DATA="data/MMEB-eval"
IMAGE_ROOT="$DATA/eval_images"
SUBSETS=()                                      # empty: every MMEB dataset found under DATA; e.g. (ImageNet-1K CIRR)
OUTPUT="eval_results/mmeb.json"
BATCH_SIZE=32
DEVICE="cpu"

cd "$(dirname "$0")/.."
python -m evaluate mmeb --model "$MODEL" --data "$DATA" --image-root "$IMAGE_ROOT" \
    ${SUBSETS[@]+--subsets "${SUBSETS[@]}"} --batch-size "$BATCH_SIZE" --device "$DEVICE" --output "$OUTPUT"
