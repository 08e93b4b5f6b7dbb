"""Optimizers shared by both trainers: Lion (lion-pytorch) and AdamW, with weight-decay parameter groups."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from lion_pytorch import Lion
from torch import nn

OPTIMIZERS = ("lion", "adamw")


def decays(name: str, param: torch.Tensor) -> bool:
    """Matrices decay; vectors and scalars (LayerNorm/BatchNorm, biases, logit scale and bias) do not."""
    return param.ndim >= 2


def param_groups(model: nn.Module, weight_decay: float, decay_norm_and_bias: bool = False) -> list[dict]:
    """Two groups: ``decay`` (weight matrices) and ``no_decay`` (norms, biases, logit scale/bias).

    ``decay_norm_and_bias=True`` reproduces SAIL, which decays every parameter (one group). Frozen parameters
    are left out; empty groups are dropped.
    """
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if decay_norm_and_bias:
        groups = [{"name": "all", "params": [p for _, p in named], "weight_decay": weight_decay}]
    else:
        groups = [
            {"name": "decay", "params": [p for n, p in named if decays(n, p)], "weight_decay": weight_decay},
            {"name": "no_decay", "params": [p for n, p in named if not decays(n, p)], "weight_decay": 0.0},
        ]
    return [g for g in groups if g["params"]]


def build_optimizer(
    name: str,
    groups: Iterable[dict],
    lr: float,
    betas: tuple[float, float] | None = None,
    eps: float = 1e-8,
) -> torch.optim.Optimizer:
    """``lion`` (betas default 0.9, 0.99) or ``adamw`` (0.9, 0.999); decay comes from each group."""
    groups = list(groups)
    if name == "lion":
        return Lion(groups, lr=lr, betas=betas or (0.9, 0.99))
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=betas or (0.9, 0.999), eps=eps)
    raise ValueError(f"unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}")
