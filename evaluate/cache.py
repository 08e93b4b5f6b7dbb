"""Feature cache: embeddings computed once per (model fingerprint, dataset inputs, preprocessing), stored as
safetensors (never pickle).

The model fingerprint hashes the model's config (architecture, checkpoint, preprocessing) *and* every weight
tensor, so a retrained head or a swapped backbone never reuses stale features. The entry key additionally hashes
the exact inputs (image paths with size and mtime, or the texts) and the input kind, so a changed dataset or a
different prompt set gets its own entry.

The cache is an optimisation and survives what clusters do to long jobs:

- *SIGKILL at any point.* An entry is written to a temporary file unique to the writing process
  (``NAME.PID.TOKEN.HOST.tmp``), fsynced, read back and validated, renamed over ``NAME`` with
  :func:`os.replace` and the directory fsynced, so ``NAME`` is either absent or complete, also with several
  evaluations sharing one cache dir. Temporary files are never read; one left by a killed run is deleted the
  next time its folder is used, once its process is gone (same host) or it is older than
  :data:`STALE_TMP_SECONDS` (any host).
- *Damaged entries.* Every entry carries its fingerprint, kind, inputs digest, row count and a sha256 of the
  features in its metadata; an entry that safetensors cannot read or that disagrees with its metadata (a
  truncated file, bytes damaged by hand, a file copied under another name) is logged as a warning naming the
  file, renamed to ``NAME.corrupt`` and recomputed.
- *Write failures.* A failed write (disk full, permission denied, a cache path that is a file, or a written
  file that does not read back, e.g. a short write the filesystem did not report) leaves no temporary file
  behind and logs one warning; the features are still returned, and the run writes no further entries (reads
  continue).
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import secrets
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor

from core.fingerprint import file_stamp
from core.protocol import EmbeddingModel
from core.staging import fsync_path

logger = logging.getLogger(__name__)

CACHE_ENV = "EVALUATE_CACHE_DIR"
CACHE_FORMAT_VERSION = "2"
"""Part of every entry key; version 2 entries carry the metadata that :class:`FeatureCache` validates."""
STALE_TMP_SECONDS = 3600.0
"""A temporary file older than this is deleted whatever process wrote it (e.g. one on another host)."""


def default_cache_dir() -> Path:
    """``$EVALUATE_CACHE_DIR``, else ``$XDG_CACHE_HOME/multimodal-toolkit/evaluate`` (``~/.cache/...``)."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return base / "multimodal-toolkit" / "evaluate"


def _json_default(value: object) -> str:
    return repr(value)


def model_config(model: EmbeddingModel) -> dict:
    """The JSON-able description of a model saved in result files (``model.config`` when present)."""
    config = getattr(model, "config", None)
    if isinstance(config, dict):
        return json.loads(json.dumps(config, default=_json_default))
    if config is not None and hasattr(config, "to_dict"):
        return json.loads(json.dumps(config.to_dict(), default=_json_default))
    return {"class": f"{type(model).__module__}.{type(model).__qualname__}"}


def hash_state_dict(state_dict: dict[str, Tensor]) -> str:
    """sha256 over names, dtypes, shapes and raw bytes of every tensor, in sorted name order."""
    digest = hashlib.sha256()
    for name in sorted(state_dict):
        tensor = state_dict[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _weights(model: EmbeddingModel) -> dict[str, Tensor] | None:
    """The weights hashed into the fingerprint: ``model.state_dict()`` (for align's ``AlignedModel`` the head's
    weights; its frozen backbones are named with their revision in ``model.config``), or None without one."""
    state_dict = getattr(model, "state_dict", None)
    return state_dict() if callable(state_dict) else None


def model_fingerprint(model: EmbeddingModel) -> str:
    """A stable id of the model's config and weights (``model.fingerprint`` when it provides one)."""
    own = getattr(model, "fingerprint", None)
    if isinstance(own, str) and own:
        return own
    state_dict = _weights(model)
    if state_dict is None:
        raise ValueError(
            f"cannot fingerprint {type(model).__name__}: give it a `fingerprint` string or a `state_dict()` "
            "method"
        )
    payload = json.dumps(model_config(model), sort_keys=True) + "|" + hash_state_dict(state_dict)
    return hashlib.sha256(payload.encode()).hexdigest()[:32]


def inputs_digest(kind: str, items: Sequence[str | os.PathLike]) -> str:
    """Hash of what is encoded: texts verbatim; files by resolved path, size and mtime."""
    digest = hashlib.sha256(f"{CACHE_FORMAT_VERSION}|{kind}|{len(items)}|".encode())
    for item in items:
        if isinstance(item, os.PathLike):
            digest.update(f"{file_stamp(item)}\n".encode())
        else:
            digest.update(item.encode() + b"\0")
    return digest.hexdigest()[:32]


def features_checksum(features: Tensor) -> str:
    """sha256 over dtype, shape and raw bytes of a CPU tensor (stored in each entry's metadata)."""
    digest = hashlib.sha256(f"{features.dtype}|{tuple(features.shape)}|".encode())
    digest.update(features.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _fsync_dir_best_effort(directory: Path) -> None:
    """fsync a directory so a rename in it is durable; some filesystems refuse directory fsync, and entries are
    validated when read, so a failure here is only logged."""
    try:
        fsync_path(directory)
    except OSError as error:
        logger.debug("cannot fsync directory %s: %s", directory, error)


def _remove_quietly(path: Path) -> None:
    try:
        path.unlink(missing_ok=True)
    except OSError as error:
        logger.debug("cannot remove %s: %s", path, error)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):
        return False
    except PermissionError:
        return True  # exists, owned by another user
    return True


def _tmp_is_stale(tmp: Path, host: str, now: float) -> bool:
    """A temporary file ``NAME.PID.TOKEN.HOST.tmp`` whose writer on this host is gone, or any ``*.tmp`` older
    than :data:`STALE_TMP_SECONDS`."""
    _, sep, owner = tmp.name[: -len(".tmp")].partition(".safetensors.")
    pid, _, rest = owner.partition(".")
    _, _, owner_host = rest.partition(".")
    if sep and pid.isdigit() and owner_host == host and not _process_alive(int(pid)):
        return True
    try:
        return now - tmp.stat().st_mtime > STALE_TMP_SECONDS
    except OSError:
        return False


@dataclass
class _RunState:
    """What one evaluation run shares between its caches (the model's and its backbones')."""

    write_error: str | None = None
    swept: set[Path] = field(default_factory=set)


class FeatureCache:
    """Directory of safetensors files ``<fingerprint>/<kind>-<inputs digest>.safetensors`` (one per rank's
    shard, ``<kind>-<inputs digest>-<start>-<end>.safetensors``, in a distributed evaluation).

    ``cache_dir=None`` disables caching (every call encodes). Caches derived with :meth:`for_fingerprint` share
    this one's run state: the folders already swept for stale temporary files and whether writing failed.
    """

    def __init__(self, cache_dir: str | os.PathLike | None, fingerprint: str) -> None:
        self.root = Path(cache_dir) / fingerprint if cache_dir is not None else None
        self.fingerprint = fingerprint
        self.hits = 0
        self.misses = 0
        self._state = _RunState()

    @property
    def write_error(self) -> str | None:
        """Why writing failed in this run (no further entries are written), or None."""
        return self._state.write_error

    def for_fingerprint(self, fingerprint: str) -> FeatureCache:
        """A cache in the same directory for another fingerprint (e.g. a model's frozen backbone)."""
        other = FeatureCache(None if self.root is None else self.root.parent, fingerprint)
        other._state = self._state
        return other

    def path(
        self, kind: str, items: Sequence[str | os.PathLike], shard: tuple[int, int] | None = None
    ) -> Path | None:
        """``<kind>-<digest>.safetensors``, or ``<kind>-<digest>-<start>-<end>.safetensors`` for the rows
        ``items[start:end]`` of a sharded (distributed) encoding; the digest always covers all ``items``."""
        if self.root is None:
            return None
        suffix = "" if shard is None else f"-{shard[0]}-{shard[1]}"
        return self.root / f"{kind}-{inputs_digest(kind, items)}{suffix}.safetensors"

    def get_or_compute(
        self,
        kind: str,
        items: Sequence[str | os.PathLike],
        compute: Callable[[], Tensor],
        shard: tuple[int, int] | None = None,
    ) -> Tensor:
        """Cached features for ``items`` (one row each) or ``compute()`` them and store them atomically.

        With ``shard=(start, end)`` the entry holds only the rows of ``items[start:end]`` (``compute()`` returns
        those), keyed by the digest of all ``items`` and the range, so each rank of a distributed evaluation
        stores and reuses its own shard.
        """
        rows = len(items)
        if shard is not None:
            start, end = shard
            if not 0 <= start <= end <= len(items):
                raise ValueError(f"shard {shard} out of range for {len(items)} inputs")
            rows = end - start
        path = self.path(kind, items, shard)
        if path is not None:
            self._sweep(path.parent)
            features = self._load(path, kind, rows)
            if features is not None:
                self.hits += 1
                logger.info("feature cache hit: %s", path)
                return features
            logger.info("feature cache miss: %s", path)
        self.misses += 1
        features = compute().detach().float().cpu().contiguous()
        if features.shape[0] != rows:
            raise RuntimeError(f"encoder returned {features.shape[0]} rows for {rows} inputs ({kind})")
        if path is not None:
            self._store(path, kind, features)
        return features

    def _sweep(self, root: Path) -> None:
        """Delete stale temporary files of killed writers in ``root``, once per folder and run."""
        if root in self._state.swept:
            return
        self._state.swept.add(root)
        try:
            candidates = list(root.glob("*.tmp"))
        except OSError:
            return
        host, now = socket.gethostname(), time.time()
        for tmp in candidates:
            if _tmp_is_stale(tmp, host, now):
                logger.info("removing temporary file of an interrupted cache write: %s", tmp)
                _remove_quietly(tmp)

    def _load(self, path: Path, kind: str, rows: int) -> Tensor | None:
        """The entry's features, or None when absent, unreadable or damaged (damaged ones are moved aside)."""
        try:
            features, problem = self._read_entry(path, kind, path.stem, rows)
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as error:
            logger.warning("cannot read feature cache entry %s (%s); computing the features", path, error)
            return None
        if problem is not None:
            self._quarantine(path, problem)
            return None
        return features

    def _read_entry(self, path: Path, kind: str, key: str, rows: int) -> tuple[Tensor | None, str | None]:
        """``(features, None)`` for a valid entry, ``(None, what is wrong)`` for a damaged one; raises OSError
        when the file cannot be opened."""
        try:
            with safe_open(str(path), framework="pt") as entry:
                metadata = entry.metadata() or {}
                keys = set(entry.keys())
                if keys != {"features"}:
                    return None, f"holds tensors {sorted(keys)} instead of 'features'"
                features = entry.get_tensor("features")
        except SafetensorError as error:
            return None, f"not a readable safetensors file: {error}"
        expected = {"fingerprint": self.fingerprint, "kind": kind, "key": key, "rows": str(rows)}
        for name, value in expected.items():
            if metadata.get(name) != value:
                return None, f"metadata {name}={metadata.get(name)!r}, expected {value!r}"
        if features.dtype != torch.float32 or features.ndim < 1 or features.shape[0] != rows:
            return (
                None,
                f"features {features.dtype} {tuple(features.shape)}, expected float32 with {rows} rows",
            )
        if metadata.get("sha256") != features_checksum(features):
            return None, "features do not match their sha256"
        return features, None

    def _quarantine(self, path: Path, problem: str) -> None:
        """Log a damaged entry and rename it to ``NAME.corrupt`` (kept for inspection) so it is recomputed."""
        aside = path.with_name(path.name + ".corrupt")
        try:
            os.replace(path, aside)
        except FileNotFoundError:
            return  # another process moved or replaced it meanwhile
        except OSError as error:
            logger.warning(
                "damaged feature cache entry %s (%s); cannot move it aside (%s); recomputing",
                path,
                problem,
                error,
            )
            return
        logger.warning("damaged feature cache entry %s (%s); moved to %s, recomputing", path, problem, aside)

    def _store(self, path: Path, kind: str, features: Tensor) -> None:
        """Write an entry atomically and durably; on failure log once, clean up and stop writing this run."""
        if self._state.write_error is not None:
            return
        tmp = path.with_name(f"{path.name}.{os.getpid()}.{secrets.token_hex(4)}.{socket.gethostname()}.tmp")
        metadata = {
            "fingerprint": self.fingerprint,
            "kind": kind,
            "key": path.stem,
            "rows": str(features.shape[0]),
            "sha256": features_checksum(features),
        }
        try:
            if not path.parent.is_dir():
                path.parent.mkdir(parents=True, exist_ok=True)
                _fsync_dir_best_effort(path.parent.parent)
            save_file({"features": features}, str(tmp), metadata=metadata)
            fsync_path(tmp)
            _, problem = self._read_entry(tmp, kind, path.stem, features.shape[0])
            if problem is not None:
                raise OSError(errno.EIO, f"the written entry does not read back: {problem}")
            os.replace(tmp, path)
        except (OSError, SafetensorError) as error:
            _remove_quietly(tmp)
            self._state.write_error = str(error)
            logger.warning(
                "feature cache: cannot write %s: %s; the evaluation continues, and this run writes no further "
                "cache entries",
                path,
                self._state.write_error,
            )
            return
        _fsync_dir_best_effort(path.parent)
