"""A small real align checkpoint for the integration tests: a random linear head over the two offline backbones
(efficientnet-lite0, all-MiniLM-L6-v2), and slices of the sample data in the layouts the integrations read."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch

from align import AlignedModel, AlignmentHead, HeadConfig

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
COCO = DATA / "coco-mini"
IMAGENET = DATA / "imagenet-sample"


def random_head_checkpoint(
    directory: Path, target_dim: int = 64, seed: int = 0, loss: str = "siglip"
) -> Path:
    """A saved align checkpoint whose head is random (seeded): embeddings are real functions of real inputs."""
    if not COCO.is_dir() or not IMAGENET.is_dir():
        raise FileNotFoundError(
            f"sample data missing at {DATA} (../shared/data relative to the repository root)"
        )
    torch.manual_seed(seed)
    head = HeadConfig(head="linear", image_dim=1280, text_dim=384, target_dim=target_dim)
    config = {
        "format": "align-head",
        "head": dataclasses.asdict(head),
        "loss": loss,
        "image_backbone": {"model": "efficientnet-lite0"},
        "text_backbone": {"model": "all-MiniLM-L6-v2"},
    }
    return AlignedModel(AlignmentHead(head), config).save_pretrained(directory)


def coco_slice(directory: Path, n_images: int) -> tuple[Path, Path]:
    """The first ``n_images`` COCO-MINI val images with all their captions: (captions JSON, image folder)."""
    payload = json.loads((COCO / "annotations" / "captions_val2017.json").read_text())
    images = sorted(payload["images"], key=lambda im: im["id"])[:n_images]
    keep = {im["id"] for im in images}
    subset = dict(
        payload, images=images, annotations=[a for a in payload["annotations"] if a["image_id"] in keep]
    )
    directory.mkdir(parents=True, exist_ok=True)
    annotations = directory / "captions_val2017.json"
    annotations.write_text(json.dumps(subset))
    return annotations, COCO / "val2017"


def imagenet_slice(directory: Path, n_classes: int) -> tuple[Path, list[str]]:
    """An ImageFolder of the first ``n_classes`` sample classes (links to the images) and their wnids."""
    wnids = sorted(p.name for p in (IMAGENET / "val").iterdir() if p.is_dir())[:n_classes]
    for wnid in wnids:
        (directory / wnid).mkdir(parents=True)
        for image in (IMAGENET / "val" / wnid).iterdir():
            (directory / wnid / image.name).symlink_to(image)
    return directory, wnids
