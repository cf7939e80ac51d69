"""FAISS plumbing for one shard: make an index from a factory string that stores global ids, build
per-call search parameters, and read back the ids a shard holds.

Every shard stores the global ids itself (IVF natively, everything else inside IndexIDMap2), so a shard
loaded alone by a Serve replica answers with ids that mean the same thing as the full index's.
"""

from __future__ import annotations

from typing import Any

import faiss
import numpy as np

from imtext.errors import ImtextError

_ID_MAPS = (faiss.IndexIDMap, faiss.IndexIDMap2)


def new_index(dim: int, factory: str) -> faiss.Index:
    """An empty inner-product index for `factory` that accepts add_with_ids."""
    try:
        index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as e:
        raise ImtextError(
            f"FAISS cannot make an index from factory string {factory!r} for dimension {dim}: "
            f"{first_line(e)}; try 'Flat', 'HNSW32', 'IVF1024,Flat' or 'IVF1024,PQ64'"
        ) from None
    if isinstance(index, _ID_MAPS) or faiss.try_extract_index_ivf(index) is not None:
        return index  # stores ids itself (IVF keeps them in its inverted lists)
    return faiss.IndexIDMap2(index)


def first_line(e: BaseException) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    # FAISS messages start with "Error in <signature> at <file>:<line>: <what went wrong>".
    for ln in lines:
        if ln.startswith("Error in") and ": " in ln:
            return ln.rsplit(": ", 1)[-1]
    return lines[0] if lines else type(e).__name__


def _inner(index: faiss.Index) -> faiss.Index:
    """Peel off the id map and pre-transforms to reach the index that holds the data."""
    while True:
        if isinstance(index, (*_ID_MAPS, faiss.IndexPreTransform)):
            index = faiss.downcast_index(index.index)
        else:
            return index


def is_hnsw(index: faiss.Index) -> bool:
    return isinstance(_inner(index), faiss.IndexHNSW)


def ivf_of(index: faiss.Index) -> faiss.IndexIVF | None:
    return faiss.try_extract_index_ivf(index)


def train(index: faiss.Index, sample: np.ndarray, factory: str) -> None:
    """Train on normalised `sample`, turning FAISS's too-few-points failures into advice."""
    ivf = ivf_of(index)
    n = len(sample)
    if ivf is not None and ivf.nlist > n:
        suggest = max(1, int(4 * np.sqrt(n)))
        raise ImtextError(
            f"factory {factory!r} asks for {ivf.nlist} IVF lists but only {n} training vectors are there; "
            f"k-means needs at least one vector per list (FAISS advises 39 per list): use IVF{suggest} "
            f"(about 4*sqrt(N)) or fewer lists, or give more vectors / a larger train_sample"
        )
    try:
        index.train(sample)
    except RuntimeError as e:
        raise ImtextError(
            f"training index {factory!r} on {n} vectors failed: {first_line(e)}; "
            f"use a smaller IVF/PQ setting or more training vectors"
        ) from None


def search_params(index: faiss.Index, nprobe: int | None, ef_search: int | None) -> Any:
    """Per-call parameters (thread-safe, unlike setting index.nprobe), or None for the defaults.

    IVF gets SearchParametersIVF, HNSW gets SearchParametersHNSW, an IVF whose coarse quantizer is HNSW
    gets both (nested). IndexIDMap2 and IndexPreTransform pass the parameters through to the inner index.
    """
    if nprobe is None and ef_search is None:
        return None
    inner = _inner(index)
    if isinstance(inner, faiss.IndexIVF):
        quantizer = faiss.downcast_index(inner.quantizer)
        if ef_search is not None and not isinstance(quantizer, faiss.IndexHNSW):
            raise ImtextError("ef_search applies to HNSW indexes; this IVF index has no HNSW quantizer")
        q_params = None if ef_search is None else faiss.SearchParametersHNSW(efSearch=int(ef_search))
        probe = inner.nprobe if nprobe is None else min(int(nprobe), inner.nlist)
        if q_params is None:
            return faiss.SearchParametersIVF(nprobe=probe)
        return faiss.SearchParametersIVF(nprobe=probe, quantizer_params=q_params)
    if isinstance(inner, faiss.IndexHNSW):
        if nprobe is not None:
            raise ImtextError("nprobe applies to IVF indexes; for an HNSW index set ef_search")
        return faiss.SearchParametersHNSW(efSearch=int(ef_search))
    raise ImtextError(
        f"nprobe / ef_search do not apply to a {type(inner).__name__} index (exact search has no knobs)"
    )


def stored_ids(index: faiss.Index) -> np.ndarray:
    """The global ids a shard holds, read from the id map or the IVF inverted lists."""
    if isinstance(index, _ID_MAPS):
        return faiss.vector_to_array(index.id_map).astype(np.int64)
    ivf = ivf_of(index)
    if ivf is None:
        raise ImtextError(f"a {type(index).__name__} shard stores no ids: rebuild with `imtext index build`")
    lists = ivf.invlists
    parts = []
    for list_no in range(ivf.nlist):
        size = lists.list_size(list_no)
        if size:
            ptr = lists.get_ids(list_no)
            parts.append(faiss.rev_swig_ptr(ptr, size).astype(np.int64))  # astype copies
            lists.release_ids(list_no, ptr)
    return np.concatenate(parts) if parts else np.empty(0, dtype=np.int64)


def share_one_quantizer(shards: list[faiss.Index]) -> bool:
    """True when every shard is a plain IVF whose flat coarse quantizer holds the same centroids, so
    the coarse search can run once for all shards (search_shared_coarse)."""
    if len(shards) < 2 or not all(isinstance(s, faiss.IndexIVF) for s in shards):
        return False
    quantizers = [faiss.downcast_index(s.quantizer) for s in shards]
    if not all(isinstance(qz, faiss.IndexFlat) for qz in quantizers):
        return False
    ref = faiss.vector_to_array(quantizers[0].codes)
    return all(np.array_equal(faiss.vector_to_array(qz.codes), ref) for qz in quantizers[1:])


def search_shared_coarse(
    shards: list[faiss.Index], queries: np.ndarray, k: int, params: Any
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Search IVF shards that share one quantizer: rank the centroids once, then scan each shard's lists.

    Without this every shard repeats the coarse search (nlist x dim per query), which at nprobe 16 on
    1M vectors is as much work as scanning the lists, so 4 shards would cost about 2.5x one.
    """
    first = shards[0]
    if params is None:  # per-call parameters: never touch index.nprobe
        params = faiss.SearchParametersIVF(nprobe=first.nprobe)
    coarse_dis, assign = first.quantizer.search(queries, params.nprobe)
    n = len(queries)
    out = []
    for shard in shards:
        if shard.ntotal == 0:
            continue
        kk = min(k, int(shard.ntotal))
        dist = np.empty((n, kk), dtype=np.float32)
        labels = np.empty((n, kk), dtype=np.int64)
        # the _c form: FAISS's Python wrapper of search_preassigned refuses per-call params
        shard.search_preassigned_c(
            n,
            faiss.swig_ptr(queries),
            kk,
            faiss.swig_ptr(assign),
            faiss.swig_ptr(coarse_dis),
            faiss.swig_ptr(dist),
            faiss.swig_ptr(labels),
            False,
            params,
        )
        out.append((dist, labels))
    return out
