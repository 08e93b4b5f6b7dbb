"""GradCache: contrastive steps whose batch is far larger than what fits through the model at once.

Gao et al. (2021), written for this toolkit. The step (1) encodes every chunk without grad (inference mode), remembering each
chunk's RNG state, (2) computes the loss on the full batch of cached representations and backpropagates it to
the representations only, then (3) re-encodes each chunk with grad under its replayed RNG state (so dropout
draws the same masks) and backpropagates the cached representation gradients into the model; the last chunk
of step 1 (a query chunk) keeps its graph instead, so it is not encoded twice. The parameter gradients equal
those of one full-batch step. Under DDP, all chunks but the last run under `no_sync`, so the gradients are
all-reduced once; global negatives come from the loss's process group.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import torch
from torch import Tensor

Chunk = TypeVar("Chunk")


class RngState:
    """The CPU and CUDA RNG states at construction, replayable later."""

    def __init__(self) -> None:
        self.cpu = torch.get_rng_state()
        self.cuda_devices = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
        self.cuda = [torch.cuda.get_rng_state(d) for d in self.cuda_devices]

    @contextlib.contextmanager
    def replay(self) -> Iterator[None]:
        """Run the block from the recorded state; the global RNG is restored afterwards."""
        with torch.random.fork_rng(devices=self.cuda_devices):
            torch.set_rng_state(self.cpu)
            for device, state in zip(self.cuda_devices, self.cuda, strict=True):
                torch.cuda.set_rng_state(state, device)
            yield


def _encode_without_grad(
    encode: Callable[[Any], Tensor], chunks: Sequence[Any]
) -> tuple[list[Tensor], list[RngState]]:
    """Representations of the chunks (no graph) and the RNG state each chunk started from.

    Runs under inference mode (no autograd bookkeeping, no version counters: a few percent of the step on the
    CPU); the representations only enter ``torch.cat`` outside it, which makes ordinary tensors of them."""
    reps, states = [], []
    with torch.inference_mode():
        for chunk in chunks:
            states.append(RngState())
            reps.append(encode(chunk))
    return reps, states


def grad_cache_step(
    encode: Callable[[Any], Tensor],
    query_chunks: Sequence[Any],
    target_chunks: Sequence[Any],
    loss_fn: Callable[[Tensor, Tensor], Any],
    no_sync: Callable[[], contextlib.AbstractContextManager] | None = None,
    scale: Callable[[Tensor], Tensor] | None = None,
) -> Any:
    """One GradCache forward/backward; accumulates parameter gradients, returns `loss_fn`'s output.

    `encode(chunk) -> Tensor[n, d]` runs the model on one chunk (call this under autocast for bf16);
    `loss_fn(query[B, d], target[M, d])` returns an object with a scalar `.loss` (e.g. `LossOutput`);
    `no_sync` is DDP's `model.no_sync` (None on one device); `scale` is a GradScaler's `scale` for fp16.

    The targets are encoded first, then the queries; the last query chunk is encoded with grad and keeps its
    graph, so it is backpropagated straight away instead of being encoded a second time (queries usually
    carry the image and the instruction: the costlier chunk to skip). The memory bound stays one chunk's
    activations: that graph is freed before any other chunk is re-encoded.
    """
    if not query_chunks or not target_chunks:
        raise ValueError("grad_cache_step needs at least one query chunk and one target chunk")
    unsynced = no_sync or contextlib.nullcontext
    target_reps, target_states = _encode_without_grad(encode, target_chunks)
    query_reps, query_states = _encode_without_grad(encode, query_chunks[:-1])
    with unsynced():
        kept = encode(query_chunks[-1])
    query_reps.append(kept.detach())
    query = torch.cat(query_reps).requires_grad_(True)
    target = torch.cat(target_reps).requires_grad_(True)
    output = loss_fn(query, target)
    loss = output.loss if scale is None else scale(output.loss)
    query_grad, target_grad = torch.autograd.grad(loss, [query, target])
    *query_grads, kept_grad = query_grad.split([rep.shape[0] for rep in query_reps])
    target_grads = target_grad.split([rep.shape[0] for rep in target_reps])
    with unsynced():
        # The surrogate's gradient w.r.t. the representations is exactly the cached gradient.
        torch.sum(kept.float() * kept_grad).backward()
    del kept

    jobs = [
        *zip(target_chunks, target_states, target_grads, strict=True),
        *zip(query_chunks[:-1], query_states, query_grads, strict=True),
    ]
    for index, (chunk, state, grad) in enumerate(jobs):
        sync = contextlib.nullcontext() if index == len(jobs) - 1 else unsynced()
        with sync, state.replay():
            torch.sum(encode(chunk).float() * grad).backward()
    return output
