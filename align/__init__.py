"""Stage 2: train lightweight alignment heads on cached backbone features with a contrastive loss.

The public API: :class:`AlignedModel` (a trained head over its frozen backbones, for inference),
:class:`AlignmentHead` and :class:`HeadConfig` (the head itself), :data:`HEADS` (the head kinds), and the
open_clip-style :func:`create_model_and_transforms` / :func:`get_tokenizer` (``align.factory``).
"""

from align.factory import create_model_and_transforms, get_tokenizer
from align.heads import HEADS, AlignmentHead, HeadConfig
from align.model import AlignedModel

__all__ = [
    "HEADS",
    "AlignedModel",
    "AlignmentHead",
    "HeadConfig",
    "create_model_and_transforms",
    "get_tokenizer",
]
