"""Benchmarks 2 and 3 of the align issue: full train step efficiency and batch assembly share.

    python -m benchmarks.bench_train [--scale 8] [--batch-size 2048] [--steps 3] [--device cpu]

The head is SAIL-L's star head (image 2048 -> DINOv2-L concat, text 4096 -> NV-Embed-v2, width 8, target 1024)
with every dim divided by ``--scale`` to fit the CPU (``--scale 1 --batch-size 32768`` is SAIL-L itself, for a
GPU). A step = batch assembly from an HDF5 store loaded in RAM (float16, like ``encode`` writes) + head forward +
chunked SigLIP loss + backward + Lion step, exactly as ``align.train`` runs it.

2. Achieved FLOP/s of the step vs the measured fp32 matmul peak of the same machine (best of square and
   head-shaped GEMMs); the step's GEMM FLOPs = 6 x batch x head matmul parameters, less 2 x batch x those of
   ``f1`` and ``f2`` (whose input gradient the fused LayerNorm skips), + 6 x batch^2 x target dim (SigLIP logits
   forward and backward). Goal >= 60 %.
3. Batch assembly time as a share of the step. Goal < 5 %.

Beside them, in the same run, the star head through plain autograd (``out(ReLU6(f1 x) * f2 x)`` as separate
modules) against the fused function ``align.heads`` uses: step time and the activations saved for backward.

Times are the fastest of ``--steps`` runs after a warm-up. Both wall and process CPU time are reported; the CPU
time ratio stays meaningful when other jobs share the cores.
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from align.data import AlignmentData
from align.heads import AlignmentHead, HeadConfig, ModalityHead, StarMLP
from benchmarks.memory import SavedActivationMeter
from benchmarks.report import emit
from core.cpu_memory import retain_freed_memory
from core.losses import siglip_loss
from core.optim import build_optimizer, param_groups
from encode.store import FeatureStoreWriter, StoreMeta


def timed(fn: Callable[[], object], repeats: int, device: torch.device) -> tuple[float, float]:
    """Fastest (wall, process CPU) seconds of ``repeats`` calls after one warm-up call."""

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    fn()
    sync()
    best_wall, best_cpu = float("inf"), float("inf")
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        fn()
        sync()
        best_wall = min(best_wall, time.perf_counter() - wall)
        best_cpu = min(best_cpu, time.process_time() - cpu)
    return best_wall, best_cpu


def matmul_peak(
    shapes: list[tuple[int, int, int]], device: torch.device, repeats: int
) -> tuple[float, float]:
    """Best fp32 GEMM FLOP/s (wall, CPU-time based) over the given (m, k, n) shapes."""
    best_wall, best_cpu = 0.0, 0.0
    for m, k, n in shapes:
        a = torch.randn(m, k, device=device)
        b = torch.randn(k, n, device=device)
        wall, cpu = timed(lambda a=a, b=b: a @ b, repeats, device)
        flops = 2 * m * k * n
        best_wall = max(best_wall, flops / wall)
        best_cpu = max(best_cpu, flops / cpu)
    return best_wall, best_cpu


def write_store(path: Path, modality: str, n: int, dim: int, keys: list[str], image_keys=None) -> Path:
    meta = StoreMeta(
        modality=modality, model=f"bench-{modality}", model_revision="0", pooling="mean", dim=dim
    )
    writer = FeatureStoreWriter(path, meta, keys, image_keys)
    rng = np.random.default_rng(0)
    for start in range(0, n, 8192):
        rows = min(8192, n - start)
        writer.write(rng.standard_normal((rows, dim), dtype=np.float32), np.ones(rows, dtype=bool))
    writer.finish()
    return path


def plain_autograd_embed(head: AlignmentHead, image: torch.Tensor, text: torch.Tensor):
    """The star head through plain autograd: the baseline of the fused function."""

    def embed(m: ModalityHead, x: torch.Tensor) -> torch.Tensor:
        h, star = m.norm(x), m.mapping
        return F.normalize(star.out(F.relu6(star.f1(h)) * star.f2(h)), dim=-1)

    return embed(head.image, image), embed(head.text, text), None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scale", type=int, default=8, help="divide SAIL-L's dims (2048, 4096, 1024) by this")
    p.add_argument("--batch-size", type=int, default=2048)
    p.add_argument("--width-factor", type=int, default=8)
    p.add_argument("--chunk-size", type=int, default=4096)
    p.add_argument("--steps", type=int, default=3, help="timed steps (fastest is reported)")
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    retain_freed_memory(device)  # as align.train's loop does
    image_dim, text_dim, target = 2048 // args.scale, 4096 // args.scale, 1024 // args.scale
    batch = args.batch_size
    n_pairs = 4 * batch

    with tempfile.TemporaryDirectory() as tmp:
        keys = [f"k{i}" for i in range(n_pairs)]
        image_path = write_store(Path(tmp) / "image.h5", "image", n_pairs, image_dim, keys)
        text_path = write_store(
            Path(tmp) / "text.h5", "text", n_pairs, text_dim, [f"c{i}" for i in range(n_pairs)], keys
        )
        data = AlignmentData(image_path, [text_path], batch_size=batch, seed=0, mode="ram", device=device)

        torch.manual_seed(0)
        head = AlignmentHead(HeadConfig("star", image_dim, text_dim, target, args.width_factor)).to(device)
        optimizer = build_optimizer("lion", param_groups(head, 1e-4), lr=1e-5)
        counter = {"i": 0}

        def assemble():
            counter["i"] = (counter["i"] + 1) % data.steps_per_epoch
            return data.batch(0, counter["i"])

        def step(embed=head) -> None:
            b = assemble()
            image, text, _ = embed(b.image, b.text)
            out = siglip_loss(image, text, head.logit_scale, head.logit_bias, chunk_size=args.chunk_size)
            optimizer.zero_grad(set_to_none=True)
            out.loss.backward()
            optimizer.step()
            head.clamp_logit_scale_()

        def plain(image: torch.Tensor, text: torch.Tensor):
            return plain_autograd_embed(head, image, text)

        def plain_step() -> None:
            step(plain)

        def saved_mib(embed) -> float:
            meter = SavedActivationMeter(head)
            with meter.hooks():
                step(embed)
            return meter.peak / 2**20

        step_wall, step_cpu = timed(step, args.steps, device)
        plain_wall, plain_cpu = timed(plain_step, args.steps, device)
        batch_wall, batch_cpu = timed(assemble, max(args.steps, 5), device)
        fused_mib = saved_mib(head)
        plain_mib = saved_mib(plain)
        data.close()

    matmul_params = sum(m.weight.numel() for m in head.modules() if isinstance(m, torch.nn.Linear))
    skipped = sum(m.f1.weight.numel() + m.f2.weight.numel() for m in head.modules() if isinstance(m, StarMLP))
    flops = 6 * batch * matmul_params - 2 * batch * skipped + 6 * batch * batch * target
    hidden_i, hidden_t = args.width_factor * image_dim, args.width_factor * text_dim
    peak_wall, peak_cpu = matmul_peak(
        [
            (2048, 2048, 2048),
            (batch, image_dim, hidden_i),
            (batch, text_dim, hidden_t),
            (batch, hidden_t, target),
        ],
        device,
        args.steps,
    )
    emit(f"# align train step, {platform.processor() or platform.machine()}, torch {torch.__version__}, "
         f"{torch.get_num_threads()} threads, device {device}")  # fmt: skip
    emit(f"# star head {image_dim}/{text_dim} -> {target}, width {args.width_factor} (SAIL-L / {args.scale}), "
         f"batch {batch}, {matmul_params / 1e6:.1f}M matmul params, {flops / 1e9:.1f} GFLOP/step")  # fmt: skip
    emit("| metric | wall | CPU time | goal |")
    emit("|---|---|---|---|")
    emit(f"| step time (s) | {step_wall:.3f} | {step_cpu:.3f} | |")
    emit(f"| achieved GFLOP/s | {flops / step_wall / 1e9:.1f} | {flops / step_cpu / 1e9:.1f} | |")
    emit(f"| matmul peak GFLOP/s | {peak_wall / 1e9:.1f} | {peak_cpu / 1e9:.1f} | |")
    emit(
        f"| 2. step / peak | {100 * flops / step_wall / peak_wall:.0f} % | {100 * flops / step_cpu / peak_cpu:.0f} % | >= 60 % |"
    )
    emit(f"| batch assembly (ms) | {1e3 * batch_wall:.2f} | {1e3 * batch_cpu:.2f} | |")
    emit(
        f"| 3. assembly / step | {100 * batch_wall / step_wall:.2f} % | {100 * batch_cpu / step_cpu:.2f} % | < 5 % |"
    )
    emit()
    emit("| star head, fused vs plain autograd | fused | plain | fused / plain |")
    emit("|---|---|---|---|")
    emit(f"| step time, wall (s) | {step_wall:.3f} | {plain_wall:.3f} | {step_wall / plain_wall:.2f} |")
    emit(f"| step time, CPU (s) | {step_cpu:.3f} | {plain_cpu:.3f} | {step_cpu / plain_cpu:.2f} |")
    emit(
        f"| activations saved for backward (MiB) | {fused_mib:.0f} | {plain_mib:.0f} | {fused_mib / plain_mib:.2f} |"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
