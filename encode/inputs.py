"""Input formats ``encode`` reads, turned into keyed rows: which image each row has and its captions.

``load_rows(data, image_root=None, ...)`` recognises, from ``data``:

- a manifest table (``.csv`` ``.tsv`` ``.parquet`` ``.jsonl``) with a key column, an image-path column (relative
  to ``image_root``, default: the manifest's folder) and any number of caption columns;
- a folder holding ``manifest.parquet`` (or ``.csv`` ``.tsv`` ``.jsonl``): that manifest, images relative to
  the folder (what ``data_preparation`` writes);
- a COCO captions JSON (``annotations/captions_*.json``): image rows keyed by image id, caption rows keyed by
  caption id; images under ``image_root`` (default: ``../<split>`` next to ``annotations/``, COCO's layout);
- a folder of WebDataset ``.tar`` shards as img2dataset writes them (``{key}.jpg`` + ``{key}.txt`` +
  ``{key}.json``), or one such ``.tar`` file: key = the sample key, captions from the ``.json`` fields or the
  ``.txt`` member (column ``txt``; ``caption`` falls back to it when the ``.json`` has none);
- an ImageFolder tree (``class/xxx.jpg``, or a flat folder of images): key = the relative path without its
  extension, e.g. ``n01440764/n01440764_123``. It has no captions.

Caption rows (one per caption, the rows of a text store):

- manifests and WebDataset: key ``{image_key}#{column}``; a list-valued cell (parquet/JSONL lists) gives one
  row per element keyed ``{image_key}#{column}#{i}``;
- COCO: key = the caption id.

A missing or blank caption stays a row with empty text (encoded as a failed row), so the caption keys do not
depend on the content. Rows keep the input's order; nothing here opens an image.
"""

from __future__ import annotations

import json
import math
import re
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import numpy as np

MANIFEST_SUFFIXES = (".parquet", ".csv", ".tsv", ".jsonl")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".gif")
WEBDATASET_IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
DEFAULT_KEY_COLUMN = "key"
DEFAULT_IMAGE_COLUMN = "image"
DEFAULT_CAPTION_COLUMN = "caption"
# WebDataset keys follow webdataset's own rule: the path up to the first dot of the file name.
_WDS_NAME = re.compile(r"^((?:.*/|)[^./]+)\.([^/]*)$")


class InputError(ValueError):
    """The input cannot be read as asked; the message says what is wrong and what to do."""


@dataclass(frozen=True)
class TarMember:
    """An image stored inside a tar shard: read ``size`` bytes at ``offset`` (no tar parsing at read time)."""

    tar: str
    offset: int
    size: int


ImageRef = Union[str, TarMember, None]  # noqa: UP007 (a runtime alias)


@dataclass
class CaptionRows:
    """The rows of one caption column: caption key, the key of its image, and its text ("" when missing)."""

    column: str
    keys: list[str]
    image_keys: list[str]
    texts: list[str]

    def __len__(self) -> int:
        return len(self.keys)

    def head(self, limit: int | None) -> CaptionRows:
        if limit is None:
            return self
        return CaptionRows(self.column, self.keys[:limit], self.image_keys[:limit], self.texts[:limit])


@dataclass
class Rows:
    """Image rows of an input (``keys``/``images``) and its caption columns, in input order."""

    source: str
    format: str
    keys: list[str]
    images: list[ImageRef]
    captions: dict[str, CaptionRows] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.keys)

    def head(self, limit: int | None) -> Rows:
        """The first ``limit`` image rows (captions unchanged; use :meth:`caption_rows` then ``head``)."""
        if limit is None:
            return self
        return Rows(self.source, self.format, self.keys[:limit], self.images[:limit], self.captions)

    def caption_rows(self, column: str) -> CaptionRows:
        if column not in self.captions:
            raise InputError(
                f"{self.source} has no caption column {column!r} loaded; "
                f"load_rows(..., caption_columns=[{column!r}]) first"
            )
        return self.captions[column]


def load_rows(
    data: str | Path,
    image_root: str | Path | None = None,
    *,
    key_column: str = DEFAULT_KEY_COLUMN,
    image_column: str = DEFAULT_IMAGE_COLUMN,
    caption_columns: Sequence[str] = (),
    need_images: bool = True,
) -> Rows:
    """Read any supported input (see the module docstring) without opening an image.

    ``caption_columns`` are loaded into ``Rows.captions``; ``need_images=False`` (text runs) lets a manifest
    lack the image column. Raises :class:`InputError` for a missing path or column, an unreadable or empty
    input, duplicated or missing keys.
    """
    path = Path(data)
    if not path.exists():
        raise InputError(f"--data {data} does not exist")
    if path.is_dir():
        manifest = _find_manifest(path)
        if manifest is not None:
            root = Path(image_root) if image_root is not None else path
            rows = _read_manifest(manifest, root, key_column, image_column, caption_columns, need_images)
        elif any(path.glob("*.tar")):
            _refuse_image_root(image_root, "WebDataset shards")
            rows = _read_webdataset(sorted(path.glob("*.tar")), str(data), caption_columns)
        else:
            _refuse_image_root(image_root, "an ImageFolder tree")
            _refuse_captions(caption_columns, "an ImageFolder tree")
            rows = _read_image_folder(path, str(data))
    elif path.suffix.lower() in MANIFEST_SUFFIXES:
        root = Path(image_root) if image_root is not None else path.parent
        rows = _read_manifest(path, root, key_column, image_column, caption_columns, need_images)
    elif path.suffix.lower() == ".json":
        rows = _read_coco(path, image_root, caption_columns, need_images)
    elif path.suffix.lower() == ".tar":
        _refuse_image_root(image_root, "WebDataset shards")
        rows = _read_webdataset([path], str(data), caption_columns)
    else:
        raise InputError(
            f"--data {data}: unknown input type; expected a manifest ({', '.join(MANIFEST_SUFFIXES)}), "
            "a folder with manifest.*, a COCO captions .json, WebDataset .tar shards or an image folder"
        )
    if not rows.keys:
        raise InputError(f"--data {data} holds no rows: the input is empty")
    _check_unique(rows.keys, f"{data}: image keys")
    for captions in rows.captions.values():
        _check_unique(captions.keys, f"{data}: caption keys of {captions.column!r}")
    return rows


def _refuse_image_root(image_root: str | Path | None, what: str) -> None:
    if image_root is not None:
        raise InputError(f"--image-root applies to manifests and COCO JSON only, not to {what}; drop it")


def _refuse_captions(caption_columns: Sequence[str], what: str) -> None:
    if caption_columns:
        raise InputError(
            f"{what} has no captions; text stores need a manifest, COCO JSON or WebDataset input"
        )


def _check_unique(keys: list[str], what: str) -> None:
    unique, counts = np.unique(np.asarray(keys, dtype=object).astype(str), return_counts=True)
    if len(unique) != len(keys):
        raise InputError(f"{what} must be unique; duplicated: {unique[counts > 1][:5].tolist()}")


# --- manifests -------------------------------------------------------------------------------------------


def _find_manifest(folder: Path) -> Path | None:
    found = [
        folder / f"manifest{suffix}"
        for suffix in MANIFEST_SUFFIXES
        if (folder / f"manifest{suffix}").is_file()
    ]
    if len(found) > 1:
        names = ", ".join(p.name for p in found)
        raise InputError(f"{folder} holds several manifests ({names}); pass the one to use as --data")
    return found[0] if found else None


def _read_table(path: Path):
    import pandas as pd

    suffix = path.suffix.lower()
    try:
        if suffix == ".parquet":
            return pd.read_parquet(path)
        if suffix == ".jsonl":
            return pd.read_json(path, lines=True, dtype=False)
        # Strings as they are: keys such as "000123" keep their zeros, empty cells stay "" (not NaN).
        sep = "\t" if suffix == ".tsv" else ","
        return pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False)
    except pd.errors.EmptyDataError as err:
        raise InputError(f"manifest {path} is empty: {err}") from err
    except (ValueError, OSError, UnicodeDecodeError, pd.errors.ParserError) as err:
        raise InputError(f"cannot read manifest {path} as {suffix[1:]}: {_first_line(err)}") from err
    except Exception as err:  # pyarrow raises its own error types for broken parquet files
        if type(err).__module__.startswith("pyarrow"):
            raise InputError(f"cannot read manifest {path} as parquet: {_first_line(err)}") from err
        raise


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _read_manifest(
    path: Path,
    image_root: Path,
    key_column: str,
    image_column: str,
    caption_columns: Sequence[str],
    need_images: bool,
) -> Rows:
    table = _read_table(path)
    if len(table) == 0:
        raise InputError(f"manifest {path} has no rows: the input is empty")
    columns = [str(c) for c in table.columns]
    required = [key_column] + ([image_column] if need_images else []) + list(caption_columns)
    missing = [c for c in required if c not in columns]
    if missing:
        flags = {key_column: "--key-column", image_column: "--image-column"}
        hint = ", ".join(f"{flags.get(c, '--caption-column')} {c}" for c in missing)
        raise InputError(
            f"manifest {path} lacks column(s) {missing} ({hint}); its columns are {columns}. "
            "Pass the right column names."
        )
    keys = [_key(value, path, key_column, row) for row, value in enumerate(table[key_column].tolist())]
    if image_column in columns:
        images: list[ImageRef] = [_image_path(v, image_root) for v in table[image_column].tolist()]
    else:
        images = [None] * len(keys)
    captions = {c: _caption_rows(c, keys, table[c].tolist()) for c in caption_columns}
    return Rows(str(path), "manifest", keys, images, captions)


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _key(value: Any, path: Path, column: str, row: int) -> str:
    if _is_missing(value) or str(value).strip() == "":
        raise InputError(f"manifest {path}: row {row} has no {column!r}; every row needs a key")
    return str(value)


def _image_path(value: Any, root: Path) -> str | None:
    if _is_missing(value) or str(value).strip() == "":
        return None
    return str(root / str(value))


def _text(value: Any) -> str:
    return "" if _is_missing(value) else str(value)


def _caption_rows(column: str, image_keys: list[str], values: list[Any]) -> CaptionRows:
    keys, links, texts = [], [], []
    for image_key, value in zip(image_keys, values, strict=True):
        if isinstance(value, (list, tuple, np.ndarray)) and len(value) > 0:
            for i, item in enumerate(value):
                keys.append(f"{image_key}#{column}#{i}")
                links.append(image_key)
                texts.append(_text(item))
        else:
            keys.append(f"{image_key}#{column}")
            links.append(image_key)
            texts.append("" if isinstance(value, (list, tuple, np.ndarray)) else _text(value))
    return CaptionRows(column, keys, links, texts)


# --- COCO -----------------------------------------------------------------------------------------------


def _read_coco(
    path: Path, image_root: str | Path | None, caption_columns: Sequence[str], need_images: bool
) -> Rows:
    try:
        with path.open(encoding="utf-8") as f:
            content = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InputError(f"cannot read COCO captions file {path}: {_first_line(err)}") from err
    if not isinstance(content, dict) or "images" not in content or "annotations" not in content:
        raise InputError(f"{path} is not a COCO captions file (needs 'images' and 'annotations')")
    images = content["images"]
    keys = [str(image["id"]) for image in images]
    if need_images:
        root = Path(image_root) if image_root is not None else _coco_image_root(path)
        paths: list[ImageRef] = [str(root / image["file_name"]) for image in images]
    else:
        paths = [None] * len(keys)
    captions = {}
    for column in caption_columns:
        if column != DEFAULT_CAPTION_COLUMN:
            raise InputError(f"COCO captions have one caption column, 'caption', not {column!r}")
        annotations = content["annotations"]
        if annotations and "caption" not in annotations[0]:
            raise InputError(f"{path} has no captions (annotations without 'caption': an instances file?)")
        captions[column] = CaptionRows(
            column,
            [str(a["id"]) for a in annotations],
            [str(a["image_id"]) for a in annotations],
            [_text(a.get("caption")) for a in annotations],
        )
    return Rows(str(path), "coco", keys, paths, captions)


def _coco_image_root(path: Path) -> Path:
    """COCO's layout: ``annotations/captions_train2017.json`` describes ``train2017/`` beside ``annotations/``."""
    split = path.stem.split("_")[-1]
    guess = path.parent.parent / split
    if not guess.is_dir():
        raise InputError(f"no image folder found for {path} (looked for {guess}); pass --image-root")
    return guess


# --- ImageFolder ----------------------------------------------------------------------------------------


def _read_image_folder(folder: Path, source: str) -> Rows:
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
    if not files:
        raise InputError(
            f"--data {source} holds no manifest.*, no .tar shards and no images ({', '.join(IMAGE_EXTENSIONS)}): "
            "the input is empty"
        )
    keys = [p.relative_to(folder).with_suffix("").as_posix() for p in files]
    return Rows(source, "imagefolder", keys, [str(p) for p in files])


# --- WebDataset -----------------------------------------------------------------------------------------


def _read_webdataset(shards: list[Path], source: str, caption_columns: Sequence[str]) -> Rows:
    """Index the shards once: each sample's image member (offset, size) and the caption fields asked for."""
    keys: list[str] = []
    images: list[ImageRef] = []
    texts: dict[str, list[Any]] = {c: [] for c in caption_columns}
    seen_fields: set[str] = set()
    for shard in shards:
        try:
            samples = _index_shard(shard, bool(caption_columns))
        except (tarfile.TarError, OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise InputError(f"cannot read WebDataset shard {shard}: {_first_line(err)}") from err
        for key, sample in samples.items():
            keys.append(key)
            images.append(sample.get("image"))
            fields = sample.get("json", {})
            seen_fields.update(fields)
            if "txt" in sample:
                seen_fields.add("txt")
            for column in caption_columns:
                texts[column].append(_wds_caption(sample, fields, column))
    for column in caption_columns:
        if (
            keys
            and column not in seen_fields
            and not (column == DEFAULT_CAPTION_COLUMN and "txt" in seen_fields)
        ):
            raise InputError(
                f"WebDataset {source} has no caption column {column!r}; its samples have {sorted(seen_fields)} "
                "('txt' is the .txt member). Pass one of them as --caption-column."
            )
    captions = {c: _caption_rows(c, keys, texts[c]) for c in caption_columns}
    return Rows(source, "webdataset", keys, images, captions)


def _wds_caption(sample: dict[str, Any], fields: dict[str, Any], column: str) -> Any:
    if column in fields:
        return fields[column]
    if column in ("txt", DEFAULT_CAPTION_COLUMN):
        return sample.get("txt")
    return None


def _index_shard(shard: Path, read_captions: bool) -> dict[str, dict[str, Any]]:
    samples: dict[str, dict[str, Any]] = {}
    with tarfile.open(shard, "r:") as tar:
        for member in tar:
            if not member.isfile():
                continue
            match = _WDS_NAME.match(member.name)
            if match is None:
                continue
            key, ext = match.group(1), match.group(2).lower()
            sample = samples.setdefault(key, {})
            if ext in WEBDATASET_IMAGE_EXTENSIONS:
                sample["image"] = TarMember(str(shard), member.offset_data, member.size)
            elif read_captions and ext == "txt":
                sample["txt"] = tar.extractfile(member).read().decode("utf-8")
            elif read_captions and ext == "json":
                sample["json"] = json.loads(tar.extractfile(member).read().decode("utf-8"))
    return samples
