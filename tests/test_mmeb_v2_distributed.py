"""``torchrun --nproc_per_node 2 -m evaluate mmeb --version 2`` (gloo, CPU): the ranks split the encoding into
shards of whole batches and the numbers equal one process's, on an image, a video and a visual-document task
(the layout of test_mmeb_v2) with a tiny random open_clip model (videos: the mean of the frames' embeddings)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import open_clip
import pytest
import torch
from test_evaluate_distributed import RUNNER, TINY_ARCH, TINY_CONFIG, Evaluator
from test_mmeb_v2 import build_layout

from evaluate.cli import main
from evaluate.results import EvalResult

SHARD_ENTRY = re.compile(r"^mmeb-v2-(?P<digest>[0-9a-f]{32})-(?P<start>\d+)-(?P<end>\d+)\.safetensors$")


@pytest.fixture(scope="module")
def evaluator(tmp_path_factory) -> Evaluator:
    folder = tmp_path_factory.mktemp("runner")
    (folder / "runner.py").write_text(RUNNER)
    (folder / f"{TINY_ARCH}.json").write_text(json.dumps(TINY_CONFIG))
    return Evaluator(folder / "runner.py", folder / f"{TINY_ARCH}.json")


def one_process(evaluator: Evaluator, args: list[str], cache: Path, output: Path, monkeypatch) -> EvalResult:
    """The runner's steps in this process (saves a launch): the tiny architecture, the seeded init, one thread."""
    open_clip.add_model_config(evaluator.config)
    monkeypatch.setenv("EVALUATE_CACHE_DIR", str(cache))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        assert main([*args, "--model", f"open_clip:{TINY_ARCH}", "--output", str(output)]) == 0
    finally:
        torch.set_num_threads(threads)
    return EvalResult.load(output)


def test_two_ranks_match_one_process(evaluator, tmp_path, monkeypatch):
    layout = tmp_path / "data"
    build_layout(layout)
    args = ["mmeb", "--version", "2", "--data", str(layout), "--batch-size", "2", "--num-frames", "4"]
    single = one_process(evaluator, args, tmp_path / "cache1", tmp_path / "one.json", monkeypatch)
    both, _ = evaluator.run(args, tmp_path / "cache2", tmp_path / "two.json", ranks=2)
    assert set(single.details["per_task"]) == {"MSCOCO_i2t", "MSR-VTT", "ViDoRe_arxivqa"}
    assert both.metrics == single.metrics and both.counts == single.counts
    assert both.details["per_task"] == single.details["per_task"]
    assert both.settings["world_size"] == 2
    # every input list was split: two shard entries each (rank 0's first half of the batches, rank 1's rest)
    shards: dict[str, list[tuple[int, int]]] = {}
    for path in (tmp_path / "cache2").glob("*/*.safetensors"):
        match = SHARD_ENTRY.match(path.name)
        assert match, path.name
        shards.setdefault(match["digest"], []).append((int(match["start"]), int(match["end"])))
    singles = {p.stem.removeprefix("mmeb-v2-") for p in (tmp_path / "cache1").glob("*/*.safetensors")}
    assert set(shards) == singles and len(singles) == 6  # queries and candidates of three tasks
    for ranges in shards.values():
        (a, b), (c, d) = sorted(ranges)
        assert a == 0 and b == c and b % 2 == 0 and d > c
