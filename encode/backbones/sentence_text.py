"""sentence-transformers models (GTE, mpnet, MiniLM, plain HF encoders) through the model's own pipeline.

Features are exactly what the model's pipeline outputs (``SentenceTransformer.encode``): its Transformer, its
Pooling module (replaced when a pooling is asked for) and any Dense layers. ``normalized`` in the store meta is
True only when that pipeline itself ends in a ``Normalize`` module (e.g. all-MiniLM-L6-v2); nothing else adds
normalisation.
"""

from __future__ import annotations

import typing

import torch
from sentence_transformers import SentenceTransformer
from sentence_transformers.sentence_transformer.modules import Normalize, Pooling
from sentence_transformers.sentence_transformer.modules.pooling import PoolingMode
from torch import Tensor, nn

from encode.backbones.base import TextBackbone
from encode.backbones.kinds import CHECKPOINT, TEXT_BACKBONES, BackboneRequest, has_checkpoint

POOLINGS = (*typing.get_args(PoolingMode), "last_token")


class SentenceTransformerEmbedder(nn.Module):
    def __init__(self, model: SentenceTransformer, prompt: str | None) -> None:
        super().__init__()
        self.model = model
        self.prompt = prompt

    def forward(self, texts: list[str]) -> Tensor:
        return self.model.encode(
            texts, prompt=self.prompt, batch_size=len(texts), convert_to_tensor=True, show_progress_bar=False
        )


def _load(location: str, device: torch.device, trust_remote_code: bool) -> SentenceTransformer:
    kwargs = {"device": str(device), "trust_remote_code": trust_remote_code}
    try:
        return SentenceTransformer(location, model_kwargs={"attn_implementation": "sdpa"}, **kwargs)
    except (ValueError, ImportError) as err:
        if "sdpa" not in str(err).lower() and "attn_implementation" not in str(err):
            raise
        return SentenceTransformer(location, **kwargs)


def _set_pooling(model: SentenceTransformer, pooling: str) -> str:
    """Replace the pipeline's Pooling module's mode; returns the mode in use."""
    index = next((i for i, module in enumerate(model) if isinstance(module, Pooling)), None)
    if index is None:
        raise ValueError("this sentence-transformers pipeline has no Pooling module to override")
    current: Pooling = model[index]
    mode = "lasttoken" if pooling == "last_token" else pooling
    if mode not in typing.get_args(PoolingMode):
        raise ValueError(f"sentence-transformers pooling must be one of {POOLINGS}, got {pooling!r}")
    model[index] = Pooling(current.get_embedding_dimension(), pooling_mode=mode)
    return mode


def _pooling_name(model: SentenceTransformer) -> str:
    pool = next((m for m in model if isinstance(m, Pooling)), None)
    if pool is None:
        return "model"
    mode = pool.get_config_dict()["pooling_mode"]
    return mode if isinstance(mode, str) else "+".join(mode)


def load_sentence_transformer(
    location: str, revision: str, request: BackboneRequest, *, trust_remote_code: bool
) -> TextBackbone:
    """The sentence-transformers folder or hub id ``location`` as the backbone ``request`` asks for."""
    model = _load(location, request.device, trust_remote_code)
    if request.pooling is not None:
        _set_pooling(model, request.pooling)
    if request.max_length is not None:
        model.max_seq_length = request.max_length
    prompt = request.instruction or None
    return TextBackbone(
        name=request.name,
        revision=revision,
        pooling=_pooling_name(model),
        module=SentenceTransformerEmbedder(model, prompt),
        instruction=request.instruction,
        max_length=model.max_seq_length,
        device=request.device,
        precision=request.precision,
        normalized=any(isinstance(m, Normalize) for m in model),
    )


@TEXT_BACKBONES.register(
    "sentence_transformers",
    description="sentence-transformers pipeline: hub id or local folder (modules.json), or any plain "
    "encoder checkpoint; by default the pipeline's own pooling",
    poolings=POOLINGS,
    matches=has_checkpoint,  # any checkpoint the kinds before it leave
    priority=CHECKPOINT + 9,
)
def load_sentence_checkpoint(request: BackboneRequest) -> TextBackbone:
    checkpoint = request.require_checkpoint()
    checkpoint.check_remote_code(request.trust_remote_code)
    return load_sentence_transformer(
        checkpoint.location, checkpoint.revision, request, trust_remote_code=request.trust_remote_code
    )
