"""`python -m vlm2vec.train`: contrastive fine-tuning of a VLM on MMEB-train (InfoNCE, GradCache, LoRA/DoRA).

Shares align/'s training infrastructure: schedule, optimizer, precision, checkpoints (exact resume) and
metrics.jsonl. Launch with `torchrun --nproc_per_node=N -m vlm2vec.train ...` for several GPUs.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import time
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader
from tqdm import tqdm

from core.checkpoint import (
    find_resume,
    load_checkpoint,
    restore_rng,
    restore_trainer_state,
    save_checkpoint,
    trainer_state,
)
from core.device import resolve_device
from core.distributed import init_distributed, leave_process_group
from core.losses import info_nce_loss
from core.metrics_log import MetricsLogger, check_backends
from core.optim import OPTIMIZERS, build_optimizer, param_groups
from core.precision import PRECISIONS, Precision
from core.schedule import cosine_schedule, warmup_steps_from
from vlm2vec.adapters import FAMILIES
from vlm2vec.config import TrainConfig
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
from vlm2vec.model import DTYPES, TRAIN_FORMAT, LoraSettings, VLM2VecModel
from vlm2vec.pooling import POOLING_MODES

log = logging.getLogger(__name__)
TUNING = ("lora", "dora", "full")


class TrainingError(RuntimeError):
    """Training stopped (e.g. the loss became non-finite); the message names the step."""


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
    if cfg.save_every < 1 or cfg.log_every < 1:
        raise ValueError("--save-every and --log-every must be >= 1")
    if not Path(cfg.data).is_dir():
        raise ValueError(
            f"--data {cfg.data} is not a directory (the MMEB-train root with one folder per subset)"
        )
    check_backends(cfg.tensorboard, cfg.wandb_project)


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


def train(cfg: TrainConfig) -> dict[str, float]:
    """Run (or resume) training; returns the last logged metrics. All checks happen before anything is written."""
    check_config(cfg)
    device = resolve_device(cfg.device, int(os.environ.get("LOCAL_RANK", "0")))
    rank, world, group = init_distributed(device)
    if cfg.batch_size % world:
        raise ValueError(f"--batch-size {cfg.batch_size} (global) must be divisible by the {world} processes")
    is_main = rank == 0
    resume_path = find_resume(
        cfg.output_dir,
        cfg.resume,
        TRAIN_FORMAT,
        lambda saved: cfg.resume_differences(TrainConfig.from_dict(saved)),
    )
    data = MMEBTrainData(
        cfg.data,
        cfg.image_root or cfg.data,
        cfg.subsets,
        cfg.split,
        cap=cfg.num_sample_per_subset,
        subset_caps=cfg.subset_caps,
        use_negatives=cfg.hard_negatives,
        seed=cfg.seed,
        check_images=cfg.check_images,
    )
    precision = Precision(cfg.precision, device)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg, device)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = build_optimizer(cfg.optimizer, param_groups(model, cfg.wd), lr=cfg.lr)
    scheduler = cosine_schedule(optimizer, cfg.steps, warmup_steps_from(cfg.warmup, cfg.steps))
    start_step, resumed_state = 0, None
    if resume_path is not None:
        ckpt = load_checkpoint(resume_path, device)
        model.load_trainable_state_dict(ckpt.model_state)
        resumed_state = ckpt.trainer_state
        start_step = restore_trainer_state(resumed_state, optimizer, scheduler, precision)
        log.info("resumed from %s at step %d", resume_path, start_step)
    sampler = MMEBBatchSampler(
        data.subset_sizes,
        cfg.batch_size // world,
        mixed=cfg.mixed_batches,
        seed=cfg.seed,
        start_step=start_step,
        total_steps=cfg.steps,
        world_size=world,
        rank=rank,
    )
    collate = ContrastiveCollator(model.preparer, cfg.query_chunk_size, cfg.target_chunk_size)
    loader = DataLoader(data, batch_sampler=sampler, collate_fn=collate, num_workers=cfg.num_workers)
    batches = iter(loader)
    if resumed_state is not None:  # after the loader drew its seed, so dropout continues exactly
        restore_rng(resumed_state, device)
    net: torch.nn.Module = model
    if world > 1:
        # Full fine-tuning: a text-only chunk leaves the vision tower unused.
        net = torch.nn.parallel.DistributedDataParallel(
            model,
            device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=cfg.tuning == "full",
        )
    logger = MetricsLogger(
        cfg.output_dir,
        resume_step=start_step if resume_path else None,
        tensorboard=cfg.tensorboard,
        wandb_project=cfg.wandb_project,
        run_config=cfg.to_dict(),
        enabled=is_main,
    )
    if is_main:
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
    sums = torch.zeros(3, dtype=torch.float64, device=device)
    first_bad = torch.full((), -1, dtype=torch.long, device=device)
    window_steps, window_start, last = 0, time.perf_counter(), {}
    bar = tqdm(total=cfg.steps, initial=start_step, disable=not (cfg.progress and is_main), unit="step")
    try:
        for step in range(start_step, cfg.steps):
            batch = next(batches)
            optimizer.zero_grad(set_to_none=True)
            out = contrastive_step(net, batch, cfg, precision, group)
            precision.step(optimizer, params, cfg.grad_clip)
            scheduler.step()
            loss = out.loss.detach()
            first_bad = torch.where((first_bad < 0) & ~torch.isfinite(loss), step, first_bad)
            sums += torch.stack([loss, out.positive.detach(), out.negative.detach()]).double()
            window_steps += 1
            done = step + 1
            if done % cfg.log_every == 0 or done == cfg.steps or done % cfg.save_every == 0:
                if int(first_bad) >= 0:
                    raise TrainingError(
                        f"the loss became non-finite at step {int(first_bad) + 1}; the weights after it were not "
                        "saved. Lower --lr or use --grad-clip, then resume from the last checkpoint."
                    )
                mean = (sums / window_steps).tolist()
                elapsed = max(time.perf_counter() - window_start, 1e-9)
                last = {
                    "loss": mean[0],
                    "positive": mean[1],
                    "negative": mean[2],
                    "lr": optimizer.param_groups[0]["lr"],
                    "pairs_per_s": window_steps * cfg.batch_size / elapsed,
                    "epoch": step // sampler.steps_per_epoch,
                }
                logger.log(done, last)
                bar.set_postfix(loss=f"{last['loss']:.4f}", lr=f"{last['lr']:.2e}")
                sums.zero_()
                window_steps, window_start = 0, time.perf_counter()
            if is_main and (done % cfg.save_every == 0 or done == cfg.steps):
                _save(cfg, model, optimizer, scheduler, precision, device, done, world)
            bar.update(1)
    finally:
        bar.close()
        logger.close()
    if is_main:
        final = model.save_pretrained(Path(cfg.output_dir) / "final", merge_lora=cfg.merge_lora)
        log.info("model saved to %s (load with VLM2VecModel.from_pretrained)", final)
        logger.plot("loss")
    if world > 1:
        dist.barrier()
    return last


def _save(cfg, model, optimizer, scheduler, precision, device, done, world) -> None:
    config = {
        "format": TRAIN_FORMAT,
        "train": cfg.to_dict(),
        "model": model.config.to_dict(),
        "step": done,
    }
    save_checkpoint(
        cfg.output_dir,
        done,
        model.trainable_state_dict(),
        config,
        trainer_state(done, optimizer, scheduler, precision, device, world_size=world),
        cfg.keep_last,
        weights_name="model.safetensors",
    )


def _caps(values: Sequence[str]) -> dict[str, int]:
    caps = {}
    for value in values:
        name, sep, count = value.partition("=")
        if not sep or not count.isdigit():
            raise argparse.ArgumentTypeError(f"--subset-cap expects NAME=COUNT, got {value!r}")
        caps[name] = int(count)
    return caps


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m vlm2vec.train",
        description="Turn a VLM into an embedding model on MMEB-train (VLM2Vec): last-token pooling, InfoNCE "
        "with in-batch and hard negatives, GradCache for large batches, LoRA/DoRA or full fine-tuning.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    d = TrainConfig
    g = p.add_argument_group("model")
    g.add_argument("--model", required=True, help="base VLM: hub id or local directory")
    g.add_argument(
        "--family", default=None, choices=sorted(FAMILIES), help="adapter (default: from config.json)"
    )
    g.add_argument("--trust-remote-code", action="store_true", help="allow the model's own code (Phi-3.5-V)")
    g.add_argument("--pooling", default=d.pooling, choices=POOLING_MODES)
    g.add_argument("--no-normalize", action="store_true", help="do not L2-normalise embeddings")
    g.add_argument("--temperature", type=float, default=d.temperature)
    g.add_argument(
        "--max-text-tokens", type=int, default=d.max_text_tokens, help="truncate texts (not images)"
    )
    g.add_argument("--tuning", default=d.tuning, choices=TUNING)
    g.add_argument("--lora-r", type=int, default=d.lora_r)
    g.add_argument("--lora-alpha", type=int, default=d.lora_alpha)
    g.add_argument("--lora-dropout", type=float, default=d.lora_dropout)
    g.add_argument("--lora-target-modules", default=None, help="peft regex (default: the family's decoder)")
    g.add_argument("--gradient-checkpointing", action="store_true")
    g.add_argument("--dtype", default=d.dtype, choices=sorted(DTYPES), help="weight dtype")
    g.add_argument(
        "--merge-lora", action="store_true", help="export final/ with LoRA merged into the weights"
    )
    g = p.add_argument_group("data")
    g.add_argument(
        "--data", required=True, help="MMEB-train root: SUBSET/SPLIT*.parquet|jsonl or save_to_disk"
    )
    g.add_argument(
        "--image-root", default=None, help="folder the image paths are relative to (default --data)"
    )
    g.add_argument("--subsets", nargs="+", default=list(MMEB_TRAIN_SUBSETS), help="MMEB-train subsets")
    g.add_argument("--split", default=d.split, choices=SPLITS)
    g.add_argument(
        "--num-sample-per-subset", type=int, default=d.num_sample_per_subset, help="cap per subset"
    )
    g.add_argument("--subset-cap", nargs="+", default=[], metavar="NAME=N", help="caps for single subsets")
    g.add_argument(
        "--mixed-batches", action="store_true", help="mix subsets in a batch (default: one per batch)"
    )
    g.add_argument("--no-hard-negatives", action="store_true", help="ignore neg_text / neg_image_path")
    g.add_argument("--no-check-images", action="store_true", help="skip checking every image path up front")
    g.add_argument("--num-workers", type=int, default=d.num_workers)
    g = p.add_argument_group("optimisation")
    g.add_argument("--batch-size", type=int, default=d.batch_size, help="global batch (all processes)")
    g.add_argument(
        "--query-chunk-size", type=int, default=d.query_chunk_size, help="GradCache chunk (0 = off)"
    )
    g.add_argument(
        "--target-chunk-size", type=int, default=d.target_chunk_size, help="GradCache chunk (0 = off)"
    )
    g.add_argument("--optimizer", default=d.optimizer, choices=OPTIMIZERS)
    g.add_argument("--lr", type=float, default=d.lr)
    g.add_argument("--wd", type=float, default=d.wd)
    g.add_argument("--steps", type=int, default=d.steps)
    g.add_argument("--warmup", type=float, default=d.warmup, help="< 1 = fraction of steps, >= 1 = steps")
    g.add_argument("--grad-clip", type=float, default=None)
    g.add_argument("--precision", default=d.precision, choices=PRECISIONS, help="CPU always runs fp32")
    g.add_argument("--seed", type=int, default=d.seed)
    g = p.add_argument_group("run")
    g.add_argument("--output-dir", required=True)
    g.add_argument("--resume", default=None, help="'latest' (or start fresh) or a checkpoints/step_N dir")
    g.add_argument("--save-every", type=int, default=d.save_every)
    g.add_argument("--keep-last", type=int, default=d.keep_last, help="checkpoints kept (0 = all)")
    g.add_argument("--log-every", type=int, default=d.log_every)
    g.add_argument("--tensorboard", action="store_true")
    g.add_argument("--wandb-project", default=None)
    g.add_argument("--device", default=d.device, help="auto, cpu, cuda or cuda:N")
    g.add_argument("--no-progress", action="store_true")
    return p


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    values = vars(args).copy()
    values["progress"] = not values.pop("no_progress")
    values["normalize"] = not values.pop("no_normalize")
    values["hard_negatives"] = not values.pop("no_hard_negatives")
    values["check_images"] = not values.pop("no_check_images")
    values["subset_caps"] = _caps(values.pop("subset_cap"))
    return TrainConfig(**values)


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        cfg = config_from_args(args)
    except argparse.ArgumentTypeError as err:
        parser.error(str(err))
    try:
        metrics = train(cfg)
    except (MMEBDataError, ValueError, TrainingError) as err:
        log.error("%s", err)
        return 1 if isinstance(err, TrainingError) else 2
    finally:
        leave_process_group()
    if metrics and int(os.environ.get("RANK", "0")) == 0:
        summary = " ".join(
            f"{k}={v:.4g}" for k, v in metrics.items() if isinstance(v, float) and math.isfinite(v)
        )
        print(summary)  # noqa: T201
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
