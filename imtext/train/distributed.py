"""Negatives across the whole global batch: with DDP each worker only sees its local batch, so hard
negatives would come from B/N samples. All-gathering the embeddings *with gradients* (as open_clip does)
lets every worker compute the loss over the global batch; the gradients then equal one big-batch step."""

from __future__ import annotations

import torch
import torch.distributed as dist

from imtext.loss import RankingLoss, same_image_mask


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate `x` from every rank in rank order; gradients flow back to each rank's own rows."""
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(x), dim=0)


def gather_no_grad(x: torch.Tensor) -> torch.Tensor:
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts, dim=0)


def batch_loss(
    loss_fn: RankingLoss,
    img: torch.Tensor,
    txt: torch.Tensor,
    image_index: torch.Tensor,
    gather: bool = True,
    hard: torch.Tensor | None = None,
    hard_valid: torch.Tensor | None = None,
) -> torch.Tensor:
    """The ranking loss over the global batch when `gather` and distributed, else over the local batch.

    Every rank computes the same global loss; all_gather's backward sums the ranks' gradients into each
    rank's rows (x world size) and DDP averages over ranks (/ world size), so the update equals one
    worker with the whole batch.
    """
    if gather and is_distributed():
        img, txt = gather_with_grad(img), gather_with_grad(txt)
        image_index = gather_no_grad(image_index)
        if hard is not None:  # each row's own extra negatives travel with it
            hard, hard_valid = gather_with_grad(hard), gather_no_grad(hard_valid.to(torch.uint8)).bool()
    # one image often appears twice in a batch
    return loss_fn(img, txt, same_image_mask(image_index), hard, hard_valid)
