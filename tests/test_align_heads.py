"""Alignment heads: SAIL-L parameter counts, init, logit scale clamp, sharelock, the fused star function, LayerNorm
folded into each head's first layer."""

from __future__ import annotations

import math

import pytest
import torch

from align.heads import AlignmentHead, HeadConfig, ModalityHead, StarMLP, count_parameters


def meta_head(**kwargs) -> AlignmentHead:
    with torch.device("meta"):
        return AlignmentHead(HeadConfig(**kwargs))


def test_sail_l_star_head_parameter_counts():
    # DINOv2-L concat (2048) and NV-Embed-v2 (4096), width 8, target 1024.
    head = meta_head(head="star", image_dim=2048, text_dim=4096, target_dim=1024, width_factor=8)

    def star(d: int, w: int = 8, t: int = 1024) -> int:
        layer_norm = 2 * d
        f1 = f2 = d * (w * d) + w * d
        out = (w * d) * t + t
        return layer_norm + f1 + f2 + out

    assert count_parameters(head.image) == star(2048) == 83_923_968  # ~84M
    assert count_parameters(head.text) == star(4096) == 302_064_640  # ~302M
    assert count_parameters(head) == star(2048) + star(4096) + 2  # + logit scale and bias


@pytest.mark.parametrize(
    ("kind", "image_params"),
    [
        ("linear", 2 * 16 + 16 * 8 + 8),
        ("mlp", 2 * 16 + (16 * 64 + 64) + (64 * 8 + 8)),
    ],
)
def test_linear_and_mlp_counts(kind, image_params):
    head = AlignmentHead(HeadConfig(head=kind, image_dim=16, text_dim=4, target_dim=8))
    assert count_parameters(head.image) == image_params


def test_init_is_xavier_uniform_with_zero_biases():
    torch.manual_seed(0)
    head = AlignmentHead(HeadConfig(head="star", image_dim=64, text_dim=32, target_dim=48, width_factor=2))
    f1 = head.image.mapping.f1
    bound = math.sqrt(6.0 / (64 + 128))
    assert f1.weight.abs().max() <= bound and f1.weight.abs().max() > 0.9 * bound
    assert abs(float(f1.weight.detach().var()) - bound**2 / 3) < 0.1 * bound**2 / 3  # var of U(-b, b)
    for module in head.modules():
        if isinstance(module, torch.nn.Linear):
            assert torch.all(module.bias == 0)
    assert torch.all(head.image.norm.weight == 1) and torch.all(head.image.norm.bias == 0)


def test_logit_scale_is_a_log_and_clamped_to_100():
    head = AlignmentHead(
        HeadConfig(head="linear", image_dim=4, text_dim=4, target_dim=4, logit_scale=20, logit_bias=-10)
    )
    assert head.log_logit_scale.item() == pytest.approx(math.log(20))
    assert head.logit_scale.item() == pytest.approx(20) and head.logit_bias.item() == -10
    with torch.no_grad():
        head.log_logit_scale.fill_(math.log(500))
    head.clamp_logit_scale_()
    assert head.logit_scale.item() == pytest.approx(100)


def test_outputs_are_normalised_and_star_matches_its_formula():
    torch.manual_seed(0)
    head = AlignmentHead(HeadConfig(head="star", image_dim=6, text_dim=5, target_dim=3, width_factor=2))
    x = torch.randn(4, 6)
    image, text, extra = head(x, torch.randn(4, 5))
    assert extra is None
    torch.testing.assert_close(image.norm(dim=-1), torch.ones(4))
    m = head.image.mapping
    h = torch.nn.functional.layer_norm(x, (6,))
    expected = (torch.clamp(h @ m.f1.weight.T, 0, 6) * (h @ m.f2.weight.T)) @ m.out.weight.T
    torch.testing.assert_close(head.encode_image(x, normalize=False), expected)


def test_sharelock_passes_images_through():
    head = AlignmentHead(HeadConfig(head="sharelock", image_dim=8, text_dim=5, target_dim=8, hidden_dim=16))
    x = torch.randn(3, 8)
    torch.testing.assert_close(head.encode_image(x, normalize=False), x)
    assert sum(isinstance(m, torch.nn.BatchNorm1d) for m in head.text.modules()) == 3
    assert sum(isinstance(m, torch.nn.Linear) for m in head.text.modules()) == 4
    with pytest.raises(ValueError, match="target dim must equal the image dim"):
        HeadConfig(head="sharelock", image_dim=8, text_dim=5, target_dim=4)
    with pytest.raises(ValueError, match="unknown head"):
        HeadConfig(head="transformer", image_dim=8, text_dim=5)


def _plain_star(m, x):
    """The star formula through plain autograd (what the fused function replaces)."""
    return m.out(torch.nn.functional.relu6(m.f1(x)) * m.f2(x))


def _star_and_grads(m, x, forward):
    m.zero_grad(set_to_none=True)
    x = x.detach().requires_grad_()
    y = forward(m, x)
    # Values of both signs and outside (0, 6) reach the gate, so every branch of ReLU6's derivative is used.
    (y * torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view_as(y)).sum().backward()
    return y.detach(), x.grad, {n: p.grad.clone() for n, p in m.named_parameters()}


def test_fused_star_equals_plain_autograd_in_float64():

    torch.manual_seed(0)
    m = StarMLP(6, 3, width_factor=4).double()
    for p in m.parameters():
        torch.nn.init.normal_(p, std=2.0)  # pre-activations spread well beyond [0, 6]
    x = torch.randn(9, 6, dtype=torch.float64)
    gate = torch.nn.functional.linear(x, m.f1.weight, m.f1.bias)
    assert (gate < 0).any() and (gate > 6).any() and ((gate > 0) & (gate < 6)).any()
    y, gx, grads = _star_and_grads(m, x, lambda m, x: m(x))
    y_ref, gx_ref, grads_ref = _star_and_grads(m, x, _plain_star)
    torch.testing.assert_close(y, y_ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(gx, gx_ref, rtol=1e-12, atol=1e-12)
    assert (
        grads.keys()
        == grads_ref.keys()
        == {f"{a}.{b}" for a in ("f1", "f2", "out") for b in ("weight", "bias")}
    )
    for name in grads:
        torch.testing.assert_close(grads[name], grads_ref[name], rtol=1e-12, atol=1e-12, msg=name)
    with torch.no_grad():
        torch.testing.assert_close(m(x), y_ref)


def test_fused_star_under_bf16_autocast_matches_plain_and_keeps_fp32_grads():

    torch.manual_seed(1)
    m = StarMLP(16, 8, width_factor=2)
    x = torch.randn(32, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, gx, grads = _star_and_grads(m, x, lambda m, x: m(x))
        y_ref, gx_ref, grads_ref = _star_and_grads(m, x, _plain_star)
    assert y.dtype == torch.bfloat16 and gx.dtype == torch.float32
    torch.testing.assert_close(y.float(), y_ref.float(), rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(gx, gx_ref, rtol=2e-2, atol=2e-2)
    for name, grad in grads.items():
        assert grad.dtype == torch.float32, name
        torch.testing.assert_close(grad, grads_ref[name], rtol=3e-2, atol=3e-2, msg=name)


def test_fused_star_saves_half_the_hidden_activations():

    m = StarMLP(32, 8, width_factor=8)
    x = torch.randn(64, 32, requires_grad=True)
    hidden = 64 * 32 * 8

    def saved_hidden(forward) -> int:
        seen: dict[int, int] = {}

        def pack(t):
            if t.numel() == hidden:
                seen[t.untyped_storage().data_ptr()] = 1
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            forward(m, x)
        return len(seen)

    assert saved_hidden(_plain_star) == 4  # f1(x), relu6(f1(x)), f2(x) and their product
    assert saved_hidden(lambda m, x: m(x)) == 2  # the gate and f2(x)


def _plain_head(head: ModalityHead, x: torch.Tensor) -> torch.Tensor:
    """``LayerNorm -> mapping`` as plain modules through plain autograd."""
    h = head.norm(x)
    if isinstance(head.mapping, StarMLP):
        return _plain_star(head.mapping, h)
    return head.mapping(h)


def _head_and_grads(head: ModalityHead, x: torch.Tensor, forward, x_grad: bool):
    head.zero_grad(set_to_none=True)
    x = x.detach().requires_grad_(x_grad)
    y = forward(head, x)
    (y * torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view_as(y)).sum().backward()
    return y.detach(), x.grad, {n: p.grad.clone() for n, p in head.named_parameters()}


@pytest.mark.parametrize("x_grad", [False, True], ids=["features", "x-needs-grad"])
@pytest.mark.parametrize("kind", ["star", "linear", "mlp", "sharelock"])
def test_layernorm_folded_into_the_first_layer_equals_plain_autograd_in_float64(kind, x_grad):
    torch.manual_seed(0)
    head = ModalityHead(kind, 6, 3, width_factor=4, hidden_dim=8).double().eval()
    for p in head.parameters():
        torch.nn.init.normal_(p, std=2.0)  # LayerNorm's weight and bias far from 1 and 0
    x = 3 * torch.randn(9, 6, dtype=torch.float64) + 1
    y, gx, grads = _head_and_grads(head, x, lambda m, x: m(x), x_grad)
    y_ref, gx_ref, grads_ref = _head_and_grads(head, x, _plain_head, x_grad)
    torch.testing.assert_close(y, y_ref, rtol=1e-12, atol=1e-12)
    if x_grad:
        torch.testing.assert_close(gx, gx_ref, rtol=1e-10, atol=1e-10)
    else:
        assert gx is None and gx_ref is None
    assert grads.keys() == grads_ref.keys() and {"norm.weight", "norm.bias"} <= grads.keys()
    for name in grads:
        torch.testing.assert_close(grads[name], grads_ref[name], rtol=1e-10, atol=1e-10, msg=name)


def test_layernorm_folded_star_under_bf16_autocast_matches_plain_and_keeps_fp32_grads():
    torch.manual_seed(2)
    head = ModalityHead("star", 16, 8, width_factor=2, hidden_dim=None)
    x = torch.randn(32, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, _, grads = _head_and_grads(head, x, lambda m, x: m(x), False)
        y_ref, _, grads_ref = _head_and_grads(head, x, _plain_head, False)
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), y_ref.float(), rtol=2e-2, atol=2e-2)
    for name, grad in grads.items():
        assert grad.dtype == torch.float32, name
        torch.testing.assert_close(grad, grads_ref[name], rtol=3e-2, atol=3e-2, msg=name)


def test_backward_runs_no_layernorm_output_gradient_gemm():
    from torch.utils.flop_counter import FlopCounterMode

    n, d = 64, 32
    head = ModalityHead("star", d, 8, width_factor=4, hidden_dim=None)
    x = torch.randn(n, d)

    def backward_flops(forward) -> int:
        y = forward(head, x)
        with FlopCounterMode(display=False) as counter:
            y.sum().backward()
        return counter.get_total_flops()

    first_layers = head.mapping.f1.weight.numel() + head.mapping.f2.weight.numel()
    # plain autograd's dL/dh GEMMs (2 n per f1/f2 weight), less the fused one's two ``s @ W`` GEMVs for dbeta
    assert backward_flops(_plain_head) - backward_flops(lambda m, x: m(x)) == 2 * (n - 1) * first_layers
