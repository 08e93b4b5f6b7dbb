"""``python -m quickstart prepare|untrained|report``: the glue steps of ``scripts/quickstart.sh``.

The heavy steps (encoding, training, evaluation) are the toolkit's own CLIs; this module only lays out the
sample data, makes the untrained-head baseline and writes the report.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _prepare(args: argparse.Namespace) -> None:
    from quickstart.prepare import SplitConfig, prepare

    config = SplitConfig(
        data_root=args.data_root,
        seen_fraction=args.seen_fraction,
        val_images=args.val_images,
        seed=args.seed,
        limit_classes=args.limit_classes,
        limit_coco_images=args.limit_coco_images,
    )
    layout = prepare(args.out, config)
    print(f"wrote {layout.train_manifest}, {layout.val_manifest} and the unseen-class split in {layout.root}")  # noqa: T201


def _untrained(args: argparse.Namespace) -> None:
    """An untrained head: the trained run's exact architecture and seed, at initialisation."""
    import torch

    from align import AlignedModel, AlignmentHead, HeadConfig
    from core.checkpoint import load_config

    config = load_config(args.like)
    torch.manual_seed(config["train"]["seed"])
    head = AlignmentHead(HeadConfig.from_dict(config["head"]))
    AlignedModel(head, config | {"step": 0}).save_pretrained(args.out)
    print(f"wrote an untrained {config['head']['head']} head to {args.out}")  # noqa: T201


def _report(args: argparse.Namespace) -> None:
    from quickstart.report import write_report

    output_dir = Path(args.output_dir)
    table = write_report(output_dir, Path(args.run_dir), Path(args.split))
    print(table)  # noqa: T201
    gallery = output_dir / "gallery.html"
    extra = f" (retrieval gallery: {gallery})" if gallery.is_file() else ""
    print(f"\nwrote {output_dir / 'results.json'}, {output_dir / 'report.md'} and PNG plots{extra}")  # noqa: T201


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m quickstart", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("prepare", help="training manifests, validation carve and unseen-class split")
    p.add_argument(
        "--data-root", default="../shared/data", help="folder holding coco-mini/ and imagenet-sample/"
    )
    p.add_argument("--out", required=True, help="folder for the manifests and split files")
    p.add_argument(
        "--seen-fraction", type=float, default=0.5, help="share of ImageNet classes used in training"
    )
    p.add_argument(
        "--val-images",
        type=int,
        default=0,
        help="COCO train images held out to choose a recipe (0: train on all)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--limit-classes", type=int, help="use only this many ImageNet classes (fast tests)")
    p.add_argument("--limit-coco-images", type=int, help="use only this many COCO train images (fast tests)")
    p.set_defaults(func=_prepare)

    p = sub.add_parser("untrained", help="save an untrained head shaped like a trained checkpoint")
    p.add_argument("--like", required=True, help="a trained checkpoint dir (step_N)")
    p.add_argument("--out", required=True)
    p.set_defaults(func=_untrained)

    p = sub.add_parser("report", help="table, results.json, report.md and plots from the evaluation results")
    p.add_argument("--output-dir", required=True, help="the quickstart output dir (holds eval/)")
    p.add_argument("--run-dir", required=True, help="the training run dir (metrics, loss curve)")
    p.add_argument("--split", required=True, help="split.json written by prepare")
    p.set_defaults(func=_report)

    args = parser.parse_args(argv)
    try:
        args.func(args)
    except (FileNotFoundError, ValueError) as err:
        parser.exit(2, f"error: {err}\n")


if __name__ == "__main__":
    main(sys.argv[1:])
