"""Winoground as facebook/winoground ships it: ``data/examples.jsonl`` with ``data/images.zip`` (read in place,
images decoded from the archive members) or the extracted ``images/``; the hub's parquet files (``data/test-*``
on main, ``default/test/*`` on the parquet-conversion branch) with the images as ``{bytes, path}`` structs; or a
``datasets`` copy saved with ``save_to_disk``."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from evaluate.layouts.base import ImageInput, Layouts, ZipImages, check_images_exist, decode_image
from evaluate.layouts.records import WinogroundData

COLUMNS = ("id", "image_0", "image_1", "caption_0", "caption_1")
PARQUET_GLOBS = (
    "data/test-*.parquet",
    "default/test/*.parquet",
    "test/*.parquet",
    "data/*.parquet",
    "*.parquet",
)


def is_saved_dataset(data: Path) -> bool:
    return data.is_dir() and (
        (data / "dataset_info.json").is_file() or (data / "dataset_dict.json").is_file()
    )


def read_saved(data: Path, layouts: Layouts) -> WinogroundData:
    import datasets

    ds = datasets.load_from_disk(str(data))
    if isinstance(ds, datasets.DatasetDict):
        if "test" not in ds:
            raise layouts.error(f"{data}: DatasetDict without a 'test' split ({list(ds)})")
        ds = ds["test"]
    missing = set(COLUMNS) - set(ds.column_names)
    if missing:
        raise layouts.error(f"{data}: missing columns {sorted(missing)} (has {ds.column_names})")
    return WinogroundData(
        ids=[int(i) for i in ds["id"]],
        captions_0=list(ds["caption_0"]),
        captions_1=list(ds["caption_1"]),
        images_0=[im.convert("RGB") for im in ds["image_0"]],
        images_1=[im.convert("RGB") for im in ds["image_1"]],
        tags=list(ds["collapsed_tag"]) if "collapsed_tag" in ds.column_names else [],
        layout="datasets save_to_disk",
    )


def find_jsonl(data: Path) -> Path | None:
    for candidate in (data / "examples.jsonl", data / "data" / "examples.jsonl"):
        if candidate.is_file():
            return candidate
    return None


def _jsonl_rows(jsonl: Path, layouts: Layouts) -> list[dict]:
    rows = []
    for number, line in enumerate(jsonl.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise layouts.error(f"{jsonl} line {number} is not JSON ({error})") from error
        if not isinstance(row, dict) or not set(COLUMNS) <= set(row):
            raise layouts.error(f"{jsonl} line {number}: a row needs {list(COLUMNS)}")
        rows.append(row)
    if not rows:
        raise layouts.error(f"{jsonl} has no rows")
    return rows


def read_jsonl(jsonl: Path, layouts: Layouts) -> WinogroundData:
    """``examples.jsonl`` + ``images/{name}.png`` beside it, else the images inside ``images.zip`` beside it."""
    rows = _jsonl_rows(jsonl, layouts)
    base = jsonl.parent
    names_0 = [str(r["image_0"]) for r in rows]
    names_1 = [str(r["image_1"]) for r in rows]

    def path(name: str) -> Path:
        candidate = base / "images" / name
        return candidate if candidate.suffix else candidate.with_suffix(".png")

    paths = [path(n) for n in names_0 + names_1]
    archive = base / "images.zip"
    images: list[ImageInput]
    folder = base / "images"
    if folder.is_dir() and (not archive.is_file() or all(p.is_file() for p in paths)):
        check_images_exist(paths, layouts)
        images, layout = list(paths), "facebook/winoground files (images/)"
    elif archive.is_file():
        images, layout = (
            list(ZipImages(archive, layouts).load(names_0 + names_1)),
            "facebook/winoground files",
        )
    else:
        raise layouts.error(f"neither {archive} nor {folder}/ beside {jsonl}")
    n = len(rows)
    return WinogroundData(
        ids=[int(r["id"]) for r in rows],
        captions_0=[str(r["caption_0"]) for r in rows],
        captions_1=[str(r["caption_1"]) for r in rows],
        images_0=images[:n],
        images_1=images[n:],
        tags=[str(r.get("collapsed_tag", "")) for r in rows],
        layout=layout,
    )


def find_parquet(data: Path) -> list[Path]:
    if data.is_file() and data.suffix == ".parquet":
        return [data]
    if not data.is_dir():
        return []
    for pattern in PARQUET_GLOBS:
        files = sorted(data.glob(pattern))
        if files:
            return files
    return []


def _parquet_image(cell: object, where: str, base: Path, layouts: Layouts) -> ImageInput:
    """An image cell as ``datasets`` writes it: ``{"bytes": ..., "path": ...}`` (bytes first), or raw bytes."""
    if isinstance(cell, bytes | bytearray):
        return decode_image(bytes(cell), where, layouts)
    if isinstance(cell, dict):
        if cell.get("bytes"):
            return decode_image(bytes(cell["bytes"]), where, layouts)
        if cell.get("path"):
            path = Path(str(cell["path"]))
            path = path if path.is_absolute() else base / path
            if not path.is_file():
                raise layouts.error(f"{where}: no image bytes and {path} is not a file")
            return path
    raise layouts.error(f"{where}: not an image struct {{bytes, path}} ({type(cell).__name__})")


def read_parquet(files: Sequence[Path], layouts: Layouts) -> WinogroundData:
    import pyarrow as pa
    import pyarrow.parquet as pq

    for file in files:  # columns checked from the schema before any image bytes are read
        try:
            names = pq.read_schema(file).names
        except (pa.ArrowException, OSError) as error:
            raise layouts.error(f"{file} is not a readable parquet file ({error})") from error
        missing = set(COLUMNS) - set(names)
        if missing:
            raise layouts.error(f"{file}: missing columns {sorted(missing)} (has {names})")
    out = WinogroundData([], [], [], [], [], [], layout="facebook/winoground parquet")
    with_tags = True
    for file in files:
        table = pq.read_table(file)
        columns = {name: table.column(name).to_pylist() for name in COLUMNS}
        tags = table.column("collapsed_tag").to_pylist() if "collapsed_tag" in table.column_names else None
        with_tags = with_tags and tags is not None
        for row, example_id in enumerate(columns["id"]):
            where = f"{file} row {row}"
            out.ids.append(int(example_id))
            out.captions_0.append(str(columns["caption_0"][row]))
            out.captions_1.append(str(columns["caption_1"][row]))
            out.images_0.append(
                _parquet_image(columns["image_0"][row], f"{where} image_0", file.parent, layouts)
            )
            out.images_1.append(
                _parquet_image(columns["image_1"][row], f"{where} image_1", file.parent, layouts)
            )
            out.tags.append(str(tags[row]) if tags is not None else "")
    if not out.ids:
        raise layouts.error(f"{', '.join(map(str, files))}: no rows")
    if not with_tags:
        out.tags = []
    return out
