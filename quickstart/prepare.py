"""Lay out the quickstart's data: training manifests, a held-out validation carve and the unseen-class split.

Training pairs are COCO-MINI train images with their captions plus ImageNet-sample images of the *seen*
classes captioned by class prompts; the other classes stay unseen for zero-shot evaluation. A few COCO train
images are held out as a validation split (used to choose the recipe, never the evaluation sets).

Everything written is a small text table or a folder of symlinks; images are read in place.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES, OPENAI_IMAGENET_TEMPLATES

# Five OpenAI templates (by index) caption each seen-class image; evaluation uses all 80.
TRAIN_TEMPLATE_INDICES = (39, 0, 20, 12, 61)
CAPTIONS_PER_IMAGE = 5
CAPTION_COLUMNS = tuple(f"caption_{i}" for i in range(CAPTIONS_PER_IMAGE))


@dataclass(frozen=True)
class SplitConfig:
    """How the sample data is split; saved as ``split.json`` beside the manifests."""

    data_root: str
    seen_fraction: float = 0.5
    val_images: int = 0
    seed: int = 0
    limit_classes: int | None = None
    limit_coco_images: int | None = None


@dataclass(frozen=True)
class QuickstartLayout:
    """Paths written by :func:`prepare`, relative to its output folder."""

    root: Path

    @property
    def train_manifest(self) -> Path:
        return self.root / "train.csv"

    @property
    def val_manifest(self) -> Path:
        return self.root / "val.csv"

    @property
    def unseen_imagefolder(self) -> Path:
        return self.root / "imagenet-unseen"

    @property
    def unseen_classes(self) -> Path:
        return self.root / "unseen_wnids.txt"

    @property
    def unseen_classnames(self) -> Path:
        return self.root / "unseen_classnames.txt"

    @property
    def split(self) -> Path:
        return self.root / "split.json"


def _coco_pairs(data_root: Path, limit: int | None) -> list[tuple[str, str, list[str]]]:
    """(key, image path relative to data_root, captions) of COCO-MINI train, in image-id order."""
    annotations = data_root / "coco-mini" / "annotations" / "captions_train2017.json"
    if not annotations.is_file():
        raise FileNotFoundError(
            f"{annotations} not found: --data-root must hold coco-mini/ (see ../shared/data)"
        )
    coco = json.loads(annotations.read_text())
    captions: dict[int, list[str]] = defaultdict(list)
    for ann in sorted(coco["annotations"], key=lambda a: a["id"]):
        captions[ann["image_id"]].append(ann["caption"].strip())
    rows = [
        (
            f"coco/{img['id']}",
            f"coco-mini/train2017/{img['file_name']}",
            captions[img["id"]][:CAPTIONS_PER_IMAGE],
        )
        for img in sorted(coco["images"], key=lambda i: i["id"])
        if captions[img["id"]]
    ]
    return rows[:limit]


def _imagenet_images(data_root: Path) -> tuple[list[str], dict[str, list[Path]]]:
    """All 1000 wnids in class-index order, and the sample's images per wnid."""
    root = data_root / "imagenet-sample"
    wnids_file = root / "wnids.txt"
    if not wnids_file.is_file():
        raise FileNotFoundError(f"{wnids_file} not found: --data-root must hold imagenet-sample/")
    wnids = wnids_file.read_text().split()
    if len(wnids) != len(IMAGENET_CLASSNAMES):
        raise ValueError(f"{wnids_file} lists {len(wnids)} wnids, expected {len(IMAGENET_CLASSNAMES)}")
    images = {
        wnid: sorted(p for p in (root / "val" / wnid).iterdir() if p.is_file())
        for wnid in wnids
        if (root / "val" / wnid).is_dir()
    }
    return wnids, images


def prepare(out: str | os.PathLike, config: SplitConfig) -> QuickstartLayout:
    """Write the manifests, the unseen-class ImageFolder (symlinks) and ``split.json`` into ``out``."""
    data_root = Path(config.data_root)
    layout = QuickstartLayout(Path(out))
    coco = _coco_pairs(data_root, config.limit_coco_images)
    wnids, images = _imagenet_images(data_root)
    if not 0 <= config.val_images < len(coco):
        raise ValueError(f"--val-images {config.val_images} leaves no COCO training images (of {len(coco)})")

    rng = np.random.default_rng(config.seed)
    present = [w for w in wnids if w in images]
    if config.limit_classes is not None:
        present = sorted(
            rng.choice(present, size=config.limit_classes, replace=False).tolist(), key=wnids.index
        )
    shuffled = rng.permutation(present).tolist()
    n_seen = round(config.seen_fraction * len(shuffled))
    seen = sorted(shuffled[:n_seen], key=wnids.index)
    unseen = sorted(shuffled[n_seen:], key=wnids.index)
    val_rows = set(rng.choice(len(coco), size=config.val_images, replace=False).tolist())

    def coco_record(key: str, image: str, captions: list[str]) -> dict[str, str]:
        return {"key": key, "image": image} | dict(zip(CAPTION_COLUMNS, captions, strict=False))

    train = [coco_record(*row) for i, row in enumerate(coco) if i not in val_rows]
    val = [coco_record(*row) for i, row in enumerate(coco) if i in val_rows]
    templates = [OPENAI_IMAGENET_TEMPLATES[i] for i in TRAIN_TEMPLATE_INDICES]
    for wnid in seen:
        name = IMAGENET_CLASSNAMES[wnids.index(wnid)]
        for path in images[wnid]:
            rel = path.relative_to(data_root).as_posix()
            train.append(
                {"key": f"imagenet/{wnid}/{path.stem}", "image": rel}
                | {
                    column: template(name)
                    for column, template in zip(CAPTION_COLUMNS, templates, strict=True)
                }
            )

    layout.root.mkdir(parents=True, exist_ok=True)
    columns = ["key", "image", *CAPTION_COLUMNS]
    pd.DataFrame(train, columns=columns).to_csv(layout.train_manifest, index=False)
    pd.DataFrame(val, columns=columns).to_csv(layout.val_manifest, index=False)

    folder = layout.unseen_imagefolder / "val"
    folder.mkdir(parents=True, exist_ok=True)
    for wnid in unseen:
        link = folder / wnid
        if not link.exists():
            link.symlink_to(
                (data_root / "imagenet-sample" / "val" / wnid).resolve(), target_is_directory=True
            )
    (layout.unseen_imagefolder / "wnids.txt").write_text("\n".join(wnids) + "\n")
    layout.unseen_classes.write_text("\n".join(unseen) + "\n")
    names = [IMAGENET_CLASSNAMES[wnids.index(w)] for w in unseen]
    layout.unseen_classnames.write_text("\n".join(names) + "\n")
    summary = {
        "config": asdict(config),
        "train_pairs": {
            "coco_images": len(coco) - len(val_rows),
            "imagenet_images": sum(len(images[w]) for w in seen),
        },
        "val_coco_images": len(val_rows),
        "seen_classes": seen,
        "unseen_classes": unseen,
        "train_templates": [t("{}") for t in templates],
    }
    layout.split.write_text(json.dumps(summary, indent=2) + "\n")
    return layout
