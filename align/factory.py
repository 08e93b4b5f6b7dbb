"""open_clip-style access to an align checkpoint: the model, its image preprocessing and its tokenizer.

>>> model, preprocess, tokenizer = create_model_and_transforms("runs/sail/checkpoints/step_5000")
>>> pixels = torch.stack([preprocess(image) for image in images])
>>> image_features = model.encode_image(pixels, normalize=True)
>>> text_features = model.encode_text(tokenizer(["a dog", "a cat"]), normalize=True)
>>> logits = model.logit_scale.exp() * image_features @ text_features.T + model.logit_bias

As in open_clip, ``encode_image`` / ``encode_text`` default to ``normalize=False``, ``forward`` returns the
normalised features and ``logit_scale.exp()`` (plus ``logit_bias`` for a sigmoid-loss head), and
``logit_scale`` is the learned *log* of the scale. ``preprocess`` is the frozen image backbone's own eval
transform. Two differences (docs/integrations.md): the third element returned is the tokenizer (open_clip
returns ``(model, preprocess_train, preprocess_val)`` and the tokenizer from ``get_tokenizer``), and the
tokenizer returns :class:`TextTokens`, the texts themselves, because every frozen text backbone tokenizes
inside (its prompt or instruction format, its pooling), not a ``LongTensor`` of token ids.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from align.model import AlignedModel
from core.checkpoint import latest_checkpoint, load_config


class CheckpointError(ValueError):
    """A path that is not an align checkpoint (nor a training run holding one)."""


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """An align checkpoint folder (``head.safetensors`` + ``config.json``), or a training run's newest
    ``checkpoints/step_N``; a clear error for anything else."""
    directory = Path(path)
    if not directory.is_dir():
        raise CheckpointError(
            f"{directory} is not a folder; pass an align checkpoint (head.safetensors + config.json)"
        )
    if (directory / "head.safetensors").is_file() and (directory / "config.json").is_file():
        return directory
    latest = latest_checkpoint(directory)
    if latest is None:
        raise CheckpointError(
            f"{directory} holds no head.safetensors + config.json and no complete checkpoints/step_N; pass an "
            "align checkpoint (python -m align.train's checkpoints/step_N or an export) or its training run folder"
        )
    return Path(latest)


class TextTokens(Sequence[str]):
    """What :class:`BackboneTokenizer` returns: the batch of texts, tokenized inside the frozen text backbone.

    ``.to(device)`` returns the batch itself, so code written for open_clip's token tensors
    (``tokenizer(texts).to(device)``, then ``model.encode_text(tokens)``) runs unchanged.
    """

    def __init__(self, texts: Sequence[str]) -> None:
        self.texts = list(texts)

    def to(self, *args: object, **kwargs: object) -> TextTokens:
        return self

    def __len__(self) -> int:
        return len(self.texts)

    def __getitem__(self, index: int | slice) -> str | list[str]:  # type: ignore[override]
        return self.texts[index]

    def __iter__(self) -> Iterator[str]:
        return iter(self.texts)

    def __repr__(self) -> str:
        return f"TextTokens({len(self.texts)} texts)"


class BackboneTokenizer:
    """open_clip's tokenizer call signature for an align checkpoint's text backbone: ``tokenizer(texts)``
    (a string or a list of strings) -> :class:`TextTokens`. Truncation to ``max_length`` tokens happens in the
    backbone, with its own tokenizer."""

    def __init__(self, max_length: int | None) -> None:
        self.context_length = max_length

    def __call__(self, texts: str | Sequence[str], context_length: int | None = None) -> TextTokens:
        if context_length is not None and context_length != self.context_length:
            raise ValueError(
                f"the text backbone reads at most {self.context_length} tokens, fixed in the checkpoint's "
                f"text_backbone.max_length; context_length={context_length} cannot change it"
            )
        batch = [texts] if isinstance(texts, str) else list(texts)
        bad = next((t for t in batch if not isinstance(t, str)), None)
        if bad is not None:
            raise TypeError(
                f"the tokenizer takes strings, got a {type(bad).__name__}; note that create_model_and_transforms "
                "returns (model, preprocess, tokenizer), not open_clip's (model, preprocess_train, preprocess_val)"
            )
        return TextTokens(batch)


class AlignedCLIP(nn.Module):
    """An :class:`~align.AlignedModel` with open_clip's ``CLIP`` interface over preprocessed pixels and tokens.

    ``encode_image(pixels)``: a [B, C, H, W] batch made by ``preprocess``; ``encode_text(tokens)``: the
    tokenizer's :class:`TextTokens` (or a list of strings). Both return float32 [B, target_dim] on the model's
    device. Parameters are the head's; the frozen backbones load on first use, on the model's device.
    """

    def __init__(self, aligned: AlignedModel, output_dict: bool = False) -> None:
        super().__init__()
        self.aligned = aligned
        self.output_dict = output_dict
        self.eval()

    @property
    def device(self) -> torch.device:
        return self.aligned.device

    @property
    def logit_scale(self) -> nn.Parameter:
        """The learned log of the logit scale, as open_clip's ``model.logit_scale`` (use ``.exp()``)."""
        return self.aligned.head.log_logit_scale

    @property
    def logit_bias(self) -> nn.Parameter | None:
        """The learned logit bias of a sigmoid-loss head; None for a head trained with the CLIP loss."""
        return None if self.aligned.config.get("loss") == "clip" else self.aligned.head.logit_bias

    def encode_image(self, image: Tensor, normalize: bool = False) -> Tensor:
        if not isinstance(image, Tensor) or image.ndim != 4:
            raise TypeError(
                "encode_image takes a [B, C, H, W] pixel batch made with preprocess "
                "(torch.stack([preprocess(im) for im in images])); for PIL images use AlignedModel.encode_image"
            )
        features = self.aligned.image_backbone.encode(image)
        return self.aligned.encode_image_features(features, normalize)

    def encode_text(self, text: TextTokens | Sequence[str], normalize: bool = False) -> Tensor:
        if isinstance(text, (Tensor, str)):
            raise TypeError(
                "encode_text takes the tokenizer's output (TextTokens) or a list of strings, not "
                f"a {type(text).__name__}; the frozen text backbone tokenizes itself"
            )
        return self.aligned.encode_text(list(text), normalize)

    def get_logits(self, image: Tensor, text: TextTokens | Sequence[str]) -> tuple[Tensor, Tensor]:
        """(image_logits [B_img, B_txt], text_logits = its transpose), as open_clip's ``CLIP.get_logits``."""
        image_features = self.encode_image(image, normalize=True)
        text_features = self.encode_text(text, normalize=True)
        with torch.inference_mode():
            image_logits = self.logit_scale.exp() * image_features @ text_features.T
            if self.logit_bias is not None:
                image_logits = image_logits + self.logit_bias
        return image_logits, image_logits.T

    def forward(
        self, image: Tensor | None = None, text: TextTokens | Sequence[str] | None = None
    ) -> tuple | dict[str, Tensor | None]:
        """Normalised image and text features (None for an input not given), ``logit_scale.exp()`` and, for a
        sigmoid-loss head, ``logit_bias``: a tuple, or a dict when ``output_dict``."""
        image_features = self.encode_image(image, normalize=True) if image is not None else None
        text_features = self.encode_text(text, normalize=True) if text is not None else None
        with torch.inference_mode():
            scale = self.logit_scale.exp()
            bias = None if self.logit_bias is None else self.logit_bias.clone()
        if self.output_dict:
            out = {"image_features": image_features, "text_features": text_features, "logit_scale": scale}
            return out if bias is None else out | {"logit_bias": bias}
        return (image_features, text_features, scale) + (() if bias is None else (bias,))


def get_tokenizer(checkpoint_dir: str | os.PathLike) -> BackboneTokenizer:
    """The tokenizer of a checkpoint's text backbone (open_clip's ``get_tokenizer``), without loading it."""
    config = load_config(resolve_checkpoint(checkpoint_dir))
    return BackboneTokenizer(config["text_backbone"].get("max_length"))


def create_model_and_transforms(
    checkpoint_dir: str | os.PathLike,
    device: str | torch.device = "cpu",
    trust_remote_code: bool = False,
    batch_size: int = 64,
    output_dict: bool = False,
) -> tuple[AlignedCLIP, object, BackboneTokenizer]:
    """``(model, preprocess, tokenizer)`` of an align checkpoint (or a training run's newest checkpoint).

    ``preprocess`` maps a PIL image to the image backbone's input tensor (its own eval transform; the image
    backbone is loaded here, on ``device``); ``batch_size`` bounds how many texts the text backbone embeds at
    once; ``trust_remote_code`` lets hub backbones that ship code (NV-Embed-v2) run it.
    """
    aligned = AlignedModel.from_pretrained(
        resolve_checkpoint(checkpoint_dir),
        device=device,
        trust_remote_code=trust_remote_code,
        batch_size=batch_size,
    )
    model = AlignedCLIP(aligned, output_dict=output_dict)
    preprocess = aligned.image_backbone.transform
    return model, preprocess, BackboneTokenizer(aligned.config["text_backbone"].get("max_length"))
