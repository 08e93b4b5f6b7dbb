"""Frozen image and text backbones behind one registry: ``load_image_backbone`` / ``load_text_backbone``.

>>> image = load_image_backbone("efficientnet-lite0")          # offline, 1280-d, GAP pooling
>>> feats = image.encode(torch.stack([image.transform(pil) for pil in pils]))
>>> text = load_text_backbone("all-MiniLM-L6-v2")              # offline, 384-d
>>> meta = StoreMeta(**text.meta(), caption_column="raw_caption")
"""

from encode.backbones.base import PRECISIONS, ImageBackbone, TextBackbone
from encode.backbones.errors import RemoteCodeError, UnknownModelError
from encode.backbones.known import KNOWN_IMAGE_MODELS, KNOWN_TEXT_MODELS
from encode.backbones.registry import IMAGE_FAMILIES, TEXT_FAMILIES, load_image_backbone, load_text_backbone

__all__ = [
    "IMAGE_FAMILIES",
    "KNOWN_IMAGE_MODELS",
    "KNOWN_TEXT_MODELS",
    "PRECISIONS",
    "TEXT_FAMILIES",
    "ImageBackbone",
    "RemoteCodeError",
    "TextBackbone",
    "UnknownModelError",
    "load_image_backbone",
    "load_text_backbone",
]
