"""Pool token states of a VLM into one embedding per row (last token, EOS token or mean), any padding side."""

from __future__ import annotations

import torch
from torch import Tensor

POOLING_MODES = ("last", "eos", "mean")


def last_token_index(attention_mask: Tensor) -> Tensor:
    """Index of the last attended token of each row; correct for left and right padding."""
    length = attention_mask.shape[-1]
    return length - 1 - attention_mask.flip(-1).int().argmax(-1)


def pool(
    hidden: Tensor,
    attention_mask: Tensor,
    mode: str = "last",
    input_ids: Tensor | None = None,
    eos_token_id: int | None = None,
) -> Tensor:
    """Reduce `hidden[B, L, D]` to `[B, D]`.

    `last`: the last attended token. `eos`: the last attended `eos_token_id` (the adapter appends one to every
    prompt). `mean`: the mean over attended tokens.
    """
    rows = torch.arange(hidden.shape[0], device=hidden.device)
    if mode == "last":
        return hidden[rows, last_token_index(attention_mask)]
    if mode == "eos":
        if input_ids is None or eos_token_id is None:
            raise ValueError("pooling 'eos' needs input_ids and eos_token_id")
        is_eos = (input_ids == eos_token_id) & attention_mask.bool()
        return hidden[rows, last_token_index(is_eos)]
    if mode == "mean":
        mask = attention_mask.to(hidden.dtype).unsqueeze(-1)
        return (hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)
    raise ValueError(f"unknown pooling {mode!r}; choose one of {POOLING_MODES}")
