#!/usr/bin/env bash
# SAIL (Zhang et al., 2025) stage 2: train the star alignment head on cached DINOv2-L / NV-Embed-v2 features.
#
# Features come from `python -m encode` (stage 1), e.g.
#   python -m encode image --model facebook/dinov2-large --pooling concat --data DATA --out features/train_image.h5
#   python -m encode text  --model nvidia/NV-Embed-v2 --trust-remote-code --caption-column raw_caption \
#       --data DATA --out features/train_raw_caption.h5
#   (and --caption-column long_caption for the extra-text store)
# The recipe is recipes/sail.yaml; a variable set in the environment overrides its setting:
#   NUM_GPUS=8 BATCH_SIZE=32768 LR=2e-5 bash scripts/sail_train.sh
# Re-running continues the run from its latest checkpoint (--resume latest).
set -euo pipefail

IMAGE_FEATURES=${IMAGE_FEATURES:-features/train_image.h5}
TEXT_FEATURES=${TEXT_FEATURES:-features/train_raw_caption.h5}           # several: space-separated
EXTRA_TEXT_FEATURES=${EXTRA_TEXT_FEATURES:-features/train_long_caption.h5}  # "" to train without extra text
VAL_IMAGE_FEATURES=${VAL_IMAGE_FEATURES:-}                              # optional held-out stores
VAL_TEXT_FEATURES=${VAL_TEXT_FEATURES:-}
OUTPUT_DIR=${OUTPUT_DIR:-runs/sail_star_dinov2l_nvembedv2}
RECIPE=${RECIPE:-recipes/sail.yaml}
NUM_GPUS=${NUM_GPUS:-1}
EXTRA_ARGS=${EXTRA_ARGS:-}               # e.g. "--decay-norm-and-bias" to reproduce SAIL's decay of every parameter

cd "$(dirname "$0")/.."
source scripts/lib/recipe.sh
# torchrun restarts (--max-restarts, elastic jobs) need the workers' own store (pytorch/pytorch#135712).
export TORCH_DISABLE_SHARE_RDZV_TCP_STORE=${TORCH_DISABLE_SHARE_RDZV_TCP_STORE:-1}
recipe_overrides HEAD:head WIDTH_FACTOR:width-factor TARGET_DIM:target-dim LOSS:loss BATCH_SIZE:batch-size \
  OPTIMIZER:optimizer LR:lr WD:wd EPOCHS:epochs WARMUP:warmup LOGIT_SCALE:logit-scale LOGIT_BIAS:logit-bias \
  PRECISION:precision SEED:seed SAVE_EVERY:save-every VAL_EVERY:val-every

# shellcheck disable=SC2206
args=(
  --config "$RECIPE" "${overrides[@]}"
  --image-features "$IMAGE_FEATURES" --text-features $TEXT_FEATURES
  --output-dir "$OUTPUT_DIR" --resume latest
)
if [[ -n "$EXTRA_TEXT_FEATURES" ]]; then
  args+=(--extra-text-features $EXTRA_TEXT_FEATURES)
fi
if [[ -n "$VAL_IMAGE_FEATURES" ]]; then
  args+=(--val-image-features "$VAL_IMAGE_FEATURES" --val-text-features $VAL_TEXT_FEATURES)
fi
# shellcheck disable=SC2206
args+=($EXTRA_ARGS)

if [[ "$NUM_GPUS" -gt 1 ]]; then
  torchrun --standalone --nproc_per_node "$NUM_GPUS" -m align.train "${args[@]}"
else
  python -m align.train "${args[@]}"
fi
