"""The real-size benchmark run for one GPU (at most 8 minutes), and the same code at toy sizes on the CPU.

    bash benchmarks/run_gpu.sh [--tiny] [--out outputs/benchmarks/gpu.json]
    python -m benchmarks.gpu_suite [--tiny] [--device cuda] [--parts align encode gradcache loss] [--out FILE]

Four parts, each under its own time budget; an error in one is recorded and the others still run, and the JSON
(plus a markdown table beside it, ``.md``) is rewritten after every part, so an interrupted run keeps what it
measured:

1. ``align``: SAIL-L's star head (image 2048 -> 1024, text 4096 -> 1024, width 8) + chunked SigLIP + Lion at
   batch 32,768 under bf16 autocast, as ``align.train`` steps it: step time, peak memory, achieved TFLOP/s
   (6 x batch x head matmul params + 6 x batch^2 x 1024, the usual model-FLOP count) against the device's bf16
   matmul peak measured in the same run (best of square and head-shaped GEMMs), and the same for the GEMM FLOPs
   the step executes (recorded by ``benchmarks.gemm_replay``: less, as the fused LayerNorm skips f1's and f2's
   input gradients); then the same step with the dense loss where it fits.
2. ``encode``: a random-weight DINOv2-L built from its config (saved and loaded through ``encode``'s own path,
   DINOv2's processor: resize 256, crop 224) on JPEGs written to a temp dir: ``encode_images`` end to end
   (DataLoader workers, JPEG -> HDF5) against the pure forward on pre-transformed pixels, images/s.
3. ``gradcache``: a random-weight Qwen2-VL-2B-sized model (Qwen2-VL-2B's config, word tokenizer, 224 x 224
   images, bf16 weights, full fine-tuning): a doubling search for the largest batch the plain step fits, then
   GradCache at twice that batch (which the plain step cannot fit) and at the same batch, against the plain
   step: step time, time per pair, peak memory; beside them, at the same batch, ``bench_gradcache``'s two floors
   (plain + GradCache's first pass; first pass + every chunk's forward and backward alone).
4. ``loss``: SigLIP forward + backward memory, chunked at N = 32k / 128k / 512k (d = 1024) against the dense
   formula, measured where it fits, else its bytes (8 fp32 ``N x N`` buffers).

Memory: on CUDA ``torch.cuda.max_memory_allocated`` (peak and growth over the inputs); on the CPU the peak RSS
growth of the process (``VmHWM``; run through ``run_gpu.sh``, which fixes glibc's mmap threshold so freed
buffers leave RSS); plain training "fits" on the CPU when its peak is within ``--cpu-memory-limit-mib``. Times
are medians of steps alternating between the compared cases, with CUDA synchronised.

``--tiny`` runs every part on the CPU at toy sizes (head dims / 16, batch 512; a 2-layer DINOv2; a 2-layer
Qwen2-VL; N = 1k / 2k / 4k, d = 64) in about a minute and a half: the CI check that the GPU run works.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import gc
import json
import math
import os
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from benchmarks.report import cpu_name, emit

DENSE_BUFFERS = 8  # fp32 N x N buffers alive at the dense SigLIP's peak (as benchmarks.bench_loss)
PARTS = ("align", "encode", "gradcache", "loss")
DISTINCT_JPEGS = 128


# ------------------------------------------------------------------------------------------------ settings


@dataclass(frozen=True)
class Sizes:
    """Every size the run uses; ``FULL`` on one GPU, ``TINY`` on the CPU."""

    align_batch: int
    align_scale: int  # SAIL-L dims (2048, 4096 -> 1024) divided by this
    align_chunk: int
    align_repeats: int
    encode_images: int
    encode_image_size: tuple[int, int]
    encode_batch: int
    encode_workers: tuple[int, ...]  # () = half the cores and all but two
    encode_repeats: int
    dinov2: dict
    gc_large: bool  # Qwen2-VL-2B's config, else a 2-layer toy
    gc_pixels: int
    gc_start_batch: int
    gc_max_batch: int
    gc_chunk: int
    gc_repeats: int
    loss_sizes: tuple[int, ...]
    loss_dim: int
    loss_chunk: int
    loss_dense_max_gib: (
        float | None
    )  # the dense loss runs only below these formula bytes (None: where it fits)
    budgets_s: dict = field(default_factory=dict)


DINOV2_L = dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, mlp_ratio=4, image_size=518)
DINOV2_TINY = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, mlp_ratio=4, image_size=518)

FULL = Sizes(
    align_batch=32768, align_scale=1, align_chunk=4096, align_repeats=5,
    encode_images=1024, encode_image_size=(640, 480), encode_batch=128, encode_workers=(),
    encode_repeats=2, dinov2=DINOV2_L,
    gc_large=True, gc_pixels=224 * 224, gc_start_batch=8, gc_max_batch=1024, gc_chunk=32, gc_repeats=3,
    loss_sizes=(32768, 131072, 524288), loss_dim=1024, loss_chunk=4096, loss_dense_max_gib=None,
    budgets_s={"align": 110, "encode": 100, "gradcache": 170, "loss": 80},
)  # fmt: skip
TINY = Sizes(
    align_batch=512, align_scale=16, align_chunk=256, align_repeats=2,
    encode_images=16, encode_image_size=(160, 120), encode_batch=8, encode_workers=(0, 1),
    encode_repeats=2, dinov2=DINOV2_TINY,
    gc_large=False, gc_pixels=56 * 56, gc_start_batch=2, gc_max_batch=64, gc_chunk=2, gc_repeats=2,
    loss_sizes=(1024, 2048, 4096), loss_dim=64, loss_chunk=1024, loss_dense_max_gib=1.0,
    budgets_s={"align": 20, "encode": 30, "gradcache": 35, "loss": 20},
)  # fmt: skip


# ------------------------------------------------------------------------------------------------ helpers


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU: {cpu_name()} ({os.cpu_count()} cores)"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def is_oom(err: BaseException) -> bool:
    return isinstance(err, torch.OutOfMemoryError) or "out of memory" in str(err).lower()


def free_device_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()


class Deadline:
    """A part's time budget: ``left()`` seconds remain; ``expired`` once spent."""

    def __init__(self, seconds: float) -> None:
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        return self.end - time.monotonic()

    @property
    def expired(self) -> bool:
        return self.left() <= 0


def _rss_kib(name: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(name + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{name} not in /proc/self/status")


class PeakMemory:
    """Peak memory of a block: ``peak_mib`` (absolute) and ``growth_mib`` (over the state at entry).

    CUDA: ``max_memory_allocated``. CPU: the process's peak RSS (``VmHWM``, reset at entry through
    ``/proc/self/clear_refs``)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.peak_mib = self.growth_mib = float("nan")

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            sync(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base = torch.cuda.memory_allocated(self.device)
        else:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # VmHWM := current RSS
            self.base = _rss_kib("VmRSS") * 1024
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            sync(self.device)
            peak = torch.cuda.max_memory_allocated(self.device)
        else:
            peak = _rss_kib("VmHWM") * 1024
        self.peak_mib, self.growth_mib = peak / 2**20, (peak - self.base) / 2**20


def alternate(cases: dict[str, Callable[[], None]], repeats: int, device: torch.device, deadline: Deadline):
    """Median wall seconds of each case, run in turn (A B C A B C ...) after one warm-up each; stops
    repeating (keeping at least one round) when the deadline passes."""
    for run in cases.values():
        run()
        sync(device)
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(repeats):
        for name, run in cases.items():
            sync(device)
            start = time.perf_counter()
            run()
            sync(device)
            times[name].append(time.perf_counter() - start)
        if deadline.expired:
            break
    return {name: statistics.median(t) for name, t in times.items()}


def matmul_peak_tflops(
    shapes: list[tuple[int, int, int]], dtype: torch.dtype, device: torch.device, repeats: int = 5
) -> float:
    """Best measured TFLOP/s of ``(m, k) @ (k, n)`` GEMMs in ``dtype`` over the shapes."""
    best = 0.0
    for m, k, n in shapes:
        a = torch.randn(m, k, device=device, dtype=dtype)
        b = torch.randn(k, n, device=device, dtype=dtype)
        (a @ b).sum()
        sync(device)
        start = time.perf_counter()
        for _ in range(repeats):
            c = a @ b
        sync(device)
        best = max(best, 2 * m * k * n * repeats / (time.perf_counter() - start) / 1e12)
        del a, b, c
    free_device_memory(device)
    return best


# ------------------------------------------------------------------------------------------------ 1. align


def part_align(sizes: Sizes, device: torch.device, deadline: Deadline) -> dict:
    from align.heads import AlignmentHead, HeadConfig
    from benchmarks.gemm_replay import record_gemms
    from core.losses import siglip_loss
    from core.optim import build_optimizer, param_groups
    from core.precision import Precision

    s, b = sizes.align_scale, sizes.align_batch
    config = HeadConfig("star", 2048 // s, 4096 // s, 1024 // s, 8)
    torch.manual_seed(0)
    head = AlignmentHead(config).to(device)
    optimizer = build_optimizer("lion", param_groups(head, 1e-4), lr=1e-5)
    precision = Precision("amp_bf16", device)  # fp32 on the CPU, as align.train runs there
    g = torch.Generator(device=device).manual_seed(0)
    image = torch.randn(b, config.image_dim, device=device, generator=g)
    text = torch.randn(b, config.text_dim, device=device, generator=g)

    def step(chunk: int | None) -> None:
        with precision.autocast():
            x, y, _ = head(image, text)
            out = siglip_loss(x, y, head.logit_scale, head.logit_bias, chunk_size=chunk)
        optimizer.zero_grad(set_to_none=True)
        precision.backward(out.loss)
        precision.step(optimizer, head.parameters(), None)
        head.clamp_logit_scale_()

    matmul_params = sum(m.weight.numel() for m in head.modules() if isinstance(m, torch.nn.Linear))
    flops = 6 * b * matmul_params + 6 * b * b * config.target_dim
    dtype = precision.dtype or torch.float32
    hidden_i, hidden_t = 8 * config.image_dim, 8 * config.text_dim
    peak = matmul_peak_tflops(
        [(8192 // s, 8192 // s, 8192 // s), (b, config.image_dim, hidden_i), (b, config.text_dim, hidden_t),
         (b, hidden_t, config.target_dim)],
        dtype, device,
    )  # fmt: skip
    times = alternate({"chunked": lambda: step(sizes.align_chunk)}, sizes.align_repeats, device, deadline)
    with PeakMemory(device) as mem:
        step(sizes.align_chunk)
    executed = sum(call.flops for call in record_gemms(lambda: step(sizes.align_chunk)))
    result = {
        "config": {"batch": b, "head": asdict(config), "chunk": sizes.align_chunk, "dtype": str(dtype),
                   "matmul_params": matmul_params, "flop_per_step": flops, "executed_gemm_flop_per_step": executed},
        "figures": {
            "step_s": times["chunked"],
            "peak_mib": mem.peak_mib,
            "tflops": flops / times["chunked"] / 1e12,
            "matmul_peak_tflops": peak,
            "share_of_peak": flops / times["chunked"] / 1e12 / peak,
            "executed_tflops": executed / times["chunked"] / 1e12,
            "executed_share_of_peak": executed / times["chunked"] / 1e12 / peak,
        },
        "notes": [],
    }  # fmt: skip
    dense_bytes = DENSE_BUFFERS * 4 * b * b
    result["figures"]["dense_formula_mib"] = dense_bytes / 2**20
    if device.type == "cuda" and dense_bytes > torch.cuda.mem_get_info(device)[0]:
        result["notes"].append(f"dense loss not run: its {dense_bytes / 2**30:.0f} GiB exceed free memory")
        return result
    if deadline.left() < 3 * times["chunked"]:
        result["notes"].append("dense loss not run: time budget spent")
        return result
    try:
        dense = alternate({"dense": lambda: step(None)}, max(1, sizes.align_repeats // 2), device, deadline)
        with PeakMemory(device) as mem:
            step(None)
        result["figures"].update(
            dense_step_s=dense["dense"],
            dense_peak_mib=mem.peak_mib,
            dense_over_chunked_time=dense["dense"] / times["chunked"],
        )
    except RuntimeError as err:
        if not is_oom(err):
            raise
        result["notes"].append("dense loss: out of memory")
    optimizer.zero_grad(set_to_none=True)
    return result


# ------------------------------------------------------------------------------------------------ 2. encode


def write_jpegs(folder: Path, count: int, size: tuple[int, int]) -> None:
    """``count`` photo-like JPEGs (smooth colour fields plus noise, quality 90): 128 distinct ones, copied
    round-robin beyond that (decoding costs the same)."""
    import shutil

    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    w, h = size
    for i in range(min(count, DISTINCT_JPEGS)):
        coarse = rng.integers(0, 256, (h // 16 + 1, w // 16 + 1, 3), dtype=np.uint8)
        image = Image.fromarray(coarse).resize((w, h), Image.BICUBIC)
        noise = rng.integers(-12, 13, (h, w, 3))
        pixels = np.clip(np.asarray(image, dtype=np.int16) + noise, 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"{i:05d}.jpg", quality=90)
    for i in range(DISTINCT_JPEGS, count):
        shutil.copyfile(folder / f"{i % DISTINCT_JPEGS:05d}.jpg", folder / f"{i:05d}.jpg")


def random_dinov2(folder: Path, settings: dict) -> None:
    """A random-weight DINOv2 from its config with DINOv2's image processor, saved as a local checkpoint."""
    from transformers import BitImageProcessor, Dinov2Config, Dinov2Model

    torch.manual_seed(0)
    Dinov2Model(Dinov2Config(patch_size=14, **settings)).save_pretrained(folder)
    BitImageProcessor(
        size={"shortest_edge": 256}, resample=3, crop_size={"height": 224, "width": 224},
        image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225],
    ).save_pretrained(folder)  # fmt: skip


def part_encode(sizes: Sizes, device: torch.device, deadline: Deadline) -> dict:
    from encode.backbones import load_image_backbone
    from encode.inputs import load_rows
    from encode.pipeline import EncodeOptions, encode_images, read_image

    with tempfile.TemporaryDirectory() as tmp:
        random_dinov2(Path(tmp, "dinov2"), sizes.dinov2)
        write_jpegs(Path(tmp, "images"), sizes.encode_images, sizes.encode_image_size)
        backbone = load_image_backbone(str(Path(tmp, "dinov2")), device=device)
        rows = load_rows(Path(tmp, "images"))
        n, batch = len(rows), sizes.encode_batch
        pixels = torch.stack([backbone.transform(read_image(ref)) for ref in rows.images[:batch]])
        batches = n // batch + (n % batch > 0)

        def forward() -> None:
            for i in range(batches):
                backbone.encode(pixels[: min(batch, n - i * batch)])

        def pipeline(workers: int) -> Callable[[], None]:
            options = EncodeOptions(batch_size=batch, num_workers=workers, overwrite=True, progress=False)
            return lambda: encode_images(rows, backbone, Path(tmp, f"out{workers}.h5"), options=options)

        cores = os.cpu_count() or 1
        workers = sizes.encode_workers or tuple(sorted({max(1, cores // 2), max(1, cores - 2)}))
        cases = {"forward": forward} | {f"pipeline_{w}": pipeline(w) for w in workers}
        times = alternate(cases, sizes.encode_repeats, device, deadline)
    figures = {"forward_images_per_s": n / times["forward"]}
    for w in workers:
        figures[f"pipeline_{w}_workers_images_per_s"] = n / times[f"pipeline_{w}"]
        figures[f"pipeline_{w}_workers_vs_forward"] = times["forward"] / times[f"pipeline_{w}"]
    return {
        "config": {"model": "dinov2 (random weights)", **sizes.dinov2, "images": n, "batch": batch,
                   "jpeg_size": list(sizes.encode_image_size), "precision": backbone.precision,
                   "cpu_cores": os.cpu_count()},
        "figures": figures,
        "notes": [],
    }  # fmt: skip


# ------------------------------------------------------------------------------------------------ 3. gradcache


def qwen2vl_2b_config(processor):
    """Qwen2-VL-2B-Instruct's architecture (vocabulary as in the release; our word tokenizer uses its start)."""
    from transformers import Qwen2VLConfig

    from benchmarks.bench_gradcache import token_ids

    return Qwen2VLConfig(
        text_config=dict(
            vocab_size=151936, hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
            num_attention_heads=12, num_key_value_heads=2, rms_norm_eps=1e-6, rope_theta=1_000_000.0,
            max_position_embeddings=32768, tie_word_embeddings=True, attention_dropout=0.0,
            rope_scaling={"type": "mrope", "mrope_section": [16, 24, 24]},
        ),
        vision_config=dict(depth=32, embed_dim=1280, hidden_size=1536, num_heads=16, mlp_ratio=4,
                           patch_size=14, spatial_merge_size=2, temporal_patch_size=2),
        tie_word_embeddings=True,
        **token_ids(processor),
    )  # fmt: skip


def build_vlm(sizes: Sizes, device: torch.device):
    """A random-weight Qwen2-VL as a ``VLM2VecModel`` in training mode (bf16 weights on CUDA)."""
    from transformers import Qwen2VLForConditionalGeneration

    from benchmarks.bench_gradcache import small_config, word_processor
    from vlm2vec.model import VLM2VecConfig, VLM2VecModel

    processor = word_processor(sizes.gc_pixels)
    config = qwen2vl_2b_config(processor) if sizes.gc_large else small_config(processor, 64, 2)
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    with torch.device(device):
        backbone = Qwen2VLForConditionalGeneration(config)
    if device.type == "cuda":
        backbone = backbone.to(torch.bfloat16)
    model = VLM2VecModel(backbone, processor, VLM2VecConfig(base_model="random-qwen2-vl", family="qwen2_vl"))
    return model.train()


def part_gradcache(sizes: Sizes, device: torch.device, deadline: Deadline, cpu_limit_mib: float) -> dict:
    from benchmarks.bench_gradcache import chunk_passes, first_pass, floor_ratios, make_batch, step
    from benchmarks.memory import SavedActivationMeter

    model = build_vlm(sizes, device)
    params = sum(p.numel() for p in model.parameters())
    image_size = int(math.isqrt(sizes.gc_pixels))
    chunk = sizes.gc_chunk

    def batch_of(n: int, chunked: bool):
        return make_batch(model, n, chunk if chunked else None, chunk if chunked else None, image_size)

    def peak_mib(batch) -> float:
        """CUDA: peak allocated during the step; CPU: peak activations autograd saves for backward (RSS is
        too coarse for a toy model's steps)."""
        if device.type == "cuda":
            with PeakMemory(device) as mem:
                step(model, batch)
            value = mem.peak_mib
        else:
            meter = SavedActivationMeter(model)
            with meter.hooks():
                step(model, batch)
            value = meter.peak / 2**20
        model.zero_grad(set_to_none=True)
        return value

    # Largest plain batch that fits: double until out of memory (on the CPU: over the limit), the cap, or half
    # the budget.
    limit = cpu_limit_mib or float("inf")
    fits: tuple[int, float] | None = None
    n, search = sizes.gc_start_batch, []
    while n <= sizes.gc_max_batch and deadline.left() > 0.5 * sizes.budgets_s["gradcache"]:
        mib = None
        try:
            mib = peak_mib(batch_of(n, False))
        except RuntimeError as err:
            if not is_oom(err):
                raise
        if mib is None:  # out of memory; the failed step's tensors are released once the exception is gone
            model.zero_grad(set_to_none=True)
            gc.collect()
            free_device_memory(device)
        elif device.type == "cpu" and not cpu_limit_mib and fits is None:
            limit = 2.5 * mib  # the start batch and its double fit, four times it does not
        ok = mib is not None and (device.type == "cuda" or mib <= limit)
        search.append({"batch": n, "fits": ok, "peak_mib": mib})
        if not ok:
            break
        fits = (n, mib)
        n *= 2
    if fits is None:
        raise RuntimeError(f"the plain step does not fit even at batch {sizes.gc_start_batch}")
    fit_batch, fit_mib = fits
    big = 2 * fit_batch
    beyond = search[-1]["fits"] is False
    plain, cached_same, cached_big = (
        batch_of(fit_batch, False),
        batch_of(fit_batch, True),
        batch_of(big, True),
    )
    times = alternate(
        {"plain": lambda: step(model, plain), "gradcache_same": lambda: step(model, cached_same),
         "gradcache_big": lambda: step(model, cached_big), "first_pass": lambda: first_pass(model, cached_same),
         "chunk_passes": lambda: chunk_passes(model, cached_same)},
        sizes.gc_repeats, device, deadline,
    )  # fmt: skip
    big_mib = peak_mib(cached_big)
    floors = floor_ratios(times["plain"], times["first_pass"], times["chunk_passes"])
    notes = [] if beyond else [f"plain training still fitted at batch {fit_batch} (search bound reached)"]
    if device.type == "cpu":
        notes.append(f"CPU: memory = activations saved for backward; 'fits' = within {limit:.1f} MiB")
    return {
        "config": {"model": "Qwen2-VL-2B config (random weights)" if sizes.gc_large else "Qwen2-VL toy config",
                   "params": params, "image_size": image_size, "chunk": chunk, "plain_batch": fit_batch,
                   "gradcache_batch": big, "search": search, "cpu_limit_mib": None if limit == math.inf else limit,
                   "attention": model.backbone.config._attn_implementation},
        "figures": {
            "plain_step_s": times["plain"],
            "gradcache_same_batch_step_s": times["gradcache_same"],
            "gradcache_same_batch_vs_plain": times["gradcache_same"] / times["plain"],
            "floor_vs_plain": floors[0],
            "chunked_floor_vs_plain": floors[1],
            "gradcache_big_step_s": times["gradcache_big"],
            "gradcache_big_time_per_pair_vs_plain": (times["gradcache_big"] / big) / (times["plain"] / fit_batch),
            "plain_peak_mib": fit_mib,
            "gradcache_big_peak_mib": big_mib,
        },
        "notes": notes,
    }  # fmt: skip


# ------------------------------------------------------------------------------------------------ 4. loss


def part_loss(sizes: Sizes, device: torch.device, deadline: Deadline) -> dict:
    import torch.nn.functional as F

    from core.losses import siglip_loss

    figures: dict[str, float] = {}
    notes: list[str] = []

    def inputs(n: int) -> list[torch.Tensor]:
        g = torch.Generator(device=device).manual_seed(0)
        x = F.normalize(torch.randn(n, sizes.loss_dim, device=device, generator=g), dim=-1)
        y = F.normalize(torch.randn(n, sizes.loss_dim, device=device, generator=g), dim=-1)
        return [t.requires_grad_() for t in (x, y, torch.tensor(10.0, device=device),
                                             torch.tensor(-10.0, device=device))]  # fmt: skip

    def run(tensors: list[torch.Tensor], chunk: int | None) -> None:
        for t in tensors:
            t.grad = None
        siglip_loss(*tensors, chunk_size=chunk).loss.backward()

    warm = inputs(1024)  # first-call kernel selection and allocations, outside the measurements
    run(warm, sizes.loss_chunk)
    run(warm, None)
    del warm
    last: tuple[int, float] | None = None
    for n in sizes.loss_sizes:
        if last is not None and last[1] * (n / last[0]) ** 2 > deadline.left():
            notes.append(f"N={n}: not run, its projected time exceeds the budget left")
            continue
        tensors = inputs(n)
        sync(device)
        start = time.perf_counter()
        with PeakMemory(device) as mem:
            run(tensors, sizes.loss_chunk)
        last = (n, time.perf_counter() - start)
        figures[f"chunked_N{n}_mib"] = mem.growth_mib
        figures[f"chunked_N{n}_s"] = last[1]
        dense_bytes = DENSE_BUFFERS * 4 * n * n
        figures[f"dense_formula_N{n}_mib"] = dense_bytes / 2**20
        free = torch.cuda.mem_get_info(device)[0] if device.type == "cuda" else _available_ram()
        cap = math.inf if sizes.loss_dense_max_gib is None else sizes.loss_dense_max_gib * 2**30
        runs_dense = dense_bytes < min(0.8 * free, cap)
        if runs_dense and 2 * last[1] < deadline.left():
            try:
                with PeakMemory(device) as mem:
                    run(tensors, None)
                figures[f"dense_N{n}_mib"] = mem.growth_mib
                if mem.growth_mib > 0:
                    figures[f"chunked_over_dense_N{n}"] = figures[f"chunked_N{n}_mib"] / mem.growth_mib
                else:  # CPU RSS without run_gpu.sh's mmap threshold: freed buffers stay in the process
                    notes.append(f"N={n}: the dense loss grew no measurable memory; no ratio")
            except RuntimeError as err:
                if not is_oom(err):
                    raise
                notes.append(f"N={n}: dense out of memory")
            gc.collect()
        else:
            notes.append(f"N={n}: dense not run; by the formula {dense_bytes / 2**30:.2f} GiB")
        del tensors
        free_device_memory(device)
    return {"config": {"dim": sizes.loss_dim, "chunk": sizes.loss_chunk}, "figures": figures, "notes": notes}


def _available_ram() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


# ------------------------------------------------------------------------------------------------ report


def table(report: dict) -> str:
    """The whole run as markdown: one row per figure, parts in order."""
    lines = [
        f"# GPU benchmark suite ({report['mode']}) on {report['device']}",
        "",
        f"torch {report['torch']}, {report['cpu']}; total {report.get('total_s', 0):.0f} s",
        "",
        "| part | figure | value |",
        "|---|---|---:|",
    ]
    for name, part in report["parts"].items():
        if part.get("status") != "ok":
            lines.append(f"| {name} | error | {part.get('error', 'not run').splitlines()[0][:200]} |")
            continue
        for key, value in part["figures"].items():
            lines.append(
                f"| {name} | {key} | {value:,.3f} |"
                if abs(value) < 1e4
                else f"| {name} | {key} | {value:,.0f} |"
            )
        for note in part.get("notes", []):
            lines.append(f"| {name} | note | {note} |")
    return "\n".join(lines) + "\n"


def write(report: dict, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(report, indent=2))
    tmp.replace(out)
    out.with_suffix(".md").write_text(table(report))


def run_part(fn: Callable[[], dict], budget: float) -> dict:
    start = time.perf_counter()
    try:
        result = fn()
        result["status"] = "ok"
    except Exception as err:  # one part's failure is recorded; the others still run
        result = {
            "status": "error",
            "error": f"{type(err).__name__}: {err}",
            "traceback": traceback.format_exc(),
        }
    result["seconds"] = time.perf_counter() - start
    result["budget_s"] = budget
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.gpu_suite",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1],
    )
    p.add_argument("--tiny", action="store_true", help="toy sizes on the CPU (the CI check)")
    p.add_argument("--device", default=None, help="default: cuda (cpu with --tiny)")
    p.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    p.add_argument("--out", type=Path, default=Path("outputs/benchmarks/gpu.json"), help="JSON report path")
    p.add_argument("--cpu-memory-limit-mib", type=float, default=None,
                   help="on the CPU, the saved activations under which the plain step 'fits' (default: 2.5x "
                        "those at the start batch)")  # fmt: skip
    args = p.parse_args(argv)
    device = torch.device(args.device or ("cpu" if args.tiny else "cuda"))
    if device.type == "cuda" and not torch.cuda.is_available():
        p.error("no CUDA device: run on a GPU machine, or pass --tiny for the CPU check")
    if device.type == "cpu" and not Path("/proc/self/clear_refs").exists():
        p.error("CPU memory is measured through /proc/self/clear_refs (Linux only)")
    sizes = TINY if args.tiny else FULL
    began = time.perf_counter()
    report = {
        "mode": "tiny" if args.tiny else "full",
        "device": device_name(device),
        "device_type": device.type,
        "cpu": f"{cpu_name()}, {os.cpu_count()} cores",
        "torch": torch.__version__,
        "memory": "cuda max_memory_allocated" if device.type == "cuda" else "peak RSS growth (VmHWM)",
        "sizes": asdict(sizes),
        "parts": {},
    }
    functions: dict[str, Callable[[Sizes, torch.device, Deadline], dict]] = {
        "align": part_align,
        "encode": part_encode,
        "gradcache": functools.partial(part_gradcache, cpu_limit_mib=args.cpu_memory_limit_mib or 0.0),
        "loss": part_loss,
    }
    emit(f"# {report['device']}: parts {', '.join(args.parts)} -> {args.out}")
    for name in args.parts:
        budget = sizes.budgets_s[name]
        function = functions[name]
        report["parts"][name] = run_part(lambda: function(sizes, device, Deadline(budget)), budget)  # noqa: B023
        part = report["parts"][name]
        emit(f"# {name}: {part['status']} in {part['seconds']:.0f} s (budget {budget} s)")
        report["total_s"] = time.perf_counter() - began
        write(report, args.out)
        free_device_memory(device)
    emit()
    emit(table(report))
    return 0 if all(part["status"] == "ok" for part in report["parts"].values()) else 1


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
