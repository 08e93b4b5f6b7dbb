"""Training pairs from HDF5 feature stores: join, validate, shuffle and assemble batches without per-row Python.

Pairs are (image row, caption row[, extra caption row]): every valid caption of every caption store whose image
is in the image store and valid. Several caption stores give several captions per image; an extra-text store
gives each image a second positive caption (SAIL's ``extra_text``, the first valid one per image is used).
Invalid rows are dropped and counted (:attr:`AlignmentData.dropped`).

Order: epoch ``e`` uses a permutation drawn from ``numpy.random.default_rng([seed, e])``, so any (epoch, batch)
can be rebuilt after a resume without saved RNG state. ``drop_last``: ``steps_per_epoch = pairs // batch``.

Modes: ``ram`` holds the features in host memory (store dtype) and gathers a batch with one indexing op per
modality; ``gpu`` does the same on the GPU; ``stream`` reads from HDF5 in blocks of ``stream_block`` consecutive
pairs, visited in a random order with the pairs shuffled inside each block (block shuffling), for data that does
not fit in memory. ``auto`` picks gpu, then ram, then stream by the memory available.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from encode.store import FeatureStore, IncompleteStoreError, StoreError, StoreMeta

log = logging.getLogger(__name__)
DATA_MODES = ("auto", "ram", "gpu", "stream")
# Store attrs that must agree between stores of one modality (caption_column and source may differ).
SAME_MODEL_FIELDS = ("model", "model_revision", "pooling", "dim", "instruction", "max_length", "normalized")


class DataError(ValueError):
    """The feature stores cannot be trained on as given; the message says what to do."""


@dataclass
class Batch:
    image: Tensor
    text: Tensor
    extra_text: Tensor | None = None


def open_store(path: str | os.PathLike, modality: str, role: str) -> FeatureStore:
    try:
        store = FeatureStore(path)
    except IncompleteStoreError as err:
        raise DataError(f"{role} store: {err}") from err
    except StoreError as err:
        raise DataError(f"{role} store: {err}") from err
    if store.meta.modality != modality:
        store.close()
        raise DataError(
            f"{role} store {path} holds {store.meta.modality} features, expected {modality}; "
            "check the order of --image-features / --text-features"
        )
    if store.dim != store.meta.dim:
        store.close()
        raise DataError(
            f"{role} store {path}: features have dim {store.dim} but its attrs say {store.meta.dim}"
        )
    if modality == "text" and store.image_keys is None:
        store.close()
        raise DataError(f"{role} store {path} has no image_keys, so its captions cannot be joined to images")
    return store


def check_same_model(stores: Sequence[FeatureStore], role: str) -> None:
    """All stores of one modality must come from the same backbone, pooling and settings."""
    first = stores[0]
    for other in stores[1:]:
        diffs = [
            f"{name}: {getattr(first.meta, name)!r} in {first.path} != {getattr(other.meta, name)!r} in {other.path}"
            for name in SAME_MODEL_FIELDS
            if getattr(first.meta, name) != getattr(other.meta, name)
        ]
        if diffs:
            raise DataError(
                f"{role} stores come from different models or settings and cannot be mixed: "
                + "; ".join(diffs)
                + ". Encode all of them with the same backbone."
            )


def backbone_info(meta: StoreMeta) -> dict:
    """The backbone description saved in checkpoints (what AlignedModel needs to rebuild the encoder)."""
    info = {
        "model": meta.model,
        "revision": meta.model_revision,
        "pooling": meta.pooling,
        "dim": meta.dim,
        "normalized": meta.normalized,
    }
    if meta.modality == "text":
        info.update(instruction=meta.instruction, max_length=meta.max_length)
    return info


def _available_ram() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")


def _read_rows(store: FeatureStore, rows: np.ndarray, max_gap: int = 256) -> np.ndarray:
    """Rows in the given order, read as a few contiguous ranges (rows are usually clustered)."""
    unique, inverse = np.unique(rows, return_inverse=True)
    breaks = np.flatnonzero(np.diff(unique) > max_gap) + 1
    parts = [
        store.read(int(run[0]), int(run[-1]) + 1, store.meta.dtype)[run - run[0]]
        for run in np.split(unique, breaks)
    ]
    return np.concatenate(parts)[inverse]


class AlignmentData:
    """Joined training pairs with deterministic per-epoch order and vectorised batch assembly."""

    def __init__(
        self,
        image_path: str | os.PathLike,
        text_paths: Sequence[str | os.PathLike],
        extra_text_paths: Sequence[str | os.PathLike] = (),
        *,
        batch_size: int,
        seed: int = 0,
        mode: str = "auto",
        device: str | torch.device = "cpu",
        rank: int = 0,
        world_size: int = 1,
        stream_block: int = 65536,
    ) -> None:
        if mode not in DATA_MODES:
            raise DataError(f"unknown data mode {mode!r}; choose one of {', '.join(DATA_MODES)}")
        if not text_paths:
            raise DataError("give at least one caption store (--text-features)")
        if batch_size <= 0 or batch_size % world_size:
            raise DataError(
                f"batch size {batch_size} must be positive and divisible by the {world_size} processes"
            )
        self.batch_size = batch_size
        self.local_batch = batch_size // world_size
        self.rank = rank
        self.seed = seed
        self.device = torch.device(device)
        self.stream_block = stream_block
        self.image_store = open_store(image_path, "image", "image")
        self.text_stores = [open_store(p, "text", "caption") for p in text_paths]
        self.extra_stores = [open_store(p, "text", "extra-text") for p in extra_text_paths]
        check_same_model(self.text_stores + self.extra_stores, "caption and extra-text")
        self.image_meta = self.image_store.meta
        self.text_meta = self.text_stores[0].meta
        self.dropped: dict[str, int] = {}
        self._build_pairs()
        self.num_pairs = len(self.pair_text)
        self.steps_per_epoch = self.num_pairs // batch_size
        if self.steps_per_epoch == 0:
            raise DataError(
                f"only {self.num_pairs} valid pairs for a batch of {batch_size}: lower --batch-size "
                f"to at most {self.num_pairs} (batches are drop_last)"
            )
        self.mode = self._choose_mode(mode)
        self._order_cache: tuple[int, Tensor] | None = None
        self._blocks: dict[int, tuple[Tensor, Tensor, Tensor | None]] = {}
        if self.mode in ("ram", "gpu"):
            self._load_in_memory()

    # ----- joining -----------------------------------------------------------------------------------------
    def _join(self, store: FeatureStore, role: str) -> tuple[np.ndarray, np.ndarray]:
        """(image row, valid) per caption row; raises when no caption's image key is in the image store."""
        image_rows = store.join(self.image_store)
        missing = int((image_rows < 0).sum())
        if missing == len(image_rows):
            raise DataError(
                f"no key of {role} store {store.path} joins the image store {self.image_store.path} "
                f"(e.g. caption image key {store.image_keys[0]!r}, image key {self.image_store.keys[0]!r}); "
                "encode both from the same dataset"
            )
        if missing:
            self.dropped[f"{role} rows whose image is not in the image store"] = (
                self.dropped.get(f"{role} rows whose image is not in the image store", 0) + missing
            )
        return image_rows, store.valid & (image_rows >= 0)

    def _build_pairs(self) -> None:
        image_valid = self.image_store.valid
        self.dropped["invalid images"] = int((~image_valid).sum())
        pair_image, pair_text, offset, invalid_captions = [], [], 0, 0
        self.text_offsets = []
        for store in self.text_stores:
            image_rows, ok = self._join(store, "caption")
            invalid_captions += int((~store.valid).sum())
            ok &= image_valid[np.maximum(image_rows, 0)]
            rows = np.flatnonzero(ok)
            pair_image.append(image_rows[rows])
            pair_text.append(rows + offset)
            self.text_offsets.append(offset)
            offset += len(store)
        self.dropped["invalid captions"] = invalid_captions
        pair_image = np.concatenate(pair_image)
        pair_text = np.concatenate(pair_text)
        pair_extra = None
        if self.extra_stores:
            extra_of_image = np.full(len(self.image_store), -1, dtype=np.int64)
            offset = 0
            self.extra_offsets = []
            for store in self.extra_stores:
                image_rows, ok = self._join(store, "extra-text")
                rows = np.flatnonzero(ok)[::-1]  # reversed so the first valid caption per image wins
                extra_of_image[image_rows[rows]] = rows + offset
                self.extra_offsets.append(offset)
                offset += len(store)
            pair_extra = extra_of_image[pair_image]
            has_extra = pair_extra >= 0
            self.dropped["pairs whose image has no valid extra text"] = int((~has_extra).sum())
            pair_image, pair_text, pair_extra = (
                pair_image[has_extra],
                pair_text[has_extra],
                pair_extra[has_extra],
            )
        self.pair_image = pair_image.astype(np.int64)
        self.pair_text = pair_text.astype(np.int64)
        self.pair_extra = None if pair_extra is None else pair_extra.astype(np.int64)
        self.dropped = {k: v for k, v in self.dropped.items() if v}
        for reason, count in self.dropped.items():
            log.warning("dropped %d %s", count, reason)
        if len(self.pair_text) == 0:
            raise DataError("no valid (image, caption) pairs: every row is invalid or unjoined")

    # ----- memory ------------------------------------------------------------------------------------------
    def feature_bytes(self) -> int:
        stores = [self.image_store, *self.text_stores, *self.extra_stores]
        return sum(len(s) * s.dim * np.dtype(s.meta.dtype).itemsize for s in stores)

    def _choose_mode(self, mode: str) -> str:
        needed = self.feature_bytes()
        if mode == "gpu" and self.device.type != "cuda":
            raise DataError("--data-mode gpu needs a CUDA device")
        if mode != "auto":
            return mode
        if self.device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(self.device)
            if needed < 0.4 * free:
                return "gpu"
        return "ram" if needed < 0.5 * _available_ram() else "stream"

    def _load_in_memory(self) -> None:
        target = self.device if self.mode == "gpu" else torch.device("cpu")

        def load(stores: list[FeatureStore]) -> Tensor:
            return torch.from_numpy(np.concatenate([s.load(s.meta.dtype) for s in stores])).to(target)

        self.image = torch.from_numpy(self.image_store.load(self.image_meta.dtype)).to(target)
        self.text = load(self.text_stores)
        self.extra = load(self.extra_stores) if self.extra_stores else None
        self._pair_image = torch.from_numpy(self.pair_image).to(target)
        self._pair_text = torch.from_numpy(self.pair_text).to(target)
        self._pair_extra = None if self.pair_extra is None else torch.from_numpy(self.pair_extra).to(target)

    # ----- order -------------------------------------------------------------------------------------------
    def epoch_order(self, epoch: int) -> Tensor:
        """Pair indices of ``epoch`` in visiting order (a pure function of seed and epoch)."""
        if self._order_cache is not None and self._order_cache[0] == epoch:
            return self._order_cache[1]
        rng = np.random.default_rng([self.seed, epoch])
        if self.mode == "stream":
            n_blocks = -(-self.num_pairs // self.stream_block)
            parts = []
            for block in rng.permutation(n_blocks):
                start = block * self.stream_block
                stop = min(start + self.stream_block, self.num_pairs)
                parts.append(start + rng.permutation(stop - start))
            order = np.concatenate(parts)
        else:
            order = rng.permutation(self.num_pairs)
        tensor = torch.from_numpy(order)
        if self.mode == "gpu":
            tensor = tensor.to(self.device)
        self._order_cache = (epoch, tensor)
        return tensor

    # ----- batches -----------------------------------------------------------------------------------------
    def batch(self, epoch: int, index: int) -> Batch:
        """This process's slice of global batch ``index`` of ``epoch``, as float32 on the training device."""
        if not 0 <= index < self.steps_per_epoch:
            raise IndexError(f"batch {index} out of range [0, {self.steps_per_epoch})")
        start = index * self.batch_size + self.rank * self.local_batch
        pairs = self.epoch_order(epoch)[start : start + self.local_batch]
        if self.mode == "stream":
            image, text, extra = self._stream_gather(pairs)
        else:
            image = self.image[self._pair_image[pairs]]
            text = self.text[self._pair_text[pairs]]
            extra = None if self.extra is None else self.extra[self._pair_extra[pairs]]

        def out(x: Tensor | None) -> Tensor | None:
            return None if x is None else x.to(self.device, non_blocking=True).float()

        return Batch(out(image), out(text), out(extra))

    def _read_text(self, stores: list[FeatureStore], offsets: list[int], rows: np.ndarray) -> np.ndarray:
        out = np.empty((len(rows), stores[0].dim), dtype=stores[0].meta.dtype)
        bounds = [*offsets, offsets[-1] + len(stores[-1])]
        for i, store in enumerate(stores):
            mask = (rows >= bounds[i]) & (rows < bounds[i + 1])
            if mask.any():
                out[mask] = _read_rows(store, rows[mask] - bounds[i])
        return out

    def _load_block(self, block: int) -> tuple[Tensor, Tensor, Tensor | None]:
        if block not in self._blocks:
            if len(self._blocks) >= 2:
                self._blocks.pop(next(iter(self._blocks)))
            sl = slice(block * self.stream_block, (block + 1) * self.stream_block)
            image = torch.from_numpy(_read_rows(self.image_store, self.pair_image[sl]))
            text = torch.from_numpy(self._read_text(self.text_stores, self.text_offsets, self.pair_text[sl]))
            extra = None
            if self.pair_extra is not None:
                extra = torch.from_numpy(
                    self._read_text(self.extra_stores, self.extra_offsets, self.pair_extra[sl])
                )
            self._blocks[block] = (image, text, extra)
        return self._blocks[block]

    def _stream_gather(self, pairs: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
        blocks = pairs // self.stream_block
        # Consecutive positions come from at most a few blocks, each visited once per epoch.
        change = torch.nonzero(blocks[1:] != blocks[:-1]).flatten() + 1
        starts = [0, *change.tolist(), len(pairs)]
        images, texts, extras = [], [], []
        for lo, hi in zip(starts[:-1], starts[1:], strict=True):
            block = int(blocks[lo])
            image, text, extra = self._load_block(block)
            local = pairs[lo:hi] - block * self.stream_block
            images.append(image[local])
            texts.append(text[local])
            if extra is not None:
                extras.append(extra[local])
        return torch.cat(images), torch.cat(texts), torch.cat(extras) if extras else None

    # ----- description -------------------------------------------------------------------------------------
    def caption_sources(self) -> list[dict]:
        def describe(store: FeatureStore, role: str) -> dict:
            return {
                "role": role,
                "path": str(store.path),
                "caption_column": store.meta.caption_column,
                "source": store.meta.source,
                "rows": len(store),
            }

        return [describe(s, "caption") for s in self.text_stores] + [
            describe(s, "extra_text") for s in self.extra_stores
        ]

    def close(self) -> None:
        for store in [self.image_store, *self.text_stores, *self.extra_stores]:
            store.close()


@dataclass
class EvalData:
    """Held-out features for retrieval: every valid image, every valid caption, and each caption's image."""

    image: Tensor
    text: Tensor
    caption_image: Tensor  # [captions] index into ``image``


def load_eval_data(image_path: str | os.PathLike, text_paths: Sequence[str | os.PathLike]) -> EvalData:
    image_store = open_store(image_path, "image", "validation image")
    text_stores = [open_store(p, "text", "validation caption") for p in text_paths]
    check_same_model(text_stores, "validation caption")
    try:
        valid_images = np.flatnonzero(image_store.valid)
        new_index = np.full(len(image_store), -1, dtype=np.int64)
        new_index[valid_images] = np.arange(len(valid_images))
        texts, owners = [], []
        for store in text_stores:
            rows = store.join(image_store)
            keep = store.valid & (rows >= 0)
            keep &= new_index[np.maximum(rows, 0)] >= 0
            texts.append(store.load()[keep])
            owners.append(new_index[rows[keep]])
        caption_image = np.concatenate(owners)
        if len(caption_image) == 0:
            raise DataError(
                f"validation stores {image_path} and {list(text_paths)} have no valid joined pairs"
            )
        return EvalData(
            torch.from_numpy(image_store.load()[valid_images]),
            torch.from_numpy(np.concatenate(texts)),
            torch.from_numpy(caption_image),
        )
    finally:
        image_store.close()
        for store in text_stores:
            store.close()
