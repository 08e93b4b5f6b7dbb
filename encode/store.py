"""The HDF5 feature store: the contract between ``encode/`` (writer) and ``align/`` / ``evaluate/`` (readers).

One file holds the pooled features of one (modality, model, pooling or caption column):

- ``features`` [N, D] float16 or float32; rows that failed are NaN, never a plausible vector;
- ``keys`` [N] UTF-8; ``valid`` [N] bool; caption stores also ``image_keys`` [N] linking captions to images;
- ``rows_done`` [1] int64: how many rows are durably written (the resume point);
- attrs: the :class:`StoreMeta` fields, ``complete``, ``failures``, ``failed_keys`` and ``format_version``.

Crash safety: every dataset is contiguous and allocated when the file is created, so after the header is flushed
a write only touches raw data at fixed offsets. Features are written and flushed before ``rows_done`` moves, so
a process killed at any point (``kill -9`` included) leaves a file whose first ``rows_done`` rows are final.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import h5py
import numpy as np

from encode import __version__

FORMAT_VERSION = 1
MAX_REPORTED_FAILURES = 20
Modality = Literal["image", "text"]


class StoreError(ValueError):
    """A feature store cannot be written or read as asked; the message says what to do."""


class IncompleteStoreError(StoreError):
    """The store was not finished (its encode run was interrupted)."""


@dataclass(frozen=True)
class StoreMeta:
    """What a store holds and how it was made; saved as HDF5 attrs beside the features."""

    modality: Modality
    model: str
    model_revision: str
    pooling: str
    dim: int
    dtype: str = "float16"
    caption_column: str | None = None
    instruction: str | None = None
    max_length: int | None = None
    normalized: bool = False
    source: str = ""
    toolkit_version: str = __version__

    # Fields that may differ between a run and its resume without changing the features.
    _RESUME_EXEMPT = ("toolkit_version",)

    def __post_init__(self) -> None:
        if self.modality not in ("image", "text"):
            raise StoreError(f"modality must be 'image' or 'text', got {self.modality!r}")
        if self.dtype not in ("float16", "float32"):
            raise StoreError(f"dtype must be 'float16' or 'float32', got {self.dtype!r}")
        if self.dim <= 0:
            raise StoreError(f"dim must be positive, got {self.dim}")

    def to_attrs(self) -> dict[str, object]:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}

    @classmethod
    def from_attrs(cls, attrs: h5py.AttributeManager) -> StoreMeta:
        values = {}
        for field in dataclasses.fields(cls):
            if field.name in attrs:
                value = attrs[field.name]
                values[field.name] = value.item() if isinstance(value, np.generic) else value
        return cls(**values)

    def differences(self, other: StoreMeta) -> list[str]:
        """Fields (other than the toolkit version) whose values differ, as ``name: mine != theirs``."""
        out = []
        for field in dataclasses.fields(self):
            if field.name in self._RESUME_EXEMPT:
                continue
            mine, theirs = getattr(self, field.name), getattr(other, field.name)
            if mine != theirs:
                out.append(f"{field.name}: {theirs!r} in the file != {mine!r} now")
        return out


def _utf8_array(values: Sequence[str]) -> np.ndarray:
    """Fixed-length UTF-8 strings: stored contiguously, read back with ``.asstr()``."""
    encoded = [v.encode("utf-8") for v in values]
    longest = max((len(e) for e in encoded), default=1)
    return np.array(encoded, dtype=h5py.string_dtype("utf-8", length=max(longest, 1)))


def check_keys(keys: Sequence[str]) -> None:
    """Keys must be non-empty and unique: they are how captions find images and shards find each other."""
    if len(keys) == 0:
        raise StoreError("no rows to encode: the input is empty")
    array = np.asarray(keys, dtype=object)
    if any(not isinstance(k, str) or not k for k in array):
        raise StoreError("every key must be a non-empty string")
    unique, counts = np.unique(array.astype(str), return_counts=True)
    if len(unique) != len(array):
        dupes = unique[counts > 1][:5].tolist()
        raise StoreError(f"keys must be unique; duplicated: {dupes}")


class FeatureStoreWriter:
    """Writes one store row chunk by row chunk; resumable after a crash.

    Call :meth:`preflight` (cheap, no file written) before loading models so bad input fails before any work.
    Rows must be written in order with :meth:`write`; :meth:`finish` marks the store complete.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        meta: StoreMeta,
        keys: Sequence[str],
        image_keys: Sequence[str] | None = None,
        *,
        resume: bool = False,
        overwrite: bool = False,
    ) -> None:
        self.path = Path(path)
        self.meta = meta
        self.n_rows = len(keys)
        existing = self.preflight(self.path, meta, keys, image_keys, resume=resume, overwrite=overwrite)
        if existing:
            self._file = h5py.File(self.path, "r+")
        else:
            self._file = self._create(keys, image_keys)
        self._features = self._file["features"]
        self._valid = self._file["valid"]
        self._rows_done = self._file["rows_done"]
        self.rows_done = int(self._rows_done[0])

    @staticmethod
    def preflight(
        path: str | os.PathLike,
        meta: StoreMeta,
        keys: Sequence[str],
        image_keys: Sequence[str] | None = None,
        *,
        resume: bool = False,
        overwrite: bool = False,
    ) -> bool:
        """Validate the request without writing; return True when an existing store will be resumed.

        With ``overwrite`` an existing file is removed here, after all other checks passed.
        """
        path = Path(path)
        check_keys(keys)
        if image_keys is not None and len(image_keys) != len(keys):
            raise StoreError(f"image_keys has {len(image_keys)} entries for {len(keys)} keys")
        if meta.modality == "text" and image_keys is None:
            raise StoreError("a text store needs image_keys linking each caption to its image")
        if not path.parent.exists():
            raise StoreError(f"output folder {path.parent} does not exist; create it first")
        if not path.exists():
            return False
        if resume:
            try:
                with h5py.File(path, "r") as f:
                    old = StoreMeta.from_attrs(f.attrs)
                    old_keys = f["keys"].asstr()[...]
            except (OSError, KeyError, TypeError) as err:
                raise StoreError(
                    f"{path} cannot be resumed: it is not a readable feature store ({err}). "
                    "Pass --overwrite to start it again."
                ) from err
            diffs = meta.differences(old)
            if diffs:
                raise StoreError(
                    f"{path} was written with other settings and cannot be resumed: "
                    + "; ".join(diffs)
                    + ". Use another --out, or --overwrite to start again."
                )
            if len(old_keys) != len(keys) or not np.array_equal(old_keys, np.asarray(keys, dtype=object)):
                raise StoreError(
                    f"{path} holds other rows ({len(old_keys)}) than this input ({len(keys)}); "
                    "resume with the same --data, --limit and shard settings, or pass --overwrite."
                )
            return True
        if overwrite:
            path.unlink()
            return False
        raise StoreError(
            f"{path} already exists. Pass --resume to continue it, or --overwrite to replace it."
        )

    def _create(self, keys: Sequence[str], image_keys: Sequence[str] | None) -> h5py.File:
        n, dim = len(keys), self.meta.dim
        f = h5py.File(self.path, "w")
        try:
            f.attrs.update(self.meta.to_attrs())
            f.attrs.update(complete=False, failures=0, failed_keys="[]", format_version=FORMAT_VERSION)
            common = {"track_times": False, "dcpl": _early_allocation()}
            f.create_dataset("features", shape=(n, dim), dtype=self.meta.dtype, **common)
            f.create_dataset("valid", shape=(n,), dtype=bool, **common)
            f.create_dataset("keys", data=_utf8_array(keys), track_times=False)
            if image_keys is not None:
                f.create_dataset("image_keys", data=_utf8_array(image_keys), track_times=False)
            f.create_dataset("rows_done", data=np.zeros(1, dtype=np.int64), **common)
            f.flush()
        except BaseException:
            f.close()
            self.path.unlink(missing_ok=True)
            raise
        return f

    @property
    def done(self) -> bool:
        return self.rows_done >= self.n_rows

    def write(self, features: np.ndarray, valid: np.ndarray) -> None:
        """Append rows at the resume point; failed rows (``valid`` False) are stored as NaN."""
        count = len(features)
        if count != len(valid) or self.rows_done + count > self.n_rows:
            raise StoreError(f"cannot write {count} rows at {self.rows_done} of {self.n_rows}")
        features = np.asarray(features, dtype=self.meta.dtype).copy()
        features[~np.asarray(valid, dtype=bool)] = np.nan
        stop = self.rows_done + count
        self._features[self.rows_done : stop] = features
        self._valid[self.rows_done : stop] = valid
        self._file.flush()
        self._rows_done[0] = stop
        self._file.flush()
        self.rows_done = stop

    def finish(self) -> dict[str, object]:
        """Mark the store complete; returns the failure summary also saved in the attrs."""
        if not self.done:
            raise StoreError(f"only {self.rows_done} of {self.n_rows} rows were written")
        valid = self._valid[...]
        failed = np.flatnonzero(~valid)
        first = self._file["keys"].asstr()[failed[:MAX_REPORTED_FAILURES]].tolist() if len(failed) else []
        summary = {"rows": self.n_rows, "failures": int(len(failed)), "failed_keys": first}
        self._file.attrs.update(failures=len(failed), failed_keys=json.dumps(first), complete=True)
        self.close()
        return summary

    def close(self) -> None:
        if self._file.id.valid:
            self._file.close()

    def __enter__(self) -> FeatureStoreWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _early_allocation() -> h5py.h5p.PropDCID:
    """Contiguous storage allocated at creation and never filled (rows are always written explicitly)."""
    dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
    dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
    dcpl.set_fill_time(h5py.h5d.FILL_TIME_NEVER)
    return dcpl


class FeatureStore:
    """Read access to a finished store without loading it whole.

    >>> with FeatureStore("coco_text.h5") as store:
    ...     block = store.read(0, 1024)          # rows [0, 1024) as float32
    ...     image_rows = store.join(images)      # image row of each caption
    """

    def __init__(self, path: str | os.PathLike, *, allow_incomplete: bool = False) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise StoreError(f"feature store {self.path} does not exist")
        try:
            self._file = h5py.File(self.path, "r")
        except OSError as err:
            raise StoreError(f"{self.path} is not a readable HDF5 feature store ({err})") from err
        attrs = self._file.attrs
        if "features" not in self._file or "modality" not in attrs:
            self._file.close()
            raise StoreError(f"{self.path} is an HDF5 file but not a feature store (no 'features' or attrs)")
        self.meta = StoreMeta.from_attrs(attrs)
        self.complete = bool(attrs.get("complete", False))
        if not self.complete and not allow_incomplete:
            done, total = int(self._file["rows_done"][0]), self._file["features"].shape[0]
            self._file.close()
            raise IncompleteStoreError(
                f"{self.path} is incomplete ({done} of {total} rows): its encode run was interrupted. "
                "Rerun the same encode command with --resume to finish it."
            )
        self.failures = int(attrs.get("failures", 0))
        self.failed_keys: list[str] = json.loads(attrs.get("failed_keys", "[]"))
        self._features = self._file["features"]
        self._keys: np.ndarray | None = None
        self._image_keys: np.ndarray | None = None
        self._valid: np.ndarray | None = None

    def __len__(self) -> int:
        return self._features.shape[0]

    @property
    def dim(self) -> int:
        return self._features.shape[1]

    @property
    def keys(self) -> np.ndarray:
        if self._keys is None:
            self._keys = self._file["keys"].asstr()[...]
        return self._keys

    @property
    def image_keys(self) -> np.ndarray | None:
        if self._image_keys is None and "image_keys" in self._file:
            self._image_keys = self._file["image_keys"].asstr()[...]
        return self._image_keys

    @property
    def valid(self) -> np.ndarray:
        if self._valid is None:
            self._valid = self._file["valid"][...]
        return self._valid

    def read(self, start: int = 0, stop: int | None = None, dtype: np.dtype | str = np.float32) -> np.ndarray:
        """Rows ``[start, stop)`` as an array of ``dtype``, read from disk (not cached)."""
        return self._features[start:stop].astype(dtype, copy=False)

    def take(self, rows: np.ndarray, dtype: np.dtype | str = np.float32) -> np.ndarray:
        """Arbitrary rows in the given order (read in sorted order, then permuted back)."""
        rows = np.asarray(rows, dtype=np.int64)
        if len(rows) == 0:
            return np.empty((0, self.dim), dtype=dtype)
        order = np.argsort(rows, kind="stable")
        sorted_rows = rows[order]
        unique, inverse = np.unique(sorted_rows, return_inverse=True)
        block = self._features[unique].astype(dtype, copy=False)[inverse]
        out = np.empty_like(block)
        out[order] = block
        return out

    def load(self, dtype: np.dtype | str = np.float32) -> np.ndarray:
        """All features in memory."""
        return self.read(0, None, dtype)

    def join(self, image_store: FeatureStore) -> np.ndarray:
        """For a caption store: the row in ``image_store`` of each caption's image, -1 where it has none."""
        if self.image_keys is None:
            raise StoreError(f"{self.path} has no image_keys: only caption stores can be joined to images")
        return index_of(image_store.keys, self.image_keys)

    def close(self) -> None:
        if self._file.id.valid:
            self._file.close()

    def __enter__(self) -> FeatureStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        m = self.meta
        return f"FeatureStore({str(self.path)!r}, {m.modality}, {m.model}, {m.pooling}, rows={len(self)}, dim={self.dim})"


def index_of(haystack: np.ndarray, needles: np.ndarray) -> np.ndarray:
    """Position of each needle in ``haystack`` (unique keys), -1 where absent; vectorised."""
    haystack = np.asarray(haystack).astype(str)
    needles = np.asarray(needles).astype(str)
    if len(haystack) == 0:
        return np.full(len(needles), -1, dtype=np.int64)
    order = np.argsort(haystack, kind="stable")
    sorted_keys = haystack[order]
    pos = np.clip(np.searchsorted(sorted_keys, needles), 0, len(sorted_keys) - 1)
    return np.where(sorted_keys[pos] == needles, order[pos], -1).astype(np.int64)
