"""Batched, cached, progress-barred encoding of images, texts and interleaved inputs through the protocol.

When a process group is active (``torchrun``), each rank encodes a contiguous shard of the inputs (whole
batches, balanced over the ranks), caches it as its own entry and all ranks all-gather the shards, so every rank
returns the full feature matrix, with the numbers of one process (the batches are the same).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from PIL import Image
from torch import Tensor
from torch.distributed import ProcessGroup
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from core.distributed import rank_and_world
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


def _active_group() -> ProcessGroup | None:
    """The default process group when one is joined with several ranks, else None."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return dist.group.WORLD
    return None


def shard_range(total: int, batch_size: int, rank: int, world: int) -> tuple[int, int]:
    """``[start, end)`` of ``rank``'s contiguous shard of ``total`` items: whole batches of ``batch_size``,
    balanced (the first ``batches % world`` ranks take one batch more; the last shard may be short or empty)."""
    batches = -(-total // batch_size)
    base, extra = divmod(batches, world)
    first = rank * base + min(rank, extra)
    count = base + (1 if rank < extra else 0)
    return min(total, first * batch_size), min(total, (first + count) * batch_size)


def _all_gather_rows(local: Tensor | None, group: ProcessGroup) -> Tensor:
    """Concatenate every rank's rows (rank order) on every rank; ``local`` None is an empty shard. Uneven
    shards are padded to the longest for the gather; CPU tensors for gloo, the current CUDA device for NCCL."""
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend(group) == "nccl" else None
    device = device or torch.device("cpu")
    _, world = rank_and_world(group)
    shape = torch.tensor(
        [0, 0] if local is None else [local.shape[0], local[0].numel() if local.shape[0] else 0],
        device=device,
    )
    shapes = [torch.empty_like(shape) for _ in range(world)]
    dist.all_gather(shapes, shape, group=group)
    counts = [int(s[0]) for s in shapes]
    width = max(int(s[1]) for s in shapes)
    longest = max(counts)
    padded = torch.zeros(longest, width, dtype=torch.float32, device=device)
    if local is not None and local.shape[0]:
        padded[: local.shape[0]] = local.reshape(local.shape[0], -1).to(device)
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded, group=group)
    return torch.cat([part[:n] for part, n in zip(parts, counts, strict=True)]).cpu()


def _sharded(
    cache: FeatureCache,
    kind: str,
    items: Sequence,
    compute: Callable[[int, int], Tensor],
    batch_size: int,
) -> Tensor:
    """Features of all ``items``: ``compute(start, end)`` encodes ``items[start:end]``. One process caches one
    entry for everything; in a process group each rank caches its shard (:func:`shard_range`) as its own entry
    and the shards are all-gathered."""
    group = _active_group()
    if group is None:
        return cache.get_or_compute(kind, items, lambda: compute(0, len(items)))
    rank, world = rank_and_world(group)
    start, end = shard_range(len(items), batch_size, rank, world)
    local = None
    if end > start:
        local = cache.get_or_compute(kind, items, lambda: compute(start, end), shard=(start, end))
    return _all_gather_rows(local, group)


def encode_sharded(
    cache: FeatureCache,
    kind: str,
    keys: Sequence,
    compute: Callable[[int, int], Tensor],
    batch_size: int,
) -> Tensor:
    """Features of ``keys`` (cache keys, one per input) where ``compute(start, end)`` encodes inputs
    ``start`` to ``end``: cached as one entry, or under torchrun as each rank's shard, all-gathered."""
    return _sharded(cache, kind, keys, compute, batch_size)


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
    batches: Callable[[int, int], Iterable],
    cache: FeatureCache,
    batch_size: int,
) -> Tensor:
    """Embed through the model's backbone stage (backbone features cached under the backbone's fingerprint,
    the head applied on every call) or, without one, the whole model (embeddings cached under its own).
    ``batches(start, end)`` yields the batches of inputs ``start`` to ``end``."""
    stage = _backbone_stage(model, modality)
    if stage is None:
        encode = _whole_model_encoder(model, modality)

        def compute(start: int, end: int) -> Tensor:
            return torch.cat([encode(batch, normalize=True).float().cpu() for batch in batches(start, end)])

        return F.normalize(_sharded(cache, modality, items, compute, batch_size), dim=-1)
    fingerprint, backbone, head = stage
    backbone_cache = cache.for_fingerprint(fingerprint)
    features = _sharded(
        backbone_cache,
        f"{modality}-backbone",
        items,
        lambda start, end: torch.cat([backbone(batch).float().cpu() for batch in batches(start, end)]),
        batch_size,
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

    def batches(start: int, end: int) -> Iterable[list[Image.Image]]:
        loader = DataLoader(
            _ImageList(sources[start:end]),
            batch_size=batch_size,
            num_workers=workers,
            collate_fn=_collate_images,
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

    def batches(start: int, end: int) -> Iterable[list[str]]:
        starts = tqdm(range(start, end, batch_size), desc=f"encode {desc}", unit="batch")
        return (list(texts[first : min(end, first + batch_size)]) for first in starts)

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

    def compute(start: int, end: int) -> Tensor:
        out = []
        for first in tqdm(range(start, end, batch_size), desc=f"encode {desc}", unit="batch"):
            batch = [
                EmbedInput(
                    text=text if text or not path else None,  # "" without an image: the empty text
                    image=open_image(path) if path else None,
                    instruction=instruction,
                )
                for text, path, instruction in items[first : min(end, first + batch_size)]
            ]
            out.append(encode_inputs(model, batch).float().cpu())
        return torch.cat(out)

    return _sharded(cache, "interleaved", keys, compute, batch_size)
