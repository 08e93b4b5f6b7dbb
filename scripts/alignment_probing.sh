#!/usr/bin/env bash
# SAIL part 1, alignment probing: a linear head per (image backbone, text backbone) pair on cached features;
# prints i2t / t2i R@1/5/10 on held-out stores and writes OUTPUT_DIR/probe_results.json.
# Variables can be overridden from the environment. Stores come from `python -m encode` (one per model).
set -euo pipefail

IMAGE_FEATURES=${IMAGE_FEATURES:-"features/train_dinov2_l.h5 features/train_clip_vit_l.h5"}
TEXT_FEATURES=${TEXT_FEATURES:-"features/train_nv_embed_v2.h5 features/train_gte_qwen2.h5"}
VAL_IMAGE_FEATURES=${VAL_IMAGE_FEATURES:-"features/val_dinov2_l.h5 features/val_clip_vit_l.h5"}
VAL_TEXT_FEATURES=${VAL_TEXT_FEATURES:-"features/val_nv_embed_v2.h5 features/val_gte_qwen2.h5"}
OUTPUT_DIR=${OUTPUT_DIR:-runs/alignment_probing}
TARGET_DIM=${TARGET_DIM:-1024}
LOSS=${LOSS:-siglip}
BATCH_SIZE=${BATCH_SIZE:-32768}
OPTIMIZER=${OPTIMIZER:-lion}
LR=${LR:-1e-5}
WD=${WD:-1e-4}
EPOCHS=${EPOCHS:-50}
WARMUP=${WARMUP:-0.1}
PRECISION=${PRECISION:-amp_bf16}
SEED=${SEED:-42}

cd "$(dirname "$0")/.."

# shellcheck disable=SC2086
python -m align.probe \
  --image-features $IMAGE_FEATURES --text-features $TEXT_FEATURES \
  --val-image-features $VAL_IMAGE_FEATURES --val-text-features $VAL_TEXT_FEATURES \
  --output-dir "$OUTPUT_DIR" --target-dim "$TARGET_DIM" --loss "$LOSS" --batch-size "$BATCH_SIZE" \
  --optimizer "$OPTIMIZER" --lr "$LR" --wd "$WD" --epochs "$EPOCHS" --warmup "$WARMUP" \
  --precision "$PRECISION" --seed "$SEED"
