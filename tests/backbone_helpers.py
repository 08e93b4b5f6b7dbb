"""Tiny random checkpoints built from real transformers configs, saved with ``save_pretrained`` so tests load
them through the same ``from_pretrained`` path as hub models."""

from __future__ import annotations

import json
import string
from pathlib import Path

import torch
from transformers import (
    BitImageProcessor,
    CLIPConfig,
    CLIPImageProcessor,
    CLIPModel,
    Dinov2Config,
    Dinov2Model,
    Dinov2WithRegistersConfig,
    Dinov2WithRegistersModel,
    Qwen2Config,
    Qwen2Model,
    Qwen2Tokenizer,
)

TINY = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 64}


def save_tiny_dinov2(folder: Path, registers: int = 0) -> Path:
    """A random DINOv2 (or DINOv2 with registers) on 28-px images with 7-px patches (16 patches)."""
    torch.manual_seed(0)
    vit = {**TINY, "image_size": 28, "patch_size": 7}
    if registers:
        model = Dinov2WithRegistersModel(Dinov2WithRegistersConfig(**vit, num_register_tokens=registers))
    else:
        model = Dinov2Model(Dinov2Config(**vit))
    model.save_pretrained(folder)
    BitImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 28, "width": 28}).save_pretrained(folder)
    return folder


def save_tiny_clip(folder: Path) -> Path:
    """A random full CLIP checkpoint (both towers), 32-px images with 8-px patches."""
    torch.manual_seed(0)
    config = CLIPConfig(
        text_config={**TINY, "vocab_size": 64, "bos_token_id": 0, "eos_token_id": 1, "pad_token_id": 1},
        vision_config={**TINY, "image_size": 32, "patch_size": 8},
        projection_dim=16,
    )
    CLIPModel(config).save_pretrained(folder)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder


def char_tokenizer() -> Qwen2Tokenizer:
    """A Qwen2 (byte-level BPE) tokenizer with single characters as vocabulary and no merges."""
    symbols = ["<|endoftext|>", "<unk>", *string.ascii_lowercase, "\u0120"]  # \u0120 (Ġ) is the byte-level space
    return Qwen2Tokenizer(vocab={s: i for i, s in enumerate(symbols)}, merges=[], unk_token="<unk>")


def save_tiny_qwen2(folder: Path) -> Path:
    """A random Qwen2 decoder with a character-level Qwen2 tokenizer (pad = eos = ``<|endoftext|>``)."""
    torch.manual_seed(0)
    tokenizer = char_tokenizer()
    config = Qwen2Config(**TINY, num_key_value_heads=2, vocab_size=len(tokenizer), max_position_embeddings=128)
    Qwen2Model(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def save_remote_code_folder(folder: Path) -> Path:
    """A checkpoint folder whose config points at custom modelling code (never executed by the tests)."""
    folder.mkdir(parents=True, exist_ok=True)
    config = {
        "model_type": "my_custom_embedder",
        "auto_map": {"AutoConfig": "configuration_custom.CustomConfig", "AutoModel": "modeling_custom.CustomModel"},
    }
    (folder / "config.json").write_text(json.dumps(config))
    return folder
