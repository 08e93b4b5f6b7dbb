"""How VLM2Vec directories are recognised: an export (`vlm2vec_config.json`), a training run (its `final/`
export), a training checkpoint (`checkpoints/step_N`), a plain PEFT adapter folder whose base is a supported family
(TIGER-AI-Lab/VLM2Vec's LoRA releases), or a full-weight VLM of a supported family (a released full model, or a
base VLM for the zero-shot baseline).

:func:`is_vlm2vec_checkpoint` is exported by the `vlm2vec` package; `evaluate.models` calls it (lazily) to route
such directories to `vlm2vec.VLM2VecModel`.
"""

from __future__ import annotations

import json
from pathlib import Path

from vlm2vec.adapters import FAMILIES
from vlm2vec.model import CONFIG_NAME, TRAIN_FORMAT, adapter_family, is_adapter_folder


def _config_json(directory: Path) -> dict:
    try:
        return json.loads((directory / "config.json").read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def is_vlm2vec_checkpoint(directory: str | Path) -> bool:
    """Whether ``directory`` holds a VLM2Vec export, training run or checkpoint, a PEFT adapter over a supported
    VLM, or a supported VLM. An adapter's base is identified without the network: a local base folder, the hub
    cache, peft's recorded base class, or a config.json beside the adapter."""
    directory = Path(directory)
    if (directory / CONFIG_NAME).is_file() or (directory / "final" / CONFIG_NAME).is_file():
        return True
    if is_adapter_folder(directory):
        return adapter_family(directory, local_only=True) is not None
    config = _config_json(directory)
    if config.get("format") == TRAIN_FORMAT:
        return True
    model_types = {t for family in FAMILIES.values() for t in family.model_types}
    return config.get("model_type") in model_types
