"""The shared training loop under torchrun: when one rank's loss goes non-finite, every rank stops with the error
at the same step (the check is all-reduced), instead of one rank raising while the others wait in a collective."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from align_helpers import synthetic_stores
from vlm2vec_helpers import save_tiny_qwen2_vl, write_tiny_mmeb_train

REPO = Path(__file__).resolve().parents[1]
MESSAGE = "the loss became non-finite at step 2"
# Runs a trainer's main() with its task's step poisoned on rank 1 from the second step on.
RUNNER = """
import importlib, sys
import torch.distributed as dist
from core.losses import LossOutput

module_name, class_name = sys.argv[1].split(":")
module = importlib.import_module(module_name)
task = getattr(module, class_name)
real_step = task.forward_backward

def poisoned(self, step, precision):
    out = real_step(self, step, precision)
    if dist.get_rank() == 1 and step >= 1:
        return LossOutput(out.loss * float("nan"), out.positive, out.negative)
    return out

task.forward_backward = poisoned
sys.exit(module.main(sys.argv[2:]))
"""


def run_two_ranks(tmp_path: Path, target: str, args: list[str]) -> tuple[subprocess.CompletedProcess, float]:
    runner = tmp_path / "poisoned_runner.py"
    runner.write_text(RUNNER)
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(runner),
         target, *args],
        cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)},
        capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    return proc, time.monotonic() - start


def assert_both_ranks_stopped(proc: subprocess.CompletedProcess, output: Path) -> None:
    assert proc.returncode != 0, proc.stderr[-3000:]
    assert proc.stderr.count(MESSAGE) == 2, proc.stderr[-3000:]  # one error per rank, naming the same step
    steps = sorted(p.name for p in (output / "checkpoints").glob("step_*"))
    assert steps == ["step_1"], steps  # nothing after the bad step was saved


def test_align_train_stops_every_rank(tmp_path):
    image, texts = synthetic_stores(tmp_path, n_images=64, captions_per_image=1)
    out = tmp_path / "run"
    args = ["--image-features", str(image), "--text-features", str(texts[0]), "--head", "linear",
            "--target-dim", "4", "--batch-size", "8", "--epochs", "20", "--optimizer", "adamw", "--lr", "1e-3",
            "--chunk-size", "4", "--log-every", "1", "--save-every", "1", "--device", "cpu", "--no-progress",
            "--output-dir", str(out)]  # fmt: skip
    proc, _ = run_two_ranks(tmp_path, "align.train:AlignTask", args)
    assert_both_ranks_stopped(proc, out)


@pytest.mark.slow
def test_vlm2vec_train_stops_every_rank(tmp_path):
    base = save_tiny_qwen2_vl(tmp_path / "base")
    data = write_tiny_mmeb_train(tmp_path / "mmeb", rows_per_subset=8)
    out = tmp_path / "run"
    args = ["--model", str(base), "--data", str(data), "--subsets", "ImageNet_1K", "MSCOCO_t2i",
            "--batch-size", "4", "--steps", "50", "--warmup", "0", "--save-every", "1", "--log-every", "1", "--lora-r", "4",
            "--lora-alpha", "8", "--precision", "fp32", "--device", "cpu", "--num-workers", "0", "--no-progress",
            "--output-dir", str(out)]  # fmt: skip
    proc, _ = run_two_ranks(tmp_path, "vlm2vec.train:ContrastiveTask", args)
    assert_both_ranks_stopped(proc, out)
