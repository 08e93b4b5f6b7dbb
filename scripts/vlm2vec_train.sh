#!/usr/bin/env bash
# VLM2Vec recipe (Jiang et al., ICLR 2025): a VLM fine-tuned on the 20 MMEB-train subsets with in-batch InfoNCE
# (temperature 0.02, last-token pooling, L2-normalised), LoRA r=16, lr 2e-5, global batch 1,024 through
# GradCache, 2,000 steps with 200 warmup steps. Edit the variables, then run from the repository root:
#   bash scripts/vlm2vec_train.sh          (paths are relative to the repository root)
# Re-running continues the run from its latest checkpoint (--resume latest).
# Phi-3.5-V: MODEL=microsoft/Phi-3.5-vision-instruct TRUST_REMOTE_CODE=1 (runs the model's own hub code).
set -euo pipefail

MODEL=${MODEL:-Qwen/Qwen2-VL-2B-Instruct}          # or Qwen/Qwen2-VL-7B-Instruct, a local dir, Phi-3.5-V (above)
TRUST_REMOTE_CODE=${TRUST_REMOTE_CODE:-0}           # 1 only for remote-code models you trust (Phi-3.5-V)
DATA=${DATA:-data/MMEB-train}                       # SUBSET/{original,diverse_instruction}*.parquet (hub layout)
IMAGE_ROOT=${IMAGE_ROOT:-$DATA}                     # where MMEB-train's image zips were extracted
OUTPUT_DIR=${OUTPUT_DIR:-runs/vlm2vec-qwen2vl-2b-lora}
NPROC=${NPROC:-1}                                   # GPUs on this node (torchrun)
SUBSETS=${SUBSETS:-"ImageNet_1K N24News HatefulMemes VOC2007 SUN397 OK-VQA A-OKVQA DocVQA InfographicsVQA ChartQA Visual7W VisDial CIRR VisualNews_t2i VisualNews_i2t MSCOCO_t2i MSCOCO_i2t NIGHTS WebQA MSCOCO"}
SPLIT=${SPLIT:-original}                            # or diverse_instruction
NUM_SAMPLE_PER_SUBSET=${NUM_SAMPLE_PER_SUBSET:-50000}
BATCH_SIZE=${BATCH_SIZE:-1024}                      # global, all GPUs together
QUERY_CHUNK=${QUERY_CHUNK:-16}                      # GradCache chunks: rows per forward; lower if out of memory
TARGET_CHUNK=${TARGET_CHUNK:-16}
TUNING=${TUNING:-lora}                              # lora | dora | full
LORA_R=${LORA_R:-16}
LORA_ALPHA=${LORA_ALPHA:-32}
LR=${LR:-2e-5}
STEPS=${STEPS:-2000}
WARMUP=${WARMUP:-200}
TEMPERATURE=${TEMPERATURE:-0.02}
POOLING=${POOLING:-last}
MAX_TEXT_TOKENS=${MAX_TEXT_TOKENS:-256}
PRECISION=${PRECISION:-amp_bf16}
DTYPE=${DTYPE:-bfloat16}                            # weight dtype (LoRA trains over bf16 base weights)
SAVE_EVERY=${SAVE_EVERY:-500}
NUM_WORKERS=${NUM_WORKERS:-4}
EXTRA_ARGS=${EXTRA_ARGS:-}                          # e.g. "--mixed-batches --gradient-checkpointing --merge-lora"

cd "$(dirname "$0")/.."
remote=()
if [[ "$TRUST_REMOTE_CODE" == 1 ]]; then remote=(--trust-remote-code); fi

# shellcheck disable=SC2086
torchrun --standalone --nproc_per_node="$NPROC" -m vlm2vec.train \
  --model "$MODEL" "${remote[@]}" \
  --data "$DATA" --image-root "$IMAGE_ROOT" --subsets $SUBSETS --split "$SPLIT" \
  --num-sample-per-subset "$NUM_SAMPLE_PER_SUBSET" \
  --batch-size "$BATCH_SIZE" --query-chunk-size "$QUERY_CHUNK" --target-chunk-size "$TARGET_CHUNK" \
  --tuning "$TUNING" --lora-r "$LORA_R" --lora-alpha "$LORA_ALPHA" \
  --lr "$LR" --steps "$STEPS" --warmup "$WARMUP" --temperature "$TEMPERATURE" --pooling "$POOLING" \
  --max-text-tokens "$MAX_TEXT_TOKENS" --precision "$PRECISION" --dtype "$DTYPE" \
  --output-dir "$OUTPUT_DIR" --save-every "$SAVE_EVERY" --num-workers "$NUM_WORKERS" \
  --resume latest $EXTRA_ARGS
