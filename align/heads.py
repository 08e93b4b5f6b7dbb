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


def _layer_norm_stats(x: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """``x_hat = (x - mean) / sqrt(var + eps)`` and ``1 / sqrt(var + eps)``, at least in float32 (as autocast runs
    LayerNorm)."""
    x = x.to(torch.promote_types(x.dtype, torch.float32))
    x_hat, _, rstd = torch.native_layer_norm(x, x.shape[-1:], None, None, eps)
    return x_hat, rstd


def _normed_linear_grads(
    x_hat: Tensor, gamma: Tensor, beta: Tensor, weight: Tensor, grad_out: Tensor
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Gradients of ``W``, ``b``, ``gamma`` and ``beta`` for ``(x_hat * gamma + beta) @ W.T + b``, given ``dL/dout``.

    With ``G = grad_out.T @ x_hat`` and ``s = grad_out.sum(0)``: ``dW = G * gamma + s beta^T``, ``db = s``,
    ``dgamma = sum_k W[k] * G[k]`` and ``dbeta = s @ W``. Plain autograd gets ``dgamma`` and ``dbeta`` from
    ``dL/dh = grad_out @ W``, a GEMM as large as the forward's; this needs none (one elementwise pass over ``W``).
    """
    dtype = gamma.dtype
    g = (grad_out.T @ x_hat).to(dtype)
    s = grad_out.sum(0, dtype=dtype)
    grad_w = (g * gamma).addr_(s, beta)
    grad_gamma = g.mul_(weight).sum(0)
    return grad_w, s, grad_gamma, s @ weight.to(dtype)


def _layer_norm_input_grad(grad_h: Tensor, x_hat: Tensor, rstd: Tensor, gamma: Tensor) -> Tensor:
    """``dL/dx`` of ``h = LayerNorm(x)`` from ``dL/dh``."""
    d = grad_h.to(gamma.dtype) * gamma
    return rstd * (d - d.mean(-1, keepdim=True) - x_hat * (d * x_hat).mean(-1, keepdim=True))


class _NormLinearFunction(torch.autograd.Function):
    """``Linear(LayerNorm(x))`` whose backward skips ``dL/dh`` (see :func:`_normed_linear_grads`) unless ``x``
    needs a gradient; it saves ``x_hat`` in the matmul's dtype instead of LayerNorm's input and output."""

    @staticmethod
    def forward(ctx, x, gamma, beta, eps, weight, bias):
        x_hat, rstd = _layer_norm_stats(x, eps)
        out = F.linear(torch.addcmul(beta, x_hat, gamma), weight, bias)
        ctx.save_for_backward(x_hat.to(out.dtype), rstd, gamma, beta, weight)
        ctx.x_dtype = x.dtype
        return out

    @staticmethod
    def backward(ctx, grad_out):
        x_hat, rstd, gamma, beta, weight = ctx.saved_tensors
        grad_out = grad_out.to(x_hat.dtype)
        grad_w, grad_b, grad_gamma, grad_beta = _normed_linear_grads(x_hat, gamma, beta, weight, grad_out)
        grad_x = None
        if ctx.needs_input_grad[0]:
            grad_h = grad_out @ weight.to(x_hat.dtype)
            grad_x = _layer_norm_input_grad(grad_h, x_hat.to(rstd.dtype), rstd, gamma).to(ctx.x_dtype)
        return grad_x, grad_gamma, grad_beta, None, grad_w.to(weight.dtype), grad_b.to(weight.dtype)


def normed_linear(x: Tensor, norm: nn.LayerNorm, linear: nn.Linear) -> Tensor:
    """``linear(norm(x))`` through :class:`_NormLinearFunction`: the same values and gradients, less work."""
    return _NormLinearFunction.apply(x, norm.weight, norm.bias, norm.eps, linear.weight, linear.bias)


def _star_hidden(h: Tensor, w1: Tensor, b1: Tensor, w2: Tensor, b2: Tensor) -> tuple[Tensor, Tensor]:
    """The gate ``r = ReLU6(f1 h)`` (ReLU6 applied in place) and ``g = f2 h``."""
    return F.linear(h, w1, b1).clamp_(0.0, 6.0), F.linear(h, w2, b2)


def _star_hidden_grads(grad_y: Tensor, r: Tensor, g: Tensor, w_out: Tensor) -> tuple[Tensor, Tensor]:
    """``dL/d f1(h)`` and ``dL/d f2(h)`` from ``dL/dy``; ``0 < r < 6`` is exactly where ReLU6's derivative is 1."""
    grad_h = grad_y @ w_out.to(r.dtype)
    grad_gate = torch.ops.aten.hardtanh_backward(grad_h * g, r, 0.0, 6.0)
    return grad_gate, grad_h.mul_(r)  # grad_h is not needed after this


class _StarFunction(torch.autograd.Function):
    """``out(ReLU6(f1(x)) * f2(x))`` keeping two hidden-sized tensors for backward instead of four.

    Plain autograd saves ``f1(x)``, ``ReLU6(f1(x))``, ``f2(x)`` and their product, each ``batch x w*d`` (2 GiB
    apiece in bf16 for SAIL-L's text head at batch 32,768). Here only the gate ``r = ReLU6(f1(x))`` and
    ``g = f2(x)`` are saved, and the product is recomputed in backward (one elementwise multiply). Under autocast
    the matmuls run in the autocast dtype, as ``nn.Linear`` would; backward computes in the forward's dtype and
    returns gradients in each input's own dtype.
    """

    @staticmethod
    def forward(ctx, x, w1, b1, w2, b2, w_out, b_out):
        r, g = _star_hidden(x, w1, b1, w2, b2)
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
        grad_gate, grad_g = _star_hidden_grads(grad_y, r, g, w_out)
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


class _NormStarFunction(torch.autograd.Function):
    """``star(LayerNorm(x))``: :class:`_StarFunction`'s memory plan, and :func:`_normed_linear_grads` for
    ``f1`` and ``f2``, so backward runs no ``dL/dh`` GEMM unless ``x`` needs a gradient (the features a head
    trains on do not). Of the head's GEMM work that drops ``f1``'s and ``f2``'s input gradients: a third of
    the step when they dominate, as in SAIL's star heads."""

    @staticmethod
    def forward(ctx, x, gamma, beta, eps, w1, b1, w2, b2, w_out, b_out):
        x_hat, rstd = _layer_norm_stats(x, eps)
        r, g = _star_hidden(torch.addcmul(beta, x_hat, gamma), w1, b1, w2, b2)
        ctx.save_for_backward(x_hat.to(r.dtype), rstd, gamma, beta, w1, w2, w_out, r, g)
        ctx.dtypes = (x.dtype, w1.dtype, b1.dtype, w2.dtype, b2.dtype, w_out.dtype, b_out.dtype)
        return F.linear(r * g, w_out, b_out)

    @staticmethod
    def backward(ctx, grad_y):
        x_hat, rstd, gamma, beta, w1, w2, w_out, r, g = ctx.saved_tensors
        grad_y = grad_y.to(r.dtype)
        grad_w_out, grad_b_out = grad_y.T @ (r * g), grad_y.sum(0)
        grad_gate, grad_g = _star_hidden_grads(grad_y, r, g, w_out)
        grad_w1, grad_b1, grad_gamma, grad_beta = _normed_linear_grads(x_hat, gamma, beta, w1, grad_gate)
        grad_w2, grad_b2, grad_gamma2, grad_beta2 = _normed_linear_grads(x_hat, gamma, beta, w2, grad_g)
        grad_x = None
        if ctx.needs_input_grad[0]:
            dtype = r.dtype
            grad_h = torch.addmm(grad_gate @ w1.to(dtype), grad_g, w2.to(dtype))
            grad_x = _layer_norm_input_grad(grad_h, x_hat.to(rstd.dtype), rstd, gamma)
        grads = (grad_x, grad_w1, grad_b1, grad_w2, grad_b2, grad_w_out, grad_b_out)
        x_grad, *param_grads = (
            None if grad is None else grad.to(want) for grad, want in zip(grads, ctx.dtypes, strict=True)
        )
        return (x_grad, grad_gamma.add_(grad_gamma2), grad_beta.add_(grad_beta2), None, *param_grads)


class StarMLP(nn.Module):
    """SAIL's gated mapping: ``out(ReLU6(f1(x)) * f2(x))``, computed by a memory-lean autograd function."""

    def __init__(self, in_dim: int, out_dim: int, width_factor: int) -> None:
        super().__init__()
        hidden = width_factor * in_dim
        self.f1 = nn.Linear(in_dim, hidden)
        self.f2 = nn.Linear(in_dim, hidden)
        self.out = nn.Linear(hidden, out_dim)

    def forward(self, x: Tensor, norm: nn.LayerNorm | None = None) -> Tensor:
        """``star(x)``, or ``star(norm(x))`` through one function that skips LayerNorm's output gradient."""
        weights = (self.f1.weight, self.f1.bias, self.f2.weight, self.f2.bias, self.out.weight, self.out.bias)
        if norm is None:
            return _StarFunction.apply(x, *weights)
        return _NormStarFunction.apply(x, norm.weight, norm.bias, norm.eps, *weights)


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
        mapping = self.mapping
        if isinstance(mapping, StarMLP):
            return mapping(x, norm=self.norm)
        if isinstance(mapping, nn.Linear):
            return normed_linear(x, self.norm, mapping)
        return mapping[1:](normed_linear(x, self.norm, mapping[0]))


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
