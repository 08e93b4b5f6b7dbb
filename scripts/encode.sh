#!/usr/bin/env bash
# Stage 1 (SAIL-style): encode images and captions with frozen backbones into HDF5 feature stores.
# Edit the variables, then run from anywhere: bash scripts/encode.sh
# Re-running is safe: every store is written with --resume, so complete stores are left as they are
# ("already complete") and an interrupted one (Ctrl-C, kill -9, lost node) continues from its last batch.
set -euo pipefail

VISION_MODEL="efficientnet-lite0"       # e.g. facebook/dinov2-large (SAIL), timm:..., open_clip:ARCH/PRETRAINED
TEXT_MODEL="all-MiniLM-L6-v2"           # e.g. nvidia/NV-Embed-v2 (add --trust-remote-code below), Alibaba-NLP/gte-large-en-v1.5
DATA="../shared/data/coco-mini/annotations/captions_train2017.json"  # manifest, folder, COCO JSON, .tar shards
IMAGE_ROOT=""                           # manifests / COCO only; empty: the manifest's folder, COCO's ../<split>
DOMAIN="both"                           # image | text | both
CAPTION_SOURCES=(caption)               # caption columns, one store each; DreamLIP: (raw_caption shortSV_captions longSV_captions)
POOLING=""                              # image pooling cls|mean|concat (SAIL: concat for DINOv2); empty: the model's default
BATCH_SIZE=64
NUM_WORKERS=""                          # DataLoader processes decoding images; empty: 0 (threads) on the CPU, min(8, CPUs) on a GPU
DTYPE="float16"
DEVICE="cpu"                            # cuda for GPUs
NPROC=1                                 # >1: torchrun --nproc_per_node NPROC (one rank per GPU)
VISION_ARGS=()                          # extra image flags, e.g. (--trust-remote-code)
TEXT_ARGS=()                            # extra text flags, e.g. (--trust-remote-code --instruction "..." --max-length 256)
OUTPUT_DIR="outputs/features"
DATA_NAME="coco-mini-train2017"         # prefix of the store names

cd "$(dirname "$0")/.."
mkdir -p "$OUTPUT_DIR"

if [ "$NPROC" -gt 1 ]; then
    LAUNCH=(torchrun --standalone --nproc_per_node "$NPROC" -m encode)
else
    LAUNCH=(python -m encode)
fi
COMMON=(--data "$DATA" --batch-size "$BATCH_SIZE" ${NUM_WORKERS:+--num-workers "$NUM_WORKERS"} --dtype "$DTYPE" --device "$DEVICE" --resume)
slug() { echo "$1" | tr '/:' '__'; }

if [ "$DOMAIN" = "image" ] || [ "$DOMAIN" = "both" ]; then
    OUT="$OUTPUT_DIR/${DATA_NAME}_image_$(slug "$VISION_MODEL")${POOLING:+_$POOLING}.h5"
    echo "== image features: $VISION_MODEL -> $OUT"
    "${LAUNCH[@]}" image --model "$VISION_MODEL" "${COMMON[@]}" --out "$OUT" \
        ${IMAGE_ROOT:+--image-root "$IMAGE_ROOT"} ${POOLING:+--pooling "$POOLING"} ${VISION_ARGS[@]+"${VISION_ARGS[@]}"}
fi

if [ "$DOMAIN" = "text" ] || [ "$DOMAIN" = "both" ]; then
    for CAPTION in "${CAPTION_SOURCES[@]}"; do
        OUT="$OUTPUT_DIR/${DATA_NAME}_text_$(slug "$TEXT_MODEL")_${CAPTION}.h5"
        echo "== caption features ($CAPTION): $TEXT_MODEL -> $OUT"
        "${LAUNCH[@]}" text --model "$TEXT_MODEL" "${COMMON[@]}" --caption-column "$CAPTION" --out "$OUT" \
            ${TEXT_ARGS[@]+"${TEXT_ARGS[@]}"}
    done
fi
