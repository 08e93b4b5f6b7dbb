"""Fault injection for ``python -m encode``: SIGKILL at random points then an immediate ``--resume``, SIGTERM /
SIGUSR1 (also under torchrun), a full disk, an unreadable ``--out`` with ``--overwrite``, a store that another
process holds open, and the loader workers' file handles.

The subprocess runs are the real CLI (``encode.__main__.main``) with the tiny backbones of
``tests.encode_pipeline_helpers`` in place of a model (:func:`tiny_cli`), on a dozen real COCO-MINI images and
their captions; each forward takes ``DELAY`` seconds so that a run can be interrupted mid-way. Every finished
store is compared bit for bit with an uninterrupted run's.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

import encode.__main__ as cli
import encode.store
from core.preemption import EXIT_PREEMPTED, Preempted
from encode.inputs import load_rows
from encode.pipeline import EncodeOptions, encode_images
from encode.store import FeatureStore
from tests.encode_pipeline_helpers import (
    ROOT,
    TINY_CLI_SCRIPT,
    TinyImageBackbone,
    TinyTextBackbone,
    hold_open,
    release,
    write_coco_subset,
)

IMAGES = 12
BATCH = 2  # image rows per batch: 6 batches
CAPTIONS = 24  # --limit for text stores
TEXT_BATCH = 4  # 6 batches
DELAY = 0.15  # seconds per forward in the interrupted runs
TIMEOUT = 120


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    """A COCO captions JSON over 12 real images, and the tiny-CLI runner script."""
    folder = tmp_path_factory.mktemp("faults")
    write_coco_subset(folder / "coco", IMAGES)
    (folder / "runner.py").write_text(TINY_CLI_SCRIPT)
    return folder


def _args(workspace: Path, modality: str, out: Path) -> list[str]:
    data = str(workspace / "coco" / "annotations" / "captions_train2017.json")
    common = ["--data", data, "--out", str(out), "--device", "cpu"]
    if modality == "text":
        return [
            "text",
            "--model",
            "tiny-text",
            *common,
            "--limit",
            str(CAPTIONS),
            "--batch-size",
            str(TEXT_BATCH),
        ]
    return ["image", "--model", "tiny-image", *common, "--batch-size", str(BATCH), "--num-workers", "2"]


def _env(**extra: object) -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ENCODE_LOCK_WAIT_SECONDS": "0"}
    return env | {k: str(v) for k, v in extra.items()}


def _start(workspace: Path, args: list[str], **env: object) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(workspace / "runner.py"), *args],
        cwd=ROOT,
        env=_env(**env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def _run(workspace: Path, args: list[str], **env: object) -> subprocess.CompletedProcess:
    proc = _start(workspace, args, **env)
    stdout, stderr = proc.communicate(timeout=TIMEOUT)
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def _rows_done(path: Path) -> int | None:
    """The store's durable row count, read without taking its lock; None while there is no readable store."""
    try:
        with h5py.File(path, "r", locking=False) as f:
            return int(f["rows_done"][0])
    except (OSError, KeyError):
        return None


def _wait_for_rows(paths: list[Path], rows: int, proc: subprocess.Popen) -> None:
    """Poll until every store in ``paths`` exists with at least ``rows`` rows flushed."""
    deadline = time.monotonic() + TIMEOUT
    while True:
        done = [_rows_done(path) for path in paths]
        if all(d is not None and d >= rows for d in done):
            return
        if proc.poll() is not None:
            raise AssertionError(
                f"the run ended (rc {proc.returncode}) at {done}: {proc.stderr.read()[-2000:]}"
            )
        if time.monotonic() > deadline:
            raise AssertionError(f"no progress to {rows} rows: {done}")
        time.sleep(0.005)


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            found += [int(child) for child in (task / "children").read_text().split()]
    return found


def _open_files(pid: int) -> list[str]:
    paths = []
    try:
        fds = list(Path(f"/proc/{pid}/fd").iterdir())
    except OSError:
        return paths
    for fd in fds:
        with contextlib.suppress(OSError):
            paths.append(os.readlink(fd))
    return paths


def _contents(path: Path) -> tuple[dict[str, bytes], dict[str, str]]:
    with h5py.File(path, "r") as f:
        datasets = {name: f[name][...].tobytes() for name in f}
        return datasets, {k: str(v) for k, v in f.attrs.items()}


@pytest.fixture(scope="module")
def reference(workspace: Path):
    """The store of an uninterrupted run, per modality (computed on first use)."""
    stores: dict[str, tuple[dict[str, bytes], dict[str, str]]] = {}

    def get(modality: str) -> tuple[dict[str, bytes], dict[str, str]]:
        if modality not in stores:
            out = workspace / f"reference-{modality}.h5"
            proc = _run(workspace, _args(workspace, modality, out))
            assert proc.returncode == 0, proc.stderr[-3000:]
            stores[modality] = _contents(out)
        return stores[modality]

    return get


def _assert_equals_reference(path: Path, want: tuple[dict[str, bytes], dict[str, str]]) -> None:
    got_datasets, got_attrs = _contents(path)
    want_datasets, want_attrs = want
    assert got_datasets.keys() == want_datasets.keys()
    for name, data in want_datasets.items():
        assert got_datasets[name] == data, name
    assert got_attrs == want_attrs


def _one_line(stderr: str, label: str) -> str:
    lines = [line for line in stderr.splitlines() if line.startswith(f"python -m encode: {label}: ")]
    assert len(lines) == 1, stderr[-3000:]
    return lines[0]


# --- SIGKILL at random points, then an immediate --resume ---------------------------------------------------


@pytest.mark.parametrize("modality", ["image", "text"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sigkill_at_a_random_point_then_immediate_resume_equals_an_uninterrupted_run(
    workspace, reference, modality, seed
):
    want = reference(modality)
    rng = random.Random(f"{modality}-{seed}")
    batch = BATCH if modality == "image" else TEXT_BATCH
    out = workspace / f"killed-{modality}-{seed}.h5"
    args = _args(workspace, modality, out)
    proc = _start(workspace, args, TINY_DELAY=DELAY)
    _wait_for_rows([out], rng.randrange(0, 5) * batch, proc)  # 0-4 of the 6 batches flushed, then a bit more
    time.sleep(rng.uniform(0, DELAY))
    workers = _children(proc.pid)
    assert proc.poll() is None, "the run ended before the kill"
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == -signal.SIGKILL
    if modality == "image":
        assert len(workers) == 2  # the loader workers, orphaned now and exiting on their own
    with h5py.File(out, "r") as f:  # no lock is left behind: the store opens at once
        assert not f.attrs["complete"] and f["rows_done"][0] % batch == 0
    resumed = _run(workspace, [*args, "--resume"])  # at once, and ENCODE_LOCK_WAIT_SECONDS=0: no waiting
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "wrote" in resumed.stdout
    _assert_equals_reference(out, want)


def test_loader_workers_never_hold_the_store_open(tmp_path):
    """Inside every forward, no loader worker has the store among its open files (the main process has)."""
    rows = load_rows(write_coco_subset(tmp_path / "coco", 8))
    out = tmp_path / "img.h5"

    # Children this process had before (left by earlier tests in the same session) are not loader workers.
    before = set(_children(os.getpid()))

    class Inspecting(TinyImageBackbone):
        def __init__(self) -> None:
            super().__init__()
            self.seen: list[tuple[bool, dict[int, bool]]] = []

        def encode(self, pixel_values):
            workers = [pid for pid in _children(os.getpid()) if pid not in before]
            held = {pid: str(out) in _open_files(pid) for pid in workers}
            self.seen.append((str(out) in _open_files(os.getpid()), held))
            return super().encode(pixel_values)

    options = EncodeOptions(batch_size=2, num_workers=2, progress=False)
    first = Inspecting()
    first.die_on_call, first.die_signal = 3, signal.SIGTERM  # stop after 3 batches: a store to resume
    with pytest.raises(Preempted, match="6 of 8 rows are saved.*--resume"):
        encode_images(rows, first, out, options=options)
    second = Inspecting()
    summary = encode_images(rows, second, out, options=dataclasses.replace(options, resume=True))
    assert summary.resumed_from == 6
    for main_has_it, workers in first.seen + second.seen:
        assert main_has_it and len(workers) == 2
        assert not any(workers.values()), workers


# --- SIGTERM / SIGUSR1 --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("modality", "sig"),
    [("image", signal.SIGTERM), ("text", signal.SIGUSR1)],
    ids=["image-SIGTERM", "text-SIGUSR1"],
)
def test_stop_signal_flushes_the_batch_exits_75_and_resume_completes(workspace, reference, modality, sig):
    """The signal goes to the whole process group (as SLURM sends it): the loader workers ignore it."""
    want = reference(modality)
    batch, rows = (BATCH, IMAGES) if modality == "image" else (TEXT_BATCH, CAPTIONS)
    out = workspace / f"stopped-{modality}.h5"
    args = _args(workspace, modality, out)
    proc = _start(workspace, args, TINY_DELAY=DELAY)
    _wait_for_rows([out], 2 * batch, proc)
    workers = _children(proc.pid)
    os.killpg(proc.pid, sig)
    _, stderr = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == EXIT_PREEMPTED, stderr[-3000:]
    line = _one_line(stderr, "stopped")
    assert f"{sig.name} received: " in line and "run the same command with --resume" in line
    saved = _rows_done(out)
    assert f"{saved} of {rows} rows are saved in {out}" in line
    assert 2 * batch <= saved < rows and saved % batch == 0
    with pytest.raises(encode.store.IncompleteStoreError):
        FeatureStore(out)
    with h5py.File(out, "r") as f:  # the rows before the stop are final
        n = saved * f["features"].shape[1] * f["features"].dtype.itemsize
        assert f["features"][:saved].tobytes() == want[0]["features"][:n]
    deadline = time.monotonic() + 10
    while any(Path(f"/proc/{pid}").exists() for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(Path(f"/proc/{pid}").exists() for pid in workers), "the loader workers were not ended"
    resumed = _run(workspace, [*args, "--resume"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resumed at row {saved}" in resumed.stdout
    _assert_equals_reference(out, want)


def test_torchrun_sigterm_each_rank_flushes_its_shard_exits_75_and_resume_completes(workspace, reference):
    want = reference("image")
    out = workspace / "ranks.h5"
    args = _args(workspace, "image", out)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    shards = [out.with_name(f"ranks.shard-{rank}-of-2.h5") for rank in range(2)]
    codes = workspace / "rank-codes"
    codes.mkdir()
    proc = subprocess.Popen(
        [*torchrun, str(workspace / "runner.py"), *args],
        cwd=ROOT,
        env=_env(TINY_DELAY=2 * DELAY, TINY_RC_DIR=codes),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    _wait_for_rows(shards, BATCH, proc)
    proc.send_signal(signal.SIGTERM)  # to the launcher, as Kubernetes does; it forwards SIGTERM to the ranks
    _, stderr = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode != 0
    assert stderr.count("python -m encode: stopped: SIGTERM received: ") == 2, stderr[-4000:]
    assert sorted(p.read_text() for p in codes.glob("rank-*.rc")) == [str(EXIT_PREEMPTED)] * 2
    assert not out.exists()
    assert all(0 < _rows_done(shard) < 6 for shard in shards)
    resumed = subprocess.run(
        [*torchrun, str(workspace / "runner.py"), *args, "--resume"],
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert not any(shard.exists() for shard in shards)
    _assert_equals_reference(out, want)


# --- a full disk ------------------------------------------------------------------------------------------


def test_full_disk_is_a_one_line_error_exit_74_and_resume_completes(workspace, reference):
    want = reference("image")
    out = workspace / "full.h5"
    args = _args(workspace, "image", out)
    proc = _run(workspace, args, TINY_FULL_DISK_AFTER=2)  # the 3rd batch's write fails with ENOSPC
    assert proc.returncode == cli.EXIT_WRITE_FAILED == 74, proc.stderr[-3000:]
    line = _one_line(proc.stderr, "error")
    assert f"cannot write {out}: the disk is full (no space left on device). 4 of 12 rows are saved" in line
    assert line.endswith("free some space, then run the same command with --resume.")
    assert "Traceback" not in proc.stderr
    assert _rows_done(out) == 4
    with h5py.File(out, "r") as f:  # opens normally; the rows before the failed write are intact
        assert f["features"][:4].tobytes() == want[0]["features"][: 4 * 6 * 2]
        assert f["valid"][:4].all() and not f.attrs["complete"]
    resumed = _run(workspace, [*args, "--resume"])  # "after freeing space"
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed at row 4" in resumed.stdout
    _assert_equals_reference(out, want)


# --- an unreadable --out, and a store open in another process ---------------------------------------------


def _cli(argv: list[str], capsys, monkeypatch) -> tuple[int, str, str]:
    monkeypatch.setattr(
        cli,
        "load_backbone",
        lambda args, device: TinyTextBackbone() if args.modality == "text" else TinyImageBackbone(),
    )
    code = cli.main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_overwrite_moves_an_unreadable_file_aside(
    workspace, reference, tmp_path, capsys, monkeypatch, caplog
):
    want = reference("image")
    out = tmp_path / "img.h5"
    damaged = (workspace / "reference-image.h5").read_bytes()[:3000]  # a store cut short
    out.write_bytes(damaged)
    args = [*_args(workspace, "image", out), "--num-workers", "0"]
    code, _, err = _cli([*args, "--resume"], capsys, monkeypatch)
    assert code == 2
    line = _one_line(err, "error")
    assert "cannot be resumed: it is not a readable feature store" in line
    assert "Pass --overwrite to move it aside (to img.unreadable-<date>-<time>.h5)" in line
    assert out.read_bytes() == damaged

    code, out_text, _ = _cli([*args, "--overwrite"], capsys, monkeypatch)
    assert code == 0 and "wrote" in out_text
    aside = list(tmp_path.glob("img.unreadable-*.h5"))
    assert len(aside) == 1 and aside[0].read_bytes() == damaged  # the original bytes, kept
    assert len(aside[0].name) == len("img.unreadable-20250101-120000.h5")
    assert f"moved it aside to {aside[0]}" in caplog.text
    _assert_equals_reference(out, want)

    code, _, _ = _cli([*args, "--overwrite"], capsys, monkeypatch)  # a readable store is replaced, not moved
    assert code == 0 and len(list(tmp_path.glob("img.unreadable-*.h5"))) == 1
    _assert_equals_reference(out, want)


def _partial_store(workspace: Path, out: Path, capsys, monkeypatch) -> bytes:
    """An unfinished image store (2 of 6 batches), as a run stopped by SIGTERM leaves it."""
    stopping = TinyImageBackbone(die_on_call=2, die_signal=signal.SIGTERM)
    monkeypatch.setattr(cli, "load_backbone", lambda args, device: stopping)
    assert cli.main([*_args(workspace, "image", out), "--num-workers", "0"]) == EXIT_PREEMPTED
    capsys.readouterr()
    assert _rows_done(out) == 4
    return out.read_bytes()


@pytest.mark.parametrize(
    ("holder", "flag"),
    [("r+", "--resume"), ("r+", "--overwrite"), ("r+", None), ("r", "--resume")],
    ids=["writer-resume", "writer-overwrite", "writer-no-flag", "reader-resume"],
)
def test_a_store_open_in_another_process_is_waited_for_then_reported(
    workspace, tmp_path, capsys, monkeypatch, caplog, holder, flag
):
    """Held open by a writer (r+: what an encode or its forked workers hold) or by a reader (r)."""
    out = tmp_path / "img.h5"
    before = _partial_store(workspace, out, capsys, monkeypatch)
    monkeypatch.setattr(encode.store, "LOCK_WAIT_SECONDS", 1.0)
    other = hold_open(out, holder)
    try:
        began = time.monotonic()
        code, _, err = _cli(
            [*_args(workspace, "image", out), "--num-workers", "0", *([flag] if flag else [])],
            capsys,
            monkeypatch,
        )
        waited = time.monotonic() - began
    finally:
        release(other)
    assert code == cli.EXIT_BAD_INPUT, err
    line = _one_line(err, "error")
    assert (
        f"{out} is open in another process (pid {other.pid}) — another encode still running, or its " in line
    )
    assert "workers still exiting; it was still locked after 1 s" in line
    assert "--overwrite" not in line
    assert "is open in another process; waiting up to 1 s" in caplog.text  # said before the bounded wait
    assert 1.0 <= waited < 30
    assert out.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["img.h5"]  # nothing moved aside or created


def test_a_lock_released_during_the_wait_is_waited_for(workspace, tmp_path, capsys, monkeypatch, caplog):
    out = tmp_path / "img.h5"
    _partial_store(workspace, out, capsys, monkeypatch)
    monkeypatch.setattr(encode.store, "LOCK_WAIT_SECONDS", 30.0)
    other = hold_open(out, "r+", seconds=1.5)
    try:
        code, stdout, err = _cli(
            [*_args(workspace, "image", out), "--num-workers", "0", "--resume"], capsys, monkeypatch
        )
    finally:
        release(other)
    assert code == 0, err
    assert "resumed at row 4" in stdout and "waiting up to 30 s" in caplog.text
    with FeatureStore(out) as store:
        assert store.complete and store.valid.all() and len(store) == IMAGES
    assert np.isfinite(FeatureStore(out).load()).all()
