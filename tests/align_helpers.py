"""Shared fixtures of the align tests: small synthetic feature stores with a learnable image-text relation."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from encode.store import FeatureStoreWriter, StoreMeta


def write_store(
    path: Path,
    modality: str,
    features: np.ndarray,
    keys: list[str],
    image_keys: list[str] | None = None,
    valid: np.ndarray | None = None,
    model: str | None = None,
    caption_column: str | None = None,
    finish: bool = True,
) -> Path:
    meta = StoreMeta(
        modality=modality,
        model=model or ("img-model" if modality == "image" else "txt-model"),
        model_revision="r1",
        pooling="cls" if modality == "image" else "mean",
        dim=features.shape[1],
        dtype="float32",
        caption_column=caption_column if modality == "text" else None,
        source="synthetic",
    )
    writer = FeatureStoreWriter(path, meta, keys, image_keys)
    valid = np.ones(len(keys), dtype=bool) if valid is None else valid
    writer.write(features.astype(np.float32), valid)
    if finish:
        writer.finish()
    else:
        writer.close()
    return path


def synthetic_stores(
    folder: Path,
    n_images: int = 64,
    captions_per_image: int = 2,
    image_dim: int = 12,
    text_dim: int = 10,
    seed: int = 0,
    prefix: str = "",
) -> tuple[Path, list[Path]]:
    """An image store and ``captions_per_image`` caption stores; captions are a fixed noisy linear map of images."""
    rng = np.random.default_rng(seed)
    images = rng.standard_normal((n_images, image_dim))
    mix = np.random.default_rng(1234).standard_normal(
        (image_dim, text_dim)
    )  # the same relation in every split
    keys = [f"{prefix}img{i}" for i in range(n_images)]
    image_path = write_store(folder / f"{prefix}images.h5", "image", images, keys)
    text_paths = []
    for c in range(captions_per_image):
        texts = images @ mix + 0.3 * rng.standard_normal((n_images, text_dim))
        order = rng.permutation(n_images)  # captions need not be in image order
        text_paths.append(
            write_store(
                folder / f"{prefix}captions{c}.h5",
                "text",
                texts[order],
                [f"{prefix}cap{c}_{i}" for i in order],
                [keys[i] for i in order],
                caption_column=f"caption{c}",
            )
        )
    return image_path, text_paths
