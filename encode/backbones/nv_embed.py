"""NV-Embed-v2 (custom code): its own ``encode`` (latent-attention pooling over the tokens after the
instruction), called with the instruction formatted as ``Instruct: ...\\nQuery: `` and ``max_length``.
Loading needs ``trust_remote_code=True``. Features are returned raw (the model card normalises afterwards)."""

from __future__ import annotations

from torch import Tensor, nn
from transformers import AutoModel

from core.precision import weights_dtype
from encode.backbones.base import TextBackbone
from encode.backbones.decoder_text import QUERY_INSTRUCTION
from encode.backbones.errors import remote_code_error
from encode.backbones.kinds import CHECKPOINT, TEXT_BACKBONES, BackboneRequest

POOLINGS = ("latent_attention",)
MODEL_TYPE = "nvembed"


class NVEmbedEmbedder(nn.Module):
    def __init__(self, model: nn.Module, instruction: str, max_length: int) -> None:
        super().__init__()
        self.model = model
        self.instruction = instruction
        self.max_length = max_length

    def forward(self, texts: list[str]) -> Tensor:
        return self.model.encode(texts, instruction=self.instruction, max_length=self.max_length)


def is_nv_embed(request: BackboneRequest) -> bool:
    return request.checkpoint is not None and request.checkpoint.model_type == MODEL_TYPE


@TEXT_BACKBONES.register(
    "nv_embed",
    description="NV-Embed-v2 (model_type nvembed, needs --trust-remote-code)",
    poolings=POOLINGS,
    matches=is_nv_embed,
    priority=CHECKPOINT,
)
def load_nv_embed(request: BackboneRequest) -> TextBackbone:
    checkpoint = request.require_checkpoint()
    if not request.trust_remote_code:
        raise remote_code_error(checkpoint.name)
    device, instruction = request.device, request.instruction
    model = AutoModel.from_pretrained(
        checkpoint.location, trust_remote_code=True, dtype=weights_dtype(device, request.precision)
    ).to(device)
    max_length = request.max_length or 32768
    prefix = QUERY_INSTRUCTION.format(instruction=instruction) if instruction else ""
    return TextBackbone(
        name=checkpoint.name,
        revision=checkpoint.revision,
        pooling="latent_attention",
        module=NVEmbedEmbedder(model, prefix, max_length),
        instruction=instruction,
        max_length=max_length,
        device=device,
        precision=request.precision,
        normalized=False,
    )
