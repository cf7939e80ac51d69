"""The linear baseline every quality number stands beside: ridge regression from a caption's TF-IDF word
vector to its image's (centred) backbone features, scored by cosine in the image-feature space.

One line of linear algebra, W = (X^T X + lambda I)^-1 X^T Y, fitted on the training split only (its
vocabulary too); lambda is chosen on the validation split. On a few thousand real captions it is a strong
opponent (docs/BENCHMARKS.md, "real photos"): a learned model that does not beat it is not worth serving.

Given a sentence encoder (imtext.text.sentence), X is [tf-idf ; mix * sentence vector] instead: the same
outside knowledge of words the default model has, in the same one line, so that the model's gain over the
plain baseline can be split into what the sentence encoder brings and what learning adds.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from imtext.errors import ImtextError
from imtext.metrics import retrieval
from imtext.text import Vocab
from imtext.text.sentence import SentenceEncoder
from imtext.text.tokenize import tokenize
from imtext.train.batches import FeatureLookup, SplitView

LAMBDAS = (0.1, 0.3, 1.0, 3.0, 10.0)  # the validation split picks one
MIXES = (1.0, 2.0, 4.0)  # with a sentence encoder: its vector's weight beside the tf-idf row (also picked)


def tfidf_matrix(vocab: Vocab, captions: Sequence[str]) -> np.ndarray:
    """(N, |vocab|) L2-normalised tf-idf rows with the vocabulary's own idf (unknown words -> <unk>)."""
    x = np.zeros((len(captions), len(vocab)), np.float32)
    for row, caption in enumerate(captions):
        for i in vocab.ids(tokenize(caption)):
            x[row, i] += 1.0
    x *= vocab.idf[None, :]
    x /= np.linalg.norm(x, axis=1, keepdims=True).clip(1e-12)
    return x


def _normalise(a: np.ndarray) -> np.ndarray:
    return a / np.linalg.norm(a, axis=1, keepdims=True).clip(1e-12)


@dataclass
class RidgeBaseline:
    """A fitted map: `embed_texts` and `embed_images` give L2-normalised vectors in one space."""

    vocab: Vocab
    weights: np.ndarray  # (|vocab| [+ sentence dim], feature_dim)
    mean: np.ndarray  # the training images' mean feature, subtracted from every image
    lam: float
    sentence: SentenceEncoder | None = None
    mix: float = 0.0

    @classmethod
    def fit(
        cls,
        train: SplitView,
        features: FeatureLookup,
        lam: float = 1.0,
        sentence: SentenceEncoder | None = None,
        mix: float = 1.0,
    ) -> RidgeBaseline:
        if lam <= 0:
            raise ImtextError(f"ridge lambda must be > 0, got {lam}")
        vocab = Vocab.build(train.captions)
        images = image_matrix(train, features)
        mean = images.mean(0)
        fitted = cls(
            vocab, np.zeros(0), mean.astype(np.float32), float(lam), sentence, mix if sentence else 0.0
        )
        x = fitted.text_matrix(train.captions).astype(np.float64)
        y = (images - mean)[train.caption_image].astype(np.float64)
        # The dual form is cheaper when there are fewer captions than words.
        if x.shape[0] < x.shape[1]:
            w = x.T @ np.linalg.solve(x @ x.T + lam * np.eye(x.shape[0]), y)
        else:
            w = np.linalg.solve(x.T @ x + lam * np.eye(x.shape[1]), x.T @ y)
        fitted.weights = w.astype(np.float32)
        return fitted

    @classmethod
    def fit_selected(
        cls,
        train: SplitView,
        val: SplitView,
        features: FeatureLookup,
        lambdas: Sequence[float] = LAMBDAS,
        sentence: SentenceEncoder | None = None,
        mixes: Sequence[float] = MIXES,
    ) -> tuple[RidgeBaseline, dict[float, float]]:
        """Fit once per lambda (and mix, with a sentence encoder) and keep the best by validation rsum (never
        the test split). The scores are keyed by lambda, each the best over the mixes."""
        scores: dict[float, float] = {}
        best: tuple[float, RidgeBaseline] | None = None
        for lam in lambdas:
            for mix in mixes if sentence else (0.0,):
                fitted = cls.fit(train, features, lam, sentence, mix)
                score = fitted.evaluate(val, features)["rsum"]
                scores[lam] = max(scores.get(lam, score), score)
                if best is None or score > best[0]:
                    best = (score, fitted)
        return best[1], scores

    @property
    def name(self) -> str:
        if self.sentence is None:
            return f"ridge TF-IDF -> features (lambda {self.lam:g})"
        return f"ridge TF-IDF + {self.sentence.name} -> features (lambda {self.lam:g}, mix {self.mix:g})"

    def text_matrix(self, captions: Sequence[str]) -> np.ndarray:
        """The regression's inputs: tf-idf rows, with the weighted sentence vectors beside them if any."""
        x = tfidf_matrix(self.vocab, captions)
        if self.sentence is None:
            return x
        return np.hstack([x, self.mix * self.sentence.encode(captions).numpy()])

    def embed_texts(self, captions: Sequence[str]) -> np.ndarray:
        return _normalise(self.text_matrix(captions) @ self.weights)

    def embed_images(self, features: np.ndarray) -> np.ndarray:
        return _normalise(np.asarray(features, np.float32) - self.mean)

    def embed_split(self, view: SplitView, features: FeatureLookup) -> tuple[np.ndarray, np.ndarray]:
        return self.embed_images(image_matrix(view, features)), self.embed_texts(view.captions)

    def evaluate(self, view: SplitView, features: FeatureLookup) -> dict[str, float]:
        return retrieval(*self.embed_split(view, features), view.caption_image)


def image_matrix(view: SplitView, features: FeatureLookup) -> np.ndarray:
    """The split's precomputed features in view.image_ids order."""
    return np.stack([features(i).numpy() for i in view.image_ids]).astype(np.float32)


QUALITY_COLUMNS = ["recipe", "i2t R@1", "R@5", "R@10", "t2i R@1", "R@5", "R@10", "rsum", "95% interval"]


def quality_row(name: str, metrics: dict[str, float], interval: tuple[float, float]) -> list:
    """One row of a quality table: R@K per direction, rsum and its bootstrap interval."""
    recalls = [round(metrics[f"{d}_r{k}"], 1) for d in ("i2t", "t2i") for k in (1, 5, 10)]
    return [name, *recalls, round(metrics["rsum"], 1), f"{interval[0]:.0f}-{interval[1]:.0f}"]
