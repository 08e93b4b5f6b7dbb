"""Download a staged URL table with img2dataset and read back what it did, shard by shard.

img2dataset does the downloading (threads per process, processes or a pyspark / ray cluster, retries, resizing,
WebDataset or files output, resumable by shard). Each finished shard leaves ``{shard}.parquet`` (one row per
input row: ``status`` success / failed_to_download / failed_to_resize, ``error_message`` and every saved column)
and ``{shard}_stats.json``; this module turns those into per-row outcomes.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import importlib.util
import json
import math
import os
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from data_preparation.checks import IMAGE_REASONS, ImageChecks
from data_preparation.tables import PrepareError

DOWNLOAD_FAILED = "download_failed"
RESIZE_FAILED = "resize_failed"
SHARD_DIGITS = 5  # img2dataset's default oom_shard_count: shard names 00000, 00001, ...
OUTPUT_FORMATS = ("files", "webdataset")
DISTRIBUTORS = ("multiprocessing", "pyspark", "ray")
RESIZE_MODES = ("keep_ratio", "center_crop", "border", "keep_ratio_largest")


@dataclass(frozen=True)
class DownloadOptions:
    """img2dataset settings. ``image_size=None`` keeps the original pixels (JPEG bytes kept as downloaded)."""

    output_format: str = "files"
    image_size: int | None = None
    resize_mode: str = "keep_ratio"
    processes: int = 1
    threads: int = 64
    shard_size: int = 10000
    timeout: int = 10
    retries: int = 0
    distributor: str = "multiprocessing"

    def __post_init__(self) -> None:
        if self.distributor not in DISTRIBUTORS:
            raise PrepareError(f"distributor must be one of {DISTRIBUTORS}, got {self.distributor!r}")
        if self.distributor != "multiprocessing" and importlib.util.find_spec(self.distributor) is None:
            # img2dataset's ray distributor silently does nothing when ray is missing.
            raise PrepareError(
                f"--distributor {self.distributor} needs the {self.distributor} package: pip install {self.distributor}"
            )
        if self.output_format not in OUTPUT_FORMATS:
            raise PrepareError(f"output format must be one of {OUTPUT_FORMATS}, got {self.output_format!r}")
        if self.resize_mode not in RESIZE_MODES:
            raise PrepareError(f"resize mode must be one of {RESIZE_MODES}, got {self.resize_mode!r}")


def shard_name(shard_id: int) -> str:
    return f"{shard_id:0{SHARD_DIGITS}d}"


def expected_shards(rows: int, shard_size: int) -> list[str]:
    return [shard_name(i) for i in range(math.ceil(rows / shard_size))]


@contextlib.contextmanager
def _checked_resizer(checks: ImageChecks) -> Iterator[None]:
    """img2dataset builds its Resizer inside ``download()``; swap in :class:`CheckedResizer` for that call."""
    from data_preparation.resizer import CheckedResizer

    # ``img2dataset.main`` the attribute is the CLI function; the module is only reachable through importlib.
    module = importlib.import_module("img2dataset.main")
    original = module.Resizer
    module.Resizer = functools.partial(CheckedResizer, checks=checks)
    try:
        yield
    finally:
        module.Resizer = original


def run_img2dataset(
    url_table: Path, columns: list[str], folder: Path, options: DownloadOptions, checks: ImageChecks
) -> None:
    """Download every row of ``url_table`` (column ``url`` plus ``columns``) into ``folder``.

    Shards already finished in ``folder`` (their ``_stats.json`` exists) are skipped, which is how --resume works.
    """
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    from img2dataset import download

    resize = options.image_size is not None
    sigint = signal.getsignal(
        signal.SIGINT
    )  # download() installs its own Ctrl-C handler; put ours back after
    with _checked_resizer(checks):
        download(
            url_list=str(url_table),
            input_format="parquet",
            url_col="url",
            save_additional_columns=columns,
            output_folder=str(folder),
            output_format=options.output_format,
            processes_count=options.processes,
            thread_count=options.threads,
            number_sample_per_shard=options.shard_size,
            image_size=options.image_size if resize else 256,
            resize_mode=options.resize_mode if resize else "no",
            resize_only_if_bigger=True,
            skip_reencode=not resize,
            encode_format="jpg",
            extract_exif=False,
            compute_hash=None,
            timeout=options.timeout,
            retries=options.retries,
            distributor=options.distributor,
            incremental_mode="incremental",
            oom_shard_count=SHARD_DIGITS,
            enable_wandb=False,
        )
    signal.signal(signal.SIGINT, sigint)


def read_shards(folder: Path, shards: list[str]) -> dict[str, int]:
    """img2dataset's own totals over ``shards`` (from ``_stats.json``); refuse when a shard did not finish."""
    missing = [s for s in shards if not (folder / f"{s}_stats.json").is_file()]
    if missing:
        raise PrepareError(
            f"img2dataset did not finish shard(s) {missing[:10]} in {folder} (see its messages above); "
            "run the same command again with --resume to retry them"
        )
    totals = {
        "shards": len(shards),
        "count": 0,
        "successes": 0,
        "failed_to_download": 0,
        "failed_to_resize": 0,
    }
    for shard in shards:
        stats = json.loads((folder / f"{shard}_stats.json").read_text())
        for name in ("count", "successes", "failed_to_download", "failed_to_resize"):
            totals[name] += int(stats[name])
    return totals


def read_status(folder: Path, shard: str) -> pd.DataFrame:
    """One shard's per-row status table, with a ``reason`` column (``None`` for kept rows)."""
    table = pd.read_parquet(folder / f"{shard}.parquet")
    table["reason"] = [_reason(s, m) for s, m in zip(table["status"], table["error_message"], strict=True)]
    return table


def _reason(status: str, message: str | None) -> str | None:
    if status == "success":
        return None
    if status == "failed_to_download":
        return DOWNLOAD_FAILED
    prefix = (message or "").split(":", 1)[0]
    return prefix if prefix in IMAGE_REASONS else RESIZE_FAILED


def detail(reason: str, message: str | None) -> str:
    """The error message without the reason prefix our checks add."""
    text = message or ""
    if text.startswith(reason + ": "):
        return text[len(reason) + 2 :]
    return text
