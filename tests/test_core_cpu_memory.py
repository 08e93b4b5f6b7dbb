"""core.cpu_memory: freed CPU tensors stay in the process (no page faults when the next step allocates)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PROBE = """
import json, resource, sys, torch
from core.cpu_memory import retain_freed_memory
applied = retain_freed_memory() if sys.argv[1] == "retain" else None
def faults_of_one_step():
    # a training step's pattern: large activations (above glibc's 32 MiB mmap ceiling) made, used, freed
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    a = torch.ones(2048, 4608)
    b = a * 2
    c = a + b
    del a, b, c
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
for _ in range(3):
    faults_of_one_step()  # warm-up: the first steps fault their pages in
print(json.dumps({"applied": applied, "faults": faults_of_one_step()}))
"""

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="glibc's allocator is the one this module tunes"
)


def _probe(mode: str, **env: str) -> dict:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"}
    done = subprocess.run(
        [sys.executable, "-c", PROBE, mode], cwd=ROOT, env={**clean, **env}, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_a_step_reuses_the_memory_the_previous_one_freed():
    pages = 3 * 2048 * 4608 * 4 // 4096
    default = _probe("default")
    retained = _probe("retain")
    assert default["faults"] > pages // 2  # glibc unmapped the buffer and the kernel zero-fills it again
    assert retained["applied"] is True
    assert retained["faults"] < pages // 50


def test_the_users_own_malloc_settings_are_left_alone():
    probed = _probe("retain", MALLOC_TRIM_THRESHOLD_="0")
    assert probed["applied"] is False
    assert probed["faults"] > 3 * 2048 * 4608 * 4 // 4096 // 2


def test_a_gpu_device_leaves_the_allocator_alone():
    from core.cpu_memory import retain_freed_memory

    assert retain_freed_memory("cuda:0") is False  # returns before touching glibc: safe in this process
