"""Image-text retrieval data as it ships: COCO captions JSON (2014/2017), Karpathy's split JSONs
(``dataset_coco.json`` with COCO 2014 ``filepath`` folders, ``dataset_flickr30k.json``) and the hub's Flickr30k
CSV (nlphuji/flickr30k: ``flickr_annotations_30k.csv`` + ``flickr30k-images.zip``)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from evaluate.layouts.base import ImageInput, Layouts, ZipImages
from evaluate.layouts.records import RetrievalData

KARPATHY_JSONS = ("dataset_coco.json", "dataset_flickr30k.json", "dataset_flickr8k.json")
FLICKR_CSV = "flickr_annotations_30k.csv"
FLICKR_IMAGES = "flickr30k-images"
FLICKR_CSV_COLUMNS = ("raw", "split", "filename")
COCO_2017_FOLDERS = ("val2017", "train2017")  # COCO 2017 re-splits the 2014 images under their bare ids


def read_coco_captions(
    payload: dict, path: Path, image_root: Path, split: str, layouts: Layouts
) -> RetrievalData:
    try:
        images_meta = sorted(payload["images"], key=lambda im: im["id"])
        row_of = {im["id"]: i for i, im in enumerate(images_meta)}
        images: list[ImageInput] = [image_root / im["file_name"] for im in images_meta]
        annotations = sorted(payload["annotations"], key=lambda a: a["id"])
        unknown = [a["image_id"] for a in annotations if a["image_id"] not in row_of]
        if unknown:
            raise layouts.error(f"{path}: captions refer to unknown image ids, e.g. {unknown[:3]}")
        captions = [a["caption"].strip() for a in annotations]
        caption_image = [row_of[a["image_id"]] for a in annotations]
    except KeyError as error:
        raise layouts.error(f"{path}: an image or annotation entry lacks {error}") from error
    # "coco-val2017", not "coco": the papers' "coco" is the Karpathy 5k test split
    return RetrievalData(f"coco-{split}", images, captions, caption_image, split, "COCO captions JSON")


def _karpathy_image(entry: dict, image_root: Path) -> Path:
    """``IMAGE_ROOT/filepath/filename``; a COCO 2014 image missing there is looked up by its cocoid in the COCO
    2017 folders (the same files, renamed ``{cocoid:012d}.jpg``)."""
    primary = image_root / entry.get("filepath", "") / entry["filename"]
    if primary.is_file() or "cocoid" not in entry:
        return primary
    for folder in COCO_2017_FOLDERS:
        candidate = image_root / folder / f"{int(entry['cocoid']):012d}.jpg"
        if candidate.is_file():
            return candidate
    return primary


def _karpathy_root_candidates(path: Path) -> list[Path]:
    here = path.parent
    return [
        here,
        here.parent,
        here / FLICKR_IMAGES,
        here / "flickr30k_images",
        here / "flickr30k_images" / "flickr30k_images",  # the Kaggle copy nests it twice
        here / "images",
    ]


def read_karpathy(
    payload: dict, path: Path, image_root: Path | None, split: str, layouts: Layouts
) -> RetrievalData:
    try:
        entries = [e for e in payload["images"] if _karpathy_split(e["split"], split) == split]
        if not entries:
            splits = sorted({e["split"] for e in payload["images"]})
            raise layouts.error(f"{path}: no images in split {split!r} (splits present: {splits})")
        if image_root is None:
            found = [r for r in _karpathy_root_candidates(path) if _karpathy_image(entries[0], r).is_file()]
            if not found:
                raise layouts.error(
                    f"{path}: no folder beside it holds {entries[0].get('filepath', '')}/{entries[0]['filename']}; "
                    "pass --image-root (the image directory)"
                )
            image_root = found[0]
        images: list[ImageInput] = []
        captions: list[str] = []
        caption_image: list[int] = []
        for entry in entries:
            images.append(_karpathy_image(entry, image_root))
            for sentence in entry["sentences"]:
                captions.append(sentence["raw"].strip())
                caption_image.append(len(images) - 1)
    except KeyError as error:
        raise layouts.error(f"{path}: an image or sentence entry lacks {error}") from error
    dataset = str(payload.get("dataset", path.stem.removeprefix("dataset_")))
    # "coco" / "flickr30k" name the papers' protocol (Karpathy test split); other splits say which
    name = dataset if split == "test" else f"{dataset}-{split}"
    return RetrievalData(name, images, captions, caption_image, split, "Karpathy JSON")


def _karpathy_split(entry_split: str, wanted: str) -> str:
    return "train" if entry_split == "restval" and wanted == "train" else entry_split


def _flickr_image_source(csv: Path, image_root: Path | None) -> Path | None:
    if image_root is not None:
        return image_root
    for candidate in (csv.parent / FLICKR_IMAGES, csv.parent / f"{FLICKR_IMAGES}.zip"):
        if candidate.exists():
            return candidate
    return None


def _flickr_paths(root: Path, filenames: Sequence[str]) -> list[ImageInput]:
    """Images under ``root``, or under ``root/flickr30k-images`` when ``root`` is the folder above it."""
    nested = root / FLICKR_IMAGES
    if filenames and not (root / filenames[0]).is_file() and (nested / filenames[0]).is_file():
        root = nested
    return [root / name for name in filenames]


def read_flickr_csv(csv: Path, image_root: Path | None, split: str, layouts: Layouts) -> RetrievalData:
    """One row per image: ``raw`` a JSON list of its captions, ``split`` train/val/test (Karpathy's split)."""
    import pandas as pd

    try:
        table = pd.read_csv(csv, dtype={"split": str, "filename": str, "raw": str})
    except (ValueError, OSError) as error:
        raise layouts.error(f"{csv} is not a readable CSV ({error})") from error
    missing = set(FLICKR_CSV_COLUMNS) - set(table.columns)
    if missing:
        raise layouts.error(f"{csv}: missing columns {sorted(missing)} (has {list(table.columns)})")
    rows = table[table["split"].str.strip() == split]
    if rows.empty:
        splits = sorted(table["split"].dropna().unique())
        raise layouts.error(f"{csv}: no images in split {split!r} (splits present: {splits})")
    filenames = [str(f).strip() for f in rows["filename"]]
    captions: list[str] = []
    caption_image: list[int] = []
    for i, (line, raw) in enumerate(zip(rows.index, rows["raw"], strict=True)):
        try:
            texts = json.loads(raw)
        except (json.JSONDecodeError, TypeError) as error:
            raise layouts.error(
                f"{csv} row {line + 2}: raw is not a JSON list of captions ({error})"
            ) from error
        if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
            raise layouts.error(f"{csv} row {line + 2}: raw is not a JSON list of captions")
        captions.extend(t.strip() for t in texts)
        caption_image.extend([i] * len(texts))
    source = _flickr_image_source(csv, image_root)
    if source is None:
        raise layouts.error(
            f"no {FLICKR_IMAGES}/ or {FLICKR_IMAGES}.zip beside {csv}; pass --image-root (folder or zip)"
        )
    if source.is_file() and source.suffix.lower() == ".zip":
        images: list[ImageInput] = list(ZipImages(source, layouts).load(filenames))
    else:
        images = _flickr_paths(source, filenames)
    name = "flickr30k" if split == "test" else f"flickr30k-{split}"
    return RetrievalData(name, images, captions, caption_image, split, "Flickr30k CSV")
