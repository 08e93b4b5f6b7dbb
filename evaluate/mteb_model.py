"""MTEB / MIEB (``mteb`` package) encoder for any model the evaluator loads: align checkpoints, VLM2Vec models,
open_clip models (``evaluate.models.load_model``).

>>> import mteb
>>> model = MTEBEncoder.from_spec("runs/sail")                   # or MTEBEncoder(any_embedding_model)
>>> results = mteb.evaluate(model, mteb.get_tasks(tasks=["MSCOCOT2IRetrieval", "STS12"]), cache=None)

Each DataLoader batch mteb passes holds a ``text`` and/or an ``image`` column (PIL images); every row becomes an
:class:`~core.protocol.EmbedInput` and is embedded by :func:`core.protocol.encode_inputs`: the model's own
``encode`` for an interleaved model (VLM2Vec), otherwise its text or image tower, and for a row with both the
renormalised sum of the two unit embeddings (score fusion, as the evaluator's MMEB task). Embeddings are
L2-normalised and scored with cosine similarity.

Instructions: none by default. ``instructions`` maps mteb prompt keys (a task name, a task type, ``query`` /
``document``, ``TASK-query``, ``TASKTYPE-document``) to an instruction, chosen by mteb's own priority
(``mteb.models.abs_encoder.get_prompt``).
A VLM2Vec model receives it as its instruction; a two-tower model gets it prefixed to the text (an image-only
row with an instruction would be fused with the instruction's text embedding, so leave them unset for
two-tower models on image inputs).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from mteb.models import ModelMeta
from mteb.models.abs_encoder import AbsEncoder, get_prompt
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from core.protocol import EmbeddingModel, EmbedInput, ImageTextModel, InterleavedModel, encode_inputs
from evaluate.cache import model_fingerprint
from evaluate.models import load_model

MODALITIES = ["image", "text"]


class MTEBEncoder(AbsEncoder):
    """mteb's encoder protocol (``encode(DataLoader, *, task_metadata, hf_split, hf_subset, prompt_type)``,
    ``similarity``, ``mteb_model_meta``) over an evaluate-protocol model."""

    def __init__(
        self,
        model: EmbeddingModel,
        name: str = "local/model",
        revision: str | None = None,
        instructions: dict[str, str] | None = None,
    ) -> None:
        if not isinstance(model, (ImageTextModel, InterleavedModel)):
            raise TypeError(
                f"{type(model).__name__} has neither encode_image/encode_text nor encode (see core/protocol.py)"
            )
        if "/" not in name:
            raise ValueError(f"mteb model names are ORG/NAME, got {name!r}")
        self.model = model
        self.model_prompts = dict(instructions) if instructions else None
        self.mteb_model_meta = ModelMeta(
            loader=None,
            name=name,
            revision=revision or model_fingerprint(model),
            release_date=None,
            languages=None,
            n_parameters=None,
            memory_usage_mb=None,
            max_tokens=None,
            embed_dim=None,
            license=None,
            open_weights=None,
            public_training_code=None,
            public_training_data=None,
            framework=["PyTorch"],
            similarity_fn_name="cosine",
            use_instructions=self.model_prompts is not None,
            training_datasets=None,
            modalities=MODALITIES,
        )

    @classmethod
    def from_spec(
        cls,
        spec: str,
        device: str | torch.device = "cpu",
        trust_remote_code: bool = False,
        instructions: dict[str, str] | None = None,
    ) -> MTEBEncoder:
        """The model a ``--model`` spec names (``evaluate.models.load_model``), named ``local/<folder name>``."""
        model = load_model(spec, device=device, trust_remote_code=trust_remote_code)
        label = (
            spec.removeprefix("open_clip:").replace("/", "_")
            if spec.startswith("open_clip:")
            else Path(spec).resolve().name
        )
        return cls(model, name=f"local/{label}", instructions=instructions)

    def encode(
        self,
        inputs: DataLoader,
        *,
        task_metadata: Any,
        hf_split: str,
        hf_subset: str,
        prompt_type: Any = None,
        **kwargs: Any,
    ) -> np.ndarray:
        """[N, D] float32 unit embeddings of the DataLoader's rows, in order."""
        instruction = get_prompt(self.model_prompts, task_metadata, prompt_type)
        show = bool(kwargs.get("show_progress_bar", True))
        parts = []
        for batch in tqdm(inputs, disable=not show, desc=f"{task_metadata.name} ({prompt_type or 'inputs'})"):
            rows = _batch_inputs(batch, instruction)
            if rows:
                parts.append(encode_inputs(self.model, rows).float().cpu())
        if not parts:
            return np.zeros((0, 0), dtype=np.float32)
        return torch.cat(parts).numpy()


def _batch_inputs(batch: dict[str, Any], instruction: str | None) -> list[EmbedInput]:
    texts, images = batch.get("text"), batch.get("image")
    if texts is None and images is None:
        raise ValueError(f"an mteb batch without a text or an image column (columns: {sorted(batch)})")
    size = len(texts if texts is not None else images)
    rows = []
    for i in range(size):
        text = texts[i] if texts is not None else None
        image = images[i] if images is not None else None
        if text is not None and not isinstance(text, str):
            raise TypeError(
                f"text inputs must be strings, got a {type(text).__name__} (conversations are not supported)"
            )
        rows.append(
            EmbedInput(
                text=text, image=None if image is None else image.convert("RGB"), instruction=instruction
            )
        )
    return rows
