#!/usr/bin/env bash
# SAIL part 1, alignment probing: a linear head per (image backbone, text backbone) pair on cached features;
# prints i2t / t2i R@1/5/10 on held-out stores and writes OUTPUT_DIR/probe_results.json.
# Stores come from `python -m encode` (one per model). The recipe is recipes/alignment_probing.yaml; a variable
# set in the environment overrides its setting (LR=1e-4 bash scripts/alignment_probing.sh).
set -euo pipefail

IMAGE_FEATURES=${IMAGE_FEATURES:-"features/train_dinov2_l.h5 features/train_clip_vit_l.h5"}
TEXT_FEATURES=${TEXT_FEATURES:-"features/train_nv_embed_v2.h5 features/train_gte_qwen2.h5"}
VAL_IMAGE_FEATURES=${VAL_IMAGE_FEATURES:-"features/val_dinov2_l.h5 features/val_clip_vit_l.h5"}
VAL_TEXT_FEATURES=${VAL_TEXT_FEATURES:-"features/val_nv_embed_v2.h5 features/val_gte_qwen2.h5"}
OUTPUT_DIR=${OUTPUT_DIR:-runs/alignment_probing}
RECIPE=${RECIPE:-recipes/alignment_probing.yaml}
EXTRA_ARGS=${EXTRA_ARGS:-}

cd "$(dirname "$0")/.."
source scripts/lib/recipe.sh
recipe_overrides TARGET_DIM:target-dim LOSS:loss BATCH_SIZE:batch-size OPTIMIZER:optimizer LR:lr WD:wd \
  EPOCHS:epochs WARMUP:warmup PRECISION:precision SEED:seed

# shellcheck disable=SC2086
python -m align.probe --config "$RECIPE" "${overrides[@]}" \
  --image-features $IMAGE_FEATURES --text-features $TEXT_FEATURES \
  --val-image-features $VAL_IMAGE_FEATURES --val-text-features $VAL_TEXT_FEATURES \
  --output-dir "$OUTPUT_DIR" $EXTRA_ARGS
