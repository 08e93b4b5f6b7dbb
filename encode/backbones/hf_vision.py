"""Hugging Face vision checkpoints (DINOv2 with or without registers, CLIP/SigLIP vision towers, AIMv2, any
``AutoModel`` ViT or CNN) by hub id or local folder, with the checkpoint's own ``AutoImageProcessor``."""

from __future__ import annotations

from torch import Tensor, nn
from transformers import AutoConfig, AutoImageProcessor, AutoModel
from transformers.models.auto.modeling_auto import MODEL_MAPPING

from encode.backbones.base import ImageBackbone, RGBTransform
from encode.backbones.kinds import CHECKPOINT, IMAGE_BACKBONES, BackboneRequest, has_checkpoint
from encode.backbones.pooling import TOKEN_POOLINGS, global_average_pool, pool_tokens
from encode.backbones.sources import Checkpoint, from_pretrained_sdpa

POOLINGS = (*TOKEN_POOLINGS, "pooler", "gap")

# Vision towers whose ``last_hidden_state`` comes before the final norm (applied to the pooled CLS only).
UNNORMED_LAST_HIDDEN_STATE = {
    "clip_vision_model",
    "altclip_vision_model",
    "chinese_clip_vision_model",
    "clipseg_vision_model",
    "metaclip_2_vision_model",
}
# Default pooling by model type where the generic rule (CLS if the model has one, else patch mean) is not it.
DEFAULT_POOLING = {
    "dinov2": "concat",
    "dinov2_with_registers": "concat",
    "siglip_vision_model": "pooler",
    "siglip2_vision_model": "pooler",
    "aimv2": "mean",
    "aimv2_vision_model": "mean",
}


class HFImageTransform:
    """The checkpoint's ``AutoImageProcessor`` applied to one image -> [C, H, W] (picklable)."""

    def __init__(self, processor: object) -> None:
        self.processor = processor

    def __call__(self, image: object) -> Tensor:
        return self.processor(images=image, return_tensors="pt")["pixel_values"][0]

    def __repr__(self) -> str:
        return f"HFImageTransform({type(self.processor).__name__})"


class HFVisionPooler(nn.Module):
    """Runs the vision model and pools its final normed hidden states.

    Prefix tokens (CLS, registers, distillation) are counted per batch as ``tokens - (H/p)·(W/p)`` so register
    models and interpolated resolutions need no special case.
    """

    def __init__(self, model: nn.Module, pooling: str, patch_size: int | None, final_norm: nn.Module | None):
        super().__init__()
        self.model = model
        self.pooling = pooling
        self.patch_size = patch_size
        self.final_norm = final_norm

    def forward(self, pixel_values: Tensor) -> Tensor:
        out = self.model(pixel_values=pixel_values)
        if self.pooling == "pooler":
            if getattr(out, "pooler_output", None) is None:
                raise ValueError(
                    "this model has no pooling head (pooler_output); use --pooling cls, mean or concat"
                )
            return out.pooler_output.flatten(1)
        hidden = out.last_hidden_state
        if hidden.ndim == 4:
            if self.pooling != "gap":
                raise ValueError(f"this model outputs a feature map: use --pooling gap, not {self.pooling!r}")
            return global_average_pool(hidden)
        if self.pooling == "gap":
            raise ValueError(
                "pooling 'gap' is for CNN feature maps; this model outputs tokens: use cls, mean or concat"
            )
        if self.final_norm is not None:
            hidden = self.final_norm(hidden)
        if self.patch_size is None:
            raise ValueError("the config has no patch_size, so CLS and patch tokens cannot be told apart")
        num_patches = (pixel_values.shape[-2] // self.patch_size) * (
            pixel_values.shape[-1] // self.patch_size
        )
        return pool_tokens(hidden, self.pooling, hidden.shape[1] - num_patches)


def _vision_model(checkpoint: Checkpoint, trust_remote_code: bool) -> nn.Module:
    """The vision tower alone for dual-encoder checkpoints (CLIP, SigLIP, AIMv2 …), else the AutoModel."""
    config = AutoConfig.from_pretrained(checkpoint.location, trust_remote_code=trust_remote_code)
    vision_config = getattr(config, "vision_config", None)
    if vision_config is not None and type(vision_config) in MODEL_MAPPING:
        return from_pretrained_sdpa(MODEL_MAPPING[type(vision_config)], checkpoint.location)
    return from_pretrained_sdpa(AutoModel, checkpoint.location, trust_remote_code=trust_remote_code)


def _patch_size(model: nn.Module) -> int | None:
    patch = getattr(model.config, "patch_size", None)
    if isinstance(patch, (list, tuple)):
        patch = patch[0]
    return patch


@IMAGE_BACKBONES.register(
    "hf_vision",
    description="Hugging Face vision checkpoint: hub id or local folder (DINOv2 incl. registers, CLIP/SigLIP "
    "vision towers, AIMv2, any AutoModel ViT or CNN)",
    poolings=POOLINGS,
    matches=has_checkpoint,  # timm-format checkpoints are claimed by the timm kind first
    priority=CHECKPOINT,
)
def load_hf_vision(request: BackboneRequest) -> ImageBackbone:
    checkpoint = request.require_checkpoint()
    trust_remote_code = request.trust_remote_code
    checkpoint.check_remote_code(trust_remote_code)
    processor = AutoImageProcessor.from_pretrained(checkpoint.location, trust_remote_code=trust_remote_code)
    model = _vision_model(checkpoint, trust_remote_code).to(request.device)
    model_type = model.config.model_type
    final_norm = getattr(model, "post_layernorm", None) if model_type in UNNORMED_LAST_HIDDEN_STATE else None
    patch_size = _patch_size(model)
    pooling = request.pooling_or_default
    if pooling is None:
        pooling = DEFAULT_POOLING.get(checkpoint.model_type) or DEFAULT_POOLING.get(model_type)
    if pooling is None:
        pooling = "cls" if patch_size is not None else "gap"
    return ImageBackbone(
        name=checkpoint.name,
        revision=checkpoint.revision,
        pooling=pooling,
        module=HFVisionPooler(model, pooling, patch_size, final_norm),
        transform=RGBTransform(HFImageTransform(processor)),
        device=request.device,
        precision=request.precision,
        normalized=False,
    )
