"""Encoding with several processes: ``torchrun --nproc_per_node K -m encode ...``.

Rows are split into K contiguous ranges of whole batches, computed from the row count, the batch size and the
world size (no hard-coded ranges). Rank r writes its range to the shard store ``<out>.shard-r-of-K.h5`` beside
``out`` (each shard is a normal resumable store); after a barrier rank 0 merges the shards into ``out`` in the
original row order, marks it complete and deletes the shards. Because batches fall at the same row offsets as
in a one-process run, the merged store equals that run's (bit for bit on CPU with the same thread settings).

A killed run is continued with the same command plus ``--resume``: every rank resumes its shard, and rank 0
resumes the merge. The process group only synchronises (gloo barriers), so it works for CPU and GPU ranks.

SIGTERM / SIGUSR1 (torchrun forwards its own SIGTERM to the ranks; SLURM signals every process) make each rank
that is encoding flush its shard after the batch in hand and exit 75 (:data:`core.preemption.EXIT_PREEMPTED`)
without waiting at the barrier; rank 0 stops a merge the same way between blocks. A rank already waiting at a
barrier has a complete shard and simply ends. The same command with ``--resume`` continues from the shards.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import torch.distributed as dist

from core.preemption import Preempted, PreemptionGuard
from encode.store import FeatureStore, FeatureStoreWriter, StoreError, StoreMeta

logger = logging.getLogger(__name__)

# Ranks wait at the barrier for the slowest rank's whole shard, so the timeout must outlast an encode run.
BARRIER_TIMEOUT = timedelta(days=7)
MERGE_BLOCK_ROWS = 65536


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0


def init_from_env() -> World:
    """Join the process group torchrun describes (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` ...); no-op alone."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="gloo", timeout=BARRIER_TIMEOUT)
    return World(current_world().rank, current_world().size, int(os.environ.get("LOCAL_RANK", "0")))


def current_world() -> World:
    if dist.is_available() and dist.is_initialized():
        return World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))
    return World()


def shard_bounds(n_rows: int, batch_size: int, rank: int, world_size: int) -> tuple[int, int]:
    """Row range ``[start, stop)`` of ``rank``: a contiguous run of whole batches, balanced across ranks."""
    n_batches = -(-n_rows // batch_size)
    first = rank * n_batches // world_size
    last = (rank + 1) * n_batches // world_size
    return min(first * batch_size, n_rows), min(last * batch_size, n_rows)


def shard_path(out: Path, rank: int, world_size: int) -> Path:
    return out.with_name(f"{out.stem}.shard-{rank}-of-{world_size}{out.suffix}")


def run_sharded(
    meta: StoreMeta,
    keys: Sequence[str],
    image_keys: Sequence[str] | None,
    out: Path,
    world: World,
    *,
    batch_size: int,
    encode_shard: Callable[[Path, int, int], object],
    resume: bool,
    overwrite: bool,
) -> dict[str, object]:
    """Encode this rank's rows with ``encode_shard(path, start, stop)``, then merge them on rank 0.

    Returns the merged store's summary (``rows``, ``failures``, ``failed_keys``) on every rank. A
    :class:`core.preemption.Preempted` from ``encode_shard`` (its shard flushed) propagates before the barrier.
    """
    if out.exists() and not overwrite:
        # Validates the request (settings and rows must match, else StoreError) without writing anything.
        FeatureStoreWriter.preflight(out, meta, keys, image_keys, resume=resume)
    start, stop = shard_bounds(len(keys), batch_size, world.rank, world.size)
    if stop > start:
        encode_shard(shard_path(out, world.rank, world.size), start, stop)
    dist.barrier()
    if world.rank == 0:
        merge_shards(out, meta, keys, image_keys, world.size, batch_size, resume=resume, overwrite=overwrite)
    dist.barrier()
    return _summary(out)


def merge_shards(
    out: Path,
    meta: StoreMeta,
    keys: Sequence[str],
    image_keys: Sequence[str] | None,
    world_size: int,
    batch_size: int,
    *,
    resume: bool = False,
    overwrite: bool = False,
) -> dict[str, object]:
    """Concatenate the complete shards ``out.shard-r-of-K.h5`` into ``out`` in rank order; delete the shards.

    SIGTERM / SIGUSR1 stop the merge after the block in hand with :class:`core.preemption.Preempted` (``out`` is
    flushed; ``resume=True`` continues it).
    """
    ranges = [shard_bounds(len(keys), batch_size, rank, world_size) for rank in range(world_size)]
    shards = [
        (shard_path(out, rank, world_size), start, stop)
        for rank, (start, stop) in enumerate(ranges)
        if stop > start
    ]
    for path, start, stop in shards:
        if not path.exists():
            raise StoreError(
                f"shard {path} (rows {start}-{stop}) is missing; rerun the same command with --resume"
            )
    writer = FeatureStoreWriter(out, meta, keys, image_keys, resume=resume, overwrite=overwrite)
    with writer, PreemptionGuard() as guard:
        for path, start, stop in shards:
            with FeatureStore(path) as shard:
                if len(shard) != stop - start or shard.meta.differences(meta):
                    raise StoreError(
                        f"shard {path} does not hold rows {start}-{stop} of this run (it was written with "
                        "other settings); rerun the command that wrote it with --resume, or use another --out"
                    )
                copied = writer.append_from(
                    shard, start, MERGE_BLOCK_ROWS, should_stop=lambda: guard.requested
                )
            if not copied or (guard.requested and not writer.done):
                raise Preempted(
                    f"{guard.received.name if guard.received else 'a stop signal'} received during the merge: "
                    f"{writer.rows_done} of {len(keys)} rows are saved in {out}; to continue, run the same "
                    "command with --resume"
                )
        summary = writer.finish()
    for path, _, _ in shards:
        path.unlink()
    return summary


def _summary(out: Path) -> dict[str, object]:
    with FeatureStore(out) as store:
        return {"rows": len(store), "failures": store.failures, "failed_keys": store.failed_keys}
