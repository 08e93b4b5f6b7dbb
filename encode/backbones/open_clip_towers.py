"""open_clip image and text towers: ``open_clip:ARCH/PRETRAINED`` or ``open_clip:hf-hub:ORG/NAME``.

Features are the tower's own projected embedding (``encode_image`` / ``encode_text`` without normalisation),
recorded as pooling ``proj``.
"""

from __future__ import annotations

import open_clip
import torch
from torch import Tensor, nn

from encode.backbones.base import ImageBackbone, RGBTransform, TextBackbone
from encode.backbones.errors import UnknownModelError

PREFIX = "open_clip:"
POOLINGS = ("proj",)


def parse_open_clip_name(name: str) -> tuple[str, str | None]:
    """``open_clip:ViT-B-32/laion2b_s34b_b79k`` -> (arch, pretrained); ``open_clip:hf-hub:org/x`` -> (id, None)."""
    spec = name.removeprefix(PREFIX)
    if spec.startswith("hf-hub:"):
        return spec, None
    arch, _, pretrained = spec.partition("/")
    if not arch or not pretrained:
        raise UnknownModelError(
            f"{name!r}: write open_clip models as open_clip:ARCH/PRETRAINED (e.g. open_clip:ViT-B-32/openai) "
            "or open_clip:hf-hub:ORG/NAME"
        )
    if arch not in open_clip.list_models():
        raise UnknownModelError(
            f"{name!r}: {arch!r} is not an open_clip architecture (see open_clip.list_models())"
        )
    return arch, pretrained


def _create(name: str, device: torch.device) -> tuple[nn.Module, object, str]:
    arch, pretrained = parse_open_clip_name(name)
    model, _, preprocess = open_clip.create_model_and_transforms(arch, pretrained=pretrained, device=device)
    return model, preprocess, f"open_clip=={open_clip.__version__}:{arch}/{pretrained or ''}"


class OpenCLIPTextEmbedder(nn.Module):
    def __init__(self, model: nn.Module, tokenizer: object, prefix: str) -> None:
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.prefix = prefix

    def forward(self, texts: list[str]) -> Tensor:
        device = next(self.model.parameters()).device
        tokens = self.tokenizer([self.prefix + t for t in texts]).to(device)
        return self.model.encode_text(tokens, normalize=False)


def load_open_clip_image(
    name: str, pooling: str | None, device: torch.device, precision: str
) -> ImageBackbone:
    model, preprocess, revision = _create(name, device)
    return ImageBackbone(
        name=name,
        revision=revision,
        pooling=pooling or "proj",
        module=model.visual,
        transform=RGBTransform(preprocess),
        device=device,
        precision=precision,
        normalized=False,
    )


def load_open_clip_text(
    name: str, pooling: str | None, instruction: str | None, device: torch.device, precision: str
) -> TextBackbone:
    model, _, revision = _create(name, device)
    model.visual = None
    tokenizer = open_clip.get_tokenizer(parse_open_clip_name(name)[0])
    return TextBackbone(
        name=name,
        revision=revision,
        pooling=pooling or "proj",
        module=OpenCLIPTextEmbedder(model, tokenizer, instruction or ""),
        instruction=instruction,
        max_length=getattr(tokenizer, "context_length", None),
        device=device,
        precision=precision,
        normalized=False,
    )
