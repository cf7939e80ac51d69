"""Merge per-shard top-k lists into one global top-k, highest score first.

Kept apart from the index itself because a Serve app merges results that come back from several shard
replicas, each holding one shard, without ever holding a FAISS index of its own.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import ArrayLike

from imtext.errors import ImtextError

# Above this many candidates per query a partial sort first is cheaper than a full stable sort.
_FULL_SORT_MAX = 4096


def empty_result(nq: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The padding every short result is filled with: score -inf, id -1."""
    return np.full((nq, k), -np.inf, dtype=np.float32), np.full((nq, k), -1, dtype=np.int64)


def merge_topk(
    score_lists: Sequence[ArrayLike], id_lists: Sequence[ArrayLike], k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Merge S per-shard results ((Q, k_s) scores and ids) into the global (Q, k) top-k by score.

    Larger scores win (inner product / cosine). Slots with id -1 are empty whatever their score says
    (FAISS fills them with -3.4e38); slots left over when all shards together hold fewer than k
    results come back as id -1 with score -inf. Equal scores keep shard order, then rank order.
    """
    if k < 1:
        raise ImtextError(f"k must be at least 1, got {k}")
    if len(score_lists) != len(id_lists) or not score_lists:
        raise ImtextError(
            f"merge_topk needs one id array per score array (got {len(score_lists)} score and "
            f"{len(id_lists)} id arrays, at least one of each)"
        )
    scores_in = [np.asarray(s) for s in score_lists]  # lists from JSON (a Serve replica's reply) too
    ids_in = [np.asarray(i) for i in id_lists]
    nq = None
    for s, i in zip(scores_in, ids_in):
        if s.ndim != 2 or s.shape != i.shape:
            raise ImtextError(
                f"each shard result must be two (Q, k) arrays of one shape, got {s.shape} and {i.shape}"
            )
        if nq is not None and s.shape[0] != nq:
            raise ImtextError(f"shard results answer different numbers of queries ({nq} and {s.shape[0]})")
        nq = s.shape[0]
    assert nq is not None
    scores = np.concatenate(scores_in, axis=1, dtype=np.float32)
    ids = np.concatenate(ids_in, axis=1, dtype=np.int64)
    empty = ids < 0
    if empty.any():
        scores = np.where(empty, np.float32(-np.inf), scores)
    rows = np.arange(nq)[:, None]
    if scores.shape[1] > _FULL_SORT_MAX and scores.shape[1] > k:
        # column order kept (sorted) so the stable sort below still breaks ties by shard, then rank
        keep = np.sort(np.argpartition(-scores, k - 1, axis=1)[:, :k], axis=1)
        scores, ids = scores[rows, keep], ids[rows, keep]
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    top_scores, top_ids = scores[rows, order], ids[rows, order]
    if top_scores.shape[1] < k:  # fewer candidates than k in all: pad
        pad_scores, pad_ids = empty_result(nq, k - top_scores.shape[1])
        top_scores = np.concatenate([top_scores, pad_scores], axis=1)
        top_ids = np.concatenate([top_ids, pad_ids], axis=1)
    top_ids[top_scores == -np.inf] = -1
    return top_scores, top_ids
