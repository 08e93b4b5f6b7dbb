"""Encode rows with a frozen backbone into a feature store: batched, resumable, failures masked.

Images are read, decoded and transformed (the backbone's picklable ``transform``) in DataLoader worker processes
while the main process runs the backbone; with ``num_workers=0`` they are decoded in this process by as many
threads as torch's intra-op pool has, each batch between two forwards, so the decoding never competes with the
forward for the cores (the fastest on a CPU-only machine: Pillow and the PIL steps release the GIL, and a
torchvision ``ToTensor -> Normalize`` tail runs once per batch, see ``RGBTransform.split``). A row whose image is missing, corrupt or truncated, or whose caption
is empty, is written as ``valid=False`` with NaN features; the run goes on and reports the count and the first
keys at the end (and in the store attrs).

Batches are taken at fixed row offsets (multiples of ``batch_size`` from the start of the store or shard), and
the store is flushed after every batch, so ``resume=True`` after a crash (``kill -9`` included) restarts at the
last flushed batch and — with the same ``batch_size`` — produces the same file as an uninterrupted run, bit for
bit on CPU. Under ``torchrun`` (an initialised process group with more than one rank) the rows are split across
ranks and merged into ``out`` (see :mod:`encode.distributed`).

The loader workers are started before the store is opened, so no worker inherits its HDF5 handle (and file
lock): after a ``kill -9`` of the main process the store can be resumed at once, while the orphaned workers are
still exiting. SIGTERM / SIGUSR1 (:class:`core.preemption.PreemptionGuard`, main process only; the workers
ignore both) stop the run after the batch in hand is written and flushed, with
:class:`core.preemption.Preempted` (exit code 75 in the CLI); the same call with ``resume=True`` continues it.
"""

from __future__ import annotations

import io
import logging
import os
import time
from collections.abc import Callable, Generator, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from core.preemption import Preempted, PreemptionGuard, ignore_preemption_signals
from encode import distributed
from encode.inputs import CaptionRows, ImageRef, Rows, TarMember
from encode.store import MAX_REPORTED_FAILURES, FeatureStoreWriter, StoreMeta, StoreStatus, complete_store

logger = logging.getLogger(__name__)


class ImageEncoder(Protocol):
    """What the pipeline needs from an image backbone (see :mod:`encode.backbones`)."""

    dim: int
    transform: Callable[[Image.Image], Tensor]

    def encode(self, pixel_values: Tensor) -> Tensor: ...

    def meta(self) -> dict[str, Any]: ...


class TextEncoder(Protocol):
    """What the pipeline needs from a text backbone (see :mod:`encode.backbones`)."""

    dim: int

    def encode(self, texts: Sequence[str]) -> Tensor: ...

    def meta(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class EncodeOptions:
    """How to run (not what is stored): batch size, loader workers, store dtype, resume/overwrite, progress."""

    batch_size: int = 64
    num_workers: int = 4
    dtype: str = "float16"
    resume: bool = False
    overwrite: bool = False
    progress: bool = True

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {self.batch_size}")
        if self.num_workers < 0:
            raise ValueError(f"num_workers must be 0 or more, got {self.num_workers}")
        if self.resume and self.overwrite:
            raise ValueError("resume and overwrite exclude each other: pick one")


@dataclass
class EncodeSummary:
    """The outcome of one encode call (also what the CLI prints)."""

    path: Path
    rows: int
    failures: int
    failed_keys: list[str]
    encoded_rows: int = 0
    resumed_from: int = 0
    seconds: float = 0.0
    failure_reasons: dict[str, str] = field(default_factory=dict)

    @property
    def rows_per_second(self) -> float:
        return self.encoded_rows / self.seconds if self.seconds > 0 else 0.0

    @classmethod
    def unchanged(cls, status: StoreStatus) -> EncodeSummary:
        """A complete store left as it is: nothing encoded, resumed at its last row."""
        return cls(status.path, status.rows, status.failures, status.failed_keys, resumed_from=status.rows)


@dataclass
class Batch:
    """One batch of rows: float32 features (NaN where failed), validity, and a reason per failed row."""

    features: np.ndarray
    valid: np.ndarray
    errors: list[str | None]


BatchSource = Callable[[int, int, EncodeOptions], Generator[Batch, None, None]]


@dataclass
class EncodeJob:
    """What to encode: the store's meta and rows, and a source of batches for a row range.

    ``batches(start, stop, options)`` starts any loader worker processes before it returns (so that they are
    forked before the store is opened); closing the generator it returns stops them.
    """

    meta: StoreMeta
    keys: list[str]
    image_keys: list[str] | None
    batches: BatchSource


# --- images ---------------------------------------------------------------------------------------------


def read_image(ref: ImageRef) -> Image.Image:
    """Open and fully decode an image (a file path or a member of a tar shard); raises if it cannot."""
    if ref is None:
        raise FileNotFoundError("no image for this row")
    if isinstance(ref, TarMember):
        with open(ref.tar, "rb") as f:
            f.seek(ref.offset)
            data = f.read(ref.size)
        if len(data) != ref.size:
            raise OSError(f"{ref.tar} ends inside this image")
        image = Image.open(io.BytesIO(data))
    else:
        image = Image.open(ref)
    image.load()  # decode now: truncated or corrupt data raises here, not later in the transform
    return image


class ImageRowsDataset(Dataset):
    """Row ``i`` -> ``(pixels or None, error or None)``; decoding errors never escape a worker."""

    def __init__(self, images: Sequence[ImageRef], transform: Callable[[Image.Image], Tensor]) -> None:
        self.images = images
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[Tensor | None, str | None]:
        return self.load(index, self.transform)

    def load(
        self, index: int, transform: Callable[[Image.Image], Tensor]
    ) -> tuple[Tensor | None, str | None]:
        """Row ``index`` through ``transform``: ``(pixels, None)`` or ``(None, reason)``."""
        ref = self.images[index]
        try:
            with read_image(ref) as image:
                return transform(image), None
        except Exception as err:  # a bad image is a failed row, whatever the decoder raised
            return None, f"{type(err).__name__}: {err}"


def collate_image_rows(items: list[tuple[Tensor | None, str | None]]) -> tuple[Tensor | None, Tensor, list]:
    """Stack the images that decoded; ``ok`` marks which rows they are."""
    ok = torch.tensor([pixels is not None for pixels, _ in items], dtype=torch.bool)
    good = [pixels for pixels, _ in items if pixels is not None]
    return (torch.stack(good) if good else None), ok, [error for _, error in items]


def load_in_threads(
    dataset: ImageRowsDataset, rows: range, batch_size: int, threads: int
) -> Generator[tuple[Tensor | None, Tensor, list], None, None]:
    """Collated batches of ``rows`` decoded by ``threads`` threads of this process, one batch per call.

    With a splittable transform (``RGBTransform.split``) the threads only run PIL code and the ``ToTensor ->
    Normalize`` tail runs on the stacked batch: torch kernels called from several threads would each start an
    OpenMP team that then competes with the forward's."""
    split = getattr(dataset.transform, "split", lambda: None)()
    transform = dataset.transform if split is None else split.image
    with ThreadPoolExecutor(threads, thread_name_prefix="encode-decode") as pool:
        for first in range(rows.start, rows.stop, batch_size):
            indices = range(first, min(first + batch_size, rows.stop))
            pixels, ok, errors = collate_image_rows(
                list(pool.map(lambda i: dataset.load(i, transform), indices))
            )
            if split is not None and pixels is not None:
                pixels = split.batch(pixels)
            yield pixels, ok, errors


def _encode_image_batches(
    loaded: Iterator[tuple[Tensor | None, Tensor, list]], backbone: ImageEncoder
) -> Generator[Batch, None, None]:
    """The backbone's features of each loaded batch; rows whose image failed to load stay NaN."""
    for pixels, ok, errors in loaded:
        features = np.full((len(ok), backbone.dim), np.nan, dtype=np.float32)
        valid = ok.numpy()
        if pixels is not None:
            features[valid] = backbone.encode(pixels).numpy()
        yield Batch(features, valid, errors)


def image_job(rows: Rows, backbone: ImageEncoder, *, dtype: str, limit: int | None = None) -> EncodeJob:
    rows = rows.head(limit)
    meta = StoreMeta(**backbone.meta(), dtype=dtype, source=rows.source)
    dataset = ImageRowsDataset(rows.images, backbone.transform)

    def batches(start: int, stop: int, options: EncodeOptions) -> Generator[Batch, None, None]:
        workers = options.num_workers
        if workers == 0:
            threads = torch.get_num_threads()
            return _encode_image_batches(
                load_in_threads(dataset, range(start, stop), options.batch_size, threads), backbone
            )
        loader = DataLoader(
            dataset,
            batch_size=options.batch_size,
            sampler=range(start, stop),
            num_workers=workers,
            collate_fn=collate_image_rows,
            pin_memory=torch.device(getattr(backbone, "device", "cpu")).type == "cuda",
            prefetch_factor=4 if workers > 0 else None,
            worker_init_fn=ignore_preemption_signals if workers > 0 else None,
        )
        return _encode_image_batches(iter(loader), backbone)  # iter() forks the workers now

    return EncodeJob(meta, rows.keys, None, batches)


def encode_images(
    rows: Rows,
    backbone: ImageEncoder,
    out: str | os.PathLike,
    *,
    limit: int | None = None,
    options: EncodeOptions | None = None,
) -> EncodeSummary:
    """Encode the images of ``rows`` (the first ``limit``) into the image store ``out``."""
    options = options or EncodeOptions()
    return run_job(image_job(rows, backbone, dtype=options.dtype, limit=limit), Path(out), options)


# --- texts ----------------------------------------------------------------------------------------------


def text_job(
    captions: CaptionRows, backbone: TextEncoder, *, dtype: str, source: str, limit: int | None = None
) -> EncodeJob:
    captions = captions.head(limit)
    meta = StoreMeta(**backbone.meta(), dtype=dtype, source=source, caption_column=captions.column)

    def batches(start: int, stop: int, options: EncodeOptions) -> Generator[Batch, None, None]:
        for first in range(start, stop, options.batch_size):
            texts = captions.texts[first : min(first + options.batch_size, stop)]
            valid = np.array([bool(t.strip()) for t in texts], dtype=bool)
            features = np.full((len(texts), backbone.dim), np.nan, dtype=np.float32)
            if valid.any():
                features[valid] = backbone.encode(
                    [t for t, ok in zip(texts, valid, strict=True) if ok]
                ).numpy()
            yield Batch(features, valid, [None if ok else "empty caption" for ok in valid])

    return EncodeJob(meta, captions.keys, captions.image_keys, batches)


def encode_texts(
    rows: Rows,
    backbone: TextEncoder,
    out: str | os.PathLike,
    *,
    caption_column: str,
    limit: int | None = None,
    options: EncodeOptions | None = None,
) -> EncodeSummary:
    """Encode one caption column of ``rows`` (its first ``limit`` captions) into the caption store ``out``."""
    options = options or EncodeOptions()
    job = text_job(
        rows.caption_rows(caption_column), backbone, dtype=options.dtype, source=rows.source, limit=limit
    )
    return run_job(job, Path(out), options)


# --- running --------------------------------------------------------------------------------------------


def run_job(job: EncodeJob, out: Path, options: EncodeOptions) -> EncodeSummary:
    """Encode ``job`` into ``out``; under an initialised multi-rank process group, split across ranks."""
    world = distributed.current_world()
    if world.size > 1:
        complete = _complete_store(job.meta, job.keys, job.image_keys, out, options)
        if complete is not None:
            return complete
        merged = distributed.run_sharded(
            job.meta,
            job.keys,
            job.image_keys,
            out,
            world,
            batch_size=options.batch_size,
            encode_shard=lambda path, start, stop: encode_range(
                job, path, start, stop, options, progress=world.rank == 0
            ),
            resume=options.resume,
            overwrite=options.overwrite,
        )
        return EncodeSummary(out, **merged)
    return encode_range(job, out, 0, len(job.keys), options)


def _complete_store(
    meta: StoreMeta, keys: Sequence[str], image_keys: Sequence[str] | None, out: Path, options: EncodeOptions
) -> EncodeSummary | None:
    """With ``resume``, a complete ``out`` of the same settings and rows is left untouched, byte for byte."""
    if not options.resume:
        return None
    status = complete_store(out, meta, keys, image_keys)  # StoreError if it differs
    if status is None:
        return None
    logger.debug("%s is already complete", out)
    return EncodeSummary.unchanged(status)


def encode_range(
    job: EncodeJob,
    out: Path,
    start: int,
    stop: int,
    options: EncodeOptions,
    *,
    progress: bool = True,
) -> EncodeSummary:
    """Encode rows ``[start, stop)`` of ``job`` into a store of exactly those rows at ``out``.

    The output is checked first (:meth:`FeatureStoreWriter.preflight`), then the loader workers are started,
    and only then is the store opened. Raises :class:`core.preemption.Preempted` after flushing the batch in
    hand when SIGTERM / SIGUSR1 arrives, and :class:`encode.store.StoreWriteError` when the disk refuses a
    write; the store is resumable after both.
    """
    keys = job.keys[start:stop]
    image_keys = job.image_keys[start:stop] if job.image_keys is not None else None
    status = FeatureStoreWriter.preflight(
        out, job.meta, keys, image_keys, resume=options.resume, overwrite=options.overwrite
    )
    if status is not None and status.complete:
        logger.debug("%s is already complete", out)
        return EncodeSummary.unchanged(status)
    resumed_from = status.rows_done if status is not None else 0
    with PreemptionGuard() as guard:
        batches = job.batches(start + resumed_from, stop, options)
        try:
            writer = FeatureStoreWriter.open_checked(out, job.meta, keys, image_keys, status)
            began = time.perf_counter()
            finished, reasons = _write_batches(
                job, keys, writer, batches, guard, options.progress and progress
            )
        finally:
            batches.close()  # ends the loader workers
    return EncodeSummary(
        out,
        **finished,
        encoded_rows=len(keys) - resumed_from,
        resumed_from=resumed_from,
        seconds=time.perf_counter() - began,
        failure_reasons=reasons,
    )


def _write_batches(
    job: EncodeJob,
    keys: Sequence[str],
    writer: FeatureStoreWriter,
    batches: Iterator[Batch],
    guard: PreemptionGuard,
    progress: bool,
) -> tuple[dict[str, object], dict[str, str]]:
    """Write every batch (flushed one by one), then finish the store; returns its summary and failure reasons.

    Stops with Preempted after the batch in hand once ``guard`` has seen a signal.
    """
    resumed_from = writer.rows_done
    if resumed_from:
        logger.info("%s: resuming at row %d of %d", writer.path, resumed_from, len(keys))
    reasons: dict[str, str] = {}
    with (
        writer,
        logging_redirect_tqdm(),
        tqdm(
            total=len(keys),
            initial=resumed_from,
            unit="row",
            desc=f"{job.meta.modality} -> {writer.path.name}",
            disable=not progress,
            dynamic_ncols=True,
            smoothing=0.05,
        ) as bar,
    ):
        failed_now = 0
        for batch in batches:
            valid = batch.valid & np.isfinite(batch.features.astype(job.meta.dtype)).all(axis=1)
            offset = writer.rows_done
            for i in np.flatnonzero(~valid):
                if len(reasons) < MAX_REPORTED_FAILURES:
                    key = keys[offset + i]
                    reasons[key] = batch.errors[i] or "non-finite features"
                    logger.warning("%s failed: %s", key, reasons[key])
            failed_now += int((~valid).sum())
            writer.write(batch.features, valid)
            bar.update(len(valid))
            if failed_now:
                bar.set_postfix(failed=failed_now, refresh=False)
            if guard.requested and not writer.done:
                raise Preempted(preempted_message(guard, writer))
        return writer.finish(), reasons


def preempted_message(guard: PreemptionGuard, writer: FeatureStoreWriter) -> str:
    """What a run stopped by a signal says: what was saved, and how to continue."""
    name = guard.received.name if guard.received is not None else "a stop signal"
    return (
        f"{name} received: {writer.rows_done} of {writer.n_rows} rows are saved in {writer.path}; "
        "to continue, run the same command with --resume"
    )
