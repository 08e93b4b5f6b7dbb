"""``python -m data_preparation {prepare,from-local,from-coco}``: make a folder ``python -m encode`` reads.

Bad input (missing table or columns, duplicate keys, an existing non-empty --out without --resume/--overwrite)
ends with a one-line ``error:`` message and exit code 2 before anything is written.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from core.argtypes import non_negative_int, positive_int
from data_preparation.checks import ImageChecks
from data_preparation.download import DISTRIBUTORS, OUTPUT_FORMATS, RESIZE_MODES
from data_preparation.pipeline import (
    CocoConfig,
    DownloadConfig,
    LocalConfig,
    prepare_coco,
    prepare_download,
    prepare_local,
)
from data_preparation.tables import DREAMLIP_CAPTION_COLUMNS, PrepareError

EXIT_BAD_INPUT = 2
DEFAULTS = ImageChecks()

EPILOG = f"""\
output (--out DIR):
  DIR/manifest.parquet   key, image (path relative to DIR), every caption column  [files output, from-*]
  DIR/images/            the downloaded images (img2dataset's shard folders)      [files output]
  DIR/00000.tar ...      WebDataset shards {{key}}.jpg/.txt/.json                  [--output-format webdataset]
  DIR/report.json        rows kept and rejected per reason; DIR/prepare_config.json: the settings
then:  python -m encode image --model M --data DIR --out image.h5
       python -m encode text --model M --data DIR --caption-column raw_caption --out text.h5

caption columns: --caption-columns, default every DreamLIP column the table has:
  {", ".join(DREAMLIP_CAPTION_COLUMNS)}
keys: --key-column if given (unique, non-empty), else the first 16 hex digits of SHA-1(URL);
      rows repeating an earlier URL are rejected as 'duplicate'.

examples:
  python -m data_preparation prepare --table cc3m_dreamlip.parquet --url-column url --out data/cc3m \\
      --processes 16 --threads 128 --image-size 384
  python -m data_preparation from-coco --annotations ../shared/data/coco-mini/annotations/captions_val2017.json \\
      --out data/coco_val
"""


def _aspect(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number >= 1, got {text!r}") from None
    if not value >= 1.0:
        raise argparse.ArgumentTypeError(f"expected a number >= 1, got {value}")
    return value


def _columns(text: str) -> tuple[str, ...]:
    columns = tuple(c.strip() for c in text.split(",") if c.strip())
    if not columns:
        raise argparse.ArgumentTypeError("expected comma-separated column names")
    return columns


def _add_checks(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("image filters (run on the original image)")
    group.add_argument(
        "--min-image-size",
        type=positive_int,
        default=DEFAULTS.min_image_size,
        help="reject images whose shorter side is below this many pixels (default: %(default)s)",
    )
    group.add_argument(
        "--max-aspect-ratio",
        type=_aspect,
        default=DEFAULTS.max_aspect_ratio,
        help="reject images whose longer/shorter side ratio is above this (default: %(default)s)",
    )


def _add_captions(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--caption-columns",
        type=_columns,
        help="comma-separated caption columns to keep (default: every DreamLIP caption column in the table)",
    )
    parser.add_argument("--key-column", help="column with a unique row key (default: derived, see below)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m data_preparation",
        description="Turn image–caption tables into folders python -m encode reads: download with img2dataset "
        "and filter (undecodable, truncated, too small, extreme aspect ratio), or filter data already on disk.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="{prepare,from-local,from-coco}")

    prepare = commands.add_parser(
        "prepare",
        help="download a caption table's image URLs with img2dataset, filter, write manifest or shards",
        description="Download the images of a caption table (CSV/TSV/parquet/JSONL; DreamLIP CC3M/CC12M/YFCC15M) "
        "with img2dataset, filter them, and write DIR for python -m encode. Local paths in --url-column are "
        "read as file:// URLs (relative paths from the current folder).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    prepare.add_argument(
        "--table", type=Path, required=True, help="caption table (.parquet .csv .tsv .jsonl)"
    )
    prepare.add_argument("--url-column", required=True, help="column with the image URL (or local path)")
    prepare.add_argument("--out", type=Path, required=True, help="output folder")
    _add_captions(prepare)
    prepare.add_argument(
        "--output-format",
        choices=OUTPUT_FORMATS,
        default="files",
        help="files: DIR/manifest.parquet + DIR/images/; webdataset: DIR/*.tar (default: %(default)s)",
    )
    prepare.add_argument(
        "--image-size",
        type=positive_int,
        help="resize so the --resize-mode side is this many pixels (never upscales); default: keep the original",
    )
    prepare.add_argument(
        "--resize-mode",
        choices=RESIZE_MODES,
        default="keep_ratio",
        help="img2dataset resize mode with --image-size (default: %(default)s: shorter side = --image-size)",
    )
    run = prepare.add_argument_group("img2dataset")
    run.add_argument(
        "--processes",
        type=positive_int,
        default=os.cpu_count() or 1,
        help="download processes (default: CPUs = %(default)s)",
    )
    run.add_argument(
        "--threads", type=positive_int, default=64, help="threads per process (default: %(default)s)"
    )
    run.add_argument(
        "--shard-size", type=positive_int, default=10000, help="images per shard (default: %(default)s)"
    )
    run.add_argument(
        "--timeout", type=positive_int, default=10, help="seconds per request (default: %(default)s)"
    )
    run.add_argument(
        "--retries", type=non_negative_int, default=0, help="retries per URL (default: %(default)s)"
    )
    run.add_argument(
        "--distributor",
        choices=DISTRIBUTORS,
        default="multiprocessing",
        help="img2dataset distributor; pyspark/ray use an existing cluster session (default: %(default)s)",
    )
    _add_checks(prepare)
    existing = prepare.add_mutually_exclusive_group()
    existing.add_argument(
        "--resume",
        action="store_true",
        help="continue an interrupted run in --out (finished shards are kept)",
    )
    existing.add_argument(
        "--overwrite", action="store_true", help="delete --out (made by this tool) and start over"
    )

    local = commands.add_parser(
        "from-local",
        help="filter images already on disk named by a caption table; write the manifest",
        description="Check the images a caption table names (no download, no copy) and write DIR/manifest.parquet "
        "with image paths relative to DIR. Default key: the image path without its extension.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    local.add_argument("--table", type=Path, required=True, help="caption table (.parquet .csv .tsv .jsonl)")
    local.add_argument(
        "--image-column", default="image", help="column with the image path (default: %(default)s)"
    )
    local.add_argument(
        "--image-root", type=Path, help="folder the image paths are relative to (default: the table's)"
    )
    local.add_argument("--out", type=Path, required=True, help="output folder")
    _add_captions(local)
    local.add_argument(
        "--threads", type=positive_int, default=8, help="image-checking threads (default: %(default)s)"
    )
    _add_checks(local)
    local.add_argument(
        "--overwrite", action="store_true", help="delete --out (made by this tool) and start over"
    )

    coco = commands.add_parser(
        "from-coco",
        help="filter a COCO captions split; write the manifest (captions as a list per image)",
        description="Check the images of a COCO captions JSON and write DIR/manifest.parquet: key = image id, "
        "image = path relative to DIR, caption = the image's captions (a list, by caption id); encode with "
        "--caption-column caption.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    coco.add_argument("--annotations", type=Path, required=True, help="annotations/captions_<split>.json")
    coco.add_argument(
        "--image-root", type=Path, help="image folder (default: ../<split> beside annotations/)"
    )
    coco.add_argument("--out", type=Path, required=True, help="output folder")
    coco.add_argument(
        "--threads", type=positive_int, default=8, help="image-checking threads (default: %(default)s)"
    )
    _add_checks(coco)
    coco.add_argument(
        "--overwrite", action="store_true", help="delete --out (made by this tool) and start over"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    checks = {"min_image_size": args.min_image_size, "max_aspect_ratio": args.max_aspect_ratio}
    try:
        if args.command == "prepare":
            config = DownloadConfig(
                table=args.table,
                url_column=args.url_column,
                out=args.out,
                key_column=args.key_column,
                caption_columns=args.caption_columns,
                output_format=args.output_format,
                image_size=args.image_size,
                resize_mode=args.resize_mode,
                processes=args.processes,
                threads=args.threads,
                shard_size=args.shard_size,
                timeout=args.timeout,
                retries=args.retries,
                distributor=args.distributor,
                **checks,
            )
            report = prepare_download(config, resume=args.resume, overwrite=args.overwrite)
        elif args.command == "from-local":
            config = LocalConfig(
                table=args.table,
                out=args.out,
                image_column=args.image_column,
                image_root=args.image_root,
                key_column=args.key_column,
                caption_columns=args.caption_columns,
                threads=args.threads,
                **checks,
            )
            report = prepare_local(config, overwrite=args.overwrite)
        else:
            config = CocoConfig(
                annotations=args.annotations,
                out=args.out,
                image_root=args.image_root,
                threads=args.threads,
                **checks,
            )
            report = prepare_coco(config, overwrite=args.overwrite)
    except PrepareError as err:
        print(f"python -m data_preparation: error: {' '.join(str(err).split())}", file=sys.stderr)  # noqa: T201 (CLI output)
        return EXIT_BAD_INPUT
    print(f"{args.out}: {report.summary()}")  # noqa: T201 (CLI output)
    print(f"report: {args.out / 'report.json'}")  # noqa: T201 (CLI output)
    return 0
