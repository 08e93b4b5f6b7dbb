"""vlm2vec.train under torchrun: 2 CPU processes (gloo) with GradCache and no_sync train the same LoRA weights
as 1 process on the whole batch, while the ranks hold different numbers of targets (rows with and without hard
negatives in one mixed batch)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file
from vlm2vec_helpers import save_tiny_qwen2_vl, write_tiny_mmeb_train

from vlm2vec.config import TrainConfig
from vlm2vec.data import MMEBBatchSampler

REPO = Path(__file__).resolve().parents[1]
STEPS, BATCH, ROWS = 3, 4, 8


def _run(args: list[str], torchrun: bool) -> None:
    launcher = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"] if torchrun else []
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, *launcher, "-m", "vlm2vec.train", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]


def test_two_processes_with_uneven_targets_match_one(tmp_path):
    base = save_tiny_qwen2_vl(tmp_path / "base")  # no dropout: both runs compute the same function
    data = write_tiny_mmeb_train(tmp_path / "mmeb", rows_per_subset=ROWS)
    # ImageNet_1K rows (indices < ROWS) carry a hard negative, MSCOCO_t2i rows none: some step must give the two
    # ranks different target counts, or this test would not exercise the uneven gather.
    per_rank = [
        MMEBBatchSampler([ROWS, ROWS], BATCH // 2, True, TrainConfig.seed, 0, STEPS, world_size=2, rank=r)
        for r in (0, 1)
    ]
    targets = [[sum(1 + (i < ROWS) for i in rows) for rows in sampler] for sampler in per_rank]
    assert any(a != b for a, b in zip(*targets, strict=True)), targets

    common = [
        "--model", str(base), "--data", str(data), "--subsets", "ImageNet_1K", "MSCOCO_t2i", "--mixed-batches",
        "--batch-size", str(BATCH), "--query-chunk-size", "1", "--target-chunk-size", "2", "--steps", str(STEPS),
        "--save-every", str(STEPS), "--lr", "5e-3", "--warmup", "0", "--lora-r", "4", "--lora-alpha", "8",
        "--lora-dropout", "0", "--temperature", "0.05", "--precision", "fp32", "--device", "cpu",
        "--num-workers", "0", "--no-progress",
    ]  # fmt: skip
    _run([*common, "--output-dir", str(tmp_path / "one")], torchrun=False)
    _run([*common, "--output-dir", str(tmp_path / "two")], torchrun=True)
    one = load_file(tmp_path / "one" / "checkpoints" / f"step_{STEPS}" / "model.safetensors")
    two = load_file(tmp_path / "two" / "checkpoints" / f"step_{STEPS}" / "model.safetensors")
    assert one.keys() == two.keys() and len(one) > 0
    for name in one:
        torch.testing.assert_close(two[name], one[name], atol=2e-5, rtol=1e-4, msg=name)
    assert any(
        name.endswith("lora_B.default.weight") and one[name].abs().sum() > 0 for name in one
    )  # trained
