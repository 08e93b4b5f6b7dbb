"""scripts/sail_train.sh and scripts/alignment_probing.sh run end to end (small synthetic stores, CPU)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
from align_helpers import synthetic_stores, write_store

from core.checkpoint import latest_checkpoint, load_checkpoint

REPO = Path(__file__).resolve().parents[1]


def run_script(name: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(REPO / "scripts" / name)],
        env={**os.environ, **env}, capture_output=True, text=True, timeout=600, cwd=REPO,
    )  # fmt: skip


def test_sail_train_script_runs_with_extra_text(tmp_path):
    image, (text, long_text) = synthetic_stores(tmp_path, n_images=32, captions_per_image=2)
    val_image, (val_text,) = synthetic_stores(tmp_path, n_images=16, captions_per_image=1, seed=1, prefix="v")
    out = tmp_path / "run"
    env = {
        "IMAGE_FEATURES": str(image), "TEXT_FEATURES": str(text), "EXTRA_TEXT_FEATURES": str(long_text),
        "VAL_IMAGE_FEATURES": str(val_image), "VAL_TEXT_FEATURES": str(val_text),
        "OUTPUT_DIR": str(out), "BATCH_SIZE": "16", "EPOCHS": "2", "WIDTH_FACTOR": "2", "TARGET_DIM": "8",
        "SAVE_EVERY": "2", "VAL_EVERY": "2", "EXTRA_ARGS": "--no-progress --chunk-size 8",
    }  # fmt: skip
    proc = run_script("sail_train.sh", env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ckpt = load_checkpoint(latest_checkpoint(out))
    assert ckpt.step == 4
    assert ckpt.config["head"] == {**ckpt.config["head"], "head": "star", "width_factor": 2, "target_dim": 8}
    assert [s["role"] for s in ckpt.config["caption_sources"]] == ["caption", "extra_text"]
    train = ckpt.config["train"]
    assert train["optimizer"] == "lion" and train["lr"] == 1e-5 and train["logit_bias"] == -10
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert "val/i2t_R@1" in records[0]
    # Rerunning the script resumes (--resume latest) and has nothing left to do.
    again = run_script("sail_train.sh", env)
    assert again.returncode == 0, again.stderr[-3000:]


def test_alignment_probing_script_trains_a_linear_head_per_pair(tmp_path):
    image, (text,) = synthetic_stores(tmp_path, n_images=32, captions_per_image=1)
    val_image, (val_text,) = synthetic_stores(tmp_path, n_images=16, captions_per_image=1, seed=1, prefix="v")
    # A second text model: another store over the same captions.
    rng = np.random.default_rng(5)
    keys = [f"img{i}" for i in range(32)]
    other = write_store(tmp_path / "other_text.h5", "text", rng.standard_normal((32, 6)),
                        [f"o{i}" for i in range(32)], keys, model="other")  # fmt: skip
    val_other = write_store(tmp_path / "val_other_text.h5", "text", rng.standard_normal((16, 6)),
                            [f"vo{i}" for i in range(16)], [f"vimg{i}" for i in range(16)], model="other")  # fmt: skip
    out = tmp_path / "probe"
    env = {
        "IMAGE_FEATURES": str(image), "TEXT_FEATURES": f"{text} {other}",
        "VAL_IMAGE_FEATURES": str(val_image), "VAL_TEXT_FEATURES": f"{val_text} {val_other}",
        "OUTPUT_DIR": str(out), "BATCH_SIZE": "16", "EPOCHS": "30", "TARGET_DIM": "8", "LR": "1e-2",
        "OPTIMIZER": "adamw",
    }  # fmt: skip
    proc = run_script("alignment_probing.sh", env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((out / "probe_results.json").read_text())
    assert [(Path(r["image"]).stem, Path(r["text"]).stem) for r in results] == [
        ("images", "captions0"),
        ("images", "other_text"),
    ]
    for r in results:
        ckpt = load_checkpoint(latest_checkpoint(out / f"images__{Path(r['text']).stem}"))
        assert ckpt.config["head"]["head"] == "linear"
    # Related features align far better than unrelated random ones (16 val images: chance R@5 = 31 %).
    assert results[0]["val/i2t_R@5"] > results[1]["val/i2t_R@5"] + 20
    assert "i2t_R@1" in proc.stdout and "captions0" in proc.stdout
