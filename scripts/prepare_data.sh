#!/usr/bin/env bash
# Prepare image–caption data for `python -m encode`: download a DreamLIP caption table with img2dataset and
# filter it, or filter data already on disk (caption table + images, or COCO captions). Writes OUT with
# manifest.parquet (or WebDataset shards), report.json (rows kept / rejected per reason), prepare_config.json.
# Edit the variables, then run from anywhere: bash scripts/prepare_data.sh
# The defaults run offline on the COCO sample; set SOURCE=dreamlip for CC3M / CC12M / YFCC15M.
set -euo pipefail

SOURCE="coco"                                   # dreamlip (download) | local (table + images on disk) | coco
OUT="outputs/data/coco-mini-val"                # output folder (encode reads it with --data "$OUT")

# SOURCE=dreamlip: a DreamLIP caption table (.parquet .csv .tsv .jsonl), one row per image
TABLE="data/dreamlip/cc3m_3long_3short_1raw_captions_url.parquet"
URL_COLUMN="url"                                # column with the image URL (check your table's header)
KEY_COLUMN=""                                   # unique id column; empty: key = sha1(URL)[:16]
CAPTION_COLUMNS="raw_caption,shortIB_captions,shortSV_captions,shortLLA_captions,longIB_captions,longSV_captions,longLLA_captions"
OUTPUT_FORMAT="files"                           # files (manifest + images/) | webdataset (OUT/*.tar)
IMAGE_SIZE=""                                   # e.g. 384: shorter side, never upscaled; empty: keep originals
PROCESSES=16                                    # img2dataset processes (one machine; see docs/data_preparation.md
THREADS=64                                      #   for pyspark / ray) and threads per process
SHARD_SIZE=10000
RESUME=1                                        # 1: continue an interrupted download in OUT

# SOURCE=local: a caption table naming images under IMAGE_ROOT (IMAGE_COLUMN: path relative to IMAGE_ROOT)
LOCAL_TABLE="data/my_captions.csv"
IMAGE_COLUMN="image"
IMAGE_ROOT="data/my_images"

# SOURCE=coco: a COCO captions JSON (images default to ../<split> beside annotations/)
COCO_ANNOTATIONS="../shared/data/coco-mini/annotations/captions_val2017.json"

# image filters (all sources)
MIN_IMAGE_SIZE=32                               # shorter side in pixels
MAX_ASPECT_RATIO=10                             # longer / shorter side

cd "$(dirname "$0")/.."
FILTERS=(--min-image-size "$MIN_IMAGE_SIZE" --max-aspect-ratio "$MAX_ASPECT_RATIO")
case "$SOURCE" in
  dreamlip)
    ARGS=(--table "$TABLE" --url-column "$URL_COLUMN" --out "$OUT" --caption-columns "$CAPTION_COLUMNS"
          --output-format "$OUTPUT_FORMAT" --processes "$PROCESSES" --threads "$THREADS" --shard-size "$SHARD_SIZE")
    [[ -n "$KEY_COLUMN" ]] && ARGS+=(--key-column "$KEY_COLUMN")
    [[ -n "$IMAGE_SIZE" ]] && ARGS+=(--image-size "$IMAGE_SIZE")
    [[ "$RESUME" == 1 && -f "$OUT/prepare_config.json" ]] && ARGS+=(--resume)
    python -m data_preparation prepare "${ARGS[@]}" "${FILTERS[@]}"
    ;;
  local)
    ARGS=(--table "$LOCAL_TABLE" --image-column "$IMAGE_COLUMN" --image-root "$IMAGE_ROOT" --out "$OUT"
          --caption-columns "$CAPTION_COLUMNS")
    [[ -n "$KEY_COLUMN" ]] && ARGS+=(--key-column "$KEY_COLUMN")
    python -m data_preparation from-local "${ARGS[@]}" "${FILTERS[@]}" --overwrite
    ;;
  coco)
    python -m data_preparation from-coco --annotations "$COCO_ANNOTATIONS" --out "$OUT" "${FILTERS[@]}" --overwrite
    ;;
  *)
    echo "SOURCE must be dreamlip, local or coco, not '$SOURCE'" >&2
    exit 2
    ;;
esac
echo "next: python -m encode image --model efficientnet-lite0 --data $OUT --out image.h5"
