"""Tiny random checkpoints built from real transformers configs, saved with ``save_pretrained`` so tests load
them through the same ``from_pretrained`` path as hub models."""

from __future__ import annotations

import json
import string
from collections.abc import Callable
from pathlib import Path

import open_clip
import timm
import torch
from safetensors.torch import save_file
from timm.models._hub import save_for_hf
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
    BitImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 28, "width": 28}).save_pretrained(
        folder
    )
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
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(
        folder
    )
    return folder


def char_tokenizer() -> Qwen2Tokenizer:
    """A Qwen2 (byte-level BPE) tokenizer with single characters as vocabulary and no merges."""
    symbols = [
        "<|endoftext|>",
        "<unk>",
        *string.ascii_lowercase,
        "\u0120",
    ]  # \u0120 (Ġ) is the byte-level space
    return Qwen2Tokenizer(vocab={s: i for i, s in enumerate(symbols)}, merges=[], unk_token="<unk>")


def save_tiny_qwen2(folder: Path) -> Path:
    """A random Qwen2 decoder with a character-level Qwen2 tokenizer (pad = eos = ``<|endoftext|>``)."""
    torch.manual_seed(0)
    tokenizer = char_tokenizer()
    config = Qwen2Config(
        **TINY, num_key_value_heads=2, vocab_size=len(tokenizer), max_position_embeddings=128
    )
    Qwen2Model(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def save_remote_code_folder(folder: Path) -> Path:
    """A checkpoint folder whose config points at custom modelling code (never executed by the tests)."""
    folder.mkdir(parents=True, exist_ok=True)
    config = {
        "model_type": "my_custom_embedder",
        "auto_map": {
            "AutoConfig": "configuration_custom.CustomConfig",
            "AutoModel": "modeling_custom.CustomModel",
        },
    }
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def save_tiny_timm_vit(folder: Path, registers: int = 2) -> Path:
    """A random timm ViT (CLS + register tokens, 32-px images, 16-px patches) in timm's hub folder format."""
    torch.manual_seed(0)
    args = {"img_size": 32, "depth": 2, "num_classes": 0, "reg_tokens": registers}
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, **args)
    save_for_hf(model, str(folder), model_args=args, safe_serialization=True)
    return folder


def put_in_hub_cache(cache: Path, repo_id: str, commit: str, build: Callable[[Path], Path]) -> None:
    """Lay out a checkpoint as the hub cache stores a download (``snapshots/<commit>``, ``refs/main``)."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    build(repo / "snapshots" / commit)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)


FAKE_NV_EMBED_CONFIG = """
from transformers import PretrainedConfig


class FakeNVEmbedConfig(PretrainedConfig):
    model_type = "nvembed"

    def __init__(self, dim=4, **kwargs):
        self.dim = dim
        super().__init__(**kwargs)
"""

FAKE_NV_EMBED_MODEL = '''
import torch
from transformers import PreTrainedModel

from .configuration_fake_nvembed import FakeNVEmbedConfig


class FakeNVEmbedModel(PreTrainedModel):
    """Stands in for NV-Embed-v2's custom code: an ``encode`` that reports what it was called with."""

    config_class = FakeNVEmbedConfig

    def __init__(self, config):
        super().__init__(config)
        self.scale = torch.nn.Parameter(torch.ones(config.dim))
        self.post_init()

    def encode(self, prompts, instruction="", max_length=4096, **kwargs):
        rows = [[len(instruction), max_length, len(p), sum(map(ord, instruction + p)) % 997] for p in prompts]
        return torch.tensor(rows, dtype=torch.float32, device=self.scale.device) * self.scale
'''


def save_fake_nv_embed(folder: Path) -> Path:
    """A folder shaped like NV-Embed-v2 (model_type ``nvembed`` + custom code via ``auto_map``)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "configuration_fake_nvembed.py").write_text(FAKE_NV_EMBED_CONFIG)
    (folder / "modeling_fake_nvembed.py").write_text(FAKE_NV_EMBED_MODEL)
    config = {
        "model_type": "nvembed",
        "dim": 4,
        "architectures": ["FakeNVEmbedModel"],
        "auto_map": {
            "AutoConfig": "configuration_fake_nvembed.FakeNVEmbedConfig",
            "AutoModel": "modeling_fake_nvembed.FakeNVEmbedModel",
        },
    }
    (folder / "config.json").write_text(json.dumps(config))
    save_file({"scale": torch.full((4,), 2.0)}, str(folder / "model.safetensors"))
    return folder


def save_tiny_open_clip(folder: Path) -> tuple[str, Path]:
    """Register a tiny open_clip architecture and save random weights for it; returns (arch, weights file)."""
    folder.mkdir(parents=True, exist_ok=True)
    arch = "tiny-test-clip"
    config = {
        "embed_dim": 16,
        "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 16, "head_width": 16},
        "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
    }
    (folder / f"{arch}.json").write_text(json.dumps(config))
    open_clip.add_model_config(folder)
    torch.manual_seed(0)
    model = open_clip.create_model(arch)
    save_file(model.state_dict(), str(folder / "weights.safetensors"))
    return arch, folder / "weights.safetensors"
