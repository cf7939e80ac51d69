"""Text encoders: a weighted bag (words / n-grams) times a matrix, or a GRU over word embeddings; either
with a frozen sentence encoder's vector beside it (WithSentence).

Both return un-normalised (B, out_dim) features; the two-branch model adds the MLP head and the L2
normalisation. Every tensor besides the learned weights is derived from vocab.json + config, so a model
is rebuilt from config.yaml + vocab.json + weights.safetensors.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

from imtext.errors import ImtextError
from imtext.text.featurize import TextFeaturizer


class BagEncoder(nn.Module):
    """The paper's BoW / n-gram model: an L2-normalised, weighted bag vector times a (num_features, dim) matrix.

    Computed with `nn.EmbeddingBag(mode="sum")` and per-feature weights (counts or tf-idf), then divided
    by the L2 norm of the sparse bag vector (repeated features merged first, so it is exactly
    ||tf * idf||). That keeps the output scale independent of caption length and makes each output
    dimension roughly unit-variance at init, which suits the MLP that follows.

    Memory: the matrix is num_features x dim float32; n-gram models add `hash_buckets` rows
    (2**18 x 300 is 315 MB, x3 with Adam's state), so prefer 2**16 buckets on small machines.
    Dense gradients (sparse=False) so any optimizer and DDP work unchanged.
    """

    def __init__(self, num_features: int, dim: int, feature_weights: torch.Tensor):
        super().__init__()
        if feature_weights.shape != (num_features,):
            raise ValueError(
                f"feature_weights must have shape ({num_features},), got {tuple(feature_weights.shape)}"
            )
        self.bag = nn.EmbeddingBag(num_features, dim, mode="sum", padding_idx=0)
        # Derived from vocab + config, so not stored in the weights file (persistent=False).
        self.register_buffer("feature_weights", feature_weights.float().clone(), persistent=False)
        self.out_dim = dim

    def forward(self, ids: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        w = self.feature_weights[ids]  # (B, L); padding has weight 0
        x = self.bag(ids, per_sample_weights=w)
        # ||bag||^2 = sum over distinct features of (summed weight)^2 = w^T [ids_l == ids_m] w.
        same = (ids.unsqueeze(2) == ids.unsqueeze(1)).to(w.dtype)
        norm2 = torch.einsum("bl,blm,bm->b", w, same, w)
        return x / norm2.clamp_min(1e-12).sqrt().unsqueeze(1).to(x.dtype)


class GRUEncoder(nn.Module):
    """Word embeddings + a (bi)GRU; the caption vector is the final hidden state of each direction, concatenated.

    Packed sequences (enforce_sorted=False) make padding invisible: a caption encodes the same alone
    or next to a longer one. Final states rather than mean-pooling: VSE++'s choice, and the backward
    direction's final state already sees the whole caption.
    """

    def __init__(self, vocab_size: int, word_dim: int, hidden_dim: int, bidirectional: bool = True):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, word_dim, padding_idx=0)
        self.gru = nn.GRU(word_dim, hidden_dim, batch_first=True, bidirectional=bidirectional)
        self.out_dim = hidden_dim * (2 if bidirectional else 1)
        with torch.no_grad():  # VSE++ initialisation: small uniform word vectors, zero padding row
            self.embed.weight.uniform_(-0.1, 0.1)
            self.embed.weight[0].zero_()

    def forward(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        x = self.embed(ids)
        packed = pack_padded_sequence(
            x, lengths.detach().cpu().clamp_min(1), batch_first=True, enforce_sorted=False
        )
        _, h = self.gru(packed)  # (directions, B, hidden), already back in the batch's order
        return h.transpose(0, 1).reshape(ids.shape[0], self.out_dim)


class WithSentence(nn.Module):
    """A text encoder's features with a frozen sentence encoder's vector beside them (imtext.text.sentence).

    The unit-norm sentence vector is scaled by `weight * sqrt(dim)`: at weight 1 each of its dimensions has
    about the variance of the bag's (unit variance at init), so `weight` says how loud it is next to them.
    """

    def __init__(self, base: nn.Module, sentence_dim: int, weight: float):
        super().__init__()
        self.base = base
        self.scale = float(weight) * math.sqrt(sentence_dim)
        self.out_dim = base.out_dim + sentence_dim

    def forward(self, ids: torch.Tensor, lengths: torch.Tensor, sentences: torch.Tensor) -> torch.Tensor:
        words = self.base(ids, lengths)
        return torch.cat([words, sentences.to(words.dtype) * self.scale], dim=1)


def build_text_encoder(cfg, featurizer: TextFeaturizer, sentence_dim: int = 0) -> nn.Module:
    """The text branch (without MLP) for an `imtext.config.TextConfig` and the matching featurizer."""
    if cfg.model != featurizer.kind:
        raise ImtextError(
            f"text.model={cfg.model!r} but the featurizer is {featurizer.kind!r}; build both from one config"
        )
    if featurizer.hashed and cfg.hash_buckets != featurizer.hash_buckets:
        raise ImtextError(
            f"text.hash_buckets={cfg.hash_buckets} but the featurizer uses {featurizer.hash_buckets}"
        )
    if cfg.model == "gru":
        base = GRUEncoder(len(featurizer.vocab), cfg.word_dim, cfg.hidden_dim, cfg.bidirectional)
    else:
        base = BagEncoder(featurizer.num_features, cfg.word_dim, featurizer.feature_weights(cfg.weighting))
    return WithSentence(base, sentence_dim, cfg.sentence_weight) if sentence_dim else base
