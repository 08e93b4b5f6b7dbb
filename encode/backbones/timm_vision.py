"""timm image models (``timm:NAME``, timm registry names, timm hub repos and folders) with timm's own data
config."""

from __future__ import annotations

from pathlib import Path

import timm
import torch
from huggingface_hub import try_to_load_from_cache
from timm.data import create_transform, resolve_data_config
from torch import Tensor, nn
from transformers.utils.hub import extract_commit_hash

from encode.backbones.base import ImageBackbone, RGBTransform
from encode.backbones.kinds import IMAGE_BACKBONES, PREFIXED, BackboneRequest, unknown_model
from encode.backbones.pooling import TOKEN_POOLINGS, global_average_pool, pool_tokens
from encode.backbones.sources import Checkpoint, local_folder

PREFIX = "timm:"
POOLINGS = (*TOKEN_POOLINGS, "gap")


class TimmPooler(nn.Module):
    """Pools ``forward_features``: token models (final norm applied by timm) by cls/mean/concat, CNNs by GAP."""

    def __init__(self, model: nn.Module, pooling: str) -> None:
        super().__init__()
        self.model = model
        self.pooling = pooling
        self.channels_last = getattr(model, "output_fmt", "NCHW") == "NHWC"

    def forward(self, pixel_values: Tensor) -> Tensor:
        features = self.model.forward_features(pixel_values)
        if features.ndim == 4:
            if self.pooling != "gap":
                raise ValueError(
                    f"this timm model outputs a feature map: use --pooling gap, not {self.pooling!r}"
                )
            return global_average_pool(features, channels_last=self.channels_last)
        if self.pooling == "gap":
            raise ValueError(
                "pooling 'gap' is for CNN feature maps; this model outputs tokens: use cls, mean or concat"
            )
        return pool_tokens(features, self.pooling, getattr(self.model, "num_prefix_tokens", 1))


def default_pooling(model: nn.Module) -> str:
    if not hasattr(model, "num_prefix_tokens"):
        return "gap"
    return "cls" if getattr(model, "cls_token", None) is not None else "mean"


def timm_transform(model: nn.Module) -> RGBTransform:
    return RGBTransform(create_transform(**resolve_data_config({}, model=model), is_training=False))


def timm_backbone(
    model: nn.Module,
    *,
    name: str,
    revision: str,
    pooling: str | None,
    device: torch.device,
    precision: str,
) -> ImageBackbone:
    pooling = pooling or default_pooling(model)
    return ImageBackbone(
        name=name,
        revision=revision,
        pooling=pooling,
        module=TimmPooler(model.to(device), pooling),
        transform=timm_transform(model),
        device=device,
        precision=precision,
        normalized=False,
    )


def is_timm_checkpoint(checkpoint: Checkpoint) -> bool:
    """timm hub repos and folders carry a pretrained config (``architecture``) instead of a ``model_type``."""
    return "architecture" in checkpoint.config and "model_type" not in checkpoint.config


def is_timm(request: BackboneRequest) -> bool:
    """``timm:`` names, timm-format checkpoints, and timm registry names that are not checkpoint names."""
    if request.name.startswith(PREFIX):
        return True
    if request.checkpoint is not None:
        return is_timm_checkpoint(request.checkpoint)
    return timm.is_model(request.name)


def _timm_location(request: BackboneRequest) -> str:
    """What ``timm.create_model`` loads: a registry name, ``hf-hub:ID`` or ``local-dir:PATH``."""
    if request.name.startswith(PREFIX):
        model_name = request.name.removeprefix(PREFIX)
        folder = local_folder(model_name)
        if folder is not None:
            return f"local-dir:{folder}"
        if not timm.is_model(model_name):
            raise unknown_model(request)
        return model_name
    checkpoint = request.checkpoint
    if checkpoint is not None:
        return f"local-dir:{checkpoint.location}" if checkpoint.is_local else f"hf-hub:{request.name}"
    return request.name


@IMAGE_BACKBONES.register(
    "timm",
    description="timm:NAME, a timm model name, or a timm hub repo or folder",
    poolings=POOLINGS,
    matches=is_timm,  # registry names only when no checkpoint has that name, so they come last
    priority=PREFIXED + 1,
)
def load_timm_backbone(request: BackboneRequest) -> ImageBackbone:
    return load_timm(
        _timm_location(request),
        name=request.name,
        pooling=request.pooling,
        device=request.device,
        precision=request.precision,
    )


def load_timm(
    model_name: str, *, name: str, pooling: str | None, device: torch.device, precision: str
) -> ImageBackbone:
    """``model_name``: a timm registry name (pretrained weights from the hub), ``hf-hub:ID`` or ``local-dir:PATH``."""
    model = timm.create_model(model_name, pretrained=True)
    return timm_backbone(
        model,
        name=name,
        revision=_revision(model, model_name),
        pooling=pooling,
        device=device,
        precision=precision,
    )


def _revision(model: nn.Module, model_name: str) -> str:
    """Commit hash of the hub weights when cached, the absolute folder for ``local-dir:``, else the timm tag."""
    if model_name.startswith("local-dir:"):
        return str(Path(model_name.removeprefix("local-dir:")).expanduser().resolve())
    cfg = getattr(model, "pretrained_cfg", {}) or {}
    hub_id = cfg.get("hf_hub_id")
    if hub_id:
        for filename in ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin"):
            cached = try_to_load_from_cache(hub_id, filename)
            if isinstance(cached, str):
                return extract_commit_hash(cached, None) or hub_id
        return hub_id
    return f"timm=={timm.__version__}:{model_name}"
