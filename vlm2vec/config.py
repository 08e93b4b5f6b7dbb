"""Training configuration of ``python -m vlm2vec.train``; saved in every checkpoint's ``config.json`` (``train``).

The command line is generated from these fields (:mod:`core.cli`); recipes in ``recipes/`` set them by name.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from core.config import LoopConfig, setting
from core.optim import OPTIMIZERS
from core.precision import DTYPES, PRECISIONS
from vlm2vec.adapters import FAMILIES, PROMPT_FORMATS
from vlm2vec.data import MMEB_TRAIN_SUBSETS, SELECTIONS, SPLITS
from vlm2vec.pooling import POOLING_MODES

TUNING = ("lora", "dora", "full")


@dataclass(kw_only=True)
class TrainConfig(LoopConfig):
    RESUME_EXEMPT: ClassVar[tuple[str, ...]] = (
        *LoopConfig.RESUME_EXEMPT,
        "num_workers",
        "query_chunk_size",
        "target_chunk_size",
        "gradient_checkpointing",
        "merge_lora",
        "check_images",
    )

    # model
    model: str = setting(help="base VLM: hub id or local directory")
    family: str | None = setting(
        default=None, choices=sorted(FAMILIES), help="adapter (default: from the model's config.model_type)"
    )
    trust_remote_code: bool = setting(default=False, help="allow the model's own code (Phi-3.5-V)")
    pooling: str = setting(default="last", choices=POOLING_MODES, help="how a sequence becomes one vector")
    normalize: bool = setting(default=True, help="L2-normalise embeddings (--no-normalize turns it off)")
    temperature: float = setting(default=0.02, help="InfoNCE temperature")
    max_text_tokens: int | None = setting(default=256, help="truncate texts to this many tokens (not images)")
    tuning: str = setting(default="lora", choices=TUNING, help="what is trained")
    lora_r: int = setting(default=16, help="LoRA rank")
    lora_alpha: int = setting(default=32, help="LoRA alpha")
    lora_dropout: float = setting(default=0.1, help="LoRA dropout")
    lora_target_modules: str | None = setting(default=None, help="peft regex (default: the family's decoder)")
    gradient_checkpointing: bool = setting(default=False, help="recompute activations in backward")
    dtype: str = setting(default="float32", choices=sorted(DTYPES), help="weight dtype")
    merge_lora: bool = setting(default=False, help="export final/ with LoRA merged into the weights")
    prompt_format: str = setting(
        default="ours",
        choices=PROMPT_FORMATS,
        help="prompt layout: ours, or reference (TIGER-AI-Lab/VLM2Vec's, e.g. Qwen2-VL's bare <|image_pad|>)",
    )
    image_size: int | None = setting(
        default=None,
        help="resize every image to this square first (the reference: 1344 for LLaVA-Next; None: the prompt "
        "format's default, 0: no resize)",
    )
    num_crops: int | None = setting(default=None, help="Phi-3.5-V processor crops (None: the processor's)")
    min_pixels: int | None = setting(
        default=None, help="Qwen2-VL / Qwen2.5-VL processor: fewest pixels per image (None: the processor's)"
    )
    max_pixels: int | None = setting(
        default=None, help="Qwen2-VL / Qwen2.5-VL processor: most pixels per image (None: the processor's)"
    )
    # data
    data: str = setting(help="MMEB-train root: SUBSET/SPLIT*.parquet|jsonl or save_to_disk")
    image_root: str | None = setting(
        default=None, help="folder the image paths are relative to (default --data)"
    )
    subsets: list[str] = setting(
        default_factory=lambda: list(MMEB_TRAIN_SUBSETS), help="MMEB-train subsets (default: all 20)"
    )
    split: str = setting(default="original", choices=SPLITS, help="MMEB-train split")
    num_sample_per_subset: int | None = setting(default=50_000, help="rows taken per subset")
    subset_caps: dict[str, int] = setting(default_factory=dict, help="rows taken for single subsets")
    subset_selection: str = setting(
        default="random",
        choices=SELECTIONS,
        help="which rows a cap keeps: a seeded random sample, or the first N (as VLM2Vec)",
    )
    subset_block_size: int = setting(
        default=0,
        help="build batches from blocks of this many rows of one subset, shuffled across subsets (VLM2Vec-V2: "
        "64); 0 = the whole batch from one subset (or --mixed-batches)",
    )
    mixed_batches: bool = setting(
        default=False, help="mix subsets in a batch (default: one subset per batch)"
    )
    data_mixture: str | None = setting(
        default=None,
        help="a training mixture YAML (VLM2Vec-V2's train_v2.yaml: dataset_parser, weight, num_sample_per_subset "
        "per subset; see docs/mmeb-v2.md), its paths relative to --data; batches of sub-batches of "
        "--subset-block-size rows (0: the whole batch), each from one subset drawn by weight; --subsets, --split, "
        "--num-sample-per-subset, --subset-caps, --subset-selection, --mixed-batches, --hard-negatives and "
        "--image-root do not apply",
    )
    hard_negatives: bool = setting(default=True, help="use neg_text / neg_image_path (--no-hard-negatives)")
    check_images: bool = setting(default=True, help="check every image path up front (--no-check-images)")
    num_workers: int = setting(default=2, help="DataLoader processes")
    # optimisation
    batch_size: int = setting(default=1024, help="global batch (all processes together)")
    query_chunk_size: int = setting(default=0, help="GradCache chunk of queries (0 = no GradCache)")
    target_chunk_size: int = setting(default=0, help="GradCache chunk of targets (0 = no GradCache)")
    optimizer: str = setting(default="adamw", choices=OPTIMIZERS, help="optimizer")
    lr: float = setting(default=2e-5, help="peak learning rate")
    wd: float = setting(default=0.0, help="weight decay (weight matrices only)")
    steps: int = setting(default=2000, help="optimizer steps")
    warmup: float = setting(default=200, help="< 1 = fraction of steps, >= 1 = steps")
    precision: str = setting(
        default="amp_bf16", choices=PRECISIONS, help="autocast dtype on GPU; CPU always trains in fp32"
    )
    # run
    keep_last: int = setting(default=2, help="checkpoints kept (0 = all)")
    log_every: int = setting(default=1, help="log metrics (and check that the loss is finite) every N steps")
