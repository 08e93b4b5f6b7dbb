"""`python -m vlm2vec.train`: contrastive fine-tuning of a VLM on MMEB-train or on a data mixture of image, video
and visual-document subsets (`--data-mixture`, :mod:`vlm2vec.mixture`) (InfoNCE, GradCache, LoRA/DoRA).

The loop (schedule, precision, the non-finite check, checkpoints with exact resume, metrics.jsonl) is
:class:`core.loop.TrainingLoop`, shared with ``align.train``; this module supplies the step
(:class:`ContrastiveTask`). Launch with `torchrun --nproc_per_node=N -m vlm2vec.train ...` for several GPUs.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.distributed as dist
from torch import Tensor
from torch.utils.data import DataLoader

from core.cli import ConfigParser, run_training_cli
from core.device import resolve_device
from core.distributed import init_distributed, wrap_ddp
from core.loop import TrainingError, TrainingLoop, TrainTask
from core.losses import LossOutput, info_nce_loss
from core.optim import build_optimizer, param_groups
from core.precision import DTYPES, PRECISIONS, Precision
from core.preemption import ignore_preemption_signals
from core.schedule import cosine_schedule, warmup_steps_from
from vlm2vec.adapters import FAMILIES
from vlm2vec.config import TUNING, TrainConfig
from vlm2vec.data import (
    MMEB_TRAIN_SUBSETS,
    SPLITS,
    ContrastiveBatch,
    ContrastiveCollator,
    MMEBBatchSampler,
    MMEBDataError,
    MMEBTrainData,
)
from vlm2vec.gradcache import grad_cache_step
from vlm2vec.mixture import MixtureBatchSampler, MixtureData, MixtureError, read_mixture
from vlm2vec.model import TRAIN_FORMAT, LoraSettings, VLM2VecModel
from vlm2vec.pooling import POOLING_MODES

log = logging.getLogger(__name__)

__all__ = ["TrainingError", "build_parser", "main", "train"]


def check_config(cfg: TrainConfig) -> None:
    """Every setting checked before any model or data is loaded."""
    if cfg.tuning not in TUNING:
        raise ValueError(f"--tuning must be one of {TUNING}, got {cfg.tuning!r}")
    if cfg.family is not None and cfg.family not in FAMILIES:
        raise ValueError(f"unknown --family {cfg.family!r}; choose one of {sorted(FAMILIES)}")
    if cfg.pooling not in POOLING_MODES:
        raise ValueError(f"unknown --pooling {cfg.pooling!r}; choose one of {POOLING_MODES}")
    if cfg.precision not in PRECISIONS or cfg.dtype not in DTYPES:
        raise ValueError(f"--precision must be in {PRECISIONS} and --dtype in {sorted(DTYPES)}")
    if cfg.split not in SPLITS:
        raise ValueError(f"--split must be one of {SPLITS}, got {cfg.split!r}")
    unknown = sorted(set(cfg.subsets) - set(MMEB_TRAIN_SUBSETS))
    if unknown:
        raise ValueError(f"unknown --subsets {unknown}; MMEB-train has {', '.join(MMEB_TRAIN_SUBSETS)}")
    if cfg.batch_size < 1 or cfg.steps < 1 or cfg.temperature <= 0 or cfg.lr <= 0:
        raise ValueError("--batch-size, --steps, --temperature and --lr must be > 0")
    if cfg.query_chunk_size < 0 or cfg.target_chunk_size < 0:
        raise ValueError("--query-chunk-size and --target-chunk-size must be >= 0 (0 = no GradCache)")
    if not Path(cfg.data).is_dir():
        raise ValueError(
            f"--data {cfg.data} is not a directory (the MMEB-train root with one folder per subset, or the "
            "root the --data-mixture paths are relative to)"
        )
    if cfg.data_mixture is not None:
        read_mixture(cfg.data_mixture)  # the file's format, before any data is read


def build_model(cfg: TrainConfig, device: torch.device) -> VLM2VecModel:
    model = VLM2VecModel.from_backbone(
        cfg.model,
        family=cfg.family,
        pooling=cfg.pooling,
        normalize=cfg.normalize,
        temperature=cfg.temperature,
        max_text_tokens=cfg.max_text_tokens,
        dtype=cfg.dtype,
        trust_remote_code=cfg.trust_remote_code,
        prompt_format=cfg.prompt_format,
        image_size=cfg.image_size,
        num_crops=cfg.num_crops,
        min_pixels=cfg.min_pixels,
        max_pixels=cfg.max_pixels,
    )
    if cfg.tuning != "full":
        model.add_lora(
            LoraSettings(
                cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout, cfg.tuning == "dora", cfg.lora_target_modules
            )
        )
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    return model.to(device).train()


def contrastive_step(
    net: torch.nn.Module,
    batch: ContrastiveBatch,
    cfg: TrainConfig,
    precision: Precision,
    group: dist.ProcessGroup | None,
):
    """Forward + backward of one batch: GradCache when chunked, else one plain forward of each side."""
    device = next(net.parameters()).device
    mask = batch.positive_mask.to(device)

    def encode(chunk):
        with precision.autocast():
            return net(chunk)

    def loss_fn(query, target):
        return info_nce_loss(query, target, mask, temperature=cfg.temperature, group=group)

    if len(batch.query_chunks) == 1 and len(batch.target_chunks) == 1:
        out = loss_fn(encode(batch.query_chunks[0]), encode(batch.target_chunks[0]))
        precision.backward(out.loss)
        return out
    no_sync = net.no_sync if isinstance(net, torch.nn.parallel.DistributedDataParallel) else None
    scale = precision.scaler.scale if precision.scaler.is_enabled() else None
    return grad_cache_step(
        encode, batch.query_chunks, batch.target_chunks, loss_fn, no_sync=no_sync, scale=scale
    )


class ContrastiveTask(TrainTask):
    """One step = one global batch of (query, target) pairs through the VLM, InfoNCE and GradCache."""

    weights_name = "model.safetensors"

    def __init__(
        self,
        cfg: TrainConfig,
        model: VLM2VecModel,
        batches,
        device: torch.device,
        world: int,
        group: dist.ProcessGroup | None,
        steps_per_epoch: int,
    ) -> None:
        self.cfg, self.model, self.batches, self.group = cfg, model, batches, group
        self.steps_per_epoch, self.world = steps_per_epoch, world
        # Full fine-tuning: a text-only chunk leaves the vision tower unused.
        self.net = wrap_ddp(model, device, world, find_unused_parameters=cfg.tuning == "full")

    def forward_backward(self, step: int, precision: Precision) -> LossOutput:
        return contrastive_step(self.net, next(self.batches), self.cfg, precision, self.group)

    def log_values(self, step: int, done: int) -> dict[str, float]:
        return {"epoch": step // self.steps_per_epoch}

    def checkpoint_weights(self) -> dict[str, Tensor]:
        return self.model.trainable_state_dict()

    def checkpoint_config(self, done: int) -> dict:
        return {
            "format": TRAIN_FORMAT,
            "train": self.cfg.to_dict(),
            "model": self.model.config.to_dict(),
            "step": done,
        }

    def export(self) -> None:
        final = self.model.save_pretrained(
            Path(self.cfg.output_dir) / "final", merge_lora=self.cfg.merge_lora
        )
        log.info("model saved to %s (load with VLM2VecModel.from_pretrained)", final)


def load_training_data(cfg: TrainConfig) -> MMEBTrainData | MixtureData:
    """MMEB-train's subsets, or the subsets of ``--data-mixture`` (paths relative to ``--data``)."""
    if cfg.data_mixture is not None:
        return MixtureData(cfg.data, read_mixture(cfg.data_mixture))
    return MMEBTrainData(
        cfg.data,
        cfg.image_root or cfg.data,
        cfg.subsets,
        cfg.split,
        cap=cfg.num_sample_per_subset,
        subset_caps=cfg.subset_caps,
        use_negatives=cfg.hard_negatives,
        seed=cfg.seed,
        check_images=cfg.check_images,
        selection=cfg.subset_selection,
    )


def batch_sampler(
    cfg: TrainConfig, data: MMEBTrainData | MixtureData, start_step: int, world: int, rank: int
) -> MMEBBatchSampler | MixtureBatchSampler:
    """This rank's batches from ``start_step`` on: a mixture's weighted sub-batches of ``--subset-block-size``
    rows (0: the whole global batch from one subset), else MMEB-train's batches."""
    if isinstance(data, MixtureData):
        return MixtureBatchSampler(
            data.subset_sizes,
            data.weights,
            cfg.batch_size // world,
            sub_batch_size=cfg.subset_block_size or cfg.batch_size,
            total_steps=cfg.steps,
            seed=cfg.seed,
            start_step=start_step,
            world_size=world,
            rank=rank,
        )
    return MMEBBatchSampler(
        data.subset_sizes,
        cfg.batch_size // world,
        mixed=cfg.mixed_batches,
        seed=cfg.seed,
        start_step=start_step,
        total_steps=cfg.steps,
        world_size=world,
        rank=rank,
        block_size=cfg.subset_block_size,
    )


def train(cfg: TrainConfig) -> dict[str, float]:
    """Run (or resume) training; returns the last logged metrics. All checks happen before anything is written."""
    check_config(cfg)
    device = resolve_device(cfg.device, int(os.environ.get("LOCAL_RANK", "0")))
    rank, world, group = init_distributed(device)
    if cfg.batch_size % world:
        raise ValueError(f"--batch-size {cfg.batch_size} (global) must be divisible by the {world} processes")
    loop = TrainingLoop(
        cfg,
        device=device,
        rank=rank,
        world=world,
        checkpoint_format=TRAIN_FORMAT,
        differences=lambda saved: cfg.resume_differences(TrainConfig.from_dict(saved)),
    )
    data = load_training_data(cfg)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg, device)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = build_optimizer(cfg.optimizer, param_groups(model, cfg.wd), lr=cfg.lr)
    scheduler = cosine_schedule(optimizer, cfg.steps, warmup_steps_from(cfg.warmup, cfg.steps))
    start_step = loop.restore(model.load_trainable_state_dict, optimizer, scheduler)
    sampler = batch_sampler(cfg, data, start_step, world, rank)
    collate = ContrastiveCollator(model.preparer, cfg.query_chunk_size, cfg.target_chunk_size)
    loader = DataLoader(
        data,
        batch_sampler=sampler,
        collate_fn=collate,
        num_workers=cfg.num_workers,
        worker_init_fn=ignore_preemption_signals,
    )
    task = ContrastiveTask(cfg, model, iter(loader), device, world, group, sampler.steps_per_epoch)
    if rank == 0:
        Path(cfg.output_dir).mkdir(parents=True, exist_ok=True)
        (Path(cfg.output_dir) / "train_config.json").write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")
        log.info(
            "%d examples in %d subsets, %d steps/epoch, %d steps, device %s x%d, %.2fM trainable parameters",
            len(data),
            len(data.subsets),
            sampler.steps_per_epoch,
            cfg.steps,
            device,
            world,
            sum(p.numel() for p in params) / 1e6,
        )
    return loop.run(
        task,
        optimizer,
        scheduler,
        params,
        total_steps=cfg.steps,
        pairs_per_step=cfg.batch_size,
        run_config=cfg.to_dict(),
    )


def build_parser() -> ConfigParser:
    return ConfigParser(
        TrainConfig,
        prog="python -m vlm2vec.train",
        description="Turn a VLM into an embedding model on MMEB-train (VLM2Vec), or on a data mixture of image, "
        "video and visual-document subsets (VLM2Vec-V2, --data-mixture): last-token pooling, InfoNCE with "
        "in-batch and hard negatives, GradCache for large batches, LoRA/DoRA or full fine-tuning.",
    )


def main(argv: Sequence[str] | None = None) -> int:
    return run_training_cli(build_parser(), train, argv, input_errors=(MMEBDataError, MixtureError))


if __name__ == "__main__":
    raise SystemExit(main())
