"""RankingLoss against hand-computed costs on a chosen 3x3 similarity matrix and a loop-based reference."""

from __future__ import annotations

import random

import pytest
import torch

from imtext.config import LossConfig
from imtext.errors import ImtextError
from imtext.loss import HINGE_STRATEGIES, NEGATIVE_STRATEGIES, RankingLoss, same_image_mask

torch.set_num_threads(1)

# img = identity, txt = S.T, so img @ txt.T == S exactly.
S = [
    [0.9, 0.8, 0.1],
    [0.5, 0.6, 0.7],
    [0.2, 0.65, 0.3],
]
# With margin 0.2, the hinge costs per anchor over its two negatives are (worked out on paper):
#   i2t (rows):    row 0: [0.1, 0]     row 1: [0.1, 0.3]    row 2: [0.1, 0.55]
#   t2i (columns): col 0: [0, 0]       col 1: [0.4, 0.25]   col 2: [0, 0.6]
EXPECTED = {
    "all": (1.15 / 3, 1.25 / 3),
    "hardest": (0.95 / 3, 1.0 / 3),
    # i2t: each row's negatives below the positive: row0 {0.8, 0.1} -> 0.8 costs 0.1; row1 {0.5} -> 0.1;
    #      row2 {0.2} -> 0.1.  t2i: col0 {0.5, 0.2} -> 0; col1 none below 0.6 -> hardest 0.4; col2 {0.1} -> 0.
    "semi-hard": (0.3 / 3, 0.4 / 3),
}


def _pair(requires_grad: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    img = torch.eye(3, dtype=torch.float64, requires_grad=requires_grad)
    txt = torch.tensor(S, dtype=torch.float64).T.clone().requires_grad_(requires_grad)
    return img, txt


@pytest.mark.parametrize("strategy", sorted(EXPECTED))
def test_strategies_on_hand_computed_matrix(strategy):
    img, txt = _pair()
    loss = RankingLoss(margin=0.2, negatives=strategy)
    parts = loss.components(img, txt)
    i2t, t2i = EXPECTED[strategy]
    assert parts["i2t"].item() == pytest.approx(i2t)
    assert parts["t2i"].item() == pytest.approx(t2i)
    assert loss(img, txt).item() == pytest.approx(i2t + t2i)
    assert loss.last_parts["i2t"].item() == pytest.approx(i2t)


def test_top_k():
    img, txt = _pair()
    hardest = RankingLoss(0.2, "hardest")(img, txt).item()
    assert RankingLoss(0.2, "top-k", k=1)(img, txt).item() == pytest.approx(hardest)
    # k=2: mean of both negatives' costs = half of `all`
    parts = RankingLoss(0.2, "top-k", k=2).components(img, txt)
    assert parts["i2t"].item() == pytest.approx(0.575 / 3)
    assert parts["t2i"].item() == pytest.approx(0.625 / 3)
    # k larger than the number of negatives is clipped
    assert RankingLoss(0.2, "top-k", k=50)(img, txt).item() == pytest.approx(1.2 / 3)


def test_positive_mask_excludes_duplicates():
    img, txt = _pair()
    mask = torch.zeros(3, 3, dtype=torch.bool)
    mask[0, 2] = mask[2, 0] = True  # rows 0 and 2 show the same image
    parts = RankingLoss(0.2, "all").components(img, txt, mask)
    # i2t: row0 negatives {1}: 0.1; row1 {0, 2}: 0.4; row2 {1}: 0.55.  t2i: col0 {1}: 0; col1 {0, 2}: 0.65; col2 {1}: 0.6
    assert parts["i2t"].item() == pytest.approx(1.05 / 3)
    assert parts["t2i"].item() == pytest.approx(1.25 / 3)

    # Two views of one image (a, a2) next to another image: perfect apart from the duplicate, which,
    # counted as a negative, would violate the margin (a . a2 = 0.995).
    a, b, a2 = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0]), torch.tensor([1.0, 0.1])
    a2 = a2 / a2.norm()
    img2 = txt2 = torch.stack([a, b, a2])
    dup = same_image_mask(torch.tensor([7, 8, 7]))
    for strategy in HINGE_STRATEGIES:
        loss = RankingLoss(0.2, strategy)
        assert loss(img2, txt2).item() > 0.1, strategy
        assert loss(img2, txt2, dup).item() == 0.0, strategy


@pytest.mark.parametrize("strategy", NEGATIVE_STRATEGIES)
def test_weights_select_a_direction(strategy):
    img, txt = _pair()
    parts = RankingLoss(0.2, strategy).components(img, txt)
    assert RankingLoss(0.2, strategy, weights=(1.0, 0.0))(img, txt).item() == pytest.approx(
        parts["i2t"].item()
    )
    assert RankingLoss(0.2, strategy, weights=(0.0, 1.0))(img, txt).item() == pytest.approx(
        parts["t2i"].item()
    )
    assert RankingLoss(0.2, strategy, weights=(2.0, 0.5))(img, txt).item() == pytest.approx(
        2 * parts["i2t"].item() + 0.5 * parts["t2i"].item()
    )


@pytest.mark.parametrize("strategy", HINGE_STRATEGIES)
def test_zero_when_separated(strategy):
    eye = torch.eye(4)
    assert RankingLoss(0.0, strategy)(eye, eye).item() == 0.0
    assert RankingLoss(0.2, strategy)(eye, eye).item() == 0.0  # S_ij - S_ii = -1 < -margin
    one = torch.tensor([[1.0, 0.0]])
    assert RankingLoss(0.2, strategy)(one, one).item() == 0.0  # no negatives at all: 0, not NaN
    img, txt = _pair()
    assert RankingLoss(0.2, strategy)(img, txt).item() > 0  # and not always zero


def _reference(sim: list[list[float]], neg: list[list[bool]], margin: float, strategy: str, k: int) -> float:
    """One direction with explicit loops: anchors along rows, mean over anchors."""
    total = 0.0
    for a, row in enumerate(sim):
        costs = [(max(0.0, margin + row[j] - row[a]), row[j]) for j in range(len(row)) if neg[a][j]]
        if not costs:
            continue
        values = [c for c, _ in costs]
        if strategy == "all":
            total += sum(values)
        elif strategy == "hardest":
            total += max(values)
        elif strategy == "semi-hard":
            below = [(s, c) for c, s in costs if s < row[a]]
            total += max(below)[1] if below else max(values)
        else:
            top = sorted(values, reverse=True)[: min(k, len(values))]
            total += sum(top) / len(top)
    return total / len(sim)


@pytest.mark.parametrize("strategy", HINGE_STRATEGIES)
def test_matches_loop_reference_with_duplicates(strategy):
    torch.manual_seed(0)
    rng = random.Random(0)
    n = 9
    img = torch.nn.functional.normalize(torch.randn(n, 5, dtype=torch.float64), dim=1)
    txt = torch.nn.functional.normalize(torch.randn(n, 5, dtype=torch.float64), dim=1)
    image_ids = torch.tensor([rng.randrange(6) for _ in range(n)])
    mask = same_image_mask(image_ids)
    sim = (img @ txt.T).tolist()
    neg = [[i != j and image_ids[i] != image_ids[j] for j in range(n)] for i in range(n)]
    sim_t = [list(col) for col in zip(*sim)]
    neg_t = [list(col) for col in zip(*neg)]
    parts = RankingLoss(0.3, strategy, k=3).components(img, txt, mask)
    assert parts["i2t"].item() == pytest.approx(_reference(sim, neg, 0.3, strategy, 3))
    assert parts["t2i"].item() == pytest.approx(_reference(sim_t, neg_t, 0.3, strategy, 3))


@pytest.mark.parametrize("strategy", NEGATIVE_STRATEGIES)
def test_gradients_flow(strategy):
    img, txt = _pair(requires_grad=True)
    RankingLoss(0.2, strategy)(img, txt).backward()
    for g in (img.grad, txt.grad):
        assert g is not None and torch.isfinite(g).all() and g.abs().sum() > 0


def test_names_and_errors():
    assert NEGATIVE_STRATEGIES == ("all", "hardest", "semi-hard", "top-k", "infonce")
    assert HINGE_STRATEGIES == ("all", "hardest", "semi-hard", "top-k")
    with pytest.raises(ImtextError, match="all, hardest, semi-hard, top-k, infonce"):
        RankingLoss(negatives="hardest-ish")
    loss = RankingLoss()
    loss.negatives = "all"  # switching after a warm-up
    assert loss.negatives == "all"
    with pytest.raises(ImtextError):
        loss.negatives = "random"
    with pytest.raises(ValueError):
        loss(torch.eye(3), torch.eye(4)[:, :3])
    cfg = LossConfig(margin=0.1, negatives="top-k", topk=5, i2t_weight=0.5, t2i_weight=2.0)
    built = RankingLoss.from_config(cfg)
    assert (built.margin, built.negatives, built.k, built.weights) == (0.1, "top-k", 5, (0.5, 2.0))
    assert built.temperature == cfg.temperature
    with pytest.raises(ImtextError, match="temperature"):
        RankingLoss(negatives="infonce", temperature=0.0)
    assert RankingLoss.from_config(cfg, negatives="all").negatives == "all"


def test_infonce_is_cross_entropy_over_the_batch_in_both_directions():
    """Without duplicates it is CLIP's loss: cross-entropy of S / t against the diagonal, each direction."""
    torch.manual_seed(0)
    img = torch.nn.functional.normalize(torch.randn(6, 4, dtype=torch.float64), dim=1)
    txt = torch.nn.functional.normalize(torch.randn(6, 4, dtype=torch.float64), dim=1)
    target = torch.arange(6)
    sim = img @ txt.T
    parts = RankingLoss(negatives="infonce", temperature=0.07).components(img, txt)
    assert parts["i2t"].item() == pytest.approx(torch.nn.functional.cross_entropy(sim / 0.07, target).item())
    assert parts["t2i"].item() == pytest.approx(
        torch.nn.functional.cross_entropy(sim.T / 0.07, target).item()
    )


def test_infonce_never_counts_a_duplicate_as_a_negative():
    """Rows 0 and 2 show one image: with the mask, row 0's softmax runs over rows 0 and 1 only."""
    torch.manual_seed(1)
    img = torch.nn.functional.normalize(torch.randn(3, 4, dtype=torch.float64), dim=1)
    txt = torch.nn.functional.normalize(torch.randn(3, 4, dtype=torch.float64), dim=1)
    mask = same_image_mask(torch.tensor([5, 6, 5]))
    t = 0.1
    sim = img @ txt.T
    expected = []
    for a, allowed in ((0, [0, 1]), (1, [0, 1, 2]), (2, [1, 2])):
        expected.append(-torch.log_softmax(sim[a, allowed] / t, 0)[allowed.index(a)].item())
    i2t = RankingLoss(negatives="infonce", temperature=t).components(img, txt, mask)["i2t"].item()
    assert i2t == pytest.approx(sum(expected) / 3)
    # a lone anchor costs nothing, not NaN
    one = torch.tensor([[1.0, 0.0]])
    assert RankingLoss(negatives="infonce")(one, one).item() == 0.0


def test_train_epoch_reports_each_directions_loss(synth_world, tmp_path):
    """The epoch metrics carry the unweighted i2t and t2i terms; the loss is their weighted sum."""
    from imtext.train.loop import train_local
    from tests.conftest import tiny_config

    cfg = tiny_config(synth_world, tmp_path / "model", **{"train.epochs": 1, "loss.t2i_weight": 0.5})
    _, history = train_local(cfg, max_steps=3)
    row = history[0]
    assert row["loss_i2t"] > 0 and row["loss_t2i"] > 0
    assert row["loss"] == pytest.approx(row["loss_i2t"] + 0.5 * row["loss_t2i"], rel=1e-4)


# ---- word-swap hard negatives (loss.swap_negatives) ----------------------------------------------------------


def test_hard_negatives_join_their_own_images_annotation_negatives_only():
    """A hard negative of image 0 (a swapped caption) that scores above image 0's own caption raises only
    image 0's i2t cost, by the hinge worked out on paper; t2i is untouched; invalid ones count for nothing."""
    img, txt = _pair()
    loss = RankingLoss(margin=0.2, negatives="all")
    plain = loss.components(img, txt)
    hard = torch.zeros(3, 1, 3, dtype=torch.float64)
    hard[0, 0, 0] = 0.95  # image 0 . its hard negative = 0.95 > its positive 0.9: cost 0.2 + 0.05
    with_hard = loss.components(img, txt, hard=hard, hard_valid=torch.tensor([[True], [True], [True]]))
    assert with_hard["t2i"].item() == pytest.approx(plain["t2i"].item())
    # rows 1 and 2: their hard negatives score 0, below positives 0.6 / 0.3 by more than the margin, except
    # row 2: 0.2 + 0 - 0.3 < 0 too; so only row 0 gains 0.25
    assert with_hard["i2t"].item() == pytest.approx(plain["i2t"].item() + 0.25 / 3)
    ignored = loss.components(img, txt, hard=hard, hard_valid=torch.zeros(3, 1, dtype=torch.bool))
    assert ignored["i2t"].item() == pytest.approx(plain["i2t"].item())
    for strategy in NEGATIVE_STRATEGIES:  # every strategy takes them, and the gradient reaches them
        hard_g = hard.clone()
        hard_g[0, 0, 0] = 0.85  # the hardest negative of image 0, and below its positive (semi-hard's pick)
        hard_g.requires_grad_(True)
        out = RankingLoss(negatives=strategy)(img, txt, hard=hard_g)
        out.backward()
        assert hard_g.grad is not None and hard_g.grad[0].abs().sum() > 0, strategy
    with pytest.raises(ValueError, match="hard must be"):
        loss.components(img, txt, hard=torch.zeros(3, 3))


def test_training_with_word_swaps_adds_them_to_each_images_negatives(synth_world, tmp_path):
    """Through the real loop (dataset, collate, one forward for captions and swaps): the first step's
    image-annotation loss grows with a swapped caption per image (InfoNCE: one more term in every
    softmax), the image-search loss stays as it was (same model, same batch)."""
    from imtext.train.loop import train_local
    from tests.conftest import tiny_config

    def first_step(**swaps):
        overrides = {"train.epochs": 1, "loss.negatives": "infonce", **swaps}
        cfg = tiny_config(synth_world, tmp_path / f"model{len(swaps)}", **overrides)
        return train_local(cfg, max_steps=1)[1][0]

    plain = first_step()
    swapped = first_step(**{"loss.swap_negatives": 2, "loss.swap_words": "synthetic"})
    assert swapped["loss_i2t"] > plain["loss_i2t"] + 1e-3
    assert swapped["loss_t2i"] == pytest.approx(plain["loss_t2i"], rel=1e-5)
