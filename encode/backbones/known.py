"""Known models and their documented defaults (pooling, token limit, whether they need custom code).

A name in this table is loaded by the backbone kind its ``family`` names, with these defaults; anything else
loads through the kind its name or checkpoint matches.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class KnownModel:
    """``family``: the registered backbone kind that loads the model (see :mod:`encode.backbones.kinds`)."""

    family: str
    pooling: str
    max_length: int | None = None
    needs_remote_code: bool = False


def _each(names: list[str], model: KnownModel) -> dict[str, KnownModel]:
    return dict.fromkeys(names, model)


KNOWN_IMAGE_MODELS: dict[str, KnownModel] = {
    # SAIL's default: CLS ‖ mean of patch tokens of the final layernormed states (2048-d for DINOv2-L).
    **_each(
        [f"facebook/dinov2-{size}" for size in ("small", "base", "large", "giant")]
        + [f"facebook/dinov2-with-registers-{size}" for size in ("small", "base", "large", "giant")],
        KnownModel("hf_vision", "concat"),
    ),
    **_each(
        [
            "openai/clip-vit-base-patch32",
            "openai/clip-vit-base-patch16",
            "openai/clip-vit-large-patch14",
            "openai/clip-vit-large-patch14-336",
        ],
        KnownModel("hf_vision", "cls"),
    ),
    # SigLIP has no CLS token: its own attention-pooling head ("pooler").
    **_each(
        [
            "google/siglip-base-patch16-224",
            "google/siglip-so400m-patch14-384",
            "google/siglip2-base-patch16-224",
            "google/siglip2-so400m-patch14-384",
        ],
        KnownModel("hf_vision", "pooler"),
    ),
    **_each(
        [
            "apple/aimv2-large-patch14-224",
            "apple/aimv2-large-patch14-336",
            "apple/aimv2-huge-patch14-224",
            "apple/aimv2-1B-patch14-224",
        ],
        KnownModel("hf_vision", "mean"),
    ),
    "efficientnet-lite0": KnownModel("offline", "gap"),
}

KNOWN_TEXT_MODELS: dict[str, KnownModel] = {
    "nvidia/NV-Embed-v2": KnownModel(
        "nv_embed", "latent_attention", max_length=32768, needs_remote_code=True
    ),
    **_each(
        ["Alibaba-NLP/gte-Qwen2-7B-instruct", "Alibaba-NLP/gte-Qwen2-1.5B-instruct"],
        KnownModel("decoder", "last_token", max_length=8192, needs_remote_code=True),
    ),
    **_each(
        ["Alibaba-NLP/gte-large-en-v1.5", "Alibaba-NLP/gte-base-en-v1.5"],
        KnownModel("sentence_transformers", "cls", max_length=8192, needs_remote_code=True),
    ),
    "sentence-transformers/all-mpnet-base-v2": KnownModel("sentence_transformers", "mean"),
    "all-MiniLM-L6-v2": KnownModel("offline", "mean"),
    "sentence-transformers/all-MiniLM-L6-v2": KnownModel("offline", "mean"),
    **_each(
        [
            "openai/clip-vit-base-patch32",
            "openai/clip-vit-base-patch16",
            "openai/clip-vit-large-patch14",
            "openai/clip-vit-large-patch14-336",
            "google/siglip-base-patch16-224",
            "google/siglip-so400m-patch14-384",
        ],
        KnownModel("clip_text", "proj"),
    ),
}
