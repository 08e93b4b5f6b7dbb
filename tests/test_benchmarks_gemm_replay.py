"""``benchmarks.gemm_replay``: the GEMMs a step runs are recorded with their layouts and FLOPs, backward
included, and replayed alone."""

from __future__ import annotations

import pytest
import torch

from benchmarks.gemm_replay import GemmReplay, record_gemms


def test_linear_forward_and_backward_are_three_gemms():
    torch.manual_seed(0)
    layer = torch.nn.Linear(16, 8)
    x = torch.randn(32, 16, requires_grad=True)

    calls = record_gemms(lambda: layer(x).sum().backward())

    ops = sorted(call.op.__name__ for call in calls)
    assert ops == ["addmm.default", "mm.default", "mm.default"]
    assert sum(call.flops for call in calls) == 3 * 2 * 32 * 16 * 8
    assert layer.weight.grad is not None and x.grad is not None  # the step itself ran


def test_batched_and_in_place_gemms_count_their_batch():
    a, b = torch.randn(4, 5, 6), torch.randn(4, 6, 7)
    c = torch.zeros(5, 7)
    calls = record_gemms(lambda: (torch.bmm(a, b), c.addmm_(a[0], b[0])))
    assert [call.flops for call in calls] == [2 * 4 * 5 * 6 * 7, 2 * 5 * 6 * 7]


def test_replay_runs_the_same_gemms_on_operands_of_the_same_layout():
    weight = torch.randn(8, 16)
    x = torch.randn(32, 16)
    bias = torch.randn(8)
    calls = record_gemms(lambda: (torch.nn.functional.linear(x, weight, bias), x.T @ torch.randn(32, 8)))
    replay = GemmReplay(calls)

    assert record_gemms(replay) == calls
    assert replay.flops == sum(call.flops for call in calls)
    strides = [operand.stride() for operand in replay.operands[0]]
    assert strides == [tensor[1] for tensor in calls[0].tensors]  # broadcast bias, transposed weight kept


def test_a_step_without_gemms_is_refused():
    with pytest.raises(ValueError, match="no GEMMs"):
        GemmReplay(record_gemms(lambda: torch.ones(3).sum()))
