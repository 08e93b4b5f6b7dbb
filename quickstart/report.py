"""The quickstart's results: one table of trained vs untrained head vs chance, ``results.json``, ``report.md``
and bar plots.

Chance levels are exact expectations for a scorer that ranks candidates uniformly at random:
- text→image R@k with one positive image among ``I``: ``k / I``;
- image→text R@k with ``P`` positive captions among ``C``: ``1 - C(C-P, k) / C(C, k)``, averaged over images;
- top-k classification among ``n`` classes: ``k / n``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from math import comb
from pathlib import Path

from evaluate import EvalResult

# (row label, result file stem, metric) for each line of the table.
ROWS = (
    ("COCO-MINI val  image→text R@1", "retrieval", "i2t_R@1"),
    ("COCO-MINI val  image→text R@5", "retrieval", "i2t_R@5"),
    ("COCO-MINI val  image→text R@10", "retrieval", "i2t_R@10"),
    ("COCO-MINI val  text→image R@1", "retrieval", "t2i_R@1"),
    ("COCO-MINI val  text→image R@5", "retrieval", "t2i_R@5"),
    ("COCO-MINI val  text→image R@10", "retrieval", "t2i_R@10"),
    ("unseen classes, among all 1000  top-1", "zeroshot_all", "top1"),
    ("unseen classes, among all 1000  top-5", "zeroshot_all", "top5"),
    ("unseen classes, among unseen  top-1", "zeroshot_unseen", "top1"),
    ("unseen classes, among unseen  top-5", "zeroshot_unseen", "top5"),
)
MODELS = ("trained", "untrained")


@dataclass(frozen=True)
class Row:
    label: str
    task: str
    metric: str
    trained: float
    untrained: float
    chance: float


def image_to_text_chance(positives_per_image: list[int], n_captions: int, k: int) -> float:
    """Expected image→text R@k (percent) of a random ranking."""
    hits = [1 - comb(n_captions - p, k) / comb(n_captions, k) for p in positives_per_image]
    return 100.0 * sum(hits) / len(hits)


def chance_level(result: EvalResult, metric: str) -> float:
    """Chance for one metric of a retrieval or zero-shot result, from the counts the evaluator saved."""
    k = int(metric.rsplit("@", 1)[-1]) if "@" in metric else int(metric.removeprefix("top"))
    if result.task == "retrieval":
        n_images, n_captions = result.counts["images"], result.counts["captions"]
        if metric.startswith("t2i"):
            return 100.0 * min(k, n_images) / n_images
        per_image = result.details.get("captions_per_image") or [n_captions // n_images] * n_images
        return image_to_text_chance(per_image, n_captions, k)
    return 100.0 * min(k, result.counts["classes"]) / result.counts["classes"]


def collect(eval_dir: Path) -> list[Row]:
    """Read ``{model}_{task}.json`` for both models; every file must exist."""
    results = {}
    for model in MODELS:
        for task in {task for _, task, _ in ROWS}:
            path = eval_dir / f"{model}_{task}.json"
            if not path.is_file():
                raise FileNotFoundError(
                    f"{path} is missing: run the evaluation step of scripts/quickstart.sh"
                )
            results[model, task] = EvalResult.load(path)
    return [
        Row(
            label,
            task,
            metric,
            results["trained", task].metrics[metric],
            results["untrained", task].metrics[metric],
            chance_level(results["trained", task], metric),
        )
        for label, task, metric in ROWS
    ]


def markdown_table(rows: list[Row]) -> str:
    lines = ["| metric (%) | trained head | untrained head | chance |", "|---|---:|---:|---:|"]
    lines += [f"| {r.label} | {r.trained:.1f} | {r.untrained:.1f} | {r.chance:.1f} |" for r in rows]
    return "\n".join(lines)


def plot_bars(rows: list[Row], path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    x = np.arange(len(rows))
    width = 0.27
    fig, ax = plt.subplots(figsize=(1.3 * len(rows) + 2, 4))
    for offset, name, values in (
        (-width, "trained", [r.trained for r in rows]),
        (0.0, "untrained", [r.untrained for r in rows]),
        (width, "chance", [r.chance for r in rows]),
    ):
        ax.bar(x + offset, values, width, label=name)
    ax.set_xticks(x, [r.label.split("  ")[-1] for r in rows])
    ax.set_ylabel("%")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_report(output_dir: Path, run_dir: Path, split_file: Path) -> str:
    """Write ``results.json``, ``report.md`` and the plots into ``output_dir``; return the table."""
    rows = collect(output_dir / "eval")
    table = markdown_table(rows)
    split = json.loads(split_file.read_text())
    retrieval = [r for r in rows if r.task == "retrieval"]
    zeroshot = [r for r in rows if r.task != "retrieval"]
    plots = [
        plot_bars(retrieval, output_dir / "retrieval.png", "COCO-MINI val retrieval"),
        plot_bars(zeroshot, output_dir / "zeroshot_unseen.png", "Zero-shot on unseen ImageNet classes"),
    ]
    loss_curve = run_dir / "loss_curve.png"
    train_config = (
        json.loads((run_dir / "config.json").read_text()) if (run_dir / "config.json").is_file() else {}
    )
    payload = {
        "rows": [r.__dict__ for r in rows],
        "split": {k: v for k, v in split.items() if k not in ("seen_classes", "unseen_classes")},
        "n_seen_classes": len(split["seen_classes"]),
        "n_unseen_classes": len(split["unseen_classes"]),
        "train_config": train_config,
        "plots": [p.name for p in plots] + ([str(loss_curve)] if loss_curve.is_file() else []),
    }
    (output_dir / "results.json").write_text(json.dumps(payload, indent=2) + "\n")
    images = "\n".join(f"![{p.stem}]({p.name})" for p in plots)
    curve = f"![loss curve]({loss_curve.relative_to(output_dir)})" if loss_curve.is_file() else ""
    gallery = output_dir / "gallery.html"
    if gallery.is_file():
        curve += f"\n\n[What the trained head retrieves]({gallery.name}): COCO-MINI val captions, top-5 images, hits marked.\n"
    (output_dir / "report.md").write_text(
        "# Quickstart report\n\n"
        f"Trained on {split['train_pairs']['coco_images']} COCO-MINI train images and "
        f"{split['train_pairs']['imagenet_images']} ImageNet-sample images of {len(split['seen_classes'])} seen "
        f"classes; zero-shot on the {len(split['unseen_classes'])} unseen classes.\n\n"
        f"{table}\n\n{images}\n{curve}\n"
    )
    return table
