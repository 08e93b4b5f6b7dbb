"""Alignment probing (SAIL part 1): how well do frozen image and text backbones align through a linear head?

Trains one ``linear`` head per (image store, text store) combination with the same recipe and reports held-out
i2t / t2i R@1/5/10 as a table and ``OUTPUT/probe_results.json``::

    python -m align.probe --image-features dinov2.h5 clip_vit.h5 --text-features nv_embed.h5 gte.h5 \\
        --val-image-features val_dinov2.h5 val_clip_vit.h5 --val-text-features val_nv_embed.h5 val_gte.h5 \\
        --output-dir probes/
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from align.config import TrainConfig
from align.data import DataError
from align.train import TrainingError, train

log = logging.getLogger("align.probe")
METRICS = ("val/i2t_R@1", "val/i2t_R@5", "val/i2t_R@10", "val/t2i_R@1", "val/t2i_R@5", "val/t2i_R@10")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m align.probe",
        description="Linear alignment probing: one linear head per (image model, text model) pair.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--image-features", nargs="+", required=True, help="one training image store per image model"
    )
    p.add_argument(
        "--text-features", nargs="+", required=True, help="one training caption store per text model"
    )
    p.add_argument("--val-image-features", nargs="+", required=True, help="held-out image stores, same order")
    p.add_argument(
        "--val-text-features", nargs="+", required=True, help="held-out caption stores, same order"
    )
    p.add_argument("--output-dir", required=True)
    p.add_argument("--target-dim", type=int, default=1024)
    p.add_argument("--loss", default="siglip", choices=["siglip", "clip"])
    p.add_argument("--batch-size", type=int, default=32768)
    p.add_argument("--epochs", type=int, default=50)
    p.add_argument("--optimizer", default="lion", choices=["lion", "adamw"])
    p.add_argument("--lr", type=float, default=1e-5)
    p.add_argument("--wd", type=float, default=1e-4)
    p.add_argument("--warmup", type=float, default=0.1)
    p.add_argument("--precision", default="amp_bf16", choices=["fp32", "amp_bf16", "amp_fp16"])
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--device", default="auto")
    p.add_argument("--no-progress", action="store_true")
    return p


def probe(args: argparse.Namespace) -> list[dict]:
    if len(args.val_image_features) != len(args.image_features):
        raise ValueError("give one --val-image-features store per --image-features store, in the same order")
    if len(args.val_text_features) != len(args.text_features):
        raise ValueError("give one --val-text-features store per --text-features store, in the same order")
    for path in [
        *args.image_features,
        *args.text_features,
        *args.val_image_features,
        *args.val_text_features,
    ]:
        if not Path(path).is_file():
            raise ValueError(f"feature store {path} does not exist")
    out = Path(args.output_dir)
    results = []
    for image, val_image in zip(args.image_features, args.val_image_features, strict=True):
        for text, val_text in zip(args.text_features, args.val_text_features, strict=True):
            name = f"{Path(image).stem}__{Path(text).stem}"
            cfg = TrainConfig(
                image_features=image,
                text_features=[text],
                val_image_features=val_image,
                val_text_features=[val_text],
                output_dir=str(out / name),
                head="linear",
                target_dim=args.target_dim,
                loss=args.loss,
                batch_size=args.batch_size,
                optimizer=args.optimizer,
                lr=args.lr,
                wd=args.wd,
                epochs=args.epochs,
                warmup=args.warmup,
                precision=args.precision,
                seed=args.seed,
                device=args.device,
                resume="latest",
                progress=not args.no_progress,
            )
            log.info("probing %s", name)
            metrics = train(cfg)
            results.append({"image": image, "text": text, **{k: metrics[k] for k in METRICS}})
    (out / "probe_results.json").write_text(json.dumps(results, indent=2) + "\n")
    return results


def format_table(results: list[dict]) -> str:
    header = ["image store", "text store", *(m.removeprefix("val/") for m in METRICS)]
    rows = [[Path(r["image"]).stem, Path(r["text"]).stem, *(f"{r[m]:.1f}" for m in METRICS)] for r in results]
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=True)]
    lines = [" | ".join(str(x).ljust(w) for x, w in zip(row, widths, strict=True)) for row in [header, *rows]]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        results = probe(args)
    except (DataError, ValueError, TrainingError) as err:
        log.error("%s", err)
        return 2
    sys.stdout.write(format_table(results) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
