"""Where a Hugging Face-style checkpoint lives (local folder or hub id), its config and its resolved revision."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transformers.models.auto.configuration_auto import CONFIG_MAPPING
from transformers.utils import cached_file
from transformers.utils.hub import extract_commit_hash

from encode.backbones.errors import UnknownModelError, remote_code_error


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint to load with ``from_pretrained``: ``location`` is the hub id or the absolute folder."""

    name: str
    location: str
    revision: str
    config: dict[str, Any]
    is_local: bool

    @property
    def model_type(self) -> str | None:
        return self.config.get("model_type")

    def has_file(self, filename: str) -> bool:
        if self.is_local:
            return (Path(self.location) / filename).is_file()
        found = cached_file(
            self.location,
            filename,
            _raise_exceptions_for_missing_entries=False,
            _raise_exceptions_for_connection_errors=False,
        )
        return found is not None

    def needs_remote_code(self) -> bool:
        """Mirrors transformers: custom code runs when the config maps to code that transformers lacks."""
        return "auto_map" in self.config and self.model_type not in CONFIG_MAPPING

    def check_remote_code(self, trust_remote_code: bool) -> None:
        if self.needs_remote_code() and not trust_remote_code:
            raise remote_code_error(self.name)


def local_folder(name: str) -> Path | None:
    path = Path(name).expanduser()
    return path.resolve() if path.is_dir() else None


def open_checkpoint(name: str) -> Checkpoint:
    """Read ``config.json`` of a local folder or hub id (cheap); UnknownModelError when there is none."""
    folder = local_folder(name)
    if folder is not None:
        config_path = folder / "config.json"
        if not config_path.is_file():
            raise UnknownModelError(f"{folder} is a folder but has no config.json, so it is not a checkpoint")
        return Checkpoint(name, str(folder), str(folder), _read_json(config_path), is_local=True)
    try:
        config_path = cached_file(name, "config.json")
    except OSError as err:
        raise UnknownModelError(
            f"cannot find {name!r} as a local folder or on the Hugging Face hub ({err}). Check the name, "
            "download the checkpoint to a folder and pass its path, or pick a known model."
        ) from err
    revision = extract_commit_hash(config_path, None) or name
    return Checkpoint(name, name, revision, _read_json(Path(config_path)), is_local=False)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise UnknownModelError(f"{path} is not a readable JSON config ({err})") from err


def from_pretrained_sdpa(loader: Any, location: str, **kwargs: Any) -> Any:
    """``loader.from_pretrained`` with SDPA attention, falling back to the default where a model lacks it."""
    try:
        return loader.from_pretrained(location, attn_implementation="sdpa", **kwargs)
    except (ValueError, ImportError) as err:
        if "sdpa" not in str(err).lower() and "attn_implementation" not in str(err):
            raise
        return loader.from_pretrained(location, **kwargs)
