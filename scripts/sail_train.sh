#!/usr/bin/env bash
# SAIL (Zhang et al., 2025) stage 2: train the star alignment head on cached DINOv2-L / NV-Embed-v2 features.
#
# Features come from `python -m encode` (stage 1), e.g.
#   python -m encode image --model facebook/dinov2-large --pooling concat --data DATA --out features/train_image.h5
#   python -m encode text  --model nvidia/NV-Embed-v2 --trust-remote-code --caption-column raw_caption \
#       --data DATA --out features/train_raw_caption.h5
#   (and --caption-column long_caption for the extra-text store)
# Every variable below can be overridden from the environment: `NUM_GPUS=8 BATCH_SIZE=32768 bash scripts/sail_train.sh`.
set -euo pipefail

IMAGE_FEATURES=${IMAGE_FEATURES:-features/train_image.h5}
TEXT_FEATURES=${TEXT_FEATURES:-features/train_raw_caption.h5}           # several: space-separated
EXTRA_TEXT_FEATURES=${EXTRA_TEXT_FEATURES:-features/train_long_caption.h5}  # "" to train without extra text
VAL_IMAGE_FEATURES=${VAL_IMAGE_FEATURES:-}                              # optional held-out stores
VAL_TEXT_FEATURES=${VAL_TEXT_FEATURES:-}
OUTPUT_DIR=${OUTPUT_DIR:-runs/sail_star_dinov2l_nvembedv2}

HEAD=${HEAD:-star}
WIDTH_FACTOR=${WIDTH_FACTOR:-8}
TARGET_DIM=${TARGET_DIM:-1024}
LOSS=${LOSS:-siglip}
BATCH_SIZE=${BATCH_SIZE:-32768}          # global, split over the GPUs
OPTIMIZER=${OPTIMIZER:-lion}
LR=${LR:-1e-5}
WD=${WD:-1e-4}
EPOCHS=${EPOCHS:-100}
WARMUP=${WARMUP:-0.1}                    # < 1: fraction of the steps; >= 1: steps
LOGIT_SCALE=${LOGIT_SCALE:-20}
LOGIT_BIAS=${LOGIT_BIAS:--10}
PRECISION=${PRECISION:-amp_bf16}
SEED=${SEED:-42}
SAVE_EVERY=${SAVE_EVERY:-500}
VAL_EVERY=${VAL_EVERY:-500}
NUM_GPUS=${NUM_GPUS:-1}
EXTRA_ARGS=${EXTRA_ARGS:-}               # e.g. "--decay-norm-and-bias" to reproduce SAIL's decay of every parameter

cd "$(dirname "$0")/.."

args=(
  --image-features "$IMAGE_FEATURES"
  --text-features $TEXT_FEATURES
  --head "$HEAD" --width-factor "$WIDTH_FACTOR" --target-dim "$TARGET_DIM"
  --loss "$LOSS" --batch-size "$BATCH_SIZE"
  --optimizer "$OPTIMIZER" --lr "$LR" --wd "$WD" --epochs "$EPOCHS" --warmup "$WARMUP"
  --logit-scale "$LOGIT_SCALE" --logit-bias "$LOGIT_BIAS"
  --precision "$PRECISION" --seed "$SEED"
  --save-every "$SAVE_EVERY" --val-every "$VAL_EVERY"
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
