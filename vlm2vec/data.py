"""MMEB-train from local files: subsets, caps, splits, shuffled batches (one subset at a time or mixed).

Layout per subset under `root` (the first that exists wins):
`SUBSET/SPLIT/` or `SUBSET/` (a `datasets` Dataset / DatasetDict saved with `save_to_disk`), or
`SUBSET/SPLIT*.parquet` / `SUBSET/SPLIT*.jsonl` (the hub's `TIGER-Lab/MMEB-train` layout), with columns
`qry`, `qry_image_path`, `pos_text`, `pos_image_path`, `neg_text`, `neg_image_path`; the hub's parquet conversion
`SUBSET/SPLIT/0000.parquet` (what `datasets` downloads) is read too. Optional `qry_inst` / `pos_inst` / `neg_inst`
columns (separate instructions, as the newer annotations carry them) become the inputs' instructions, which the
prompt builder joins as `instruction + " " + text` (the reference's `process_input_text`). Image paths are relative to
`image_root`; an empty path means no image. `pos_*` / `neg_*` cells may hold lists (several positives, several
hard negatives); an empty negative means none.

A text-only input whose text still holds MMEB's `<|image_1|>` (WebQA's text-only queries do) has the dangling
placeholder removed when read; the row is kept, and the count is part of the summary log line.
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
from vlm2vec.adapters import MMEB_IMAGE_TOKEN, drop_image_token

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
# Which rows a cap keeps: a seeded random sample (ours) or the first N (VLM2Vec's `split[:N]` / `select(range(N))`).
SELECTIONS = ("random", "first")
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


_TEXT_IMAGE_COLUMNS = (
    ("qry", "qry_image_path"),
    ("pos_text", "pos_image_path"),
    ("neg_text", "neg_image_path"),
)


def _clean_cell(texts: Any, paths: Any) -> tuple[Any, int]:
    """`texts` with the dangling `<|image_1|>` removed from the entries that have no image (a scalar cell, or a
    list cell paired with `paths`); how many entries were cleaned."""
    paths_list = _as_list(paths)
    if isinstance(texts, str):
        has_image = any(paths_list)
        if MMEB_IMAGE_TOKEN in texts and not has_image:
            return drop_image_token(texts), 1
        return texts, 0
    entries = _as_list(texts)
    if len(paths_list) != len(entries):
        paths_list = (paths_list or [""]) * len(entries) if len(paths_list) <= 1 else paths_list
    cleaned, count = [], 0
    for text, path in zip(entries, paths_list, strict=False):
        if isinstance(text, str) and MMEB_IMAGE_TOKEN in text and not path:
            text, count = drop_image_token(text), count + 1
        cleaned.append(text)
    return (cleaned if count else texts), count


def clean_dangling_image_tokens(table: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """MMEB-train rows whose text-only inputs still hold `<|image_1|>` (WebQA): the placeholder removed (row
    kept); returns the table and the number of inputs cleaned."""
    total = 0
    for text_column, path_column in _TEXT_IMAGE_COLUMNS:
        if text_column not in table.columns:
            continue
        flagged = table[text_column].astype(str).str.contains(MMEB_IMAGE_TOKEN, regex=False)
        if not flagged.any():
            continue
        if path_column in table.columns:
            paths = table[path_column]
        else:
            paths = pd.Series([""] * len(table), index=table.index)
        texts = table[text_column].copy()
        for index in table.index[flagged.to_numpy()]:
            value, count = _clean_cell(texts[index], paths[index])
            if count:
                texts.at[index] = value
                total += count
        table[text_column] = texts
    return table, total


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
    parquet = sorted(base.glob(f"{split}*.parquet")) or sorted((base / split).glob("*.parquet"))
    if parquet:
        return pd.concat([pd.read_parquet(p) for p in parquet], ignore_index=True)
    jsonl = sorted(base.glob(f"{split}*.jsonl"))
    if jsonl:
        return pd.concat([pd.read_json(p, lines=True) for p in jsonl], ignore_index=True)
    raise MMEBDataError(
        f"no MMEB-train subset {subset!r} split {split!r} under {root}. Accepted layouts, one a line:\n"
        f"  hub files:          {base}/{split}-*.parquet (TIGER-Lab/MMEB-train) or {base}/{split}*.jsonl\n"
        f"  parquet conversion: {base / split}/0000.parquet (the hub's refs/convert/parquet, `datasets`)\n"
        f"  save_to_disk:       {base / split}/ or {base}/ (datasets.save_to_disk, a Dataset or DatasetDict)"
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
        selection: str = "random",
    ) -> None:
        root, self.image_root = Path(root), Path(image_root)
        if split not in SPLITS:
            raise MMEBDataError(f"unknown split {split!r}; choose one of {SPLITS}")
        if selection not in SELECTIONS:
            raise MMEBDataError(f"unknown row selection {selection!r}; choose one of {SELECTIONS}")
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
        # text-only inputs cleaned of a dangling `<|image_1|>`, per subset
        self.dangling_image_tokens: dict[str, int] = {}
        for subset in self.subsets:
            table = _read_subset(root, subset, split)
            missing = [c for c in COLUMNS if c not in table.columns and not c.startswith("neg_")]
            if missing:
                raise MMEBDataError(f"subset {subset!r} lacks columns {missing}; MMEB-train has {COLUMNS}")
            limit = (subset_caps or {}).get(subset, cap)
            if limit is not None and len(table) > limit:
                if selection == "first":
                    table = table.iloc[:limit].reset_index(drop=True)
                else:
                    rows = np.random.default_rng(seed).permutation(len(table))[:limit]
                    table = table.iloc[np.sort(rows)].reset_index(drop=True)
            table, cleaned = clean_dangling_image_tokens(table)
            if cleaned:
                self.dangling_image_tokens[subset] = cleaned
            self.tables.append(table)
        if check_images:
            self._check_images()
        self.offsets = np.cumsum([0] + [len(t) for t in self.tables])
        logger.info(
            "MMEB-train %s: %s; dangling %s removed from %d text-only inputs%s",
            split,
            dict(zip(self.subsets, map(len, self.tables), strict=True)),
            MMEB_IMAGE_TOKEN,
            sum(self.dangling_image_tokens.values()),
            f" {self.dangling_image_tokens}" if self.dangling_image_tokens else "",
        )

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

    def _inputs(self, texts: Any, paths: Any, instruction: Any = None) -> list[EmbedInput]:
        instruction = instruction if isinstance(instruction, str) and instruction else None
        return [
            EmbedInput(text=t or None, image=self._image(p), instruction=instruction)
            for t, p in _pairs(texts, paths)
        ]

    def __getitem__(self, index: int) -> MMEBExample:
        subset = int(np.searchsorted(self.offsets, index, side="right") - 1)
        row = self.tables[subset].iloc[index - int(self.offsets[subset])]
        query = self._inputs(row["qry"], row["qry_image_path"], row.get("qry_inst"))
        positives = self._inputs(row["pos_text"], row["pos_image_path"], row.get("pos_inst"))
        negatives = (
            self._inputs(row.get("neg_text"), row.get("neg_image_path"), row.get("neg_inst"))
            if self.use_negatives
            else []
        )
        if len(query) != 1 or not positives:
            raise MMEBDataError(
                f"{self.subsets[subset]} row {index - self.offsets[subset]} has no query or positive"
            )
        return MMEBExample(query[0], positives, negatives)


class MMEBBatchSampler(Sampler[list[int]]):
    """Shuffled batches per step, deterministic in (seed, epoch) so a resumed run sees the same batches.

    `mixed=False` (VLM2Vec's default): every global batch comes from one subset (in-batch negatives of the same
    task); `mixed=True`: batches mix subsets; `block_size=B` (VLM2Vec-V2's `interleave_batch_size 64`): a global
    batch is made of blocks of B rows, each block from one subset, the blocks of all subsets shuffled together. A
    global batch of `batch_size * world_size` rows is drawn and each rank takes its slice, so all ranks of one step
    share the subset (without blocks). Incomplete batches and blocks are dropped.
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
        block_size: int = 0,
    ) -> None:
        self.sizes, self.batch_size, self.mixed, self.seed = list(subset_sizes), batch_size, mixed, seed
        self.start_step, self.world_size, self.rank = start_step, world_size, rank
        self.global_batch = batch_size * world_size
        self.block_size = block_size
        if block_size < 0 or (block_size and self.global_batch % block_size):
            raise MMEBDataError(
                f"the subset block size {block_size} must divide the global batch {self.global_batch} (0 = off)"
            )
        if block_size and mixed:
            raise MMEBDataError("blocks of one subset and fully mixed batches exclude each other; choose one")
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
        if self.block_size and self.block_size < size:
            block = self.block_size
            blocks = []
            for start, count in zip(offsets[:-1], self.sizes, strict=True):
                order = start + rng.permutation(count)
                blocks += [order[i : i + block] for i in range(0, count - block + 1, block)]
            blocks = [blocks[i] for i in rng.permutation(len(blocks))]
            per_batch = size // block
            return [
                np.concatenate(blocks[i : i + per_batch])
                for i in range(0, len(blocks) - per_batch + 1, per_batch)
            ]
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
