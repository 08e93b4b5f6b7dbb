"""What clusters do to training jobs, injected into real runs of align.train and vlm2vec.train: SIGKILL at random
steps and in the middle of a checkpoint write, SIGTERM (preemption), a full disk, a damaged checkpoint folder,
and a torchrun worker killed under ``--max-restarts``. Every resumed run must end with the uninterrupted run's
weights, bit for bit."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from align_helpers import synthetic_stores
from vlm2vec_helpers import save_tiny_qwen2_vl, write_tiny_mmeb_train

from core.checkpoint import latest_checkpoint
from core.preemption import EXIT_PREEMPTED

REPO = Path(__file__).resolve().parents[1]
# torchrun's agent shares its TCP store with the workers by default, and a restarted worker group can then read
# the dead group's addresses (pytorch/pytorch#135712): scripts/*.sh set this, and so does this test.
TORCHRUN_RESTARTS = {"TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1"}
TOTAL, SAVE_EVERY = 18, 4  # align runs: 3 epochs x 6 steps
# A trainer's main() with one fault injected: FAULT=kill|term|sleep-term at optimizer step AT, or
# kill-after-weights|kill-after-rename|enospc at checkpoint write number AT. Only on the first attempt of
# rank FAULT_RANK (torchrun's restarts run clean).
RUNNER = """
import errno, importlib, os, signal, sys, time
import core.checkpoint, core.precision

fault, at, module = os.environ["FAULT"], int(os.environ["AT"]), sys.argv[1]
active = (os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0"
          and os.environ.get("RANK", "0") == os.environ.get("FAULT_RANK", "0"))
count = {"steps": 0, "saves": 0}

real_step = core.precision.Precision.step
def step(self, *args, **kwargs):
    out = real_step(self, *args, **kwargs)
    count["steps"] += 1
    if os.environ.get("SLOW"):
        time.sleep(float(os.environ["SLOW"]))
    if active and count["steps"] == at and fault == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    if active and count["steps"] == at and fault == "term":
        os.kill(os.getpid(), signal.SIGTERM)
    return out
core.precision.Precision.step = step

real_weights = core.checkpoint.save_file_weights
def save_weights(state, path):
    count["saves"] += 1
    if active and count["saves"] == at and fault == "enospc":
        raise OSError(errno.ENOSPC, "No space left on device", str(path))
    real_weights(state, path)
    if active and count["saves"] == at and fault == "kill-after-weights":
        os.kill(os.getpid(), signal.SIGKILL)
core.checkpoint.save_file_weights = save_weights

real_fsync = core.checkpoint.fsync_path
def fsync(path):
    real_fsync(path)
    if active and count["saves"] == at and fault == "kill-after-rename" and path.name == "checkpoints":
        os.kill(os.getpid(), signal.SIGKILL)
core.checkpoint.fsync_path = fsync

sys.exit(importlib.import_module(module).main(sys.argv[2:]))
"""


def runner(tmp_path: Path) -> Path:
    path = tmp_path / "fault_runner.py"
    path.write_text(RUNNER)
    return path


def run(
    tmp_path: Path, module: str, args: list[str], fault: str = "none", at: int = 0, **env: str
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(runner(tmp_path)), module, *args],
        cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO), "FAULT": fault, "AT": str(at), **env},
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def weights(output: Path, name: str = "head.safetensors") -> bytes:
    return (latest_checkpoint(output) / name).read_bytes()


@pytest.fixture(scope="module")
def align_setup(tmp_path_factory):
    folder = tmp_path_factory.mktemp("align_faults")
    image, texts = synthetic_stores(folder, n_images=48, captions_per_image=2)

    def args(output: Path, *extra: str) -> list[str]:
        return [
            "--image-features", str(image), "--text-features", *map(str, texts),
            "--head", "sharelock", "--hidden-dim", "8",  # BatchNorm + dropout: the RNG must resume too
            "--batch-size", "16", "--epochs", "3", "--optimizer", "lion", "--lr", "1e-3", "--wd", "0.1",
            "--warmup", "0.2", "--chunk-size", "8", "--save-every", str(SAVE_EVERY), "--log-every", "2",
            "--keep-last", "2", "--seed", "7", "--device", "cpu", "--no-progress", "--output-dir", str(output),
            *extra,
        ]  # fmt: skip

    reference = folder / "reference"
    proc = run(folder, "align.train", args(reference))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert latest_checkpoint(reference).name == f"step_{TOTAL}"
    return args, reference


def random_faults(seed: int) -> list[tuple[str, int]]:
    rng = random.Random(seed)
    saves = TOTAL // SAVE_EVERY + 1
    return [("kill", rng.randint(1, TOTAL - 1)), (rng.choice(["kill-after-weights", "kill-after-rename"]),
                                                   rng.randint(1, saves))]  # fmt: skip


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_align_sigkill_at_random_points_then_resume_at_once(align_setup, tmp_path, seed):
    args, reference = align_setup
    for fault, at in random_faults(seed):
        out = tmp_path / f"{fault}-{at}"
        killed = run(tmp_path, "align.train", args(out, "--resume", "auto"), fault, at)
        assert killed.returncode == -signal.SIGKILL, (fault, at, killed.stderr[-2000:])
        assert not list((out / "checkpoints").glob("*.tmp")) or fault == "kill-after-weights"
        resumed = run(tmp_path, "align.train", args(out, "--resume", "auto"))
        assert resumed.returncode == 0, (fault, at, resumed.stderr[-3000:])
        assert weights(out) == weights(reference), (fault, at)
        assert not list((out / "checkpoints").glob("*.tmp")), "the next save clears a half-written folder"


def test_align_sigterm_saves_exits_75_and_resumes_bit_exactly(align_setup, tmp_path):
    args, reference = align_setup
    out = tmp_path / "run"
    stopped = run(tmp_path, "align.train", args(out), "term", 6)
    assert stopped.returncode == EXIT_PREEMPTED, stopped.stderr[-3000:]
    assert "SIGTERM" in stopped.stderr and "--resume latest" in stopped.stderr
    # The step in hand, though 6 is no multiple of --save-every.
    assert latest_checkpoint(out).name == "step_6"
    resumed = run(tmp_path, "align.train", args(out, "--resume", "latest"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert weights(out) == weights(reference)


def test_align_external_sigterm_while_training(align_setup, tmp_path):
    """SIGTERM from outside at an arbitrary moment (a slowed run): saved, exit 75, then resumed exactly."""
    args, reference = align_setup
    out = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, str(runner(tmp_path)), "align.train", *args(out)],
        cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO), "FAULT": "none", "AT": "0", "SLOW": "0.3"},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while not (out / "metrics.jsonl").is_file() or not (out / "metrics.jsonl").read_text().strip():
        assert proc.poll() is None and time.monotonic() < deadline, "the run never logged"
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == EXIT_PREEMPTED, stderr[-3000:]
    stopped_at = int(latest_checkpoint(out).name.removeprefix("step_"))
    assert 2 <= stopped_at < TOTAL
    resumed = run(tmp_path, "align.train", args(out, "--resume", "latest"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert weights(out) == weights(reference)


def test_align_disk_full_while_checkpointing(align_setup, tmp_path):
    args, reference = align_setup
    out = tmp_path / "run"
    full = run(tmp_path, "align.train", args(out), "enospc", 2)  # the second checkpoint (step 8) fails
    assert full.returncode == 1, full.stderr[-3000:]
    assert "could not write the checkpoint of step 8" in full.stderr and "No space left" in full.stderr
    assert "--resume latest" in full.stderr
    # The earlier checkpoint is intact, and nothing half-written is left.
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_4"]
    resumed = run(tmp_path, "align.train", args(out, "--resume", "latest"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert weights(out) == weights(reference)


def test_resume_skips_a_damaged_checkpoint_with_a_warning(align_setup, tmp_path):
    args, reference = align_setup
    out = tmp_path / "run"
    killed = run(tmp_path, "align.train", args(out, "--keep-last", "0"), "kill", 13)
    assert killed.returncode == -signal.SIGKILL
    (out / "checkpoints" / "step_12" / "trainer_state.pt").unlink()  # damaged by hand or by a disk fault
    resumed = run(tmp_path, "align.train", args(out, "--keep-last", "0", "--resume", "latest"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "skipping checkpoint" in resumed.stderr and "trainer_state.pt" in resumed.stderr
    assert "resumed from" in resumed.stderr and "step_8" in resumed.stderr
    assert weights(out) == weights(reference)
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(2, TOTAL + 1, 2))


@pytest.mark.slow
def test_torchrun_restarts_a_killed_rank_and_resumes(tmp_path):
    """`torchrun --max-restarts 1` with rank 1 killed at step 5: the job restarts by itself, resumes from the newest
    checkpoint (--resume auto) and ends with the weights of an uninterrupted 2-rank run. Then a SIGTERM to one
    rank: both stop at the same step with a checkpoint, and the rerun ends with the same weights."""
    image, texts = synthetic_stores(tmp_path, n_images=32, captions_per_image=1)

    def job(output: Path, fault: str, max_restarts: int, fault_rank: int = 1) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
             "--max-restarts", str(max_restarts), str(runner(tmp_path)), "align.train",
             "--image-features", str(image), "--text-features", str(texts[0]), "--head", "mlp", "--hidden-dim", "8",
             "--target-dim", "6", "--batch-size", "16", "--epochs", "5", "--optimizer", "adamw", "--lr", "1e-2",
             "--chunk-size", "4", "--save-every", "2", "--log-every", "2", "--device", "cpu", "--no-progress",
             "--resume", "auto", "--output-dir", str(output)],
            cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "FAULT": fault,
                           "AT": "5", "FAULT_RANK": str(fault_rank), **TORCHRUN_RESTARTS},
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip

    clean = job(tmp_path / "clean", "none", 0)
    assert clean.returncode == 0, clean.stderr[-3000:]
    restarted = job(tmp_path / "restarted", "kill", 1)
    assert restarted.returncode == 0, restarted.stderr[-3000:]
    assert "resumed from" in restarted.stderr and "step_4" in restarted.stderr
    assert weights(tmp_path / "restarted") == weights(tmp_path / "clean")

    # SIGTERM reaching one rank only: the ranks agree at the next log point (step 6), save and exit 75 together.
    stopped = job(tmp_path / "preempted", "term", 0, fault_rank=0)
    assert stopped.returncode != 0 and stopped.stderr.count("stopped by") == 2, stopped.stderr[-3000:]
    assert latest_checkpoint(tmp_path / "preempted").name == "step_6"
    resumed = job(tmp_path / "preempted", "none", 0)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert weights(tmp_path / "preempted") == weights(tmp_path / "clean")


@pytest.mark.slow
def test_vlm2vec_sigterm_saves_exits_75_and_resumes_bit_exactly(tmp_path):
    base = save_tiny_qwen2_vl(tmp_path / "base", dropout=0.1)
    data = write_tiny_mmeb_train(tmp_path / "mmeb")

    def args(output: Path, *extra: str) -> list[str]:
        return [
            "--model", str(base), "--data", str(data), "--output-dir", str(output), "--subsets", "ImageNet_1K",
            "MSCOCO_t2i", "--batch-size", "4", "--query-chunk-size", "2", "--target-chunk-size", "3", "--lr", "5e-3",
            "--warmup", "0", "--steps", "6", "--save-every", "4", "--lora-r", "4", "--lora-alpha", "8",
            "--precision", "fp32", "--device", "cpu", "--num-workers", "1", "--no-progress", *extra,
        ]  # fmt: skip

    reference = run(tmp_path, "vlm2vec.train", args(tmp_path / "reference"), OMP_NUM_THREADS="1")
    assert reference.returncode == 0, reference.stderr[-3000:]
    out = tmp_path / "run"
    stopped = run(tmp_path, "vlm2vec.train", args(out), "term", 3, OMP_NUM_THREADS="1")
    assert stopped.returncode == EXIT_PREEMPTED, stopped.stderr[-3000:]
    assert latest_checkpoint(out).name == "step_3" and not (out / "final").exists()
    resumed = run(tmp_path, "vlm2vec.train", args(out, "--resume", "auto"), OMP_NUM_THREADS="1")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert weights(out, "model.safetensors") == weights(tmp_path / "reference", "model.safetensors")
