"""Result files (one JSON per run) and the markdown tables built from them."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from core.staging import write_text_atomic
from evaluate.references import reference_rows, withheld_references

RESULT_FORMAT_VERSION = 2  # 2: adds ``ties`` (format-1 files load with ``ties == {}``)

# Columns shown by `report` for each task (others stay in the JSON).
HEADLINE_METRICS = {
    "zeroshot": ("top1", "top5", "mean_per_class_recall"),
    "retrieval": ("i2t_R@1", "i2t_R@5", "i2t_R@10", "t2i_R@1", "t2i_R@5", "t2i_R@10"),
    "winoground": ("text", "image", "group"),
    "mmvp": ("average",),
    "mmeb": ("classification", "vqa", "retrieval", "grounding", "IND", "OOD", "overall"),
    "knn": ("k10_top1", "k20_top1", "k100_top1", "k200_top1"),
}


@dataclass
class EvalResult:
    task: str
    dataset: dict  # name, path, split, ...
    model: dict  # spec, fingerprint, config
    metrics: dict[str, float]
    counts: dict[str, int]
    settings: dict = field(default_factory=dict)
    details: dict = field(default_factory=dict)
    # {"rule": tie rule, "tied": {metric: number of queries the rule decided}} (docs/evaluate.md, "Ties")
    ties: dict = field(default_factory=dict)
    created: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))
    format_version: int = RESULT_FORMAT_VERSION

    def save(self, path: str | os.PathLike) -> Path:
        return write_text_atomic(path, json.dumps(asdict(self), indent=2, sort_keys=False) + "\n")

    @classmethod
    def load(cls, path: str | os.PathLike) -> EvalResult:
        payload = json.loads(Path(path).read_text())
        missing = {"task", "dataset", "model", "metrics", "counts"} - set(payload)
        if missing:
            raise ValueError(f"{path} is not an evaluate result file (missing {sorted(missing)})")
        return cls(**payload)


def metrics_table(result: EvalResult) -> str:
    """Two-column markdown table of every metric of one run (printed by the CLI): the tie rule in the header,
    and ``tied METRIC`` rows for the metrics where the rule decided some queries."""
    rule = f" (ties: {result.ties['rule']})" if result.ties.get("rule") else ""
    lines = [f"| {result.task} on {result.dataset.get('name', '?')}{rule} | value |", "|---|---:|"]
    lines += [f"| {name} | {value:.2f} |" for name, value in result.metrics.items()]
    lines += [f"| tied {name} | {value} |" for name, value in result.ties.get("tied", {}).items() if value]
    lines += [f"| n {name} | {value} |" for name, value in result.counts.items()]
    return "\n".join(lines)


def _model_label(result: EvalResult) -> str:
    return str(result.model.get("spec") or result.model.get("fingerprint", "?"))


def report_table(results: Sequence[EvalResult], references: bool = False) -> str:
    """One markdown table: a row per model (and per reference model), a column per (task, dataset, metric)."""
    columns: list[tuple[str, str, str]] = []
    rows: dict[str, dict[tuple[str, str, str], float]] = {}
    for result in results:
        name = result.dataset.get("name", "?")
        wanted = HEADLINE_METRICS.get(result.task, tuple(result.metrics))
        for metric in wanted:
            if metric in result.metrics:
                key = (result.task, name, metric)
                if key not in columns:
                    columns.append(key)
                rows.setdefault(_model_label(result), {})[key] = result.metrics[metric]
    withheld: list[str] = []
    if references:
        rows.update(reference_rows(results, columns))
        withheld = withheld_references(results, columns)
    if not columns:
        raise ValueError("no metrics to report")
    header = "| model | " + " | ".join(f"{t} {d} {m}" for t, d, m in columns) + " |"
    lines = [header, "|---|" + "---:|" * len(columns)]
    for label, values in rows.items():
        cells = [f"{values[c]:.2f}" if c in values else "–" for c in columns]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    if withheld:
        lines.append("")
        lines += [f"Published numbers left out: {reason}." for reason in withheld]
    return "\n".join(lines)
