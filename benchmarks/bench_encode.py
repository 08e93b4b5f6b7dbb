"""Benchmark: the encode pipeline's rows/s vs the pure backbone forward, same model, batch and device.

    python -m benchmarks.bench_encode [--images 80] [--batch-size 16] [--num-workers 0 1 2] [--repeats 2]
                                      [--captions 400] [--text-batch-size 64] [--device cpu]

Images: EfficientNet-Lite0 on the COCO-MINI train images (``../shared/data/coco-mini/train2017``).
- "forward" runs ``backbone.encode`` over batches of pixel tensors decoded and transformed beforehand (the
  ceiling: nothing but the model);
- "pipeline" is ``encode_images`` end to end: DataLoader workers reading, decoding and transforming the JPEGs,
  the forward, the NaN/validity bookkeeping and the flushed HDF5 writes (float16), worker start-up included.
- "decode alone" runs what ``--num-workers 0`` does between two forwards (threads reading, decoding and transforming
  a batch) without the forward; forward / (forward + decode alone) bounds a pipeline that decodes between forwards.
Text: all-MiniLM-L6-v2 on the COCO-MINI train captions, ``backbone.encode`` on pre-made batches vs ``encode_texts``.
Each number is the best of ``--repeats`` runs (cases interleaved, so load changes hit all of them); the ratio is
pipeline rows/s over forward rows/s measured in the same run. The goal is >= 0.9 for images.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from benchmarks.report import cpu_name, emit
from core.cpu_memory import retain_freed_memory
from encode.backbones import load_image_backbone, load_text_backbone
from encode.inputs import load_rows
from encode.pipeline import (
    EncodeOptions,
    ImageRowsDataset,
    encode_images,
    encode_texts,
    load_in_threads,
    read_image,
)

ROOT = Path(__file__).resolve().parent.parent
COCO = ROOT / ".." / "shared" / "data" / "coco-mini"


def _best(seconds: dict[str, float], name: str, run: Callable[[], None]) -> None:
    began = time.perf_counter()
    run()
    seconds[name] = min(seconds.get(name, float("inf")), time.perf_counter() - began)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_encode", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--data", type=Path, default=COCO, help="COCO-MINI folder (default: ../shared/data/coco-mini)"
    )
    parser.add_argument("--images", type=int, default=80, help="images to encode (default: all 80)")
    parser.add_argument("--batch-size", type=int, default=16, help="image batch size (default: 16)")
    parser.add_argument(
        "--num-workers", type=int, nargs="+", default=[0, 1, 2], help="pipeline DataLoader workers to compare"
    )
    parser.add_argument("--captions", type=int, default=400, help="captions to encode (default: all 400)")
    parser.add_argument("--text-batch-size", type=int, default=64, help="caption batch size (default: 64)")
    parser.add_argument("--repeats", type=int, default=2, help="runs per case; the best counts (default: 2)")
    parser.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    retain_freed_memory(args.device)  # as the encode CLI does, for the forward and the pipeline alike
    image_rows = load_rows(args.data / "train2017").head(args.images)
    text_rows = load_rows(args.data / "annotations" / "captions_train2017.json", caption_columns=["caption"])
    captions = text_rows.caption_rows("caption").head(args.captions)
    image_model = load_image_backbone("efficientnet-lite0", device=args.device)
    text_model = load_text_backbone("all-MiniLM-L6-v2", device=args.device)

    pixels = torch.stack([image_model.transform(read_image(ref)) for ref in image_rows.images])
    pixel_batches = list(pixels.split(args.batch_size))
    text_batches = [
        captions.texts[i : i + args.text_batch_size] for i in range(0, len(captions), args.text_batch_size)
    ]
    dataset, rows = ImageRowsDataset(image_rows.images, image_model.transform), range(len(image_rows))
    threads = torch.get_num_threads()  # what --num-workers 0 decodes with
    image_model.encode(pixel_batches[0])  # warm-up: first-call allocations and kernel selection
    text_model.encode(text_batches[0])

    seconds: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.repeats):
            _best(seconds, "image forward", lambda: [image_model.encode(batch) for batch in pixel_batches])
            _best(
                seconds,
                "image decode",
                lambda: list(load_in_threads(dataset, rows, args.batch_size, threads)),
            )
            for workers in args.num_workers:
                options = EncodeOptions(
                    batch_size=args.batch_size, num_workers=workers, overwrite=True, progress=False
                )
                _best(
                    seconds,
                    f"image pipeline {workers}",
                    lambda options=options: encode_images(
                        image_rows, image_model, Path(tmp, "img.h5"), options=options
                    ),
                )
            _best(seconds, "text forward", lambda: [text_model.encode(batch) for batch in text_batches])
            options = EncodeOptions(
                batch_size=args.text_batch_size, num_workers=0, overwrite=True, progress=False
            )
            _best(
                seconds,
                "text pipeline",
                lambda options=options: encode_texts(
                    text_rows,
                    text_model,
                    Path(tmp, "txt.h5"),
                    caption_column="caption",
                    limit=args.captions,
                    options=options,
                ),
            )

    load = " ".join(f"{x:.1f}" for x in os.getloadavg())
    emit(
        f"machine: {cpu_name()}, {os.cpu_count()} CPUs, torch {torch.__version__} ({torch.get_num_threads()} threads), "
        f"device {args.device}, load average {load} at the end"
    )
    emit("")
    emit("| model | path | rows | batch | loader workers | seconds | rows/s | vs forward |")
    emit("|---|---|---:|---:|---:|---:|---:|---:|")
    image_ref = len(image_rows) / seconds["image forward"]
    emit(
        f"| efficientnet-lite0 | forward on pre-loaded tensors | {len(image_rows)} | {args.batch_size} | - | "
        f"{seconds['image forward']:.2f} | {image_ref:.1f} | 1.00 |"
    )
    decode = seconds["image decode"]
    emit(
        f"| efficientnet-lite0 | decode + transform alone ({threads} threads, no forward) | {len(image_rows)} | "
        f"{args.batch_size} | 0 | {decode:.2f} | {len(image_rows) / decode:.1f} | - |"
    )
    bound = seconds["image forward"] / (seconds["image forward"] + decode)
    emit(
        f"| efficientnet-lite0 | bound of decoding between forwards: forward / (forward + decode) | "
        f"{len(image_rows)} | {args.batch_size} | 0 | {seconds['image forward'] + decode:.2f} | "
        f"{bound * image_ref:.1f} | {bound:.2f} |"
    )
    for workers in args.num_workers:
        took = seconds[f"image pipeline {workers}"]
        rate = len(image_rows) / took
        emit(
            f"| efficientnet-lite0 | encode pipeline (JPEG -> HDF5) | {len(image_rows)} | {args.batch_size} | "
            f"{workers} | {took:.2f} | {rate:.1f} | {rate / image_ref:.2f} |"
        )
    text_ref = len(captions) / seconds["text forward"]
    text_rate = len(captions) / seconds["text pipeline"]
    emit(
        f"| all-MiniLM-L6-v2 | forward on pre-made batches | {len(captions)} | {args.text_batch_size} | - | "
        f"{seconds['text forward']:.2f} | {text_ref:.1f} | 1.00 |"
    )
    emit(
        f"| all-MiniLM-L6-v2 | encode pipeline (captions -> HDF5) | {len(captions)} | {args.text_batch_size} | 0 | "
        f"{seconds['text pipeline']:.2f} | {text_rate:.1f} | {text_rate / text_ref:.2f} |"
    )


if __name__ == "__main__":
    main()
