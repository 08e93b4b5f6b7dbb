"""sentence-transformers modules of an exported align model (``python -m align.export sentence-transformers``).

The export is a ``SentenceTransformer`` ``[Router, Normalize]``; the Router sends text to the ``text`` route and
PIL images to the ``image`` route:

- ``text``: a sentence-transformers text backbone's own built-in modules (Transformer, Pooling, ...), then
  :class:`AlignedHead`; any other text backbone: :class:`AlignedTextBackbone`, then :class:`AlignedHead`;
- ``image``: :class:`AlignedImageBackbone`, then :class:`AlignedHead`.

These classes live in this repository, so loading needs it importable and ``trust_remote_code=True``
(sentence-transformers imports a module class outside its own package only then). The backbone modules hold no
weights: like an align checkpoint, they name their frozen backbone (``encode.backbones``), which loads on first
use on the module's device. :class:`AlignedHead` holds one modality's head weights (``model.safetensors``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from PIL import Image
from sentence_transformers.sentence_transformer.modules import InputModule, Module
from torch import Tensor, nn

from align.heads import AlignmentHead, HeadConfig, ModalityHead
from encode.backbones import ImageBackbone, TextBackbone, load_image_backbone, load_text_backbone

MODALITIES = ("image", "text")


class AlignedHead(Module):
    """One modality's half of an align head (``LayerNorm -> mapping``; the identity for a ShareLock image head)
    applied to ``features["sentence_embedding"]``, the frozen backbone's pooled features."""

    config_keys = ["modality", "head"]

    def __init__(self, modality: str, head: dict) -> None:
        super().__init__()
        if modality not in MODALITIES:
            raise ValueError(f"modality must be one of {MODALITIES}, got {modality!r}")
        self.modality = modality
        self.head = head
        c = HeadConfig.from_dict(head)
        in_dim = c.image_dim if modality == "image" else c.text_dim
        identity = modality == "image" and c.head == "sharelock"
        self.net = (
            nn.Identity()
            if identity
            else ModalityHead(c.head, in_dim, c.target_dim, c.width_factor, c.hidden_dim)
        )
        self.target_dim = c.target_dim
        self.eval()

    @classmethod
    def from_head(cls, head: AlignmentHead, modality: str) -> AlignedHead:
        """The ``modality`` half of a trained head, its weights and dtype included."""
        module = cls(modality, head.config.to_dict())
        module.net.load_state_dict(getattr(head, modality).state_dict(), strict=True)
        return module.to(head.logit_bias.dtype)

    def forward(self, features: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        x = features["sentence_embedding"]
        dtype = next((p.dtype for p in self.net.parameters()), x.dtype)
        features["sentence_embedding"] = self.net(x.to(dtype)).float()
        return features

    def get_embedding_dimension(self) -> int:
        return self.target_dim

    def save(self, output_path: str, *args: Any, safe_serialization: bool = True, **kwargs: Any) -> None:
        self.save_config(output_path)
        self.save_torch_weights(output_path, safe_serialization=safe_serialization)

    @classmethod
    def load(cls, model_name_or_path: str, subfolder: str = "", **kwargs: Any) -> AlignedHead:
        hub = _hub_kwargs(kwargs)
        module = cls(**cls.load_config(model_name_or_path, subfolder=subfolder, **hub))
        return cls.load_torch_weights(model_name_or_path, subfolder=subfolder, model=module, **hub)


def _hub_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    names = ("token", "cache_folder", "revision", "local_files_only")
    return {name: kwargs[name] for name in names if name in kwargs}


class _BackboneModule(InputModule):
    """A frozen backbone named by its config entry; loaded lazily on the device of the ``_device`` buffer, which
    ``.to()`` moves (so ``SentenceTransformer(..., device=...)`` and ``model.to(...)`` place the backbone)."""

    save_in_root = False
    modality: str

    def __init__(self, trust_remote_code: bool = False) -> None:
        super().__init__()
        self.trust_remote_code = trust_remote_code
        self.register_buffer("_device", torch.empty(0), persistent=False)
        self._loaded: tuple[torch.device, Any] | None = None

    @property
    def modalities(self) -> list[str]:
        return [self.modality]

    @property
    def backbone(self) -> Any:
        device = self._device.device
        if self._loaded is None or self._loaded[0] != device:
            self._loaded = (device, self._load(device))
        return self._loaded[1]

    def _load(self, device: torch.device) -> ImageBackbone | TextBackbone:
        raise NotImplementedError

    def _encoded(self, features: Tensor) -> Tensor:
        return features.to(self._device.device)

    def save(self, output_path: str, *args: Any, safe_serialization: bool = True, **kwargs: Any) -> None:
        self.save_config(output_path)

    @classmethod
    def load(cls, model_name_or_path: str, subfolder: str = "", **kwargs: Any) -> _BackboneModule:
        config = cls.load_config(model_name_or_path, subfolder=subfolder, **_hub_kwargs(kwargs))
        return cls(**config, trust_remote_code=bool(kwargs.get("trust_remote_code", False)))


class AlignedImageBackbone(_BackboneModule):
    """PIL images -> the frozen image backbone's pooled features (its own eval transform), as an input module."""

    modality = "image"
    config_keys = ["model", "pooling"]

    def __init__(self, model: str, pooling: str | None = None, trust_remote_code: bool = False) -> None:
        super().__init__(trust_remote_code)
        self.model = model
        self.pooling = pooling

    def _load(self, device: torch.device) -> ImageBackbone:
        return load_image_backbone(
            self.model, pooling=self.pooling, device=device, trust_remote_code=self.trust_remote_code
        )

    def preprocess(self, inputs: Sequence[Any], prompt: str | None = None, **kwargs: Any) -> dict[str, Any]:
        bad = next((x for x in inputs if not isinstance(x, Image.Image)), None)
        if bad is not None:
            raise ValueError(f"the image route takes PIL images, got a {type(bad).__name__}")
        transform = self.backbone.transform
        return {"pixel_values": torch.stack([transform(image) for image in inputs])}

    def forward(self, features: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        features["sentence_embedding"] = self._encoded(self.backbone.encode(features["pixel_values"]))
        return features


class AlignedTextBackbone(_BackboneModule):
    """Texts -> a frozen text backbone's pooled features, for text backbones that are not a sentence-transformers
    pipeline (CLIP/SigLIP text towers, decoder embedders, NV-Embed, open_clip); the backbone tokenizes itself and
    applies its recorded instruction; a ``prompt`` given to ``encode`` is prepended to each text."""

    modality = "text"
    config_keys = ["model", "pooling", "instruction", "max_length"]

    def __init__(
        self,
        model: str,
        pooling: str | None = None,
        instruction: str | None = None,
        max_length: int | None = None,
        trust_remote_code: bool = False,
    ) -> None:
        super().__init__(trust_remote_code)
        self.model = model
        self.pooling = pooling
        self.instruction = instruction
        self.max_length = max_length

    def _load(self, device: torch.device) -> TextBackbone:
        return load_text_backbone(
            self.model,
            pooling=self.pooling,
            instruction=self.instruction,
            max_length=self.max_length,
            device=device,
            trust_remote_code=self.trust_remote_code,
        )

    def preprocess(self, inputs: Sequence[Any], prompt: str | None = None, **kwargs: Any) -> dict[str, Any]:
        bad = next((x for x in inputs if not isinstance(x, str)), None)
        if bad is not None:
            raise ValueError(f"the text route takes strings, got a {type(bad).__name__}")
        return {"texts": [(prompt or "") + text for text in inputs]}

    def forward(self, features: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        features["sentence_embedding"] = self._encoded(self.backbone.encode(features["texts"]))
        return features
