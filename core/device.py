"""Device resolution shared by every command: ``auto`` / ``cpu`` / ``cuda`` / ``cuda:N``, checked up front."""

from __future__ import annotations

import torch


def resolve_device(name: str | torch.device | None = "auto", local_rank: int = 0) -> torch.device:
    """The torch device a ``--device`` value names; ``auto`` (or None) is CUDA when available, else CPU.

    A bare ``cuda`` becomes ``cuda:LOCAL_RANK`` (one GPU per torchrun process) and is made the current device.
    A malformed name or CUDA on a machine without it is a ``ValueError`` that says what to pass instead.
    """
    if name is None or name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise ValueError(
            f"--device {name!r} is not a torch device ({err}); use auto, cpu, cuda or cuda:N"
        ) from err
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {name}: CUDA is not available on this machine; use --device cpu")
        device = torch.device("cuda", local_rank if device.index is None else device.index)
        torch.cuda.set_device(device)
    return device
