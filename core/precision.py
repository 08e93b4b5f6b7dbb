"""Precision and dtype names, mapped to torch dtypes in one place.

- ``DTYPES``: weight dtype names (``float32 | bfloat16 | float16``, vlm2vec's ``--dtype``);
- ``PRECISIONS``: training precisions of both trainers (``fp32 | amp_bf16 | amp_fp16``, GradScaler for fp16),
  run by :class:`Precision`;
- ``INFERENCE_PRECISIONS``: frozen-backbone precisions (``auto | bf16 | fp16 | fp32``), resolved per device
  by :func:`autocast_dtype` and :func:`weights_dtype`.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable

import torch
from torch import Tensor

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}
PRECISIONS = ("fp32", "amp_bf16", "amp_fp16")
INFERENCE_PRECISIONS = ("auto", "bf16", "fp16", "fp32")
# Every precision name but "auto" (which depends on the device) -> its autocast dtype; None = fp32, no autocast.
AUTOCAST_DTYPES: dict[str, torch.dtype | None] = {
    "fp32": None,
    "amp_bf16": DTYPES["bfloat16"],
    "amp_fp16": DTYPES["float16"],
    "bf16": DTYPES["bfloat16"],
    "fp16": DTYPES["float16"],
}
log = logging.getLogger(__name__)


def autocast_dtype(device: torch.device, precision: str) -> torch.dtype | None:
    """The inference autocast dtype: bf16 on CUDA by default (fp16 on request), none (fp32) on CPU."""
    if precision not in INFERENCE_PRECISIONS:
        raise ValueError(f"precision must be one of {INFERENCE_PRECISIONS}, got {precision!r}")
    if device.type == "cpu":
        if precision in ("auto", "fp32"):
            return None
        raise ValueError(f"precision {precision!r} is for GPUs; on CPU backbones run in fp32 (use 'auto')")
    if precision == "auto":
        return DTYPES["bfloat16"]
    return AUTOCAST_DTYPES[precision]


def weights_dtype(device: torch.device, precision: str) -> torch.dtype:
    """dtype for loading multi-billion-parameter weights: the autocast dtype on GPU, fp32 otherwise."""
    return autocast_dtype(device, precision) or DTYPES["float32"]


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
        self.dtype = AUTOCAST_DTYPES[name]
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
