"""What the readers return: plain lists of image sources, texts and labels, validated before any encoding.
Re-exported by :mod:`evaluate.datasets`. ``layout`` names the accepted layout that was read, where a task
accepts several."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from evaluate.layouts.base import ImageInput


@dataclass
class ImageFolderData:
    root: Path
    classes: list[str]  # folder name (wnid) of each class index (all classes, with or without images)
    images: list[Path]
    labels: list[int]
    layout: str = "ImageFolder"

    @property
    def classes_with_images(self) -> int:
        return len(set(self.labels))


@dataclass
class RetrievalData:
    name: str
    images: list[ImageInput]  # paths, or images decoded from an archive
    captions: list[str]
    caption_image: list[int]  # index into images of each caption's image
    split: str
    layout: str = ""


@dataclass
class WinogroundData:
    ids: list[int]
    captions_0: list[str]
    captions_1: list[str]
    images_0: list[ImageInput]  # paths, or images decoded from an archive / parquet / saved dataset
    images_1: list[ImageInput]
    tags: list[str] = field(default_factory=list)
    layout: str = ""


@dataclass
class MMVPData:
    categories: list[str]  # one per pair
    statements_0: list[str]
    statements_1: list[str]
    images_0: list[Path]
    images_1: list[Path]


@dataclass
class MMEBSubset:
    name: str
    query_texts: list[str]
    query_images: list[Path | None]
    target_texts: list[list[str]]
    target_images: list[list[Path | None]]
    layout: str = ""
    annotation: str = "MMEB-eval"  # or "instructions": the newer qry_inst / tgt_inst annotations
    blank_candidates: int = 0  # candidates without text and image, kept as the empty text
    dangling_image_tokens: int = 0  # text-only inputs whose <|image_1|> was removed
