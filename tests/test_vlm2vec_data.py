"""MMEB-train loading (three layouts, splits, caps, image token), batch sampling, and the contrastive batch:
hard negatives and several positives enter the loss exactly as the InfoNCE formula says."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from vlm2vec_helpers import (
    color_image,
    save_tiny_llava_next,
    single_thread,  # noqa: F401 (autouse fixture)
    write_tiny_mmeb_train,
)

from core.losses import info_nce_loss
from core.protocol import EmbedInput
from vlm2vec.data import ContrastiveCollator, MMEBBatchSampler, MMEBDataError, MMEBExample, MMEBTrainData
from vlm2vec.model import VLM2VecModel


@pytest.mark.parametrize("fmt", ["parquet", "jsonl", "save_to_disk"])
def test_layouts_splits_and_caps(tmp_path, fmt):
    root = write_tiny_mmeb_train(tmp_path / fmt, fmt=fmt)
    data = MMEBTrainData(root, root, ["ImageNet_1K", "MSCOCO_t2i"], "original", cap=None)
    assert data.subset_sizes == [8, 8] and len(data) == 16
    first = data[0]
    assert first.query.image is not None and first.query.text.startswith("<|image_1|>")
    assert [p.text for p in first.positives] == ["red photo"] and [n.text for n in first.negatives] == [
        "green photo"
    ]
    text_query = data[8]
    assert text_query.query.image is None and text_query.positives[0].image is not None
    assert text_query.negatives == []  # empty neg_text / neg_image_path: no hard negative
    capped = MMEBTrainData(root, root, ["ImageNet_1K", "MSCOCO_t2i"], cap=5, subset_caps={"MSCOCO_t2i": 3})
    assert capped.subset_sizes == [5, 3]
    diverse = MMEBTrainData(root, root, ["ImageNet_1K"], "diverse_instruction", cap=None)
    if fmt != "save_to_disk":
        assert "instruct" in diverse[0].query.text
    no_neg = MMEBTrainData(root, root, ["ImageNet_1K"], use_negatives=False, cap=None)
    assert no_neg[0].negatives == []


def test_bad_inputs_are_named(tmp_path):
    root = write_tiny_mmeb_train(tmp_path / "d")
    with pytest.raises(MMEBDataError, match="unknown subsets"):
        MMEBTrainData(root, root, ["ImageNet"])
    with pytest.raises(MMEBDataError, match="no MMEB-train subset 'VOC2007'"):
        MMEBTrainData(root, root, ["VOC2007"])
    with pytest.raises(MMEBDataError, match="not found under image root"):
        MMEBTrainData(root, tmp_path, ["ImageNet_1K"])


def test_sampler_one_subset_per_batch_or_mixed_and_deterministic():
    sizes = [10, 7, 12]
    owner = np.repeat(np.arange(3), sizes)
    sampler = MMEBBatchSampler(sizes, batch_size=3, seed=1, total_steps=14)
    batches = list(sampler)
    assert sampler.steps_per_epoch == 3 + 2 + 4 and len(batches) == 14
    assert all(len(set(owner[b])) == 1 for b in batches)
    epoch0 = [i for b in batches[:9] for i in b]
    assert len(set(epoch0)) == len(epoch0) == 27
    assert batches == list(MMEBBatchSampler(sizes, batch_size=3, seed=1, total_steps=14))
    assert batches[5:] == list(MMEBBatchSampler(sizes, batch_size=3, seed=1, start_step=5, total_steps=14))
    assert batches != list(MMEBBatchSampler(sizes, batch_size=3, seed=2, total_steps=14))
    mixed = list(MMEBBatchSampler(sizes, batch_size=3, mixed=True, seed=1))
    assert len(mixed) == 29 // 3 and any(len(set(owner[b])) > 1 for b in mixed)
    ranks = [list(MMEBBatchSampler(sizes, 2, seed=1, total_steps=4, world_size=2, rank=r)) for r in (0, 1)]
    for b0, b1 in zip(*ranks, strict=True):
        assert not set(b0) & set(b1) and len(set(owner[b0 + b1])) == 1
    with pytest.raises(MMEBDataError, match="no full batch"):
        MMEBBatchSampler([2, 3], batch_size=4)


def _reference_loss(
    q: torch.Tensor, positives: list[torch.Tensor], negatives: list[torch.Tensor], tau: float
):
    """InfoNCE in float64 from the example structure: every target of the batch is a candidate of each query;
    loss_i = logsumexp_j z_ij - mean over the query's own positives z_ip."""
    targets = torch.cat([torch.cat([p, n]) for p, n in zip(positives, negatives, strict=True)]).double()
    total = 0.0
    for i in range(q.shape[0]):
        z = (q[i].double() @ targets.T) / tau
        own = (q[i].double() @ positives[i].double().T) / tau
        total += torch.logsumexp(z, 0) - own.mean()
    return total / q.shape[0]


def test_hard_negatives_and_multi_positive_enter_the_loss_by_the_formula(tmp_path):
    model = VLM2VecModel.from_backbone(str(save_tiny_llava_next(tmp_path / "llava"))).eval()
    colors = [(200, 0, 0), (0, 200, 0), (0, 0, 200)]
    examples = [
        MMEBExample(
            EmbedInput(text="<|image_1|> what color", image=color_image(c, seed=i)),
            [
                EmbedInput(text=f"the {w} picture") for w in ("red", "green", "blue")[: i + 1]
            ],  # 1, 2, 3 positives
            [EmbedInput(text="a tree")] if i != 1 else [],
        )
        for i, c in enumerate(colors)
    ]
    tau = 0.05
    batch = ContrastiveCollator(model.prepare, query_chunk_size=2, target_chunk_size=2)(examples)
    assert batch.positive_mask.sum(1).tolist() == [1, 2, 3] and batch.positive_mask.shape == (3, 8)
    with torch.no_grad():
        q = torch.cat([model(c) for c in batch.query_chunks])
        t = torch.cat([model(c) for c in batch.target_chunks])
    loss = info_nce_loss(q, t, batch.positive_mask, temperature=tau).loss
    positives = [model.encode(e.positives) for e in examples]
    negatives = [model.encode(e.negatives) if e.negatives else torch.empty(0, q.shape[1]) for e in examples]
    assert loss.item() == pytest.approx(_reference_loss(q, positives, negatives, tau).item(), rel=1e-5)

    plain = [MMEBExample(e.query, e.positives[:1], []) for e in examples]
    batch0 = ContrastiveCollator(model.prepare)(plain)
    assert torch.equal(batch0.positive_mask, torch.eye(3, dtype=torch.bool))
    with torch.no_grad():
        loss0 = info_nce_loss(
            model(batch0.query_chunks[0]), model(batch0.target_chunks[0]), batch0.positive_mask, tau
        )
    ref0 = _reference_loss(q, [p[:1] for p in positives], [n[:0] for n in negatives], tau)
    assert loss0.loss.item() == pytest.approx(ref0.item(), rel=1e-5)
    assert abs(loss.item() - loss0.loss.item()) > 1e-3  # the extra positives and negatives do change the loss


def test_first_rows_or_seeded_sample(tmp_path):
    """A cap keeps a seeded random sample (ours) or the first N rows (VLM2Vec's `split[:N]`)."""
    root = write_tiny_mmeb_train(tmp_path / "d")
    everything = MMEBTrainData(root, root, ["ImageNet_1K"], cap=None)
    first = MMEBTrainData(root, root, ["ImageNet_1K"], cap=3, selection="first")
    sampled = MMEBTrainData(root, root, ["ImageNet_1K"], cap=3, seed=1)
    assert first.tables[0]["qry_image_path"].tolist() == everything.tables[0]["qry_image_path"].tolist()[:3]
    assert sampled.tables[0]["qry_image_path"].tolist() != first.tables[0]["qry_image_path"].tolist()
    with pytest.raises(MMEBDataError, match="unknown row selection"):
        MMEBTrainData(root, root, ["ImageNet_1K"], selection="last")


def test_blocks_of_one_subset_interleaved():
    """`block_size` (VLM2Vec-V2's interleave_batch_size): each block of a batch comes from one subset, blocks of
    different subsets share batches, every row at most once per epoch, deterministic."""
    sizes = [13, 9, 20]
    owner = np.repeat(np.arange(3), sizes)
    sampler = MMEBBatchSampler(sizes, batch_size=6, seed=3, block_size=2, total_steps=6)
    batches = list(sampler)
    assert sampler.steps_per_epoch == (6 + 4 + 10) // 3
    for batch in batches:
        blocks = [batch[i : i + 2] for i in range(0, 6, 2)]
        assert all(len(set(owner[block])) == 1 for block in blocks)
    assert any(len(set(owner[b])) > 1 for b in batches)
    epoch = [i for b in batches for i in b]
    assert len(set(epoch)) == len(epoch)
    assert batches == list(MMEBBatchSampler(sizes, batch_size=6, seed=3, block_size=2, total_steps=6))
    ranks = [list(MMEBBatchSampler(sizes, 3, seed=3, block_size=3, world_size=2, rank=r)) for r in (0, 1)]
    for b0, b1 in zip(*ranks, strict=True):
        assert len(set(owner[b0])) == 1 and len(set(owner[b1])) == 1 and not set(b0) & set(b1)
    with pytest.raises(MMEBDataError, match="must divide the global batch"):
        MMEBBatchSampler(sizes, batch_size=6, block_size=4)
    with pytest.raises(MMEBDataError, match="exclude each other"):
        MMEBBatchSampler(sizes, batch_size=6, block_size=2, mixed=True)


def test_dangling_image_tokens_of_text_only_inputs_are_removed(tmp_path):
    """List cells too (several positives): only the entries without an image lose the placeholder."""
    import pandas as pd

    root = write_tiny_mmeb_train(tmp_path / "d", rows_per_subset=2)
    table = pd.DataFrame(
        [
            dict(
                qry="<|image_1|> which picture shows a red car ?\n",
                qry_image_path="",
                pos_text=["<|image_1|> represent the image", "<|image_1|> a red car"],
                pos_image_path=["images/red_0.png", ""],
                neg_text="",
                neg_image_path="",
            ),
            dict(
                qry="<|image_1|> represent the given image",
                qry_image_path="images/green_1.png",
                pos_text="green photo",
                pos_image_path="",
                neg_text="",
                neg_image_path="",
            ),
        ]
    )
    (root / "WebQA").mkdir()
    table.to_json(root / "WebQA" / "original.jsonl", orient="records", lines=True)  # lists beside scalars
    data = MMEBTrainData(root, root, ["WebQA"], cap=None)
    assert data.dangling_image_tokens == {"WebQA": 2}
    first = data[0]
    assert first.query.text == "which picture shows a red car ?\n" and first.query.image is None
    assert [p.text for p in first.positives] == ["<|image_1|> represent the image", "a red car"]
    assert data[1].query.text.startswith("<|image_1|>") and data[1].query.image is not None
