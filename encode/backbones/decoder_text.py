"""Decoder-only embedders (gte-Qwen2 and other Qwen2/Llama/Mistral-style models) with last-token pooling.

The pooled token is the last attended token of each row, found from the attention mask, so the result is the
same for left padding, right padding and unpadded input. Position ids are computed from the mask, so a
left-padded row sees the same positions as when it is run alone.
"""

from __future__ import annotations

from torch import Tensor, nn
from transformers import AutoModel, AutoTokenizer

from core.precision import weights_dtype
from encode.backbones.base import TextBackbone
from encode.backbones.kinds import CHECKPOINT, TEXT_BACKBONES, BackboneRequest
from encode.backbones.pooling import last_token_pool, masked_mean
from encode.backbones.sources import from_pretrained_sdpa

POOLINGS = ("last_token", "mean")
# The instruction format of gte-Qwen2, e5-mistral and Qwen3-Embedding (queries; documents take none).
QUERY_INSTRUCTION = "Instruct: {instruction}\nQuery: "
DECODER_MODEL_TYPES = {"qwen2", "qwen3", "llama", "mistral", "gemma", "gemma2", "gemma3_text", "phi3"}


class LastTokenEmbedder(nn.Module):
    def __init__(
        self, model: nn.Module, tokenizer: object, pooling: str, prefix: str, max_length: int
    ) -> None:
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.pooling = pooling
        self.prefix = prefix
        self.max_length = max_length

    def forward(self, texts: list[str]) -> Tensor:
        batch = self.tokenizer(
            [self.prefix + t for t in texts],
            padding=True,
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
        )
        device = next(self.model.parameters()).device
        input_ids = batch["input_ids"].to(device)
        mask = batch["attention_mask"].to(device)
        position_ids = (mask.cumsum(dim=1) - 1).clamp(min=0)
        hidden = self.model(
            input_ids=input_ids, attention_mask=mask, position_ids=position_ids
        ).last_hidden_state
        if self.pooling == "mean":
            return masked_mean(hidden, mask)
        return last_token_pool(hidden, mask)


def is_decoder(request: BackboneRequest) -> bool:
    """A decoder config; a checkpoint with its own sentence-transformers pipeline (modules.json) is left to it."""
    checkpoint = request.checkpoint
    return (
        checkpoint is not None
        and checkpoint.model_type in DECODER_MODEL_TYPES
        and not checkpoint.has_file("modules.json")
    )


@TEXT_BACKBONES.register(
    "decoder",
    description="decoder embedder (Qwen2/Llama/Mistral-style config, e.g. gte-Qwen2)",
    poolings=POOLINGS,
    matches=is_decoder,
    priority=CHECKPOINT + 2,
)
def load_decoder_embedder(request: BackboneRequest) -> TextBackbone:
    checkpoint = request.require_checkpoint()
    trust_remote_code, device, instruction = request.trust_remote_code, request.device, request.instruction
    checkpoint.check_remote_code(trust_remote_code)
    pooling = request.pooling_or_default or "last_token"
    if pooling not in POOLINGS:
        raise ValueError(f"decoder embedders pool by one of {POOLINGS}, got {pooling!r}")
    tokenizer = AutoTokenizer.from_pretrained(checkpoint.location, trust_remote_code=trust_remote_code)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = from_pretrained_sdpa(
        AutoModel,
        checkpoint.location,
        trust_remote_code=trust_remote_code,
        dtype=weights_dtype(device, request.precision),
    ).to(device)
    positions = getattr(model.config, "max_position_embeddings", None) or tokenizer.model_max_length
    max_length = request.max_length or min(tokenizer.model_max_length, positions)
    prefix = QUERY_INSTRUCTION.format(instruction=instruction) if instruction else ""
    return TextBackbone(
        name=checkpoint.name,
        revision=checkpoint.revision,
        pooling=pooling,
        module=LastTokenEmbedder(model, tokenizer, pooling, prefix, max_length),
        instruction=instruction,
        max_length=max_length,
        device=device,
        precision=request.precision,
        normalized=False,
    )
