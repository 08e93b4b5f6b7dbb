"""Fine-tuning five VLM families (Qwen2-VL, Qwen2.5-VL, LLaVA-Next, Idefics3, SmolVLM), tiny and random: LoRA,
DoRA or full GradCache steps lower the loss; save, load, merge LoRA and embed the same; LoRA wraps the decoder
projections."""

from __future__ import annotations

import itertools

import pytest
import torch
from peft.tuners.lora import LoraLayer
from torch import nn
from vlm2vec_helpers import (
    TINY_VLMS,
    color_image,
    single_thread,  # noqa: F401 (autouse fixture)
)

from core.losses import info_nce_loss
from core.protocol import EmbedInput
from vlm2vec.data import ContrastiveCollator, MMEBExample
from vlm2vec.gradcache import grad_cache_step
from vlm2vec.model import LoraSettings, VLM2VecModel

COLORS = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255)}


@pytest.fixture(scope="module")
def base_dirs(tmp_path_factory):
    return {name: save(tmp_path_factory.mktemp(name) / "base") for name, save in TINY_VLMS.items()}


def _rows() -> list[EmbedInput]:
    return [
        EmbedInput(text="a cat photo", image=color_image((255, 0, 0)), instruction="find the caption"),
        EmbedInput(text="the dog"),
        EmbedInput(text="<|image_1|> what color is this ?", image=color_image((0, 255, 0), seed=2)),
    ]


def _color_examples() -> list[MMEBExample]:
    examples = []
    for seed, (name, rgb) in enumerate(list(COLORS.items()) * 2):
        query = EmbedInput(text="<|image_1|> what color is this ?", image=color_image(rgb, seed=seed))
        examples.append(MMEBExample(query, [EmbedInput(text=f"the {name} picture")], []))
    return examples


def _batch_loss(model, collate, examples, train: bool) -> float:
    batch = collate(examples)
    if not train:
        with torch.no_grad():
            q = torch.cat([model(c) for c in batch.query_chunks])
            t = torch.cat([model(c) for c in batch.target_chunks])
            return info_nce_loss(q, t, batch.positive_mask, temperature=0.02).loss.item()
    out = grad_cache_step(
        model,
        batch.query_chunks,
        batch.target_chunks,
        lambda q, t: info_nce_loss(q, t, batch.positive_mask, temperature=0.02),
    )
    return out.loss.item()


@pytest.mark.parametrize("family", sorted(TINY_VLMS))
def test_lora_wraps_exactly_the_decoder_projections(base_dirs, family):
    """The family's default LoRA targets are every linear layer of the text decoder, nothing in the vision tower,
    projector or LM head (a regex that matches nothing would leave LoRA training no weights)."""
    model = VLM2VecModel.from_backbone(str(base_dirs[family]))
    decoder = model.backbone.get_decoder()
    decoder_linears = {id(module) for module in decoder.modules() if isinstance(module, nn.Linear)}
    text_config = model.backbone.config.get_text_config()
    assert len(decoder_linears) == 7 * text_config.num_hidden_layers  # q, k, v, o, gate, up, down
    model.add_lora(LoraSettings(r=2, alpha=4, dropout=0.0))
    wrapped = {id(module.base_layer) for module in model.backbone.modules() if isinstance(module, LoraLayer)}
    assert wrapped == decoder_linears


@pytest.mark.parametrize(
    ("family", "mode"), list(itertools.product(sorted(TINY_VLMS), ["lora", "dora", "full"]))
)
def test_train_save_load_embed(base_dirs, tmp_path, family, mode):
    torch.manual_seed(0)
    model = VLM2VecModel.from_backbone(str(base_dirs[family]))
    if mode != "full":
        model.add_lora(LoraSettings(r=8, alpha=16, dropout=0.0, dora=mode == "dora"))
    model.gradient_checkpointing_enable()
    trainable = [p for p in model.parameters() if p.requires_grad]
    frozen = sum(not p.requires_grad for p in model.parameters())
    assert (frozen > 0) == (mode != "full")
    optimizer = torch.optim.AdamW(trainable, lr=3e-3 if mode != "full" else 1e-3)
    collate = ContrastiveCollator(model.prepare, query_chunk_size=2, target_chunk_size=4)
    examples = _color_examples()
    model.train()
    before = _batch_loss(model, collate, examples, train=False)
    for _ in range(6):
        optimizer.zero_grad(set_to_none=True)
        _batch_loss(model, collate, examples, train=True)
        optimizer.step()
    after = _batch_loss(model, collate, examples, train=False)
    assert after < before - 0.05, (before, after)

    rows = _rows()
    expected = model.encode(rows)
    model.save_pretrained(tmp_path / "saved")
    loaded = VLM2VecModel.from_pretrained(tmp_path / "saved")
    assert loaded.config.family == model.config.family and loaded.config.lora == model.config.lora
    torch.testing.assert_close(loaded.encode(rows), expected, atol=1e-5, rtol=1e-4)
    if mode != "full":
        assert (tmp_path / "saved" / "adapter_model.safetensors").is_file()
        model.save_pretrained(tmp_path / "merged", merge_lora=True)
        merged = VLM2VecModel.from_pretrained(tmp_path / "merged")
        assert merged.config.merged and not hasattr(merged.backbone, "peft_config")
        torch.testing.assert_close(merged.encode(rows), expected, atol=1e-4, rtol=1e-3)
