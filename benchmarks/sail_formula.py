"""SAIL's alignment step re-stated in plain PyTorch from its formula: the baseline of ``bench_sail``.

Written from the formula, not from SAIL's code: per modality ``LayerNorm -> star GLU`` (``f1, f2 = Linear(d, w*d)``,
``g(ReLU6(f1 h) * f2 h)``) as separate ``nn`` modules through plain autograd, L2-normalised; the dense ``N x N``
sigmoid loss ``-mean(logsigmoid(labels * (s * x @ y.T + b)))`` with ``labels = 2 I - 1`` (SAIL's mean reduction);
Lion stepping each parameter in turn (decoupled decay ``p *= 1 - lr * wd``, then ``p -= lr * sign(b1 m + (1 - b1)
g)``, then ``m = b2 m + (1 - b2) g``), every parameter decayed as SAIL does.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class StarGLU(nn.Module):
    """``g(ReLU6(f1 x) * f2 x)``."""

    def __init__(self, in_dim: int, out_dim: int, width_factor: int) -> None:
        super().__init__()
        self.f1 = nn.Linear(in_dim, width_factor * in_dim)
        self.f2 = nn.Linear(in_dim, width_factor * in_dim)
        self.g = nn.Linear(width_factor * in_dim, out_dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.g(F.relu6(self.f1(x)) * self.f2(x))


class FormulaHead(nn.Module):
    """Image and text towers ``LayerNorm -> StarGLU``, a learned log scale and a bias."""

    def __init__(self, image_dim: int, text_dim: int, target_dim: int, width_factor: int) -> None:
        super().__init__()
        self.image = nn.Sequential(nn.LayerNorm(image_dim), StarGLU(image_dim, target_dim, width_factor))
        self.text = nn.Sequential(nn.LayerNorm(text_dim), StarGLU(text_dim, target_dim, width_factor))
        self.log_logit_scale = nn.Parameter(torch.tensor(math.log(20.0)))
        self.logit_bias = nn.Parameter(torch.tensor(-10.0))

    def forward(self, image: Tensor, text: Tensor) -> tuple[Tensor, Tensor]:
        return F.normalize(self.image(image), dim=-1), F.normalize(self.text(text), dim=-1)


def dense_sigmoid_loss(image: Tensor, text: Tensor, log_scale: Tensor, bias: Tensor) -> Tensor:
    """``-mean(logsigmoid(labels * logits))`` over the full ``N x N`` matrix."""
    logits = log_scale.exp() * image @ text.T + bias
    labels = 2 * torch.eye(image.shape[0], device=image.device, dtype=logits.dtype) - 1
    return -F.logsigmoid(labels * logits).mean()


class PlainLion(torch.optim.Optimizer):
    """Lion, one parameter at a time."""

    def __init__(
        self, params, lr: float, betas: tuple[float, float] = (0.9, 0.99), weight_decay: float = 0.0
    ):
        super().__init__(params, {"lr": lr, "betas": betas, "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            lr, wd, (beta1, beta2) = group["lr"], group["weight_decay"], group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["exp_avg"] = torch.zeros_like(p)
                m = state["exp_avg"]
                p.mul_(1 - lr * wd)
                p.add_((m * beta1 + p.grad * (1 - beta1)).sign(), alpha=-lr)
                m.mul_(beta2).add_(p.grad, alpha=1 - beta2)


class FormulaStep:
    """One SAIL-formula training step: forward, dense loss, backward, Lion, scale clamp."""

    def __init__(self, head: FormulaHead, lr: float = 1e-5, weight_decay: float = 1e-4) -> None:
        self.head = head
        self.optimizer = PlainLion(head.parameters(), lr=lr, weight_decay=weight_decay)

    def __call__(self, image: Tensor, text: Tensor) -> None:
        x, y = self.head(image, text)
        loss = dense_sigmoid_loss(x, y, self.head.log_logit_scale, self.head.logit_bias)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        with torch.no_grad():
            self.head.log_logit_scale.clamp_(max=math.log(100.0))
