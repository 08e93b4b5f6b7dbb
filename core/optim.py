"""Optimizers shared by both trainers: Lion (lion-pytorch's, its update applied with ``torch._foreach`` ops) and
AdamW, with weight-decay parameter groups."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from lion_pytorch import Lion
from torch import nn

OPTIMIZERS = ("lion", "adamw")


class ForeachLion(Lion):
    """lion-pytorch's :class:`~lion_pytorch.Lion` with its update applied to all tensors of a group at once.

    Per parameter, lion-pytorch computes ``p *= 1 - lr * wd``; ``p -= lr * sign(beta1 * m + (1 - beta1) * g)``;
    ``m = beta2 * m + (1 - beta2) * g``. Here the same operations run in the same order as ``torch._foreach_*``
    calls over the group's tensors, so every parameter and momentum equals lion-pytorch's bit for bit (tested),
    with one kernel launch per operation and one temporary fewer per parameter. Options, state (``exp_avg``) and
    checkpoints are lion-pytorch's own.
    """

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None) -> torch.Tensor | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            lr, wd, (beta1, beta2) = group["lr"], group["weight_decay"], group["betas"]
            if self.decoupled_wd:
                wd /= self._init_lr
            grads = [p.grad for p in params]
            momenta = []
            for p in params:
                state = self.state[p]
                if len(state) == 0:
                    state["exp_avg"] = torch.zeros_like(p)
                momenta.append(state["exp_avg"])
            torch._foreach_mul_(params, 1.0 - lr * wd)
            update = torch._foreach_mul(momenta, beta1)
            torch._foreach_add_(update, grads, alpha=1.0 - beta1)
            torch._foreach_sign_(update)
            torch._foreach_add_(params, update, alpha=-lr)
            del update
            torch._foreach_mul_(momenta, beta2)
            torch._foreach_add_(momenta, grads, alpha=1.0 - beta2)
        return loss


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
    """``lion`` (:class:`ForeachLion`, betas default 0.9, 0.99) or ``adamw`` (0.9, 0.999); decay comes from each
    group."""
    groups = list(groups)
    if name == "lion":
        return ForeachLion(groups, lr=lr, betas=betas or (0.9, 0.99))
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=betas or (0.9, 0.999), eps=eps)
    raise ValueError(f"unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}")
