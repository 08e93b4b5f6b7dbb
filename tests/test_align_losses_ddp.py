"""core.losses under DDP: a 2-process gloo run on CPU gives the loss and gradients of one process on the
whole batch (cross-device negatives gathered with gradients, DDP's gradient averaging), also for InfoNCE with a
different number of targets on each rank, and for a GradCache step with DDP's no_sync."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from core.distributed import leave_process_group
from core.losses import clip_loss, info_nce_loss, siglip_loss
from vlm2vec.gradcache import grad_cache_step

WORLD = 2
LOCAL = 6  # rows per rank
IN_DIM, DIM = 5, 4
CHUNKS = [None, 4]  # dense and uneven blocks (6 = 4 + 2, 12 = 3 * 4)
UNEVEN = [LOCAL + 2, 2 * LOCAL]  # targets per rank when rows with and without hard negatives mix


class Heads(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.image = nn.Linear(IN_DIM, DIM)
        self.text = nn.Linear(IN_DIM, DIM)
        self.log_scale = nn.Parameter(torch.tensor(2.0))
        self.bias = nn.Parameter(torch.tensor(-3.0))

    def forward(self, image, text, extra=None):
        return (
            F.normalize(self.image(image), dim=-1),
            F.normalize(self.text(text), dim=-1),
            None if extra is None else F.normalize(self.text(extra), dim=-1),
            self.log_scale.exp(),
            # DDP's unused-parameter search needs an autograd node: a parameter returned as-is counts as unused.
            self.bias.clone(),
        )


def _data():
    g = torch.Generator().manual_seed(1)
    n = WORLD * LOCAL
    data = {
        "image": torch.randn(n, IN_DIM, generator=g),
        "text": torch.randn(n, IN_DIM, generator=g),
        "extra": torch.randn(n, IN_DIM, generator=g),
        # info_nce: per rank LOCAL queries and 2*LOCAL targets ([positives; hard negatives]), rank-major.
        "targets": torch.randn(2 * n, IN_DIM, generator=g),
    }
    masks = torch.rand(WORLD, LOCAL, 2 * LOCAL, generator=g) < 0.2
    masks[:, torch.arange(LOCAL), torch.arange(LOCAL)] = True
    data["local_masks"] = masks
    global_mask = torch.zeros(n, 2 * n, dtype=torch.bool)
    for r in range(WORLD):
        global_mask[r * LOCAL : (r + 1) * LOCAL, r * 2 * LOCAL : (r + 1) * 2 * LOCAL] = masks[r]
    data["global_mask"] = global_mask
    diagonal = torch.zeros(WORLD, LOCAL, 2 * LOCAL, dtype=torch.bool)
    diagonal[:, torch.arange(LOCAL), torch.arange(LOCAL)] = True
    data["global_diagonal"] = torch.block_diag(*diagonal)
    # Uneven: rank r holds UNEVEN[r] targets; its queries' positives are among its own targets.
    data["uneven_targets"] = torch.randn(sum(UNEVEN), IN_DIM, generator=g)
    uneven_masks = [torch.rand(LOCAL, m, generator=g) < 0.2 for m in UNEVEN]
    for mask in uneven_masks:
        mask[torch.arange(LOCAL), torch.arange(LOCAL)] = True
    data["uneven_masks"] = uneven_masks
    data["uneven_global_mask"] = torch.block_diag(*uneven_masks)
    data["uneven_global_diagonal"] = torch.block_diag(
        *[torch.eye(LOCAL, m, dtype=torch.bool) for m in UNEVEN]
    )
    return data


def _target_rows(rank: int | None) -> slice:
    """The uneven targets of one rank (None: all of them, as one process sees them)."""
    if rank is None:
        return slice(0, sum(UNEVEN))
    return slice(sum(UNEVEN[:rank]), sum(UNEVEN[: rank + 1]))


INFO_NCE = ("info_nce", "info_nce_mask", "info_nce_uneven", "info_nce_uneven_mask")
CASES = [
    (loss, extra, chunk) for loss in ("siglip", "clip") for extra in (False, True) for chunk in CHUNKS
] + [(loss, False, chunk) for loss in INFO_NCE for chunk in CHUNKS]


def _mask(data, name: str, rank: int | None):
    """The positive mask of an InfoNCE case for one rank (its own targets) or for the whole batch."""
    if rank is not None:
        return {
            "info_nce_mask": data["local_masks"][rank],
            "info_nce_uneven_mask": data["uneven_masks"][rank],
        }.get(name)
    return {
        "info_nce_mask": data["global_mask"],
        "info_nce": data["global_diagonal"],
        "info_nce_uneven_mask": data["uneven_global_mask"],
        "info_nce_uneven": data["uneven_global_diagonal"],
    }.get(name)


def _loss(model, data, case, rows, mask, group, rank=None):
    """Runs one case on the given rows (a rank's slice, or everything) and returns the LossOutput."""
    name, with_extra, chunk = case
    if name.startswith("info_nce_uneven"):
        query, target, _, _, _ = model(data["image"][rows], data["uneven_targets"][_target_rows(rank)])
        return info_nce_loss(
            query, target, positive_mask=mask, temperature=0.1, chunk_size=chunk, group=group
        )
    if name.startswith("info_nce"):
        target_rows = slice(2 * rows.start, 2 * rows.stop)
        query, target, _, _, _ = model(data["image"][rows], data["targets"][target_rows])
        return info_nce_loss(
            query, target, positive_mask=mask, temperature=0.1, chunk_size=chunk, group=group
        )
    extra = data["extra"][rows] if with_extra else None
    image, text, extra, scale, bias = model(data["image"][rows], data["text"][rows], extra)
    if name == "siglip":
        return siglip_loss(image, text, scale, bias, extra_text=extra, chunk_size=chunk, group=group)
    return clip_loss(image, text, scale, extra_text=extra, chunk_size=chunk, group=group)


def _worker(rank: int, init_file: str, out_file: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    torch.manual_seed(0)
    base = Heads()
    data = _data()
    rows = slice(rank * LOCAL, (rank + 1) * LOCAL)
    results = {}
    for case in CASES:
        model = DistributedDataParallel(copy.deepcopy(base), find_unused_parameters=True)
        out = _loss(model, data, case, rows, _mask(data, case[0], rank), dist.group.WORLD, rank)
        out.loss.backward()
        loss = out.loss.detach().clone()
        dist.all_reduce(loss)
        key = "/".join(map(str, case))
        results[key + "/loss"] = loss / WORLD
        for name, p in model.module.named_parameters():
            results[f"{key}/{name}"] = p.grad.clone() if p.grad is not None else torch.zeros_like(p)
        del model, out
    results.update(_grad_cache_under_ddp(data, rank))
    if rank == 0:
        torch.save(results, out_file)
    dist.barrier()
    leave_process_group()  # after `del model` above: nothing may hold the group when it goes


class Encoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(IN_DIM, DIM)

    def forward(self, x):
        return F.normalize(self.proj(x), dim=-1)


def _grad_cache_under_ddp(data, rank: int) -> dict[str, torch.Tensor]:
    """A GradCache step of a DDP model (no_sync on all chunks but the last), uneven targets per rank."""
    torch.manual_seed(0)
    model = DistributedDataParallel(Encoder())
    queries = data["image"][rank * LOCAL : (rank + 1) * LOCAL]
    targets = data["uneven_targets"][_target_rows(rank)]
    out = grad_cache_step(
        model,
        queries.split(4),
        targets.split(3),  # 3 target chunks on rank 0, 4 on rank 1
        lambda q, t: info_nce_loss(q, t, data["uneven_masks"][rank], temperature=0.1, group=dist.group.WORLD),
        no_sync=model.no_sync,
    )
    loss = out.loss.detach().clone()
    dist.all_reduce(loss)
    return {
        "gradcache/loss": loss / WORLD,
        **{f"gradcache/{n}": p.grad for n, p in model.module.named_parameters()},
    }


@pytest.fixture(scope="module")
def ddp_results(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("ddp")
    out_file = tmp_path / "ddp.pt"
    mp.spawn(_worker, args=(str(tmp_path / "init"), str(out_file)), nprocs=WORLD, join=True)
    return torch.load(out_file, weights_only=True)


def test_two_process_gloo_equals_one_process(ddp_results):
    ddp = ddp_results

    torch.manual_seed(0)
    base = Heads()
    data = _data()
    everything = slice(0, WORLD * LOCAL)
    for case in CASES:
        model = copy.deepcopy(base)
        # One process, whole batch: info_nce's targets are the ranks' [positives; hard negatives] concatenated,
        # so query i's positive sits in its own rank's block.
        out = _loss(model, data, case, everything, _mask(data, case[0], None), None)
        out.loss.backward()
        key = "/".join(map(str, case))
        torch.testing.assert_close(ddp[key + "/loss"], out.loss.detach(), msg=f"loss of {key}")
        for name, p in model.named_parameters():
            expected = p.grad if p.grad is not None else torch.zeros_like(p)
            torch.testing.assert_close(ddp[f"{key}/{name}"], expected, msg=f"grad of {name} in {key}")
            if name in {"image.weight", "text.weight"}:
                assert expected.abs().sum() > 0


def _plain_full_batch_reference(data) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    torch.manual_seed(0)
    model = Encoder()
    query, target = model(data["image"]), model(data["uneven_targets"])
    loss = info_nce_loss(query, target, data["uneven_global_mask"], temperature=0.1).loss
    loss.backward()
    return loss.detach(), {n: p.grad for n, p in model.named_parameters()}


def test_grad_cache_under_ddp_equals_the_plain_full_batch_step(ddp_results):
    loss, grads = _plain_full_batch_reference(_data())
    torch.testing.assert_close(ddp_results["gradcache/loss"], loss)
    for name, grad in grads.items():
        assert grad.abs().sum() > 0
        torch.testing.assert_close(ddp_results[f"gradcache/{name}"], grad, msg=name)
