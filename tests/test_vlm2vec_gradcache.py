"""GradCache gives the gradients of the full-batch step (dropout on), on one device, under bf16 autocast."""

from __future__ import annotations

import contextlib

import pytest
import torch
from vlm2vec_helpers import (
    color_image,
    save_tiny_qwen2_vl,
    single_thread,  # noqa: F401 (autouse fixture)
)

from core.losses import info_nce_loss
from core.protocol import EmbedInput
from vlm2vec import gradcache
from vlm2vec.data import ContrastiveCollator, MMEBExample
from vlm2vec.gradcache import grad_cache_step
from vlm2vec.model import LoraSettings, VLM2VecModel

COLORS = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (0, 255, 255), (255, 0, 255)]
WORDS = ["cat", "dog", "bird", "car", "tree", "house"]


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> VLM2VecModel:
    path = save_tiny_qwen2_vl(tmp_path_factory.mktemp("qwen") / "tiny", dropout=0.2)
    model = VLM2VecModel.from_backbone(str(path))
    model.add_lora(LoraSettings(r=4, alpha=8, dropout=0.2))
    with torch.no_grad():  # non-zero LoRA B so the adapters' dropout reaches the outputs
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.2)
    return model.train()


def _examples(with_negative: bool = True) -> list[MMEBExample]:
    examples = []
    for i, (color, word) in enumerate(zip(COLORS, WORDS, strict=True)):
        query = EmbedInput(
            text=f"a photo of {word}" if i % 2 else None,
            image=color_image(color, seed=i),
            instruction="find the caption",
        )
        positive = EmbedInput(text=f"the {word}")
        negatives = [EmbedInput(text=f"a {WORDS[(i + 1) % 6]} photo")] if with_negative and i % 3 == 0 else []
        examples.append(MMEBExample(query, [positive], negatives))
    return examples


def _loss(q, t, mask):
    return info_nce_loss(q, t, positive_mask=mask, temperature=0.05)


def _grads(model) -> dict[str, torch.Tensor]:
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return grads


def _reference_grads(model, batch, seed: int) -> tuple[float, dict[str, torch.Tensor]]:
    """One autograd graph over all chunks, encoded in GradCache's first-pass order (same dropout draws)."""
    torch.manual_seed(seed)
    target = torch.cat([model(chunk) for chunk in batch.target_chunks])  # targets first, then queries
    query = torch.cat([model(chunk) for chunk in batch.query_chunks])
    loss = _loss(query, target, batch.positive_mask).loss
    loss.backward()
    return loss.item(), _grads(model)


def _grad_cache_grads(model, batch, seed: int) -> tuple[float, dict[str, torch.Tensor]]:
    torch.manual_seed(seed)
    out = grad_cache_step(
        model, batch.query_chunks, batch.target_chunks, lambda q, t: _loss(q, t, batch.positive_mask)
    )
    return out.loss.item(), _grads(model)


def _assert_close(a: dict, b: dict, atol: float = 1e-5, rtol: float = 1e-4) -> None:
    assert a.keys() == b.keys() and len(a) > 0
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=atol, rtol=rtol, msg=name)


def test_grad_cache_equals_full_batch_with_dropout(model):
    batch = ContrastiveCollator(model.prepare, query_chunk_size=2, target_chunk_size=3)(_examples())
    assert len(batch.query_chunks) == 3 and len(batch.target_chunks) == 3
    ref_loss, ref = _reference_grads(model, batch, seed=7)
    loss, got = _grad_cache_grads(model, batch, seed=7)
    assert loss == pytest.approx(ref_loss, rel=1e-6)
    _assert_close(got, ref)


def test_rng_replay_is_what_makes_dropout_match(model, monkeypatch):
    """Without replaying each chunk's RNG state, the re-forward draws other dropout masks: grads differ."""
    batch = ContrastiveCollator(model.prepare, query_chunk_size=2, target_chunk_size=3)(_examples())
    _, ref = _reference_grads(model, batch, seed=3)
    monkeypatch.setattr(gradcache.RngState, "replay", lambda self: contextlib.nullcontext())
    _, got = _grad_cache_grads(model, batch, seed=3)
    worst = max((got[n] - ref[n]).abs().max().item() for n in ref)
    assert worst > 1e-4


def test_grad_cache_equals_plain_full_batch_step_without_dropout(model):
    """Dropout off: chunked GradCache == one forward of the whole batch (padding differs per chunk)."""
    model.eval()
    try:
        examples = _examples()
        plain = ContrastiveCollator(model.prepare)(examples)
        assert len(plain.query_chunks) == 1 and len(plain.target_chunks) == 1
        ref_loss, ref = _reference_grads(model, plain, seed=0)
        chunked = ContrastiveCollator(model.prepare, query_chunk_size=4, target_chunk_size=1)(examples)
        loss, got = _grad_cache_grads(model, chunked, seed=0)
    finally:
        model.train()
    assert loss == pytest.approx(ref_loss, rel=1e-5)
    _assert_close(got, ref, atol=1e-5)


def test_grad_cache_under_bf16_autocast(model):
    batch = ContrastiveCollator(model.prepare, query_chunk_size=3, target_chunk_size=4)(_examples(False))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ref_loss, ref = _reference_grads(model, batch, seed=1)
        loss, got = _grad_cache_grads(model, batch, seed=1)
    assert torch.isfinite(torch.tensor(loss)) and loss == pytest.approx(ref_loss, rel=1e-3)
    _assert_close(got, ref, atol=2e-2, rtol=2e-2)  # bf16 matmuls: ~3 significant digits


def test_no_sync_wraps_all_chunks_but_the_last(model):
    """DDP reads no_sync at forward time: every chunk forward with grad but the last runs inside it; the last
    query chunk keeps its first-pass graph, so there is one chunk forward fewer than two per chunk."""
    batch = ContrastiveCollator(model.prepare, query_chunk_size=2, target_chunk_size=3)(_examples())
    inside = {"now": False}
    forwards = []  # (grad enabled, inside no_sync) of every chunk forward

    @contextlib.contextmanager
    def no_sync():
        inside["now"] = True
        try:
            yield
        finally:
            inside["now"] = False

    def encode(chunk):
        forwards.append((torch.is_grad_enabled(), inside["now"]))
        return model(chunk)

    grad_cache_step(
        encode,
        batch.query_chunks,
        batch.target_chunks,
        lambda q, t: _loss(q, t, batch.positive_mask),
        no_sync=no_sync,
    )
    model.zero_grad(set_to_none=True)
    chunks = len(batch.query_chunks) + len(batch.target_chunks)
    assert len(forwards) == 2 * chunks - 1
    with_grad = [unsynced for grad, unsynced in forwards if grad]
    assert len(with_grad) == chunks and all(with_grad[:-1]) and not with_grad[-1]
