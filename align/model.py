"""A trained alignment model: frozen backbones (``encode/``'s registry) + the head from a checkpoint.

>>> model = AlignedModel.from_pretrained("runs/sail/checkpoints/step_5000")
>>> image_emb = model.encode_image([pil_image])              # [1, target_dim], L2-normalised
>>> text_emb = model.encode_text(["a dog on a skateboard"])
>>> model.encode_image_features(dinov2_features)             # precomputed backbone features

``AlignedModel`` is an ``nn.Module`` whose only submodule is the head, so ``state_dict()`` holds the head's
weights under ``head.``. Backbones are loaded lazily on first use (feature-only use needs no backbone weights),
on the model's current device, and are not submodules: the checkpoint names them in ``config``.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import torch
from PIL import Image
from torch import Tensor, nn

from align.heads import AlignmentHead, HeadConfig
from core.checkpoint import load_config, load_weights, save_file_weights
from core.fingerprint import folder_stamps

if TYPE_CHECKING:
    from encode.backbones import ImageBackbone, TextBackbone

_B = TypeVar("_B")


def _loaded_on(entry: tuple[torch.device, _B] | None, device: torch.device) -> _B | None:
    """The backbone of a ``(device, backbone)`` entry when it was loaded on ``device``, else None."""
    return entry[1] if entry is not None and entry[0] == device else None


class AlignedModel(nn.Module):
    """Image/text embedding model: an :class:`~core.protocol.ImageTextModel` and a
    :class:`~core.protocol.FeatureStageModel` (frozen backbones, then the head). Built in eval mode."""

    def __init__(
        self,
        head: AlignmentHead,
        config: dict,
        device: str | torch.device = "cpu",
        trust_remote_code: bool = False,
        batch_size: int = 64,
    ) -> None:
        super().__init__()
        self.head = head
        self.config = config
        self.trust_remote_code = trust_remote_code
        self.batch_size = batch_size
        self._image_backbone: tuple[torch.device, ImageBackbone] | None = None
        self._text_backbone: tuple[torch.device, TextBackbone] | None = None
        self.to(device)
        self.eval()

    @property
    def device(self) -> torch.device:
        """The device of the head's weights (follows ``.to()``); backbones are loaded onto it."""
        return self.head.logit_bias.device

    # ----- loading / saving ------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(
        cls,
        checkpoint_dir: str | os.PathLike,
        device: str | torch.device = "cpu",
        trust_remote_code: bool = False,
        batch_size: int = 64,
    ) -> AlignedModel:
        """Load ``head.safetensors`` + ``config.json`` from a checkpoint (``step_N``) or export directory."""
        config = load_config(checkpoint_dir)
        if "head" not in config or "image_backbone" not in config or "text_backbone" not in config:
            raise ValueError(f"{checkpoint_dir}/config.json is not an align head config (no head/backbones)")
        head = AlignmentHead(HeadConfig.from_dict(config["head"]))
        head.load_state_dict(load_weights(checkpoint_dir), strict=True)
        return cls(head, config, device, trust_remote_code, batch_size)

    def save_pretrained(self, output_dir: str | os.PathLike) -> Path:
        """Write ``head.safetensors`` and ``config.json`` (the inference part of a checkpoint)."""
        out = Path(output_dir)
        out.mkdir(parents=True, exist_ok=True)
        save_file_weights(self.head.state_dict(), out / "head.safetensors")
        (out / "config.json").write_text(json.dumps(self.config, indent=2, sort_keys=True) + "\n")
        return out

    # ----- backbones -------------------------------------------------------------------------------------
    @property
    def image_backbone(self) -> ImageBackbone:
        """The frozen image backbone on :attr:`device`, loaded on first use (and again after a device change)."""
        backbone = _loaded_on(self._image_backbone, self.device)
        if backbone is None:
            from encode.backbones import load_image_backbone

            info = self.config["image_backbone"]
            backbone = load_image_backbone(
                info["model"],
                pooling=info.get("pooling"),
                device=self.device,
                trust_remote_code=self.trust_remote_code,
            )
            self._image_backbone = (self.device, backbone)
        return backbone

    @property
    def text_backbone(self) -> TextBackbone:
        """The frozen text backbone on :attr:`device`, loaded on first use (and again after a device change)."""
        backbone = _loaded_on(self._text_backbone, self.device)
        if backbone is None:
            from encode.backbones import load_text_backbone

            info = self.config["text_backbone"]
            backbone = load_text_backbone(
                info["model"],
                pooling=info.get("pooling"),
                instruction=info.get("instruction"),
                max_length=info.get("max_length"),
                device=self.device,
                trust_remote_code=self.trust_remote_code,
            )
            self._text_backbone = (self.device, backbone)
        return backbone

    # ----- encoding --------------------------------------------------------------------------------------
    @property
    def _dtype(self) -> torch.dtype:
        return self.head.logit_bias.dtype

    @torch.inference_mode()
    def encode_image_features(self, features: Tensor, normalize: bool = True) -> Tensor:
        """Head embeddings of precomputed image features [B, image_dim] (as stored by ``encode``)."""
        return self.head.encode_image(features.to(self.device, self._dtype), normalize).float()

    @torch.inference_mode()
    def encode_text_features(self, features: Tensor, normalize: bool = True) -> Tensor:
        return self.head.encode_text(features.to(self.device, self._dtype), normalize).float()

    def backbone_fingerprint(self, modality: str) -> str:
        """Id of the frozen backbone that makes this modality's features: its config entry (model, revision,
        pooling, instruction, max_length) plus size and mtime of the files of a local-folder backbone."""
        info = self.config[f"{modality}_backbone"]
        digest = hashlib.sha256(json.dumps(info, sort_keys=True).encode())
        folder = Path(str(info.get("model", "")))
        if folder.is_dir():
            for stamp in folder_stamps(folder):
                digest.update(f"{stamp}\n".encode())
        return f"{modality}-backbone-{digest.hexdigest()[:32]}"

    @torch.inference_mode()
    def encode_image_backbone(self, images: list[Image.Image]) -> Tensor:
        """Frozen backbone features [B, image_dim] (what ``encode`` stores), before the head."""
        backbone = self.image_backbone
        out = []
        for i in range(0, len(images), self.batch_size):
            pixels = torch.stack([backbone.transform(im) for im in images[i : i + self.batch_size]])
            out.append(backbone.encode(pixels.to(self.device)).float())
        return torch.cat(out) if out else torch.empty(0, self.config["head"]["image_dim"])

    @torch.inference_mode()
    def encode_text_backbone(self, texts: list[str]) -> Tensor:
        backbone = self.text_backbone
        out = [
            backbone.encode(list(texts[i : i + self.batch_size])).float()
            for i in range(0, len(texts), self.batch_size)
        ]
        return torch.cat(out) if out else torch.empty(0, self.config["head"]["text_dim"])

    def encode_image(self, images: list[Image.Image], normalize: bool = True) -> Tensor:
        return self.encode_image_features(self.encode_image_backbone(images), normalize)

    def encode_text(self, texts: list[str], normalize: bool = True) -> Tensor:
        return self.encode_text_features(self.encode_text_backbone(texts), normalize)

    @property
    def logit_scale(self) -> float:
        return float(self.head.logit_scale.detach())

    @property
    def logit_bias(self) -> float:
        return float(self.head.logit_bias.detach())
