"""Pooling of token or feature-map outputs into one vector per input.

Token layouts follow the ViT convention: ``num_prefix_tokens`` leading tokens (CLS first, then registers or a
distillation token) before the patch tokens.
"""

from __future__ import annotations

import torch
from torch import Tensor

TOKEN_POOLINGS = ("cls", "mean", "concat")


def pool_tokens(hidden: Tensor, pooling: str, num_prefix_tokens: int) -> Tensor:
    """``cls``: first token; ``mean``: mean of patch tokens (prefix tokens excluded); ``concat``: CLS ‖ mean."""
    if pooling not in TOKEN_POOLINGS:
        raise ValueError(f"token pooling must be one of {TOKEN_POOLINGS}, got {pooling!r}")
    if pooling in ("cls", "concat") and num_prefix_tokens < 1:
        raise ValueError(
            f"pooling {pooling!r} needs a CLS token but this model has none; use --pooling mean "
            "(or 'pooler' where the model has a pooling head)"
        )
    if pooling == "cls":
        return hidden[:, 0]
    patch_mean = hidden[:, num_prefix_tokens:].mean(dim=1)
    if pooling == "mean":
        return patch_mean
    return torch.cat([hidden[:, 0], patch_mean], dim=-1)


def global_average_pool(feature_map: Tensor, channels_last: bool = False) -> Tensor:
    """Mean over the spatial axes of a [B, C, H, W] (or [B, H, W, C] with ``channels_last``) feature map."""
    return feature_map.mean(dim=(1, 2) if channels_last else (2, 3))


def last_token_indices(attention_mask: Tensor) -> Tensor:
    """Index of the last attended token of each row; right for left padding, right padding and no padding."""
    seq_len = attention_mask.shape[1]
    return seq_len - 1 - attention_mask.flip(dims=[1]).to(torch.int64).argmax(dim=1)


def last_token_pool(hidden: Tensor, attention_mask: Tensor) -> Tensor:
    rows = torch.arange(hidden.shape[0], device=hidden.device)
    return hidden[rows, last_token_indices(attention_mask)]


def masked_mean(hidden: Tensor, attention_mask: Tensor) -> Tensor:
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)
