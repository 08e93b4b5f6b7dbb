"""Train an alignment head on cached features: ``python -m align.train --image-features A.h5 --text-features B.h5 ...``.

One optimizer step per global batch (``drop_last``); checkpoints ``OUTPUT/checkpoints/step_N/`` every
``--save-every`` steps and at the end; ``--resume latest`` continues bit for bit (on CPU) from the newest one.
Under ``torchrun`` each process takes its slice of every global batch and the loss gathers the other ranks'
captions as negatives.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
import time
from collections.abc import Sequence

import torch
import torch.distributed as dist
from torch import Tensor
from tqdm import tqdm

from align.config import TrainConfig
from align.data import (
    AlignmentData,
    DataError,
    EvalData,
    backbone_info,
    check_same_model,
    load_eval_data,
    open_store,
)
from align.heads import HEADS, AlignmentHead, HeadConfig
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
from core.losses import clip_loss, siglip_loss
from core.metrics import positive_ranks, recall_at_k
from core.metrics_log import MetricsLogger, check_backends
from core.optim import OPTIMIZERS, build_optimizer, param_groups
from core.precision import PRECISIONS, Precision
from core.schedule import cosine_schedule, warmup_steps_from

log = logging.getLogger("align.train")
LOSSES = ("siglip", "clip")
CHECKPOINT_FORMAT = "align-head"
CHECKPOINT_VERSION = 1
EVAL_CHUNK = 4096


class TrainingError(RuntimeError):
    """Training stopped (e.g. the loss became non-finite); the message names the step."""


# ----- setup ---------------------------------------------------------------------------------------------------
def head_config(cfg: TrainConfig, image_dim: int, text_dim: int) -> HeadConfig:
    target = cfg.target_dim or (image_dim if cfg.head == "sharelock" else 1024)
    return HeadConfig(
        head=cfg.head,
        image_dim=image_dim,
        text_dim=text_dim,
        target_dim=target,
        width_factor=cfg.width_factor,
        hidden_dim=cfg.hidden_dim,
        logit_scale=cfg.logit_scale,
        logit_bias=cfg.logit_bias,
    )


def check_config(cfg: TrainConfig) -> None:
    checks = {
        "head": (cfg.head, HEADS),
        "loss": (cfg.loss, LOSSES),
        "optimizer": (cfg.optimizer, OPTIMIZERS),
        "precision": (cfg.precision, PRECISIONS),
    }
    for name, (value, allowed) in checks.items():
        if value not in allowed:
            raise ValueError(f"unknown {name} {value!r}; choose one of {', '.join(allowed)}")
    for name in ("epochs", "batch_size", "save_every", "log_every", "chunk_size"):
        if getattr(cfg, name) <= 0:
            raise ValueError(f"--{name.replace('_', '-')} must be positive, got {getattr(cfg, name)}")
    if cfg.lr <= 0 or cfg.wd < 0:
        raise ValueError(f"--lr must be > 0 and --wd >= 0, got {cfg.lr} and {cfg.wd}")
    if cfg.val_text_features and not cfg.val_image_features:
        raise ValueError("--val-text-features needs --val-image-features")
    if cfg.val_image_features and not cfg.val_text_features:
        raise ValueError("--val-image-features needs --val-text-features")
    check_backends(cfg.tensorboard, cfg.wandb_project)


def checkpoint_config(cfg: TrainConfig, head: HeadConfig, data: AlignmentData, step: int) -> dict:
    return {
        "format": CHECKPOINT_FORMAT,
        "format_version": CHECKPOINT_VERSION,
        "step": step,
        "head": head.to_dict(),
        "loss": cfg.loss,
        "image_backbone": backbone_info(data.image_meta),
        "text_backbone": backbone_info(data.text_meta),
        "caption_sources": data.caption_sources(),
        "dropped": data.dropped,
        "train": cfg.to_dict(),
    }


# ----- evaluation ----------------------------------------------------------------------------------------------
@torch.no_grad()
def retrieval_metrics(head: AlignmentHead, data: EvalData, device: torch.device) -> dict[str, float]:
    """i2t and t2i R@1/5/10 (percent) of the head on held-out features."""
    was_training = head.training
    head.eval()

    def embed(fn, feats: Tensor) -> Tensor:
        return torch.cat(
            [fn(feats[i : i + EVAL_CHUNK].to(device)).float().cpu() for i in range(0, len(feats), EVAL_CHUNK)]
        )

    image = embed(head.encode_image, data.image)
    text = embed(head.encode_text, data.text)
    head.train(was_training)
    owner = data.caption_image
    image_ids = torch.arange(len(image))
    i2t, t2i = [], []
    for i in range(0, len(image), EVAL_CHUNK):
        q = image[i : i + EVAL_CHUNK]
        i2t.append(positive_ranks(q @ text.T, image_ids[i : i + len(q), None] == owner[None, :]))
    for i in range(0, len(text), EVAL_CHUNK):
        q = text[i : i + EVAL_CHUNK]
        t2i.append(positive_ranks(q @ image.T, owner[i : i + len(q), None] == image_ids[None, :]))
    metrics = recall_at_k(torch.cat(i2t), prefix="val/i2t_R@")
    metrics.update(recall_at_k(torch.cat(t2i), prefix="val/t2i_R@"))
    return metrics


def check_val_stores(cfg: TrainConfig, data: AlignmentData) -> None:
    """Held-out stores must come from the training backbones."""
    image = open_store(cfg.val_image_features, "image", "validation image")
    texts = [open_store(p, "text", "validation caption") for p in cfg.val_text_features]
    try:
        check_same_model([data.image_store, image], "training and validation image")
        check_same_model([data.text_stores[0], *texts], "training and validation caption")
    finally:
        for store in [image, *texts]:
            store.close()


# ----- training ------------------------------------------------------------------------------------------------
def compute_loss(cfg: TrainConfig, head: torch.nn.Module, model: AlignmentHead, batch, group):
    image, text, extra = head(batch.image, batch.text, batch.extra_text)
    if cfg.loss == "siglip":
        return siglip_loss(
            image,
            text,
            model.logit_scale,
            model.logit_bias,
            extra_text=extra,
            chunk_size=cfg.chunk_size,
            group=group,
        )
    return clip_loss(image, text, model.logit_scale, extra_text=extra, chunk_size=cfg.chunk_size, group=group)


def train(cfg: TrainConfig) -> dict[str, float]:
    """Run (or resume) training; returns the last logged metrics. All checks happen before anything is written."""
    check_config(cfg)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(cfg.device, local_rank)
    rank, world, group = init_distributed(device)
    is_main = rank == 0
    resume_path = find_resume(
        cfg.output_dir,
        cfg.resume,
        CHECKPOINT_FORMAT,
        lambda saved: cfg.resume_differences(TrainConfig.from_dict(saved)),
    )
    data = AlignmentData(
        cfg.image_features,
        cfg.text_features,
        cfg.extra_text_features,
        batch_size=cfg.batch_size,
        seed=cfg.seed,
        mode=cfg.data_mode,
        device=device,
        rank=rank,
        world_size=world,
        stream_block=cfg.stream_block,
    )
    if cfg.val_image_features:
        check_val_stores(cfg, data)
    hcfg = head_config(cfg, data.image_meta.dim, data.text_meta.dim)
    total_steps = cfg.epochs * data.steps_per_epoch
    warmup = warmup_steps_from(cfg.warmup, total_steps)
    precision = Precision(cfg.precision, device)

    torch.manual_seed(cfg.seed)
    model = AlignmentHead(hcfg).to(device)
    optimizer = build_optimizer(
        cfg.optimizer, param_groups(model, cfg.wd, cfg.decay_norm_and_bias), lr=cfg.lr, betas=cfg.betas
    )
    scheduler = cosine_schedule(optimizer, total_steps, warmup)
    start_step = 0
    if resume_path is not None:
        ckpt = load_checkpoint(resume_path, device)
        model.load_state_dict(ckpt.model_state, strict=True)
        start_step = restore_trainer_state(ckpt.trainer_state, optimizer, scheduler, precision)
        restore_rng(ckpt.trainer_state, device)
        log.info("resumed from %s at step %d", resume_path, start_step)
    head: torch.nn.Module = model
    if world > 1:
        head = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    eval_data = (
        load_eval_data(cfg.val_image_features, cfg.val_text_features) if cfg.val_image_features else None
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
        log.info(
            "%d pairs (%s), %d steps/epoch, %d steps, warmup %d, data in %s, device %s x%d, %.1fM head parameters",
            data.num_pairs,
            ", ".join(f"dropped {v} {k}" for k, v in data.dropped.items()) or "nothing dropped",
            data.steps_per_epoch,
            total_steps,
            warmup,
            data.mode,
            device,
            world,
            sum(p.numel() for p in model.parameters()) / 1e6,
        )
    params = [p for p in model.parameters() if p.requires_grad]
    first_bad = torch.full((), -1, dtype=torch.long, device=device)
    sums = torch.zeros(3, dtype=torch.float64, device=device)
    window_steps, window_start = 0, time.perf_counter()
    last: dict[str, float] = {}
    bar = tqdm(total=total_steps, initial=start_step, disable=not (cfg.progress and is_main), unit="step")

    def check_finite() -> None:
        flag = first_bad.clone()
        if world > 1:  # every rank stops together, naming the first bad step of any rank
            flag = torch.where(flag < 0, total_steps, flag)
            dist.all_reduce(flag, op=dist.ReduceOp.MIN)
            flag = torch.where(flag == total_steps, -1, flag)
        bad = int(flag)
        if bad >= 0:
            raise TrainingError(
                f"the loss became non-finite at step {bad + 1} (NaN or inf); the weights after it were not saved. "
                "Lower --lr, use --grad-clip, or check the features for NaN; resume from the last checkpoint."
            )

    try:
        for step in range(start_step, total_steps):
            epoch, index = divmod(step, data.steps_per_epoch)
            batch = data.batch(epoch, index)
            with precision.autocast():
                out = compute_loss(cfg, head, model, batch, group)
            optimizer.zero_grad(set_to_none=True)
            precision.backward(out.loss)
            precision.step(optimizer, params, cfg.grad_clip)
            scheduler.step()
            model.clamp_logit_scale_()
            loss = out.loss.detach()
            first_bad = torch.where((first_bad < 0) & ~torch.isfinite(loss), step, first_bad)
            sums += torch.stack([loss, out.positive.detach(), out.negative.detach()]).double()
            window_steps += 1
            done = step + 1
            validate = eval_data is not None and (
                done == total_steps or (cfg.val_every > 0 and done % cfg.val_every == 0)
            )
            if validate or done % cfg.log_every == 0 or done == total_steps or done % cfg.save_every == 0:
                check_finite()
                elapsed = time.perf_counter() - window_start
                mean = (sums / window_steps).tolist()
                last = {
                    "loss": mean[0],
                    "positive": mean[1],
                    "negative": mean[2],
                    "logit_scale": float(model.logit_scale.detach()),
                    "logit_bias": float(model.logit_bias.detach()),
                    "lr": optimizer.param_groups[0]["lr"],
                    "pairs_per_s": window_steps * cfg.batch_size / max(elapsed, 1e-9),
                    "epoch": epoch,
                }
                if validate:
                    last.update(retrieval_metrics(model, eval_data, device))
                logger.log(done, last)
                bar.set_postfix(
                    loss=f"{last['loss']:.4f}", lr=f"{last['lr']:.2e}", pairs_s=f"{last['pairs_per_s']:.0f}"
                )
                sums.zero_()
                window_steps, window_start = 0, time.perf_counter()
            if is_main and (done % cfg.save_every == 0 or done == total_steps):
                state = trainer_state(
                    done,
                    optimizer,
                    scheduler,
                    precision,
                    device,
                    epoch=done // data.steps_per_epoch,
                    batch_in_epoch=done % data.steps_per_epoch,
                    world_size=world,
                )
                save_checkpoint(
                    cfg.output_dir,
                    done,
                    model.state_dict(),
                    checkpoint_config(cfg, hcfg, data, done),
                    state,
                    cfg.keep_last,
                )
            bar.update(1)
    finally:
        bar.close()
        data.close()
        logger.close()
    if is_main:
        curve = logger.plot("loss")
        if curve:
            log.info("loss curve: %s", curve)
    if world > 1:
        dist.barrier()
    return last


# ----- CLI -----------------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m align.train",
        description="Train an alignment head (SAIL-style) on cached image and caption features (HDF5 stores).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    d = TrainConfig
    g = p.add_argument_group("data")
    g.add_argument(
        "--image-features", required=True, help="image feature store (.h5) from `python -m encode image`"
    )
    g.add_argument(
        "--text-features",
        required=True,
        nargs="+",
        help="caption stores (several = several captions per image)",
    )
    g.add_argument(
        "--extra-text-features",
        nargs="+",
        default=[],
        help="stores of a second positive caption per image (SAIL's extra_text)",
    )
    g.add_argument("--val-image-features", help="held-out image store for i2t/t2i R@1/5/10")
    g.add_argument("--val-text-features", nargs="+", default=[], help="held-out caption stores")
    g.add_argument(
        "--data-mode",
        default=d.data_mode,
        choices=["auto", "ram", "gpu", "stream"],
        help="where batches are assembled from; stream = block-shuffled HDF5 reads",
    )
    g.add_argument(
        "--stream-block", type=int, default=d.stream_block, help="pairs per shuffled block in stream mode"
    )
    g = p.add_argument_group("head")
    g.add_argument("--head", default=d.head, choices=HEADS)
    g.add_argument(
        "--width-factor",
        type=int,
        default=d.width_factor,
        help="star head: hidden width = factor x input dim",
    )
    g.add_argument(
        "--target-dim",
        type=int,
        default=None,
        help="embedding dim (default 1024; the image dim for sharelock)",
    )
    g.add_argument(
        "--hidden-dim",
        type=int,
        default=None,
        help="hidden width of mlp (default 4 x in) and sharelock (default 4096)",
    )
    g.add_argument(
        "--logit-scale",
        type=float,
        default=d.logit_scale,
        help="initial logit scale (learned as a log, clamped to <= 100)",
    )
    g.add_argument("--logit-bias", type=float, default=d.logit_bias, help="initial logit bias (siglip)")
    g = p.add_argument_group("optimisation")
    g.add_argument("--loss", default=d.loss, choices=LOSSES)
    g.add_argument("--chunk-size", type=int, default=d.chunk_size, help="block size of the chunked loss")
    g.add_argument(
        "--batch-size", type=int, default=d.batch_size, help="global batch (all processes together)"
    )
    g.add_argument("--optimizer", default=d.optimizer, choices=OPTIMIZERS)
    g.add_argument("--lr", type=float, default=d.lr)
    g.add_argument(
        "--wd",
        type=float,
        default=d.wd,
        help="weight decay (weight matrices only unless --decay-norm-and-bias)",
    )
    g.add_argument(
        "--decay-norm-and-bias",
        action="store_true",
        help="also decay norms, biases and logit scale/bias (SAIL's behaviour)",
    )
    g.add_argument(
        "--betas",
        type=float,
        nargs=2,
        default=None,
        help="optimizer betas (default lion 0.9 0.99, adamw 0.9 0.999)",
    )
    g.add_argument("--epochs", type=int, default=d.epochs)
    g.add_argument(
        "--warmup", type=float, default=d.warmup, help="warmup: < 1 = fraction of all steps, >= 1 = steps"
    )
    g.add_argument("--grad-clip", type=float, default=None, help="clip the global grad norm to this value")
    g.add_argument(
        "--precision",
        default=d.precision,
        choices=PRECISIONS,
        help="autocast dtype on GPU; CPU always runs fp32",
    )
    g.add_argument("--seed", type=int, default=d.seed)
    g = p.add_argument_group("run")
    g.add_argument("--output-dir", required=True)
    g.add_argument(
        "--resume",
        default=None,
        help="'latest' (newest checkpoint in --output-dir, or start fresh) or a step_N dir",
    )
    g.add_argument(
        "--save-every", type=int, default=d.save_every, help="checkpoint every N steps (and at the end)"
    )
    g.add_argument("--keep-last", type=int, default=d.keep_last, help="checkpoints kept (0 = all)")
    g.add_argument(
        "--log-every",
        type=int,
        default=d.log_every,
        help="log metrics (and check the loss is finite) every N steps",
    )
    g.add_argument(
        "--val-every", type=int, default=d.val_every, help="validate every N steps (0 = only at the end)"
    )
    g.add_argument(
        "--tensorboard", action="store_true", help="also log to OUTPUT/tensorboard (needs tensorboard)"
    )
    g.add_argument("--wandb-project", default=None, help="also log to this wandb project (needs wandb)")
    g.add_argument("--device", default=d.device, help="auto, cpu, cuda or cuda:N")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    values = vars(args).copy()
    values["progress"] = not values.pop("no_progress")
    if values["betas"] is not None:
        values["betas"] = tuple(values["betas"])
    return TrainConfig(**values)


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = config_from_args(build_parser().parse_args(argv))
    try:
        metrics = train(cfg)
    except (DataError, ValueError, TrainingError) as err:
        log.error("%s", err)
        return 2 if not isinstance(err, TrainingError) else 1
    finally:
        leave_process_group()
    if metrics and int(os.environ.get("RANK", "0")) == 0:
        summary = " ".join(
            f"{k}={v:.4g}" for k, v in metrics.items() if isinstance(v, float) and math.isfinite(v)
        )
        sys.stdout.write(summary + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
