"""Bidirectional hinge ranking loss (VSE / VSE++) with named negative-sampling strategies.

For L2-normalised image and caption embeddings, S = img @ txt.T holds cosine similarities and row i of
`img` matches row i of `txt`. Two directions, each a hinge on every (anchor, negative) pair:

- i2t (image annotation; image i anchors, captions j are negatives): c_ij = relu(margin + S_ij - S_ii)
- t2i (image search; caption j anchors, images i are negatives):    c_ij = relu(margin + S_ij - S_jj)

`infonce` replaces the hinge by a temperature-scaled softmax over the same negatives (CLIP's loss):
cost = -log(exp(S_ii / t) / (exp(S_ii / t) + sum_j exp(S_ij / t))), which weighs every negative by how
hard it is, smoothly, and has no margin.

A strategy reduces each anchor's costs to one number; these are averaged over anchors (VSE++ sums them:
averaging keeps the loss, and so the right learning rate, independent of the batch size and of the
number of workers when embeddings are all-gathered). Total = w_i2t * i2t + w_t2i * t2i.
"""

from __future__ import annotations

from typing import get_args

import torch
from torch import nn

from imtext.config import Negatives
from imtext.errors import ImtextError

NEGATIVE_STRATEGIES = get_args(Negatives)
HINGE_STRATEGIES = tuple(s for s in NEGATIVE_STRATEGIES if s != "infonce")


def _anchor_costs(
    sim: torch.Tensor, neg: torch.Tensor, margin: float, strategy: str, k: int, temperature: float = 0.05
) -> torch.Tensor:
    """Per-anchor cost for anchors along rows: sim (A, N) with the positive on the diagonal, neg (A, N) bool.

    An anchor without any negative (e.g. a batch of one image's captions) costs 0.
    """
    pos = sim.diagonal().unsqueeze(1)
    if strategy == "infonce":
        # The softmax runs over the positive and the anchor's negatives (duplicates of the positive are
        # left out); an anchor without negatives costs log(1) = 0.
        allowed = neg | torch.eye(*sim.shape, dtype=torch.bool, device=sim.device)
        logits = (sim / temperature).masked_fill(~allowed, float("-inf"))
        return torch.logsumexp(logits, dim=1) - pos.squeeze(1) / temperature
    cost = (margin + sim - pos).clamp_min(0).masked_fill(~neg, 0.0)
    if strategy == "all":
        return cost.sum(1)
    if strategy == "hardest":
        return cost.max(1).values
    if strategy == "semi-hard":
        # FaceNet's semi-hard negatives: less similar than the positive; take the hardest of those.
        # Anchors with no such negative fall back to their hardest negative.
        easier = neg & (sim < pos)
        semi = cost.masked_fill(~easier, -1.0).max(1).values
        return torch.where(easier.any(1), semi, cost.max(1).values)
    if strategy == "top-k":
        # Mean of the k largest costs over the anchor's negatives (k clipped to how many it has).
        n_neg = neg.sum(1)
        kk = max(1, min(k, sim.shape[1]))
        top = cost.masked_fill(~neg, float("-inf")).topk(kk, dim=1).values
        top = top.masked_fill(torch.isinf(top), 0.0)
        return top.sum(1) / n_neg.clamp(min=1, max=kk).to(top.dtype)
    raise ImtextError(
        f"unknown negatives strategy {strategy!r}; choose one of {', '.join(NEGATIVE_STRATEGIES)}"
    )


class RankingLoss(nn.Module):
    """Bidirectional hinge loss; `negatives` is one of NEGATIVE_STRATEGIES so Tune can search it by name.

    - `all`: sum of the hinge over every negative (VSE, Kiros et al.).
    - `hardest`: the largest violation only (VSE++ "max violation").
    - `semi-hard`: the hardest negative among those scoring below the positive (FaceNet); an anchor
      without one uses its hardest negative.
    - `top-k`: mean of the k largest violations.
    - `infonce`: not a hinge: the temperature-scaled softmax over the same negatives (CLIP); `margin`
      is unused, `temperature` sets how sharply it focuses on the hardest.

    `positive_mask[i, j] = True` marks pairs that are also true matches (the same image twice in a batch);
    they are never negatives. The diagonal is always the positive. `negatives` may be changed between
    epochs (e.g. `all` for a warm-up, then `hardest`). After each call `last_parts` holds the detached
    i2t and t2i terms (before weighting) for logging, without forcing a device sync.
    """

    def __init__(
        self,
        margin: float = 0.2,
        negatives: str = "hardest",
        k: int = 3,
        weights: tuple[float, float] = (1.0, 1.0),
        temperature: float = 0.05,
    ):
        super().__init__()
        if margin < 0:
            raise ImtextError(f"loss margin must be >= 0, got {margin}")
        if k < 1:
            raise ImtextError(f"top-k needs k >= 1, got {k}")
        if temperature <= 0:
            raise ImtextError(f"loss temperature must be > 0, got {temperature}")
        self.margin = float(margin)
        self.temperature = float(temperature)
        self.negatives = negatives
        self.k = int(k)
        self.weights = (float(weights[0]), float(weights[1]))
        self.last_parts: dict[str, torch.Tensor] = {}

    @classmethod
    def from_config(cls, cfg, negatives: str | None = None) -> RankingLoss:
        """From an `imtext.config.LossConfig`; `negatives` overrides cfg.negatives (warm-up epochs)."""
        return cls(
            cfg.margin,
            negatives or cfg.negatives,
            cfg.topk,
            (cfg.i2t_weight, cfg.t2i_weight),
            cfg.temperature,
        )

    @property
    def negatives(self) -> str:
        return self._negatives

    @negatives.setter
    def negatives(self, name: str) -> None:
        if name not in NEGATIVE_STRATEGIES:
            raise ImtextError(
                f"unknown negatives strategy {name!r}; choose one of {', '.join(NEGATIVE_STRATEGIES)}"
            )
        self._negatives = name

    def components(
        self,
        img: torch.Tensor,
        txt: torch.Tensor,
        positive_mask: torch.Tensor | None = None,
        hard: torch.Tensor | None = None,
        hard_valid: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """The unweighted i2t and t2i terms (each a scalar with gradient). `hard` (B, S, D): S more
        negatives per row, for that row's image only (word-swapped captions, imtext.text.swap), counted
        where `hard_valid` (B, S) is True; they join image i's negatives like any other caption."""
        if img.ndim != 2 or img.shape != txt.shape:
            raise ValueError(
                f"img and txt must both be (B, D) with the same shape, got {tuple(img.shape)} and {tuple(txt.shape)}"
            )
        n = img.shape[0]
        # At least float32 even under bf16 autocast: margins of 0.05 drown in bf16's 3 significant digits.
        dtype = torch.promote_types(torch.promote_types(img.dtype, txt.dtype), torch.float32)
        with torch.autocast(img.device.type, enabled=False):
            sim = img.to(dtype) @ txt.to(dtype).T
        neg = ~torch.eye(n, dtype=torch.bool, device=sim.device)
        if positive_mask is not None:
            if positive_mask.shape != (n, n):
                raise ValueError(f"positive_mask must be ({n}, {n}), got {tuple(positive_mask.shape)}")
            neg = neg & ~positive_mask.to(device=sim.device, dtype=torch.bool)
        args = (self.margin, self._negatives, self.k, self.temperature)
        t2i = _anchor_costs(sim.T, neg.T, *args).mean()
        if hard is not None:
            if hard.ndim != 3 or hard.shape[0] != n or hard.shape[2] != img.shape[1]:
                raise ValueError(f"hard must be ({n}, S, {img.shape[1]}), got {tuple(hard.shape)}")
            valid = torch.ones(hard.shape[:2], dtype=torch.bool) if hard_valid is None else hard_valid
            with torch.autocast(img.device.type, enabled=False):
                extra = torch.einsum("bd,bsd->bs", img.to(dtype), hard.to(dtype))
            sim = torch.cat([sim, extra], dim=1)  # the diagonal (the positives) is unchanged
            neg = torch.cat([neg, valid.to(device=sim.device, dtype=torch.bool)], dim=1)
        i2t = _anchor_costs(sim, neg, *args).mean()
        return {"i2t": i2t, "t2i": t2i}

    def forward(
        self,
        img: torch.Tensor,
        txt: torch.Tensor,
        positive_mask: torch.Tensor | None = None,
        hard: torch.Tensor | None = None,
        hard_valid: torch.Tensor | None = None,
    ) -> torch.Tensor:
        parts = self.components(img, txt, positive_mask, hard, hard_valid)
        self.last_parts = {name: value.detach() for name, value in parts.items()}
        return self.weights[0] * parts["i2t"] + self.weights[1] * parts["t2i"]

    def extra_repr(self) -> str:
        return (
            f"margin={self.margin}, negatives={self._negatives!r}, k={self.k}, weights={self.weights}, "
            f"temperature={self.temperature}"
        )


def same_image_mask(image_ids: torch.Tensor) -> torch.Tensor:
    """positive_mask for a batch from per-row image ids: True where two rows show the same image."""
    ids = image_ids.reshape(-1)
    return ids.unsqueeze(0) == ids.unsqueeze(1)
