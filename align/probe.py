"""Alignment probing (SAIL part 1): how well do frozen image and text backbones align through a linear head?

Trains one ``linear`` head per (image store, text store) combination with the same recipe and reports held-out
i2t / t2i R@1/5/10 as a table and ``OUTPUT/probe_results.json``::

    python -m align.probe --image-features dinov2.h5 clip_vit.h5 --text-features nv_embed.h5 gte.h5 \\
        --val-image-features val_dinov2.h5 val_clip_vit.h5 --val-text-features val_nv_embed.h5 val_gte.h5 \\
        --output-dir probes/
"""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from align.config import TrainConfig
from align.data import DataError
from align.train import TrainingError, train
from core.cli import ConfigParser
from core.config import setting

log = logging.getLogger("align.probe")
METRICS = ("val/i2t_R@1", "val/i2t_R@5", "val/i2t_R@10", "val/t2i_R@1", "val/t2i_R@5", "val/t2i_R@10")
# Set per probed pair, not by the user.
PER_PAIR = (
    "image_features",
    "text_features",
    "val_image_features",
    "val_text_features",
    "output_dir",
    "head",
)


@dataclass(kw_only=True)
class ProbeConfig(TrainConfig):
    """The training settings of every probe, with one store per model instead of one store per run."""

    image_features: list[str] = setting(help="one training image store per image model")
    text_features: list[str] = setting(help="one training caption store per text model")
    val_image_features: list[str] = setting(help="held-out image stores, in the order of --image-features")
    val_text_features: list[str] = setting(help="held-out caption stores, in the order of --text-features")
    output_dir: str = setting(help="one run folder per pair (IMAGE__TEXT) and probe_results.json")
    head: str = setting(default="linear", choices=("linear",), help="probes train a linear head")
    epochs: int = setting(default=50, help="passes over the training pairs")
    resume: str | None = setting(default="latest", help="'latest' continues each pair's run where it stopped")

    def pair_config(
        self, image: str, text: str, val_image: str, val_text: str, output_dir: str
    ) -> TrainConfig:
        shared = {
            f.name: getattr(self, f.name) for f in dataclasses.fields(TrainConfig) if f.name not in PER_PAIR
        }
        return TrainConfig(
            **shared,
            image_features=image,
            text_features=[text],
            val_image_features=val_image,
            val_text_features=[val_text],
            output_dir=output_dir,
            head="linear",
        )


def build_parser() -> ConfigParser:
    return ConfigParser(
        ProbeConfig,
        prog="python -m align.probe",
        description="Linear alignment probing: one linear head per (image model, text model) pair, trained with "
        "the same settings (every align.train setting applies).",
    )


def probe(cfg: ProbeConfig) -> list[dict]:
    if len(cfg.val_image_features) != len(cfg.image_features):
        raise ValueError("give one --val-image-features store per --image-features store, in the same order")
    if len(cfg.val_text_features) != len(cfg.text_features):
        raise ValueError("give one --val-text-features store per --text-features store, in the same order")
    for path in [*cfg.image_features, *cfg.text_features, *cfg.val_image_features, *cfg.val_text_features]:
        if not Path(path).is_file():
            raise ValueError(f"feature store {path} does not exist")
    out = Path(cfg.output_dir)
    results = []
    for image, val_image in zip(cfg.image_features, cfg.val_image_features, strict=True):
        for text, val_text in zip(cfg.text_features, cfg.val_text_features, strict=True):
            name = f"{Path(image).stem}__{Path(text).stem}"
            log.info("probing %s", name)
            metrics = train(cfg.pair_config(image, text, val_image, val_text, str(out / name)))
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
    cfg = build_parser().parse(argv)
    try:
        results = probe(cfg)
    except (DataError, ValueError, TrainingError) as err:
        log.error("%s", err)
        return 2
    sys.stdout.write(format_table(results) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
