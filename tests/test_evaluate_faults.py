"""Faults a cluster inflicts on a long evaluation, and damaged or unwritable feature caches.

End to end: ``python -m evaluate retrieval`` on COCO-mini val2017 (79 real images, 395 captions) with a tiny
random open_clip model, in a subprocess, SIGKILLed at seeded random points and inside the cache's write path,
then rerun at once: the rerun's metrics equal an uninterrupted run's and the cache holds only complete entries.
The subprocess is ``python -m evaluate`` run through :data:`RUNNER`, which registers the tiny architecture with
open_clip, seeds its random init (the same weights, so the same fingerprint, in every process) and, when asked,
kills itself at an exact point of the cache's write path.

In process, with a model whose embeddings the test chooses: damaged entries are moved aside and recomputed;
disk full, permission denied or a cache path that is a file cost one warning and no numbers.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from evaluate_helpers import PALETTE, FakeModel, write_coco_captions
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from evaluate import cache as cache_module
from evaluate import tasks
from evaluate.cache import STALE_TMP_SECONDS, FeatureCache, features_checksum, model_fingerprint
from evaluate.datasets import RetrievalData, load_retrieval
from evaluate.results import EvalResult

REPO = Path(__file__).resolve().parents[1]
COCO = REPO.parent / "shared" / "data" / "coco-mini"
TINY_ARCH = "evaluate-fault-tiny"
TINY_CONFIG = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}
RUNNER = '''"""``python -m evaluate`` with a tiny open_clip architecture registered and its random init seeded.

Prints a line on stderr after each cache entry it stores. FAULT_KILL=mid-write:N SIGKILLs this process inside the
N-th cache write, after half of the temporary file is written; FAULT_KILL=after-write:N right after the N-th
entry is in place.
"""

import os
import runpy
import signal
import sys
from pathlib import Path

import open_clip
import torch

import evaluate.cache as cache

open_clip.add_model_config(Path(os.environ["FAULT_TINY_CONFIG"]))
torch.manual_seed(0)
mode, _, nth = os.environ.get("FAULT_KILL", "").partition(":")
writes = 0
real_save_file, real_store = cache.save_file, cache.FeatureCache._store


def save_file(tensors, filename, metadata=None):
    global writes
    writes += 1
    real_save_file(tensors, filename, metadata=metadata)
    if mode == "mid-write" and writes == int(nth):
        os.truncate(filename, os.path.getsize(filename) // 2)
        os.kill(os.getpid(), signal.SIGKILL)


def store(self, path, kind, features):
    real_store(self, path, kind, features)
    sys.stderr.write("fault-runner: cache entry stored\\n")
    sys.stderr.flush()
    if mode == "after-write" and writes == int(nth):
        os.kill(os.getpid(), signal.SIGKILL)


cache.save_file = save_file
cache.FeatureCache._store = store
sys.argv = ["python -m evaluate", *sys.argv[1:]]
runpy.run_module("evaluate", run_name="__main__", alter_sys=True)
'''
ENCODING_STARTED = b"encode images"
ENTRY_STORED = b"fault-runner: cache entry stored"

needs_coco = pytest.mark.skipif(not COCO.is_dir(), reason="needs ../shared/data/coco-mini")


@dataclass
class Evaluator:
    """Runs the tiny model's retrieval evaluation on COCO-mini val2017 in a subprocess."""

    runner: Path
    config: Path

    def command(self, output: Path) -> list[str]:
        return [
            sys.executable,
            str(self.runner),
            "retrieval",
            "--model",
            f"open_clip:{TINY_ARCH}",
            "--data",
            str(COCO),
            "--output",
            str(output),
            "--batch-size",
            "8",
        ]

    def env(self, cache_dir: Path, fault: str = "") -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in ("FAULT_KILL", "EVALUATE_CACHE_DIR")}
        env |= {
            "PYTHONPATH": str(REPO),
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false",
            "OMP_NUM_THREADS": "1",
            "FAULT_TINY_CONFIG": str(self.config),
            "EVALUATE_CACHE_DIR": str(cache_dir),
        }
        return env | ({"FAULT_KILL": fault} if fault else {})

    def start(self, cache_dir: Path, output: Path, fault: str = "") -> Run:
        process = subprocess.Popen(
            self.command(output),
            cwd=REPO,
            env=self.env(cache_dir, fault),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        return Run(process, output)

    def run(self, cache_dir: Path, output: Path, fault: str = "") -> Run:
        run = self.start(cache_dir, output, fault)
        run.wait()
        return run


class Run:
    """A running evaluation whose stderr a thread drains (and keeps), noting when encoding starts (``marks[0]``)
    and when each cache entry is stored (``marks[1]``, ``marks[2]``)."""

    def __init__(self, process: subprocess.Popen, output: Path) -> None:
        self.process = process
        self.output = output
        self.marks: list[float] = []
        self._marked = threading.Condition()
        self.stderr = bytearray()
        self._reader = threading.Thread(target=self._drain, daemon=True)
        self._reader.start()

    def _drain(self) -> None:
        stream = self.process.stderr
        for chunk in iter(lambda: stream.read1(65536), b""):
            self.stderr += chunk
            marks = int(ENCODING_STARTED in self.stderr) + self.stderr.count(ENTRY_STORED)
            with self._marked:
                self.marks += [time.monotonic()] * (marks - len(self.marks))
                self._marked.notify_all()
        with self._marked:
            self._marked.notify_all()

    def wait(self, timeout: float = 120) -> int:
        code = self.process.wait(timeout=timeout)
        self._reader.join(timeout=10)
        return code

    def kill_after(self, mark: int, delay: float) -> int:
        """SIGKILL ``delay`` s after ``marks[mark]`` (no-op if the process has finished by then)."""
        with self._marked:
            self._marked.wait_for(lambda: len(self.marks) > mark or not self._reader.is_alive(), timeout=120)
        assert len(self.marks) > mark, self.log()
        time.sleep(delay)
        self.process.send_signal(signal.SIGKILL)
        return self.wait()

    def log(self) -> str:
        return self.stderr.decode(errors="replace")[-4000:]

    def result(self) -> EvalResult:
        assert self.process.returncode == 0, self.log()
        return EvalResult.load(self.output)


@dataclass
class Baseline:
    result: EvalResult
    marks: list[float]
    """When encoding started and each of the two cache entries was stored (see :class:`Run`)."""


@pytest.fixture(scope="module")
def evaluator(tmp_path_factory) -> Evaluator:
    folder = tmp_path_factory.mktemp("runner")
    (folder / "runner.py").write_text(RUNNER)
    (folder / f"{TINY_ARCH}.json").write_text(json.dumps(TINY_CONFIG))
    return Evaluator(folder / "runner.py", folder / f"{TINY_ARCH}.json")


@pytest.fixture(scope="module")
def baseline(evaluator, tmp_path_factory) -> Baseline:
    """An uninterrupted run with an empty cache: the reference numbers and how long its encoding phase takes."""
    folder = tmp_path_factory.mktemp("baseline")
    run = evaluator.run(folder / "cache", folder / "result.json")
    result = run.result()
    assert result.counts == {"images": 79, "captions": 395}
    assert (result.settings["cache_hits"], result.settings["cache_misses"]) == (0, 2)
    assert_complete_entries(folder / "cache", 2)
    assert len(run.marks) == 3, run.log()
    return Baseline(result, run.marks)


def cache_files(cache_dir: Path) -> list[Path]:
    return sorted(p for p in cache_dir.rglob("*") if p.is_file()) if cache_dir.is_dir() else []


def assert_complete_entries(cache_dir: Path, count: int) -> None:
    """The cache holds exactly ``count`` files, each a whole entry whose features match its checksum."""
    files = cache_files(cache_dir)
    assert [p.suffix for p in files] == [".safetensors"] * count, files
    for path in files:
        with safe_open(str(path), framework="pt") as entry:
            metadata = entry.metadata()
            features = entry.get_tensor("features")
        assert metadata["key"] == path.stem and metadata["rows"] == str(features.shape[0])
        assert metadata["sha256"] == features_checksum(features)


def assert_same_numbers(result: EvalResult, baseline: Baseline) -> None:
    assert result.metrics == baseline.result.metrics
    assert result.counts == baseline.result.counts
    assert result.model["fingerprint"] == baseline.result.model["fingerprint"]


# ----- SIGKILL, then rerun at once ----------------------------------------------------------------------------


@needs_coco
@pytest.mark.parametrize(
    ("seed", "phase"),
    [(0, "encoding images"), (1, "encoding captions"), (2, "anywhere")],
    ids=str,
)
def test_sigkill_at_a_random_point_then_rerun_gives_the_uninterrupted_numbers(
    evaluator, baseline, tmp_path, seed, phase
):
    """A seeded random point of a phase, from the start of the phase in this run, for as long as the phase
    took in the baseline run: images are encoded and stored first, then captions."""
    mark, end = {"encoding images": (0, 1), "encoding captions": (1, 2), "anywhere": (0, 2)}[phase]
    delay = random.Random(seed).uniform(0.0, baseline.marks[end] - baseline.marks[mark])
    cache_dir = tmp_path / "cache"
    killed = evaluator.start(cache_dir, tmp_path / "killed.json")
    killed.kill_after(mark, delay)
    left = [p.name.split(".")[-1] for p in cache_files(cache_dir)]
    assert set(left) <= {"safetensors", "tmp"}, left
    rerun = evaluator.run(cache_dir, tmp_path / "result.json")
    result = rerun.result()
    assert_same_numbers(result, baseline)
    hits = left.count("safetensors")  # the entries the killed run completed are reused
    assert (result.settings["cache_hits"], result.settings["cache_misses"]) == (hits, 2 - hits), left
    assert_complete_entries(cache_dir, 2)


@needs_coco
@pytest.mark.parametrize(
    ("fault", "left_behind"),
    [("mid-write:1", ["tmp"]), ("mid-write:2", ["safetensors", "tmp"]), ("after-write:1", ["safetensors"])],
    ids=["mid-write:1", "mid-write:2", "after-write:1"],
)
def test_sigkill_inside_the_cache_write_then_rerun_gives_the_uninterrupted_numbers(
    evaluator, baseline, tmp_path, fault, left_behind
):
    cache_dir = tmp_path / "cache"
    killed = evaluator.run(cache_dir, tmp_path / "killed.json", fault=fault)
    assert killed.process.returncode == -signal.SIGKILL, killed.log()
    files = cache_files(cache_dir)
    assert [p.suffix.lstrip(".") for p in files] == left_behind
    torn = [p for p in files if p.suffix == ".tmp"]
    for tmp in torn:  # a half-written temporary file of this process: never what an entry is read from
        assert f".{killed.process.pid}." in tmp.name and socket.gethostname() in tmp.name
    rerun = evaluator.run(cache_dir, tmp_path / "result.json")
    result = rerun.result()
    assert_same_numbers(result, baseline)
    hits = left_behind.count("safetensors")
    assert (result.settings["cache_hits"], result.settings["cache_misses"]) == (hits, 2 - hits)
    assert_complete_entries(cache_dir, 2)  # the killed run's temporary file is gone
    assert all(f"removing temporary file of an interrupted cache write: {p}" in rerun.log() for p in torn)


@needs_coco
def test_two_evaluations_sharing_a_cache_dir_do_not_clobber_each_other(evaluator, baseline, tmp_path):
    cache_dir = tmp_path / "cache"
    runs = [evaluator.start(cache_dir, tmp_path / f"result{i}.json") for i in range(2)]
    for run in runs:
        run.wait()
        assert_same_numbers(run.result(), baseline)
        assert "WARNING evaluate.cache" not in run.log()
    assert_complete_entries(cache_dir, 2)


# ----- in process: damaged entries, temporary files, write failures -------------------------------------------

IMAGES = PALETTE[:3]
CAPTIONS = [(0, "red"), (1, "green"), (2, "blue")]
VECTORS = {PALETTE[0]: [1, 0, 0], PALETTE[1]: [0, 1, 0], PALETTE[2]: [0, 0, 1]}
TEXTS = {"red": [1, 0, 0], "green": [0, 1, 0], "blue": [0, 0, 1]}


@pytest.fixture
def coco(tmp_path) -> RetrievalData:
    write_coco_captions(tmp_path / "coco", "val2017", IMAGES, CAPTIONS)
    return load_retrieval(tmp_path / "coco")


def score(model: FakeModel, data: RetrievalData, cache_dir: Path | None) -> tuple[dict, FeatureCache]:
    enc = tasks.EncodeSettings(FeatureCache(cache_dir, model_fingerprint(model)), batch_size=2)
    return tasks.retrieval(model, data, enc).metrics, enc.cache


def cache_warnings(caplog) -> list[str]:
    return [
        r.getMessage() for r in caplog.records if r.name == "evaluate.cache" and r.levelno >= logging.WARNING
    ]


def _truncate(path: Path, other: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _empty(path: Path, other: Path) -> None:
    path.write_bytes(b"")


def _garbage(path: Path, other: Path) -> None:
    path.write_bytes(b"\x17not a safetensors file\n" * 20)


def _flip_a_feature_byte(path: Path, other: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x40
    path.write_bytes(bytes(data))


def _append_bytes(path: Path, other: Path) -> None:
    path.write_bytes(path.read_bytes() + b"\0" * 16)


def _copy_of_another_entry(path: Path, other: Path) -> None:
    shutil.copyfile(other, path)


def _no_metadata(path: Path, other: Path) -> None:
    save_file({"features": torch.eye(3)}, str(path))


def _other_tensor_name(path: Path, other: Path) -> None:
    save_file({"embeddings": torch.eye(3)}, str(path))


def _wrong_rows(path: Path, other: Path) -> None:
    with safe_open(str(path), framework="pt") as entry:
        metadata, features = entry.metadata(), entry.get_tensor("features")[:2].clone()
    save_file({"features": features}, str(path), metadata=metadata | {"sha256": features_checksum(features)})


def _wrong_dtype(path: Path, other: Path) -> None:
    with safe_open(str(path), framework="pt") as entry:
        metadata, features = entry.metadata(), entry.get_tensor("features").double()
    save_file({"features": features}, str(path), metadata=metadata | {"sha256": features_checksum(features)})


DAMAGE: dict[str, tuple[Callable[[Path, Path], None], str]] = {
    "truncated to half": (_truncate, "not a readable safetensors file"),
    "empty file": (_empty, "not a readable safetensors file"),
    "garbage bytes": (_garbage, "not a readable safetensors file"),
    "one feature byte flipped": (_flip_a_feature_byte, "do not match their sha256"),
    "bytes appended": (_append_bytes, "not a readable safetensors file"),
    "another entry copied over it": (_copy_of_another_entry, "metadata kind='text', expected 'image'"),
    "no metadata (written by hand)": (_no_metadata, "metadata fingerprint=None"),
    "another tensor name": (_other_tensor_name, "holds tensors ['embeddings']"),
    "rows missing, metadata consistent": (_wrong_rows, "expected float32 with 3 rows"),
    "float64 features": (_wrong_dtype, "expected float32 with 3 rows"),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_damaged_entry_is_logged_moved_aside_and_recomputed(tmp_path, coco, caplog, damage):
    cache_dir = tmp_path / "cache"
    clean, _ = score(FakeModel(VECTORS, TEXTS), coco, cache_dir)
    [image_entry] = cache_dir.rglob("image-*.safetensors")
    [text_entry] = cache_dir.rglob("text-*.safetensors")
    damage_fn, problem = DAMAGE[damage]
    damage_fn(image_entry, text_entry)
    damaged_bytes = image_entry.read_bytes()
    model = FakeModel(VECTORS, TEXTS)
    with caplog.at_level(logging.WARNING, logger="evaluate.cache"):
        metrics, cache = score(model, coco, cache_dir)
    assert metrics == clean
    assert (cache.hits, cache.misses) == (1, 1) and model.image_calls > 0 and model.text_calls == 0
    [warning] = cache_warnings(caplog)
    assert str(image_entry) in warning and problem in warning and "moved to" in warning
    aside = image_entry.with_name(image_entry.name + ".corrupt")
    assert aside.read_bytes() == damaged_bytes  # kept for inspection, never read again
    again = FakeModel(VECTORS, TEXTS)
    assert (
        score(again, coco, cache_dir)[0] == clean and again.image_calls == 0
    )  # the recomputed entry is whole


def test_an_unreadable_entry_is_recomputed_and_left_in_place(tmp_path, coco, caplog, monkeypatch):
    cache_dir = tmp_path / "cache"
    clean, _ = score(FakeModel(VECTORS, TEXTS), coco, cache_dir)

    real_safe_open = cache_module.safe_open

    def unreadable_entries(path: str, framework: str) -> object:
        if path.endswith(".safetensors"):  # entries; the cache's own read-back of what it wrote still works
            raise PermissionError(errno.EACCES, "Permission denied", path)
        return real_safe_open(path, framework=framework)

    monkeypatch.setattr(cache_module, "safe_open", unreadable_entries)
    with caplog.at_level(logging.WARNING, logger="evaluate.cache"):
        metrics, cache = score(FakeModel(VECTORS, TEXTS), coco, cache_dir)
    assert metrics == clean and cache.misses == 2
    warnings = cache_warnings(caplog)
    assert len(warnings) == 2 and all("cannot read feature cache entry" in w for w in warnings)
    assert not list(cache_dir.rglob("*.corrupt"))


def test_temporary_files_are_never_read_and_those_of_dead_or_old_writers_are_removed(tmp_path, coco):
    cache_dir = tmp_path / "cache"
    clean, cache = score(FakeModel(VECTORS, TEXTS), coco, cache_dir)
    [entry] = cache_dir.rglob("image-*.safetensors")
    host = socket.gethostname()
    finished = subprocess.Popen([sys.executable, "-c", "pass"])
    finished.wait()
    dead_pid = finished.pid
    names = {
        "dead writer here": f"{entry.name}.{dead_pid}.0a0a0a0a.{host}.tmp",
        "live writer here": f"{entry.name}.{os.getpid()}.0b0b0b0b.{host}.tmp",
        "fresh, other host": f"{entry.name}.{dead_pid}.0c0c0c0c.node-7.cluster.example.tmp",
        "old, other host": f"{entry.name}.{dead_pid}.0d0d0d0d.node-7.cluster.example.tmp",
        "old, older naming": entry.with_suffix(".tmp").name,
    }
    for name in names.values():
        (entry.parent / name).write_bytes(b"half an entry")
    old = time.time() - STALE_TMP_SECONDS - 60
    for label in ("old, other host", "old, older naming"):
        os.utime(entry.parent / names[label], (old, old))
    entry.unlink()  # the entry is recomputed; none of the temporary files is taken for it
    model = FakeModel(VECTORS, TEXTS)
    metrics, cache = score(model, coco, cache_dir)
    assert metrics == clean and (cache.hits, cache.misses) == (1, 1) and model.image_calls > 0
    left = {p.name for p in entry.parent.glob("*.tmp")}
    assert left == {names["live writer here"], names["fresh, other host"]}


def test_each_write_uses_its_own_temporary_file_beside_the_entry(tmp_path, coco, monkeypatch):
    written: list[Path] = []
    real_save_file = cache_module.save_file

    def recording_save_file(tensors: dict, filename: str, metadata: dict | None = None) -> None:
        written.append(Path(filename))
        real_save_file(tensors, filename, metadata=metadata)

    monkeypatch.setattr(cache_module, "save_file", recording_save_file)
    cache_dir = tmp_path / "cache"
    score(FakeModel(VECTORS, TEXTS), coco, cache_dir)
    for entry in cache_dir.rglob("*.safetensors"):
        entry.unlink()
    score(FakeModel(VECTORS, TEXTS), coco, cache_dir)
    assert len(written) == 4 and len(set(written)) == 4
    for tmp in written:
        assert tmp.suffix == ".tmp" and f".{os.getpid()}." in tmp.name and socket.gethostname() in tmp.name
        assert (tmp.parent / (tmp.name.split(".safetensors.")[0] + ".safetensors")).is_file()
    assert_complete_entries(cache_dir, 2)


def _fill_then_fail(error: BaseException) -> Callable[..., None]:
    def save_file(tensors: dict, filename: str, metadata: dict | None = None) -> None:
        Path(filename).write_bytes(b"\0" * 100)  # what was written before the disk filled up
        raise error

    return save_file


def _short_write_without_error(tensors: dict, filename: str, metadata: dict | None = None) -> None:
    """A filesystem that loses the end of the file and reports nothing (the read-back check catches it)."""
    save_file(tensors, filename, metadata=metadata)
    os.truncate(filename, os.path.getsize(filename) - 4)


WRITE_FAULTS: dict[str, tuple[Callable[..., None], str]] = {
    "disk full (OSError)": (
        _fill_then_fail(OSError(errno.ENOSPC, "No space left on device")),
        "No space left on device",
    ),
    "disk full (as safetensors reports it)": (
        _fill_then_fail(
            SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
        ),
        "No space left on device (os error 28)",
    ),
    "permission denied": (
        _fill_then_fail(PermissionError(errno.EACCES, "Permission denied")),
        "Permission denied",
    ),
    "I/O error": (_fill_then_fail(OSError(errno.EIO, "Input/output error")), "Input/output error"),
    "short write, no error": (_short_write_without_error, "the written entry does not read back"),
}


@pytest.mark.parametrize("fault", list(WRITE_FAULTS))
def test_a_failed_write_costs_one_warning_and_no_numbers(tmp_path, coco, caplog, monkeypatch, fault):
    clean, _ = score(FakeModel(VECTORS, TEXTS), coco, None)
    failing, reason = WRITE_FAULTS[fault]
    attempts: list[str] = []

    def save_file(tensors: dict, filename: str, metadata: dict | None = None) -> None:
        attempts.append(filename)
        failing(tensors, filename, metadata)

    monkeypatch.setattr(cache_module, "save_file", save_file)
    cache_dir = tmp_path / "cache"
    with caplog.at_level(logging.WARNING, logger="evaluate.cache"):
        metrics, cache = score(FakeModel(VECTORS, TEXTS), coco, cache_dir)
        backbone = cache.for_fingerprint("a-backbone")  # e.g. a head's backbone stage, in the same run
        backbone.get_or_compute("image-backbone", ["x", "y"], lambda: torch.ones(2, 4))
    assert metrics == clean and cache.misses == 2
    assert len(attempts) == 1  # after the first failure, the run writes no further entries
    [warning] = cache_warnings(caplog)
    assert "cannot write" in warning and reason in warning and str(cache_dir) in warning
    assert cache.write_error is not None and backbone.write_error == cache.write_error
    assert cache_files(cache_dir) == []  # no temporary file left behind


def test_a_cache_dir_that_cannot_be_created_costs_one_warning(tmp_path, coco, caplog):
    clean, _ = score(FakeModel(VECTORS, TEXTS), coco, None)
    cache_dir = tmp_path / "cache"
    cache_dir.write_text("a file where the cache dir should be")
    with caplog.at_level(logging.WARNING, logger="evaluate.cache"):
        metrics, cache = score(FakeModel(VECTORS, TEXTS), coco, cache_dir)
    assert metrics == clean and cache.misses == 2
    [warning] = cache_warnings(caplog)
    assert "cannot write" in warning and ("Not a directory" in warning or "File exists" in warning)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_cache_dir_costs_one_warning(tmp_path, coco, caplog):
    clean, _ = score(FakeModel(VECTORS, TEXTS), coco, None)
    cache_dir = tmp_path / "cache"
    cache_dir.mkdir(mode=0o500)
    try:
        with caplog.at_level(logging.WARNING, logger="evaluate.cache"):
            metrics, _ = score(FakeModel(VECTORS, TEXTS), coco, cache_dir)
    finally:
        cache_dir.chmod(0o700)
    assert metrics == clean
    [warning] = cache_warnings(caplog)
    assert "cannot write" in warning and "Permission denied" in warning


@pytest.fixture
def full_tmpfs(tmp_path):
    """A 64 KiB tmpfs filled to the last byte (needs root and mount; skipped otherwise)."""
    mount_point = tmp_path / "tmpfs"
    mount_point.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount_point)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {mounted.stderr.decode().strip()}")
    try:
        (mount_point / "cache").mkdir()
        with pytest.raises(OSError, match="No space left"), open(mount_point / "filler", "wb") as filler:
            while True:
                filler.write(b"\0" * 4096)
                filler.flush()
        yield mount_point / "cache"
    finally:
        subprocess.run(["umount", str(mount_point)], check=True)


def test_a_really_full_disk_costs_one_warning_and_no_numbers(full_tmpfs, coco, caplog):
    clean, _ = score(FakeModel(VECTORS, TEXTS), coco, None)
    with caplog.at_level(logging.WARNING, logger="evaluate.cache"):
        metrics, cache = score(FakeModel(VECTORS, TEXTS), coco, full_tmpfs)
    assert metrics == clean and cache.misses == 2
    [warning] = cache_warnings(caplog)
    assert "cannot write" in warning and "No space left on device" in warning
    assert [p for p in full_tmpfs.rglob("*") if p.is_file()] == []
