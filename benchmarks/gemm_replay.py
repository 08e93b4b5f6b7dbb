"""The GEMMs a step runs, recorded and replayed alone: the time the step would take if nothing else cost.

``record_gemms(step)`` runs ``step`` once under a dispatch mode that notes every ``mm`` / ``addmm`` /
``addmm_`` / ``bmm`` / ``baddbmm`` call (autograd's backward included) with its operands' shapes, strides and
dtypes. ``GemmReplay`` rebuilds operands of the same layout once and calls the same ops on them, so its time
is the step's matmul work at the machine's real GEMM efficiency for those shapes: a measured floor for any
step that computes the same products exactly.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.utils._python_dispatch import TorchDispatchMode

_GEMMS = {
    torch.ops.aten.mm.default,
    torch.ops.aten.addmm.default,
    torch.ops.aten.addmm_.default,
    torch.ops.aten.bmm.default,
    torch.ops.aten.baddbmm.default,
}


@dataclass(frozen=True)
class GemmCall:
    """One recorded GEMM: the op, its tensor operands' (shape, stride, dtype) and its other arguments."""

    op: torch._ops.OpOverload
    tensors: tuple[tuple[tuple[int, ...], tuple[int, ...], torch.dtype], ...]
    kwargs: tuple[tuple[str, object], ...]

    @property
    def flops(self) -> int:
        """``2 m k n`` (times the batch for ``bmm`` / ``baddbmm``)."""
        a, b = self.tensors[-2][0], self.tensors[-1][0]
        batch = a[0] if len(a) == 3 else 1
        return 2 * batch * a[-2] * a[-1] * b[-1]


class _Recorder(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.calls: list[GemmCall] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _GEMMS:
            tensors = tuple(
                (tuple(t.shape), tuple(t.stride()), t.dtype) for t in args if isinstance(t, torch.Tensor)
            )
            self.calls.append(GemmCall(func, tensors, tuple(sorted(kwargs.items()))))
        return func(*args, **kwargs)


def record_gemms(step: Callable[[], object]) -> list[GemmCall]:
    """The GEMMs one call of ``step`` runs, in order."""
    recorder = _Recorder()
    with recorder:
        step()
    return recorder.calls


def _operand(
    shape: tuple[int, ...], stride: tuple[int, ...], dtype: torch.dtype, device: torch.device | str
) -> torch.Tensor:
    """Random values viewed with ``shape`` and ``stride`` (broadcast strides of 0 included)."""
    extent = 1 + sum((size - 1) * step for size, step in zip(shape, stride, strict=True))
    return torch.randn(extent, dtype=dtype, device=device).as_strided(shape, stride)


class GemmReplay:
    """The recorded GEMMs on fresh operands of the same layouts, callable as one step."""

    def __init__(self, calls: list[GemmCall], device: torch.device | str = "cpu") -> None:
        if not calls:
            raise ValueError("no GEMMs were recorded: the step ran no mm/addmm/bmm")
        self.calls = calls
        self.operands = [[_operand(*t, device=device) for t in call.tensors] for call in calls]

    @property
    def flops(self) -> int:
        return sum(call.flops for call in self.calls)

    def __call__(self) -> None:
        for call, operands in zip(self.calls, self.operands, strict=True):
            call.op(*operands, **dict(call.kwargs))
