"""The output folder: its preflight, the manifest ``encode`` reads, the JSON report and the saved config.

``OUT/manifest.parquet`` has one row per kept image: ``key``, ``image`` (path relative to ``OUT``) and every
caption column, so ``python -m encode image --data OUT`` and ``python -m encode text --data OUT
--caption-column raw_caption`` read ``OUT`` directly. ``OUT/report.json`` counts the rows per outcome and
``OUT/prepare_config.json`` records how the folder was made. Files are written to a temporary name and renamed,
so a crash never leaves a half-written manifest or report.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from data_preparation import __version__
from data_preparation.tables import PrepareError

MANIFEST_NAME = "manifest.parquet"
REPORT_NAME = "report.json"
CONFIG_NAME = "prepare_config.json"
MAX_EXAMPLES = 10
MAX_DETAILS = 20


def check_output(out: Path, *, resume: bool = False, overwrite: bool = False) -> None:
    """Refuse, before any work, an output that exists unless --resume / --overwrite says what to do with it."""
    if out.exists() and not out.is_dir():
        raise PrepareError(f"--out {out} is a file; give a folder")
    if not out.exists() or not any(out.iterdir()):
        return
    ours = (out / CONFIG_NAME).is_file()
    if resume:
        if not ours:
            raise PrepareError(
                f"cannot --resume {out}: it has no {CONFIG_NAME}, so it was not made by this tool"
            )
        return
    if overwrite:
        if not ours:
            raise PrepareError(
                f"refusing to delete {out}: it has no {CONFIG_NAME}, so it was not made by this tool; "
                "remove it yourself or choose another --out"
            )
        return
    raise PrepareError(
        f"--out {out} exists and is not empty; pass --resume to continue it or --overwrite to replace it"
    )


def reset_output(out: Path, overwrite: bool) -> None:
    """Create ``out`` (emptied first with --overwrite); call only after every check passed."""
    if overwrite and out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)


def check_resume_config(out: Path, config: dict[str, Any], exempt: tuple[str, ...]) -> None:
    """A resume must use the settings the folder was started with (``exempt`` fields may change)."""
    saved = json.loads((out / CONFIG_NAME).read_text())
    config = json.loads(json.dumps(config, default=str))  # compare as saved: tuples become lists
    changed = {
        k: (saved.get(k), v)
        for k, v in config.items()
        if k not in exempt and k != "toolkit_version" and saved.get(k) != v
    }
    if changed:
        diff = "; ".join(f"{k}: was {a!r}, now {b!r}" for k, (a, b) in changed.items())
        raise PrepareError(
            f"cannot --resume {out} with other settings ({diff}); use the original ones or --overwrite"
        )


def write_json(path: Path, content: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(content, indent=2, sort_keys=False, default=str) + "\n")
    os.replace(tmp, path)


def write_config(out: Path, config: Any) -> None:
    write_json(out / CONFIG_NAME, {**config_dict(config), "toolkit_version": __version__})


def config_dict(config: Any) -> dict[str, Any]:
    return {k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(config).items()}


def write_manifest(out: Path, manifest: pd.DataFrame) -> Path:
    path = out / MANIFEST_NAME
    tmp = out / (MANIFEST_NAME + ".tmp")
    manifest.to_parquet(tmp, index=False)
    os.replace(tmp, path)
    return path


@dataclass
class Report:
    """Counts per outcome: ``kept + sum(rejected.values()) == rows`` always holds."""

    source: str
    reasons: tuple[str, ...]
    rows: int = 0
    kept: int = 0
    rejected: Counter = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)
    details: dict[str, Counter] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def keep(self) -> None:
        self.rows += 1
        self.kept += 1

    def reject(self, key: str, reason: str, detail: str | None = None) -> None:
        self.rows += 1
        self.rejected[reason] += 1
        examples = self.examples.setdefault(reason, [])
        if len(examples) < MAX_EXAMPLES:
            examples.append(key)
        if detail:
            self.details.setdefault(reason, Counter())[detail] += 1

    def to_dict(self) -> dict[str, Any]:
        reasons = list(self.reasons) + sorted(set(self.rejected) - set(self.reasons))
        return {
            "source": self.source,
            "rows": self.rows,
            "kept": self.kept,
            "rejected": {r: self.rejected.get(r, 0) for r in reasons},
            "rejected_examples": self.examples,
            "rejected_details": {r: dict(c.most_common(MAX_DETAILS)) for r, c in self.details.items()},
            **self.extra,
            "toolkit_version": __version__,
        }

    def summary(self) -> str:
        parts = [f"{r} {n}" for r, n in self.to_dict()["rejected"].items() if n]
        rejected = ", ".join(parts) if parts else "none"
        return f"{self.rows} rows: kept {self.kept}; rejected: {rejected}"
