"""Resolve a ``--model`` spec to a model following the evaluate protocols (see ``core/protocol.py``).

Specs:

- ``open_clip:ARCH/PRETRAINED``: an open_clip model, ``PRETRAINED`` a pretrained tag (``laion2b_s34b_b79k``)
  or a local checkpoint file (``open_clip:ViT-B-32/ckpts/epoch_32.pt``); ``open_clip:ARCH`` alone is randomly
  initialised (tests, smoke runs); ``open_clip:hf-hub:ORG/NAME`` an open_clip hub model.
- a checkpoint directory, matched against :data:`CHECKPOINT_LOADERS` in order. Built in: an ``align/`` checkpoint
  (``head.safetensors`` + ``config.json``, or a training output directory holding ``checkpoints/step_N``).
  a ``vlm2vec/`` checkpoint (``vlm2vec_config.json``). Further kinds are added with
  :func:`register_checkpoint_loader` (a :class:`CheckpointLoader`: a ``detect`` test on the directory, e.g. on
  its ``config.json`` via :func:`read_config_json`, and the ``module:Class`` to import lazily). The built-in
  loaders import only the packages' public APIs (``align``, ``vlm2vec``).
"""

from __future__ import annotations

import importlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from torch import Tensor

from core.checkpoint import latest_checkpoint
from core.protocol import EmbeddingModel

logger = logging.getLogger(__name__)

OPEN_CLIP_PREFIX = "open_clip:"


class ModelSpecError(ValueError):
    """A ``--model`` spec that cannot be resolved; the message lists the accepted forms."""


SPEC_HELP = (
    "expected 'open_clip:ARCH/PRETRAINED' (tag or local checkpoint file), 'open_clip:ARCH' (random init), "
    "or a checkpoint directory of a registered kind: {kinds}"
)


class OpenCLIPModel:
    """open_clip model as an :class:`~core.protocol.ImageTextModel`: its own eval transform and tokenizer, unit
    embeddings."""

    def __init__(self, arch: str, pretrained: str | None = None, device: str | torch.device = "cpu") -> None:
        import open_clip

        self.device = torch.device(device)
        self.model, _, self.preprocess = open_clip.create_model_and_transforms(
            arch, pretrained=pretrained, device=self.device
        )
        self.model.eval()
        self.tokenizer = open_clip.get_tokenizer(arch)
        self.config = {
            "type": "open_clip",
            "arch": arch,
            "pretrained": pretrained,
            "open_clip_version": open_clip.__version__,
            "preprocess": repr(self.preprocess),
        }

    def state_dict(self) -> dict[str, Tensor]:
        return self.model.state_dict()

    @torch.inference_mode()
    def encode_image(self, images: list[Image.Image], normalize: bool = True) -> Tensor:
        pixels = torch.stack([self.preprocess(image) for image in images]).to(self.device)
        return self.model.encode_image(pixels, normalize=normalize).float()

    @torch.inference_mode()
    def encode_text(self, texts: list[str], normalize: bool = True) -> Tensor:
        tokens = self.tokenizer(list(texts)).to(self.device)
        return self.model.encode_text(tokens, normalize=normalize).float()


@dataclass(frozen=True)
class CheckpointLoader:
    """How to recognise and load one kind of checkpoint directory.

    ``load`` is ``"module:Class"``, imported only when a directory matches; the class is built with
    ``Class.from_pretrained(resolve(directory), device=device)`` (``resolve`` maps a matching directory to the
    one to load, e.g. a training run to its newest checkpoint; None loads the directory itself).
    """

    name: str
    detect: Callable[[Path], bool]
    load: str
    description: str
    resolve: Callable[[Path], Path] | None = None
    # keyword options of ``from_pretrained`` that --model settings may pass (e.g. vlm2vec's base_model)
    options: tuple[str, ...] = ()


def read_config_json(directory: Path) -> dict:
    """The directory's ``config.json`` as a dict, or ``{}`` when it has none (for ``detect`` functions)."""
    path = directory / "config.json"
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        return {}


def _is_align_checkpoint(directory: Path) -> bool:
    return (
        (directory / "head.safetensors").is_file()
        or read_config_json(directory).get("format") == "align-head"
        or any((directory / "checkpoints").glob("step_*"))
    )


def _is_vlm2vec_checkpoint(directory: Path) -> bool:
    from vlm2vec import is_vlm2vec_checkpoint

    return is_vlm2vec_checkpoint(directory)


def _resolve_align_dir(directory: Path) -> Path:
    if (directory / "head.safetensors").is_file():
        return directory
    latest = latest_checkpoint(directory)
    if latest is None:
        raise ModelSpecError(f"{directory} has a checkpoints/ folder but no complete step_N checkpoint in it")
    logger.info("using the latest checkpoint %s", latest)
    return Path(latest)


# The settings of `VLM2VecModel.from_pretrained` that --model takes from the command line (None: the folder's own).
VLM2VEC_OPTIONS = ("base_model", "prompt_format", "image_size", "num_crops", "min_pixels", "max_pixels")

CHECKPOINT_LOADERS: list[CheckpointLoader] = [
    CheckpointLoader(
        name="vlm2vec",
        detect=_is_vlm2vec_checkpoint,
        load="vlm2vec:VLM2VecModel",
        description="vlm2vec/ export (vlm2vec_config.json), training run or checkpoints/step_N dir, a released "
        "PEFT adapter or full-weight folder, or a base VLM folder of a supported family (zero-shot)",
        options=VLM2VEC_OPTIONS,
    ),
    CheckpointLoader(
        name="align",
        detect=_is_align_checkpoint,
        load="align:AlignedModel",
        description="align/ checkpoint (head.safetensors + config.json, or a run dir with checkpoints/step_N)",
        resolve=_resolve_align_dir,
    ),
]


def register_checkpoint_loader(loader: CheckpointLoader) -> None:
    """Add a checkpoint kind; it is tried before the built-in ones (a more specific ``detect`` wins)."""
    CHECKPOINT_LOADERS.insert(0, loader)


def _import(target: str) -> type:
    module_name, _, attr = target.partition(":")
    return getattr(importlib.import_module(module_name), attr)


def parse_open_clip_spec(spec: str) -> tuple[str, str | None]:
    """``open_clip:ARCH/PRETRAINED`` -> (ARCH, PRETRAINED or None); hub names keep their slash."""
    body = spec[len(OPEN_CLIP_PREFIX) :]
    if not body:
        raise ModelSpecError(f"empty open_clip spec {spec!r}; {SPEC_HELP.format(kinds=_kinds())}")
    if body.startswith("hf-hub:"):
        return body, None
    arch, _, pretrained = body.partition("/")
    return arch, (pretrained or None)


def _kinds() -> str:
    return "; ".join(f"{loader.name}: {loader.description}" for loader in CHECKPOINT_LOADERS)


def _options_for(loader_name: str, accepted: tuple[str, ...], options: dict) -> dict:
    """The set (not None) ``options``; one the loader does not take is an error naming the flag."""
    given = {name: value for name, value in options.items() if value is not None}
    refused = sorted(name for name in given if name not in accepted)
    if refused:
        flags = ", ".join("--" + name.replace("_", "-") for name in refused)
        raise ModelSpecError(
            f"{flags} applies to VLM2Vec models ({', '.join(VLM2VEC_OPTIONS)}), not to a {loader_name} model"
        )
    return given


def load_model(
    spec: str,
    device: str | torch.device = "cpu",
    trust_remote_code: bool = False,
    options: dict | None = None,
) -> EmbeddingModel:
    """Build the model a ``--model`` spec names (see the module docstring); clear error if none matches.

    ``trust_remote_code`` is passed on (only when True) to checkpoint loaders that build hub models. ``options``
    (e.g. :data:`VLM2VEC_OPTIONS`: ``base_model``, ``prompt_format``, the image settings) go to the loader's
    ``from_pretrained`` when set; one the matched loader does not take is an error. A loaded model that follows
    neither :class:`ImageTextModel` nor :class:`InterleavedModel` is an error.
    """
    options = options or {}
    if spec.startswith(OPEN_CLIP_PREFIX):
        import open_clip

        _options_for("open_clip", (), options)
        arch, pretrained = parse_open_clip_spec(spec)
        if not arch.startswith("hf-hub:") and arch not in open_clip.list_models():
            raise ModelSpecError(f"unknown open_clip architecture {arch!r}; see open_clip.list_models()")
        model = OpenCLIPModel(arch, pretrained, device)
        model.config["spec"] = spec
        return model
    directory = Path(spec)
    if not directory.is_dir():
        raise ModelSpecError(
            f"model {spec!r} is neither an open_clip spec nor a directory; "
            + SPEC_HELP.format(kinds=_kinds())
        )
    for loader in CHECKPOINT_LOADERS:
        if loader.detect(directory):
            if loader.resolve is not None:
                directory = loader.resolve(directory)
            extra = _options_for(loader.name, loader.options, options)
            if trust_remote_code:
                extra["trust_remote_code"] = True
            model = _import(loader.load).from_pretrained(directory, device=device, **extra)
            if not isinstance(model, EmbeddingModel):
                raise ModelSpecError(
                    f"the {loader.name!r} loader ({loader.load}) built a {type(model).__name__}, which has "
                    "neither encode_image/encode_text nor encode (see core/protocol.py)"
                )
            return model
    raise ModelSpecError(
        f"{directory} is not a checkpoint directory of a known kind; " + SPEC_HELP.format(kinds=_kinds())
    )
