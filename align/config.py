"""Training configuration of ``python -m align.train``; saved as ``config.json`` (under ``train``) in each checkpoint.

The command line is generated from these fields (:mod:`core.cli`); recipes in ``recipes/`` set them by name.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from align.data import DATA_MODES
from align.heads import HEADS
from core.config import LoopConfig, setting
from core.optim import OPTIMIZERS
from core.precision import PRECISIONS

LOSSES = ("siglip", "clip")


@dataclass(kw_only=True)
class TrainConfig(LoopConfig):
    RESUME_EXEMPT: ClassVar[tuple[str, ...]] = (*LoopConfig.RESUME_EXEMPT, "val_every")

    # data
    image_features: str = setting(help="image feature store (.h5) from `python -m encode image`")
    text_features: list[str] = setting(help="caption stores (several = several captions per image)")
    extra_text_features: list[str] = setting(
        default_factory=list, help="stores of a second positive caption per image (SAIL's extra_text)"
    )
    val_image_features: str | None = setting(default=None, help="held-out image store for i2t/t2i R@1/5/10")
    val_text_features: list[str] = setting(default_factory=list, help="held-out caption stores")
    data_mode: str = setting(
        default="auto",
        choices=DATA_MODES,
        help="where batches are assembled from; stream = block-shuffled reads",
    )
    stream_block: int = setting(default=65536, help="pairs per shuffled block in stream mode")
    # head
    head: str = setting(default="star", choices=HEADS, help="alignment head")
    width_factor: int = setting(default=8, help="star head: hidden width = factor x input dim")
    target_dim: int | None = setting(
        default=None, help="embedding dim (default 1024; the image dim for sharelock)"
    )
    hidden_dim: int | None = setting(
        default=None, help="hidden width of mlp (default 4 x in) and sharelock (default 4096)"
    )
    logit_scale: float = setting(
        default=20.0, help="initial logit scale (learned as a log, clamped to <= 100)"
    )
    logit_bias: float = setting(default=-10.0, help="initial logit bias (siglip)")
    # optimisation
    loss: str = setting(default="siglip", choices=LOSSES, help="contrastive loss")
    chunk_size: int = setting(default=4096, help="block size of the chunked loss")
    batch_size: int = setting(default=32768, help="global batch (all processes together)")
    optimizer: str = setting(default="lion", choices=OPTIMIZERS, help="optimizer")
    lr: float = setting(default=1e-5, help="peak learning rate")
    wd: float = setting(default=1e-4, help="weight decay (weight matrices only unless --decay-norm-and-bias)")
    decay_norm_and_bias: bool = setting(
        default=False, help="also decay norms, biases and logit scale/bias (SAIL's behaviour)"
    )
    betas: tuple[float, float] | None = setting(
        default=None, metavar="BETA", help="optimizer betas (default lion 0.9 0.99, adamw 0.9 0.999)"
    )
    epochs: int = setting(default=100, help="passes over the training pairs")
    warmup: float = setting(default=0.1, help="warmup: < 1 = fraction of all steps, >= 1 = steps")
    precision: str = setting(
        default="amp_bf16", choices=PRECISIONS, help="autocast dtype on GPU; CPU always trains in fp32"
    )
    # run
    val_every: int = setting(default=0, help="validate every N steps (0 = only at the end)")
