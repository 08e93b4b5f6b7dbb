"""The three ways into an encodable folder: download a caption table, or filter a table / COCO JSON on disk.

Every entry point validates its whole input and the output folder before writing anything, then writes
``OUT/prepare_config.json``, the data, ``OUT/report.json`` and (files output) ``OUT/manifest.parquet``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tarfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm import tqdm

from data_preparation.checks import IMAGE_REASONS, ImageChecks, Rejection, check_image_bytes
from data_preparation.download import (
    DOWNLOAD_FAILED,
    RESIZE_FAILED,
    DownloadOptions,
    detail,
    expected_shards,
    read_shards,
    read_status,
    run_img2dataset,
)
from data_preparation.output import (
    Report,
    check_output,
    check_resume_config,
    config_dict,
    reset_output,
    write_config,
    write_json,
    write_manifest,
)
from data_preparation.tables import (
    DUPLICATE,
    PrepareError,
    check_webdataset_keys,
    derived_keys,
    key_column_values,
    read_table,
    require_columns,
    resolve_caption_columns,
)

logger = logging.getLogger(__name__)

NO_URL = "no_url"
MISSING_FILE = "missing_file"
NO_CAPTION = "no_caption"
DOWNLOAD_REASONS = (DUPLICATE, NO_URL, DOWNLOAD_FAILED, *IMAGE_REASONS, RESIZE_FAILED)
LOCAL_REASONS = (DUPLICATE, MISSING_FILE, *IMAGE_REASONS)
IMAGES_DIR = "images"  # files output: img2dataset's folder inside OUT
DOWNLOAD_DIR = "_download"  # webdataset output: img2dataset's raw shards, rewritten into OUT/{shard}.tar
WORK_DIR = "_work"
KEY_FIELD = "dp_key"
# Column names img2dataset keeps for itself; caption columns with these names are staged under another name.
_RESERVED = {
    "key", "caption", "url", "width", "height", "original_width", "original_height", "status",
    "error_message", "exif", "md5", "sha256", "sha512", "jpg", "txt", "json", KEY_FIELD,
}  # fmt: skip
# Settings a --resume may change without changing the result.
_RESUME_EXEMPT = ("processes", "threads", "timeout", "retries", "distributor")


@dataclass(frozen=True)
class DownloadConfig:
    """``python -m data_preparation prepare``: saved as ``OUT/prepare_config.json``."""

    table: Path
    url_column: str
    out: Path
    key_column: str | None = None
    caption_columns: tuple[str, ...] | None = None
    output_format: str = "files"
    image_size: int | None = None
    resize_mode: str = "keep_ratio"
    processes: int = 1
    threads: int = 64
    shard_size: int = 10000
    timeout: int = 10
    retries: int = 0
    distributor: str = "multiprocessing"
    min_image_size: int = 32
    max_aspect_ratio: float = 10.0

    def download_options(self) -> DownloadOptions:
        return DownloadOptions(
            output_format=self.output_format,
            image_size=self.image_size,
            resize_mode=self.resize_mode,
            processes=self.processes,
            threads=self.threads,
            shard_size=self.shard_size,
            timeout=self.timeout,
            retries=self.retries,
            distributor=self.distributor,
        )

    def checks(self) -> ImageChecks:
        return ImageChecks(self.min_image_size, self.max_aspect_ratio)


@dataclass(frozen=True)
class LocalConfig:
    """``python -m data_preparation from-local``: a caption table naming images already on disk."""

    table: Path
    out: Path
    image_column: str = "image"
    image_root: Path | None = None
    key_column: str | None = None
    caption_columns: tuple[str, ...] | None = None
    threads: int = 8
    min_image_size: int = 32
    max_aspect_ratio: float = 10.0


@dataclass(frozen=True)
class CocoConfig:
    """``python -m data_preparation from-coco``: a COCO captions JSON and its image folder."""

    annotations: Path
    out: Path
    image_root: Path | None = None
    threads: int = 8
    min_image_size: int = 32
    max_aspect_ratio: float = 10.0


# --- download --------------------------------------------------------------------------------------------


def prepare_download(config: DownloadConfig, *, resume: bool = False, overwrite: bool = False) -> Report:
    """Download ``config.table`` with img2dataset into ``config.out``, filter, write manifest/shards and report."""
    table = read_table(config.table)
    require_columns(
        table, {"--url-column": config.url_column, "--key-column": config.key_column}, config.table
    )
    captions = resolve_caption_columns(table, config.caption_columns, config.table)
    config = _with_captions(config, captions)
    config.download_options()  # validates the img2dataset settings (distributor installed, ...)
    options, checks = config.download_options(), config.checks()
    if config.key_column in captions:
        raise PrepareError(
            f"--key-column {config.key_column} is also a caption column; name a separate key column"
        )

    urls = ["" if pd.isna(v) else str(v).strip() for v in table[config.url_column].tolist()]
    if config.key_column is not None:
        keys = key_column_values(table, config.key_column, config.table)
        repeated = [False] * len(keys)
    else:
        keys, repeated = derived_keys(urls)
    if options.output_format == "webdataset":
        check_webdataset_keys(keys)
    check_output(config.out, resume=resume, overwrite=overwrite)
    if resume and config.out.is_dir() and any(config.out.iterdir()):
        check_resume_config(config.out, config_dict(config), _RESUME_EXEMPT)

    reset_output(config.out, overwrite)
    write_config(config.out, config)
    report = Report(source=str(config.table), reasons=DOWNLOAD_REASONS)
    staged_names = _staged_names(captions)
    keep = []
    for i, (key, url) in enumerate(zip(keys, urls, strict=True)):
        if repeated[i]:
            report.reject(key, DUPLICATE, f"same URL as an earlier row: {url}")
        elif not url:
            report.reject(key, NO_URL, f"empty {config.url_column}")
        else:
            keep.append(i)
    staged = pd.DataFrame({"url": [_as_url(urls[i]) for i in keep], KEY_FIELD: [keys[i] for i in keep]})
    for column in captions:
        staged[staged_names[column]] = table[column].iloc[keep].tolist()
    work = config.out / WORK_DIR
    work.mkdir(exist_ok=True)
    staged_path = work / "urls.parquet"
    staged.to_parquet(staged_path, index=False)

    folder = config.out / (IMAGES_DIR if options.output_format == "files" else DOWNLOAD_DIR)
    logger.info("downloading %d URLs with img2dataset into %s", len(staged), folder)
    run_img2dataset(staged_path, [KEY_FIELD, *staged_names.values()], folder, options, checks)
    shards = expected_shards(len(staged), options.shard_size)
    totals = read_shards(folder, shards)

    manifest_parts = []
    for shard in tqdm(shards, desc="filter + index shards", unit="shard"):
        status = read_status(folder, shard).sort_values("key", kind="stable")
        for key, reason, message in zip(
            status[KEY_FIELD], status["reason"], status["error_message"], strict=True
        ):
            if pd.isna(reason):
                report.keep()
            else:
                report.reject(key, reason, detail(reason, message) if reason != DOWNLOAD_FAILED else message)
        kept = status[status["reason"].isna()]
        part = pd.DataFrame({"key": kept[KEY_FIELD].tolist()})
        if options.output_format == "files":
            part["image"] = [f"{IMAGES_DIR}/{shard}/{k}.jpg" for k in kept["key"]]
        for column in captions:
            part[column] = kept[staged_names[column]].tolist()
        part["url"] = kept["url"].tolist()
        manifest_parts.append(part)
        if options.output_format == "webdataset":
            _rewrite_shard(folder, shard, kept, captions, staged_names, config.out)

    report.extra["img2dataset"] = totals
    report.extra["output_format"] = options.output_format
    if options.output_format == "files":
        manifest = pd.concat(manifest_parts, ignore_index=True) if manifest_parts else _empty(captions)
        write_manifest(config.out, manifest)
    write_json(config.out / "report.json", report.to_dict())
    shutil.rmtree(work)
    return report


def _with_captions(config: DownloadConfig, captions: list[str]) -> DownloadConfig:
    values = config_dict(config) | {"caption_columns": tuple(captions)}
    values["table"], values["out"] = config.table, config.out
    return DownloadConfig(**values)


def _staged_names(captions: Sequence[str]) -> dict[str, str]:
    """img2dataset reserves some column names; caption columns named so are staged as ``dp_<name>``."""
    return {c: f"dp_{c}" if c in _RESERVED else c for c in captions}


def _as_url(value: str) -> str:
    """URLs pass through; a local path (no scheme) becomes a ``file://`` URL, resolved from the current folder."""
    return value if "://" in value else Path(value).resolve().as_uri()


def _empty(captions: Sequence[str]) -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype=object) for c in ["key", "image", *captions, "url"]})


def _plain(value: Any) -> Any:
    return value.tolist() if isinstance(value, np.ndarray) else value


def _rewrite_shard(
    folder: Path, shard: str, kept: pd.DataFrame, captions: Sequence[str], staged: dict[str, str], out: Path
) -> None:
    """Write ``OUT/{shard}.tar`` keyed by the stable keys (img2dataset keys by position), then drop the raw tar.

    Each sample holds ``{key}.jpg``, ``{key}.txt`` (the first caption column) and ``{key}.json`` (key, url and
    every caption column).
    """
    import webdataset as wds

    raw, target = folder / f"{shard}.tar", out / f"{shard}.tar"
    if target.is_file() and not raw.exists():
        return  # rewritten by an earlier (resumed) run
    rows = {row["key"]: row for row in kept.to_dict("records")}
    tmp = out / f"{shard}.tar.tmp"
    with tarfile.open(raw, "r:") as source, open(tmp, "wb") as stream:
        writer = wds.TarWriter(stream)
        for member in source:
            name, _, ext = member.name.partition(".")
            if ext != "jpg" or name not in rows:
                continue
            row = rows[name]
            fields = {"key": row[KEY_FIELD], "url": row["url"]}
            fields.update({c: _plain(row[staged[c]]) for c in captions})
            text = fields[captions[0]]
            writer.write(
                {
                    "__key__": row[KEY_FIELD],
                    "jpg": source.extractfile(member).read(),
                    "txt": "" if text is None else str(text),
                    "json": json.dumps(fields, ensure_ascii=False).encode("utf-8"),
                }
            )
        writer.close()
    os.replace(tmp, target)
    raw.unlink()


# --- data on disk ----------------------------------------------------------------------------------------


def prepare_local(config: LocalConfig, *, overwrite: bool = False) -> Report:
    """Filter the images a caption table names and write ``OUT/manifest.parquet`` (no copying, no download)."""
    table = read_table(config.table)
    require_columns(
        table, {"--image-column": config.image_column, "--key-column": config.key_column}, config.table
    )
    captions = resolve_caption_columns(table, config.caption_columns, config.table)
    root = config.image_root if config.image_root is not None else config.table.parent
    if not root.is_dir():
        raise PrepareError(f"--image-root {root} is not a folder")
    names = ["" if pd.isna(v) else str(v).strip() for v in table[config.image_column].tolist()]
    if config.key_column is not None:
        keys = key_column_values(table, config.key_column, config.table)
    else:
        keys = [Path(n).with_suffix("").as_posix() for n in names]
    check_output(config.out, overwrite=overwrite)

    reset_output(config.out, overwrite)
    write_config(config.out, config)
    rows = pd.DataFrame({"key": keys, "path": [str(root / n) for n in names]})
    for column in captions:
        rows[column] = table[column].tolist()
    report = Report(source=str(config.table), reasons=LOCAL_REASONS)
    manifest = _filter_local(rows, captions, config.out, ImageChecks(config.min_image_size, config.max_aspect_ratio),
                             config.threads, report)  # fmt: skip
    write_manifest(config.out, manifest)
    write_json(config.out / "report.json", report.to_dict())
    return report


def prepare_coco(config: CocoConfig, *, overwrite: bool = False) -> Report:
    """Filter a COCO captions split; the manifest has one row per image, its captions as a list in ``caption``."""
    content = _read_coco(config.annotations)
    root = config.image_root if config.image_root is not None else _coco_image_root(config.annotations)
    check_output(config.out, overwrite=overwrite)

    by_image: dict[int, list[tuple[int, str]]] = {}
    for annotation in content["annotations"]:
        by_image.setdefault(annotation["image_id"], []).append((annotation["id"], str(annotation["caption"])))
    reset_output(config.out, overwrite)
    write_config(config.out, config)
    report = Report(source=str(config.annotations), reasons=(NO_CAPTION, *LOCAL_REASONS))
    images = []
    for image in content["images"]:
        if image["id"] in by_image:
            images.append(image)
        else:
            report.reject(str(image["id"]), NO_CAPTION)
    rows = pd.DataFrame(
        {
            "key": [str(image["id"]) for image in images],
            "path": [str(root / image["file_name"]) for image in images],
            "caption": [[text for _, text in sorted(by_image[image["id"]])] for image in images],
        }
    )
    checks = ImageChecks(config.min_image_size, config.max_aspect_ratio)
    manifest = _filter_local(rows, ["caption"], config.out, checks, config.threads, report)
    write_manifest(config.out, manifest)
    write_json(config.out / "report.json", report.to_dict())
    return report


def _read_coco(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise PrepareError(f"COCO captions file {path} does not exist")
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise PrepareError(f"cannot read COCO captions file {path}: {err}") from err
    annotations = content.get("annotations") if isinstance(content, dict) else None
    if not isinstance(annotations, list) or "images" not in content:
        raise PrepareError(f"{path} is not a COCO captions file (needs 'images' and 'annotations')")
    if annotations and "caption" not in annotations[0]:
        raise PrepareError(f"{path} has no captions (annotations without 'caption': an instances file?)")
    return content


def _coco_image_root(path: Path) -> Path:
    """COCO's layout: ``annotations/captions_train2017.json`` describes ``train2017/`` beside ``annotations/``."""
    guess = path.parent.parent / path.stem.split("_")[-1]
    if not guess.is_dir():
        raise PrepareError(f"no image folder found for {path} (looked for {guess}); pass --image-root")
    return guess


def _check_file(path: str, checks: ImageChecks) -> Rejection | None:
    try:
        data = Path(path).read_bytes()
    except OSError as err:
        return Rejection(MISSING_FILE, f"{type(err).__name__}: {err.strerror or err}")
    return check_image_bytes(data, checks)


def _filter_local(
    rows: pd.DataFrame, captions: Sequence[str], out: Path, checks: ImageChecks, threads: int, report: Report
) -> pd.DataFrame:
    """Check every distinct image (``rows``: key, path, captions); the manifest of the kept ones."""
    repeated = rows["key"].duplicated().to_numpy()
    with ThreadPoolExecutor(max(1, threads)) as pool:
        results = list(
            tqdm(
                pool.map(lambda p: _check_file(p, checks), rows["path"]),
                total=len(rows),
                desc="check images",
                unit="img",
            )
        )
    kept = []
    for i, (key, result) in enumerate(zip(rows["key"], results, strict=True)):
        if repeated[i]:
            report.reject(key, DUPLICATE, "key (image) repeats an earlier row")
        elif result is not None:
            report.reject(key, result.reason, result.detail)
        else:
            report.keep()
            kept.append(i)
    out_abs = os.path.abspath(out)
    selected = rows.iloc[kept]
    manifest = pd.DataFrame({"key": selected["key"].tolist()})
    manifest["image"] = [
        Path(os.path.relpath(os.path.abspath(p), out_abs)).as_posix() for p in selected["path"]
    ]
    for column in captions:
        manifest[column] = selected[column].tolist()
    return manifest
