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
from encode.backbones.kinds import IMAGE_BACKBONES, PREFIXED, TEXT_BACKBONES, BackboneRequest

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


def is_open_clip(request: BackboneRequest) -> bool:
    return request.name.startswith(PREFIX)


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


@IMAGE_BACKBONES.register(
    "open_clip",
    description="open_clip image tower: open_clip:ARCH/PRETRAINED or open_clip:hf-hub:ORG/NAME",
    poolings=POOLINGS,
    matches=is_open_clip,
    priority=PREFIXED,
)
def load_open_clip_image(request: BackboneRequest) -> ImageBackbone:
    model, preprocess, revision = _create(request.name, request.device)
    return ImageBackbone(
        name=request.name,
        revision=revision,
        pooling=request.pooling or "proj",
        module=model.visual,
        transform=RGBTransform(preprocess),
        device=request.device,
        precision=request.precision,
        normalized=False,
    )


@TEXT_BACKBONES.register(
    "open_clip",
    description="open_clip text tower: open_clip:ARCH/PRETRAINED or open_clip:hf-hub:ORG/NAME",
    poolings=POOLINGS,
    matches=is_open_clip,
    priority=PREFIXED,
)
def load_open_clip_text(request: BackboneRequest) -> TextBackbone:
    arch, _ = parse_open_clip_name(request.name)
    if request.max_length is not None:
        raise ValueError("open_clip text towers have a fixed context length; drop --max-length")
    model, _, revision = _create(request.name, request.device)
    model.visual = None
    tokenizer = open_clip.get_tokenizer(arch)
    return TextBackbone(
        name=request.name,
        revision=revision,
        pooling=request.pooling or "proj",
        module=OpenCLIPTextEmbedder(model, tokenizer, request.instruction or ""),
        instruction=request.instruction,
        max_length=getattr(tokenizer, "context_length", None),
        device=request.device,
        precision=request.precision,
        normalized=False,
    )
