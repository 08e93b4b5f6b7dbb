"""Name -> backbone: ``load_image_backbone`` / ``load_text_backbone`` look the name up in the backbone registries.

Each family module registers its loaders in :mod:`encode.backbones.kinds`; importing this module imports them
all. Resolution order (cheap checks only, so a bad name fails before any weights are read): offline package
models, ``open_clip:`` / ``timm:`` prefixes, the known-model table, local folders and hub ids (family chosen
from the checkpoint's files and ``config.json``), then timm registry names.
"""

from __future__ import annotations

import torch

from core.device import resolve_device
from core.precision import autocast_dtype
from encode.backbones import (  # noqa: F401  (imported to register their kinds)
    clip_text,
    decoder_text,
    hf_vision,
    nv_embed,
    offline,
    open_clip_towers,
    sentence_text,
    timm_vision,
)
from encode.backbones.base import ImageBackbone, TextBackbone
from encode.backbones.errors import remote_code_error
from encode.backbones.kinds import (
    IMAGE_BACKBONES,
    TEXT_BACKBONES,
    BackboneRequest,
    Modality,
    family_line,
    kinds_in_order,
    known_model,
    resolve,
)

# One line per family this package registers (``name: description; pooling ...``), in resolution order.
IMAGE_FAMILIES = tuple(family_line(entry) for entry in kinds_in_order(IMAGE_BACKBONES))
TEXT_FAMILIES = tuple(family_line(entry) for entry in kinds_in_order(TEXT_BACKBONES))


def _request(
    name: str,
    modality: Modality,
    *,
    pooling: str | None,
    instruction: str | None = None,
    max_length: int | None,
    device: str | torch.device,
    precision: str,
    trust_remote_code: bool,
) -> BackboneRequest:
    """The request with its device resolved, precision and ``max_length`` checked and the known model's
    ``max_length`` filled in; a known model that needs custom code fails here without ``trust_remote_code``."""
    resolved = resolve_device(device)
    autocast_dtype(resolved, precision)
    if max_length is not None and max_length <= 0:
        raise ValueError(f"max_length must be positive, got {max_length}")
    known = known_model(name, modality)
    if known is not None and known.needs_remote_code and not trust_remote_code:
        raise remote_code_error(name)
    return BackboneRequest(
        name,
        modality,
        pooling=pooling,
        instruction=instruction,
        max_length=max_length or (known.max_length if known else None),
        device=resolved,
        precision=precision,
        trust_remote_code=trust_remote_code,
    )


def load_image_backbone(
    name: str,
    pooling: str | None = None,
    device: str | torch.device = "cpu",
    trust_remote_code: bool = False,
    *,
    precision: str = "auto",
) -> ImageBackbone:
    """Load a frozen image backbone by name (see ``IMAGE_FAMILIES``); ``pooling`` None = the model's default."""
    request = _request(
        name,
        "image",
        pooling=pooling,
        max_length=None,
        device=device,
        precision=precision,
        trust_remote_code=trust_remote_code,
    )
    return resolve(request, IMAGE_BACKBONES).value(request)


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
    request = _request(
        name,
        "text",
        pooling=pooling,
        instruction=instruction,
        max_length=max_length,
        device=device,
        precision=precision,
        trust_remote_code=trust_remote_code,
    )
    return resolve(request, TEXT_BACKBONES).value(request)
