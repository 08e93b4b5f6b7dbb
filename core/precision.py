"""Mixed precision shared by both trainers: ``fp32 | amp_bf16 | amp_fp16`` (GradScaler for fp16)."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable

import torch
from torch import Tensor

PRECISIONS = ("fp32", "amp_bf16", "amp_fp16")
log = logging.getLogger(__name__)


class Precision:
    """Autocast context, backward and optimizer step for one precision.

    On CPU the run is fp32 whatever was asked (a warning says so): CPU autocast is slower than fp32 here and
    the bit-exact resume guarantee is stated for fp32.
    """

    def __init__(self, name: str, device: torch.device | str) -> None:
        if name not in PRECISIONS:
            raise ValueError(f"unknown precision {name!r}; choose one of {', '.join(PRECISIONS)}")
        self.device = torch.device(device)
        if self.device.type == "cpu" and name != "fp32":
            log.warning("precision %s requested on CPU: training in fp32", name)
            name = "fp32"
        self.requested = name
        self.name = name
        self.dtype = {"fp32": None, "amp_bf16": torch.bfloat16, "amp_fp16": torch.float16}[name]
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=name == "amp_fp16")

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def backward(self, loss: Tensor) -> None:
        self.scaler.scale(loss).backward()

    def step(
        self, optimizer: torch.optim.Optimizer, params: Iterable[Tensor], max_grad_norm: float | None
    ) -> Tensor | None:
        """Unscale, clip (if ``max_grad_norm``), step and update the scaler; returns the pre-clip grad norm."""
        norm = None
        if max_grad_norm:
            self.scaler.unscale_(optimizer)
            norm = torch.nn.utils.clip_grad_norm_(list(params), max_grad_norm)
        self.scaler.step(optimizer)
        self.scaler.update()
        return norm

    def state_dict(self) -> dict:
        return self.scaler.state_dict()

    def load_state_dict(self, state: dict) -> None:
        if state:
            self.scaler.load_state_dict(state)
