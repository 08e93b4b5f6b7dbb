"""Stage 2: train lightweight alignment heads on cached backbone features with a contrastive loss.

The public API: :class:`AlignedModel` (a trained head over its frozen backbones, for inference),
:class:`AlignmentHead` and :class:`HeadConfig` (the head itself), and :data:`HEADS` (the head kinds).
"""

from align.heads import HEADS, AlignmentHead, HeadConfig
from align.model import AlignedModel

__all__ = ["HEADS", "AlignedModel", "AlignmentHead", "HeadConfig"]
