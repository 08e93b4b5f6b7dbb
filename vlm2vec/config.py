"""Training configuration of `python -m vlm2vec.train`; saved in every checkpoint's `config.json` (`train`)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from vlm2vec.data import MMEB_TRAIN_SUBSETS

# Settings that may change between a run and its --resume without changing the trained weights.
RESUME_EXEMPT = (
    "resume",
    "output_dir",
    "log_every",
    "save_every",
    "keep_last",
    "tensorboard",
    "wandb_project",
    "device",
    "progress",
    "num_workers",
    "query_chunk_size",
    "target_chunk_size",
    "gradient_checkpointing",
    "merge_lora",
    "check_images",
)


@dataclass
class TrainConfig:
    model: str
    data: str
    output_dir: str
    image_root: str | None = None  # default: --data
    family: str | None = None  # default: from the model's config.model_type
    trust_remote_code: bool = False
    subsets: list[str] = field(default_factory=lambda: list(MMEB_TRAIN_SUBSETS))
    split: str = "original"
    num_sample_per_subset: int | None = 50_000
    subset_caps: dict[str, int] = field(default_factory=dict)
    mixed_batches: bool = False
    hard_negatives: bool = True
    check_images: bool = True
    pooling: str = "last"
    normalize: bool = True
    temperature: float = 0.02
    max_text_tokens: int | None = 256
    tuning: str = "lora"  # lora | dora | full
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.1
    lora_target_modules: str | None = None
    gradient_checkpointing: bool = False
    batch_size: int = 1024  # global, all processes together
    query_chunk_size: int = 0  # 0: no GradCache on queries (one chunk)
    target_chunk_size: int = 0
    optimizer: str = "adamw"
    lr: float = 2e-5
    wd: float = 0.0
    steps: int = 2000
    warmup: float = 200
    grad_clip: float | None = None
    precision: str = "amp_bf16"
    dtype: str = "float32"  # weights; autocast comes from --precision
    seed: int = 42
    resume: str | None = None
    save_every: int = 1000
    keep_last: int = 2
    log_every: int = 1
    merge_lora: bool = False
    tensorboard: bool = False
    wandb_project: str | None = None
    device: str = "auto"
    num_workers: int = 2
    progress: bool = True

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> TrainConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    def resume_differences(self, saved: TrainConfig) -> list[str]:
        return [
            f"{f.name}: checkpoint {getattr(saved, f.name)!r}, now {getattr(self, f.name)!r}"
            for f in dataclasses.fields(self)
            if f.name not in RESUME_EXEMPT and getattr(saved, f.name) != getattr(self, f.name)
        ]
