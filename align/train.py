"""Train an alignment head on cached features: ``python -m align.train --image-features A.h5 --text-features B.h5 ...``.

One optimizer step per global batch (``drop_last``); checkpoints ``OUTPUT/checkpoints/step_N/`` every
``--save-every`` steps and at the end; ``--resume latest`` continues bit for bit (on CPU) from the newest one.
Under ``torchrun`` each process takes its slice of every global batch and the loss gathers the other ranks'
captions as negatives. The loop itself (resume, precision, the non-finite check, logging, checkpoints) is
:class:`core.loop.TrainingLoop`; this module supplies the step (:class:`AlignTask`).
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence

import torch
from torch import Tensor

from align.config import LOSSES, TrainConfig
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
from core.cli import ConfigParser, run_training_cli
from core.device import resolve_device
from core.distributed import init_distributed, wrap_ddp
from core.loop import TrainingError, TrainingLoop, TrainTask
from core.losses import LossOutput, clip_loss, siglip_loss
from core.metrics import image_text_retrieval
from core.optim import OPTIMIZERS, build_optimizer, param_groups
from core.precision import PRECISIONS, Precision
from core.schedule import cosine_schedule, warmup_steps_from

log = logging.getLogger("align.train")
CHECKPOINT_FORMAT = "align-head"
CHECKPOINT_VERSION = 1
EVAL_CHUNK = 4096

__all__ = ["TrainingError", "build_parser", "main", "train"]


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
    """Settings a command line cannot check by itself (a config built in code goes through here too)."""
    checks = {
        "head": (cfg.head, HEADS),
        "loss": (cfg.loss, LOSSES),
        "optimizer": (cfg.optimizer, OPTIMIZERS),
        "precision": (cfg.precision, PRECISIONS),
    }
    for name, (value, allowed) in checks.items():
        if value not in allowed:
            raise ValueError(f"unknown {name} {value!r}; choose one of {', '.join(allowed)}")
    for name in ("epochs", "batch_size", "chunk_size"):
        if getattr(cfg, name) <= 0:
            raise ValueError(f"--{name.replace('_', '-')} must be positive, got {getattr(cfg, name)}")
    if cfg.lr <= 0 or cfg.wd < 0:
        raise ValueError(f"--lr must be > 0 and --wd >= 0, got {cfg.lr} and {cfg.wd}")
    if cfg.val_text_features and not cfg.val_image_features:
        raise ValueError("--val-text-features needs --val-image-features")
    if cfg.val_image_features and not cfg.val_text_features:
        raise ValueError("--val-image-features needs --val-text-features")


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
    """i2t and t2i R@1/5/10 (percent) of the head on held-out features, keyed ``val/i2t_R@k``."""
    was_training = head.training
    head.eval()

    def embed(fn, feats: Tensor) -> Tensor:
        return torch.cat(
            [fn(feats[i : i + EVAL_CHUNK].to(device)).float().cpu() for i in range(0, len(feats), EVAL_CHUNK)]
        )

    image = embed(head.encode_image, data.image)
    text = embed(head.encode_text, data.text)
    head.train(was_training)
    metrics = image_text_retrieval(image, text, data.caption_image, chunk=EVAL_CHUNK)
    return {f"val/{name}": value for name, value in metrics.items()}


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
class AlignTask(TrainTask):
    """One step = one global batch of pairs through the head and the chunked loss."""

    weights_name = "head.safetensors"

    def __init__(
        self,
        cfg: TrainConfig,
        model: AlignmentHead,
        hcfg: HeadConfig,
        data: AlignmentData,
        eval_data: EvalData | None,
        device: torch.device,
        world: int,
        group: torch.distributed.ProcessGroup | None,
    ) -> None:
        self.cfg, self.model, self.hcfg, self.data, self.eval_data = cfg, model, hcfg, data, eval_data
        self.device, self.group = device, group
        self.net = wrap_ddp(model, device, world)
        self.total_steps = cfg.epochs * data.steps_per_epoch

    def forward_backward(self, step: int, precision: Precision) -> LossOutput:
        epoch, index = divmod(step, self.data.steps_per_epoch)
        batch = self.data.batch(epoch, index)
        cfg, model = self.cfg, self.model
        with precision.autocast():
            image, text, extra = self.net(batch.image, batch.text, batch.extra_text)
            if cfg.loss == "siglip":
                out = siglip_loss(
                    image,
                    text,
                    model.logit_scale,
                    model.logit_bias,
                    extra_text=extra,
                    chunk_size=cfg.chunk_size,
                    group=self.group,
                )
            else:
                out = clip_loss(
                    image,
                    text,
                    model.logit_scale,
                    extra_text=extra,
                    chunk_size=cfg.chunk_size,
                    group=self.group,
                )
        precision.backward(out.loss)
        return out

    def after_step(self) -> None:
        self.model.clamp_logit_scale_()

    def _validates(self, done: int) -> bool:
        every = self.cfg.val_every
        return self.eval_data is not None and (done == self.total_steps or (every > 0 and done % every == 0))

    def log_now(self, done: int) -> bool:
        return self._validates(done)

    def log_values(self, step: int, done: int) -> dict[str, float]:
        values = {
            "logit_scale": float(self.model.logit_scale.detach()),
            "logit_bias": float(self.model.logit_bias.detach()),
            "epoch": step // self.data.steps_per_epoch,
        }
        if self._validates(done):
            values.update(retrieval_metrics(self.model, self.eval_data, self.device))
        return values

    def checkpoint_weights(self) -> dict[str, Tensor]:
        return self.model.state_dict()

    def checkpoint_config(self, done: int) -> dict:
        return checkpoint_config(self.cfg, self.hcfg, self.data, done)

    def checkpoint_position(self, done: int) -> dict:
        return {
            "epoch": done // self.data.steps_per_epoch,
            "batch_in_epoch": done % self.data.steps_per_epoch,
        }

    def close(self) -> None:
        self.data.close()


def train(cfg: TrainConfig) -> dict[str, float]:
    """Run (or resume) training; returns the last logged metrics. All checks happen before anything is written."""
    check_config(cfg)
    device = resolve_device(cfg.device, int(os.environ.get("LOCAL_RANK", "0")))
    rank, world, group = init_distributed(device)
    loop = TrainingLoop(
        cfg,
        device=device,
        rank=rank,
        world=world,
        checkpoint_format=CHECKPOINT_FORMAT,
        differences=lambda saved: cfg.resume_differences(TrainConfig.from_dict(saved)),
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
        try:
            check_val_stores(cfg, data)
        except DataError:
            data.close()
            raise
    total_steps = cfg.epochs * data.steps_per_epoch
    hcfg = head_config(cfg, data.image_meta.dim, data.text_meta.dim)
    warmup = warmup_steps_from(cfg.warmup, total_steps)
    torch.manual_seed(cfg.seed)
    model = AlignmentHead(hcfg).to(device)
    optimizer = build_optimizer(
        cfg.optimizer, param_groups(model, cfg.wd, cfg.decay_norm_and_bias), lr=cfg.lr, betas=cfg.betas
    )
    scheduler = cosine_schedule(optimizer, total_steps, warmup)
    eval_data = (
        load_eval_data(cfg.val_image_features, cfg.val_text_features) if cfg.val_image_features else None
    )
    task = AlignTask(cfg, model, hcfg, data, eval_data, device, world, group)
    loop.restore(lambda state: model.load_state_dict(state, strict=True), optimizer, scheduler)
    if rank == 0:
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
    return loop.run(
        task,
        optimizer,
        scheduler,
        params,
        total_steps=total_steps,
        pairs_per_step=cfg.batch_size,
        run_config=cfg.to_dict(),
    )


def build_parser() -> ConfigParser:
    return ConfigParser(
        TrainConfig,
        prog="python -m align.train",
        description="Train an alignment head (SAIL-style) on cached image and caption features (HDF5 stores).",
    )


def main(argv: Sequence[str] | None = None) -> int:
    return run_training_cli(build_parser(), train, argv, input_errors=(DataError,))


if __name__ == "__main__":
    sys.exit(main())
