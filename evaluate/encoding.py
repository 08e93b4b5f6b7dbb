"""Batched, cached, progress-barred encoding of images, texts and interleaved inputs through the protocol."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from evaluate.cache import FeatureCache
from evaluate.protocol import EmbedInput, encode_inputs

ImageSource = Path | Image.Image


def open_image(source: ImageSource) -> Image.Image:
    if isinstance(source, Image.Image):
        return source.convert("RGB")
    with Image.open(source) as image:
        return image.convert("RGB")


class _ImageList(Dataset):
    def __init__(self, sources: Sequence[ImageSource]) -> None:
        self.sources = sources

    def __len__(self) -> int:
        return len(self.sources)

    def __getitem__(self, index: int) -> Image.Image:
        return open_image(self.sources[index])


def _collate_images(batch: list[Image.Image]) -> list[Image.Image]:
    return batch


def _cache_items(sources: Sequence[ImageSource]) -> list:
    """Paths are hashed by path/size/mtime; in-memory images by their pixels."""
    items: list = []
    for source in sources:
        if isinstance(source, Image.Image):
            items.append(f"pixels:{source.size}:{hashlib.sha256(source.tobytes()).hexdigest()}")
        else:
            items.append(Path(source))
    return items


def encode_images(
    model: object,
    sources: Sequence[ImageSource],
    cache: FeatureCache,
    batch_size: int = 64,
    workers: int = 0,
    desc: str = "images",
) -> Tensor:
    """[N, D] L2-normalised image embeddings (float32, CPU), from the cache when present."""

    def compute() -> Tensor:
        loader = DataLoader(
            _ImageList(sources), batch_size=batch_size, num_workers=workers, collate_fn=_collate_images
        )
        out = []
        for batch in tqdm(loader, desc=f"encode {desc}", unit="batch"):
            out.append(F.normalize(model.encode_image(batch, normalize=True).float(), dim=-1).cpu())
        return torch.cat(out)

    return cache.get_or_compute("image", _cache_items(sources), compute)


def encode_texts(
    model: object, texts: Sequence[str], cache: FeatureCache, batch_size: int = 256, desc: str = "texts"
) -> Tensor:
    """[N, D] L2-normalised text embeddings (float32, CPU), from the cache when present."""

    def compute() -> Tensor:
        out = []
        for start in tqdm(range(0, len(texts), batch_size), desc=f"encode {desc}", unit="batch"):
            batch = list(texts[start : start + batch_size])
            out.append(F.normalize(model.encode_text(batch, normalize=True).float(), dim=-1).cpu())
        return torch.cat(out)

    return cache.get_or_compute("text", list(texts), compute)


def encode_interleaved(
    model: object,
    items: Sequence[tuple[str | None, Path | None, str | None]],
    cache: FeatureCache,
    batch_size: int = 64,
    desc: str = "inputs",
) -> Tensor:
    """Embed (text, image path, instruction) inputs with ``model.encode`` or score fusion (see protocol)."""
    keys = []
    for text, path, instruction in items:
        stat = f"{path.resolve()}|{path.stat().st_size}|{path.stat().st_mtime_ns}" if path else ""
        keys.append(f"{instruction or ''}\x1f{text or ''}\x1f{stat}")

    def compute() -> Tensor:
        out = []
        for start in tqdm(range(0, len(items), batch_size), desc=f"encode {desc}", unit="batch"):
            batch = [
                EmbedInput(
                    text=text or None, image=open_image(path) if path else None, instruction=instruction
                )
                for text, path, instruction in items[start : start + batch_size]
            ]
            out.append(encode_inputs(model, batch).cpu())
        return torch.cat(out)

    return cache.get_or_compute("interleaved", keys, compute)
