"""Negatives across the global batch: 2 DDP workers with B/2 each must give the loss and gradients of one
worker with batch B (the all-gather keeps gradients). Run on two gloo processes, without Ray."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

from imtext.loss import RankingLoss
from imtext.train.distributed import batch_loss

B, D_IN, D = 8, 6, 4


class Pair(nn.Module):
    def __init__(self):
        super().__init__()
        self.img = nn.Linear(D_IN, D)
        self.txt = nn.Linear(D_IN, D)

    def forward(self, x, y):
        return F.normalize(self.img(x), dim=-1), F.normalize(self.txt(y), dim=-1)

    def hard(self, y):
        """Stand-ins for word-swapped captions: one extra negative per row, through the text branch."""
        return F.normalize(self.txt(y.flip(1)), dim=-1).unsqueeze(1)


def _data():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(B, D_IN, generator=g), torch.randn(B, D_IN, generator=g)
    index = torch.tensor([0, 1, 2, 3, 3, 4, 5, 6])  # one image twice: a positive, never a negative
    return x, y, index


def _hard(model, y, rows=slice(None)):
    hard = model.hard(y[rows])
    return hard, torch.arange(B)[rows].unsqueeze(1) % 3 != 0  # some rows without a swap


def _single(strategy: str, gather: bool, hard: bool = False):
    torch.manual_seed(0)
    model = Pair()
    x, y, index = _data()
    img, txt = model(x, y)
    extra = _hard(model, y) if hard else (None, None)
    loss = batch_loss(RankingLoss(0.2, strategy, k=2), img, txt, index, gather, *extra)
    loss.backward()
    return float(loss.detach()), {n: p.grad.clone() for n, p in model.named_parameters()}


def _worker(rank: int, world: int, port: int, strategy: str, gather: bool, hard: bool, out: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.manual_seed(0)
    model = nn.parallel.DistributedDataParallel(Pair())
    x, y, index = _data()
    rows = slice(rank * B // world, (rank + 1) * B // world)
    img, txt = model(x[rows], y[rows])
    extra = _hard(model.module, y, rows) if hard else (None, None)
    loss = batch_loss(RankingLoss(0.2, strategy, k=2), img, txt, index[rows], gather, *extra)
    loss.backward()
    if rank == 0:
        out["loss"] = float(loss.detach())
        out["grads"] = {n.removeprefix("module."): p.grad.clone() for n, p in model.named_parameters()}
    dist.barrier()
    dist.destroy_process_group()
    # Leave without the interpreter's shutdown: about 1 run in 10, a thread torch left behind aborted the
    # process there ("terminate called without an active exception"), after the results were in `out`.
    os._exit(0)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _distributed(strategy: str, gather: bool, hard: bool = False):
    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(_worker, args=(2, _free_port(), strategy, gather, hard, out), nprocs=2, join=True)
        return out["loss"], dict(out["grads"])


@pytest.mark.parametrize(
    "strategy, hard", [("hardest", False), ("all", False), ("infonce", True)], ids=["hardest", "all", "swaps"]
)
def test_two_workers_with_gather_equal_one_big_batch(strategy, hard):
    """`swaps`: with word-swap hard negatives (each row's own, some rows without) as well."""
    loss_1, grads_1 = _single(strategy, gather=True, hard=hard)
    loss_2, grads_2 = _distributed(strategy, gather=True, hard=hard)
    assert loss_2 == pytest.approx(loss_1, rel=1e-5, abs=1e-6)
    for name, g in grads_1.items():
        torch.testing.assert_close(grads_2[name], g, rtol=1e-4, atol=1e-6, msg=f"gradient of {name}")


def test_without_gather_workers_see_only_local_negatives():
    """The flag matters: local-batch hardest negatives give a different (easier) loss."""
    loss_1, _ = _single("hardest", gather=True)
    loss_local, _ = _distributed("hardest", gather=False)
    assert abs(loss_local - loss_1) > 1e-4
