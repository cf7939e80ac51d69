"""The ridge baseline and the bootstrap interval: exact where they can be, and able to fail."""

from __future__ import annotations

import numpy as np
import pytest

from imtext.baseline import RidgeBaseline, tfidf_matrix
from imtext.errors import ImtextError
from imtext.metrics import bootstrap_interval, retrieval
from imtext.text import Vocab
from imtext.train.batches import FeatureLookup, SplitView

WORDS = [f"w{i}" for i in range(40)]


def _world(n_images: int, seed: int, mixing: np.ndarray, offset: int = 0) -> tuple[SplitView, dict]:
    """Each image has 3 'content' words; its features are a fixed linear image of them plus noise, and
    each of its 2 captions names 2 of the 3 words."""
    rng = np.random.default_rng(seed)
    ids, captions, owner, feats = [], [], [], {}
    for i in range(n_images):
        words = rng.choice(len(WORDS), 3, replace=False)
        bag = np.zeros(len(WORDS))
        bag[words] = 1.0
        iid = f"img{offset + i}"
        ids.append(iid)
        feats[iid] = bag @ mixing + 0.05 * rng.standard_normal(mixing.shape[1]) + 3.0
        for _ in range(2):
            pick = rng.choice(words, 2, replace=False)
            captions.append(f"a photo of {WORDS[pick[0]]} and {WORDS[pick[1]]}")
            owner.append(i)
    return SplitView(ids, ids, captions, np.array(owner)), feats


@pytest.fixture(scope="module")
def splits():
    mixing = np.random.default_rng(0).standard_normal((len(WORDS), 16))
    train, f1 = _world(300, 1, mixing)
    val, f2 = _world(40, 2, mixing, offset=1000)
    test, f3 = _world(40, 3, mixing, offset=2000)
    feats = {**f1, **f2, **f3}
    lookup = FeatureLookup(list(feats), np.stack(list(feats.values())))
    return train, val, test, lookup


def test_tfidf_rows_are_unit_and_weighted_by_idf():
    vocab = Vocab.build(["a dog", "a cat", "a dog runs"])
    x = tfidf_matrix(vocab, ["a dog", "a zebra"])
    assert np.allclose(np.linalg.norm(x, axis=1), 1.0)
    dog, a = vocab.id("dog"), vocab.id("a")
    assert x[0, dog] > x[0, a] > 0  # "a" is in every caption: the smallest idf
    assert x[1, vocab.id("zebra")] == x[1, 1]  # an unknown word falls into <unk>


def test_ridge_recovers_a_linear_world_and_chance_does_not(splits):
    train, val, test, lookup = splits
    ridge, scores = RidgeBaseline.fit_selected(train, val, lookup)
    assert set(scores) and ridge.lam in scores and scores[ridge.lam] == max(scores.values())
    metrics = ridge.evaluate(test, lookup)
    # 40 test images, 80 captions: chance rsum is about 2 x (2.5 + 12.5 + 25) = 80 (R@K for K of 40).
    assert metrics["rsum"] > 250, metrics
    img, txt = ridge.embed_split(test, lookup)
    assert np.allclose(np.linalg.norm(img, axis=1), 1.0) and np.allclose(np.linalg.norm(txt, axis=1), 1.0)
    shuffled = ridge.embed_texts(list(np.random.default_rng(0).permutation(test.captions)))
    assert retrieval(img, shuffled, test.caption_image)["rsum"] < 160


def test_ridge_dual_and_primal_forms_agree(splits):
    train, _, _, lookup = splits
    small = SplitView(
        train.image_ids[:10], train.image_paths[:10], train.captions[:20], train.caption_image[:20]
    )
    dual = RidgeBaseline.fit(small, lookup, lam=1.0)  # 20 captions < vocabulary: dual form
    x = tfidf_matrix(dual.vocab, small.captions).astype(np.float64)
    images = np.stack([lookup(i).numpy() for i in small.image_ids]).astype(np.float64)
    y = (images - images.mean(0))[small.caption_image]
    primal = np.linalg.solve(x.T @ x + np.eye(x.shape[1]), x.T @ y)
    assert np.allclose(dual.weights, primal, atol=1e-4)
    with pytest.raises(ImtextError):
        RidgeBaseline.fit(small, lookup, lam=0.0)


def test_bootstrap_interval_brackets_the_estimate_and_narrows_with_more_images():
    rng = np.random.default_rng(0)

    def noisy(n: int):
        img = rng.standard_normal((n, 8))
        owner = np.repeat(np.arange(n), 2)
        txt = img[owner] + 1.2 * rng.standard_normal((2 * n, 8))
        norm = lambda a: a / np.linalg.norm(a, axis=1, keepdims=True)  # noqa: E731
        return norm(img), norm(txt), owner

    img, txt, owner = noisy(60)
    point = retrieval(img, txt, owner)["rsum"]
    lo, hi = bootstrap_interval(img, txt, owner, samples=500)
    assert lo < point < hi and hi - lo > 5
    # Ranks fixed, images resampled: the same split with 4x the images gives a narrower interval.
    img4, txt4, owner4 = noisy(240)
    lo4, hi4 = bootstrap_interval(img4, txt4, owner4, samples=500)
    assert hi4 - lo4 < hi - lo
    # A perfect model has no uncertainty left to resample.
    eye = np.eye(5)
    assert bootstrap_interval(eye, eye, np.arange(5), samples=50) == (600.0, 600.0)
    with pytest.raises(ImtextError):
        bootstrap_interval(img, txt, owner, key="nope", samples=2)
