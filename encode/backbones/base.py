"""The two backbone types every family returns: a frozen module plus what the feature store records about it."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn
from torchvision import transforms

from core.precision import autocast_dtype


def _to_tensor_types() -> tuple[type, ...]:
    from timm.data.transforms import MaybeToTensor  # timm's ToTensor that passes tensors through

    return transforms.ToTensor, MaybeToTensor


class RGBTransform:
    """Converts any PIL image to RGB, then applies the model's own preprocessing; picklable for DataLoader workers."""

    def __init__(self, transform: Callable[[Image.Image], Tensor]) -> None:
        self.transform = transform

    def __call__(self, image: Image.Image) -> Tensor:
        return self.transform(image.convert("RGB"))

    def __repr__(self) -> str:
        return f"RGBTransform({self.transform!r})"

    def split(self) -> SplitTransform | None:
        """The transform as a per-image PIL stage and a batch stage (see :class:`SplitTransform`), or None when it
        is not a torchvision ``Compose`` of PIL steps, one ``ToTensor``, then ``Normalize`` steps."""
        steps = getattr(self.transform, "transforms", None)
        if not isinstance(self.transform, transforms.Compose) or not steps:
            return None
        to_tensor = [i for i, step in enumerate(steps) if isinstance(step, _to_tensor_types())]
        if len(to_tensor) != 1 or not all(
            isinstance(s, transforms.Normalize) for s in steps[to_tensor[0] + 1 :]
        ):
            return None
        first = to_tensor[0]
        return SplitTransform(steps[:first], steps[first + 1 :])


class SplitTransform:
    """``ToTensor -> Normalize`` moved from each image to the batch; the values are bit-identical.

    :meth:`image` runs the PIL steps and returns ``uint8 [C, H, W]`` (no torch kernel runs: safe in threads
    that share the process with the forward's intra-op threads); :meth:`batch` turns the stacked images into
    float as ``ToTensor`` does (``/ 255``) and applies the ``Normalize`` steps to the whole batch.
    """

    def __init__(self, pil_steps: Sequence[Callable], normalize: Sequence[transforms.Normalize]) -> None:
        self.pil_steps = list(pil_steps)
        self.normalize = list(normalize)

    def image(self, image: Image.Image) -> Tensor:
        image = image.convert("RGB")
        for step in self.pil_steps:
            image = step(image)
        return torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1)

    def batch(self, images: Tensor) -> Tensor:
        pixels = images.to(torch.get_default_dtype()).div_(255)
        for step in self.normalize:
            pixels = step(pixels)
        return pixels


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
