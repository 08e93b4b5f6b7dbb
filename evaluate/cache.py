"""Feature cache: embeddings computed once per (model fingerprint, dataset inputs, preprocessing), stored as
safetensors (never pickle).

The model fingerprint hashes the model's config (architecture, checkpoint, preprocessing) *and* every weight
tensor, so a retrained head or a swapped backbone never reuses stale features. The entry key additionally hashes
the exact inputs (image paths with size and mtime, or the texts) and the input kind, so a changed dataset or a
different prompt set gets its own entry.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from core.fingerprint import file_stamp
from core.protocol import EmbeddingModel

logger = logging.getLogger(__name__)

CACHE_ENV = "EVALUATE_CACHE_DIR"
CACHE_FORMAT_VERSION = "1"


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


class FeatureCache:
    """Directory of safetensors files ``<fingerprint>/<kind>-<inputs digest>.safetensors``.

    ``cache_dir=None`` disables caching (every call encodes).
    """

    def __init__(self, cache_dir: str | os.PathLike | None, fingerprint: str) -> None:
        self.root = Path(cache_dir) / fingerprint if cache_dir is not None else None
        self.fingerprint = fingerprint
        self.hits = 0
        self.misses = 0

    def for_fingerprint(self, fingerprint: str) -> FeatureCache:
        """A cache in the same directory for another fingerprint (e.g. a model's frozen backbone)."""
        return FeatureCache(None if self.root is None else self.root.parent, fingerprint)

    def path(self, kind: str, items: Sequence[str | os.PathLike]) -> Path | None:
        if self.root is None:
            return None
        return self.root / f"{kind}-{inputs_digest(kind, items)}.safetensors"

    def get_or_compute(
        self, kind: str, items: Sequence[str | os.PathLike], compute: Callable[[], Tensor]
    ) -> Tensor:
        """Cached features for ``items`` (one row each) or ``compute()`` them and store them atomically."""
        path = self.path(kind, items)
        if path is not None and path.is_file():
            features = load_file(str(path))["features"]
            if features.shape[0] == len(items):
                self.hits += 1
                logger.info("feature cache hit: %s", path)
                return features
            logger.warning(
                "ignoring cache entry %s with %d rows (expected %d)", path, features.shape[0], len(items)
            )
        self.misses += 1
        features = compute().detach().float().cpu().contiguous()
        if features.shape[0] != len(items):
            raise RuntimeError(f"encoder returned {features.shape[0]} rows for {len(items)} inputs ({kind})")
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            save_file(
                {"features": features},
                str(tmp),
                metadata={"fingerprint": self.fingerprint, "kind": kind, "rows": str(len(items))},
            )
            os.replace(tmp, path)
        return features
