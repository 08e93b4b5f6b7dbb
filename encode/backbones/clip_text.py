"""CLIP-style text towers from Hugging Face checkpoints (CLIP, SigLIP, SigLIP 2): the tower's own projected
text embedding (CLIP ``text_embeds``, SigLIP ``pooler_output``), recorded as pooling ``proj``."""

from __future__ import annotations

from torch import Tensor, nn
from transformers import (
    AutoTokenizer,
    CLIPTextModelWithProjection,
    Siglip2TextModel,
    SiglipTextModel,
)

from encode.backbones.base import TextBackbone
from encode.backbones.kinds import CHECKPOINT, TEXT_BACKBONES, BackboneRequest
from encode.backbones.sources import from_pretrained_sdpa

POOLINGS = ("proj",)
TEXT_TOWERS = {
    "clip": CLIPTextModelWithProjection,
    "clip_text_model": CLIPTextModelWithProjection,
    "siglip": SiglipTextModel,
    "siglip_text_model": SiglipTextModel,
    "siglip2": Siglip2TextModel,
    "siglip2_text_model": Siglip2TextModel,
}
# SigLIP was trained on text padded to the full context; CLIP pools at the EOS token so padding is irrelevant.
PAD_TO_MAX_LENGTH = {"siglip", "siglip_text_model", "siglip2", "siglip2_text_model"}


class CLIPTextEmbedder(nn.Module):
    def __init__(
        self, model: nn.Module, tokenizer: object, prefix: str, max_length: int, padding: str
    ) -> None:
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.prefix = prefix
        self.max_length = max_length
        self.padding = padding

    def forward(self, texts: list[str]) -> Tensor:
        batch = self.tokenizer(
            [self.prefix + t for t in texts],
            padding=self.padding,
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
        )
        device = next(self.model.parameters()).device
        batch = {k: v.to(device) for k, v in batch.items() if k in ("input_ids", "attention_mask")}
        out = self.model(**batch)
        return out.text_embeds if hasattr(out, "text_embeds") else out.pooler_output


def is_clip_text(request: BackboneRequest) -> bool:
    return request.checkpoint is not None and request.checkpoint.model_type in TEXT_TOWERS


@TEXT_BACKBONES.register(
    "clip_text",
    description="CLIP/SigLIP text tower (Hugging Face checkpoint)",
    poolings=POOLINGS,
    matches=is_clip_text,
    priority=CHECKPOINT + 1,
)
def load_clip_text(request: BackboneRequest) -> TextBackbone:
    checkpoint = request.require_checkpoint()
    checkpoint.check_remote_code(request.trust_remote_code)
    instruction, max_length = request.instruction, request.max_length
    tower = TEXT_TOWERS[checkpoint.model_type]
    tokenizer = AutoTokenizer.from_pretrained(checkpoint.location)
    model = from_pretrained_sdpa(tower, checkpoint.location).to(request.device)
    limit = model.config.max_position_embeddings
    if max_length is not None and max_length > limit:
        raise ValueError(f"{checkpoint.name} reads at most {limit} tokens; got max_length={max_length}")
    max_length = max_length or limit
    padding = "max_length" if checkpoint.model_type in PAD_TO_MAX_LENGTH else "longest"
    return TextBackbone(
        name=checkpoint.name,
        revision=checkpoint.revision,
        pooling="proj",
        module=CLIPTextEmbedder(model, tokenizer, instruction or "", max_length, padding),
        instruction=instruction,
        max_length=max_length,
        device=request.device,
        precision=request.precision,
        normalized=False,
    )
