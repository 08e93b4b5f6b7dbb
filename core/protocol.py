"""The protocols every evaluated model follows, and the score fusion that lets two-tower models embed
interleaved (image + text) inputs.

A two-tower model (:class:`ImageTextModel`) has::

    encode_image(images: list[PIL.Image.Image], normalize: bool = True) -> Tensor[B, D]
    encode_text(texts: list[str], normalize: bool = True) -> Tensor[B, D]

and an interleaved model (:class:`InterleavedModel`) ``encode(inputs: list[EmbedInput]) -> Tensor[B, D]``
(L2-normalised), which MMEB uses; two-tower models without ``encode`` get :func:`fused_encode`.
:data:`EmbeddingModel` is either. A :class:`FeatureStageModel` additionally exposes its frozen-backbone stage
so the evaluator caches backbone features. Optional attributes used for caching and result files: ``config``
(a JSON-able dict describing the model and its preprocessing) and ``state_dict()`` (weights hashed into the
fingerprint), or a ready ``fingerprint`` string.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, TypeAlias, runtime_checkable

import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from core.video import VideoSource, load_video


@dataclass
class EmbedInput:
    """One interleaved input: text, image or both, with an optional task instruction. The empty text ``""`` is a
    text (a blank MMEB candidate); ``text=None`` without an image is refused."""

    text: str | None = None
    image: Image.Image | None = None
    instruction: str | None = None
    # A video: its frames (already sampled), a video file or a folder of frames (core.video.load_video samples
    # DEFAULT_NUM_FRAMES of those).
    video: VideoSource | None = None

    def __post_init__(self) -> None:
        if self.text is None and self.image is None and self.video is None:
            raise ValueError("an EmbedInput needs a text, an image or a video")


class CapabilityError(TypeError):
    """The model lacks a method the task needs."""


@runtime_checkable
class ImageTextModel(Protocol):
    """A two-tower model: image and text embeddings in one space."""

    def encode_image(self, images: list[Image.Image], normalize: bool = True) -> Tensor: ...

    def encode_text(self, texts: list[str], normalize: bool = True) -> Tensor: ...


@runtime_checkable
class InterleavedModel(Protocol):
    """A model embedding interleaved inputs (text, image or both, with an instruction) itself."""

    def encode(self, inputs: list[EmbedInput]) -> Tensor: ...


EmbeddingModel: TypeAlias = ImageTextModel | InterleavedModel
"""Any model the evaluator scores (what ``evaluate.models.load_model`` returns)."""


@runtime_checkable
class FeatureStageModel(Protocol):
    """Optional: a model whose embeddings are a cheap head over a frozen backbone (align's ``AlignedModel``).

    The evaluator then caches the *backbone* features under ``backbone_fingerprint(modality)`` and applies the
    head on every run, so models sharing a backbone (e.g. a trained and an untrained head) encode the data once.
    The fingerprint must change whenever the backbone's weights or preprocessing do.
    """

    def backbone_fingerprint(self, modality: str) -> str: ...

    def encode_image_backbone(self, images: list[Image.Image]) -> Tensor: ...

    def encode_text_backbone(self, texts: list[str]) -> Tensor: ...

    def encode_image_features(self, features: Tensor, normalize: bool = True) -> Tensor: ...

    def encode_text_features(self, features: Tensor, normalize: bool = True) -> Tensor: ...


def check_capabilities(model: object, needs: Sequence[str], task: str) -> None:
    """Raise a clear error, before any encoding, if ``model`` lacks a method the task needs."""
    missing = [name for name in needs if not callable(getattr(model, name, None))]
    if missing:
        raise CapabilityError(
            f"task {task!r} needs a model with {', '.join(needs)}; {type(model).__name__} lacks "
            f"{', '.join(missing)}. Use a model that implements the evaluate protocol (see core/protocol.py)."
        )


IMAGE_PLACEHOLDER = "<|image_1|>"
"""Where MMEB's texts put the image; models that place images themselves (VLM2Vec) replace it, two-tower models
never see it."""


def input_text(item: EmbedInput) -> str | None:
    """The text a two-tower model embeds for an input: the instruction prefixed to the text, if both exist, without
    :data:`IMAGE_PLACEHOLDER` and surrounding whitespace; None for an image-only input, and the empty text "" for an
    input with neither text nor image (a blank MMEB candidate, ``EmbedInput(text="")``)."""
    parts = [p.replace(IMAGE_PLACEHOLDER, "").strip() for p in (item.instruction, item.text) if p]
    parts = [p for p in parts if p]
    if parts:
        return " ".join(parts)
    return None if item.image is not None or item.video is not None else ""


@torch.inference_mode()
def fused_encode(model: ImageTextModel, inputs: Sequence[EmbedInput]) -> Tensor:
    """Embed interleaved inputs with a two-tower model by score fusion (UniIR's CLIP baselines, "SF").

    Text-only inputs -> normalised text embedding; image-only -> normalised image embedding; image + text ->
    ``normalize(normalize(image) + normalize(text))``, the renormalised sum of the two unit embeddings, so the
    cosine with a candidate is proportional to the sum of the image and text cosines. The instruction, when
    present, is prefixed to the text (a text-only instruction input embeds the instruction alone). A video is
    the mean of its frames' normalised image embeddings, renormalised, and is then fused like an image.
    """
    texts = [input_text(item) for item in inputs]
    text_rows = [i for i, t in enumerate(texts) if t is not None]
    image_rows = [i for i, item in enumerate(inputs) if item.image is not None]
    parts: list[Tensor | None] = [None] * len(inputs)
    if text_rows:
        text_emb = F.normalize(
            model.encode_text([texts[i] for i in text_rows], normalize=True).float(), dim=-1
        )
        for row, emb in zip(text_rows, text_emb, strict=True):
            parts[row] = emb
    if image_rows:
        image_emb = F.normalize(
            model.encode_image([inputs[i].image for i in image_rows], normalize=True).float(), dim=-1
        )
        for row, emb in zip(image_rows, image_emb, strict=True):
            parts[row] = emb if parts[row] is None else parts[row] + emb
    for row, emb in _video_embeddings(model, inputs).items():
        parts[row] = emb if parts[row] is None else parts[row] + emb
    return F.normalize(torch.stack(parts), dim=-1)


def _video_embeddings(model: ImageTextModel, inputs: Sequence[EmbedInput]) -> dict[int, Tensor]:
    """Row -> unit embedding of the row's video: the renormalised mean of its frames' unit image embeddings
    (all frames of the batch in one ``encode_image`` call)."""
    videos = {i: load_video(item.video) for i, item in enumerate(inputs) if item.video is not None}
    if not videos:
        return {}
    frames = [frame for row_frames in videos.values() for frame in row_frames]
    frame_emb = F.normalize(model.encode_image(frames, normalize=True).float(), dim=-1)
    counts = [len(row_frames) for row_frames in videos.values()]
    means = [chunk.mean(dim=0) for chunk in frame_emb.split(counts)]
    return {row: F.normalize(mean, dim=-1) for row, mean in zip(videos, means, strict=True)}


def encode_inputs(model: EmbeddingModel, inputs: Sequence[EmbedInput]) -> Tensor:
    """``model.encode`` when the model has one, otherwise :func:`fused_encode`; always L2-normalised."""
    if isinstance(model, InterleavedModel):
        return F.normalize(model.encode(list(inputs)).float(), dim=-1)
    check_capabilities(model, ("encode_image", "encode_text"), "mmeb")
    return fused_encode(model, inputs)
