"""Name -> backbone: one registry, one loading path per family.

Resolution order (cheap checks only, so a bad name fails before any weights are read):
offline package models, ``timm:`` / ``open_clip:`` prefixes, the known-model table, local folders and hub ids
(family chosen from the checkpoint's files and ``config.json``), then timm registry names.
"""

from __future__ import annotations

import timm
import torch

from core.device import resolve_device
from encode.backbones import (
    clip_text,
    decoder_text,
    hf_vision,
    nv_embed,
    open_clip_towers,
    sentence_text,
    timm_vision,
)
from encode.backbones.base import ImageBackbone, TextBackbone, autocast_dtype
from encode.backbones.errors import UnknownModelError, remote_code_error
from encode.backbones.known import KNOWN_IMAGE_MODELS, KNOWN_TEXT_MODELS, KnownModel
from encode.backbones.offline import (
    OFFLINE_IMAGE_MODELS,
    OFFLINE_TEXT_MODELS,
    efficientnet_lite0,
    minilm_folder,
)
from encode.backbones.sources import Checkpoint, local_folder, open_checkpoint

IMAGE_FAMILIES = (
    "Hugging Face vision checkpoint: hub id or local folder (DINOv2 incl. registers, CLIP/SigLIP vision "
    "towers, AIMv2, any AutoModel ViT or CNN); pooling cls|mean|concat|pooler|gap",
    "timm: timm:NAME, a timm model name, or a timm hub folder; pooling cls|mean|concat|gap",
    "open_clip image tower: open_clip:ARCH/PRETRAINED or open_clip:hf-hub:ORG/NAME; pooling proj",
    f"offline: {', '.join(OFFLINE_IMAGE_MODELS)}; pooling gap",
)
TEXT_FAMILIES = (
    "sentence-transformers: hub id or local folder (modules.json), or any plain encoder checkpoint; "
    "pooling = the pipeline's own, or cls|mean|max|lasttoken|weightedmean|mean_sqrt_len_tokens",
    "decoder embedder (Qwen2/Llama/Mistral-style config, e.g. gte-Qwen2); pooling last_token|mean",
    "NV-Embed-v2 (model_type nvembed, needs --trust-remote-code); pooling latent_attention",
    "CLIP/SigLIP text tower (Hugging Face checkpoint); pooling proj",
    "open_clip text tower: open_clip:ARCH/PRETRAINED; pooling proj",
    f"offline: {', '.join(OFFLINE_TEXT_MODELS)}",
)


def _unknown(
    name: str, modality: str, families: tuple[str, ...], known: dict[str, KnownModel]
) -> UnknownModelError:
    lines = "\n".join(f"  - {f}" for f in families)
    return UnknownModelError(
        f"unknown {modality} model {name!r}. Supported families:\n{lines}\n"
        f"Known names: {', '.join(sorted(known))}"
    )


def _check_pooling(pooling: str | None, allowed: tuple[str, ...], family: str) -> None:
    if pooling is not None and pooling not in allowed:
        raise ValueError(f"pooling {pooling!r} is not available for {family} models; choose one of {allowed}")


def _check_device(device: str | torch.device, precision: str) -> torch.device:
    device = resolve_device(device)
    autocast_dtype(device, precision)
    return device


def _is_checkpoint_name(name: str) -> bool:
    return local_folder(name) is not None or name.count("/") == 1


def _is_timm_checkpoint(checkpoint: Checkpoint) -> bool:
    """timm hub repos and folders carry a pretrained config (``architecture``) instead of a ``model_type``."""
    return "architecture" in checkpoint.config and "model_type" not in checkpoint.config


def load_image_backbone(
    name: str,
    pooling: str | None = None,
    device: str | torch.device = "cpu",
    trust_remote_code: bool = False,
    *,
    precision: str = "auto",
) -> ImageBackbone:
    """Load a frozen image backbone by name (see ``IMAGE_FAMILIES``); ``pooling`` None = the model's default."""
    device = _check_device(device, precision)
    known = KNOWN_IMAGE_MODELS.get(name)
    if known is not None and known.needs_remote_code and not trust_remote_code:
        raise remote_code_error(name)
    default_pooling = pooling or (known.pooling if known else None)

    if name in OFFLINE_IMAGE_MODELS:
        _check_pooling(pooling, ("gap",), "EfficientNet-Lite0")
        model, revision = efficientnet_lite0()
        return timm_vision.timm_backbone(
            model, name=name, revision=revision, pooling="gap", device=device, precision=precision
        )
    if name.startswith("timm:"):
        _check_pooling(pooling, timm_vision.POOLINGS, "timm")
        model_name = name.removeprefix("timm:")
        if not timm.is_model(model_name) and local_folder(model_name) is None:
            raise _unknown(name, "image", IMAGE_FAMILIES, KNOWN_IMAGE_MODELS)
        if local_folder(model_name) is not None:
            model_name = f"local-dir:{local_folder(model_name)}"
        return timm_vision.load_timm(
            model_name, name=name, pooling=pooling, device=device, precision=precision
        )
    if name.startswith(open_clip_towers.PREFIX):
        _check_pooling(pooling, open_clip_towers.POOLINGS, "open_clip")
        open_clip_towers.parse_open_clip_name(name)
        return open_clip_towers.load_open_clip_image(name, pooling, device, precision)
    if _is_checkpoint_name(name):
        checkpoint = open_checkpoint(name)
        if _is_timm_checkpoint(checkpoint):
            _check_pooling(pooling, timm_vision.POOLINGS, "timm")
            location = f"local-dir:{checkpoint.location}" if checkpoint.is_local else f"hf-hub:{name}"
            return timm_vision.load_timm(
                location, name=name, pooling=pooling, device=device, precision=precision
            )
        _check_pooling(pooling, hf_vision.POOLINGS, "Hugging Face vision")
        return hf_vision.load_hf_vision(checkpoint, default_pooling, device, precision, trust_remote_code)
    if timm.is_model(name):
        _check_pooling(pooling, timm_vision.POOLINGS, "timm")
        return timm_vision.load_timm(name, name=name, pooling=pooling, device=device, precision=precision)
    raise _unknown(name, "image", IMAGE_FAMILIES, KNOWN_IMAGE_MODELS)


def _text_family(checkpoint: Checkpoint) -> str:
    if checkpoint.model_type == nv_embed.MODEL_TYPE:
        return "nv_embed"
    if checkpoint.model_type in clip_text.TEXT_TOWERS:
        return "clip_text"
    if checkpoint.has_file("modules.json"):
        return "sentence_transformers"
    if checkpoint.model_type in decoder_text.DECODER_MODEL_TYPES:
        return "decoder"
    return "sentence_transformers"


TEXT_POOLINGS = {
    "sentence_transformers": sentence_text.POOLINGS,
    "decoder": decoder_text.POOLINGS,
    "nv_embed": nv_embed.POOLINGS,
    "clip_text": clip_text.POOLINGS,
}


def load_text_backbone(
    name: str,
    pooling: str | None = None,
    instruction: str | None = None,
    max_length: int | None = None,
    device: str | torch.device = "cpu",
    trust_remote_code: bool = False,
    *,
    precision: str = "auto",
) -> TextBackbone:
    """Load a frozen text backbone by name (see ``TEXT_FAMILIES``).

    ``instruction`` is formatted the way the family documents it (``Instruct: {instruction}\\nQuery: `` for
    NV-Embed-v2 and decoder embedders such as gte-Qwen2; prepended verbatim otherwise, so include your own
    separator); ``max_length`` truncates (None = the model's default).
    """
    device = _check_device(device, precision)
    if max_length is not None and max_length <= 0:
        raise ValueError(f"max_length must be positive, got {max_length}")
    known = KNOWN_TEXT_MODELS.get(name)
    if known is not None and known.needs_remote_code and not trust_remote_code:
        raise remote_code_error(name)
    max_length = max_length or (known.max_length if known else None)

    if name in OFFLINE_TEXT_MODELS:
        _check_pooling(pooling, sentence_text.POOLINGS, "sentence-transformers")
        folder, revision = minilm_folder()
        return sentence_text.load_sentence_transformer(
            folder,
            name=name,
            revision=revision,
            pooling=pooling,
            instruction=instruction,
            max_length=max_length,
            device=device,
            precision=precision,
            trust_remote_code=False,
        )
    if name.startswith(open_clip_towers.PREFIX):
        _check_pooling(pooling, open_clip_towers.POOLINGS, "open_clip")
        open_clip_towers.parse_open_clip_name(name)
        if max_length is not None:
            raise ValueError("open_clip text towers have a fixed context length; drop --max-length")
        return open_clip_towers.load_open_clip_text(name, pooling, instruction, device, precision)
    if not _is_checkpoint_name(name):
        raise _unknown(name, "text", TEXT_FAMILIES, KNOWN_TEXT_MODELS)
    checkpoint = open_checkpoint(name)
    family = known.family if known else _text_family(checkpoint)
    _check_pooling(pooling, TEXT_POOLINGS[family], family)
    if family == "nv_embed":
        return nv_embed.load_nv_embed(
            checkpoint,
            instruction=instruction,
            max_length=max_length,
            device=device,
            precision=precision,
            trust_remote_code=trust_remote_code,
        )
    checkpoint.check_remote_code(trust_remote_code)
    if family == "clip_text":
        return clip_text.load_clip_text(
            checkpoint, instruction=instruction, max_length=max_length, device=device, precision=precision
        )
    if family == "decoder":
        return decoder_text.load_decoder_embedder(
            checkpoint,
            pooling=pooling or (known.pooling if known else None),
            instruction=instruction,
            max_length=max_length,
            device=device,
            precision=precision,
            trust_remote_code=trust_remote_code,
        )
    return sentence_text.load_sentence_transformer(
        checkpoint.location,
        name=name,
        revision=checkpoint.revision,
        pooling=pooling,
        instruction=instruction,
        max_length=max_length,
        device=device,
        precision=precision,
        trust_remote_code=trust_remote_code,
    )
