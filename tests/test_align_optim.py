"""Weight-decay groups, optimizers, the cosine schedule, precision and the checkpoint format."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from lion_pytorch import Lion

from align.heads import AlignmentHead, HeadConfig
from core.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from core.optim import ForeachLion, build_optimizer, param_groups
from core.precision import Precision
from core.schedule import cosine_factor, cosine_schedule, warmup_steps_from


def small_head() -> AlignmentHead:
    return AlignmentHead(HeadConfig(head="mlp", image_dim=6, text_dim=5, target_dim=4, hidden_dim=8))


def test_no_decay_on_norms_biases_and_logit_parameters():
    head = small_head()
    groups = param_groups(head, weight_decay=0.1)
    names = {id(p): n for n, p in head.named_parameters()}
    decay = sorted(names[id(p)] for p in groups[0]["params"])
    no_decay = sorted(names[id(p)] for p in groups[1]["params"])
    assert [g["weight_decay"] for g in groups] == [0.1, 0.0]
    assert decay == sorted(f"{m}.mapping.{i}.weight" for m in ("image", "text") for i in (0, 2))
    assert "log_logit_scale" in no_decay and "logit_bias" in no_decay
    assert "image.norm.weight" in no_decay and "text.mapping.2.bias" in no_decay
    assert len(decay) + len(no_decay) == len(list(head.parameters()))
    sail = param_groups(head, weight_decay=0.1, decay_norm_and_bias=True)
    assert len(sail) == 1 and len(sail[0]["params"]) == len(list(head.parameters()))


@pytest.mark.parametrize("name", ["lion", "adamw"])
def test_decay_applies_only_to_the_decay_group(name):
    head = small_head()
    lr, wd = 0.1, 0.5
    opt = build_optimizer(name, param_groups(head, wd), lr=lr)
    assert isinstance(opt, ForeachLion if name == "lion" else torch.optim.AdamW)
    before = {n: p.detach().clone() for n, p in head.named_parameters()}
    for p in head.parameters():
        p.grad = torch.zeros_like(p)  # zero gradient: only decoupled decay moves the weights
    opt.step()
    for n, p in head.named_parameters():
        expected = before[n] * (1 - lr * wd) if p.ndim >= 2 else before[n]
        torch.testing.assert_close(p.detach(), expected, msg=n)


@pytest.mark.parametrize("decoupled", [False, True])
def test_foreach_lion_equals_lion_pytorch_bit_for_bit(decoupled):
    """Five steps on a star head (two decay groups, a parameter without gradient): parameters and momenta equal
    lion-pytorch's exactly."""
    torch.manual_seed(0)
    heads = [AlignmentHead(HeadConfig(head="star", image_dim=6, text_dim=5, target_dim=4, width_factor=3))]
    heads.append(copy.deepcopy(heads[0]))
    frozen = "text.norm.bias"  # gets no gradient: both optimizers must skip it
    kwargs = dict(lr=3e-3, betas=(0.9, 0.99), decoupled_weight_decay=decoupled)
    ours = ForeachLion(param_groups(heads[0], 0.1), **kwargs)
    reference = Lion(param_groups(heads[1], 0.1), **kwargs)
    for step in range(5):
        g = torch.Generator().manual_seed(step)
        for name, p, q in zip(
            *(dict(h.named_parameters()) for h in heads[:1]), *(h.parameters() for h in heads), strict=True
        ):
            grad = None if name == frozen else torch.randn(p.shape, generator=g)
            p.grad, q.grad = grad, None if grad is None else grad.clone()
        ours.step()
        reference.step()
    for (name, a), b in zip(heads[0].named_parameters(), heads[1].parameters(), strict=True):
        assert torch.equal(a, b), name
        if name != frozen:
            assert torch.equal(ours.state[a]["exp_avg"], reference.state[b]["exp_avg"]), name
    assert not torch.equal(heads[0].image.norm.weight, torch.ones(6))  # the steps moved the weights
    reference.load_state_dict(ours.state_dict())  # same state layout: checkpoints interchange


def test_cosine_schedule_values():
    assert warmup_steps_from(0.1, 100) == 10 and warmup_steps_from(7, 100) == 7
    with pytest.raises(ValueError):
        warmup_steps_from(2.5, 100)
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=2.0)
    sched = cosine_schedule(opt, total_steps=10, warmup_steps=2)
    lrs = []
    for _ in range(10):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    # warmup 1/2, 2/2; then 0.5 * (1 + cos(pi * k / 8)) for k = 0..7
    expected = [1.0, 2.0] + [2.0 * 0.5 * (1 + math.cos(math.pi * k / 8)) for k in range(8)]
    assert lrs == pytest.approx(expected)
    assert lrs[6] == pytest.approx(1.0)  # half way through the decay
    assert cosine_factor(10, 10, 2) == pytest.approx(0.0)
    assert cosine_factor(0, 10, 0) == 1.0


def test_precision_on_cpu_is_fp32_and_steps():
    p = Precision("amp_bf16", "cpu")
    assert p.name == "fp32" and not p.scaler.is_enabled()
    w = torch.nn.Parameter(torch.tensor([3.0, 4.0]))
    opt = torch.optim.SGD([w], lr=1.0)
    p.backward((w * torch.tensor([3.0, 4.0])).sum())
    norm = p.step(opt, [w], max_grad_norm=1.0)
    assert norm.item() == pytest.approx(5.0)
    torch.testing.assert_close(w.detach(), torch.tensor([3.0 - 0.6, 4.0 - 0.8]))  # clipped to norm 1
    with pytest.raises(ValueError, match="unknown precision"):
        Precision("fp8", "cpu")


def test_checkpoints_keep_last_and_ignore_partial(tmp_path):
    head = small_head()
    state = {"step": 0, "rng_cpu": torch.get_rng_state(), "optimizer": {"state": {}, "param_groups": []}}
    for step in (1, 2, 3):
        save_checkpoint(
            tmp_path, step, head.state_dict(), {"step": step}, {**state, "step": step}, keep_last=2
        )
    (tmp_path / "checkpoints" / "step_9.tmp").mkdir()  # a save killed half way
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step_2", "step_3", "step_9.tmp"]
    latest = latest_checkpoint(tmp_path)
    assert latest.name == "step_3"
    ckpt = load_checkpoint(latest)
    assert ckpt.step == 3 and ckpt.config == {"step": 3} and ckpt.trainer_state["step"] == 3
    strict = small_head()
    strict.load_state_dict(ckpt.model_state, strict=True)
    torch.testing.assert_close(strict.text.norm.weight, head.text.norm.weight)
