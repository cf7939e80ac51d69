"""Retrieval metrics in both directions (the VSE++ protocol), with any number of captions per image.

- i2t (image annotation): an image's rank is the best rank among its captions, over all captions.
- t2i (image search): a caption's rank is the rank of its image among all images.

Ranks are 1-based. Ties are counted against the query ("pessimistic"): rank = 1 + the number of
wrong items scoring >= the right one. Counting only strictly greater scores would rate a collapsed
model (every embedding equal, a known failure of hardest-negative training) as perfect, and validation
picks checkpoints by rsum. With real-valued embeddings exact ties are rare, so this only matters for
degenerate models. R@K are percentages; medr is floor(median rank) (VSE++'s convention); rsum is the
sum of the six R@K (at most 600).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from imtext.errors import ImtextError

KEYS = (
    "i2t_r1",
    "i2t_r5",
    "i2t_r10",
    "i2t_medr",
    "i2t_meanr",
    "t2i_r1",
    "t2i_r5",
    "t2i_r10",
    "t2i_medr",
    "t2i_meanr",
    "i2t_rsum",
    "t2i_rsum",
    "rsum",
)
_CHUNK_ELEMENTS = 1 << 24  # similarity entries per chunk (64 MB of float32)


def _as_numpy(x: Any, dtype=np.float32) -> np.ndarray:
    if hasattr(x, "detach"):  # torch tensor, on any device and in any float type
        x = x.detach().cpu()
        x = x.float() if dtype == np.float32 else x
        x = x.numpy()
    return np.ascontiguousarray(np.asarray(x, dtype=dtype))


def _summary(ranks: np.ndarray, prefix: str) -> dict[str, float]:
    out = {f"{prefix}_r{k}": float(100.0 * np.mean(ranks <= k)) for k in (1, 5, 10)}
    out[f"{prefix}_medr"] = float(np.floor(np.median(ranks)))
    out[f"{prefix}_meanr"] = float(np.mean(ranks))
    out[f"{prefix}_rsum"] = out[f"{prefix}_r1"] + out[f"{prefix}_r5"] + out[f"{prefix}_r10"]
    return out


def ranks(img_emb: Any, txt_emb: Any, txt_to_img: Any) -> tuple[np.ndarray, np.ndarray]:
    """1-based (i2t ranks per image (N_img,), t2i ranks per caption (N_txt,)), computed in chunks."""
    img = _as_numpy(img_emb)
    txt = _as_numpy(txt_emb)
    owner = _as_numpy(txt_to_img, dtype=np.int64)
    if img.ndim != 2 or txt.ndim != 2:
        raise ImtextError(f"embeddings must be 2-D, got img {img.shape} and txt {txt.shape}")
    if img.shape[1] != txt.shape[1]:
        raise ImtextError(
            f"image and caption embeddings differ in dimension: {img.shape[1]} vs {txt.shape[1]}"
        )
    if owner.shape != (txt.shape[0],):
        raise ImtextError(
            f"txt_to_img must have one entry per caption ({txt.shape[0]}), got shape {owner.shape}"
        )
    if not (np.isfinite(img).all() and np.isfinite(txt).all()):
        raise ImtextError("embeddings contain NaN or inf; the model diverged (lower the learning rate)")
    n_img, n_txt = img.shape[0], txt.shape[0]
    if n_img == 0 or n_txt == 0:
        raise ImtextError("retrieval needs at least one image and one caption")
    if owner.min() < 0 or owner.max() >= n_img:
        raise ImtextError(f"txt_to_img has indices outside [0, {n_img})")
    counts = np.bincount(owner, minlength=n_img)
    if (counts == 0).any():
        missing = np.flatnonzero(counts == 0)
        raise ImtextError(
            f"{missing.size} image(s) have no caption (first: index {missing[0]}); "
            "evaluate only images that have captions"
        )

    i2t = np.empty(n_img, dtype=np.int64)
    step = max(1, _CHUNK_ELEMENTS // n_txt)
    for start in range(0, n_img, step):
        stop = min(start + step, n_img)
        sim = img[start:stop] @ txt.T  # (c, N_txt)
        mine = owner[None, :] == np.arange(start, stop)[:, None]
        best = np.where(mine, sim, -np.inf).max(1, keepdims=True)
        i2t[start:stop] = 1 + ((sim >= best) & ~mine).sum(1)

    t2i = np.empty(n_txt, dtype=np.int64)
    step = max(1, _CHUNK_ELEMENTS // n_img)
    for start in range(0, n_txt, step):
        stop = min(start + step, n_txt)
        sim = txt[start:stop] @ img.T  # (c, N_img)
        right = sim[np.arange(stop - start), owner[start:stop]][:, None]
        t2i[start:stop] = (sim >= right).sum(1)  # includes the right image itself, so this is 1 + wrong ones
    return i2t, t2i


def retrieval(img_emb: Any, txt_emb: Any, txt_to_img: Any) -> dict[str, float]:
    """R@1/5/10, medr, meanr in both directions and rsum for (N_img, D) images and (N_txt, D) captions.

    Embeddings (numpy or torch) are expected L2-normalised (scores are inner products); txt_to_img[j]
    is the row in img_emb of caption j's image. Every image needs at least one caption.
    """
    i2t, t2i = ranks(img_emb, txt_emb, txt_to_img)
    out = {**_summary(i2t, "i2t"), **_summary(t2i, "t2i")}
    out["rsum"] = out["i2t_rsum"] + out["t2i_rsum"]
    return {key: out[key] for key in KEYS}


def _subset(img: np.ndarray, txt: np.ndarray, owner: np.ndarray, lo: int, hi: int):
    keep = (owner >= lo) & (owner < hi)
    return img[lo:hi], txt[keep], owner[keep] - lo


def coco_1k(
    img_emb: Any, txt_emb: Any, txt_to_img: Any, folds: int = 5, fold_size: int = 1000
) -> dict[str, float]:
    """COCO 1K: the mean of `retrieval` over `folds` folds of `fold_size` consecutive images (+ their captions)."""
    img = _as_numpy(img_emb)
    txt = _as_numpy(txt_emb)
    owner = _as_numpy(txt_to_img, dtype=np.int64)
    need = folds * fold_size
    if folds < 1 or img.shape[0] < need:
        raise ImtextError(f"COCO 1K needs {folds} x {fold_size} = {need} images, got {img.shape[0]}")
    results = [retrieval(*_subset(img, txt, owner, f * fold_size, (f + 1) * fold_size)) for f in range(folds)]
    return {key: float(np.mean([r[key] for r in results])) for key in KEYS}


def coco_5k(img_emb: Any, txt_emb: Any, txt_to_img: Any, size: int = 5000) -> dict[str, float]:
    """COCO 5K: `retrieval` over the first `size` images and their captions."""
    img = _as_numpy(img_emb)
    if img.shape[0] < size:
        raise ImtextError(f"COCO 5K needs {size} images, got {img.shape[0]}")
    txt = _as_numpy(txt_emb)
    owner = _as_numpy(txt_to_img, dtype=np.int64)
    return retrieval(*_subset(img, txt, owner, 0, size))


# `imtext eval --protocol NAME` (the names are imtext.config.EvalProtocol)
PROTOCOLS = {"all": retrieval, "coco1k": coco_1k, "coco5k": coco_5k}


def bootstrap_interval(
    img_emb: Any,
    txt_emb: Any,
    txt_to_img: Any,
    key: str = "rsum",
    samples: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """A percentile bootstrap interval for one metric, resampling the split's images with replacement.

    Ranks are computed once on the whole split; each resample averages the recall indicators of the
    drawn images (i2t) and of their captions (t2i), so it measures how much the number depends on which
    photos happened to be in the split, not how the gallery's size changes it.
    """
    if not 0 < level < 1 or samples < 1:
        raise ImtextError("bootstrap needs 0 < level < 1 and at least one sample")
    i2t, t2i = ranks(img_emb, txt_emb, txt_to_img)
    owner = _as_numpy(txt_to_img, dtype=np.int64)
    n_img = i2t.shape[0]
    by_image = [np.flatnonzero(owner == i) for i in range(n_img)]
    hits_i2t = {k: (i2t <= k).astype(np.float64) for k in (1, 5, 10)}
    hits_t2i = {k: (t2i <= k).astype(np.float64) for k in (1, 5, 10)}
    # Per image: its i2t hit, and the sum and count of its captions' t2i hits, so a resample is two bincounts.
    t2i_sum = {k: np.array([hits_t2i[k][c].sum() for c in by_image]) for k in (1, 5, 10)}
    t2i_n = np.array([len(c) for c in by_image], dtype=np.float64)
    rng = np.random.default_rng(seed)
    values = np.empty(samples)
    for s in range(samples):
        draw = np.bincount(rng.integers(0, n_img, n_img), minlength=n_img).astype(np.float64)
        out = {}
        for k in (1, 5, 10):
            out[f"i2t_r{k}"] = 100.0 * (draw @ hits_i2t[k]) / n_img
            out[f"t2i_r{k}"] = 100.0 * (draw @ t2i_sum[k]) / (draw @ t2i_n)
        out["i2t_rsum"] = out["i2t_r1"] + out["i2t_r5"] + out["i2t_r10"]
        out["t2i_rsum"] = out["t2i_r1"] + out["t2i_r5"] + out["t2i_r10"]
        out["rsum"] = out["i2t_rsum"] + out["t2i_rsum"]
        if key not in out:
            raise ImtextError(f"no bootstrap for {key!r}; choose one of {', '.join(sorted(out))}")
        values[s] = out[key]
    tail = (1.0 - level) / 2.0
    return float(np.quantile(values, tail)), float(np.quantile(values, 1.0 - tail))
