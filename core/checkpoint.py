"""Checkpoints shared by both trainers.

Layout: ``OUTPUT/checkpoints/step_N/`` holding the weights (``head.safetensors`` or ``model.safetensors``),
``config.json`` and ``trainer_state.pt`` (optimizer, scheduler, scaler, RNG, data position; tensors and plain
Python values only, loaded with ``torch.load(weights_only=True)``). A checkpoint is written into
``step_N.tmp`` and renamed when complete, so a run killed while saving leaves no half checkpoint.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from core.staging import fsync_path

log = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"
RESUME_NEWEST = ("latest", "auto")
WEIGHT_FILES = ("head.safetensors", "model.safetensors")
_STEP_DIR = re.compile(r"^step_(\d+)$")
TRAINER_STATE = "trainer_state.pt"


@dataclass
class Checkpoint:
    path: Path
    step: int
    model_state: dict[str, Tensor]
    config: dict
    trainer_state: dict


def missing_files(directory: Path) -> list[str]:
    """The files a training checkpoint folder lacks (``config.json``, the weights, ``trainer_state.pt``)."""
    missing = [name for name in ("config.json", TRAINER_STATE) if not (directory / name).is_file()]
    if not any((directory / name).is_file() for name in WEIGHT_FILES):
        missing.append(" or ".join(WEIGHT_FILES))
    return missing


def checkpoint_dirs(output_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """Complete checkpoints under ``output_dir/checkpoints``, oldest first.

    A ``step_N`` folder that lacks one of its files (damaged by hand or by a disk fault) is skipped with a
    warning naming what is missing; it is left in place for the user to inspect.
    """
    root = Path(output_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        match = _STEP_DIR.match(child.name)
        if not (match and child.is_dir()):
            continue
        missing = missing_files(child)
        if missing:
            log.warning("skipping checkpoint %s: it has no %s", child, ", ".join(missing))
            continue
        found.append((int(match.group(1)), child))
    return sorted(found)


def latest_checkpoint(output_dir: str | os.PathLike) -> Path | None:
    found = checkpoint_dirs(output_dir)
    return found[-1][1] if found else None


def save_checkpoint(
    output_dir: str | os.PathLike,
    step: int,
    model_state: dict[str, Tensor],
    config: dict,
    trainer_state: dict,
    keep_last: int,
    weights_name: str = "head.safetensors",
) -> Path:
    """Write ``step_N/`` atomically and keep only the ``keep_last`` newest checkpoints (0 keeps all).

    The files are written into ``step_N.tmp``, flushed to the disk (fsync), and the folder renamed to ``step_N``
    (then the rename flushed too), so a crash or a full disk at any point leaves either the complete checkpoint
    or none: never a ``step_N`` with missing or truncated files. Old checkpoints are renamed to
    ``step_M.deleting`` before they are removed.
    """
    if weights_name not in WEIGHT_FILES:
        raise ValueError(f"weights_name must be one of {WEIGHT_FILES}")
    root = Path(output_dir) / CHECKPOINTS
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{step}"
    tmp = root / f"step_{step}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        save_file_weights(model_state, tmp / weights_name)
        (tmp / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        torch.save(trainer_state, tmp / TRAINER_STATE)
        for file in tmp.iterdir():
            fsync_path(file)
        fsync_path(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if final.exists():
        stale = root / f"step_{step}.deleting"
        shutil.rmtree(stale, ignore_errors=True)
        final.rename(stale)
        shutil.rmtree(stale, ignore_errors=True)
    os.replace(tmp, final)
    fsync_path(root)
    if keep_last > 0:
        for old_step, old in checkpoint_dirs(output_dir)[:-keep_last]:
            doomed = old.with_name(f"step_{old_step}.deleting")
            old.rename(doomed)
            shutil.rmtree(doomed, ignore_errors=True)
    return final


def save_file_weights(state: dict[str, Tensor], path: str | os.PathLike) -> None:
    """A state dict as safetensors (CPU, contiguous copies)."""
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
    save_file(tensors, str(path), metadata={"format": "pt"})


def load_weights(path: str | os.PathLike, device: str | torch.device = "cpu") -> dict[str, Tensor]:
    path = Path(path)
    for name in WEIGHT_FILES:
        if (path / name).is_file():
            return load_file(str(path / name), device=str(device))
    raise FileNotFoundError(f"{path} holds no {' or '.join(WEIGHT_FILES)}: not a checkpoint directory")


def load_config(path: str | os.PathLike) -> dict:
    file = Path(path) / "config.json"
    if not file.is_file():
        raise FileNotFoundError(f"{path} has no config.json: not a checkpoint directory")
    return json.loads(file.read_text())


def load_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu") -> Checkpoint:
    """Weights, config and trainer state (``{}`` when the directory is an export without trainer state)."""
    path = Path(path)
    state_file = path / TRAINER_STATE
    trainer_state = (
        torch.load(state_file, map_location="cpu", weights_only=True) if state_file.is_file() else {}
    )
    match = _STEP_DIR.match(path.name)
    step = int(match.group(1)) if match else int(trainer_state.get("step", 0))
    return Checkpoint(path, step, load_weights(path, device), load_config(path), trainer_state)


def find_resume(
    output_dir: str | os.PathLike,
    resume: str | None,
    checkpoint_format: str,
    differences: Callable[[dict], list[str]],
) -> Path | None:
    """The checkpoint a run continues from; None = a fresh run. Checked before anything is written.

    ``resume``: None (refused when ``output_dir`` already holds checkpoints), ``"latest"`` or ``"auto"`` (the
    newest complete one, or a fresh run when there is none yet: what a requeued or restarted job passes) or a
    ``step_N`` directory. The checkpoint must be a
    ``checkpoint_format`` training checkpoint, and ``differences(saved_train_settings)`` (the trainer's own
    comparison with its current settings) must come back empty.
    """
    output = Path(output_dir)
    if resume is None:
        if latest_checkpoint(output) is not None:
            raise ValueError(
                f"{output} already holds checkpoints; pass --resume latest to continue that run "
                "or choose another --output-dir"
            )
        return None
    path = latest_checkpoint(output) if resume in RESUME_NEWEST else Path(resume)
    if path is None:
        log.info("--resume %s: no checkpoint in %s yet, starting from scratch", resume, output)
        return None
    missing = missing_files(path)
    if missing:
        raise ValueError(
            f"--resume {resume}: not a complete checkpoint directory (it has no {', '.join(missing)})"
        )
    saved = load_config(path)
    if saved.get("format") != checkpoint_format or "train" not in saved:
        raise ValueError(
            f"{path} is not a {checkpoint_format!r} training checkpoint "
            f"(its format is {saved.get('format')!r}); resume from a checkpoint this trainer wrote"
        )
    diffs = differences(saved["train"])
    if diffs:
        raise ValueError(
            f"cannot resume {path} with a different configuration: {'; '.join(diffs)}. "
            "Use the original settings, or start a new run in another --output-dir."
        )
    return path


def trainer_state(
    step: int,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    precision: Any,
    device: torch.device,
    **extra: Any,
) -> dict:
    """What a resumed run needs besides the weights: optimizer, scheduler, scaler, RNG, step and ``extra``."""
    state = {
        "step": step,
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": precision.state_dict(),
        "rng_cpu": torch.get_rng_state(),
        **extra,
    }
    if device.type == "cuda":
        state["rng_cuda"] = torch.cuda.get_rng_state(device)
    return state


def restore_trainer_state(
    state: dict, optimizer: torch.optim.Optimizer, scheduler: Any, precision: Any
) -> int:
    """Load what :func:`trainer_state` saved into the optimizer, scheduler and scaler; returns the step.

    The RNG is restored separately (:func:`restore_rng`), at the point where the fresh run had drawn as much.
    """
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    precision.load_state_dict(state["scaler"])
    return int(state["step"])


def restore_rng(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["rng_cpu"])
    if device.type == "cuda" and "rng_cuda" in state:
        torch.cuda.set_rng_state(state["rng_cuda"], device)
