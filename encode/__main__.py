"""``python -m encode image|text``: encode a dataset with a frozen backbone into an HDF5 feature store.

Exit codes:

- 0: the store is complete (written now, or already complete with ``--resume``).
- 2 (:data:`EXIT_BAD_INPUT`): bad input (unknown input type, missing columns, empty input, an existing output
  without --resume/--overwrite, a resume against a store of other settings, an unknown model) or an output
  that another process holds open (after a bounded wait): a one-line ``error:`` message, before any model is
  loaded where the check does not need the model, and always before anything is written.
- 74 (:data:`EXIT_WRITE_FAILED`, sysexits ``EX_IOERR``): the disk refused a write (full, over quota,
  read-only); a one-line ``error:`` names the problem; the rows written before are intact, so after freeing
  space the same command with ``--resume`` continues.
- 75 (:data:`core.preemption.EXIT_PREEMPTED`): stopped by SIGTERM / SIGUSR1 after writing and flushing the batch
  in hand; the same command with ``--resume`` continues. Under torchrun each rank exits so.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from core.argtypes import non_negative_int, positive_int
from core.cpu_memory import retain_freed_memory
from core.device import resolve_device
from core.distributed import leave_process_group
from core.preemption import Preempted
from encode.inputs import (
    DEFAULT_CAPTION_COLUMN,
    DEFAULT_IMAGE_COLUMN,
    DEFAULT_KEY_COLUMN,
    InputError,
    load_rows,
)
from encode.store import StoreError, StoreStatus, StoreWriteError, check_keys, check_output

EXIT_BAD_INPUT = 2
EXIT_WRITE_FAILED = 74

EPILOG = """\
inputs (--data):
  manifest table      .csv .tsv .parquet .jsonl with --key-column, --image-column (relative to --image-root,
                      default: the manifest's folder) and caption columns
  folder              holding manifest.parquet (or .csv .tsv .jsonl): images relative to that folder
  COCO captions JSON  annotations/captions_*.json; images in --image-root (default: ../<split> beside it)
  WebDataset          a folder of .tar shards as img2dataset writes them ({key}.jpg, {key}.txt, {key}.json)
  ImageFolder         class/xxx.jpg (or a flat folder of images); key = relative path without extension

examples:
  python -m encode image --model efficientnet-lite0 --data ../shared/data/coco-mini/annotations/captions_train2017.json --out coco_image.h5
  python -m encode text --model all-MiniLM-L6-v2 --data ../shared/data/coco-mini/annotations/captions_train2017.json --caption-column caption --out coco_text.h5
  torchrun --nproc_per_node 4 -m encode image --model facebook/dinov2-large --pooling concat --data DIR --out image.h5
"""


def default_workers(device_type: str) -> int:
    """``--num-workers`` left unset: 0 (decoding threads) on the CPU, else one process per CPU, at most 8."""
    return 0 if device_type == "cpu" else min(8, os.cpu_count() or 1)


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model", required=True, metavar="MODEL", help="registry name, Hugging Face hub id or local folder"
    )
    parser.add_argument(
        "--data", required=True, type=Path, metavar="INPUT", help="manifest, folder, COCO JSON or .tar shards"
    )
    parser.add_argument(
        "--out",
        required=True,
        type=Path,
        metavar="FILE.h5",
        help="the store to write (its folder must exist)",
    )
    parser.add_argument(
        "--key-column",
        default=DEFAULT_KEY_COLUMN,
        metavar="COL",
        help="manifest column with the row key (default: %(default)s)",
    )
    parser.add_argument(
        "--batch-size", type=positive_int, default=64, metavar="N", help="rows per forward (default: 64)"
    )
    parser.add_argument(
        "--num-workers",
        type=non_negative_int,
        default=None,
        metavar="N",
        help="DataLoader processes reading and decoding images; 0 decodes them in this process, with as many "
        f"threads as torch uses, between forwards (default: 0 on the CPU, min(8, CPUs) = "
        f"{default_workers('cuda')} on a GPU)",
    )
    existing = parser.add_mutually_exclusive_group()
    existing.add_argument(
        "--resume",
        action="store_true",
        help="continue an interrupted --out from its last flushed batch (same command and --batch-size); "
        "a complete --out is left as it is",
    )
    existing.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing --out (a file that is not a readable store is moved aside to "
        "NAME.unreadable-DATE-TIME.h5, not deleted)",
    )
    parser.add_argument(
        "--limit", type=positive_int, metavar="N", help="encode only the first N rows of the input"
    )
    parser.add_argument(
        "--dtype",
        choices=("float16", "float32"),
        default="float16",
        help="stored feature dtype (default: float16)",
    )
    parser.add_argument(
        "--device", metavar="DEVICE", help="torch device, e.g. cpu, cuda, cuda:1 (default: cuda if available)"
    )
    parser.add_argument(
        "--trust-remote-code",
        action="store_true",
        help="allow checkpoints that ship their own Python code to run it (review that code first)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m encode",
        description="Encode images or captions with a frozen backbone into a keyed, resumable HDF5 feature store.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    modes = parser.add_subparsers(dest="modality", required=True, metavar="{image,text}")
    image = modes.add_parser(
        "image",
        help="encode images into an image store (one row per image)",
        description="Encode images into an image store (one row per image, keyed by image key).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_common(image)
    image.add_argument(
        "--image-root",
        type=Path,
        metavar="DIR",
        help="folder the manifest's image paths or the COCO file names are relative to",
    )
    image.add_argument(
        "--image-column",
        default=DEFAULT_IMAGE_COLUMN,
        metavar="COL",
        help="manifest column with the image path (default: %(default)s)",
    )
    image.add_argument(
        "--pooling",
        metavar="cls|mean|concat",
        help="ViT pooling: cls, mean (of patch tokens) or concat (cls ‖ mean); default: the model's documented one",
    )
    text = modes.add_parser(
        "text",
        help="encode one caption column into a caption store (one row per caption)",
        description="Encode one caption column into a caption store (one row per caption, linked to its image).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_common(text)
    text.add_argument(
        "--caption-column",
        default=DEFAULT_CAPTION_COLUMN,
        metavar="COL",
        help="manifest column, COCO 'caption', or WebDataset .json field / 'txt' (default: %(default)s)",
    )
    text.add_argument(
        "--instruction",
        metavar="TEXT",
        help="task instruction for instruction-tuned embedders (NV-Embed-v2 ...)",
    )
    text.add_argument(
        "--max-length", type=positive_int, metavar="TOKENS", help="token limit (default: the model's own)"
    )
    text.add_argument(
        "--text-pooling",
        metavar="POOLING",
        help="override the model's documented pooling (mean, cls, last_token)",
    )
    return parser


def _fail(err: BaseException | str, code: int = EXIT_BAD_INPUT, label: str = "error") -> int:
    message = " ".join(str(err).split())
    print(f"python -m encode: {label}: {message}", file=sys.stderr)  # noqa: T201
    return code


def _check_output(args: argparse.Namespace) -> StoreStatus | None:
    """Output checks that need no model; a resume against another modality, dtype or caption column fails here.

    Returns the status of the store that ``--resume`` will continue, if there is one.
    """
    settings = {
        "modality": args.modality,
        "dtype": args.dtype,
        "caption_column": args.caption_column if args.modality == "text" else None,
    }
    return check_output(args.out, resume=args.resume, overwrite=args.overwrite, settings=settings)


def _reusable(stored: StoreStatus, args: argparse.Namespace, source: str, keys: list[str]) -> bool:
    """A complete store that this command asked for by name and rows: --resume keeps it without loading the model.

    Anything not decidable without the model (a renamed alias, a default pooling) falls through to the full check.
    """
    text = args.modality == "text"
    pooling = args.text_pooling if text else args.pooling
    asked: dict[str, object] = {"model": args.model, "source": source}
    if pooling is not None:
        asked["pooling"] = pooling
    if text:
        asked["instruction"] = args.instruction
        if args.max_length is not None:
            asked["max_length"] = args.max_length
    return stored.complete_with(keys, asked)


def load_backbone(args: argparse.Namespace, device: str):
    """The backbone the arguments name, through the registry of :mod:`encode.backbones`."""
    from encode.backbones import load_image_backbone, load_text_backbone

    if args.modality == "text":
        return load_text_backbone(
            args.model,
            pooling=args.text_pooling,
            instruction=args.instruction,
            max_length=args.max_length,
            device=device,
            trust_remote_code=args.trust_remote_code,
        )
    return load_image_backbone(
        args.model, pooling=args.pooling, device=device, trust_remote_code=args.trust_remote_code
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("encode").setLevel(logging.INFO)
    text = args.modality == "text"

    # 1. Everything that needs no model: the input, its keys, the output path.
    try:
        rows = load_rows(
            args.data,
            None if text else args.image_root,
            key_column=args.key_column,
            image_column=DEFAULT_IMAGE_COLUMN if text else args.image_column,
            caption_columns=[args.caption_column] if text else (),
            need_images=not text,
        )
        keys = (
            rows.caption_rows(args.caption_column).head(args.limit).keys
            if text
            else rows.head(args.limit).keys
        )
        check_keys(keys)
        stored = _check_output(args)
    except (InputError, StoreError) as err:
        return _fail(err)
    if stored is not None and _reusable(stored, args, rows.source, keys):
        if int(os.environ.get("RANK", "0")) == 0:
            from encode.pipeline import EncodeSummary

            _report(EncodeSummary.unchanged(stored), stored.meta.dim, stored.meta.dtype)
        return 0

    from encode import distributed
    from encode.pipeline import EncodeOptions, encode_images, encode_texts

    world = distributed.init_from_env()
    try:
        device = resolve_device(args.device, world.local_rank)
    except ValueError as err:
        return _fail(err)
    retain_freed_memory(device)  # a CPU forward otherwise page-faults its activations in on every batch

    # 2. The model (unknown names, remote code without --trust-remote-code, bad pooling fail here).
    try:
        backbone = load_backbone(args, device)
    except (ValueError, OSError) as err:
        return _fail(f"cannot load model {args.model!r}: {err}")

    # 3. Encode (the store's preflight rejects a resume against other settings before writing).
    options = EncodeOptions(
        batch_size=args.batch_size,
        num_workers=default_workers(device.type) if args.num_workers is None else args.num_workers,
        dtype=args.dtype,
        resume=args.resume,
        overwrite=args.overwrite,
    )
    try:
        if text:
            summary = encode_texts(
                rows,
                backbone,
                args.out,
                caption_column=args.caption_column,
                limit=args.limit,
                options=options,
            )
        else:
            summary = encode_images(rows, backbone, args.out, limit=args.limit, options=options)
    except Preempted as err:
        return _fail(err, err.exit_code, label="stopped")
    except StoreWriteError as err:
        return _fail(err, EXIT_WRITE_FAILED)
    except StoreError as err:
        return _fail(err)
    finally:
        leave_process_group()
    if world.rank == 0:
        _report(summary, backbone.dim, args.dtype)
    return 0


def _report(summary, dim: int, dtype: str) -> None:
    if summary.resumed_from == summary.rows and summary.encoded_rows == 0:
        print(f"{summary.path} was already complete: {summary.rows} rows x {dim} ({dtype})")  # noqa: T201
    else:
        resumed = f", resumed at row {summary.resumed_from}" if summary.resumed_from else ""
        speed = (
            f" in {summary.seconds:.1f}s ({summary.rows_per_second:.1f} rows/s)" if summary.seconds else ""
        )
        print(f"wrote {summary.path}: {summary.rows} rows x {dim} ({dtype}){resumed}{speed}")  # noqa: T201
    if summary.failures:
        first = ", ".join(summary.failed_keys)
        print(f"{summary.failures} rows failed (valid=False, NaN features); first keys: {first}")  # noqa: T201
        for key, reason in summary.failure_reasons.items():
            print(f"  {key}: {reason}")  # noqa: T201
    else:
        print("0 rows failed")  # noqa: T201


if __name__ == "__main__":
    sys.exit(main())
