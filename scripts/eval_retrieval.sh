#!/usr/bin/env bash
# Image<->text retrieval R@1/5/10 on COCO (Karpathy 5k test or a COCO captions JSON) and Flickr30k (Karpathy).
# Edit the variables, then run: bash scripts/eval_retrieval.sh
set -euo pipefail

MODEL="open_clip:ViT-B-32/laion2b_s34b_b79k"     # or an align/ run or checkpoint directory
# One "DATA|IMAGE_ROOT|SPLIT|NAME" entry per benchmark. DATA is a COCO dir, a captions_*.json or a Karpathy JSON.
BENCHMARKS=(
    "../shared/data/coco-mini||val2017|coco-mini"
    # "data/karpathy/dataset_coco.json|data/coco|test|coco"
    # "data/karpathy/dataset_flickr30k.json|data/flickr30k/flickr30k-images|test|flickr30k"
)
OUTPUT_DIR="eval_results"
BATCH_SIZE=64
DEVICE="cpu"

cd "$(dirname "$0")/.."
for entry in "${BENCHMARKS[@]}"; do
    IFS="|" read -r data image_root split name <<< "$entry"
    python -m evaluate retrieval --model "$MODEL" --data "$data" ${image_root:+--image-root "$image_root"} \
        --split "$split" --name "$name" --batch-size "$BATCH_SIZE" --device "$DEVICE" \
        --output "$OUTPUT_DIR/retrieval_${name}.json"
done
