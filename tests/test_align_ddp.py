"""align.train under torchrun: 2 CPU processes (gloo) train the same head as 1 process on the whole batch."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import torch
from align_helpers import synthetic_stores
from safetensors.torch import load_file

from core.checkpoint import latest_checkpoint

REPO = Path(__file__).resolve().parents[1]


def test_two_processes_match_one(tmp_path):
    image, texts = synthetic_stores(tmp_path, n_images=32, captions_per_image=1)
    common = ["-m", "align.train", "--image-features", str(image), "--text-features", str(texts[0]),
              "--head", "mlp", "--hidden-dim", "8", "--target-dim", "6", "--batch-size", "16", "--epochs", "2",
              "--optimizer", "adamw", "--lr", "1e-2", "--loss", "siglip", "--chunk-size", "4", "--no-progress",
              "--device", "cpu"]  # fmt: skip
    single = subprocess.run([sys.executable, *common, "--output-dir", str(tmp_path / "one")],
                            cwd=REPO, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert single.returncode == 0, single.stderr[-3000:]
    ddp = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *common,
         "--output-dir", str(tmp_path / "two")],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    one = load_file(str(latest_checkpoint(tmp_path / "one") / "head.safetensors"))
    two = load_file(str(latest_checkpoint(tmp_path / "two") / "head.safetensors"))
    assert one.keys() == two.keys()
    for name in one:
        torch.testing.assert_close(two[name], one[name], atol=2e-5, rtol=1e-4, msg=name)
    assert float(one["logit_bias"]) != -10.0  # the head was trained (init -10)
