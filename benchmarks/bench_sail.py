"""Our align step against SAIL's formula re-stated in plain PyTorch (``benchmarks/sail_formula.py``), side by side.

    python -m benchmarks.bench_sail [--batch-sizes 2048 8192] [--scale 8] [--repeats 5] [--no-memory]

Both steps train SAIL-L's star head (image 2048 -> 1024, text 4096 -> 1024, width 8) with every dim divided by
``--scale`` on the same random features:

- ours: ``align.heads.AlignmentHead`` (LayerNorm and star head in one function, no LayerNorm output gradient),
  ``core.losses.siglip_loss`` (chunked), Lion from ``core.optim.build_optimizer``, the logit-scale clamp: what
  ``align.train`` runs, in a process whose freed memory glibc keeps (``core.cpu_memory``, as the training loop
  sets it on the CPU; the setting is process-wide, so the formula's step runs with it too);
- SAIL formula: ``LayerNorm -> star GLU`` as plain modules, the dense ``N x N`` sigmoid loss with mean reduction,
  a per-parameter Lion.

GEMMs alone: every matmul each step runs (backward included) is recorded once and replayed on its own, in the
same alternation, on operands of the same layouts (``benchmarks.gemm_replay``); our replay over the formula's
step is the floor any exact rewrite of our step can reach.

Times: the steps (and replays) alternate in one process (ours, formula, ours, ...), after a warm-up each; the
median of ``--repeats`` is reported as wall and as process CPU time (all threads; the CPU-time ratio stays
meaningful when other jobs share the cores). Profile: each step split into head forward + backward, loss forward +
backward and the optimizer update (the loss is backpropagated to detached embeddings first, then the head), as
shares of their sum. Peak memory: each (step, batch) in a fresh subprocess, peak RSS growth over the inputs and
the built model (``VmHWM`` reset after one warm-up step at batch 64; glibc mmap threshold fixed at 1 MiB so freed
buffers leave RSS).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass

import torch

from align.heads import AlignmentHead, HeadConfig
from benchmarks.gemm_replay import GemmReplay, record_gemms
from benchmarks.report import cpu_name, emit
from benchmarks.sail_formula import FormulaHead, FormulaStep, dense_sigmoid_loss
from core.cpu_memory import retain_freed_memory
from core.losses import siglip_loss
from core.optim import build_optimizer, param_groups

CHUNK = 4096


@dataclass(frozen=True)
class Dims:
    image: int
    text: int
    target: int
    width: int

    @classmethod
    def sail_l(cls, scale: int, width: int = 8) -> Dims:
        return cls(2048 // scale, 4096 // scale, 1024 // scale, width)


class OurStep:
    """The align step as ``align.train`` runs it (no data loading)."""

    def __init__(self, dims: Dims, lr: float = 1e-5, weight_decay: float = 1e-4, chunk: int = CHUNK) -> None:
        self.head = AlignmentHead(HeadConfig("star", dims.image, dims.text, dims.target, dims.width))
        self.optimizer = build_optimizer("lion", param_groups(self.head, weight_decay), lr=lr)
        self.chunk = chunk

    def loss(self, x: torch.Tensor, y: torch.Tensor):
        return siglip_loss(x, y, self.head.logit_scale, self.head.logit_bias, chunk_size=self.chunk).loss

    def __call__(self, image: torch.Tensor, text: torch.Tensor) -> None:
        x, y, _ = self.head(image, text)
        loss = self.loss(x, y)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.head.clamp_logit_scale_()


def build(kind: str, dims: Dims):
    torch.manual_seed(0)
    if kind == "ours":
        return OurStep(dims)
    return FormulaStep(FormulaHead(dims.image, dims.text, dims.target, dims.width))


def features(batch: int, dims: Dims) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(batch, dims.image, generator=g), torch.randn(batch, dims.text, generator=g)


def _clock() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def phases(kind: str, step, image: torch.Tensor, text: torch.Tensor) -> dict[str, float]:
    """Process CPU seconds of head (fwd + bwd), loss (fwd + bwd) and optimizer in one step."""
    head = step.head
    out: dict[str, float] = {}
    t = time.process_time()
    if kind == "ours":
        x, y, _ = head(image, text)
    else:
        x, y = head(image, text)
    out["head"] = time.process_time() - t
    xd, yd = x.detach().requires_grad_(), y.detach().requires_grad_()
    t = time.process_time()
    if kind == "ours":
        loss = step.loss(xd, yd)
    else:
        loss = dense_sigmoid_loss(xd, yd, head.log_logit_scale, head.logit_bias)
    step.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    out["loss"] = time.process_time() - t
    t = time.process_time()
    torch.autograd.backward([x, y], [xd.grad, yd.grad])
    out["head"] += time.process_time() - t
    t = time.process_time()
    step.optimizer.step()
    out["optimizer"] = time.process_time() - t
    return out


def compare(batch: int, dims: Dims, repeats: int) -> dict:
    """Alternating timed steps of both and of each one's GEMMs replayed alone, then a phase profile of each
    step (medians)."""
    image, text = features(batch, dims)
    steps = {kind: build(kind, dims) for kind in ("ours", "formula")}
    for step in steps.values():
        step(image, text)  # warm-up
    replays = {kind: GemmReplay(record_gemms(lambda s=step: s(image, text))) for kind, step in steps.items()}
    runs = {
        **{kind: lambda s=step: s(image, text) for kind, step in steps.items()},
        **{f"{kind} GEMMs": replay for kind, replay in replays.items()},
    }
    wall: dict[str, list[float]] = {k: [] for k in runs}
    cpu: dict[str, list[float]] = {k: [] for k in runs}
    for replay in replays.values():
        replay()  # warm-up
    for _ in range(repeats):
        for kind, run in runs.items():
            w, c = _clock()
            run()
            wall[kind].append(time.perf_counter() - w)
            cpu[kind].append(time.process_time() - c)
    profile = {}
    for kind, step in steps.items():
        runs = [phases(kind, step, image, text) for _ in range(max(1, repeats // 2))]
        profile[kind] = {name: statistics.median(r[name] for r in runs) for name in runs[0]}
    return {
        "batch": batch,
        "wall_s": {k: statistics.median(v) for k, v in wall.items()},
        "cpu_s": {k: statistics.median(v) for k, v in cpu.items()},
        "profile_cpu_s": profile,
        "gemm_gflop": {kind: replay.flops / 1e9 for kind, replay in replays.items()},
    }


def _rss_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def memory_worker(kind: str, batch: int, dims: Dims) -> dict:
    step = build(kind, dims)
    small = features(64, dims)
    step(*small)
    image, text = features(batch, dims)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # VmHWM := current RSS
    base = _rss_kib("VmRSS")
    step(image, text)
    return {"peak_mib": (_rss_kib("VmHWM") - base) / 1024}


def peak_memory(kind: str, batch: int, scale: int) -> float:
    cmd = [sys.executable, "-m", "benchmarks.bench_sail", "--memory-worker", kind, str(batch)]
    cmd += ["--scale", str(scale)]
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(2**20)}
    done = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"memory case {kind} batch {batch} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])["peak_mib"]


def table(results: list[dict], memory: dict[tuple[str, int], float] | None, dims: Dims, scale: int) -> None:
    emit(f"# align step, ours vs SAIL formula; CPU: {cpu_name()}, {os.cpu_count()} cores, "
         f"{torch.get_num_threads()} torch threads, torch {torch.__version__}")  # fmt: skip
    emit(f"# star head {dims.image}/{dims.text} -> {dims.target}, width {dims.width} (SAIL-L / {scale}); "
         f"ours: fused head, chunked SigLIP (chunk {CHUNK}), Lion; formula: plain autograd, dense loss")  # fmt: skip
    emit()
    emit("| batch | ours wall s | formula wall s | wall ratio | ours CPU s | formula CPU s | CPU ratio "
         "| ours peak MiB | formula peak MiB |")  # fmt: skip
    emit("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        w, c, b = r["wall_s"], r["cpu_s"], r["batch"]
        mem = ["-", "-"] if memory is None else [f"{memory[(k, b)]:.0f}" for k in ("ours", "formula")]
        emit(f"| {b:,} | {w['ours']:.3f} | {w['formula']:.3f} | {w['ours'] / w['formula']:.2f} | "
             f"{c['ours']:.3f} | {c['formula']:.3f} | {c['ours'] / c['formula']:.2f} | {mem[0]} | {mem[1]} |")  # fmt: skip
    emit()
    emit("GEMMs alone: each step's recorded mm/addmm calls replayed on fresh operands of the same layouts; "
         "ours' replay over the formula's full step is the floor any exact rewrite of ours can reach")  # fmt: skip
    emit()
    emit("| batch | step | GEMM GFLOP | GEMMs alone CPU s | GEMMs / own step | GEMMs / formula step (CPU) |")
    emit("|---:|---|---:|---:|---:|---:|")
    for r in results:
        c = r["cpu_s"]
        for kind in ("ours", "formula"):
            alone = c[f"{kind} GEMMs"]
            emit(f"| {r['batch']:,} | {kind} | {r['gemm_gflop'][kind]:.1f} | {alone:.3f} | "
                 f"{alone / c[kind]:.2f} | {alone / c['formula']:.2f} |")  # fmt: skip
    emit()
    emit("| batch | step | head (fwd + bwd) | loss (fwd + bwd) | optimizer | sum CPU s |")
    emit("|---:|---|---:|---:|---:|---:|")
    for r in results:
        for kind, p in r["profile_cpu_s"].items():
            total = sum(p.values())
            shares = " | ".join(f"{100 * p[n] / total:.0f} %" for n in ("head", "loss", "optimizer"))
            emit(f"| {r['batch']:,} | {kind} | {shares} | {total:.3f} |")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_sail",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 2)[2],
    )
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[2048, 8192])
    p.add_argument("--scale", type=int, default=8, help="divide SAIL-L's dims by this (default 8)")
    p.add_argument("--repeats", type=int, default=5, help="timed steps of each (median reported)")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    p.add_argument("--json", default=None, help="also write the figures to this JSON file")
    p.add_argument("--memory-worker", nargs=2, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.scale < 1 or args.repeats < 1 or min(args.batch_sizes) < 2:
        p.error("--scale and --repeats must be positive and every batch size at least 2")
    dims = Dims.sail_l(args.scale)
    if args.memory_worker is not None:
        kind, batch = args.memory_worker
        emit(json.dumps(memory_worker(kind, int(batch), dims)))
        return 0
    retain_freed_memory()  # as align.train's loop does on the CPU (process-wide: the formula's step gets it too)
    results = [compare(b, dims, args.repeats) for b in args.batch_sizes]
    memory = None
    if not args.no_memory:
        memory = {
            (k, b): peak_memory(k, b, args.scale) for b in args.batch_sizes for k in ("ours", "formula")
        }
    table(results, memory, dims, args.scale)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {"results": results, "memory_mib": {f"{k}@{b}": v for (k, b), v in (memory or {}).items()}}, f
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
