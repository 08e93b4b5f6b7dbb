"""Distributed evaluation: ``torchrun --nproc_per_node 2 -m evaluate`` (gloo, CPU) gives exactly the numbers of
one process, caches one entry per rank's shard, and a rerun re-encodes only the shards whose entries are gone.

End to end on COCO-mini val2017 (79 real images, 395 captions) and the 500-image ImageNet sample with a tiny
random open_clip model whose init is seeded, so every process builds the same weights (the same fingerprint).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from evaluate.encoding import shard_range
from evaluate.results import EvalResult

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
COCO = DATA / "coco-mini"
IMAGENET = DATA / "imagenet-sample"
TINY_ARCH = "evaluate-distributed-tiny"
TINY_CONFIG = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}
RUNNER = '''"""``python -m evaluate`` with a tiny open_clip architecture registered and its random init seeded."""

import os
import runpy
import sys
from pathlib import Path

import open_clip
import torch

open_clip.add_model_config(Path(os.environ["DIST_TINY_CONFIG"]))
torch.manual_seed(0)
sys.argv = ["python -m evaluate", *sys.argv[1:]]
runpy.run_module("evaluate", run_name="__main__", alter_sys=True)
'''
SHARD_ENTRY = re.compile(
    r"^(?P<kind>[a-z-]+)-(?P<digest>[0-9a-f]{32})-(?P<start>\d+)-(?P<end>\d+)\.safetensors$"
)

needs_data = pytest.mark.skipif(
    not (COCO.is_dir() and IMAGENET.is_dir()), reason="needs ../shared/data/coco-mini and imagenet-sample"
)


def test_shards_are_contiguous_balanced_whole_batches():
    for total, batch, world in [(79, 8, 2), (395, 8, 2), (10, 4, 3), (3, 8, 2), (0, 8, 2), (100, 7, 4)]:
        ranges = [shard_range(total, batch, rank, world) for rank in range(world)]
        assert ranges[0][0] == 0 and ranges[-1][1] == total
        assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:], strict=False))
        assert all(start % batch == 0 for start, end in ranges if end > start)
        batches = [-(-(end - start) // batch) for start, end in ranges]
        assert max(batches) - min(batches) <= 1
    assert [shard_range(79, 8, r, 2) for r in range(2)] == [(0, 40), (40, 79)]
    assert [shard_range(3, 8, r, 2) for r in range(2)] == [(0, 3), (3, 3)]  # an empty last shard


@dataclass
class Evaluator:
    runner: Path
    config: Path

    def run(self, args: list[str], cache_dir: Path, output: Path, ranks: int) -> tuple[EvalResult, str]:
        launcher = [sys.executable]
        if ranks > 1:
            launcher += ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}"]
        env = {k: v for k, v in os.environ.items() if k not in ("EVALUATE_CACHE_DIR", "WORLD_SIZE", "RANK")}
        env |= {
            "PYTHONPATH": str(REPO),
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false",
            "OMP_NUM_THREADS": "1",
            "TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1",
            "DIST_TINY_CONFIG": str(self.config),
            "EVALUATE_CACHE_DIR": str(cache_dir),
        }
        command = [
            *launcher,
            str(self.runner),
            *args,
            "--model",
            f"open_clip:{TINY_ARCH}",
            "--output",
            str(output),
        ]
        done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
        log = done.stdout + done.stderr
        assert done.returncode == 0, log[-4000:]
        return EvalResult.load(output), log


@pytest.fixture(scope="module")
def evaluator(tmp_path_factory) -> Evaluator:
    folder = tmp_path_factory.mktemp("runner")
    (folder / "runner.py").write_text(RUNNER)
    (folder / f"{TINY_ARCH}.json").write_text(json.dumps(TINY_CONFIG))
    return Evaluator(folder / "runner.py", folder / f"{TINY_ARCH}.json")


def shard_entries(cache_dir: Path) -> dict[tuple[str, int, int], Path]:
    """``(kind, start, end) -> path`` of every per-shard entry (one fingerprint folder)."""
    entries = {}
    for path in cache_dir.glob("*/*.safetensors"):
        match = SHARD_ENTRY.match(path.name)
        assert match, f"not a shard entry: {path.name}"
        entries[(match["kind"], int(match["start"]), int(match["end"]))] = path
    return entries


@needs_data
@pytest.mark.slow
def test_retrieval_on_two_ranks_matches_one_process_and_resumes_per_shard(evaluator, tmp_path):
    args = ["retrieval", "--data", str(COCO), "--batch-size", "8"]
    single, _ = evaluator.run(args, tmp_path / "cache1", tmp_path / "one.json", ranks=1)
    first, _ = evaluator.run(args, tmp_path / "cache2", tmp_path / "two.json", ranks=2)
    assert first.metrics == single.metrics and first.counts == single.counts == {
        "images": 79,
        "captions": 395,
    }
    assert first.ties == single.ties and first.model["fingerprint"] == single.model["fingerprint"]
    assert first.settings["world_size"] == 2 and "world_size" not in single.settings
    assert (first.settings["cache_hits"], first.settings["cache_misses"]) == (0, 4)

    # 79 images, 395 captions in batches of 8: 10 and 50 batches, half per rank
    entries = shard_entries(tmp_path / "cache2")
    assert set(entries) == {("image", 0, 40), ("image", 40, 79), ("text", 0, 200), ("text", 200, 395)}
    assert len({SHARD_ENTRY.match(p.name)["digest"] for k, p in entries.items() if k[0] == "text"}) == 1

    # an evaluation killed after rank 0 stored its image shard: only rank 1's shard is encoded again
    lost = entries[("image", 40, 79)]
    lost.unlink()
    mtimes = {key: path.stat().st_mtime_ns for key, path in entries.items() if path != lost}
    rerun, log = evaluator.run(args, tmp_path / "cache2", tmp_path / "rerun.json", ranks=2)
    assert rerun.metrics == single.metrics
    assert (rerun.settings["cache_hits"], rerun.settings["cache_misses"]) == (3, 1)
    assert lost.is_file() and f"feature cache miss: {lost}" in log
    assert log.count("feature cache hit:") == 3
    assert {key: entries[key].stat().st_mtime_ns for key in mtimes} == mtimes
    assert shard_entries(tmp_path / "cache2").keys() == entries.keys()

    # one process keeps its single entry per input kind, under the same inputs digest the shards carry
    singles = {p.stem for p in (tmp_path / "cache1").glob("*/*.safetensors")}
    assert singles == {f"{kind}-{SHARD_ENTRY.match(p.name)['digest']}" for (kind, _, _), p in entries.items()}


@needs_data
def test_zeroshot_on_two_ranks_matches_one_process(evaluator, tmp_path):
    (tmp_path / "template.txt").write_text("a photo of a {}.\n")
    args = ["zeroshot", "--data", str(IMAGENET), "--templates", str(tmp_path / "template.txt")]
    single, _ = evaluator.run(args, tmp_path / "cache1", tmp_path / "one.json", ranks=1)
    both, _ = evaluator.run(args, tmp_path / "cache2", tmp_path / "two.json", ranks=2)
    assert both.metrics == single.metrics and both.counts == single.counts
    assert both.ties == single.ties
    # 500 images and 1000 prompts in batches of 64: 8 and 16 batches, half per rank
    assert set(shard_entries(tmp_path / "cache2")) == {
        ("image", 0, 256),
        ("image", 256, 500),
        ("text", 0, 512),
        ("text", 512, 1000),
    }


GATHER_SCRIPT = '''"""Each rank gathers sharded features of N inputs (batch 8) and writes what it got."""

import sys
from pathlib import Path

import torch

from core.distributed import init_distributed, leave_process_group
from evaluate.cache import FeatureCache
from evaluate.encoding import _sharded

rank, world, _ = init_distributed(torch.device("cpu"))
total, out = int(sys.argv[1]), Path(sys.argv[2])
items = [f"item {i}" for i in range(total)]


def compute(start, end):
    return torch.arange(start, end, dtype=torch.float32)[:, None].repeat(1, 3)


features = _sharded(FeatureCache(out / "cache", "fp"), "text", items, compute, 8)
torch.save(features, out / f"rank{rank}.pt")
torch.distributed.barrier()  # as evaluate's CLI: leave the group together
leave_process_group()
'''


@pytest.mark.parametrize("total", [3, 21])
def test_gather_handles_uneven_and_empty_shards(tmp_path, total):
    script = tmp_path / "gather.py"
    script.write_text(GATHER_SCRIPT)
    env = os.environ | {
        "PYTHONPATH": str(REPO),
        "OMP_NUM_THREADS": "1",
        "TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1",
    }
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    done = subprocess.run(
        [*command, str(script), str(total), str(tmp_path)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    expected = torch.arange(total, dtype=torch.float32)[:, None].repeat(1, 3)
    for rank in range(2):
        torch.testing.assert_close(torch.load(tmp_path / f"rank{rank}.pt"), expected, rtol=0, atol=0)
    ranges = {key[1:] for key in shard_entries(tmp_path / "cache")}
    assert ranges == {r for r in (shard_range(total, 8, k, 2) for k in range(2)) if r[1] > r[0]}
