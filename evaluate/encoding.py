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
from core.protocol import EmbeddingModel, EmbedInput, FeatureStageModel, ImageTextModel, encode_inputs
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


def _whole_model_encoder(model: ImageTextModel, modality: str) -> Callable[..., Tensor]:
    return model.encode_image if modality == "image" else model.encode_text


def _backbone_stage(model: ImageTextModel, modality: str) -> tuple[str, Callable, Callable] | None:
    """``(fingerprint, backbone fn, head fn)`` when the model is a :class:`core.protocol.FeatureStageModel`
    (a head over a frozen backbone), else None."""
    if not isinstance(model, FeatureStageModel):
        return None
    if modality == "image":
        return model.backbone_fingerprint(modality), model.encode_image_backbone, model.encode_image_features
    return model.backbone_fingerprint(modality), model.encode_text_backbone, model.encode_text_features


def _encode_cached(
    model: ImageTextModel,
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
        encode = _whole_model_encoder(model, modality)

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
    model: ImageTextModel,
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
    model: ImageTextModel,
    texts: Sequence[str],
    cache: FeatureCache,
    batch_size: int = 256,
    desc: str = "texts",
) -> Tensor:
    """[N, D] L2-normalised text embeddings (float32, CPU), from the cache when present."""

    def batches() -> Iterable[list[str]]:
        starts = tqdm(range(0, len(texts), batch_size), desc=f"encode {desc}", unit="batch")
        return (list(texts[start : start + batch_size]) for start in starts)

    return _encode_cached(model, "text", list(texts), batches, cache, batch_size)


def encode_interleaved(
    model: EmbeddingModel,
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
