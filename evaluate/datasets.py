"""Readers for every benchmark, in the layouts the public datasets are downloaded in (the accepted layouts of
each task, one line each with the files it needs, are in :mod:`evaluate.layouts.catalog`; the format-specific
readers in :mod:`evaluate.layouts`). Each reader validates the whole layout (files, columns, image files) and
raises :class:`LayoutError` listing the accepted layouts *before* any encoding happens; it returns plain lists of
image sources (paths, or images decoded from an archive or a parquet column) and texts.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Sequence
from pathlib import Path

from core.protocol import IMAGE_PLACEHOLDER
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
from evaluate.references import MMEB_DATASETS

logger = logging.getLogger(__name__)

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

PHI3_IMAGE_TOKEN = IMAGE_PLACEHOLDER  # "<|image_1|>", where MMEB's texts put the image
MMEB_SPLIT = "test"
_DANGLING = re.compile(r"[ \t]*" + re.escape(PHI3_IMAGE_TOKEN) + r"[ \t]*")
MMEB_COLUMNS = ("qry_text", "qry_img_path", "tgt_text", "tgt_img_path")
# The newer image-task annotations (VLM2Vec-V2's MMEB-V2 image-query files): a separate instruction per side,
# classification and QA rows without tgt_img_path; composed as the reference's parser of each dataset does
# (experiments/public/eval/image.yaml -> src/data/eval_dataset/image_{cls,qa,i2t,t2i,i2i_vg}*.py).
V2_COLUMNS = ("qry_inst", "qry_text", "tgt_text")
_V2_PARSERS = {
    **{d.name: "cls" for d in MMEB_DATASETS if d.meta_task == "classification"},
    **{d.name: "qa" for d in MMEB_DATASETS if d.meta_task == "vqa"},
    **{d.name: "i2i_vg" for d in MMEB_DATASETS if d.meta_task in ("retrieval", "grounding")},
    **{n: "i2t" for n in ("MSCOCO_i2t", "VisualNews_i2t")},
    **{n: "t2i" for n in ("VisDial", "MSCOCO_t2i", "VisualNews_t2i", "WebQA", "EDIS", "Wiki-SS-NQ")},
}


def drop_placeholder(text: str) -> str:
    """``text`` without ``<|image_1|>`` and the spaces or tabs around it (one space stays between words); other
    whitespace, a trailing newline included, stays (as ``vlm2vec`` cleans MMEB-train's text-only inputs)."""

    def replace(match: re.Match) -> str:
        start, end = match.start(), match.end()
        at_edge = start == 0 or end == len(text) or text[start - 1] == "\n" or text[end] == "\n"
        return "" if at_edge else " "

    return _DANGLING.sub(replace, text)


def _cells(value: object) -> list:
    if value is None or (isinstance(value, float) and value != value):
        return []
    if isinstance(value, str):
        return [value]
    return list(value)


def _text(value: object) -> str:
    return "" if value is None or (isinstance(value, float) and value != value) else str(value)


def _image_prompt(body: str) -> str:
    """The reference's ``process_input_text(body, add_image_token=True)`` (image token + " " + body) followed by
    its ``.replace(" \n", "\n")``, with MMEB's placeholder standing for the family's image token."""
    return f"{PHI3_IMAGE_TOKEN} {body}".replace(" \n", "\n")


def _v2_row(parser: str, name: str, row: dict) -> tuple[str, str, list[str], list[str]]:
    """(query text, query image, candidate texts, candidate images) of one newer-annotation row."""
    inst, text = _text(row.get("qry_inst")), _text(row.get("qry_text"))
    captions = [_text(c) for c in _cells(row.get("tgt_text"))]
    paths = [_text(p) for p in _cells(row.get("tgt_img_path"))] or [""] * len(captions)
    if parser in ("cls", "qa", "i2t", "i2i_vg"):
        inst = inst.replace(PHI3_IMAGE_TOKEN, "")
        if parser in ("qa", "i2i_vg"):
            inst = "\n" + inst.strip()
        query = _image_prompt(f"{inst} {text}" if text else inst) + "\n"
        image = _text(row.get("qry_img_path"))
    else:  # t2i: a text query, the instruction kept as it is
        query, image = f"{inst} {text}\n" + ("\n" if name == "VisDial" else ""), ""
    if parser in ("cls", "qa", "i2t"):
        return query, image, captions, paths
    target_inst = _text(row.get("tgt_inst")).replace(PHI3_IMAGE_TOKEN, "")
    if captions and captions[0].strip():
        candidates = [_image_prompt(f"{target_inst} {c}") + "\n" for c in captions]
    else:
        candidates = [_image_prompt(target_inst) + ("\n" if parser == "t2i" else "")] * len(paths)
    return query, image, candidates, paths


def _mmeb_files(data: Path, name: str) -> tuple[list[Path], str]:
    folder = data / name
    flat = sorted(folder.glob("*.parquet"))
    if flat:
        return flat, "TIGER-Lab/MMEB-eval"
    converted = sorted((folder / MMEB_SPLIT).glob("*.parquet"))
    if converted:
        return converted, "parquet conversion"
    if not folder.is_dir():
        raise catalog.MMEB.error(f"no MMEB dataset folder {folder}")
    others = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*.parquet"))
    found = f" (found {others[:3]}, not split {MMEB_SPLIT!r})" if others else ""
    raise catalog.MMEB.error(f"no parquet files in {folder} or {folder / MMEB_SPLIT}{found}")


def _read_subset(name: str, table, image_root: Path) -> MMEBSubset:
    columns = set(table.columns)
    if "qry_inst" in columns:
        missing, annotation = sorted(set(V2_COLUMNS) - columns), "instructions"
    else:
        missing, annotation = sorted(set(MMEB_COLUMNS) - columns), "MMEB-eval"
    if missing:
        raise catalog.MMEB.error(
            f"{name}: missing columns {missing} (has {sorted(columns)}); MMEB-eval rows have "
            f"{list(MMEB_COLUMNS)}, the newer annotations {list(V2_COLUMNS)} [+ qry_img_path, tgt_inst, "
            "tgt_img_path]"
        )
    queries, query_images, targets, target_images = [], [], [], []
    for row in table.to_dict("records"):
        if annotation == "instructions":
            query, image, texts, paths = _v2_row(_V2_PARSERS[name], name, row)
        else:
            query, image = _text(row["qry_text"]), _text(row["qry_img_path"])
            texts = [_text(t) for t in _cells(row["tgt_text"])]
            paths = [_text(p) for p in _cells(row["tgt_img_path"])]
        queries.append(query)
        query_images.append(image)
        targets.append(texts)
        target_images.append(paths)
    subset = MMEBSubset(name, [], [], [], [], annotation=annotation)

    def path(value: str) -> Path | None:
        return image_root / value if value.strip() else None

    def text_of(text: str, image: Path | None) -> str:
        """Verbatim (MMEB's trailing newline kept); a dangling placeholder of a text-only input removed, a blank
        input without image the empty text."""
        if image is None and PHI3_IMAGE_TOKEN in text:
            subset.dangling_image_tokens += 1
            text = drop_placeholder(text)
        return text

    for i, (query, image, texts, paths) in enumerate(
        zip(queries, query_images, targets, target_images, strict=True)
    ):
        if len(texts) != len(paths) or len(texts) < 2:
            raise catalog.MMEB.error(f"{name} row {i}: tgt_text and tgt_img_path need the same length >= 2")
        query_path = path(image)
        query_text = text_of(query, query_path)
        if not query_text.strip() and query_path is None:
            raise catalog.MMEB.error(f"{name} row {i}: query without text and image")
        subset.query_texts.append(query_text)
        subset.query_images.append(query_path)
        row_texts, row_images = [], []
        for text, value in zip(texts, paths, strict=True):
            candidate_path = path(value)
            candidate = text_of(text, candidate_path)
            if not candidate.strip() and candidate_path is None:
                subset.blank_candidates += 1
                candidate = ""
            row_texts.append(candidate)
            row_images.append(candidate_path)
        subset.target_texts.append(row_texts)
        subset.target_images.append(row_images)
    return subset


def load_mmeb(
    data: str | Path, subsets: Sequence[str], image_root: str | Path | None = None
) -> list[MMEBSubset]:
    """MMEB datasets as distributed (see :data:`MMEB_LAYOUT`), every one validated before any is scored. Texts
    are kept verbatim (MMEB's trailing newline and its ``<|image_1|>`` placeholder included, so an interleaved
    model prompts a row as in training; two-tower models get them without the placeholder, see
    ``core.protocol.input_text``); a text-only input's dangling placeholder is removed, a blank candidate (no
    text, no image) is kept as the empty text; both are counted."""
    import pandas as pd

    data = Path(data)
    image_root = Path(image_root) if image_root else data / "eval_images"
    if not image_root.is_dir():
        raise catalog.MMEB.error(f"image root {image_root} not found")
    unknown = sorted(set(subsets) - set(_V2_PARSERS))
    if unknown:
        raise catalog.MMEB.error(f"unknown MMEB datasets {unknown}; known: {[d.name for d in MMEB_DATASETS]}")
    out = []
    for name in subsets:
        files, layout = _mmeb_files(data, name)
        subset = _read_subset(
            name, pd.concat([pd.read_parquet(f) for f in files], ignore_index=True), image_root
        )
        subset.layout = layout
        out.append(subset)
    paths = {p for s in out for p in s.query_images if p is not None}
    paths |= {p for s in out for row in s.target_images for p in row if p is not None}
    check_images_exist(sorted(paths), catalog.MMEB)
    blank = {s.name: s.blank_candidates for s in out if s.blank_candidates}
    dangling = {s.name: s.dangling_image_tokens for s in out if s.dangling_image_tokens}
    logger.info(
        "MMEB: %d datasets (%s); blank candidates kept as the empty text: %d%s; dangling %s removed from %d "
        "text-only inputs%s",
        len(out),
        ", ".join(sorted({f"{s.layout}, {s.annotation}" for s in out})),
        sum(blank.values()),
        f" {blank}" if blank else "",
        PHI3_IMAGE_TOKEN,
        sum(dangling.values()),
        f" {dangling}" if dangling else "",
    )
    return out
