"""The HDF5 feature store: the contract between ``encode/`` (writer) and ``align/`` / ``evaluate/`` (readers).

One file holds the pooled features of one (modality, model, pooling or caption column):

- ``features`` [N, D] float16 or float32; rows that failed are NaN, never a plausible vector;
- ``keys`` [N] UTF-8; ``valid`` [N] bool; caption stores also ``image_keys`` [N] linking captions to images;
- ``rows_done`` [1] int64: how many rows are durably written (the resume point);
- attrs: the :class:`StoreMeta` fields, ``complete``, ``failures``, ``failed_keys`` and ``format_version``.

Crash safety: a new store is built under a temporary name (``<out>.creating``) and renamed to ``out`` once its
header is flushed, so ``out`` is never a half-made file. Every dataset is contiguous and allocated when the file
is created, so afterwards a write only touches raw data at fixed offsets. Features are written and flushed before
``rows_done`` moves, so a process killed at any point (``kill -9`` included) leaves a file whose first
``rows_done`` rows are final. A write the disk refuses (full, quota, I/O error) raises :class:`StoreWriteError`
and leaves the file as it was before that write: resumable.

Another process holding a store open keeps its HDF5 file lock; every open here waits up to
:data:`LOCK_WAIT_SECONDS` for it, retrying, then raises :class:`StoreLockedError`, which says so.

What happens to an existing output is decided here, before anything is written: :func:`check_output` (the path,
an existing file, a resume against other settings), :meth:`FeatureStoreWriter.preflight` (the same plus the
rows; with ``overwrite`` it replaces a readable store and moves an unreadable file aside, see :func:`move_aside`)
and :func:`complete_store` (a finished store that a resume keeps as it is). :class:`StoreStatus` is what an
existing file says about itself. No message advises discarding an unfinished store: it says ``--resume``.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Literal

import h5py
import numpy as np

from core.staging import fsync_path
from encode import __version__

FORMAT_VERSION = 1
MAX_REPORTED_FAILURES = 20
Modality = Literal["image", "text"]

#: Seconds every open of a store waits, retrying, while another process holds it open (its HDF5 file lock),
#: e.g. the loader workers of a killed run that are still exiting. ``ENCODE_LOCK_WAIT_SECONDS`` overrides it.
LOCK_WAIT_SECONDS = float(os.environ.get("ENCODE_LOCK_WAIT_SECONDS", "30"))
LOCK_RETRY_SECONDS = 0.25

logger = logging.getLogger(__name__)


class StoreError(ValueError):
    """A feature store cannot be written or read as asked; the message says what to do."""


class IncompleteStoreError(StoreError):
    """The store was not finished (its encode run was interrupted)."""


class StoreLockedError(StoreError):
    """Another process held the store open (its HDF5 file lock) for longer than :data:`LOCK_WAIT_SECONDS`."""


class StoreWriteError(StoreError):
    """The disk refused a write (full, over quota, read-only, I/O error); the rows written before are intact."""


def is_lock_error(err: BaseException) -> bool:
    """Whether ``err`` is HDF5's refusal to open a file that another process holds (errno 11, "unable to lock")."""
    return isinstance(err, OSError) and (
        err.errno in (errno.EAGAIN, errno.EWOULDBLOCK) or "unable to lock file" in str(err).lower()
    )


def _lock_holder(path: Path) -> str:
    """``pid N`` of a live process that /proc/locks says holds a lock on ``path``, else ``pid unknown``."""
    try:
        inode = path.stat().st_ino
        lines = Path("/proc/locks").read_text().splitlines()
    except OSError:
        return "pid unknown"
    for line in lines:
        fields = line.split()
        if (
            len(fields) > 5
            and fields[5].rsplit(":", 1)[-1] == str(inode)
            and fields[4].isdigit()
            and Path("/proc", fields[4]).exists()
        ):
            return f"pid {fields[4]}"
    return "pid unknown"


def locked_message(path: str | os.PathLike, waited: float) -> str:
    path = Path(path)
    return (
        f"{path} is open in another process ({_lock_holder(path)}) — another encode still running, or its "
        f"workers still exiting; it was still locked after {waited:g} s. Wait until that process has exited, "
        "then run the same command again (with --resume an interrupted store continues where it stopped)."
    )


def sync_h5(f: h5py.File) -> None:
    """Flush the file's buffers and fsync them to the disk, so that what was written survives a node crash or a
    power loss, not only a killed process (h5py's flush reaches the OS, not the disk)."""
    f.flush()
    os.fsync(f.id.get_vfd_handle())


def open_h5(path: str | os.PathLike, mode: str = "r") -> h5py.File:
    """``h5py.File(path, mode)``; while another process holds the file's lock, retry for up to
    :data:`LOCK_WAIT_SECONDS`, then raise :class:`StoreLockedError`. Other errors propagate as they are."""
    wait = LOCK_WAIT_SECONDS
    deadline = time.monotonic() + wait
    warned = False
    while True:
        try:
            return h5py.File(path, mode)
        except OSError as err:
            if not is_lock_error(err):
                raise
            left = deadline - time.monotonic()
            if left <= 0:
                raise StoreLockedError(locked_message(path, wait)) from err
            if not warned:
                logger.warning(
                    "%s is open in another process; waiting up to %g s for it to close", path, wait
                )
                warned = True
            time.sleep(min(LOCK_RETRY_SECONDS, left))


def disk_problem(err: OSError) -> str:
    """What an OSError from a write says about the disk, in words."""
    text = str(err).lower()
    if err.errno == errno.ENOSPC or "errno = 28" in text or "no space left" in text:
        return "the disk is full (no space left on device)"
    if err.errno == errno.EDQUOT or "errno = 122" in text or "quota" in text:
        return "the disk quota is exceeded"
    if err.errno == errno.EROFS or "read-only file system" in text:
        return "the file system is read-only"
    detail = os.strerror(err.errno) if err.errno else " ".join(text.split())[:200]
    return f"the write failed ({detail})"


def move_aside(path: str | os.PathLike) -> Path:
    """Rename ``path`` to ``NAME.unreadable-YYYYmmdd-HHMMSS.SUFFIX`` beside it (never over another file)."""
    path = Path(path)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    target = path.with_name(f"{path.stem}.unreadable-{stamp}{path.suffix}")
    number = 1
    while target.exists():
        number += 1
        target = path.with_name(f"{path.stem}.unreadable-{stamp}-{number}{path.suffix}")
    path.rename(target)
    return target


def _changed(path: Path) -> StoreError:
    return StoreError(
        f"{path} changed while this run was starting (another process writing it?); "
        "run the same command again with --resume"
    )


def _aside_name(path: Path) -> str:
    return f"{path.stem}.unreadable-<date>-<time>{path.suffix}"


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

    def resume_settings(self) -> dict[str, object]:
        """The fields a resume must match: all but the toolkit version."""
        return {
            field.name: getattr(self, field.name)
            for field in dataclasses.fields(self)
            if field.name not in self._RESUME_EXEMPT
        }

    def differences(self, other: StoreMeta) -> list[str]:
        """Fields (other than the toolkit version) whose values differ, as ``name: theirs in the file != mine``."""
        return setting_differences(other, self.resume_settings())


def setting_differences(stored: StoreMeta, wanted: Mapping[str, object]) -> list[str]:
    """``name: stored in the file != wanted now`` for each field in ``wanted`` whose stored value differs."""
    return [
        f"{name}: {getattr(stored, name)!r} in the file != {value!r} now"
        for name, value in wanted.items()
        if getattr(stored, name) != value
    ]


@dataclass(frozen=True)
class StoreStatus:
    """An existing store file as its attrs say (its features are not read).

    ``rows`` is the row count the file was created for and ``rows_done`` how many are durably written.
    """

    path: Path
    meta: StoreMeta
    complete: bool
    rows: int
    rows_done: int
    failures: int
    failed_keys: list[str]

    def holds(self, keys: Sequence[str]) -> bool:
        """Whether the store's rows are exactly ``keys``, in order (reads the stored keys)."""
        with open_h5(self.path) as f:
            stored = f["keys"].asstr()[...]
        return len(stored) == len(keys) and np.array_equal(stored, np.asarray(keys, dtype=object))

    def complete_with(self, keys: Sequence[str], settings: Mapping[str, object]) -> bool:
        """Whether the store is complete, has every value in ``settings`` and holds exactly ``keys``."""
        return self.complete and not setting_differences(self.meta, settings) and self.holds(keys)


# What reading a file that is not (or no longer) a feature store raises; StoreLockedError is caught before.
_UNREADABLE = (OSError, KeyError, TypeError, ValueError, RuntimeError)


def _read_status(path: Path) -> StoreStatus:
    """The status of the store file at ``path``; raises StoreLockedError, or one of ``_UNREADABLE``."""
    with open_h5(path) as f:
        attrs = f.attrs
        return StoreStatus(
            path=path,
            meta=StoreMeta.from_attrs(attrs),
            complete=bool(attrs.get("complete", False)),
            rows=int(f["keys"].shape[0]),
            rows_done=int(f["rows_done"][0]),
            failures=int(attrs.get("failures", 0)),
            failed_keys=json.loads(attrs.get("failed_keys", "[]")),
        )


def check_output(
    path: str | os.PathLike,
    *,
    resume: bool = False,
    overwrite: bool = False,
    settings: Mapping[str, object] | None = None,
) -> StoreStatus | None:
    """Decide, without writing, what an encode run may do with the output ``path``.

    Returns the status of the existing store that ``resume`` continues, or None when there is no file or
    ``overwrite`` will replace it (a readable store) or move it aside (an unreadable file). Raises StoreError when
    the folder is missing, ``path`` is a folder, the file exists without ``resume`` or ``overwrite``, is not a
    readable store (with ``resume``), or differs from ``settings`` (store meta field -> value; only the fields
    given are compared); :class:`StoreLockedError` when another process holds it open.
    """
    path = Path(path)
    if resume and overwrite:
        raise StoreError("resume and overwrite exclude each other: pick one")
    if not path.parent.is_dir():
        raise StoreError(f"output folder {path.parent} does not exist; create it first")
    if path.is_dir():
        raise StoreError(f"--out {path} is a folder; give a file name such as {path / 'features.h5'}")
    if not path.exists():
        return None
    try:
        status = _read_status(path)
    except StoreLockedError:
        raise
    except _UNREADABLE as err:
        if overwrite:
            return None
        what = "cannot be resumed: it is" if resume else "already exists and is"
        raise StoreError(
            f"{path} {what} not a readable feature store ({err}). Pass --overwrite to move it aside "
            f"(to {_aside_name(path)}) and start a new store, or use another --out."
        ) from err
    if overwrite:
        return None
    if not resume:
        if status.complete:
            raise StoreError(
                f"{path} already exists (a complete store of {status.rows} rows). Pass --resume to keep it "
                "as it is, --overwrite to replace it, or use another --out."
            )
        raise StoreError(
            f"{path} already exists: an unfinished store ({status.rows_done} of {status.rows} rows written). "
            "Pass --resume to continue it, or use another --out."
        )
    diffs = setting_differences(status.meta, settings or {})
    if diffs:
        raise StoreError(
            f"{path} was written with other settings and cannot be resumed: {'; '.join(diffs)}. "
            "Rerun with the settings in the file and --resume to continue it, or use another --out."
        )
    return status


def _clear_for_overwrite(path: Path) -> None:
    """Remove a readable store at ``path``; move any other file aside (its bytes kept under a new name)."""
    try:
        _read_status(path)
    except StoreLockedError:
        raise
    except _UNREADABLE as err:
        target = move_aside(path)
        logger.warning("%s is not a readable feature store (%s): moved it aside to %s", path, err, target)
        return
    path.unlink()


def complete_store(
    path: str | os.PathLike, meta: StoreMeta, keys: Sequence[str], image_keys: Sequence[str] | None = None
) -> StoreStatus | None:
    """The store at ``path`` when it is complete with ``meta``'s settings and exactly these rows, so that a
    resume leaves it as it is, byte for byte; None when there is no file or it is unfinished.

    Raises StoreError (see :meth:`FeatureStoreWriter.preflight`) when the file holds other settings or rows.
    """
    if not Path(path).exists():
        return None
    status = FeatureStoreWriter.preflight(path, meta, keys, image_keys, resume=True)
    return status if status is not None and status.complete else None


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

    Call :meth:`preflight` (cheap, no file written) before loading models so bad input fails before any work;
    :meth:`open_checked` then opens what it accepted without checking again. Rows must be written in order with
    :meth:`write` (or copied from another store with :meth:`append_from`); :meth:`finish` marks the store
    complete. A write the disk refuses raises :class:`StoreWriteError` and leaves the store resumable.
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
        status = self.preflight(path, meta, keys, image_keys, resume=resume, overwrite=overwrite)
        self._open(Path(path), meta, keys, image_keys, status)

    @classmethod
    def open_checked(
        cls,
        path: str | os.PathLike,
        meta: StoreMeta,
        keys: Sequence[str],
        image_keys: Sequence[str] | None,
        status: StoreStatus | None,
    ) -> FeatureStoreWriter:
        """Open the output that :meth:`preflight` accepted, without checking it again: resume the store
        ``status`` describes (what preflight returned), or create a new one when it is None.

        Raises StoreError when the file changed since (another process wrote it in between).
        """
        writer = cls.__new__(cls)
        writer._open(Path(path), meta, keys, image_keys, status)
        return writer

    def _open(
        self,
        path: Path,
        meta: StoreMeta,
        keys: Sequence[str],
        image_keys: Sequence[str] | None,
        status: StoreStatus | None,
    ) -> None:
        self.path = path
        self.meta = meta
        self.n_rows = len(keys)
        if status is None:
            if path.exists():
                raise _changed(path)
            self._file = self._create(keys, image_keys)
        else:
            try:
                self._file = open_h5(path, "r+")
            except OSError as err:
                raise StoreError(f"cannot open {path} for writing ({err})") from err
            if (
                self._file["keys"].shape[0] != self.n_rows
                or int(self._file["rows_done"][0]) != status.rows_done
            ):
                self._file.close()
                raise _changed(path)
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
    ) -> StoreStatus | None:
        """Validate the request without writing; returns the status of the existing store that will be resumed.

        The rows must be valid (:func:`check_keys`, ``image_keys`` for text) and the output as
        :func:`check_output` requires, with a resumed store of the same settings and rows. With ``overwrite``
        an existing readable store is removed here, after all other checks passed, and any other file is moved
        aside (:func:`move_aside`, logged with the new name).
        """
        path = Path(path)
        check_keys(keys)
        if image_keys is not None and len(image_keys) != len(keys):
            raise StoreError(f"image_keys has {len(image_keys)} entries for {len(keys)} keys")
        if meta.modality == "text" and image_keys is None:
            raise StoreError("a text store needs image_keys linking each caption to its image")
        status = check_output(path, resume=resume, overwrite=overwrite, settings=meta.resume_settings())
        if status is None:
            if overwrite and path.exists():
                _clear_for_overwrite(path)
            return None
        if not status.holds(keys):
            raise StoreError(
                f"{path} holds other rows ({status.rows}) than this input ({len(keys)}); "
                "resume with the same --data, --limit and shard settings, or use another --out."
            )
        return status

    def _create(self, keys: Sequence[str], image_keys: Sequence[str] | None) -> h5py.File:
        """Build the file as ``<path>.creating`` and rename it to ``path`` once its header is flushed."""
        n, dim = len(keys), self.meta.dim
        partial = self.path.with_name(self.path.name + ".creating")
        try:
            f = open_h5(partial, "w")
        except OSError as err:
            raise self._write_error(err) from err
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
            sync_h5(f)
            partial.replace(self.path)
        except BaseException as err:
            try:
                f.close()
            finally:
                partial.unlink(missing_ok=True)
            if isinstance(err, OSError):
                raise self._write_error(err) from err
            raise
        fsync_path(self.path.parent)  # the rename is durable too
        return f

    def _write_error(self, err: OSError, rows_done: int | None = None) -> StoreWriteError:
        done = getattr(self, "rows_done", 0) if rows_done is None else rows_done
        fix = "free some space" if "full" in disk_problem(err) or "quota" in disk_problem(err) else "fix that"
        return StoreWriteError(
            f"cannot write {self.path}: {disk_problem(err)}. {done} of {self.n_rows} rows are saved; "
            f"{fix}, then run the same command with --resume."
        )

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
        try:
            self._features[self.rows_done : stop] = features
            self._valid[self.rows_done : stop] = valid
            sync_h5(self._file)  # the rows are on the disk before the counter that says they are
            self._rows_done[0] = stop
            self._file.flush()  # the counter reaches the disk with the next batch's sync (or finish)
        except OSError as err:
            raise self._write_error(err) from err
        self.rows_done = stop

    def append_from(
        self,
        source: FeatureStore,
        offset: int,
        block_rows: int = 65536,
        should_stop: Callable[[], bool] | None = None,
    ) -> bool:
        """Copy ``source``, which holds rows ``[offset, offset + len(source))`` of this store, in blocks of
        ``block_rows``; rows before the resume point are already written and skipped.

        Returns False when ``should_stop()`` turned true after a block (the rows copied so far are flushed).
        """
        stop = offset + len(source)
        if self.rows_done < offset:
            raise StoreError(
                f"cannot copy rows {offset}-{stop}: rows {self.rows_done}-{offset} are not written"
            )
        for first in range(self.rows_done, stop, block_rows):
            last = min(first + block_rows, stop)
            rows = slice(first - offset, last - offset)
            self.write(source.read(rows.start, rows.stop, dtype=self.meta.dtype), source.valid[rows])
            if should_stop is not None and last < stop and should_stop():
                return False
        return True

    def finish(self) -> dict[str, object]:
        """Mark the store complete; returns the failure summary also saved in the attrs."""
        if not self.done:
            raise StoreError(f"only {self.rows_done} of {self.n_rows} rows were written")
        valid = self._valid[...]
        failed = np.flatnonzero(~valid)
        first = self._file["keys"].asstr()[failed[:MAX_REPORTED_FAILURES]].tolist() if len(failed) else []
        summary = {"rows": self.n_rows, "failures": int(len(failed)), "failed_keys": first}
        try:
            self._file.attrs.update(failures=len(failed), failed_keys=json.dumps(first), complete=True)
            sync_h5(self._file)
        except OSError as err:
            raise self._write_error(err) from err
        self.close()
        return summary

    def close(self) -> None:
        """Close the file; raises :class:`StoreWriteError` when its last flush fails."""
        if self._file.id.valid:
            try:
                self._file.close()
            except OSError as err:
                raise self._write_error(err) from err

    def __enter__(self) -> FeatureStoreWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc is None:
            self.close()
            return
        try:  # the error in flight says more than a failed close after it
            self.close()
        except StoreError as close_error:
            logger.debug("closing %s after %r also failed: %s", self.path, exc, close_error)


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
            self._file = open_h5(self.path)
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
