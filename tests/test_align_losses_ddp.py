"""align.losses under DDP: a 2-process gloo run on CPU gives the loss and gradients of one process on the
whole batch (cross-device negatives gathered with gradients, DDP's gradient averaging)."""

from __future__ import annotations

import copy

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from align.losses import clip_loss, info_nce_loss, siglip_loss

WORLD = 2
LOCAL = 6  # rows per rank
IN_DIM, DIM = 5, 4
CHUNKS = [None, 4]  # dense and uneven blocks (6 = 4 + 2, 12 = 3 * 4)


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
    return data


CASES = [
    (loss, extra, chunk) for loss in ("siglip", "clip") for extra in (False, True) for chunk in CHUNKS
] + [(loss, False, chunk) for loss in ("info_nce", "info_nce_mask") for chunk in CHUNKS]


def _loss(model, data, case, rows, mask, group):
    """Runs one case on the given rows (a rank's slice, or everything) and returns the LossOutput."""
    name, with_extra, chunk = case
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
        mask = {"info_nce_mask": data["local_masks"][rank]}.get(case[0])
        out = _loss(model, data, case, rows, mask, dist.group.WORLD)
        out.loss.backward()
        loss = out.loss.detach().clone()
        dist.all_reduce(loss)
        key = "/".join(map(str, case))
        results[key + "/loss"] = loss / WORLD
        for name, p in model.module.named_parameters():
            results[f"{key}/{name}"] = p.grad.clone() if p.grad is not None else torch.zeros_like(p)
    if rank == 0:
        torch.save(results, out_file)
    dist.destroy_process_group()


def test_two_process_gloo_equals_one_process(tmp_path):
    out_file = tmp_path / "ddp.pt"
    mp.spawn(_worker, args=(str(tmp_path / "init"), str(out_file)), nprocs=WORLD, join=True)
    ddp = torch.load(out_file, weights_only=True)

    torch.manual_seed(0)
    base = Heads()
    data = _data()
    everything = slice(0, WORLD * LOCAL)
    for case in CASES:
        model = copy.deepcopy(base)
        # One process, whole batch: info_nce's targets are the ranks' [positives; hard negatives] concatenated,
        # so query i's positive sits in its own rank's block.
        mask = {"info_nce_mask": data["global_mask"], "info_nce": data["global_diagonal"]}.get(case[0])
        out = _loss(model, data, case, everything, mask, None)
        out.loss.backward()
        key = "/".join(map(str, case))
        torch.testing.assert_close(ddp[key + "/loss"], out.loss.detach(), msg=f"loss of {key}")
        for name, p in model.named_parameters():
            expected = p.grad if p.grad is not None else torch.zeros_like(p)
            torch.testing.assert_close(ddp[f"{key}/{name}"], expected, msg=f"grad of {name} in {key}")
            if name in {"image.weight", "text.weight"}:
                assert expected.abs().sum() > 0
