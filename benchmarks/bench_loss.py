"""Benchmark 1: SigLIP loss forward + backward, chunked vs dense, on the CPU.

    python -m benchmarks.bench_loss [--sizes 4k 8k 16k 32k] [--dim 1024] [--chunk-size 1024]
                                    [--dense-budget-gib 10] [--repeats 2]

Every (path, N) case runs in a fresh subprocess so that peak memory is not polluted by earlier cases.
Memory is the *peak RSS delta* of that process: the kernel's peak-RSS counter (VmHWM) is reset through
``/proc/self/clear_refs`` after the inputs (image/text features with ``requires_grad``, scale, bias) exist
and a small warm-up batch has paged in the kernels' code,
and read after the runs, minus the RSS at that reset; the workers run with ``MALLOC_MMAP_THRESHOLD_=1 MiB`` so
that freed tensors leave RSS (glibc's dynamic threshold would otherwise keep them, fragmented, in the heap). It therefore covers everything the loss allocates,
including the returned input gradients (``2 N d`` floats for both paths). Times are the fastest of
``--repeats`` forward + backward runs, as wall time and as process CPU time (``time.process_time``, all
threads); the ratio uses CPU time, which stays meaningful when other jobs share the cores. The dense path (``chunk_size=None``, the naive formula that
materialises the ``N x N`` logits, labels and their gradients) only runs where its estimated peak
(``DENSE_BUFFERS`` fp32 ``N x N`` buffers) fits ``--dense-budget-gib``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

from benchmarks.report import cpu_name, emit

DENSE_BUFFERS = 8  # fp32 N x N buffers alive at the dense path's peak (measured about 7 at N = 4k)


def _rss_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not found in /proc/self/status")


def _parse_size(text: str) -> int:
    text = text.strip().lower()
    try:
        return int(float(text[:-1]) * 1024) if text.endswith("k") else int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must be an int or e.g. '8k' (= 8192), got {text!r}") from None


def run_case(n: int, dim: int, chunk_size: int | None, repeats: int, threads: int | None) -> dict:
    """Runs inside the fresh subprocess: returns time and peak RSS delta of SigLIP fwd+bwd."""
    import torch
    import torch.nn.functional as F

    from core.losses import siglip_loss

    if threads:
        torch.set_num_threads(threads)
    g = torch.Generator().manual_seed(0)
    image = F.normalize(torch.randn(n, dim, generator=g), dim=-1).requires_grad_()
    text = F.normalize(torch.randn(n, dim, generator=g), dim=-1).requires_grad_()
    scale = torch.tensor(10.0, requires_grad=True)
    bias = torch.tensor(-10.0, requires_grad=True)
    # Warm-up on a small batch: pages in the kernels' code and thread pools, which would otherwise count.
    warm_chunk = None if chunk_size is None else 128
    siglip_loss(image[:256], text[:256], scale, bias, chunk_size=warm_chunk).loss.backward()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current RSS
    base = _rss_kib("VmRSS")
    times, cpu_times = [], []
    for _ in range(repeats):
        for t in (image, text, scale, bias):
            t.grad = None
        start, cpu_start = time.perf_counter(), time.process_time()
        out = siglip_loss(image, text, scale, bias, chunk_size=chunk_size)
        out.loss.backward()
        times.append(time.perf_counter() - start)
        cpu_times.append(time.process_time() - cpu_start)
        loss = out.loss.item()
        del out
    peak = _rss_kib("VmHWM")
    return {
        "time_s": min(times),
        "cpu_s": min(cpu_times),
        "peak_delta_mib": (peak - base) / 1024,
        "loss": loss,
    }


def _subprocess(n: int, args: argparse.Namespace, chunk_size: int | None) -> dict:
    cmd = [sys.executable, "-m", "benchmarks.bench_loss", "--worker", str(n), "--dim", str(args.dim)]
    cmd += ["--repeats", str(args.repeats), "--chunk-size", str(chunk_size or 0)]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    # Fixed glibc mmap threshold: buffers >= 1 MiB are mmapped and returned to the OS when freed, so RSS follows
    # the live tensors instead of heap fragmentation (glibc's dynamic threshold otherwise keeps freed blocks).
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(2**20)}
    done = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"case N={n} chunk_size={chunk_size} failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description="SigLIP loss fwd+bwd on the CPU: chunked vs dense peak memory (RSS delta) and time.",
    )
    parser.add_argument(
        "--sizes",
        nargs="+",
        type=_parse_size,
        default=[4096, 8192, 16384, 32768],
        help="batch sizes N (ints or e.g. 8k); default 4k 8k 16k 32k",
    )
    parser.add_argument("--dim", type=int, default=1024, help="embedding dim d (default 1024)")
    parser.add_argument(
        "--chunk-size",
        type=int,
        default=1024,
        help="block size of the chunked path (default 1024: within the time goal and the lowest memory on a "
        "2-core CPU; 2048 is about 10%% faster there)",
    )
    parser.add_argument(
        "--dense-budget-gib",
        type=float,
        default=10.0,
        help=f"run dense only if {DENSE_BUFFERS} N x N fp32 buffers fit this (default 10)",
    )
    parser.add_argument("--repeats", type=int, default=2, help="fwd+bwd runs per case; the fastest counts")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if (
        args.dim < 1
        or args.repeats < 1
        or min(args.sizes) < 1
        or (args.worker is None and args.chunk_size < 1)
    ):
        parser.error("--dim, --repeats, --sizes and --chunk-size must be positive")

    if args.worker is not None:
        result = run_case(args.worker, args.dim, args.chunk_size or None, args.repeats, args.threads)
        emit(json.dumps(result))
        return

    import torch

    threads = args.threads or torch.get_num_threads()
    emit(
        f"# SigLIP loss fwd+bwd, d={args.dim}, chunk_size={args.chunk_size}, CPU: {cpu_name()}, "
        f"{os.cpu_count()} cores, {threads} torch threads, torch {torch.__version__}"
    )
    emit(
        "# memory = peak RSS delta of a fresh process over the inputs; wall (s) and process CPU (cpu s) time = best of "
        f"{args.repeats} runs; dense only where {DENSE_BUFFERS} N^2 fp32 buffers fit {args.dense_budget_gib} GiB"
    )
    columns = [
        "N",
        "dense MiB",
        "chunked MiB",
        "mem ratio",
        "dense s",
        "chunked s",
        "dense cpu s",
        "chunked cpu s",
        "cpu ratio",
    ]
    widths = [max(len(c), 7) for c in columns]
    emit(" | ".join(c.rjust(w) for c, w in zip(columns, widths, strict=True)))
    emit("-+-".join("-" * w for w in widths))
    for n in args.sizes:
        chunked = _subprocess(n, args, args.chunk_size)
        dense = None
        if DENSE_BUFFERS * 4 * n * n <= args.dense_budget_gib * 2**30:
            dense = _subprocess(n, args, None)
        row = [
            str(n),
            "skipped",
            f"{chunked['peak_delta_mib']:.0f}",
            "-",
            "-",
            f"{chunked['time_s']:.2f}",
            "-",
            f"{chunked['cpu_s']:.2f}",
            "-",
        ]
        if dense is not None:
            row[1] = f"{dense['peak_delta_mib']:.0f}"
            row[3] = f"{chunked['peak_delta_mib'] / dense['peak_delta_mib']:.3f}"
            row[4] = f"{dense['time_s']:.2f}"
            row[6] = f"{dense['cpu_s']:.2f}"
            row[8] = f"{chunked['cpu_s'] / dense['cpu_s']:.2f}"
        emit(" | ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)))
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    emit(f"# largest child peak RSS: {usage.ru_maxrss / 1024:.0f} MiB")


if __name__ == "__main__":
    main()
