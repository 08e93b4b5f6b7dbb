"""core.losses: chunked and dense paths against naive float64 references (loss, parts and gradients)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from core.losses import LossOutput, _DiagonalPositives, clip_loss, info_nce_loss, siglip_loss

N, D = 37, 8
CHUNKS = [None, 8, 16, 64]  # dense, uneven blocks (37 = 4*8 + 5), blocks larger than the batch


def _features(n: int, d: int = D, seed: int = 0, count: int = 3) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [F.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=-1) for _ in range(count)]


# Naive float64 references, written independently of core.losses.


def ref_siglip(image, text, scale, bias, extra=None):
    cols = text if extra is None else torch.cat([text, extra])
    n, k = image.shape[0], cols.shape[0] // image.shape[0]
    labels = -torch.ones(n, k * n, dtype=image.dtype)
    for block in range(k):
        labels[torch.arange(n), block * n + torch.arange(n)] = 1
    per_pair = -F.logsigmoid(labels * (scale * image @ cols.T + bias))
    return per_pair.sum() / (k * n), (per_pair * (labels > 0)).sum() / (k * n)


def ref_clip(image, text, scale, extra=None):
    cols = text if extra is None else torch.cat([text, extra])
    n, k = image.shape[0], cols.shape[0] // image.shape[0]
    logits = scale * image @ cols.T
    target = torch.zeros_like(logits)
    for block in range(k):
        target[torch.arange(n), block * n + torch.arange(n)] = 1 / k
    image_to_text = -(target * logits.log_softmax(1)).sum(1).mean()
    text_to_image = F.cross_entropy(logits.T, torch.arange(k * n) % n)
    return (image_to_text + text_to_image) / 2


def ref_info_nce(query, target, mask, temperature):
    logits = query @ target.T / temperature
    soft_target = mask.to(logits.dtype) / mask.sum(1, keepdim=True)
    return -(soft_target * logits.log_softmax(1)).sum(1).mean()


def _grads(loss, inputs):
    return torch.autograd.grad(loss, inputs)


def _assert_close(ours, ref, atol=2e-6, rtol=2e-5):
    torch.testing.assert_close(ours.double(), ref.double(), atol=atol, rtol=rtol)


@pytest.mark.parametrize("chunk_size", CHUNKS)
@pytest.mark.parametrize("with_extra", [False, True])
def test_siglip_matches_float64_dense(chunk_size, with_extra):
    image, text, extra = _features(N)
    ref_inputs = [
        image,
        text,
        torch.tensor(10.0, dtype=torch.float64),
        torch.tensor(-5.0, dtype=torch.float64),
    ]
    if with_extra:
        ref_inputs.append(extra)
    ref_inputs = [t.clone().requires_grad_() for t in ref_inputs]
    ref_loss, ref_positive = ref_siglip(*ref_inputs)
    ref_grads = _grads(ref_loss, ref_inputs)

    inputs = [t.detach().float().requires_grad_() for t in ref_inputs]
    out = siglip_loss(*inputs[:4], extra_text=inputs[4] if with_extra else None, chunk_size=chunk_size)
    assert isinstance(out, LossOutput) and out.loss.dtype == torch.float32
    _assert_close(out.loss, ref_loss)
    _assert_close(out.positive, ref_positive)
    _assert_close(out.positive + out.negative, out.loss)
    assert not out.positive.requires_grad and not out.negative.requires_grad
    for ours, ref in zip(_grads(out.loss, inputs), ref_grads, strict=True):
        _assert_close(ours, ref)


@pytest.mark.parametrize("chunk_size", CHUNKS)
@pytest.mark.parametrize("with_extra", [False, True])
def test_clip_matches_float64_dense(chunk_size, with_extra):
    image, text, extra = _features(N, seed=1)
    ref_inputs = [image, text, torch.tensor(20.0, dtype=torch.float64)] + ([extra] if with_extra else [])
    ref_inputs = [t.clone().requires_grad_() for t in ref_inputs]
    ref_loss = ref_clip(*ref_inputs)
    ref_grads = _grads(ref_loss, ref_inputs)

    inputs = [t.detach().float().requires_grad_() for t in ref_inputs]
    out = clip_loss(*inputs[:3], extra_text=inputs[3] if with_extra else None, chunk_size=chunk_size)
    _assert_close(out.loss, ref_loss)
    _assert_close(out.positive + out.negative, out.loss)
    for ours, ref in zip(_grads(out.loss, inputs), ref_grads, strict=True):
        _assert_close(ours, ref)


def test_clip_parts_are_logsumexp_and_positive_logits():
    image, text, _ = _features(N, seed=2)
    scale = 15.0
    out = clip_loss(image.float(), text.float(), torch.tensor(scale), chunk_size=16)
    logits = scale * image @ text.T
    negative = (logits.logsumexp(1).mean() + logits.logsumexp(0).mean()) / 2
    positive = -logits.diag().mean()
    _assert_close(out.negative, negative)
    _assert_close(out.positive, positive)


@pytest.mark.parametrize("chunk_size", CHUNKS)
def test_info_nce_multi_positive_and_hard_negatives(chunk_size):
    b, m = 11, 29  # M > B: hard negatives; several positives per query
    query, target = _features(b, seed=3, count=1)[0], _features(m, seed=4, count=1)[0]
    g = torch.Generator().manual_seed(5)
    mask = torch.rand(b, m, generator=g) < 0.15
    mask[torch.arange(b), torch.arange(b)] = True
    assert (mask.sum(1) > 1).any()
    q, t = query.clone().requires_grad_(), target.clone().requires_grad_()
    ref = ref_info_nce(q, t, mask, 0.05)
    ref_grads = _grads(ref, [q, t])
    q32, t32 = query.float().requires_grad_(), target.float().requires_grad_()
    out = info_nce_loss(q32, t32, positive_mask=mask, temperature=0.05, chunk_size=chunk_size)
    _assert_close(out.loss, ref)
    _assert_close(out.positive + out.negative, out.loss)
    for ours, r in zip(_grads(out.loss, [q32, t32]), ref_grads, strict=True):
        _assert_close(ours, r)


@pytest.mark.parametrize("chunk_size", CHUNKS)
def test_info_nce_default_pairs_query_i_with_target_i(chunk_size):
    b, m = 13, 26  # VLM2Vec: [positives; hard negatives]
    query, target = _features(b, seed=6, count=1)[0], _features(m, seed=7, count=1)[0]
    mask = torch.zeros(b, m, dtype=torch.bool)
    mask[torch.arange(b), torch.arange(b)] = True
    q, t = query.clone().requires_grad_(), target.clone().requires_grad_()
    ref = ref_info_nce(q, t, mask, 0.02)
    ref_grads = _grads(ref, [q, t])
    q32, t32 = query.float().requires_grad_(), target.float().requires_grad_()
    out = info_nce_loss(q32, t32, chunk_size=chunk_size)
    _assert_close(out.loss, ref, rtol=5e-5)
    for ours, r in zip(_grads(out.loss, [q32, t32]), ref_grads, strict=True):
        _assert_close(ours, r, atol=1e-5, rtol=5e-5)
    # The same as cross-entropy with integer labels when there is one positive per query.
    _assert_close(out.loss, F.cross_entropy(query @ target.T / 0.02, torch.arange(b)), rtol=5e-5)


def test_info_nce_hard_negatives_and_extra_positives_change_loss_as_formula_says():
    query = torch.tensor([[1.0, 0.0]])
    target = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    temperature = 0.5
    z = [1.0 / temperature, 0.0, 0.6 / temperature]
    in_batch = info_nce_loss(query, target[:2], temperature=temperature).loss
    with_hard_negative = info_nce_loss(query, target, temperature=temperature).loss
    two_positives = info_nce_loss(
        query, target, positive_mask=torch.tensor([[True, False, True]]), temperature=temperature
    ).loss
    assert in_batch.item() == pytest.approx(math.log(math.exp(z[0]) + math.exp(z[1])) - z[0], rel=1e-6)
    lse = math.log(sum(math.exp(v) for v in z))
    assert with_hard_negative.item() == pytest.approx(lse - z[0], rel=1e-6)
    assert two_positives.item() == pytest.approx(lse - (z[0] + z[2]) / 2, rel=1e-6)


def test_siglip_hand_computed_single_pair():
    image = torch.tensor([[0.6, 0.8]])
    text = torch.tensor([[0.8, 0.6]])  # cosine 0.96
    out = siglip_loss(image, text, torch.tensor(10.0), torch.tensor(-2.0))
    z = 10.0 * 0.96 - 2.0
    assert out.loss.item() == pytest.approx(math.log1p(math.exp(-z)), rel=1e-6)
    assert out.negative.item() == 0.0


@pytest.mark.parametrize("loss_name", ["siglip", "clip", "info_nce"])
def test_bf16_autocast_inputs_are_upcast(loss_name):
    image, text, _ = _features(24, d=16, seed=8)
    x = image.to(torch.bfloat16).requires_grad_()
    y = text.to(torch.bfloat16).requires_grad_()

    def run(a, b):
        if loss_name == "siglip":
            return siglip_loss(a, b, torch.tensor(10.0), torch.tensor(-5.0), chunk_size=8)
        if loss_name == "clip":
            return clip_loss(a, b, torch.tensor(10.0), chunk_size=8)
        return info_nce_loss(a, b, chunk_size=8)

    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = run(x, y)
        out.loss.backward()
    assert out.loss.dtype == torch.float32
    assert x.grad.dtype == torch.bfloat16
    x64, y64 = x.detach().double().requires_grad_(), y.detach().double().requires_grad_()
    if loss_name == "siglip":
        ref = ref_siglip(x64, y64, 10.0, -5.0)[0]
    elif loss_name == "clip":
        ref = ref_clip(x64, y64, 10.0)
    else:
        ref = ref_info_nce(x64, y64, torch.eye(24, dtype=torch.bool), 0.02)
    _assert_close(out.loss, ref, rtol=1e-4)
    ref.backward()
    torch.testing.assert_close(x.grad.double(), x64.grad.to(torch.bfloat16).double(), atol=1e-2, rtol=2e-2)


class _LargestTensor(TorchDispatchMode):
    """Records the largest number of elements of any tensor produced by an aten op."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


@pytest.mark.parametrize("loss_name", ["siglip", "clip", "info_nce"])
def test_chunked_never_materialises_the_logits_matrix(loss_name):
    n, d, chunk = 512, 4, 128
    image, text, extra = (t.float().requires_grad_() for t in _features(n, d=d, seed=9))
    scale = torch.tensor(10.0, requires_grad=True)
    bias = torch.tensor(-5.0, requires_grad=True)

    def run(chunk_size):
        if loss_name == "siglip":
            return siglip_loss(image, text, scale, bias, extra_text=extra, chunk_size=chunk_size)
        if loss_name == "clip":
            return clip_loss(image, text, scale, extra_text=extra, chunk_size=chunk_size)
        return info_nce_loss(image, torch.cat([text, extra]), chunk_size=chunk_size)

    for chunk_size, bound in [(chunk, 4 * chunk * chunk), (None, n * n)]:
        with _LargestTensor() as probe:
            run(chunk_size).loss.backward()
        if chunk_size is None:
            assert probe.largest >= bound  # the dense path does build N x 2N logits: the probe works
        else:
            assert probe.largest <= bound < n * n


def test_bad_inputs_raise_clear_errors():
    image, text, _ = (t.float() for t in _features(8))
    s, b = torch.tensor(10.0), torch.tensor(-5.0)
    with pytest.raises(ValueError, match="same \\[batch, dim\\] shape"):
        siglip_loss(image, text[:7], s, b)
    with pytest.raises(ValueError, match="2-D"):
        clip_loss(image[0], text[0], s)
    with pytest.raises(ValueError, match="chunk_size"):
        siglip_loss(image, text, s, b, chunk_size=0)
    with pytest.raises(ValueError, match="logit_scale must be a scalar"):
        clip_loss(image, text, torch.ones(2))
    with pytest.raises(ValueError, match="M >= B"):
        info_nce_loss(image, text[:4])
    with pytest.raises(ValueError, match="shape \\[B, M\\]"):
        info_nce_loss(image, text, positive_mask=torch.ones(8, 7, dtype=torch.bool))
    mask = torch.eye(8, dtype=torch.bool)
    mask[3, 3] = False
    with pytest.raises(ValueError, match="at least one positive.*\\[3\\]"):
        info_nce_loss(image, text, positive_mask=mask)
    with pytest.raises(ValueError, match="temperature"):
        info_nce_loss(image, text, temperature=0.0)


def test_no_grad_forward_gives_same_loss():
    image, text, _ = (t.float() for t in _features(N, seed=10))
    s, b = torch.tensor(10.0, requires_grad=True), torch.tensor(-5.0, requires_grad=True)
    with torch.no_grad():
        a = siglip_loss(image, text, s, b, chunk_size=8).loss
    c = siglip_loss(image, text, s, b, chunk_size=8).loss
    torch.testing.assert_close(a, c.detach())


def test_chunked_siglip_refuses_a_second_backward_through_the_same_graph():
    image, text, _ = (t.float().requires_grad_() for t in _features(N, seed=11))
    out = siglip_loss(image, text, torch.tensor(10.0), torch.tensor(-5.0), chunk_size=8)
    out.loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="compute the loss again"):
        out.loss.backward()


@pytest.mark.parametrize(
    "row_period, row_offset, col_period",
    [(37, 0, 37), (6, 6, 12), (6, 0, 12), (5, 3, 7), (4, 9, 10), (8, 0, 3)],
)
def test_diagonal_positive_runs_match_the_pairing_rule(row_period, row_offset, col_period):
    """The diagonal runs the chunked losses use mark exactly the pairs (i % rp) + offset == j % cp, for every
    block of every size, including blocks crossing periods and keys past the last column period."""
    positives = _DiagonalPositives(row_period, row_offset, col_period)
    rows, cols = 2 * row_period + 3, 3 * col_period + 2
    rule = (torch.arange(rows)[:, None] % row_period + row_offset) == (
        torch.arange(cols)[None, :] % col_period
    )
    for chunk in (1, 2, 5, 7, 64):
        for i0 in range(0, rows, chunk):
            for j0 in range(0, cols, chunk):
                i1, j1 = min(i0 + chunk, rows), min(j0 + chunk, cols)
                want = rule[i0:i1, j0:j1]
                got = positives.block(i0, i1, j0, j1, torch.device("cpu"))
                assert torch.equal(got if got is not None else torch.zeros_like(want), want), (chunk, i0, j0)
                z = torch.randn(i1 - i0, j1 - j0, dtype=torch.float64)
                row_sum, col_sum = positives.positive_sums(z, i0, j0, cols=True)
                torch.testing.assert_close(row_sum, (z * want).sum(1))
                torch.testing.assert_close(col_sum, (z * want).sum(0))
                row_t, col_t = (
                    torch.randn(i1 - i0, dtype=torch.float64),
                    torch.randn(j1 - j0, dtype=torch.float64),
                )
                dz = z.clone()
                positives.subtract_targets_(dz, i0, j0, row_t, col_t)
                torch.testing.assert_close(dz, z - want * (row_t[:, None] + col_t[None, :]))
