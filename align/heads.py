"""Alignment heads: per modality ``LayerNorm(in) -> mapping network -> target dim``, plus the logit scale and bias.

Heads (``HEADS``):

- ``linear``: one Linear layer;
- ``mlp``: Linear -> GELU -> Linear, hidden ``4 x in`` (or ``hidden_dim``);
- ``star``: SAIL's GLU, ``f1, f2 = Linear(d, w*d)``; ``ReLU6(f1 x) * f2 x -> Linear(w*d, target)``;
- ``sharelock``: the ShareLock baseline; image features pass through unchanged and text goes through a
  4-layer Linear/BatchNorm/ReLU/Dropout MLP (hidden ``hidden_dim``, default 4096) into the image space.

The logit scale is learned as a log (``log_logit_scale``) and clamped to ``<= log(100)`` after each optimizer
step (:meth:`AlignmentHead.clamp_logit_scale_`); the logit bias is learned as is. Linear weights are
Xavier-uniform, biases zero.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

HEADS = ("linear", "mlp", "star", "sharelock")
MAX_LOGIT_SCALE = 100.0
SHARELOCK_HIDDEN = 4096
SHARELOCK_LAYERS = 4
SHARELOCK_DROPOUT = 0.2


@dataclass
class HeadConfig:
    """Everything needed to rebuild a head; saved in every checkpoint's ``config.json`` under ``head``."""

    head: str
    image_dim: int
    text_dim: int
    target_dim: int = 1024
    width_factor: int = 8
    hidden_dim: int | None = None
    logit_scale: float = 20.0
    logit_bias: float = -10.0

    def __post_init__(self) -> None:
        if self.head not in HEADS:
            raise ValueError(f"unknown head {self.head!r}; choose one of {', '.join(HEADS)}")
        for name in ("image_dim", "text_dim", "target_dim", "width_factor"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.head == "sharelock" and self.target_dim != self.image_dim:
            raise ValueError(
                f"the sharelock head keeps image features unchanged, so its target dim must equal the image "
                f"dim ({self.image_dim}), got {self.target_dim}; pass --target-dim {self.image_dim} or omit it"
            )
        if self.logit_scale <= 0 or self.logit_scale > MAX_LOGIT_SCALE:
            raise ValueError(f"logit_scale must be in (0, {MAX_LOGIT_SCALE}], got {self.logit_scale}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> HeadConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in names})


class _StarFunction(torch.autograd.Function):
    """``out(ReLU6(f1(x)) * f2(x))`` keeping two hidden-sized tensors for backward instead of four.

    Plain autograd saves ``f1(x)``, ``ReLU6(f1(x))``, ``f2(x)`` and their product, each ``batch x w*d`` (2 GiB
    apiece in bf16 for SAIL-L's text head at batch 32,768). Here ReLU6 is applied in place, only the gate
    ``r = ReLU6(f1(x))`` and ``g = f2(x)`` are saved, and the product is recomputed in backward (one
    elementwise multiply). ``0 < r < 6`` exactly where ReLU6's derivative is 1, so ``r`` also gives its mask.
    Under autocast the matmuls run in the autocast dtype, as ``nn.Linear`` would; backward computes in the
    forward's dtype and returns gradients in each input's own dtype.
    """

    @staticmethod
    def forward(ctx, x, w1, b1, w2, b2, w_out, b_out):
        r = F.linear(x, w1, b1).clamp_(0.0, 6.0)
        g = F.linear(x, w2, b2)
        ctx.save_for_backward(x, w1, b1, w2, b2, w_out, b_out, r, g)
        return F.linear(r * g, w_out, b_out)

    @staticmethod
    def backward(ctx, grad_y):
        x, w1, b1, w2, b2, w_out, b_out, r, g = ctx.saved_tensors
        dtype = r.dtype
        grad_y = grad_y.to(dtype)
        need = ctx.needs_input_grad
        grad_w_out = grad_y.T @ (r * g) if need[5] else None
        grad_b_out = grad_y.sum(0) if need[6] else None
        grad_h = grad_y @ w_out.to(dtype)
        grad_gate = torch.ops.aten.hardtanh_backward(grad_h * g, r, 0.0, 6.0)  # d/d f1(x)
        grad_g = grad_h.mul_(r)  # d/d f2(x); grad_h is not needed after this
        xc = x.to(dtype)
        grad_x = torch.addmm(grad_gate @ w1.to(dtype), grad_g, w2.to(dtype)) if need[0] else None
        grads = (
            grad_x,
            grad_gate.T @ xc if need[1] else None,
            grad_gate.sum(0) if need[2] else None,
            grad_g.T @ xc if need[3] else None,
            grad_g.sum(0) if need[4] else None,
            grad_w_out,
            grad_b_out,
        )
        inputs = (x, w1, b1, w2, b2, w_out, b_out)  # whose dtype each gradient takes
        return tuple(
            None if grad is None else grad.to(t.dtype) for grad, t in zip(grads, inputs, strict=True)
        )


class StarMLP(nn.Module):
    """SAIL's gated mapping: ``out(ReLU6(f1(x)) * f2(x))``, computed by a memory-lean autograd function."""

    def __init__(self, in_dim: int, out_dim: int, width_factor: int) -> None:
        super().__init__()
        hidden = width_factor * in_dim
        self.f1 = nn.Linear(in_dim, hidden)
        self.f2 = nn.Linear(in_dim, hidden)
        self.out = nn.Linear(hidden, out_dim)

    def forward(self, x: Tensor) -> Tensor:
        return _StarFunction.apply(
            x, self.f1.weight, self.f1.bias, self.f2.weight, self.f2.bias, self.out.weight, self.out.bias
        )


def sharelock_mlp(in_dim: int, out_dim: int, hidden: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    dim = in_dim
    for _ in range(SHARELOCK_LAYERS - 1):
        layers += [nn.Linear(dim, hidden), nn.BatchNorm1d(hidden), nn.ReLU(), nn.Dropout(SHARELOCK_DROPOUT)]
        dim = hidden
    layers.append(nn.Linear(dim, out_dim))
    return nn.Sequential(*layers)


def mapping_network(
    kind: str, in_dim: int, out_dim: int, width_factor: int, hidden_dim: int | None
) -> nn.Module:
    if kind == "linear":
        return nn.Linear(in_dim, out_dim)
    if kind == "mlp":
        hidden = hidden_dim or 4 * in_dim
        return nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU(), nn.Linear(hidden, out_dim))
    if kind == "star":
        return StarMLP(in_dim, out_dim, width_factor)
    if kind == "sharelock":
        return sharelock_mlp(in_dim, out_dim, hidden_dim or SHARELOCK_HIDDEN)
    raise ValueError(f"unknown head {kind!r}; choose one of {', '.join(HEADS)}")


class ModalityHead(nn.Module):
    """``LayerNorm(in) -> mapping``."""

    def __init__(
        self, kind: str, in_dim: int, out_dim: int, width_factor: int, hidden_dim: int | None
    ) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(in_dim)
        self.mapping = mapping_network(kind, in_dim, out_dim, width_factor, hidden_dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.mapping(self.norm(x))


class AlignmentHead(nn.Module):
    """Image and text heads with a learnable logit scale (as a log) and bias."""

    def __init__(self, config: HeadConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        if c.head == "sharelock":
            self.image = nn.Identity()
        else:
            self.image = ModalityHead(c.head, c.image_dim, c.target_dim, c.width_factor, c.hidden_dim)
        self.text = ModalityHead(c.head, c.text_dim, c.target_dim, c.width_factor, c.hidden_dim)
        self.log_logit_scale = nn.Parameter(torch.tensor(math.log(c.logit_scale)))
        self.logit_bias = nn.Parameter(torch.tensor(float(c.logit_bias)))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)

    @property
    def logit_scale(self) -> Tensor:
        """The scale itself (``exp`` of the learned log)."""
        return self.log_logit_scale.exp()

    @torch.no_grad()
    def clamp_logit_scale_(self) -> None:
        """Keep the scale ``<= 100``; call after every optimizer step."""
        self.log_logit_scale.clamp_(max=math.log(MAX_LOGIT_SCALE))

    def encode_image(self, features: Tensor, normalize: bool = True) -> Tensor:
        out = self.image(features)
        return F.normalize(out, dim=-1) if normalize else out

    def encode_text(self, features: Tensor, normalize: bool = True) -> Tensor:
        out = self.text(features)
        return F.normalize(out, dim=-1) if normalize else out

    def forward(
        self, image_features: Tensor, text_features: Tensor, extra_text_features: Tensor | None = None
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        """L2-normalised image, text and (if given) extra-text embeddings."""
        extra = None if extra_text_features is None else self.encode_text(extra_text_features)
        return self.encode_image(image_features), self.encode_text(text_features), extra


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
