"""Training data mixtures from a YAML file, as VLM2Vec-V2's ``experiments/public/train/train_v2.yaml``.

The file maps a subset name to its settings::

    video_caption_300k:
        dataset_parser: llavahound_caption     # how the subset's files are read (PARSERS)
        dataset_path: train/video_caption_300k.jsonl
        video_frame_basedir: train/frames      # VIDEO_ID/ folders of extracted frames
        data_mode: caption_retrieval           # or video_retrieval (the caption finds the video)
        num_frames: 8
        weight: 5                              # sampling weight: share of sub-batches = weight / sum of weights
        num_sample_per_subset: 300000          # first N rows (the reference's select(range(N))); also num_rows

Parsers read local files only: ``mmeb`` (an MMEB-train subset: ``subset_name``, ``dataset_split``, ``image_dir``,
read by :class:`vlm2vec.data.MMEBTrainData` from ``dataset_path`` or the data root), ``llavahound_caption`` /
``llavahound_qa`` (LLaVA-Hound JSONL: ``id``, ``video``, ``conversations`` [question with ``<video>``, answer];
the video is the query and the answer the positive, or with ``data_mode: video_retrieval`` the caption is the query
and the video the positive), ``vidore`` / ``visrag`` (parquet files with ``query`` and ``image`` columns, the
ColPali / VisRAG training sets: the query finds its page). Relative paths are relative to the data root given to
:class:`MixtureData`.

:class:`MixtureBatchSampler` makes each global batch of sub-batches (the reference's ``interleave_batch_size``):
every sub-batch comes from one subset, drawn with probability ``weight / sum(weights)``; a subset's rows are
consumed in a seeded permutation, reshuffled when used up (the reference's ``interleave_datasets`` with
``stopping_strategy="all_exhausted"`` over-samples the same way).
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml
from PIL import Image
from torch.utils.data import Dataset, Sampler

from core.protocol import EmbedInput
from core.video import DEFAULT_NUM_FRAMES, sample_frame_paths
from vlm2vec.data import MMEBDataError, MMEBExample, MMEBTrainData

PARSERS = ("mmeb", "llavahound_caption", "llavahound_qa", "vidore", "visrag")
VIDEO_MODES = ("caption_retrieval", "video_retrieval")
# The reference's prompts of its LLaVA-Hound video retrieval and visual-document training sets.
VIDEO_RETRIEVAL_QUERY = "Find a video that contains the following visual content: "
VIDEO_RETRIEVAL_TARGET = "Understand the content of the provided video: "
VISDOC_QUERY = "Find a document image that matches the given query:"
VISDOC_TARGET = "Understand the content of the provided document image."


class MixtureError(ValueError):
    """A malformed mixture file or a missing data file; the message names the subset and what is wrong."""


@dataclass(frozen=True)
class MixtureSubset:
    name: str
    parser: str
    weight: float
    num_sample_per_subset: int | None = None
    options: dict[str, Any] = field(default_factory=dict, hash=False)


def _count(value: Any, name: str, key: str) -> int | None:
    if value is None or (isinstance(value, str) and value.strip().lower() == "none"):
        return None
    try:
        count = int(str(value).replace("_", ""))
    except ValueError as error:
        raise MixtureError(f"subset {name!r}: {key} must be an integer or None, got {value!r}") from error
    if count < 1:
        raise MixtureError(f"subset {name!r}: {key} must be >= 1, got {count}")
    return count


def read_mixture(path: str | Path) -> list[MixtureSubset]:
    """The subsets of a mixture YAML, validated (parser known, weight > 0, counts integers)."""
    path = Path(path)
    if not path.is_file():
        raise MixtureError(f"mixture file {path} not found")
    spec = yaml.safe_load(path.read_text())
    if not isinstance(spec, dict) or not spec:
        raise MixtureError(f"{path}: expected a mapping of subset names to settings")
    subsets = []
    for name, settings in spec.items():
        if not isinstance(settings, dict):
            raise MixtureError(f"{path}: subset {name!r} needs a mapping of settings")
        settings = dict(settings)
        parser = settings.pop("dataset_parser", None)
        if parser not in PARSERS:
            raise MixtureError(f"subset {name!r}: dataset_parser {parser!r}; choose one of {PARSERS}")
        weight = settings.pop("weight", None)
        if not isinstance(weight, (int, float)) or weight <= 0:
            raise MixtureError(f"subset {name!r}: weight must be a number > 0, got {weight!r}")
        cap = _count(settings.pop("num_sample_per_subset", None), name, "num_sample_per_subset")
        rows = _count(settings.pop("num_rows", None), name, "num_rows")
        caps = [c for c in (cap, rows) if c is not None]
        subsets.append(MixtureSubset(str(name), parser, float(weight), min(caps) if caps else None, settings))
    return subsets


def _path(root: Path, value: Any, name: str, key: str) -> Path:
    if not value:
        raise MixtureError(f"subset {name!r} needs {key}")
    path = Path(str(value))
    return path if path.is_absolute() else root / path


def _llavahound(root: Path, subset: MixtureSubset) -> list[MMEBExample]:
    options = subset.options
    file = _path(root, options.get("dataset_path"), subset.name, "dataset_path")
    frames = _path(root, options.get("video_frame_basedir"), subset.name, "video_frame_basedir")
    mode = options.get("data_mode", "caption_retrieval")
    if mode not in VIDEO_MODES:
        raise MixtureError(f"subset {subset.name!r}: data_mode {mode!r}; choose one of {VIDEO_MODES}")
    num_frames = int(options.get("num_frames", DEFAULT_NUM_FRAMES))
    if not file.is_file():
        raise MixtureError(f"subset {subset.name!r}: {file} not found")
    with file.open(encoding="utf-8") as handle:
        rows = [json.loads(line) for line in handle if line.strip()]
    rows = rows[: subset.num_sample_per_subset]
    examples = []
    for row in rows:
        folder = frames / str(row["video"])
        if not folder.is_dir():
            raise MixtureError(f"subset {subset.name!r}: frame folder {folder} not found")
        video = sample_frame_paths(folder, num_frames)
        question = str(row["conversations"][0]["value"]).replace("<video>", "").strip()
        answer = str(row["conversations"][1]["value"])
        if mode == "caption_retrieval":
            query = EmbedInput(text=question or None, video=video)
            positive = EmbedInput(text=answer)
        else:
            query = EmbedInput(text=VIDEO_RETRIEVAL_QUERY + answer)
            positive = EmbedInput(instruction=VIDEO_RETRIEVAL_TARGET.strip(), video=video)
        examples.append(MMEBExample(query, [positive], []))
    return examples


def _visdoc(root: Path, subset: MixtureSubset) -> list[MMEBExample]:
    folder = _path(root, subset.options.get("dataset_path"), subset.name, "dataset_path")
    files = sorted(folder.glob("*.parquet")) if folder.is_dir() else [folder] if folder.is_file() else []
    if not files:
        raise MixtureError(f"subset {subset.name!r}: no parquet files at {folder}")
    table = pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)
    missing = {"query", "image"} - set(table.columns)
    if missing:
        raise MixtureError(f"subset {subset.name!r}: {folder} lacks columns {sorted(missing)}")
    table = table.iloc[: subset.num_sample_per_subset]
    examples = []
    for query, image in zip(table["query"], table["image"], strict=True):
        data = image.get("bytes") if isinstance(image, dict) else image
        with Image.open(io.BytesIO(data)) as page:
            page = page.convert("RGB")
        examples.append(
            MMEBExample(
                EmbedInput(text=str(query), instruction=VISDOC_QUERY),
                [EmbedInput(image=page, instruction=VISDOC_TARGET)],
                [],
            )
        )
    return examples


class _MMEBSubsetRows:
    def __init__(self, root: Path, subset: MixtureSubset) -> None:
        options = subset.options
        data_root = _path(root, options.get("dataset_path") or ".", subset.name, "dataset_path")
        image_dir = _path(root, options.get("image_dir") or ".", subset.name, "image_dir")
        try:
            self.data = MMEBTrainData(
                data_root,
                image_dir,
                [options.get("subset_name", subset.name)],
                split=options.get("dataset_split", "original"),
                cap=subset.num_sample_per_subset,
                selection="first",
            )
        except MMEBDataError as error:
            raise MixtureError(f"subset {subset.name!r}: {error}") from error

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> MMEBExample:
        return self.data[index]


class MixtureData(Dataset):
    """The subsets of a mixture as one indexable dataset of :class:`vlm2vec.data.MMEBExample`;
    ``offsets[i]`` starts subset i."""

    def __init__(self, root: str | Path, subsets: Sequence[MixtureSubset]) -> None:
        root = Path(root)
        if not subsets:
            raise MixtureError("a mixture needs at least one subset")
        self.subsets = list(subsets)
        self.parts: list[Any] = []
        for subset in self.subsets:
            if subset.parser == "mmeb":
                part: Any = _MMEBSubsetRows(root, subset)
            elif subset.parser in ("llavahound_caption", "llavahound_qa"):
                part = _llavahound(root, subset)
            else:
                part = _visdoc(root, subset)
            if len(part) == 0:
                raise MixtureError(f"subset {subset.name!r} has no rows")
            self.parts.append(part)
        self.offsets = np.cumsum([0] + [len(p) for p in self.parts])

    @property
    def subset_sizes(self) -> list[int]:
        return [len(p) for p in self.parts]

    @property
    def weights(self) -> list[float]:
        return [s.weight for s in self.subsets]

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def __getitem__(self, index: int) -> MMEBExample:
        part = int(np.searchsorted(self.offsets, index, side="right") - 1)
        return self.parts[part][index - int(self.offsets[part])]


class MixtureBatchSampler(Sampler[list[int]]):
    """Global batches of ``batch_size * world_size`` rows made of sub-batches of ``sub_batch_size`` rows, each
    from one subset drawn with probability ``weight / sum(weights)``; deterministic in ``seed``, so a run resumed at
    ``start_step`` sees the same batches. Each rank takes its slice of the global batch."""

    def __init__(
        self,
        subset_sizes: Sequence[int],
        weights: Sequence[float],
        batch_size: int,
        sub_batch_size: int,
        total_steps: int,
        seed: int = 0,
        start_step: int = 0,
        world_size: int = 1,
        rank: int = 0,
    ) -> None:
        if len(subset_sizes) != len(weights) or not weights:
            raise MixtureError("one weight per subset is needed")
        if any(w <= 0 for w in weights):
            raise MixtureError(f"weights must be > 0, got {list(weights)}")
        self.global_batch = batch_size * world_size
        if sub_batch_size < 1 or self.global_batch % sub_batch_size:
            raise MixtureError(
                f"the sub-batch size {sub_batch_size} must divide the global batch {self.global_batch}"
            )
        small = [i for i, size in enumerate(subset_sizes) if size < sub_batch_size]
        if small:
            raise MixtureError(f"subsets {small} have fewer rows than one sub-batch of {sub_batch_size}")
        self.sizes, self.sub_batch = list(subset_sizes), sub_batch_size
        total = float(sum(weights))
        self.probabilities = np.array([w / total for w in weights])
        self.batch_size, self.seed, self.rank = batch_size, seed, rank
        self.total_steps, self.start_step = total_steps, start_step
        # an "epoch" (for logging only): as many global batches as the mixture has rows
        self.steps_per_epoch = max(1, sum(self.sizes) // self.global_batch)

    def _global_batches(self) -> Iterator[np.ndarray]:
        rng = np.random.default_rng(self.seed)
        offsets = np.cumsum([0, *self.sizes])
        orders = [rng.permutation(size) for size in self.sizes]
        cursors = [0] * len(self.sizes)
        per_batch = self.global_batch // self.sub_batch
        while True:
            blocks = []
            for subset in rng.choice(len(self.sizes), size=per_batch, p=self.probabilities):
                if cursors[subset] + self.sub_batch > self.sizes[subset]:
                    orders[subset], cursors[subset] = rng.permutation(self.sizes[subset]), 0
                start = cursors[subset]
                blocks.append(offsets[subset] + orders[subset][start : start + self.sub_batch])
                cursors[subset] += self.sub_batch
            yield np.concatenate(blocks)

    def __iter__(self) -> Iterator[list[int]]:
        for step, batch in enumerate(self._global_batches()):
            if step >= self.total_steps:
                return
            if step >= self.start_step:
                yield batch[self.rank * self.batch_size : (self.rank + 1) * self.batch_size].tolist()

    def __len__(self) -> int:
        return self.total_steps - self.start_step
