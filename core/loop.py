"""The training loop shared by ``align.train`` and ``vlm2vec.train``.

A trainer supplies a :class:`TrainTask` (its forward + backward of one optimizer step, the weights and config it
checkpoints, extra values to log); :class:`TrainingLoop` owns everything else:

* resume: :func:`core.checkpoint.find_resume` before anything is written, then weights, optimizer, scheduler,
  scaler and RNG restored so that a resumed run continues bit for bit (on CPU);
* the step: ``zero_grad``, the task's forward + backward, unscale / clip / step through :class:`Precision`,
  the scheduler step, the task's post-step hook;
* the non-finite check: the first step whose loss is NaN or inf is kept in a device tensor (no host sync per
  step) and checked at every log point, all-reduced over the ranks, so every rank stops at the same point with a
  :class:`TrainingError` naming that step, and nothing after it is saved;
* logging: loss, positive / negative parts, lr and pairs/s averaged over the window, plus the task's values, to
  ``metrics.jsonl`` (and TensorBoard / wandb), a progress bar, and the loss curve at the end;
* preemption: SIGTERM / SIGUSR1 (:mod:`core.preemption`) finish the step in hand, write a checkpoint and raise
  :class:`core.preemption.Preempted` (exit code 75 from the CLIs); alone the run stops after the current step,
  under torchrun at the next log point, where the ranks agree in the same all-reduce as the non-finite check;
* checkpoints every ``save_every`` steps and at the end, on rank 0, then the task's export; teardown of the bar,
  the logger and the task, and a barrier so that every rank returns once rank 0 has written everything.

There is no gradient accumulation over micro-batches: it would change which negatives a contrastive loss sees.
Large batches go through GradCache (``vlm2vec``) or the chunked losses (``align``) instead.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor
from tqdm import tqdm

from core.checkpoint import find_resume, load_checkpoint, restore_rng, restore_trainer_state, save_checkpoint
from core.checkpoint import trainer_state as make_trainer_state
from core.config import LoopConfig
from core.cpu_memory import retain_freed_memory
from core.losses import LossOutput
from core.metrics_log import MetricsLogger, check_backends
from core.precision import Precision
from core.preemption import Preempted, PreemptionGuard

log = logging.getLogger(__name__)


class TrainingError(RuntimeError):
    """Training stopped (e.g. the loss became non-finite); the message names the step."""


class TrainTask:
    """What a trainer supplies to the loop. Subclasses implement :meth:`forward_backward` and the checkpoint
    methods; the other hooks default to doing nothing."""

    #: file name of the weights in a checkpoint folder (see :data:`core.checkpoint.WEIGHT_FILES`)
    weights_name = "model.safetensors"

    def forward_backward(self, step: int, precision: Precision) -> LossOutput:
        """Forward and backward of optimizer step ``step`` (0-based); backward through ``precision.backward``."""
        raise NotImplementedError

    def after_step(self) -> None:
        """Called after each optimizer and scheduler step (e.g. to clamp a learned scale)."""

    def log_now(self, done: int) -> bool:
        """Whether ``done`` steps call for a log point beyond ``log_every`` (e.g. a validation step)."""
        return False

    def log_values(self, step: int, done: int) -> dict[str, float]:
        """Values logged at a log point besides the loss parts, lr and throughput."""
        return {}

    def checkpoint_weights(self) -> dict[str, Tensor]:
        raise NotImplementedError

    def checkpoint_config(self, done: int) -> dict[str, Any]:
        """The checkpoint's ``config.json``: must hold ``format`` and ``train`` (see :func:`find_resume`)."""
        raise NotImplementedError

    def checkpoint_position(self, done: int) -> dict[str, Any]:
        """Extra trainer state (e.g. the data position) saved beside optimizer, scheduler and RNG."""
        return {}

    def export(self) -> None:
        """Called on rank 0 after the last step was checkpointed (e.g. to write an inference export)."""

    def close(self) -> None:
        """Release data files, loaders and the like (called whether the run ended well or not)."""


class TrainingLoop:
    """One training run: resume lookup at construction (before anything is written), then :meth:`run`.

    ``checkpoint_format`` is the ``format`` a resumable checkpoint must carry; ``differences(saved_train)`` is
    the trainer's comparison of its settings with a checkpoint's ``train`` settings (empty = may resume).
    """

    def __init__(
        self,
        cfg: LoopConfig,
        *,
        device: torch.device,
        rank: int,
        world: int,
        checkpoint_format: str,
        differences: Callable[[dict], list[str]],
    ) -> None:
        for name in ("save_every", "log_every"):
            if getattr(cfg, name) <= 0:
                raise ValueError(f"--{name.replace('_', '-')} must be positive, got {getattr(cfg, name)}")
        if cfg.keep_last < 0:
            raise ValueError(f"--keep-last must be >= 0 (0 keeps all), got {cfg.keep_last}")
        check_backends(cfg.tensorboard, cfg.wandb_project)
        self.cfg = cfg
        self.device = device
        self.rank, self.world = rank, world
        self.is_main = rank == 0
        self.precision = Precision(cfg.precision, device)
        self.resume_path = find_resume(cfg.output_dir, cfg.resume, checkpoint_format, differences)
        self.start_step = 0
        self._rng_state: dict | None = None

    def restore(
        self,
        load_weights: Callable[[dict[str, Tensor]], None],
        optimizer: torch.optim.Optimizer,
        scheduler: Any,
    ) -> int:
        """Load the resume checkpoint (if any): its weights through ``load_weights``, then the optimizer,
        scheduler and scaler; returns the step to start from (0 for a fresh run). The RNG is restored when
        :meth:`run` starts, once everything drawn before the first step (initialisation, a DataLoader's base
        seed) has been drawn as in the fresh run."""
        if self.resume_path is None:
            return 0
        ckpt = load_checkpoint(self.resume_path, self.device)
        load_weights(ckpt.model_state)
        self.start_step = restore_trainer_state(ckpt.trainer_state, optimizer, scheduler, self.precision)
        self._rng_state = ckpt.trainer_state
        log.info("resumed from %s at step %d", self.resume_path, self.start_step)
        return self.start_step

    def run(
        self,
        task: TrainTask,
        optimizer: torch.optim.Optimizer,
        scheduler: Any,
        params: list[Tensor],
        *,
        total_steps: int,
        pairs_per_step: int,
        run_config: dict[str, Any],
    ) -> dict[str, float]:
        """Train from the restored step to ``total_steps``; returns the last logged metrics.

        ``pairs_per_step`` (the global batch size) gives the throughput figure; ``run_config`` goes to wandb.
        """
        cfg, total = self.cfg, total_steps
        if total <= 0:
            raise ValueError(f"nothing to train: the run has {total} steps")
        if self._rng_state is not None:
            restore_rng(self._rng_state, self.device)
        retain_freed_memory(self.device)
        logger = MetricsLogger(
            cfg.output_dir,
            resume_step=self.start_step if self.resume_path else None,
            tensorboard=cfg.tensorboard,
            wandb_project=cfg.wandb_project,
            run_config=run_config,
            enabled=self.is_main,
        )
        first_bad = torch.full((), -1, dtype=torch.long, device=self.device)
        sums = torch.zeros(3, dtype=torch.float64, device=self.device)
        window_steps, window_start = 0, time.perf_counter()
        last: dict[str, float] = {}
        bar = tqdm(
            total=total, initial=self.start_step, disable=not (cfg.progress and self.is_main), unit="step"
        )
        with PreemptionGuard() as guard:
            try:
                for step in range(self.start_step, total):
                    optimizer.zero_grad(set_to_none=True)
                    out = task.forward_backward(step, self.precision)
                    self.precision.step(optimizer, params, cfg.grad_clip)
                    scheduler.step()
                    task.after_step()
                    loss = out.loss.detach()
                    first_bad = torch.where((first_bad < 0) & ~torch.isfinite(loss), step, first_bad)
                    sums += torch.stack([loss, out.positive.detach(), out.negative.detach()]).double()
                    window_steps += 1
                    done = step + 1
                    save = done % cfg.save_every == 0 or done == total
                    log_point = save or done % cfg.log_every == 0 or task.log_now(done)
                    stop = False
                    if log_point or (self.world == 1 and guard.requested):
                        stop = self._check(first_bad, total, guard.requested) and done < total
                    if log_point:
                        elapsed = max(time.perf_counter() - window_start, 1e-9)
                        mean = (sums / window_steps).tolist()
                        last = {
                            "loss": mean[0],
                            "positive": mean[1],
                            "negative": mean[2],
                            "lr": optimizer.param_groups[0]["lr"],
                            "pairs_per_s": window_steps * pairs_per_step / elapsed,
                            **task.log_values(step, done),
                        }
                        logger.log(done, last)
                        bar.set_postfix(
                            loss=f"{last['loss']:.4f}",
                            lr=f"{last['lr']:.2e}",
                            pairs_s=f"{last['pairs_per_s']:.0f}",
                        )
                        sums.zero_()
                        window_steps, window_start = 0, time.perf_counter()
                    if (save or stop) and self.is_main:
                        self._save(task, done, optimizer, scheduler)
                    bar.update(1)
                    if stop:
                        if self.world > 1:
                            dist.barrier()  # every rank leaves once rank 0 has written the checkpoint
                        raise Preempted(
                            f"stopped by {guard.received.name if guard.received else 'another rank'} after step {done} "
                            f"of {total}; checkpoint {Path(cfg.output_dir) / 'checkpoints' / f'step_{done}'} written. "
                            "Run the same command with --resume latest (or auto) to continue."
                        )
            finally:
                bar.close()
                logger.close()
                task.close()
        if self.is_main:
            task.export()
            curve = logger.plot("loss")
            if curve:
                log.info("loss curve: %s", curve)
        if self.world > 1:
            dist.barrier()
        return last

    def _check(self, first_bad: Tensor, total_steps: int, stop_requested: bool) -> bool:
        """Raise :class:`TrainingError` on every rank when any rank's loss went non-finite (naming the first
        such step of any rank); otherwise return whether any rank was asked to stop. One all-reduce under
        torchrun, none alone."""
        if self.world == 1:
            bad, stop = int(first_bad), stop_requested
        else:
            flags = torch.stack(
                [torch.where(first_bad < 0, total_steps, first_bad), -torch.ones_like(first_bad)]
            )
            flags[1] *= int(stop_requested)
            dist.all_reduce(flags, op=dist.ReduceOp.MIN)
            bad, stop_flag = flags.tolist()
            bad, stop = (-1 if bad == total_steps else bad), stop_flag < 0
        if bad >= 0:
            raise TrainingError(
                f"the loss became non-finite at step {bad + 1} (NaN or inf); the weights after it were not saved. "
                "Lower --lr, use --grad-clip, or check the inputs for NaN; then resume from the last checkpoint."
            )
        return stop

    def _save(self, task: TrainTask, done: int, optimizer: torch.optim.Optimizer, scheduler: Any) -> Path:
        state = make_trainer_state(
            done,
            optimizer,
            scheduler,
            self.precision,
            self.device,
            world_size=self.world,
            **task.checkpoint_position(done),
        )
        try:
            return save_checkpoint(
                self.cfg.output_dir,
                done,
                task.checkpoint_weights(),
                task.checkpoint_config(done),
                state,
                self.cfg.keep_last,
                weights_name=task.weights_name,
            )
        except OSError as err:
            raise TrainingError(
                f"could not write the checkpoint of step {done} ({err}); the earlier checkpoints are intact. "
                "Free space (or fix the folder's permissions), then run the same command with --resume latest."
            ) from err
