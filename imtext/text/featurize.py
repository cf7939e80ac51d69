"""Captions -> lists of feature ids for the paper's text models (bag of words, n-grams, GRU).

Word ids come from the vocabulary; n-grams are hashed into `hash_buckets` extra ids after the words
(fastText's trick) with crc32, which, unlike Python's `hash()`, is the same in every process, so a
model trained on one machine featurizes identically when served on another.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from typing import get_args

import torch

from imtext.config import TextModel, Weighting
from imtext.errors import ImtextError
from imtext.text.tokenize import tokenize
from imtext.text.vocab import PAD_ID, UNK, UNK_ID, Vocab

TEXT_KINDS = get_args(TextModel)
WEIGHTINGS = get_args(Weighting)
_SEP = "\x1f"  # cannot occur in a token


def ngram_bucket(tag: str, tokens: Sequence[str], hash_buckets: int) -> int:
    """Stable bucket of one n-gram: crc32 of `tag` and the tokens joined by an unprintable separator.

    `tag` keeps n-gram kinds apart ("2" bigram, "3" trigram, "s2" 1-skip bigram), so the bigram
    "a circle" and the skip-gram a _ circle are different features.
    """
    key = _SEP.join((tag, *tokens))
    return zlib.crc32(key.encode("utf-8")) % hash_buckets


class TextFeaturizer:
    """Turns a caption into feature ids for one text model.

    - `bow`: the caption's word ids as a bag (sorted; repeats kept so they count).
    - `gru`: word ids in caption order.
    - `bigram`: words + hashed bigrams; `trigram`: + hashed trigrams;
      `skipgram`: trigram features + hashed 1-skip bigrams (w_i, w_{i+2}) (the paper's "trigrams + skip-grams").

    Captions are cut to `max_len` tokens for every kind (keeps batches bounded). Words outside the
    vocabulary become `<unk>` before n-grams are formed, so rare words share n-gram features the way
    they share the `<unk>` embedding. An empty caption gives [1] (`<unk>`), never an empty list.
    """

    def __init__(self, kind: str, vocab: Vocab, hash_buckets: int = 1 << 18, max_len: int = 40):
        if kind not in TEXT_KINDS:
            raise ImtextError(f"unknown text model {kind!r}; choose one of {', '.join(TEXT_KINDS)}")
        if max_len < 1:
            raise ImtextError("text.max_len must be >= 1")
        if kind in ("bigram", "trigram", "skipgram") and hash_buckets < 1:
            raise ImtextError("text.hash_buckets must be >= 1 for n-gram models")
        self.kind = kind
        self.vocab = vocab
        self.hash_buckets = int(hash_buckets)
        self.max_len = int(max_len)

    @classmethod
    def from_config(cls, cfg, vocab: Vocab) -> TextFeaturizer:
        """From an `imtext.config.TextConfig`."""
        return cls(cfg.model, vocab, hash_buckets=cfg.hash_buckets, max_len=cfg.max_len)

    @property
    def hashed(self) -> bool:
        return self.kind in ("bigram", "trigram", "skipgram")

    @property
    def num_features(self) -> int:
        """Size of the id space: the vocabulary, plus the hash buckets for n-gram models."""
        return len(self.vocab) + (self.hash_buckets if self.hashed else 0)

    def __call__(self, caption: str) -> list[int]:
        tokens = tokenize(caption)[: self.max_len]
        if not tokens:
            return [UNK_ID]
        ids = self.vocab.ids(tokens)
        if self.kind == "gru":
            return ids
        if self.kind == "bow":
            return sorted(ids)
        words = [self.vocab.words[i] if i != UNK_ID else UNK for i in ids]
        base, buckets = len(self.vocab), self.hash_buckets
        feats = list(ids)
        feats += [base + ngram_bucket("2", words[i : i + 2], buckets) for i in range(len(words) - 1)]
        if self.kind in ("trigram", "skipgram"):
            feats += [base + ngram_bucket("3", words[i : i + 3], buckets) for i in range(len(words) - 2)]
        if self.kind == "skipgram":
            feats += [
                base + ngram_bucket("s2", (words[i], words[i + 2]), buckets) for i in range(len(words) - 2)
            ]
        return sorted(feats)

    def batch(self, captions: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Featurize and collate in one step: (ids (B, Lmax), lengths (B,))."""
        return collate_texts([self(c) for c in captions])

    def feature_weights(self, weighting: str) -> torch.Tensor:
        """Per-feature weights (num_features,) for EmbeddingBag's per_sample_weights; pad is always 0.

        `counts`: 1 per occurrence (repeats add up to the count). `tfidf`: the word's idf; hashed
        n-grams have no document frequency of their own, so they all get the vocabulary's mean word idf
        (n-grams are about as rare as a typical vocabulary word), a constant rebuilt from vocab.json.
        """
        if weighting not in WEIGHTINGS:
            raise ImtextError(f"unknown text weighting {weighting!r}; choose one of {', '.join(WEIGHTINGS)}")
        w = torch.ones(self.num_features, dtype=torch.float32)
        if weighting == "tfidf":
            idf = torch.from_numpy(self.vocab.idf.copy())
            w[: len(self.vocab)] = idf
            if self.hashed:
                words = idf[2:]
                w[len(self.vocab) :] = float(words.mean()) if len(words) else 1.0
        w[PAD_ID] = 0.0
        return w

    def __repr__(self) -> str:
        return f"TextFeaturizer({self.kind!r}, {len(self.vocab)} words, {self.num_features} features)"


def collate_texts(features: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad feature-id lists with 0 into (B, Lmax) int64 ids, plus (B,) int64 lengths."""
    if len(features) == 0:
        raise ValueError("collate_texts needs at least one caption")
    lengths = torch.tensor([len(f) for f in features], dtype=torch.long)
    if int(lengths.min()) < 1:
        raise ValueError("every caption needs at least one feature id (the featurizer never returns [])")
    ids = torch.zeros(len(features), int(lengths.max()), dtype=torch.long)
    for row, f in enumerate(features):
        ids[row, : len(f)] = torch.as_tensor(f, dtype=torch.long)
    return ids, lengths
