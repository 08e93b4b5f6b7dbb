"""Training configuration of ``python -m align.train``; saved as ``config.json`` (under ``train``) in each checkpoint."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

# Settings that may change between a run and its --resume without changing the trained weights.
RESUME_EXEMPT = (
    "resume",
    "output_dir",
    "log_every",
    "save_every",
    "keep_last",
    "val_every",
    "tensorboard",
    "wandb_project",
    "device",
    "progress",
)


@dataclass
class TrainConfig:
    image_features: str
    text_features: list[str]
    output_dir: str
    extra_text_features: list[str] = field(default_factory=list)
    val_image_features: str | None = None
    val_text_features: list[str] = field(default_factory=list)
    head: str = "star"
    width_factor: int = 8
    target_dim: int | None = None
    hidden_dim: int | None = None
    loss: str = "siglip"
    chunk_size: int = 4096
    batch_size: int = 32768
    optimizer: str = "lion"
    lr: float = 1e-5
    wd: float = 1e-4
    decay_norm_and_bias: bool = False
    betas: tuple[float, float] | None = None
    epochs: int = 100
    warmup: float = 0.1
    grad_clip: float | None = None
    logit_scale: float = 20.0
    logit_bias: float = -10.0
    precision: str = "amp_bf16"
    data_mode: str = "auto"
    stream_block: int = 65536
    seed: int = 42
    resume: str | None = None
    save_every: int = 1000
    keep_last: int = 3
    log_every: int = 10
    val_every: int = 0
    tensorboard: bool = False
    wandb_project: str | None = None
    device: str = "auto"
    progress: bool = True

    def to_dict(self) -> dict:
        values = dataclasses.asdict(self)
        values["betas"] = list(self.betas) if self.betas else None
        return values

    @classmethod
    def from_dict(cls, values: dict) -> TrainConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ValueError(f"unknown training settings {unknown} in the checkpoint config")
        values = dict(values)
        if values.get("betas"):
            values["betas"] = tuple(values["betas"])
        return cls(**values)

    def resume_differences(self, saved: TrainConfig) -> list[str]:
        """Settings that differ from the checkpoint's and would change the trained weights."""
        mine, theirs = self.to_dict(), saved.to_dict()
        return [
            f"{name}: {theirs[name]!r} in the checkpoint != {mine[name]!r} now"
            for name in mine
            if name not in RESUME_EXEMPT and mine[name] != theirs[name]
        ]
