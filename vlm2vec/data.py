"""MMEB-train from local files: subsets, caps, splits, shuffled batches (one subset at a time or mixed).

Layout per subset under `root` (the first that exists wins):
`SUBSET/SPLIT/` or `SUBSET/` (a `datasets` Dataset / DatasetDict saved with `save_to_disk`), or
`SUBSET/SPLIT*.parquet` / `SUBSET/SPLIT*.jsonl` (the hub's `TIGER-Lab/MMEB-train` layout), with columns
`qry`, `qry_image_path`, `pos_text`, `pos_image_path`, `neg_text`, `neg_image_path`. Image paths are relative to
`image_root`; an empty path means no image. `pos_*` / `neg_*` cells may hold lists (several positives, several
hard negatives); an empty negative means none.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset, Sampler

from core.protocol import EmbedInput

logger = logging.getLogger(__name__)

MMEB_TRAIN_SUBSETS = (
    "ImageNet_1K",
    "N24News",
    "HatefulMemes",
    "VOC2007",
    "SUN397",
    "OK-VQA",
    "A-OKVQA",
    "DocVQA",
    "InfographicsVQA",
    "ChartQA",
    "Visual7W",
    "VisDial",
    "CIRR",
    "VisualNews_t2i",
    "VisualNews_i2t",
    "MSCOCO_t2i",
    "MSCOCO_i2t",
    "NIGHTS",
    "WebQA",
    "MSCOCO",
)
SPLITS = ("original", "diverse_instruction")
COLUMNS = ("qry", "qry_image_path", "pos_text", "pos_image_path", "neg_text", "neg_image_path")


class MMEBDataError(ValueError):
    """Missing or malformed MMEB-train files; the message says what was expected where."""


def _as_list(value: Any) -> list:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return []
    if isinstance(value, (list, tuple, np.ndarray)):
        return list(value)
    return [value]


def _pairs(texts: Any, paths: Any) -> list[tuple[str, str]]:
    """(text, image path) pairs of one cell pair; scalars broadcast, empty entries dropped."""
    texts, paths = _as_list(texts), _as_list(paths)
    count = max(len(texts), len(paths))
    texts = texts if len(texts) == count else (texts or [""]) * count
    paths = paths if len(paths) == count else (paths or [""]) * count
    return [(t or "", p or "") for t, p in zip(texts, paths, strict=True) if (t or "").strip() or p]


def _read_subset(root: Path, subset: str, split: str) -> pd.DataFrame:
    from datasets import Dataset as HFDataset
    from datasets import DatasetDict, load_from_disk

    base = root / subset
    for candidate in (base / split, base):
        if (candidate / "dataset_info.json").is_file() or (candidate / "dataset_dict.json").is_file():
            loaded = load_from_disk(str(candidate))
            if isinstance(loaded, DatasetDict):
                if split not in loaded:
                    raise MMEBDataError(f"{candidate} has splits {list(loaded)}, not {split!r}")
                loaded = loaded[split]
            if isinstance(loaded, HFDataset):
                return loaded.to_pandas()
    parquet = sorted(base.glob(f"{split}*.parquet"))
    if parquet:
        return pd.concat([pd.read_parquet(p) for p in parquet], ignore_index=True)
    jsonl = sorted(base.glob(f"{split}*.jsonl"))
    if jsonl:
        return pd.concat([pd.read_json(p, lines=True) for p in jsonl], ignore_index=True)
    raise MMEBDataError(
        f"no MMEB-train subset {subset!r} split {split!r} under {root}: expected {base / split}/ or {base}/ "
        f"(datasets.save_to_disk) or {base}/{split}*.parquet or {base}/{split}*.jsonl"
    )


@dataclass
class MMEBExample:
    query: EmbedInput
    positives: list[EmbedInput]
    negatives: list[EmbedInput]


class MMEBTrainData(Dataset):
    """The chosen subsets, capped, as one indexable dataset of `MMEBExample`; `offsets[i]` starts subset i."""

    def __init__(
        self,
        root: str | Path,
        image_root: str | Path,
        subsets: Sequence[str] = MMEB_TRAIN_SUBSETS,
        split: str = "original",
        cap: int | None = 50_000,
        subset_caps: dict[str, int] | None = None,
        use_negatives: bool = True,
        seed: int = 0,
        check_images: bool = True,
    ) -> None:
        root, self.image_root = Path(root), Path(image_root)
        if split not in SPLITS:
            raise MMEBDataError(f"unknown split {split!r}; choose one of {SPLITS}")
        unknown = sorted(set(subsets) - set(MMEB_TRAIN_SUBSETS))
        unknown_caps = sorted(set(subset_caps or {}) - set(subsets))
        if unknown or unknown_caps:
            raise MMEBDataError(
                f"unknown subsets {unknown or unknown_caps}; MMEB-train has {', '.join(MMEB_TRAIN_SUBSETS)}"
            )
        if not root.is_dir():
            raise MMEBDataError(f"MMEB-train root {root} is not a directory")
        self.use_negatives = use_negatives
        self.subsets = list(subsets)
        self.tables: list[pd.DataFrame] = []
        for subset in self.subsets:
            table = _read_subset(root, subset, split)
            missing = [c for c in COLUMNS if c not in table.columns and not c.startswith("neg_")]
            if missing:
                raise MMEBDataError(f"subset {subset!r} lacks columns {missing}; MMEB-train has {COLUMNS}")
            limit = (subset_caps or {}).get(subset, cap)
            if limit is not None and len(table) > limit:
                rows = np.random.default_rng(seed).permutation(len(table))[:limit]
                table = table.iloc[np.sort(rows)].reset_index(drop=True)
            self.tables.append(table)
        if check_images:
            self._check_images()
        self.offsets = np.cumsum([0] + [len(t) for t in self.tables])
        logger.info("MMEB-train %s: %s", split, dict(zip(self.subsets, map(len, self.tables), strict=True)))

    def _check_images(self) -> None:
        for subset, table in zip(self.subsets, self.tables, strict=True):
            for column in ("qry_image_path", "pos_image_path", "neg_image_path"):
                if column not in table.columns:
                    continue
                for cell in table[column]:
                    for path in _as_list(cell):
                        if path and not (self.image_root / path).is_file():
                            raise MMEBDataError(
                                f"subset {subset!r} {column} {path!r} not found under image root "
                                f"{self.image_root}; pass the folder the MMEB-train images were unzipped to"
                            )

    @property
    def subset_sizes(self) -> list[int]:
        return [len(t) for t in self.tables]

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def _image(self, path: str) -> Image.Image | None:
        if not path:
            return None
        with Image.open(self.image_root / path) as image:
            return image.convert("RGB")

    def _inputs(self, texts: Any, paths: Any) -> list[EmbedInput]:
        return [EmbedInput(text=t or None, image=self._image(p)) for t, p in _pairs(texts, paths)]

    def __getitem__(self, index: int) -> MMEBExample:
        subset = int(np.searchsorted(self.offsets, index, side="right") - 1)
        row = self.tables[subset].iloc[index - int(self.offsets[subset])]
        query = self._inputs(row["qry"], row["qry_image_path"])
        positives = self._inputs(row["pos_text"], row["pos_image_path"])
        negatives = self._inputs(row.get("neg_text"), row.get("neg_image_path")) if self.use_negatives else []
        if len(query) != 1 or not positives:
            raise MMEBDataError(
                f"{self.subsets[subset]} row {index - self.offsets[subset]} has no query or positive"
            )
        return MMEBExample(query[0], positives, negatives)


class MMEBBatchSampler(Sampler[list[int]]):
    """Shuffled batches per step, deterministic in (seed, epoch) so a resumed run sees the same batches.

    `mixed=False` (VLM2Vec's default): every global batch comes from one subset (in-batch negatives of the same
    task); `mixed=True`: batches mix subsets. A global batch of `batch_size * world_size` rows is drawn and each
    rank takes its slice, so all ranks of one step share the subset. Incomplete batches are dropped.
    """

    def __init__(
        self,
        subset_sizes: Sequence[int],
        batch_size: int,
        mixed: bool = False,
        seed: int = 0,
        start_step: int = 0,
        total_steps: int | None = None,
        world_size: int = 1,
        rank: int = 0,
    ) -> None:
        self.sizes, self.batch_size, self.mixed, self.seed = list(subset_sizes), batch_size, mixed, seed
        self.start_step, self.world_size, self.rank = start_step, world_size, rank
        self.global_batch = batch_size * world_size
        self.steps_per_epoch = len(self._epoch_batches(0))
        if self.steps_per_epoch == 0:
            raise MMEBDataError(
                f"no full batch of {self.global_batch} rows fits in subsets of sizes {self.sizes}; lower the "
                "batch size or use mixed batches"
            )
        self.total_steps = total_steps if total_steps is not None else self.steps_per_epoch

    def _epoch_batches(self, epoch: int) -> list[np.ndarray]:
        rng = np.random.default_rng([self.seed, epoch])
        offsets = np.cumsum([0, *self.sizes])
        size = self.global_batch
        if self.mixed:
            order = rng.permutation(int(offsets[-1]))
            return [order[i : i + size] for i in range(0, len(order) - size + 1, size)]
        batches = []
        for start, count in zip(offsets[:-1], self.sizes, strict=True):
            order = start + rng.permutation(count)
            batches += [order[i : i + size] for i in range(0, count - size + 1, size)]
        return [batches[i] for i in rng.permutation(len(batches))]

    def __iter__(self) -> Iterator[list[int]]:
        epoch_cache: dict[int, list[np.ndarray]] = {}
        for step in range(self.start_step, self.total_steps):
            epoch, position = divmod(step, self.steps_per_epoch)
            if epoch not in epoch_cache:
                epoch_cache.clear()
                epoch_cache[epoch] = self._epoch_batches(epoch)
            batch = epoch_cache[epoch][position]
            yield batch[self.rank * self.batch_size : (self.rank + 1) * self.batch_size].tolist()

    def __len__(self) -> int:
        return self.total_steps - self.start_step


@dataclass
class ContrastiveBatch:
    """Processor inputs in chunks (one chunk each = the plain step) and the `[B, M]` positive mask."""

    query_chunks: list[dict[str, Tensor]]
    target_chunks: list[dict[str, Tensor]]
    positive_mask: Tensor


class ContrastiveCollator:
    """Examples -> `ContrastiveBatch`: targets are every example's positives, then its hard negatives.

    Chunk sizes of 0/None mean one chunk (no GradCache).
    """

    def __init__(
        self, prepare, query_chunk_size: int | None = None, target_chunk_size: int | None = None
    ) -> None:
        self.prepare = prepare
        self.query_chunk_size = query_chunk_size or None
        self.target_chunk_size = target_chunk_size or None

    def _chunks(self, rows: list[EmbedInput], size: int | None) -> list[dict[str, Tensor]]:
        size = size or len(rows)
        return [self.prepare(rows[i : i + size]) for i in range(0, len(rows), size)]

    def __call__(self, examples: list[MMEBExample]) -> ContrastiveBatch:
        queries = [example.query for example in examples]
        targets: list[EmbedInput] = []
        positive_columns: list[list[int]] = []
        for example in examples:
            positive_columns.append(list(range(len(targets), len(targets) + len(example.positives))))
            targets += example.positives + example.negatives
        mask = torch.zeros(len(examples), len(targets), dtype=torch.bool)
        for row, columns in enumerate(positive_columns):
            mask[row, columns] = True
        return ContrastiveBatch(
            self._chunks(queries, self.query_chunk_size), self._chunks(targets, self.target_chunk_size), mask
        )
