"""Frozen image and text backbones behind two registries of backbone kinds (``IMAGE_BACKBONES``,
``TEXT_BACKBONES``): ``load_image_backbone`` / ``load_text_backbone`` resolve a name to its kind and load it.

>>> image = load_image_backbone("efficientnet-lite0")          # offline, 1280-d, GAP pooling
>>> feats = image.encode(torch.stack([image.transform(pil) for pil in pils]))
>>> text = load_text_backbone("all-MiniLM-L6-v2")              # offline, 384-d
>>> meta = StoreMeta(**text.meta(), caption_column="raw_caption")
"""

from core.precision import INFERENCE_PRECISIONS as PRECISIONS
from encode.backbones.base import ImageBackbone, TextBackbone
from encode.backbones.errors import RemoteCodeError, UnknownModelError
from encode.backbones.kinds import IMAGE_BACKBONES, TEXT_BACKBONES, BackboneKind, BackboneRequest
from encode.backbones.known import KNOWN_IMAGE_MODELS, KNOWN_TEXT_MODELS
from encode.backbones.registry import IMAGE_FAMILIES, TEXT_FAMILIES, load_image_backbone, load_text_backbone

__all__ = [
    "IMAGE_BACKBONES",
    "IMAGE_FAMILIES",
    "KNOWN_IMAGE_MODELS",
    "KNOWN_TEXT_MODELS",
    "PRECISIONS",
    "TEXT_BACKBONES",
    "TEXT_FAMILIES",
    "BackboneKind",
    "BackboneRequest",
    "ImageBackbone",
    "RemoteCodeError",
    "TextBackbone",
    "UnknownModelError",
    "load_image_backbone",
    "load_text_backbone",
]
