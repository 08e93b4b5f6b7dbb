"""Process groups shared by every stage: joining torchrun's group, rank and world size, differentiable
all-gathers for cross-device negatives, and leaving the group cleanly."""

from __future__ import annotations

import gc
import os

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor
from torch.distributed import ProcessGroup


def init_distributed(device: torch.device) -> tuple[int, int, ProcessGroup | None]:
    """(rank, world size, group) from torchrun's environment; a single process gives (0, 1, None).

    The backend follows the device: NCCL for CUDA, gloo otherwise.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1, None
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return dist.get_rank(), world, dist.group.WORLD


def leave_process_group() -> None:
    """Leave the process group if one was joined.

    Garbage is collected first, so that nothing left in reference cycles that still refers to the group outlives
    it: without that, a 2-rank gloo run of the DDP loss tests aborted at exit about once in ten runs.
    """
    if dist.is_available() and dist.is_initialized():
        gc.collect()
        dist.destroy_process_group()


def wrap_ddp(model: torch.nn.Module, device: torch.device, world: int, find_unused_parameters: bool = False):
    """``model`` in ``DistributedDataParallel`` when several processes train, else ``model`` itself."""
    if world == 1:
        return model
    return torch.nn.parallel.DistributedDataParallel(
        model,
        device_ids=[device.index] if device.type == "cuda" else None,
        find_unused_parameters=find_unused_parameters,
    )


def rank_and_world(group: ProcessGroup | None) -> tuple[int, int]:
    """This process's rank in ``group`` and the group size; ``(0, 1)`` when ``group`` is None."""
    if group is None:
        return 0, 1
    return dist.get_rank(group), dist.get_world_size(group)


class _AllGather(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, group: ProcessGroup, rank: int, world: int) -> Tensor:
        x = x.contiguous()
        parts = [torch.empty_like(x) for _ in range(world)]
        dist.all_gather(parts, x, group=group)
        ctx.group, ctx.rank, ctx.rows = group, rank, x.shape[0]
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: Tensor):
        # Every rank's loss sends a gradient to every gathered slice: sum them over ranks (all-reduce works on
        # every backend, gloo has no reduce-scatter) and keep the slice of this rank's own rows.
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM, group=ctx.group)
        return grad.narrow(0, ctx.rank * ctx.rows, ctx.rows), None, None, None


def all_gather_with_grad(x: Tensor, group: ProcessGroup | None) -> Tensor:
    """Concatenate ``x`` ([n, ...], the same shape on every rank) over the ranks of ``group``, in rank order.

    Backward sums the gradients that all ranks send to each slice and returns its rank's part, so each rank's
    features receive the gradient of the *sum* of all ranks' losses. Identity when ``group`` is None or has one
    rank.
    """
    rank, world = rank_and_world(group)
    if world == 1:
        return x
    return _AllGather.apply(x, group, rank, world)


def all_gather_uneven_with_grad(x: Tensor, group: ProcessGroup | None) -> tuple[Tensor, int]:
    """:func:`all_gather_with_grad` for row counts that may differ between ranks.

    Returns the concatenation over ranks (rank order, no padding rows) and the index of this rank's first row
    in it. The ranks first exchange their row counts (one small collective and a host sync per call); rows are
    padded to the largest count for the gather and the padding is dropped again, gradients included.
    """
    rank, world = rank_and_world(group)
    if world == 1:
        return x, 0
    count = torch.tensor([x.shape[0]], device=x.device)
    counts_parts = [torch.empty_like(count) for _ in range(world)]
    dist.all_gather(counts_parts, count, group=group)
    counts = torch.cat(counts_parts).tolist()
    offset, longest = sum(counts[:rank]), max(counts)
    if min(counts) == longest:
        return _AllGather.apply(x, group, rank, world), offset
    padded = F.pad(x, (0, 0) * (x.ndim - 1) + (0, longest - x.shape[0]))
    gathered = _AllGather.apply(padded, group, rank, world)
    return torch.cat([gathered[r * longest : r * longest + n] for r, n in enumerate(counts)]), offset
