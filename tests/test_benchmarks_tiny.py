"""The GPU benchmark run at toy sizes on the CPU (``bash benchmarks/run_gpu.sh --tiny``): every part runs and
reports finite positive figures, and the table names the device."""

from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

EXPECTED = {
    "align": [
        "step_s",
        "peak_mib",
        "tflops",
        "matmul_peak_tflops",
        "share_of_peak",
        "executed_tflops",
        "executed_share_of_peak",
        "dense_step_s",
    ],
    "encode": ["forward_images_per_s", "pipeline_0_workers_images_per_s", "pipeline_1_workers_vs_forward"],
    "gradcache": [
        "plain_step_s",
        "gradcache_same_batch_vs_plain",
        "floor_vs_plain",
        "chunked_floor_vs_plain",
        "gradcache_big_step_s",
        "plain_peak_mib",
        "gradcache_big_peak_mib",
    ],
    "loss": ["chunked_N1024_mib", "dense_N1024_mib", "chunked_N4096_mib", "dense_formula_N4096_mib"],
}


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    raise AssertionError("no model name in /proc/cpuinfo")


def test_run_gpu_tiny_reports_every_part(tmp_path):
    out = tmp_path / "gpu.json"
    done = subprocess.run(
        ["bash", "benchmarks/run_gpu.sh", "--tiny", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["mode"] == "tiny" and report["device_type"] == "cpu"
    assert cpu_model() in report["device"]
    for name, keys in EXPECTED.items():
        part = report["parts"][name]
        assert part["status"] == "ok", part.get("traceback")
        figures = part["figures"]
        assert set(keys) <= set(figures), (name, sorted(figures))
        for key, value in figures.items():
            assert isinstance(value, (int, float)) and math.isfinite(value) and value > 0, (name, key, value)

    # The executed GEMM FLOPs are the model FLOPs less f1's and f2's input gradients (2 x batch x their weights),
    # which the fused LayerNorm skips, plus the one-row products dbeta = s W that replace them.
    align = report["parts"]["align"]["config"]
    head, width = align["head"], align["head"]["width_factor"]
    f1_f2_weights = 2 * width * (head["image_dim"] ** 2 + head["text_dim"] ** 2)
    expected = align["flop_per_step"] - 2 * align["batch"] * f1_f2_weights + 2 * f1_f2_weights
    assert align["executed_gemm_flop_per_step"] == expected

    # GradCache ran at a batch the plain step did not fit, within the limit the plain step broke.
    gc = report["parts"]["gradcache"]
    search = gc["config"]["search"]
    assert search[-1]["fits"] is False and search[-1]["batch"] == gc["config"]["gradcache_batch"]
    assert gc["figures"]["gradcache_big_peak_mib"] < gc["config"]["cpu_limit_mib"]
    # The chunked loss needs less memory than the dense formula where both ran.
    loss = report["parts"]["loss"]["figures"]
    assert loss["chunked_N1024_mib"] < loss["dense_N1024_mib"]

    table = out.with_suffix(".md").read_text()
    assert report["device"] in table.splitlines()[0]
    assert report["device"] in done.stdout
    for name in EXPECTED:
        assert f"| {name} | " in table
