#!/usr/bin/env bash
# VLM2Vec recipe (Jiang et al., ICLR 2025), recipes/vlm2vec.yaml: a VLM fine-tuned on the 20 MMEB-train subsets
# with in-batch InfoNCE (temperature 0.02, last-token pooling, L2-normalised), LoRA r=16, lr 2e-5, global batch
# 1,024 through GradCache, 2,000 steps with 200 warmup steps. A variable set in the environment overrides the
# recipe's setting; run from anywhere:
#   NPROC=8 MODEL=Qwen/Qwen2-VL-7B-Instruct bash scripts/vlm2vec_train.sh   (paths relative to the repository root)
# Re-running continues the run from its latest checkpoint (--resume latest).
# Phi-3.5-V: MODEL=microsoft/Phi-3.5-vision-instruct TRUST_REMOTE_CODE=1 (runs the model's own hub code).
set -euo pipefail

DATA=${DATA:-data/MMEB-train}                       # SUBSET/{original,diverse_instruction}*.parquet (hub layout)
IMAGE_ROOT=${IMAGE_ROOT:-$DATA}                     # where MMEB-train's image zips were extracted
OUTPUT_DIR=${OUTPUT_DIR:-runs/vlm2vec-qwen2vl-2b-lora}
RECIPE=${RECIPE:-recipes/vlm2vec.yaml}
NPROC=${NPROC:-1}                                   # GPUs on this node (torchrun)
TRUST_REMOTE_CODE=${TRUST_REMOTE_CODE:-0}           # 1 only for remote-code models you trust (Phi-3.5-V)
EXTRA_ARGS=${EXTRA_ARGS:-}                          # e.g. "--mixed-batches --gradient-checkpointing --merge-lora"

cd "$(dirname "$0")/.."
source scripts/lib/recipe.sh
# torchrun restarts (--max-restarts, elastic jobs) need the workers' own store (pytorch/pytorch#135712).
export TORCH_DISABLE_SHARE_RDZV_TCP_STORE=${TORCH_DISABLE_SHARE_RDZV_TCP_STORE:-1}
# MODEL (hub id or local dir), SUBSETS (space-separated), QUERY_CHUNK / TARGET_CHUNK (GradCache rows per forward;
# lower them if out of memory), and the rest as named:
recipe_overrides MODEL:model SPLIT:split NUM_SAMPLE_PER_SUBSET:num-sample-per-subset BATCH_SIZE:batch-size \
  QUERY_CHUNK:query-chunk-size TARGET_CHUNK:target-chunk-size TUNING:tuning LORA_R:lora-r LORA_ALPHA:lora-alpha \
  LR:lr STEPS:steps WARMUP:warmup TEMPERATURE:temperature POOLING:pooling MAX_TEXT_TOKENS:max-text-tokens \
  PRECISION:precision DTYPE:dtype SAVE_EVERY:save-every NUM_WORKERS:num-workers
remote=()
if [[ "$TRUST_REMOTE_CODE" == 1 ]]; then remote=(--trust-remote-code); fi
subsets=()
# shellcheck disable=SC2206
if [[ -n "${SUBSETS:-}" ]]; then subsets=(--subsets $SUBSETS); fi

# shellcheck disable=SC2086
torchrun --standalone --nproc_per_node="$NPROC" -m vlm2vec.train --config "$RECIPE" "${overrides[@]}" \
  "${remote[@]}" "${subsets[@]}" --data "$DATA" --image-root "$IMAGE_ROOT" \
  --output-dir "$OUTPUT_DIR" --resume latest $EXTRA_ARGS
