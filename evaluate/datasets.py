"""Readers for every benchmark, in the layouts the public datasets are downloaded in (the accepted layouts of
each task, one line each with the files it needs, are in :mod:`evaluate.layouts.catalog`; the format-specific
readers in :mod:`evaluate.layouts`). Each reader validates the whole layout (files, columns, image files) and
raises :class:`LayoutError` listing the accepted layouts *before* any encoding happens; it returns plain lists of
image sources (paths, or images decoded from an archive or a parquet column) and texts.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from evaluate.layouts import catalog, imagenet
from evaluate.layouts import retrieval as retrieval_layouts
from evaluate.layouts import winoground as winoground_layouts
from evaluate.layouts.base import (
    IMAGE_EXTENSIONS,
    ImageInput,
    LayoutError,
    Layouts,
    check_images_exist,
    first_existing,
    list_images,
    read_lines,
)
from evaluate.layouts.records import ImageFolderData, MMEBSubset, MMVPData, RetrievalData, WinogroundData

__all__ = [
    "IMAGEFOLDER_LAYOUT",
    "IMAGE_EXTENSIONS",
    "KNN_LAYOUT",
    "MMEB_LAYOUT",
    "MMVP_IMAGE_DIR",
    "MMVP_LAYOUT",
    "MMVP_PROMPT",
    "PHI3_IMAGE_TOKEN",
    "RETRIEVAL_LAYOUT",
    "WINOGROUND_LAYOUT",
    "ImageFolderData",
    "ImageInput",
    "LayoutError",
    "MMEBSubset",
    "MMVPData",
    "RetrievalData",
    "WinogroundData",
    "load_imagefolder",
    "load_knn_splits",
    "load_mmeb",
    "load_mmvp",
    "load_retrieval",
    "load_winoground",
]

# The accepted layouts of each task as text (``--help`` shows them; every layout error ends with them).
IMAGEFOLDER_LAYOUT = catalog.ZEROSHOT.text
KNN_LAYOUT = catalog.KNN.text
RETRIEVAL_LAYOUT = catalog.RETRIEVAL.text
WINOGROUND_LAYOUT = catalog.WINOGROUND.text
MMVP_LAYOUT = catalog.MMVP.text
MMEB_LAYOUT = catalog.MMEB.text


# ---------------------------------------------------------------------------------- ImageFolder / ImageNet val


def _class_list(path: Path, layouts: Layouts) -> list[str]:
    if not path.is_file():
        raise layouts.error(f"class list {path} not found")
    classes = read_lines(path)
    if len(set(classes)) != len(classes):
        raise layouts.error(f"{path} lists a class twice")
    return classes


def _flat_val(
    truth: imagenet.FlatVal, data: Path, classes_file: Path | None, layouts: Layouts
) -> ImageFolderData:
    """Flat val images labelled by their ground truth; class index = line of the class list, else position in
    the ground truth's sorted wnids."""
    if classes_file is None:
        beside = (truth.root / "wnids.txt", truth.root.parent / "wnids.txt", data / "wnids.txt")
        classes_file = first_existing(beside)
    classes = truth.classes if classes_file is None else _class_list(classes_file, layouts)
    index = {wnid: i for i, wnid in enumerate(classes)}
    unknown = sorted(set(truth.wnids) - set(index))
    if unknown:
        raise layouts.error(f"{truth.source} labels images with wnids not in {classes_file}: {unknown[:5]}")
    return ImageFolderData(
        root=truth.root,
        classes=classes,
        images=truth.images,
        labels=[index[w] for w in truth.wnids],
        layout=truth.layout,
    )


def load_imagefolder(
    data: str | Path,
    classes_file: str | Path | None = None,
    split: str | None = "val",
    *,
    layouts: Layouts = catalog.ZEROSHOT,
) -> ImageFolderData:
    """Read an ImageFolder (class index = line of ``classes_file``, default ``wnids.txt`` beside the data, else
    position in the sorted folder names), or ImageNet val as downloaded: the images flat in one folder and their
    ground truth beside them (devkit, torchvision's ``meta.bin`` or Kaggle's ``LOC_val_solution.csv``)."""
    data = Path(data)
    classes_path = Path(classes_file) if classes_file is not None else None
    if not data.is_dir():
        raise layouts.error(f"{data} is not a directory")
    root = data / split if split and (data / split).is_dir() else data
    flat = imagenet.flat_image_dir(data, root, split)
    if flat is not None:
        truth = imagenet.read_flat_val(data, flat, layouts)
        if truth is not None:
            return _flat_val(truth, data, classes_path, layouts)
    folders = sorted(p.name for p in root.iterdir() if p.is_dir())
    if flat is not None and (flat != root or not folders):
        raise layouts.error(
            f"{flat} holds {len(list_images(flat))} image file(s) directly (not in class folders) and no ground truth "
            f"was found beside it ({imagenet.GROUND_TRUTH_TXT} + {imagenet.META_MAT}, {imagenet.DEVKIT_ARCHIVE}, "
            f"{imagenet.META_BIN} or {imagenet.KAGGLE_SOLUTION})"
        )
    if not folders:
        raise layouts.error(f"{root} has no class folders")
    if classes_path is None:
        classes_path = first_existing((root / "wnids.txt", root.parent / "wnids.txt"))
    if classes_path is not None:
        classes = _class_list(classes_path, layouts)
        unknown = sorted(set(folders) - set(classes))
        if unknown:
            raise layouts.error(f"folders not listed in {classes_path}: {unknown[:5]}")
    else:
        classes = folders
    index = {name: i for i, name in enumerate(classes)}
    images: list[Path] = []
    labels: list[int] = []
    for folder in folders:
        files = list_images(root / folder)
        images.extend(files)
        labels.extend([index[folder]] * len(files))
    if not images:
        raise layouts.error(f"no images ({', '.join(IMAGE_EXTENSIONS)}) under {root}")
    return ImageFolderData(root=root, classes=classes, images=images, labels=labels)


def load_knn_splits(data: str | Path) -> tuple[ImageFolderData, ImageFolderData]:
    """``train/`` and ``val/`` ImageFolders sharing the class index of train (or of ``DATA/wnids.txt``)."""
    data = Path(data)
    if not (data / "train").is_dir() or not (data / "val").is_dir():
        raise catalog.KNN.error(f"{data} needs train/ and val/ ImageFolders")
    classes_file = data / "wnids.txt" if (data / "wnids.txt").is_file() else None
    train = load_imagefolder(data / "train", classes_file, split=None, layouts=catalog.KNN)
    val = load_imagefolder(data / "val", classes_file, split=None, layouts=catalog.KNN)
    if classes_file is None:
        unknown = sorted(set(val.classes) - set(train.classes))
        if unknown:
            raise catalog.KNN.error(f"val classes without a train folder: {unknown[:5]}")
        index = {name: i for i, name in enumerate(train.classes)}
        val.labels = [index[val.classes[label]] for label in val.labels]
        val.classes = train.classes
    return train, val


# ----------------------------------------------------------------------------------------------------- retrieval


def _read_json(path: Path, layouts: Layouts) -> dict:
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise layouts.error(f"{path} is not valid JSON ({error})") from error
    if not isinstance(payload, dict) or not payload.get("images"):
        raise layouts.error(f"{path} has no 'images' list")
    return payload


def _retrieval_source(data: Path, split: str | None, layouts: Layouts) -> tuple[Path, str | None]:
    """The annotation file of ``--data`` (a file, or a directory in one of the layouts) and the split so far."""
    if data.is_file():
        if data.suffix.lower() in (".json", ".csv"):
            return data, split
        raise layouts.error(f"{data} is neither a captions JSON nor a Flickr30k CSV")
    if not data.is_dir():
        raise layouts.error(f"{data} not found")
    coco_split = split or "val2017"
    coco_json = data / "annotations" / f"captions_{coco_split}.json"
    if coco_json.is_file():
        return coco_json, coco_split
    if (data / retrieval_layouts.FLICKR_CSV).is_file():
        return data / retrieval_layouts.FLICKR_CSV, split
    karpathy = [data / name for name in retrieval_layouts.KARPATHY_JSONS if (data / name).is_file()]
    if len(karpathy) == 1:
        return karpathy[0], split
    if karpathy:
        raise layouts.error(f"{data} holds {[k.name for k in karpathy]}: pass --data one of them")
    if (data / "annotations").is_dir():
        raise layouts.error(f"{coco_json} not found")
    raise layouts.error(f"{data} holds none of the annotation files of a retrieval layout")


def load_retrieval(
    data: str | Path, image_root: str | Path | None = None, split: str | None = None
) -> RetrievalData:
    """COCO captions (directory or JSON), a Karpathy JSON (COCO 2014 / Flickr30k) or the Flickr30k CSV; the
    split defaults to val2017 (COCO captions) or test (Karpathy JSON, Flickr30k CSV)."""
    layouts = catalog.RETRIEVAL
    data = Path(data)
    root = Path(image_root) if image_root else None
    path, split = _retrieval_source(data, split, layouts)
    if path.suffix.lower() == ".csv":
        out = retrieval_layouts.read_flickr_csv(path, root, split or "test", layouts)
    else:
        payload = _read_json(path, layouts)
        first = payload["images"][0]
        if "annotations" in payload and "file_name" in first:
            stem = path.stem.removeprefix("captions_")
            if root is None:
                root = path.parent.parent / stem
            out = retrieval_layouts.read_coco_captions(payload, path, root, split or stem, layouts)
        elif "sentences" in first and "filename" in first:
            out = retrieval_layouts.read_karpathy(payload, path, root, split or "test", layouts)
        else:
            raise layouts.error(f"{path} is neither COCO captions nor Karpathy format")
    if not out.captions:
        raise layouts.error(f"{path}: no captions")
    without = len(out.images) - len(set(out.caption_image))
    if without:
        raise layouts.error(f"{path}: {without} images have no caption")
    check_images_exist(out.images, layouts)
    return out


# ---------------------------------------------------------------------------------------------------- Winoground


def load_winoground(data: str | Path) -> WinogroundData:
    """facebook/winoground as downloaded: ``examples.jsonl`` + ``images.zip`` (or ``images/``), its parquet
    files, or a ``save_to_disk`` copy."""
    layouts = catalog.WINOGROUND
    data = Path(data)
    if not data.exists():
        raise layouts.error(f"{data} not found")
    if winoground_layouts.is_saved_dataset(data):
        return winoground_layouts.read_saved(data, layouts)
    if data.is_file() and data.suffix == ".jsonl":
        return winoground_layouts.read_jsonl(data, layouts)
    jsonl = winoground_layouts.find_jsonl(data) if data.is_dir() else None
    if jsonl is not None:
        return winoground_layouts.read_jsonl(jsonl, layouts)
    files = winoground_layouts.find_parquet(data)
    if files:
        return winoground_layouts.read_parquet(files, layouts)
    raise layouts.error(f"{data}: no saved dataset, examples.jsonl or parquet file")


# ------------------------------------------------------------------------------------------------------ MMVP-VLM

MMVP_IMAGE_DIR = "MLLM_VLM Images"
MMVP_PROMPT = "a photo of {}"  # the prompt of MMVP's own evaluate_vlm.py


def load_mmvp(data: str | Path) -> MMVPData:
    import pandas as pd

    data = Path(data)
    csv = data / "Questions.csv"
    if not csv.is_file():
        raise catalog.MMVP.error(f"{csv} not found")
    table = pd.read_csv(csv)
    table.columns = [c.strip() for c in table.columns]
    missing = {"Question ID", "Type", "Statement"} - set(table.columns)
    if missing:
        raise catalog.MMVP.error(f"{csv}: missing columns {sorted(missing)} (has {list(table.columns)})")
    table = table.sort_values("Question ID").reset_index(drop=True)
    if len(table) % 2 or len(table) == 0:
        raise catalog.MMVP.error(f"{csv}: {len(table)} statements; pairs need an even, non-zero count")
    first, second = table.iloc[0::2].reset_index(drop=True), table.iloc[1::2].reset_index(drop=True)
    mixed = (first["Type"] != second["Type"]).to_numpy().nonzero()[0]
    if len(mixed):
        raise catalog.MMVP.error(f"{csv}: pair {int(mixed[0])} mixes two categories")
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
    check_images_exist(out.images_0 + out.images_1, catalog.MMVP)
    return out


# ---------------------------------------------------------------------------------------------------------- MMEB

PHI3_IMAGE_TOKEN = "<|image_1|>"


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
        raise catalog.MMEB.error(f"image root {image_root} not found")
    out = []
    for name in subsets:
        files = sorted((data / name).glob("*.parquet"))
        if not files:
            raise catalog.MMEB.error(f"no parquet files in {data / name}")
        table = pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)
        missing = {"qry_text", "qry_img_path", "tgt_text", "tgt_img_path"} - set(table.columns)
        if missing:
            raise catalog.MMEB.error(f"{data / name}: missing columns {sorted(missing)}")

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
                raise catalog.MMEB.error(
                    f"{name} row {i}: tgt_text and tgt_img_path need the same length >= 2"
                )
        empty_target = [
            i
            for i, (texts, images) in enumerate(zip(subset.target_texts, subset.target_images, strict=True))
            if any(not t and p is None for t, p in zip(texts, images, strict=True))
        ]
        if empty_target:
            raise catalog.MMEB.error(f"{name} row {empty_target[0]}: a candidate without text and image")
        empty = [
            i
            for i, (t, p) in enumerate(zip(subset.query_texts, subset.query_images, strict=True))
            if not t and p is None
        ]
        if empty:
            raise catalog.MMEB.error(f"{name} row {empty[0]}: query without text and image")
        paths = {p for p in subset.query_images if p is not None}
        paths |= {p for row in subset.target_images for p in row if p is not None}
        check_images_exist(sorted(paths), catalog.MMEB)
        out.append(subset)
    return out
