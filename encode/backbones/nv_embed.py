"""NV-Embed-v2 (custom code): its own ``encode`` (latent-attention pooling over the tokens after the
instruction), called with the instruction formatted as ``Instruct: ...\\nQuery: `` and ``max_length``.
Loading needs ``trust_remote_code=True``. Features are returned raw (the model card normalises afterwards)."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from transformers import AutoModel

from encode.backbones.base import TextBackbone, weights_dtype
from encode.backbones.decoder_text import QUERY_INSTRUCTION
from encode.backbones.errors import remote_code_error
from encode.backbones.sources import Checkpoint

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


def load_nv_embed(
    checkpoint: Checkpoint,
    *,
    instruction: str | None,
    max_length: int | None,
    device: torch.device,
    precision: str,
    trust_remote_code: bool,
) -> TextBackbone:
    if not trust_remote_code:
        raise remote_code_error(checkpoint.name)
    model = AutoModel.from_pretrained(
        checkpoint.location, trust_remote_code=True, dtype=weights_dtype(device, precision)
    ).to(device)
    max_length = max_length or 32768
    prefix = QUERY_INSTRUCTION.format(instruction=instruction) if instruction else ""
    return TextBackbone(
        name=checkpoint.name,
        revision=checkpoint.revision,
        pooling="latent_attention",
        module=NVEmbedEmbedder(model, prefix, max_length),
        instruction=instruction,
        max_length=max_length,
        device=device,
        precision=precision,
        normalized=False,
    )
