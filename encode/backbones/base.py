"""The two backbone types every family returns: a frozen module plus what the feature store records about it."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from typing import Any

import torch
from PIL import Image
from torch import Tensor, nn

from core.precision import autocast_dtype


class RGBTransform:
    """Converts any PIL image to RGB, then applies the model's own preprocessing; picklable for DataLoader workers."""

    def __init__(self, transform: Callable[[Image.Image], Tensor]) -> None:
        self.transform = transform

    def __call__(self, image: Image.Image) -> Tensor:
        return self.transform(image.convert("RGB"))

    def __repr__(self) -> str:
        return f"RGBTransform({self.transform!r})"


class _Backbone:
    modality: str

    def __init__(
        self,
        *,
        name: str,
        revision: str,
        pooling: str,
        module: nn.Module,
        device: torch.device,
        precision: str,
        normalized: bool,
    ) -> None:
        self.name = name
        self.revision = revision
        self.pooling = pooling
        self.device = device
        self.precision = precision
        self.normalized = normalized
        self.module = module.eval().requires_grad_(False)
        self._autocast_dtype = autocast_dtype(device, precision)
        self.dim = 0

    def _run(self, inputs: Any) -> Tensor:
        autocast = (
            torch.autocast(self.device.type, dtype=self._autocast_dtype)
            if self._autocast_dtype is not None
            else contextlib.nullcontext()
        )
        with torch.inference_mode(), autocast:
            out = self.module(inputs)
        return out.float().cpu()

    def meta(self) -> dict[str, Any]:
        """The :class:`encode.store.StoreMeta` fields this backbone determines."""
        return {
            "modality": self.modality,
            "model": self.name,
            "model_revision": self.revision,
            "pooling": self.pooling,
            "dim": self.dim,
            "normalized": self.normalized,
        }

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.name!r}, pooling={self.pooling!r}, dim={self.dim}, "
            f"device={str(self.device)!r}, revision={self.revision!r})"
        )


class ImageBackbone(_Backbone):
    """A frozen image model with its pooling.

    ``transform`` (picklable) maps a PIL image to a CHW tensor; :meth:`encode` maps a [B, C, H, W] batch to
    [B, dim] float32 features on the CPU. ``module`` takes the pixel batch and returns pooled features.
    """

    modality = "image"

    def __init__(self, *, transform: Callable[[Image.Image], Tensor], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.transform = transform
        self.dim = self._probe_dim()

    def _probe_dim(self) -> int:
        sample = self.transform(Image.new("RGB", (224, 224))).unsqueeze(0)
        return int(self.encode(sample).shape[-1])

    def encode(self, pixel_values: Tensor) -> Tensor:
        """Pooled features [B, dim], float32, on the CPU (eval, inference mode, autocast on GPU)."""
        return self._run(pixel_values.to(self.device, non_blocking=True))


class TextBackbone(_Backbone):
    """A frozen text model with its pooling; ``module`` maps a list of strings to pooled features.

    ``instruction`` is the task instruction as given (the module formats it the way the model expects) and
    ``max_length`` the token limit texts are truncated to.
    """

    modality = "text"

    def __init__(self, *, instruction: str | None, max_length: int | None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.instruction = instruction
        self.max_length = max_length
        self.dim = int(self.encode(["a probe sentence"]).shape[-1])

    def encode(self, texts: Sequence[str]) -> Tensor:
        """Pooled features [B, dim], float32, on the CPU; L2-normalised only if ``normalized`` (see meta)."""
        texts = list(texts)
        if not texts:
            return torch.empty(0, self.dim)
        return self._run(texts)

    def meta(self) -> dict[str, Any]:
        return {**super().meta(), "instruction": self.instruction, "max_length": self.max_length}
