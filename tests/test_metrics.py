"""Retrieval metrics on hand-built rankings with uneven caption counts, COCO 1K/5K, and the table."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

import imtext.metrics as metrics_mod
from imtext.errors import ImtextError
from imtext.metrics import KEYS, coco_1k, coco_5k, retrieval
from imtext.report import epoch_printer, metrics_rows

# img = identity, so caption j's score for image i is TXT[j][i].
IMG = np.eye(3, dtype=np.float32)
TXT = np.array(
    [
        [0.05, 0.1, 0.2],  # image 0 (its only caption); t2i rank 3
        [0.5, 0.4, 0.3],  # image 1; rank 2
        [0.3, 0.1, 0.8],  # image 1; rank 3
        [0.6, 0.7, 0.5],  # image 2; rank 3
        [0.1, 0.0, 0.3],  # image 2; rank 1
        [0.2, 0.6, 0.4],  # image 2; rank 2
    ],
    dtype=np.float32,
)
OWNER = np.array([0, 1, 1, 2, 2, 2])
# i2t, by columns: image 0's caption (0.05) is below all 5 others -> rank 6; image 1's best own caption
# (0.4) is beaten by 0.7 and 0.6 -> rank 3; image 2's best (0.5) is beaten by 0.8 -> rank 2.
EXPECTED = {
    "i2t_r1": 0.0,
    "i2t_r5": 200 / 3,
    "i2t_r10": 100.0,
    "i2t_medr": 3.0,
    "i2t_meanr": 11 / 3,
    "t2i_r1": 100 / 6,
    "t2i_r5": 100.0,
    "t2i_r10": 100.0,
    "t2i_medr": 2.0,  # median of [1, 2, 2, 3, 3, 3] is 2.5, floored as in VSE++
    "t2i_meanr": 14 / 6,
    "i2t_rsum": 200 / 3 + 100,
    "t2i_rsum": 100 / 6 + 200,
    "rsum": 200 / 3 + 100 / 6 + 300,
}


def test_hand_computed_ranking_with_uneven_caption_counts():
    out = retrieval(IMG, TXT, OWNER)
    assert tuple(out) == KEYS
    assert out == pytest.approx(EXPECTED)
    assert all(isinstance(v, float) for v in out.values())


def test_torch_inputs_and_caption_order_do_not_matter():
    perm = np.array([4, 0, 5, 2, 1, 3])
    out = retrieval(torch.from_numpy(IMG), torch.from_numpy(TXT[perm]), torch.from_numpy(OWNER[perm]))
    assert out == pytest.approx(EXPECTED)


def test_perfect_embeddings_score_600():
    img = np.eye(6, dtype=np.float32)
    owner = np.repeat(np.arange(6), [1, 2, 3, 5, 7, 1])
    out = retrieval(img, img[owner], owner)
    assert out["rsum"] == 600.0
    assert out["i2t_medr"] == out["t2i_medr"] == 1.0 and out["i2t_meanr"] == out["t2i_meanr"] == 1.0


def test_ties_count_against_the_query():
    # A collapsed model (every embedding equal) must not look perfect.
    same = np.ones((3, 4), dtype=np.float32) / 2
    out = retrieval(same, np.ones((6, 4), dtype=np.float32) / 2, OWNER)
    assert out["rsum"] < 400 and out["i2t_r1"] == 0.0 and out["t2i_r1"] == 0.0
    assert out["t2i_meanr"] == 3.0  # every caption ties with all 3 images
    assert out["i2t_meanr"] == pytest.approx((6 + 5 + 4) / 3)  # 1 + captions of other images
    # One tie: caption 0 scores images 0 and 2 equally -> rank 2, not 1.
    txt = np.array([[0.5, 0.0, 0.5], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]], dtype=np.float32)
    assert retrieval(np.eye(3, dtype=np.float32), txt, np.arange(3))["t2i_r1"] == pytest.approx(200 / 3)


def test_chunked_equals_unchunked(monkeypatch):
    rng = np.random.default_rng(1)
    img = rng.standard_normal((40, 8)).astype(np.float32)
    owner = np.concatenate([np.arange(40), rng.integers(0, 40, size=70)])
    txt = img[owner] + rng.standard_normal((owner.size, 8)).astype(np.float32)
    whole = retrieval(img, txt, owner)
    monkeypatch.setattr(metrics_mod, "_CHUNK_ELEMENTS", 7 * 110)  # 7 images / 19 captions per chunk
    assert retrieval(img, txt, owner) == whole
    assert 0 < whole["rsum"] < 600


def _random_set(n_img: int, seed: int, dim: int = 16):
    rng = np.random.default_rng(seed)
    img = rng.standard_normal((n_img, dim)).astype(np.float32)
    counts = rng.integers(1, 4, size=n_img)
    owner = np.repeat(np.arange(n_img), counts)
    txt = img[owner] + 2.0 * rng.standard_normal((owner.size, dim)).astype(np.float32)
    normalize = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)  # noqa: E731
    return normalize(img), normalize(txt), owner


def test_coco_1k_is_the_mean_over_folds():
    img, txt, owner = _random_set(2000, seed=2)
    first = retrieval(img[:1000], txt[owner < 1000], owner[owner < 1000])
    second = retrieval(img[1000:], txt[owner >= 1000], owner[owner >= 1000] - 1000)
    out = coco_1k(img, txt, owner, folds=2)
    for key in KEYS:
        assert out[key] == pytest.approx((first[key] + second[key]) / 2), key
    assert first["rsum"] != second["rsum"]  # the folds really differ
    with pytest.raises(ImtextError, match="5 x 1000"):
        coco_1k(img, txt, owner)  # 5 folds need 5000 images


def test_coco_5k_uses_the_first_5000_images():
    img, txt, owner = _random_set(5003, seed=3, dim=8)
    keep = owner < 5000
    assert coco_5k(img, txt, owner) == retrieval(img[:5000], txt[keep], owner[keep])
    with pytest.raises(ImtextError, match="5000 images"):
        coco_5k(img[:4999], txt[owner < 4999], owner[owner < 4999])


def test_errors_are_clear():
    with pytest.raises(ImtextError, match="no caption"):
        retrieval(IMG, TXT[:3], np.array([0, 0, 2]))
    with pytest.raises(ImtextError, match="dimension"):
        retrieval(IMG, TXT[:, :2], OWNER)
    with pytest.raises(ImtextError, match="one entry per caption"):
        retrieval(IMG, TXT, OWNER[:5])
    with pytest.raises(ImtextError, match="outside"):
        retrieval(IMG, TXT, np.array([0, 1, 1, 2, 2, 3]))
    bad = TXT.copy()
    bad[2, 1] = np.nan
    with pytest.raises(ImtextError, match="NaN"):
        retrieval(IMG, bad, OWNER)


def test_metrics_rows_follow_the_papers_layout():
    rows = metrics_rows(EXPECTED)
    assert [r[0] for r in rows] == ["image -> text (annotation)", "text -> image (search)"]
    assert [round(v, 1) for v in rows[0][1:]] == [0.0, 66.7, 100.0, 3.0, 3.7]
    assert [round(v, 1) for v in rows[1][1:]] == [16.7, 100.0, 100.0, 2.0, 2.3]


@pytest.mark.parametrize(
    ("epochs", "lines", "shown"),
    [
        (15, 8, [2, 4, 6, 8, 10, 12, 14, 15]),
        (11, 8, [2, 4, 6, 8, 10, 11]),
        (3, 8, [1, 2, 3]),
        (4, 0, [1, 2, 3, 4]),
    ],
)
def test_epoch_lines_at_most_as_many_as_asked_and_always_the_last(capsys, epochs, lines, shown):
    show = epoch_printer(epochs, lines=lines)
    for e in range(epochs):
        show({"epoch": e, "loss": 1.0, "rsum": 100.0 + e})
    printed = re.findall(r"epoch +(\d+)/(\d+)", capsys.readouterr().out)
    assert printed == [(str(n), str(epochs)) for n in shown]


def test_eval_protocols_are_the_configs_choices():
    import typing

    from imtext.config import EvalProtocol

    assert tuple(metrics_mod.PROTOCOLS) == typing.get_args(EvalProtocol)
