"""Contrastive losses shared by ``align/`` and ``vlm2vec/``: SigLIP, CLIP and InfoNCE.

One implementation per loss, with two interchangeable execution paths:

* ``chunk_size=None`` -- the dense, naive formula (full logits matrix, plain autograd). Simple and fast for
  small batches; it is also the baseline of ``benchmarks/bench_loss.py``.
* ``chunk_size=C`` -- a custom :class:`torch.autograd.Function` that walks the logits matrix in ``C x C``
  blocks. The full logits, labels and their gradients are never materialised: memory is
  ``O(N d + C^2)`` instead of ``O(N^2)``. Losses and gradients equal the dense formula to fp32 rounding.
  SigLIP's pairwise gradients need no global normaliser, so its forward accumulates the gradients in the same
  sweep when grad mode is on (3 block matmuls, as dense forward + backward; run evaluation under
  ``torch.no_grad()``), and it supports one backward per forward. CLIP/InfoNCE take a logsumexp sweep in
  forward and a recomputing sweep in backward.

All paths compute in float32 with autocast disabled: bf16/fp16 inputs (e.g. from a head under autocast) are
upcast inside, and their gradients are cast back by autograd. Embeddings are passed already L2-normalised;
``logit_scale`` is the scale itself (already exponentiated).

Positive pairs, and the ``positive`` / ``negative`` parts of :class:`LossOutput` (detached diagnostics whose
sum is ``loss``):

* SigLIP: ``positive`` is the summed ``-log sigmoid(z)`` over positive pairs, ``negative`` the summed
  ``-log sigmoid(-z)`` over negative pairs, both with the loss's normalisation.
* CLIP / InfoNCE: each cross-entropy row is ``logsumexp_j z_ij - mean_{p in P_i} z_ip``; ``negative`` is the
  (normalised) sum of the logsumexp terms and ``positive`` the (normalised) sum of ``-mean z_ip``.

Cross-device negatives (``group``): features of the other ranks are all-gathered with
:func:`core.distributed.all_gather_with_grad`, whose backward sums the gradient that every rank's loss
sends to a gathered slice and returns it to the rank owning it. Each rank then computes the loss of its *local*
rows against *all* gathered columns, normalised by the *local* row count. The returned loss is the rank's local
loss (the mean over ranks equals the loss of one process on the whole batch), and with DDP's gradient averaging
(or averaging the gradients over ranks by hand) the parameter gradients equal those of one process on the whole
batch. SigLIP and CLIP need the same local batch size on every rank (use ``drop_last``); InfoNCE's targets may
differ in number between ranks (:func:`core.distributed.all_gather_uneven_with_grad`). SigLIP uses all-gather
rather than neighbour exchange: one collective, and with chunking the gathered ``N x d`` features are small
next to the compute.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.distributed import ProcessGroup

from core.distributed import all_gather_uneven_with_grad, all_gather_with_grad, rank_and_world

__all__ = ["LossOutput", "clip_loss", "info_nce_loss", "siglip_loss"]


@dataclass
class LossOutput:
    """Result of a contrastive loss.

    ``loss`` is the differentiable scalar; ``positive`` and ``negative`` are detached scalars with
    ``positive + negative == loss`` (see the module docstring for what each part means per loss).
    """

    loss: Tensor
    positive: Tensor
    negative: Tensor


# --------------------------------------------------------------------------------------------------------
# Which entries of the (rows x columns) logits matrix are positive pairs, evaluated block by block.


class _DiagonalPositives:
    """Row ``i`` and column ``j`` are positive iff ``(i % row_period) + row_offset == j % col_period``.

    Covers SigLIP/CLIP (one positive per block of ``col_period`` columns, e.g. caption and extra caption) and
    InfoNCE's default "target i is the positive of query i", with ``row_offset`` = this rank's first global
    column under all-gather. Inside a block the positives lie on a few diagonal runs, so the chunked losses
    touch them through diagonal views (no block-sized mask, no host sync).
    """

    def __init__(self, row_period: int, row_offset: int, col_period: int) -> None:
        self.row_period, self.row_offset, self.col_period = row_period, row_offset, col_period

    def segments(self, i0: int, i1: int, j0: int, j1: int) -> list[tuple[int, int, int]]:
        """The positives of rows ``[i0, i1)`` x columns ``[j0, j1)`` as diagonal runs ``(row, col, length)``,
        in block-local coordinates: ``(row + s, col + s)`` is positive for ``s < length``."""
        runs = []
        i = i0
        while i < i1:  # rows whose keys i % row_period + row_offset increase by one
            stop = min(i1, (i // self.row_period + 1) * self.row_period)
            key = i % self.row_period + self.row_offset
            length = min(stop - i, self.col_period - key)  # a key >= col_period matches no column
            first = (j0 - key - length + 1) // self.col_period
            for t in range(first, (j1 - 1 - key) // self.col_period + 1):
                start = key + t * self.col_period  # the column of row i in this period
                lo, hi = max(j0, start), min(j1, start + length)
                if lo < hi:
                    runs.append((i - i0 + lo - start, lo - j0, hi - lo))
            i = stop
        return runs

    def diagonals(self, block: Tensor, i0: int, j0: int) -> list[Tensor]:
        """Views of ``block`` (rows from ``i0``, columns from ``j0``) holding its positive entries."""
        i1, j1 = i0 + block.shape[0], j0 + block.shape[1]
        return [block[r : r + n, c : c + n].diagonal() for r, c, n in self.segments(i0, i1, j0, j1)]

    def block(self, i0: int, i1: int, j0: int, j1: int, device: torch.device) -> Tensor | None:
        """The boolean positive mask of a block (the dense formulas), None when it holds no positive."""
        runs = self.segments(i0, i1, j0, j1)
        if not runs:
            return None
        mask = torch.zeros(i1 - i0, j1 - j0, dtype=torch.bool, device=device)
        for r, c, n in runs:
            mask[r : r + n, c : c + n].diagonal().fill_(True)
        return mask

    def positive_sums(self, z: Tensor, i0: int, j0: int, cols: bool) -> tuple[Tensor, Tensor | None]:
        """Per-row (and, with ``cols``, per-column) sums of the block's positive logits."""
        row_sum = z.new_zeros(z.shape[0])
        col_sum = z.new_zeros(z.shape[1]) if cols else None
        for r, c, n in self.segments(i0, i0 + z.shape[0], j0, j0 + z.shape[1]):
            diagonal = z[r : r + n, c : c + n].diagonal()
            row_sum[r : r + n] += diagonal
            if col_sum is not None:
                col_sum[c : c + n] += diagonal
        return row_sum, col_sum

    def subtract_targets_(
        self, dz: Tensor, i0: int, j0: int, row_target: Tensor, col_target: Tensor | None
    ) -> None:
        """``dz[i, j] -= row_target[i] (+ col_target[j])`` at the block's positives, in place."""
        for r, c, n in self.segments(i0, i0 + dz.shape[0], j0, j0 + dz.shape[1]):
            target = row_target[r : r + n]
            if col_target is not None:
                target = target + col_target[c : c + n]
            dz[r : r + n, c : c + n].diagonal().sub_(target)

    def row_counts(self, n_rows: int, n_cols: int, device: torch.device) -> Tensor:
        return torch.full((n_rows,), float(n_cols // self.col_period), device=device)

    def col_counts(self, n_rows: int, n_cols: int, device: torch.device) -> Tensor:
        return torch.full((n_cols,), float(n_rows // self.row_period), device=device)


class _MaskPositives:
    """An explicit boolean ``[rows, M]`` mask whose columns sit at ``col_offset`` of the gathered columns."""

    def __init__(self, mask: Tensor, col_offset: int) -> None:
        self.mask, self.col_offset = mask, col_offset

    def block(self, i0: int, i1: int, j0: int, j1: int, device: torch.device) -> Tensor | None:
        lo, hi = max(j0, self.col_offset), min(j1, self.col_offset + self.mask.shape[1])
        if lo >= hi:
            return None
        part = self.mask[i0:i1, lo - self.col_offset : hi - self.col_offset]
        if lo == j0 and hi == j1:
            return part
        out = torch.zeros(i1 - i0, j1 - j0, dtype=torch.bool, device=device)
        out[:, lo - j0 : hi - j0] = part
        return out

    def positive_sums(self, z: Tensor, i0: int, j0: int, cols: bool) -> tuple[Tensor, Tensor | None]:
        is_pos = self.block(i0, i0 + z.shape[0], j0, j0 + z.shape[1], z.device)
        if is_pos is None:
            return z.new_zeros(z.shape[0]), z.new_zeros(z.shape[1]) if cols else None
        pos_z = torch.where(is_pos, z, 0)
        return pos_z.sum(1), pos_z.sum(0) if cols else None

    def subtract_targets_(
        self, dz: Tensor, i0: int, j0: int, row_target: Tensor, col_target: Tensor | None
    ) -> None:
        is_pos = self.block(i0, i0 + dz.shape[0], j0, j0 + dz.shape[1], dz.device)
        if is_pos is not None:
            target = row_target[:, None] if col_target is None else row_target[:, None] + col_target[None, :]
            dz.sub_(is_pos * target)

    def row_counts(self, n_rows: int, n_cols: int, device: torch.device) -> Tensor:
        return self.mask.sum(1, dtype=torch.float32)

    def col_counts(self, n_rows: int, n_cols: int, device: torch.device) -> Tensor:
        raise NotImplementedError("column softmax is not used with an explicit positive mask")


_Positives = _DiagonalPositives | _MaskPositives


def _blocks(n: int, chunk: int) -> list[tuple[int, int]]:
    return [(i, min(i + chunk, n)) for i in range(0, n, chunk)]


# --------------------------------------------------------------------------------------------------------
# Sigmoid (SigLIP) loss:  loss = weight * sum_ij softplus(-l_ij z_ij),  z = s * x @ y.T + b,  l = +-1.


def _dense_sigmoid(
    x: Tensor, y: Tensor, scale: Tensor, bias: Tensor, positives: _Positives, weight: float
) -> tuple[Tensor, Tensor, Tensor]:
    logits = scale * (x @ y.T) + bias
    is_pos = positives.block(0, x.shape[0], 0, y.shape[0], x.device)
    labels = -torch.ones_like(logits) if is_pos is None else 2 * is_pos.to(logits.dtype) - 1
    per_pair = -F.logsigmoid(labels * logits)
    loss = per_pair.sum() * weight
    with torch.no_grad():
        positive = (per_pair * (labels > 0)).sum() * weight
    return loss, positive, loss.detach() - positive


class _ChunkedSigmoidLoss(torch.autograd.Function):
    """Blockwise SigLIP loss. The sigmoid gradient of a pair only depends on its own logit, so the forward
    pass accumulates the gradients in the same sweep (3 matmuls per block, like dense forward + backward);
    backward only rescales them by the incoming gradient."""

    @staticmethod
    def forward(ctx, x, y, scale, bias, positives, weight, chunk, want_grad):
        n, m = x.shape[0], y.shape[0]
        total = x.new_zeros((), dtype=torch.float64)
        pos_total = x.new_zeros((), dtype=torch.float64)
        if want_grad:
            gx, gy = torch.zeros_like(x), torch.zeros_like(y)
            gb = x.new_zeros((), dtype=torch.float64)
        with torch.autocast(x.device.type, enabled=False):
            for i0, i1 in _blocks(n, chunk):
                xi = x[i0:i1]
                scaled_xi = xi * scale
                for j0, j1 in _blocks(m, chunk):
                    yj = y[j0:j1]
                    # u = -label * z: the per-pair loss is softplus(u) and dL/dz = -label * sigmoid(u).
                    u = torch.addmm(bias, scaled_xi, yj.T)
                    diagonals = positives.diagonals(u, i0, j0)  # views of u: they follow its in-place ops
                    for diagonal in diagonals:
                        diagonal.neg_()
                    per_pair = F.softplus(u)
                    # fp32 row sums, fp64 across rows: exact enough, with no fp64 copy of the block
                    total += per_pair.sum(1).sum(dtype=torch.float64)
                    for diagonal in positives.diagonals(per_pair, i0, j0):
                        pos_total += diagonal.sum(dtype=torch.float64)
                    del per_pair
                    if want_grad:
                        dz = u.sigmoid_()
                        for diagonal in diagonals:
                            diagonal.neg_()
                        gx[i0:i1].addmm_(dz, yj)
                        gy[j0:j1].addmm_(dz.T, xi)
                        gb += dz.sum(1).sum(dtype=torch.float64)
                    del u, diagonals
        loss = (total * weight).float()
        positive = (pos_total * weight).float()
        negative = ((total - pos_total) * weight).float()
        if want_grad:
            gs = (gx * x).sum()  # sum_ij dL/dz_ij * (x_i . y_j)
            ctx.save_for_backward(gx, gy, gs, gb.float(), scale)
        ctx.weight, ctx.used = weight, False
        ctx.mark_non_differentiable(positive, negative)
        return loss, positive, negative

    @staticmethod
    def backward(ctx, grad_loss, _grad_positive, _grad_negative):
        if ctx.used:
            raise RuntimeError(
                "the chunked SigLIP loss was already backpropagated (its precomputed gradients are scaled in "
                "place to save memory): compute the loss again instead of backward(retain_graph=True) twice"
            )
        ctx.used = True
        gx, gy, gs, gb, scale = ctx.saved_tensors
        g = grad_loss * ctx.weight
        with torch.autocast(gx.device.type, enabled=False):
            return gx.mul_(g * scale), gy.mul_(g * scale), g * gs, g * gb, None, None, None, None


# --------------------------------------------------------------------------------------------------------
# Softmax cross-entropy (CLIP / InfoNCE) with soft targets spread uniformly over each row's positives:
#   loss = row_weight * sum_i [lse_j z_ij - mean_{p in P_i} z_ip] + col_weight * (same over columns),
#   z = s * x @ y.T.


def _dense_softmax(
    x: Tensor, y: Tensor, scale: Tensor, positives: _Positives, row_weight: float, col_weight: float
) -> tuple[Tensor, Tensor, Tensor]:
    n, m = x.shape[0], y.shape[0]
    logits = scale * (x @ y.T)
    is_pos = positives.block(0, n, 0, m, x.device)
    pos_logits = torch.zeros_like(logits) if is_pos is None else logits * is_pos
    negative = row_weight * torch.logsumexp(logits, 1).sum()
    positive = -row_weight * (pos_logits.sum(1) / positives.row_counts(n, m, x.device)).sum()
    if col_weight:
        negative = negative + col_weight * torch.logsumexp(logits, 0).sum()
        positive = positive - col_weight * (pos_logits.sum(0) / positives.col_counts(n, m, x.device)).sum()
    loss = negative + positive
    return loss, positive.detach(), negative.detach()


class _ChunkedSoftmaxLoss(torch.autograd.Function):
    """Blockwise softmax cross-entropy over rows (and optionally columns) of ``s * x @ y.T``.

    Forward: one blocked pass accumulating per-row / per-column logsumexp and positive-logit sums.
    Backward: recompute each block's logits and accumulate ``dL/dz`` times the features."""

    @staticmethod
    def forward(ctx, x, y, scale, positives, row_weight, col_weight, chunk):
        n, m = x.shape[0], y.shape[0]
        use_cols = bool(col_weight)
        row_lse = x.new_full((n,), float("-inf"))
        row_pos = x.new_zeros(n)
        col_lse = x.new_full((m,), float("-inf")) if use_cols else None
        col_pos = x.new_zeros(m) if use_cols else None
        with torch.autocast(x.device.type, enabled=False):
            for i0, i1 in _blocks(n, chunk):
                scaled_xi = x[i0:i1] * scale
                for j0, j1 in _blocks(m, chunk):
                    z = scaled_xi @ y[j0:j1].T
                    row_lse[i0:i1] = torch.logaddexp(row_lse[i0:i1], torch.logsumexp(z, 1))
                    if use_cols:
                        col_lse[j0:j1] = torch.logaddexp(col_lse[j0:j1], torch.logsumexp(z, 0))
                    block_row_pos, block_col_pos = positives.positive_sums(z, i0, j0, use_cols)
                    row_pos[i0:i1] += block_row_pos
                    if use_cols:
                        col_pos[j0:j1] += block_col_pos
                    del z
            row_count = positives.row_counts(n, m, x.device)
            negative = row_weight * row_lse.sum(dtype=torch.float64)
            positive = -row_weight * (row_pos / row_count).sum(dtype=torch.float64)
            col_count = None
            if use_cols:
                col_count = positives.col_counts(n, m, x.device)
                negative = negative + col_weight * col_lse.sum(dtype=torch.float64)
                positive = positive - col_weight * (col_pos / col_count).sum(dtype=torch.float64)
        loss = (negative + positive).float()
        positive, negative = positive.float(), negative.float()
        ctx.save_for_backward(x, y, scale, row_lse, row_count, col_lse, col_count)
        ctx.positives, ctx.row_weight, ctx.col_weight, ctx.chunk = positives, row_weight, col_weight, chunk
        ctx.mark_non_differentiable(positive, negative)
        return loss, positive, negative

    @staticmethod
    def backward(ctx, grad_loss, _grad_positive, _grad_negative):
        x, y, scale, row_lse, row_count, col_lse, col_count = ctx.saved_tensors
        positives, rw, cw, chunk = ctx.positives, ctx.row_weight, ctx.col_weight, ctx.chunk
        n, m = x.shape[0], y.shape[0]
        gx, gy = torch.zeros_like(x), torch.zeros_like(y)
        with torch.autocast(x.device.type, enabled=False):
            for i0, i1 in _blocks(n, chunk):
                xi = x[i0:i1]
                scaled_xi = xi * scale
                for j0, j1 in _blocks(m, chunk):
                    yj = y[j0:j1]
                    z = scaled_xi @ yj.T
                    if cw:
                        col_soft = (z - col_lse[None, j0:j1]).exp_().mul_(cw)
                    dz = z.sub_(row_lse[i0:i1, None]).exp_().mul_(rw)
                    if cw:
                        dz.add_(col_soft)
                        del col_soft
                    positives.subtract_targets_(
                        dz, i0, j0, rw / row_count[i0:i1], cw / col_count[j0:j1] if cw else None
                    )
                    gx[i0:i1].addmm_(dz, yj)
                    gy[j0:j1].addmm_(dz.T, xi)
                    del dz
            grad_scale = grad_loss * (gx * x).sum()
            g = grad_loss * scale
            return gx.mul_(g), gy.mul_(g), grad_scale, None, None, None, None


# --------------------------------------------------------------------------------------------------------
# Dispatch and helpers.


def _sigmoid(x, y, scale, bias, positives, weight, chunk_size) -> LossOutput:
    if chunk_size is None:
        return LossOutput(*_dense_sigmoid(x, y, scale, bias, positives, weight))
    want_grad = torch.is_grad_enabled() and any(t.requires_grad for t in (x, y, scale, bias))
    return LossOutput(*_ChunkedSigmoidLoss.apply(x, y, scale, bias, positives, weight, chunk_size, want_grad))


def _softmax(x, y, scale, positives, row_weight, col_weight, chunk_size) -> LossOutput:
    if chunk_size is None:
        return LossOutput(*_dense_softmax(x, y, scale, positives, row_weight, col_weight))
    return LossOutput(*_ChunkedSoftmaxLoss.apply(x, y, scale, positives, row_weight, col_weight, chunk_size))


def _add(a: LossOutput, b: LossOutput) -> LossOutput:
    return LossOutput(a.loss + b.loss, a.positive + b.positive, a.negative + b.negative)


def _scalar(value: Tensor | float, name: str, like: Tensor) -> Tensor:
    value = torch.as_tensor(value, device=like.device)
    if value.numel() != 1:
        raise ValueError(f"{name} must be a scalar (one element), got shape {tuple(value.shape)}")
    if not value.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor or float, got {value.dtype}")
    return value.float().reshape(())


def _check_features(**features: Tensor | None) -> None:
    present = {name: t for name, t in features.items() if t is not None}
    for name, t in present.items():
        if t.ndim != 2:
            raise ValueError(f"{name} must be a 2-D [batch, dim] tensor, got shape {tuple(t.shape)}")
        if not t.is_floating_point():
            raise ValueError(f"{name} must be floating point, got {t.dtype}")
    shapes = {name: tuple(t.shape) for name, t in present.items()}
    if len(set(shapes.values())) != 1:
        raise ValueError(f"image/text features must all have the same [batch, dim] shape, got {shapes}")
    if next(iter(shapes.values()))[0] == 0:
        raise ValueError("empty batch: the features have 0 rows")


def _check_chunk(chunk_size: int | None) -> None:
    if chunk_size is not None and (not isinstance(chunk_size, int) or chunk_size < 1):
        raise ValueError(f"chunk_size must be a positive int or None (dense), got {chunk_size!r}")


# --------------------------------------------------------------------------------------------------------
# Public losses.


def siglip_loss(
    image: Tensor,
    text: Tensor,
    logit_scale: Tensor,
    logit_bias: Tensor,
    extra_text: Tensor | None = None,
    chunk_size: int | None = 4096,
    group: ProcessGroup | None = None,
) -> LossOutput:
    """SigLIP sigmoid loss (Zhai et al. 2023), optionally with a second caption per image.

    ``z_ij = logit_scale * image_i . text_j + logit_bias`` over the ``N`` local images and the ``K * N_g``
    captions (``K = 2`` with ``extra_text``: columns ``[text; extra_text]``, ``N_g`` = global batch); the label
    is ``+1`` where caption ``j`` belongs to image ``i`` (one diagonal per caption block) and ``-1`` elsewhere::

        loss = sum_{i, j} -log sigmoid(l_ij * z_ij) / (K * N)

    i.e. the SigLIP paper's "sum over all pairs / N"; with ``extra_text`` the mean of the two blocks' losses.
    Args:
        image, text, extra_text: ``[N, d]`` L2-normalised features (any float dtype; computed in fp32).
        logit_scale, logit_bias: scalars (``logit_scale`` already exponentiated); gradients flow to both.
        chunk_size: block size of the chunked computation; ``None`` = dense (materialises ``N x N``).
        group: process group whose ranks' captions are gathered as extra negatives (see module docstring).
    """
    _check_features(image=image, text=text, extra_text=extra_text)
    _check_chunk(chunk_size)
    rank, world = rank_and_world(group)
    n = image.shape[0]
    with torch.autocast(image.device.type, enabled=False):
        x = image.float()
        texts = [text] if extra_text is None else [text, extra_text]
        columns = torch.cat([all_gather_with_grad(t.float(), group) for t in texts])
        scale = _scalar(logit_scale, "logit_scale", x)
        bias = _scalar(logit_bias, "logit_bias", x)
        positives = _DiagonalPositives(row_period=n, row_offset=rank * n, col_period=n * world)
        return _sigmoid(x, columns, scale, bias, positives, 1.0 / (len(texts) * n), chunk_size)


def clip_loss(
    image: Tensor,
    text: Tensor,
    logit_scale: Tensor,
    extra_text: Tensor | None = None,
    chunk_size: int | None = 4096,
    group: ProcessGroup | None = None,
) -> LossOutput:
    """Symmetric CLIP InfoNCE loss, optionally with a second caption per image.

    ``z = logit_scale * image . text``. Image-to-text: each local image is a softmax row over all ``K * N_g``
    captions (``K = 2`` with ``extra_text``) with a *soft target spread uniformly over its K captions*, i.e.
    ``CE_i = logsumexp_j z_ij - mean_{p in P_i} z_ip`` (the standard CLIP term when ``K = 1``). Text-to-image:
    each local caption (and extra caption) is a softmax row over all ``N_g`` images with its own image as the
    single target. Reduction::

        loss = ( mean_{N images} CE_i2t + mean_{K*N captions} CE_t2i ) / 2

    Without ``group`` one blocked pass computes both directions from the same logits (row and column
    logsumexp); with ``group`` each rank computes its local rows against the gathered other modality.
    Arguments as in :func:`siglip_loss`.
    """
    _check_features(image=image, text=text, extra_text=extra_text)
    _check_chunk(chunk_size)
    rank, world = rank_and_world(group)
    n = image.shape[0]
    with torch.autocast(image.device.type, enabled=False):
        x = image.float()
        texts = [text.float()] if extra_text is None else [text.float(), extra_text.float()]
        k = len(texts)
        scale = _scalar(logit_scale, "logit_scale", x)
        if world == 1:
            positives = _DiagonalPositives(row_period=n, row_offset=0, col_period=n)
            return _softmax(x, torch.cat(texts), scale, positives, 0.5 / n, 0.5 / (k * n), chunk_size)
        all_images = all_gather_with_grad(x, group)
        all_texts = torch.cat([all_gather_with_grad(t, group) for t in texts])
        positives = _DiagonalPositives(row_period=n, row_offset=rank * n, col_period=n * world)
        image_to_text = _softmax(x, all_texts, scale, positives, 0.5 / n, 0.0, chunk_size)
        text_to_image = _softmax(
            torch.cat(texts), all_images, scale, positives, 0.5 / (k * n), 0.0, chunk_size
        )
        return _add(image_to_text, text_to_image)


def info_nce_loss(
    query: Tensor,
    target: Tensor,
    positive_mask: Tensor | None = None,
    temperature: float = 0.02,
    chunk_size: int | None = None,
    group: ProcessGroup | None = None,
) -> LossOutput:
    """One-directional InfoNCE (VLM2Vec): each query is a softmax row over all targets.

    ``z_ij = query_i . target_j / temperature`` in fp32. With ``positive_mask`` (``[B, M]`` bool) query ``i``
    has the positives ``P_i = {j : mask_ij}`` and a soft target spread uniformly over them; every other target
    (other queries' positives, hard negatives) is a negative::

        loss = mean_i [ logsumexp_j z_ij - mean_{p in P_i} z_ip ]

    ``positive_mask=None`` means target ``i`` is the positive of query ``i`` (``M >= B``; targets past ``B``
    are extra hard negatives). With ``group`` the targets of all ranks are gathered as negatives (rank order);
    the local mask / diagonal refers to this rank's own targets. Ranks may hold different numbers of targets
    (rows with and without hard negatives, several positives): the gather pads and drops the padding, at the
    cost of one small collective and host sync per call to exchange the counts. Every query needs at least one
    positive (checked when the mask is on the CPU; on an accelerator the check would cost a host sync and is
    skipped, a query without positives then gives a non-finite loss).
    """
    _check_features(query=query)
    _check_features(target=target)
    _check_chunk(chunk_size)
    b, m = query.shape[0], target.shape[0]
    if query.shape[1] != target.shape[1]:
        raise ValueError(f"query and target dims differ: {query.shape[1]} vs {target.shape[1]}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if positive_mask is None:
        if m < b:
            raise ValueError(
                f"positive_mask=None pairs query i with target i, so it needs M >= B targets; got B={b}, M={m}"
            )
    else:
        if positive_mask.dtype != torch.bool or tuple(positive_mask.shape) != (b, m):
            raise ValueError(
                f"positive_mask must be a bool tensor of shape [B, M] = [{b}, {m}], got "
                f"{positive_mask.dtype} {tuple(positive_mask.shape)}"
            )
        if positive_mask.device.type == "cpu" and not bool(positive_mask.any(1).all()):
            rows = torch.nonzero(~positive_mask.any(1)).flatten().tolist()
            raise ValueError(
                f"every query needs at least one positive target; queries without one: {rows[:10]}"
            )
    with torch.autocast(query.device.type, enabled=False):
        q = query.float()
        targets, offset = all_gather_uneven_with_grad(target.float(), group)
        if positive_mask is None:  # query i <-> global column offset + i
            positives = _DiagonalPositives(row_period=b, row_offset=offset, col_period=targets.shape[0])
        else:
            positives = _MaskPositives(positive_mask.to(q.device), col_offset=offset)
        scale = torch.tensor(1.0 / temperature, device=q.device)
        return _softmax(q, targets, scale, positives, 1.0 / b, 0.0, chunk_size)
