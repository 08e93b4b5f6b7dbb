"""Batched, cached, progress-barred encoding of images, texts and interleaved inputs through the protocol."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from core.fingerprint import file_stamp
from core.protocol import EmbedInput, encode_inputs
from evaluate.cache import FeatureCache

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


def _backbone_stage(model: object, modality: str) -> tuple[str, Callable, Callable] | None:
    """``(fingerprint, backbone fn, head fn)`` when the model exposes a frozen-backbone stage (see
    :class:`core.protocol.FeatureStageModel`), else None."""
    backbone = getattr(model, f"encode_{modality}_backbone", None)
    head = getattr(model, f"encode_{modality}_features", None)
    fingerprint = getattr(model, "backbone_fingerprint", None)
    if not (callable(backbone) and callable(head) and callable(fingerprint)):
        return None
    return fingerprint(modality), backbone, head


def _encode_cached(
    model: object,
    modality: str,
    items: Sequence,
    batches: Callable[[], Iterable],
    cache: FeatureCache,
    batch_size: int,
) -> Tensor:
    """Embed through the model's backbone stage (backbone features cached under the backbone's fingerprint,
    the head applied on every call) or, without one, the whole model (embeddings cached under its own)."""
    stage = _backbone_stage(model, modality)
    if stage is None:
        encode = getattr(model, f"encode_{modality}")

        def compute() -> Tensor:
            return torch.cat([encode(batch, normalize=True).float().cpu() for batch in batches()])

        return F.normalize(cache.get_or_compute(modality, items, compute), dim=-1)
    fingerprint, backbone, head = stage
    backbone_cache = cache.for_fingerprint(fingerprint)
    features = backbone_cache.get_or_compute(
        f"{modality}-backbone",
        items,
        lambda: torch.cat([backbone(batch).float().cpu() for batch in batches()]),
    )
    cache.hits += backbone_cache.hits
    cache.misses += backbone_cache.misses
    out = [
        head(features[i : i + batch_size], normalize=True).float().cpu()
        for i in range(0, len(features), batch_size)
    ]
    return F.normalize(torch.cat(out), dim=-1)


def encode_images(
    model: object,
    sources: Sequence[ImageSource],
    cache: FeatureCache,
    batch_size: int = 64,
    workers: int = 0,
    desc: str = "images",
) -> Tensor:
    """[N, D] L2-normalised image embeddings (float32, CPU), from the cache when present."""

    def batches() -> Iterable[list[Image.Image]]:
        loader = DataLoader(
            _ImageList(sources), batch_size=batch_size, num_workers=workers, collate_fn=_collate_images
        )
        return tqdm(loader, desc=f"encode {desc}", unit="batch")

    return _encode_cached(model, "image", _cache_items(sources), batches, cache, batch_size)


def encode_texts(
    model: object, texts: Sequence[str], cache: FeatureCache, batch_size: int = 256, desc: str = "texts"
) -> Tensor:
    """[N, D] L2-normalised text embeddings (float32, CPU), from the cache when present."""

    def batches() -> Iterable[list[str]]:
        starts = tqdm(range(0, len(texts), batch_size), desc=f"encode {desc}", unit="batch")
        return (list(texts[start : start + batch_size]) for start in starts)

    return _encode_cached(model, "text", list(texts), batches, cache, batch_size)


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
        stat = file_stamp(path) if path else ""
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
