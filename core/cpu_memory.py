"""Keep freed CPU memory inside the process, as PyTorch's caching allocator does on the GPU.

PyTorch has no caching allocator on the CPU, so every tensor goes to the C allocator. glibc serves a buffer of
more than 32 MiB (its largest mmap threshold) with a fresh ``mmap`` and unmaps it on ``free``, and it returns
the top of its heap to the kernel once more than a threshold is free: each training step then page-faults its
large activations back in, the kernel zero-filling every page. For ``benchmarks/bench_sail.py``'s text head
(SAIL-L / 8) at batch 2,048, whose hidden tensors are ``2048 x 4096`` fp32 (32 MiB), that is a fifth of our step;
for EfficientNet-Lite0's forward at batch 16 (``benchmarks/bench_encode.py``) it is half.
:func:`retain_freed_memory` tells glibc to serve every size from its heap and never to trim it, so a step
reuses the memory the previous one freed. The process keeps its peak resident size, as a GPU run keeps its
cached blocks. The training loop, the encode CLI and the evaluate CLI call it with their device.

Left alone: platforms without glibc, and a process started with glibc's malloc tuning variables set (the user
chose). With an allocator swapped in through ``LD_PRELOAD`` (jemalloc, tcmalloc) the call changes nothing.
"""

from __future__ import annotations

import ctypes
import os
import sys

import torch

M_TRIM_THRESHOLD = -1  # mallopt parameters, from glibc's <malloc.h>
M_MMAP_MAX = -4
TUNING_VARIABLES = ("MALLOC_MMAP_MAX_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES")


def _glibc_mallopt():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.gnu_get_libc_version  # noqa: B018  (only glibc has it)
    except (OSError, AttributeError):
        return None
    mallopt = libc.mallopt
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return mallopt


def retain_freed_memory(device: torch.device | str = "cpu") -> bool:
    """On the CPU, serve all sizes from glibc's heap and never trim it; True when the setting was applied (a GPU
    device leaves the allocator alone: its tensors do not come from it)."""
    if torch.device(device).type != "cpu" or any(name in os.environ for name in TUNING_VARIABLES):
        return False
    mallopt = _glibc_mallopt()
    if mallopt is None:
        return False
    return bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, 2**31 - 1))
