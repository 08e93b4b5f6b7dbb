"""Peak memory of the activations autograd keeps for backward, measured with saved-tensor hooks.

On the CPU the process RSS is too noisy to compare two ways of computing the same step; the bytes autograd
saves for backward are exact, and they are what grows with the batch.
"""

from __future__ import annotations

import weakref

import torch


class SavedActivationMeter:
    """Peak bytes of the tensors autograd keeps for backward (activations; parameters excluded), counting each
    storage once: the memory that grows with the batch in a plain step and that GradCache bounds by a chunk."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.params = {p.untyped_storage().data_ptr() for p in model.parameters()}
        self.live: dict[int, list[int]] = {}
        self.current = self.peak = 0

    def hooks(self) -> torch.autograd.graph.saved_tensors_hooks:
        """The context in which autograd's saved tensors are counted."""
        return torch.autograd.graph.saved_tensors_hooks(self.pack, self.unpack)

    def _release(self, key: int) -> None:
        entry = self.live[key]
        entry[1] -= 1
        if entry[1] == 0:
            self.current -= entry[0]
            del self.live[key]

    def pack(self, tensor: torch.Tensor):
        key = tensor.untyped_storage().data_ptr()
        if key in self.params or tensor.device.type == "meta":
            return tensor
        if key not in self.live:
            self.live[key] = [tensor.untyped_storage().nbytes(), 0]
            self.current += self.live[key][0]
            self.peak = max(self.peak, self.current)
        self.live[key][1] += 1
        holder = _Holder(tensor)
        weakref.finalize(holder, self._release, key)
        return holder

    @staticmethod
    def unpack(packed):
        return packed.tensor if isinstance(packed, _Holder) else packed


class _Holder:
    __slots__ = ("tensor", "__weakref__")

    def __init__(self, tensor: torch.Tensor) -> None:
        self.tensor = tensor
