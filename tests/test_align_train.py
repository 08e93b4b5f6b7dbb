"""align.train end to end on small synthetic stores: bit-exact resume after a kill, bad input, logging."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from align_helpers import synthetic_stores, write_store
from safetensors.torch import load_file

from align.config import TrainConfig
from align.data import DataError
from align.train import TrainingError, build_parser, train
from core.checkpoint import latest_checkpoint, load_checkpoint

REPO = Path(__file__).resolve().parents[1]

# Kills this very process with SIGKILL right after optimizer step KILL_AT (no clean shutdown, like a preemption).
KILLER = """
import os, signal, sys
import align.heads
calls = {"n": 0}
original = align.heads.AlignmentHead.clamp_logit_scale_
def clamp_then_maybe_die(self):
    original(self)
    calls["n"] += 1
    if calls["n"] == int(sys.argv[1]):
        os.kill(os.getpid(), signal.SIGKILL)
align.heads.AlignmentHead.clamp_logit_scale_ = clamp_then_maybe_die
from align.train import main
sys.exit(main(sys.argv[2:]))
"""


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    folder = tmp_path_factory.mktemp("stores")
    image, texts = synthetic_stores(folder, n_images=48, captions_per_image=2)
    val_image, val_texts = synthetic_stores(folder, n_images=16, captions_per_image=1, seed=1, prefix="val_")
    return {"image": image, "texts": texts, "val_image": val_image, "val_texts": val_texts, "folder": folder}


def cli_args(stores, output: Path, *extra: str) -> list[str]:
    return [
        "--image-features", str(stores["image"]),
        "--text-features", *map(str, stores["texts"]),
        "--head", "sharelock", "--hidden-dim", "8",  # BatchNorm + dropout: exercises the RNG state on resume
        "--batch-size", "16", "--epochs", "3", "--optimizer", "lion", "--lr", "1e-3", "--wd", "0.1",
        "--warmup", "0.2", "--loss", "siglip", "--chunk-size", "8",
        "--save-every", "4", "--log-every", "2", "--keep-last", "2",
        "--output-dir", str(output), "--no-progress", "--seed", "7",
        *extra,
    ]  # fmt: skip


def config(stores, output: Path, *extra: str) -> TrainConfig:
    return build_parser().parse(cli_args(stores, output, *extra))


def final_weights(output: Path) -> dict[str, torch.Tensor]:
    return load_file(str(latest_checkpoint(output) / "head.safetensors"))


@pytest.fixture(scope="module")
def reference(stores, tmp_path_factory):
    """An uninterrupted run."""
    out = tmp_path_factory.mktemp("uninterrupted")
    train(config(stores, out))
    return out


@pytest.mark.parametrize("kill_at", [6, 9])
def test_killed_run_resumes_bit_exactly(stores, reference, tmp_path, kill_at):
    total = 3 * (96 // 16)
    assert latest_checkpoint(reference).name == f"step_{total}"

    killed = tmp_path / "killed"
    proc = subprocess.run(
        [sys.executable, "-c", KILLER, str(kill_at), *cli_args(stores, killed)],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert latest_checkpoint(killed).name == f"step_{kill_at // 4 * 4}"  # died between checkpoints

    train(config(stores, killed, "--resume", "latest"))
    ours, theirs = final_weights(killed), final_weights(reference)
    assert ours.keys() == theirs.keys()
    for name in ours:
        assert torch.equal(ours[name], theirs[name]), name
    assert (latest_checkpoint(killed) / "head.safetensors").read_bytes() == (
        latest_checkpoint(reference) / "head.safetensors"
    ).read_bytes()
    steps = [json.loads(line)["step"] for line in (killed / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(2, total + 1, 2))  # the killed run's records after its checkpoint were dropped
    assert (killed / "loss_curve.png").stat().st_size > 0


def test_checkpoint_contents(stores, tmp_path):
    out = tmp_path / "run"
    metrics = train(config(stores, out, "--val-image-features", str(stores["val_image"]),
                           "--val-text-features", str(stores["val_texts"][0])))  # fmt: skip
    assert {"val/i2t_R@1", "val/t2i_R@10", "loss", "lr", "pairs_per_s"} <= metrics.keys()
    ckpts = sorted((out / "checkpoints").iterdir())
    assert [c.name for c in ckpts] == ["step_16", "step_18"]  # keep_last=2
    ckpt = load_checkpoint(ckpts[-1])  # trainer_state loads with weights_only=True
    cfg = ckpt.config
    assert (
        cfg["head"]["head"] == "sharelock"
        and cfg["head"]["image_dim"] == 12
        and cfg["head"]["text_dim"] == 10
    )
    assert cfg["image_backbone"]["model"] == "img-model" and cfg["image_backbone"]["pooling"] == "cls"
    assert cfg["text_backbone"]["model"] == "txt-model" and cfg["text_backbone"]["pooling"] == "mean"
    assert [s["caption_column"] for s in cfg["caption_sources"]] == ["caption0", "caption1"]
    assert cfg["loss"] == "siglip" and cfg["train"]["batch_size"] == 16
    state = ckpt.trainer_state
    assert state["step"] == 18 and state["epoch"] == 3 and state["batch_in_epoch"] == 0
    assert set(state) >= {"optimizer", "scheduler", "scaler", "rng_cpu"}
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert all(
        {"loss", "positive", "negative", "logit_scale", "logit_bias", "lr"} <= r.keys() for r in records
    )
    assert all(abs(r["loss"] - r["positive"] - r["negative"]) < 1e-4 for r in records)


def test_resume_with_other_config_fails_before_writing(stores, tmp_path):
    out = tmp_path / "run"
    train(config(stores, out, "--epochs", "1"))
    before = sorted(p.name for p in (out / "checkpoints").iterdir())
    with pytest.raises(ValueError, match=r"different configuration: lr: 0.001 in the checkpoint != 0.01 now"):
        train(config(stores, out, "--epochs", "1", "--lr", "1e-2", "--resume", "latest"))
    with pytest.raises(ValueError, match="already holds checkpoints; pass --resume latest"):
        train(config(stores, out, "--epochs", "1"))
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == before


def test_non_finite_loss_stops_naming_the_step(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.standard_normal((32, 4))
    images[5] = np.nan  # a row marked valid but holding NaN
    keys = [f"k{i}" for i in range(32)]
    image = write_store(tmp_path / "i.h5", "image", images, keys)
    text = write_store(
        tmp_path / "t.h5", "text", rng.standard_normal((32, 3)), [f"c{i}" for i in range(32)], keys
    )
    args = ["--image-features", str(image), "--text-features", str(text), "--head", "linear", "--target-dim", "4",
            "--batch-size", "32", "--epochs", "5", "--log-every", "3", "--save-every", "1",
            "--output-dir", str(tmp_path / "out"), "--no-progress"]  # fmt: skip
    with pytest.raises(TrainingError, match="non-finite at step 1 "):
        train(build_parser().parse(args))
    assert latest_checkpoint(tmp_path / "out") is None  # the NaN weights were never saved


def bad_input_cases(folder: Path, stores) -> dict[str, tuple[list[str], str]]:
    rng = np.random.default_rng(0)
    keys = [f"img{i}" for i in range(48)]
    other_model = write_store(folder / "other.h5", "text", rng.standard_normal((48, 10)), [f"o{i}" for i in range(48)],
                              keys, model="another-text-model")  # fmt: skip
    other_dim = write_store(
        folder / "dim.h5", "text", rng.standard_normal((48, 7)), [f"d{i}" for i in range(48)], keys
    )
    unjoined = write_store(folder / "nojoin.h5", "text", rng.standard_normal((48, 10)), [f"n{i}" for i in range(48)],
                           [f"elsewhere{i}" for i in range(48)])  # fmt: skip
    partial = write_store(folder / "partial.h5", "text", rng.standard_normal((48, 10))[:10], [f"p{i}" for i in range(48)][:10],
                          keys[:10], finish=False)  # fmt: skip
    image, text = str(stores["image"]), str(stores["texts"][0])
    return {
        "different models": (
            ["--image-features", image, "--text-features", text, str(other_model)],
            "different models",
        ),
        "dim mismatch": (
            ["--image-features", image, "--text-features", text, str(other_dim)],
            "dim: 10 in .* != 7",
        ),
        "no join": (["--image-features", image, "--text-features", str(unjoined)], "no key of caption store"),
        "incomplete": (["--image-features", image, "--text-features", str(partial)], "incomplete"),
        "swapped modality": (
            ["--image-features", text, "--text-features", image],
            "holds text features, expected image",
        ),
        "batch too big": (
            ["--image-features", image, "--text-features", text, "--batch-size", "1000"],
            "lower --batch-size",
        ),
        "missing file": (
            ["--image-features", str(folder / "nope.h5"), "--text-features", text],
            "does not exist",
        ),
    }


def test_bad_input_fails_before_writing(stores, tmp_path):
    for name, (args, message) in bad_input_cases(tmp_path, stores).items():
        out = tmp_path / f"out_{name.replace(' ', '_')}"
        full = [*args, "--output-dir", str(out), "--no-progress", "--batch-size", "16"]
        if "--batch-size" in args:
            full = [*args, "--output-dir", str(out), "--no-progress"]
        with pytest.raises((DataError, ValueError), match=message):
            train(build_parser().parse(full))
        assert not out.exists(), name


def test_cli_reports_errors_with_exit_code(stores, tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "align.train", "--image-features", str(stores["texts"][0]),
         "--text-features", str(stores["texts"][1]), "--output-dir", str(tmp_path / "o"), "--no-progress"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 2
    assert "holds text features, expected image" in proc.stderr
    assert not (tmp_path / "o").exists()


def test_streamed_run_resumes_exactly_from_a_checkpoint(stores, tmp_path):
    """Block-shuffled HDF5 streaming: resuming from a mid-run checkpoint gives the uninterrupted weights."""
    stream = ("--data-mode", "stream", "--stream-block", "24", "--keep-last", "0")
    full = tmp_path / "full"
    train(config(stores, full, *stream))
    middle = full / "checkpoints" / "step_8"
    resumed = tmp_path / "resumed"
    train(config(stores, resumed, *stream, "--resume", str(middle)))
    ours, theirs = final_weights(resumed), final_weights(full)
    for name in ours:
        assert torch.equal(ours[name], theirs[name]), name
    ram = tmp_path / "ram"
    train(config(stores, ram, "--keep-last", "0"))
    assert not torch.equal(final_weights(ram)["text.mapping.0.weight"], theirs["text.mapping.0.weight"])
