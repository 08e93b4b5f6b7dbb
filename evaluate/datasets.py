"""Readers for every benchmark layout, exactly as the public datasets ship. Each reader validates the whole
layout (files, columns, image files) and raises :class:`LayoutError` naming the expected layout *before* any
encoding happens; it returns plain lists of image paths and texts.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


class LayoutError(ValueError):
    """The data directory does not have the layout the task expects; the message shows that layout."""


def _fail(problem: str, layout: str) -> LayoutError:
    return LayoutError(f"{problem}\nExpected layout:\n{layout}")


def _check_images_exist(paths: Sequence[Path], layout: str) -> None:
    missing = [p for p in paths if not p.is_file()]
    if missing:
        shown = "\n  ".join(str(p) for p in missing[:5])
        raise _fail(f"{len(missing)} of {len(paths)} image files are missing, e.g.:\n  {shown}", layout)


def _read_lines(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


# --------------------------------------------------------------------------------------------------- ImageFolder

IMAGEFOLDER_LAYOUT = """\
  DATA/                      an ImageFolder root (or DATA/val/ with it), one folder per class:
    CLASS_A/xxx.jpg          e.g. ImageNet val: n01440764/ILSVRC2012_val_00000293.JPEG
    CLASS_B/yyy.png
  optional DATA/wnids.txt    (or beside DATA/val) all class folders in class-index order, one per line;
                             classes listed there but without a folder still take part in classification"""


@dataclass
class ImageFolderData:
    root: Path
    classes: list[str]  # folder name of each class index (all classes, with or without images)
    images: list[Path]
    labels: list[int]

    @property
    def classes_with_images(self) -> int:
        return len(set(self.labels))


def _list_images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def load_imagefolder(
    data: str | Path, classes_file: str | Path | None = None, split: str | None = "val"
) -> ImageFolderData:
    """Read an ImageFolder; class index = line of ``classes_file`` (default ``wnids.txt`` beside the data)
    or position in the sorted folder names."""
    data = Path(data)
    if not data.is_dir():
        raise _fail(f"{data} is not a directory", IMAGEFOLDER_LAYOUT)
    root = data / split if split and (data / split).is_dir() else data
    if classes_file is None:
        for candidate in (root / "wnids.txt", root.parent / "wnids.txt"):
            if candidate.is_file():
                classes_file = candidate
                break
    folders = sorted(p.name for p in root.iterdir() if p.is_dir())
    if not folders:
        raise _fail(f"{root} has no class folders", IMAGEFOLDER_LAYOUT)
    if classes_file is not None:
        classes = _read_lines(Path(classes_file))
        if len(set(classes)) != len(classes):
            raise _fail(f"{classes_file} lists a class twice", IMAGEFOLDER_LAYOUT)
        unknown = sorted(set(folders) - set(classes))
        if unknown:
            raise _fail(f"folders not listed in {classes_file}: {unknown[:5]}", IMAGEFOLDER_LAYOUT)
    else:
        classes = folders
    index = {name: i for i, name in enumerate(classes)}
    images: list[Path] = []
    labels: list[int] = []
    for folder in folders:
        files = _list_images(root / folder)
        images.extend(files)
        labels.extend([index[folder]] * len(files))
    if not images:
        raise _fail(f"no images ({', '.join(IMAGE_EXTENSIONS)}) under {root}", IMAGEFOLDER_LAYOUT)
    return ImageFolderData(root=root, classes=classes, images=images, labels=labels)


KNN_LAYOUT = """\
  DATA/train/CLASS/xxx.jpg   ImageFolder of the labelled (memory bank) images
  DATA/val/CLASS/yyy.jpg     ImageFolder of the query images (classes must appear in train/)"""


def load_knn_splits(data: str | Path) -> tuple[ImageFolderData, ImageFolderData]:
    """``train/`` and ``val/`` ImageFolders sharing the class index of train (or of ``DATA/wnids.txt``)."""
    data = Path(data)
    if not (data / "train").is_dir() or not (data / "val").is_dir():
        raise _fail(f"{data} needs train/ and val/ ImageFolders", KNN_LAYOUT)
    classes_file = data / "wnids.txt" if (data / "wnids.txt").is_file() else None
    train = load_imagefolder(data / "train", classes_file, split=None)
    val = load_imagefolder(data / "val", classes_file, split=None)
    if classes_file is None:
        unknown = sorted(set(val.classes) - set(train.classes))
        if unknown:
            raise _fail(f"val classes without a train folder: {unknown[:5]}", KNN_LAYOUT)
        index = {name: i for i, name in enumerate(train.classes)}
        val.labels = [index[val.classes[label]] for label in val.labels]
        val.classes = train.classes
    return train, val


# ----------------------------------------------------------------------------------------------------- retrieval

RETRIEVAL_LAYOUT = """\
  COCO captions:  DATA/annotations/captions_{split}.json + DATA/{split}/*.jpg  (--data DATA [--split val2017]),
                  or --data path/to/captions_X.json --image-root IMAGE_DIR
                  JSON: {"images": [{"id", "file_name"}...], "annotations": [{"image_id", "caption"}...]}
  Karpathy JSON:  --data dataset_coco.json|dataset_flickr30k.json [--split test] --image-root IMAGE_DIR
                  JSON: {"images": [{"filename", "filepath"?, "split", "sentences": [{"raw"}...]}...]}
                  image path = IMAGE_DIR/filepath/filename (COCO) or IMAGE_DIR/filename (Flickr30k)"""


@dataclass
class RetrievalData:
    name: str
    images: list[Path]
    captions: list[str]
    caption_image: list[int]  # index into images of each caption's image
    split: str


def _load_coco_captions(
    payload: dict, path: Path, image_root: Path
) -> tuple[list[Path], list[str], list[int]]:
    images_meta = sorted(payload["images"], key=lambda im: im["id"])
    row_of = {im["id"]: i for i, im in enumerate(images_meta)}
    images = [image_root / im["file_name"] for im in images_meta]
    annotations = sorted(payload["annotations"], key=lambda a: a["id"])
    unknown = [a["image_id"] for a in annotations if a["image_id"] not in row_of]
    if unknown:
        raise _fail(f"{path}: captions refer to unknown image ids, e.g. {unknown[:3]}", RETRIEVAL_LAYOUT)
    captions = [a["caption"].strip() for a in annotations]
    caption_image = [row_of[a["image_id"]] for a in annotations]
    return images, captions, caption_image


def _load_karpathy(
    payload: dict, path: Path, image_root: Path, split: str
) -> tuple[list[Path], list[str], list[int]]:
    images, captions, caption_image = [], [], []
    for entry in payload["images"]:
        entry_split = "train" if entry["split"] == "restval" and split == "train" else entry["split"]
        if entry_split != split:
            continue
        images.append(image_root / entry.get("filepath", "") / entry["filename"])
        for sentence in entry["sentences"]:
            captions.append(sentence["raw"].strip())
            caption_image.append(len(images) - 1)
    if not images:
        splits = sorted({e["split"] for e in payload["images"]})
        raise _fail(f"{path}: no images in split {split!r} (splits present: {splits})", RETRIEVAL_LAYOUT)
    return images, captions, caption_image


def load_retrieval(
    data: str | Path, image_root: str | Path | None = None, split: str | None = None
) -> RetrievalData:
    data = Path(data)
    if data.is_dir():
        split = split or "val2017"
        json_path = data / "annotations" / f"captions_{split}.json"
        if not json_path.is_file():
            raise _fail(f"{json_path} not found", RETRIEVAL_LAYOUT)
        image_root = Path(image_root) if image_root else data / split
    elif data.is_file() and data.suffix == ".json":
        json_path = data
    else:
        raise _fail(f"{data} is neither a captions JSON nor a COCO directory", RETRIEVAL_LAYOUT)
    try:
        payload_head = json.loads(json_path.read_text())
    except json.JSONDecodeError as error:
        raise _fail(f"{json_path} is not valid JSON ({error})", RETRIEVAL_LAYOUT) from error
    images_meta = payload_head.get("images") if isinstance(payload_head, dict) else None
    if not images_meta:
        raise _fail(f"{json_path} has no 'images' list", RETRIEVAL_LAYOUT)
    if "annotations" in payload_head and "file_name" in images_meta[0]:
        if image_root is None:
            stem = json_path.stem.removeprefix("captions_")
            image_root = json_path.parent.parent / stem
        split = split or json_path.stem.removeprefix("captions_")
        try:
            images, captions, caption_image = _load_coco_captions(payload_head, json_path, Path(image_root))
        except KeyError as error:
            raise _fail(
                f"{json_path}: an image or annotation entry lacks {error}", RETRIEVAL_LAYOUT
            ) from error
        name = f"coco-{split}"  # not the Karpathy 5k test split that papers report as "coco"
    elif "sentences" in images_meta[0] and "filename" in images_meta[0]:
        if image_root is None:
            raise _fail("a Karpathy JSON needs --image-root (the image directory)", RETRIEVAL_LAYOUT)
        split = split or "test"
        try:
            images, captions, caption_image = _load_karpathy(payload_head, json_path, Path(image_root), split)
        except KeyError as error:
            raise _fail(f"{json_path}: an image or sentence entry lacks {error}", RETRIEVAL_LAYOUT) from error
        dataset = payload_head.get("dataset", json_path.stem.removeprefix("dataset_"))
        # "coco" / "flickr30k" name the papers' protocol (Karpathy test split); other splits say which
        name = dataset if split == "test" else f"{dataset}-{split}"
    else:
        raise _fail(f"{json_path} is neither COCO captions nor Karpathy format", RETRIEVAL_LAYOUT)
    if not captions:
        raise _fail(f"{json_path}: no captions", RETRIEVAL_LAYOUT)
    without = len(images) - len(set(caption_image))
    if without:
        raise _fail(f"{json_path}: {without} images have no caption", RETRIEVAL_LAYOUT)
    _check_images_exist(images, RETRIEVAL_LAYOUT)
    return RetrievalData(
        name=name, images=images, captions=captions, caption_image=caption_image, split=split
    )


# ---------------------------------------------------------------------------------------------------- Winoground

WINOGROUND_LAYOUT = """\
  either a `datasets` copy of facebook/winoground saved with save_to_disk (a Dataset, or a DatasetDict with a
  'test' split), columns: id, image_0, image_1 (images), caption_0, caption_1;
  or the original release: DATA/examples.jsonl (or DATA/data/examples.jsonl) with one JSON object per line
  {"id", "image_0", "image_1", "caption_0", "caption_1", ...} and DATA/images/{image_0}.png"""


@dataclass
class WinogroundData:
    ids: list[int]
    captions_0: list[str]
    captions_1: list[str]
    images_0: list  # Paths or PIL images
    images_1: list
    tags: list[str] = field(default_factory=list)


def load_winoground(data: str | Path) -> WinogroundData:
    data = Path(data)
    if not data.is_dir():
        raise _fail(f"{data} is not a directory", WINOGROUND_LAYOUT)
    if (data / "dataset_info.json").is_file() or (data / "dataset_dict.json").is_file():
        import datasets

        ds = datasets.load_from_disk(str(data))
        if isinstance(ds, datasets.DatasetDict):
            if "test" not in ds:
                raise _fail(f"{data}: DatasetDict without a 'test' split ({list(ds)})", WINOGROUND_LAYOUT)
            ds = ds["test"]
        missing = {"id", "image_0", "image_1", "caption_0", "caption_1"} - set(ds.column_names)
        if missing:
            raise _fail(f"{data}: missing columns {sorted(missing)}", WINOGROUND_LAYOUT)
        return WinogroundData(
            ids=list(ds["id"]),
            captions_0=list(ds["caption_0"]),
            captions_1=list(ds["caption_1"]),
            images_0=[im.convert("RGB") for im in ds["image_0"]],
            images_1=[im.convert("RGB") for im in ds["image_1"]],
            tags=list(ds["collapsed_tag"]) if "collapsed_tag" in ds.column_names else [],
        )
    base = data if (data / "examples.jsonl").is_file() else data / "data"
    jsonl = base / "examples.jsonl"
    if not jsonl.is_file():
        raise _fail(f"neither a saved dataset nor examples.jsonl in {data}", WINOGROUND_LAYOUT)
    rows = [json.loads(line) for line in jsonl.read_text(encoding="utf-8").splitlines() if line.strip()]
    needed = {"id", "image_0", "image_1", "caption_0", "caption_1"}
    bad = [i for i, row in enumerate(rows) if not needed <= set(row)]
    if bad or not rows:
        raise _fail(
            f"{jsonl}: rows without {sorted(needed)} (first: line {bad[0] + 1 if bad else 1})",
            WINOGROUND_LAYOUT,
        )
    image_dir = base / "images"

    def path(name: str) -> Path:
        candidate = image_dir / name
        return candidate if candidate.suffix else candidate.with_suffix(".png")

    data_out = WinogroundData(
        ids=[int(r["id"]) for r in rows],
        captions_0=[r["caption_0"] for r in rows],
        captions_1=[r["caption_1"] for r in rows],
        images_0=[path(r["image_0"]) for r in rows],
        images_1=[path(r["image_1"]) for r in rows],
        tags=[r.get("collapsed_tag", "") for r in rows],
    )
    _check_images_exist(data_out.images_0 + data_out.images_1, WINOGROUND_LAYOUT)
    return data_out


# ------------------------------------------------------------------------------------------------------ MMVP-VLM

MMVP_LAYOUT = """\
  DATA/Questions.csv                         header 'Question ID,Type,Statement'; rows 2k-1 and 2k form a pair
  DATA/MLLM_VLM Images/{Type}/{Question ID}.jpg   the image each statement describes
  (the layout of the MMVP/MMVP_VLM dataset repository)"""

MMVP_IMAGE_DIR = "MLLM_VLM Images"
MMVP_PROMPT = "a photo of {}"  # the prompt of MMVP's own evaluate_vlm.py


@dataclass
class MMVPData:
    categories: list[str]  # one per pair
    statements_0: list[str]
    statements_1: list[str]
    images_0: list[Path]
    images_1: list[Path]


def load_mmvp(data: str | Path) -> MMVPData:
    import pandas as pd

    data = Path(data)
    csv = data / "Questions.csv"
    if not csv.is_file():
        raise _fail(f"{csv} not found", MMVP_LAYOUT)
    table = pd.read_csv(csv)
    table.columns = [c.strip() for c in table.columns]
    missing = {"Question ID", "Type", "Statement"} - set(table.columns)
    if missing:
        raise _fail(f"{csv}: missing columns {sorted(missing)} (has {list(table.columns)})", MMVP_LAYOUT)
    table = table.sort_values("Question ID").reset_index(drop=True)
    if len(table) % 2 or len(table) == 0:
        raise _fail(f"{csv}: {len(table)} statements; pairs need an even, non-zero count", MMVP_LAYOUT)
    first, second = table.iloc[0::2].reset_index(drop=True), table.iloc[1::2].reset_index(drop=True)
    mixed = (first["Type"] != second["Type"]).to_numpy().nonzero()[0]
    if len(mixed):
        raise _fail(f"{csv}: pair {int(mixed[0])} mixes two categories", MMVP_LAYOUT)
    root = data / MMVP_IMAGE_DIR

    def paths(part) -> list[Path]:
        return [
            root / str(t).strip() / f"{int(q)}.jpg"
            for t, q in zip(part["Type"], part["Question ID"], strict=True)
        ]

    out = MMVPData(
        categories=[str(t).strip() for t in first["Type"]],
        statements_0=[str(s) for s in first["Statement"]],
        statements_1=[str(s) for s in second["Statement"]],
        images_0=paths(first),
        images_1=paths(second),
    )
    _check_images_exist(out.images_0 + out.images_1, MMVP_LAYOUT)
    return out


# ---------------------------------------------------------------------------------------------------------- MMEB

MMEB_LAYOUT = """\
  DATA/{subset}/test-*.parquet   one folder per MMEB-eval subset (as in TIGER-Lab/MMEB-eval), columns
                                 qry_text, qry_img_path, tgt_text (list), tgt_img_path (list); positive first
  DATA/eval_images/...           images (the unzipped images.zip); *_img_path are relative to it
                                 (or pass --image-root); an empty path means a text-only input"""

PHI3_IMAGE_TOKEN = "<|image_1|>"


@dataclass
class MMEBSubset:
    name: str
    query_texts: list[str]
    query_images: list[Path | None]
    target_texts: list[list[str]]
    target_images: list[list[Path | None]]


def _mmeb_text(text: object) -> str:
    """MMEB texts carry Phi-3-V's image token; the protocol passes images separately, so it is removed."""
    return "" if text is None else str(text).replace(PHI3_IMAGE_TOKEN, "").strip()


def load_mmeb(
    data: str | Path, subsets: Sequence[str], image_root: str | Path | None = None
) -> list[MMEBSubset]:
    import pandas as pd

    data = Path(data)
    image_root = Path(image_root) if image_root else data / "eval_images"
    if not image_root.is_dir():
        raise _fail(f"image root {image_root} not found", MMEB_LAYOUT)
    out = []
    for name in subsets:
        files = sorted((data / name).glob("*.parquet"))
        if not files:
            raise _fail(f"no parquet files in {data / name}", MMEB_LAYOUT)
        table = pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)
        missing = {"qry_text", "qry_img_path", "tgt_text", "tgt_img_path"} - set(table.columns)
        if missing:
            raise _fail(f"{data / name}: missing columns {sorted(missing)}", MMEB_LAYOUT)

        def path(value: object) -> Path | None:
            return image_root / str(value) if value is not None and str(value).strip() else None

        subset = MMEBSubset(
            name=name,
            query_texts=[_mmeb_text(t) for t in table["qry_text"]],
            query_images=[path(p) for p in table["qry_img_path"]],
            target_texts=[[_mmeb_text(t) for t in row] for row in table["tgt_text"]],
            target_images=[[path(p) for p in row] for row in table["tgt_img_path"]],
        )
        for i, (texts, images) in enumerate(zip(subset.target_texts, subset.target_images, strict=True)):
            if len(texts) != len(images) or len(texts) < 2:
                raise _fail(
                    f"{name} row {i}: tgt_text and tgt_img_path need the same length >= 2", MMEB_LAYOUT
                )
        empty_target = [
            i
            for i, (texts, images) in enumerate(zip(subset.target_texts, subset.target_images, strict=True))
            if any(not t and p is None for t, p in zip(texts, images, strict=True))
        ]
        if empty_target:
            raise _fail(f"{name} row {empty_target[0]}: a candidate without text and image", MMEB_LAYOUT)
        empty = [
            i
            for i, (t, p) in enumerate(zip(subset.query_texts, subset.query_images, strict=True))
            if not t and p is None
        ]
        if empty:
            raise _fail(f"{name} row {empty[0]}: query without text and image", MMEB_LAYOUT)
        paths = {p for p in subset.query_images if p is not None}
        paths |= {p for row in subset.target_images for p in row if p is not None}
        _check_images_exist(sorted(paths), MMEB_LAYOUT)
        out.append(subset)
    return out
