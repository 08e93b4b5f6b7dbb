"""A fake model whose embeddings the test chooses, solid-colour images, and writers for each benchmark's
on-disk layout exactly as the public datasets ship."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image

Colour = tuple[int, int, int]

PALETTE: list[Colour] = [
    (230, 25, 25), (25, 200, 25), (25, 25, 230), (240, 240, 30), (30, 230, 230), (230, 30, 230),
    (128, 64, 0), (0, 128, 128), (250, 160, 190), (120, 120, 120), (255, 255, 255), (0, 0, 0),
]  # fmt: skip


def solid_image(colour: Colour, size: int = 24) -> Image.Image:
    return Image.new("RGB", (size, size), colour)


def save_image(path: Path, colour: Colour) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    solid_image(colour).save(path)
    return path


class FakeModel:
    """Follows the evaluate protocol; the test chooses every embedding.

    Images are recognised by their mean colour (nearest key of ``image_vectors``, robust to JPEG); texts by
    exact match in ``text_vectors``, else by the longest key contained in the text (so prompt templates map to
    their class name). Vectors need not be unit length: the evaluator normalises.
    """

    def __init__(
        self,
        image_vectors: dict[Colour, Sequence[float]],
        text_vectors: dict[str, Sequence[float]],
        version: int = 0,
    ) -> None:
        self.image_vectors = {
            tuple(k): torch.tensor(v, dtype=torch.float64) for k, v in image_vectors.items()
        }
        self.text_vectors = {k: torch.tensor(v, dtype=torch.float64) for k, v in text_vectors.items()}
        self.config = {"type": "fake", "version": version}
        self.image_calls = 0
        self.text_calls = 0

    @classmethod
    def from_pretrained(cls, directory: str | Path, device: str = "cpu") -> FakeModel:
        payload = json.loads((Path(directory) / "fake_model.json").read_text())
        images = {tuple(int(c) for c in key.split(",")): v for key, v in payload["images"].items()}
        return cls(images, payload["texts"], payload.get("version", 0))

    def save_pretrained(self, directory: Path) -> Path:
        directory.mkdir(parents=True, exist_ok=True)
        payload = {
            "images": {",".join(map(str, k)): v.tolist() for k, v in self.image_vectors.items()},
            "texts": {k: v.tolist() for k, v in self.text_vectors.items()},
            "version": self.config["version"],
        }
        (directory / "fake_model.json").write_text(json.dumps(payload))
        return directory

    def state_dict(self) -> dict[str, torch.Tensor]:
        state = {f"image.{k}": v for k, v in self.image_vectors.items()}
        return state | {f"text.{k}": v for k, v in self.text_vectors.items()}

    def _image_vector(self, image: Image.Image) -> torch.Tensor:
        pixels = torch.tensor(list(image.convert("RGB").getdata()), dtype=torch.float64).mean(0)
        key = min(
            self.image_vectors,
            key=lambda c: float(((torch.tensor(c, dtype=torch.float64) - pixels) ** 2).sum()),
        )
        return self.image_vectors[key]

    def _text_vector(self, text: str) -> torch.Tensor:
        if text in self.text_vectors:
            return self.text_vectors[text]
        inside = [k for k in self.text_vectors if k in text]
        if not inside:
            raise KeyError(f"FakeModel has no vector for text {text!r}")
        return self.text_vectors[max(inside, key=len)]

    def encode_image(self, images: list[Image.Image], normalize: bool = True) -> torch.Tensor:
        self.image_calls += 1
        out = torch.stack([self._image_vector(im) for im in images])
        return torch.nn.functional.normalize(out, dim=-1).float() if normalize else out.float()

    def encode_text(self, texts: list[str], normalize: bool = True) -> torch.Tensor:
        self.text_calls += 1
        out = torch.stack([self._text_vector(t) for t in texts])
        return torch.nn.functional.normalize(out, dim=-1).float() if normalize else out.float()


class NotAModel:
    """Loads from a directory but has none of the protocol's methods (``load_model`` must reject it)."""

    @classmethod
    def from_pretrained(cls, directory: str | Path, device: str = "cpu") -> NotAModel:
        return cls()


def use_fake_checkpoints(monkeypatch) -> None:
    """Make ``load_model(DIR)`` load :class:`FakeModel` from directories with ``fake_model.json``."""
    from evaluate import models

    loader = models.CheckpointLoader(
        name="fake",
        detect=lambda d: (d / "fake_model.json").is_file(),
        load="evaluate_helpers:FakeModel",
        description="test model",
    )
    monkeypatch.setattr(models, "CHECKPOINT_LOADERS", [loader, *models.CHECKPOINT_LOADERS])


def write_imagefolder(
    root: Path, images: dict[str, list[Colour]], wnids: Sequence[str] | None = None
) -> Path:
    """``root/val/{wnid}/{wnid}_{i}.JPEG`` (+ ``root/wnids.txt``), the ImageNet validation layout."""
    for wnid, colours in images.items():
        for i, colour in enumerate(colours):
            save_image(root / "val" / wnid / f"{wnid}_{i:08d}.JPEG", colour)
    if wnids is not None:
        (root / "wnids.txt").write_text("\n".join(wnids) + "\n")
    return root


def write_coco_captions(
    root: Path, split: str, images: list[Colour], captions: list[tuple[int, str]]
) -> Path:
    """COCO 2017 layout: ``root/{split}/{id:012d}.jpg`` + ``root/annotations/captions_{split}.json``."""
    image_entries = []
    for i, colour in enumerate(images):
        image_id = 1000 + 7 * i
        name = f"{image_id:012d}.jpg"
        save_image(root / split / name, colour)
        image_entries.append(
            {
                "license": 1,
                "file_name": name,
                "coco_url": "",
                "height": 24,
                "width": 24,
                "date_captured": "2013-11-14 11:18:45",
                "flickr_url": "",
                "id": image_id,
            }
        )
    annotations = [
        {"image_id": 1000 + 7 * img, "id": 500 + j, "caption": text} for j, (img, text) in enumerate(captions)
    ]
    payload = {
        "info": {"description": "COCO 2017 Dataset"},
        "licenses": [],
        "images": image_entries,
        "annotations": annotations,
    }
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    path = root / "annotations" / f"captions_{split}.json"
    path.write_text(json.dumps(payload))
    return path


def write_karpathy(
    path: Path,
    image_root: Path,
    dataset: str,
    splits: list[str],
    images: list[Colour],
    captions: list[tuple[int, str]],
) -> Path:
    """Karpathy's dataset_{coco,flickr30k}.json; COCO entries carry a ``filepath`` folder, Flickr30k's do not."""
    entries = []
    for i, (colour, split) in enumerate(zip(images, splits, strict=True)):
        filepath = "val2014" if dataset == "coco" else None
        filename = f"COCO_val2014_{i:012d}.jpg" if dataset == "coco" else f"{1000 + i}.jpg"
        save_image(image_root / (filepath or "") / filename, colour)
        sentences = [
            {"tokens": text.lower().split(), "raw": text, "imgid": i, "sentid": j}
            for j, (img, text) in enumerate(captions)
            if img == i
        ]
        entry = {
            "filename": filename,
            "imgid": i,
            "split": split,
            "sentences": sentences,
            "sentids": [s["sentid"] for s in sentences],
        }
        if filepath:
            entry |= {"filepath": filepath, "cocoid": i}
        entries.append(entry)
    path.write_text(json.dumps({"images": entries, "dataset": dataset}))
    return path


class InterleavedRecorder(FakeModel):
    """A :class:`FakeModel` with its own ``encode(inputs)`` (an interleaved model, like vlm2vec): text first, else
    the image. It records every text it encodes (``seen``, shared by the class so a test sees what a model loaded
    by the CLI did) and raises :class:`Interrupted` on a text containing ``crash_on`` (a run killed mid-way)."""

    seen: list[str] = []
    crash_on: str | None = None

    def encode(self, inputs):
        rows = []
        for item in inputs:
            if self.crash_on and item.text and self.crash_on in item.text:
                raise Interrupted(f"interrupted at {item.text!r}")
            InterleavedRecorder.seen.append(item.text)
            rows.append(self._text_vector(item.text) if item.text else self._image_vector(item.image))
        return torch.stack(rows).float()


class Interrupted(RuntimeError):
    """Stands for a run killed part-way (SIGKILL, preemption)."""


def use_recorder_checkpoints(monkeypatch) -> None:
    """Make ``load_model(DIR)`` load :class:`InterleavedRecorder` from directories with ``fake_model.json``."""
    from evaluate import models

    loader = models.CheckpointLoader(
        name="recorder",
        detect=lambda d: (d / "fake_model.json").is_file(),
        load="evaluate_helpers:InterleavedRecorder",
        description="test model",
    )
    monkeypatch.setattr(models, "CHECKPOINT_LOADERS", [loader, *models.CHECKPOINT_LOADERS])
