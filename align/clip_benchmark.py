"""CLIP_benchmark (``clip-benchmark`` on PyPI) model type ``align``: score an align checkpoint with its CLI or API.

::

    python -m align.clip_benchmark eval --model_type align --model runs/sail --pretrained latest \\
        --dataset mscoco_captions --dataset_root /data/coco --output coco_retrieval.json

``python -m align.clip_benchmark`` is ``clip_benchmark`` itself (same arguments) with the ``align`` model type
registered. ``--model`` is an align checkpoint folder or a training run; ``--pretrained`` is ``latest`` (the
folder itself, or the run's newest ``checkpoints/step_N``) or a checkpoint folder, relative to ``--model`` (e.g.
``checkpoints/step_5000``) or absolute. In Python, call :func:`register` and use ``clip_benchmark`` as usual, or
take ``load_align(...)``'s ``(model, transform, tokenizer)`` to its metric functions.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from align.factory import AlignedCLIP, BackboneTokenizer, CheckpointError, create_model_and_transforms

MODEL_TYPE = "align"
LATEST = ("", "latest")


def checkpoint_for(model_name: str, pretrained: str | None) -> Path:
    """The checkpoint ``--model`` / ``--pretrained`` name (see the module docstring)."""
    if pretrained is None or pretrained in LATEST:
        return Path(model_name)
    candidate = Path(pretrained)
    if not candidate.is_absolute():
        candidate = Path(model_name) / candidate
    if not candidate.is_dir():
        raise CheckpointError(
            f"--pretrained {pretrained!r}: {candidate} is not a folder. With --model_type align, --model is the "
            "checkpoint or training run folder and --pretrained is 'latest' or a checkpoint folder inside it "
            "(e.g. checkpoints/step_5000); clip_benchmark's default (an open_clip tag) does not apply"
        )
    return candidate


def load_align(
    model_name: str,
    pretrained: str | None = "latest",
    cache_dir: str | None = None,
    device: str | torch.device = "cpu",
) -> tuple[AlignedCLIP, object, BackboneTokenizer]:
    """``(model, transform, tokenizer)`` as ``clip_benchmark.models`` loaders return them (``cache_dir`` is
    unused: the backbones load from where the checkpoint's config names them)."""
    return create_model_and_transforms(checkpoint_for(model_name, pretrained), device=device)


def register() -> None:
    """Add the ``align`` model type to ``clip_benchmark.models`` (its CLI's ``--model_type`` choices too)."""
    from clip_benchmark import models

    models.TYPE2FUNC[MODEL_TYPE] = load_align
    if MODEL_TYPE not in models.MODEL_TYPES:
        models.MODEL_TYPES.append(MODEL_TYPE)


def main(argv: Sequence[str] | None = None) -> int:
    """``clip_benchmark`` with the ``align`` model type registered."""
    register()
    from clip_benchmark import cli

    sys.argv = ["clip_benchmark", *(sys.argv[1:] if argv is None else argv)]
    try:
        cli.main()
    except CheckpointError as err:
        sys.stderr.write(f"error: {err}\n")
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
