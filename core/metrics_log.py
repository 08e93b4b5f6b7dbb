"""Training metrics shared by both trainers: ``metrics.jsonl``, optional TensorBoard / wandb, a loss-curve PNG."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)


def _installed(module: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def check_backends(tensorboard: bool, wandb_project: str | None) -> None:
    """Fail before training when a requested logger is not installed."""
    if tensorboard and not _installed("tensorboard"):
        raise ValueError("--tensorboard needs the tensorboard package: pip install tensorboard")
    if wandb_project and not _installed("wandb"):
        raise ValueError("--wandb-project needs the wandb package: pip install wandb")


class MetricsLogger:
    """Appends one JSON object per logged step to ``OUTPUT/metrics.jsonl``.

    ``resume_step``: records after that step (written by a run that was killed later) are dropped first, so a
    resumed run's file reads as one uninterrupted run.
    """

    def __init__(
        self,
        output_dir: str | os.PathLike,
        resume_step: int | None = None,
        tensorboard: bool = False,
        wandb_project: str | None = None,
        run_config: dict | None = None,
        enabled: bool = True,
    ) -> None:
        self.output_dir = Path(output_dir)
        self.path = self.output_dir / "metrics.jsonl"
        self.enabled = enabled
        self._tb = None
        self._wandb = None
        if not enabled:
            return
        check_backends(tensorboard, wandb_project)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        if resume_step is not None and self.path.exists():
            kept = [r for r in self.records() if r.get("step", 0) <= resume_step]
            self.path.write_text("".join(json.dumps(r) + "\n" for r in kept))
        elif resume_step is None:
            self.path.write_text("")
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(self.output_dir / "tensorboard"))
        if wandb_project:
            import wandb

            self._wandb = wandb.init(project=wandb_project, dir=str(self.output_dir), config=run_config or {})

    def log(self, step: int, metrics: dict[str, float]) -> None:
        if not self.enabled:
            return
        record = {"step": step, **metrics}
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if self._tb is not None:
            for name, value in metrics.items():
                self._tb.add_scalar(name, value, step)
        if self._wandb is not None:
            self._wandb.log(metrics, step=step)

    def records(self) -> list[dict]:
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]

    def plot(self, name: str = "loss", filename: str = "loss_curve.png") -> Path | None:
        """PNG of ``name`` against step; None when nothing was logged."""
        points = [(r["step"], r[name]) for r in self.records() if name in r]
        if not self.enabled or not points:
            return None
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 4))
        ax.plot(*zip(*points, strict=True))
        ax.set_xlabel("step")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        out = self.output_dir / filename
        fig.savefig(out, dpi=100)
        plt.close(fig)
        return out

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()
