"""ShardedIndex: exact equality with one index and with numpy brute force, persistence and its failure
modes, growing and shrinking, approximate-index recall, and the merge a Serve app uses."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import faiss
import numpy as np
import pytest

from imtext.errors import ImtextError
from imtext.index import ShardedIndex, merge_topk
from imtext.index import factory as fx
from imtext.index.manifest import sha256_file


@pytest.fixture(scope="module", autouse=True)
def one_faiss_thread():
    """The test machine is small and shared: FAISS's OpenMP spinning on busy cores is slower than one thread."""
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(before)


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def gaussian(n: int, d: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)


def clustered(n: int, d: int, clusters: int, seed: int, spread: float = 1.5) -> np.ndarray:
    """Overlapping Gaussian blobs around random unit centres: hard enough that nprobe / efSearch matter."""
    rng = np.random.default_rng(seed)
    centres = unit(rng.standard_normal((clusters, d)))
    x = centres[rng.integers(0, clusters, n)] + rng.standard_normal((n, d)) * (spread / np.sqrt(d))
    return x.astype(np.float32)


def brute(x: np.ndarray, ids: np.ndarray, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact cosine top-k in float64 numpy, padded like the index (-inf, -1)."""
    s = unit(q.astype(np.float64)) @ unit(x.astype(np.float64)).T
    order = np.argsort(-s, axis=1, kind="stable")[:, :k]
    scores = np.full((len(q), k), -np.inf)
    out = np.full((len(q), k), -1, dtype=np.int64)
    scores[:, : order.shape[1]] = np.take_along_axis(s, order, axis=1)
    out[:, : order.shape[1]] = ids[order]
    return scores, out


def assert_same_topk(scores, ids, ref_scores, ref_ids, x=None, all_ids=None, q=None) -> None:
    """Scores equal to float32 precision; ids equal, except that two ids whose true scores tie (to 1e-5)
    may swap places."""
    assert scores.dtype == np.float32 and ids.dtype == np.int64
    assert scores.shape == ref_scores.shape == ids.shape
    np.testing.assert_allclose(scores, ref_scores, rtol=0, atol=1e-5)
    differ = np.argwhere(ids != ref_ids)
    if len(differ) and x is not None:
        true = unit(q.astype(np.float64)) @ unit(x.astype(np.float64)).T
        pos = {int(i): p for p, i in enumerate(all_ids)}
        for r, c in differ:
            a, b = pos[int(ids[r, c])], pos[int(ref_ids[r, c])]
            assert abs(true[r, a] - true[r, b]) < 1e-5, f"query {r} rank {c}: {ids[r, c]} vs {ref_ids[r, c]}"
    else:
        np.testing.assert_array_equal(ids, ref_ids)


def recall_at(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found, truth)]))


# ---- exactness ----------------------------------------------------------------------------------


@pytest.mark.parametrize("shards", [1, 2, 3, 5])
@pytest.mark.parametrize("k", [7, 60, 250])
def test_sharded_flat_equals_single_flat_and_brute_force(shards: int, k: int) -> None:
    x, q = gaussian(200, 16, 0), gaussian(9, 16, 1)
    ids = np.random.default_rng(2).permutation(10_000)[:200].astype(np.int64)  # global ids, not 0..N
    index = ShardedIndex.build(x, ids, shards=shards)
    assert index.shard_count == shards and index.ntotal == 200 and index.dim == 16
    scores, got = index.search(q, k)

    single = faiss.IndexFlatIP(16)  # one plain FAISS index over the same normalised vectors
    xn = x.copy()
    faiss.normalize_L2(xn)
    single.add(xn)
    qn = q.copy()
    faiss.normalize_L2(qn)
    s_scores, s_rows = single.search(qn, min(k, 200))
    s_ids = np.where(s_rows >= 0, ids[s_rows], -1)
    width = s_ids.shape[1]
    assert_same_topk(scores[:, :width], got[:, :width], s_scores, s_ids, x, ids, q)

    b_scores, b_ids = brute(x, ids, q, k)
    assert_same_topk(scores, got, b_scores.astype(np.float32), b_ids, x, ids, q)
    if k > 200:  # more than the whole index: padded
        assert (got[:, 200:] == -1).all() and np.isneginf(scores[:, 200:]).all()
        assert sorted(got[0, :200].tolist()) == sorted(ids.tolist())
    assert (np.diff(scores[:, : min(k, 200)], axis=1) <= 0).all()


def test_search_does_not_change_inputs_and_accepts_float64() -> None:
    x, q = gaussian(50, 8, 3), gaussian(3, 8, 4).astype(np.float64)
    x0, q0 = x.copy(), q.copy()
    index = ShardedIndex.build(x, np.arange(50), shards=2)
    index.search(q, 5)
    np.testing.assert_array_equal(x, x0)
    np.testing.assert_array_equal(q, q0)
    # cosine: scaling a query does not change its answer
    s1, i1 = index.search(q, 5)
    s2, i2 = index.search(q * 7.5, 5)
    np.testing.assert_array_equal(i1, i2)
    np.testing.assert_allclose(s1, s2, atol=1e-6)


def test_merge_topk_equals_single_index_from_per_shard_results() -> None:
    x, q = gaussian(230, 12, 5), gaussian(6, 12, 6)
    faiss.normalize_L2(x)
    faiss.normalize_L2(q)
    k = 70  # larger than the last part (30 rows): its result is padded by FAISS with -1 / -3.4e38
    single = faiss.IndexFlatIP(12)
    single.add(x)
    ref_scores, ref_ids = single.search(q, k)
    score_lists, id_lists = [], []
    for lo, hi in [(0, 100), (100, 200), (200, 230)]:
        part = faiss.IndexFlatIP(12)
        part.add(x[lo:hi])
        d, i = part.search(q, k)
        score_lists.append(d)
        id_lists.append(np.where(i >= 0, i + lo, -1))  # local rows -> global ids
    assert (id_lists[2][:, 30:] == -1).all()
    scores, ids = merge_topk(score_lists, id_lists, k)
    np.testing.assert_array_equal(ids, ref_ids)
    np.testing.assert_allclose(scores, ref_scores, atol=1e-6)


def test_merge_topk_by_hand_and_padding() -> None:
    scores, ids = merge_topk(
        [np.array([[0.9, 0.5, -3.4e38]], np.float32), np.array([[0.8, 0.7]], np.float32)],
        [np.array([[1, 2, -1]]), np.array([[3, 4]])],
        k=6,
    )
    np.testing.assert_array_equal(ids, [[1, 3, 4, 2, -1, -1]])
    assert ids.dtype == np.int64 and scores.dtype == np.float32
    np.testing.assert_allclose(scores[0, :4], [0.9, 0.8, 0.7, 0.5])
    assert np.isneginf(scores[0, 4:]).all()
    # smallest scores lose: keep_max semantics (a min-merge would return 2 and 4 here)
    _, top2 = merge_topk(
        [np.array([[0.9, 0.5]]), np.array([[0.8, 0.7]])], [np.array([[1, 2]]), np.array([[3, 4]])], 2
    )
    np.testing.assert_array_equal(top2, [[1, 3]])
    _, from_json = merge_topk([[[0.9, 0.5]], [[0.8, 0.7]]], [[[1, 2]], [[3, 4]]], 3)  # plain lists work too
    np.testing.assert_array_equal(from_json, [[1, 3, 4]])
    # many candidates per query: the partial-sort path agrees with a full sort
    rng = np.random.default_rng(40)
    wide_s = [rng.random((3, 3000)).astype(np.float32) for _ in range(2)]
    wide_i = [rng.permutation(100_000)[:9000].reshape(3, 3000) for _ in range(2)]
    w_scores, w_ids = merge_topk(wide_s, wide_i, 50)
    all_s, all_i = np.concatenate(wide_s, axis=1), np.concatenate(wide_i, axis=1)
    np.testing.assert_array_equal(
        w_ids, np.take_along_axis(all_i, np.argsort(-all_s, axis=1)[:, :50], axis=1)
    )
    with pytest.raises(ImtextError, match="same shape|one shape"):
        merge_topk([np.zeros((2, 3))], [np.zeros((2, 4), np.int64)], 3)


# ---- persistence --------------------------------------------------------------------------------


def test_save_load_roundtrip_and_one_shard_alone(tmp_path) -> None:
    x, q = gaussian(120, 16, 7), gaussian(5, 16, 8)
    ids = np.arange(1000, 1120)
    index = ShardedIndex.build(x, ids, shards=3, model_fingerprint="model-abc")
    scores, got = index.search(q, 10)
    index.save(tmp_path / "idx")

    m = json.loads((tmp_path / "idx" / "manifest.json").read_text())
    assert m["dim"] == 16 and m["metric"] == "inner_product" and m["factory"] == "Flat" and m["total"] == 120
    assert m["model_fingerprint"] == "model-abc" and m["format_version"] == 1
    assert [s["file"] for s in m["shards"]] == ["shard-000.faiss", "shard-001.faiss", "shard-002.faiss"]
    assert [s["count"] for s in m["shards"]] == [40, 40, 40]
    assert [(s["id_min"], s["id_max"]) for s in m["shards"]] == [(1000, 1039), (1040, 1079), (1080, 1119)]
    for s in m["shards"]:
        assert s["sha256"] == sha256_file(tmp_path / "idx" / s["file"])
    assert not [p for p in (tmp_path / "idx").iterdir() if p.name.endswith(".tmp")]

    for mmap in (False, True):
        back = ShardedIndex.load(tmp_path / "idx", mmap=mmap)
        assert back.ntotal == 120 and back.shard_count == 3 and back.factory == "Flat"
        s2, i2 = back.search(q, 10)
        np.testing.assert_array_equal(i2, got)
        np.testing.assert_allclose(s2, scores, atol=1e-6)

    one = ShardedIndex.load(tmp_path / "idx", shard=1)
    assert one.ntotal == 40 and one.shard_numbers == [1]
    s1, i1 = one.search(q, 10)
    b_scores, b_ids = brute(x[40:80], ids[40:80], q, 10)
    assert_same_topk(s1, i1, b_scores.astype(np.float32), b_ids, x[40:80], ids[40:80], q)
    assert one.manifest["total"] == 120  # the whole index's manifest
    with pytest.raises(ImtextError, match="load the whole index"):
        one.save(tmp_path / "other")
    with pytest.raises(ImtextError, match="shard must be from 0 to 2"):
        ShardedIndex.load(tmp_path / "idx", shard=3)


def test_corrupt_and_missing_shards_and_wrong_model_are_refused(tmp_path) -> None:
    folder = tmp_path / "idx"
    ShardedIndex.build(gaussian(90, 8, 9), np.arange(90), shards=3, model_fingerprint="vse-A").save(folder)

    with pytest.raises(ImtextError, match=r"built by model vse-A, asked to query with model vse-B: rebuild"):
        ShardedIndex.load(folder, model_fingerprint="vse-B")
    assert ShardedIndex.load(folder, model_fingerprint="vse-A").ntotal == 90

    path = folder / "shard-001.faiss"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte inside the stored vectors
    path.write_bytes(bytes(data))
    with pytest.raises(ImtextError, match=r"shard-001\.faiss is corrupt.*rebuild"):
        ShardedIndex.load(folder)
    with pytest.raises(ImtextError, match=r"shard-001\.faiss is corrupt"):
        ShardedIndex.load(folder, shard=1)
    assert ShardedIndex.load(folder, shard=0).ntotal == 30  # the other shards are fine alone

    (folder / "shard-002.faiss").unlink()
    with pytest.raises(ImtextError, match=r"shard-002\.faiss .*missing"):
        ShardedIndex.load(folder, shard=2)

    (folder / "manifest.json").unlink()
    with pytest.raises(ImtextError, match="manifest.json is missing"):
        ShardedIndex.load(folder)
    with pytest.raises(ImtextError, match="does not exist"):
        ShardedIndex.load(tmp_path / "nowhere")


# ---- growing and shrinking ----------------------------------------------------------------------


def test_add_then_search_matches_brute_force_and_persists(tmp_path) -> None:
    x, extra, q = gaussian(150, 16, 10), gaussian(70, 16, 11), gaussian(8, 16, 12)
    index = ShardedIndex.build(x, np.arange(150), shards=2)
    new = index.add(extra[:40])
    np.testing.assert_array_equal(new, np.arange(150, 190))  # max + 1 onwards
    np.testing.assert_array_equal(index.add(extra[40:], ids=np.arange(500, 530)), np.arange(500, 530))
    all_x, all_ids = np.concatenate([x, extra]), np.concatenate([np.arange(190), np.arange(500, 530)])
    scores, got = index.search(q, 12)
    b_scores, b_ids = brute(all_x, all_ids, q, 12)
    assert_same_topk(scores, got, b_scores.astype(np.float32), b_ids, all_x, all_ids, q)
    # each added vector finds itself first
    _, self_hit = index.search(extra, 1)
    np.testing.assert_array_equal(self_hit[:, 0], np.concatenate([new, np.arange(500, 530)]))

    with pytest.raises(ImtextError, match=r"already in the index: \[5"):
        index.add(gaussian(2, 16, 13), ids=np.array([5, 9999]))
    with pytest.raises(ImtextError, match="unique"):
        index.add(gaussian(2, 16, 13), ids=np.array([7000, 7000]))
    with pytest.raises(ImtextError, match="dimension 8"):
        index.add(gaussian(2, 8, 13))
    assert index.ntotal == 220

    index.add(gaussian(30, 16, 14), max_shard_size=150)  # last shard holds 145: 5 in, then a new shard
    assert index.shard_count == 3 and [s["count"] for s in index.manifest["shards"]] == [75, 150, 25]
    index.save(tmp_path / "idx")
    back = ShardedIndex.load(tmp_path / "idx")
    assert back.ntotal == 250 and back.manifest["shards"][2]["id_min"] == 535
    np.testing.assert_array_equal(back.search(q, 12)[1], index.search(q, 12)[1])
    np.testing.assert_array_equal(back.add(gaussian(1, 16, 15)), [560])  # next_id survives a reload

    # saving back in place rewrites only the changed (last) shard, and the manifest
    first = (tmp_path / "idx" / "shard-000.faiss").stat()
    last = (tmp_path / "idx" / "shard-002.faiss").read_bytes()
    back.save(tmp_path / "idx")
    assert (tmp_path / "idx" / "shard-000.faiss").stat().st_ino == first.st_ino
    assert (tmp_path / "idx" / "shard-002.faiss").read_bytes() != last
    again = ShardedIndex.load(tmp_path / "idx")
    assert again.ntotal == 251 and again.manifest["shards"][2]["count"] == 26

    # a smaller index saved over a bigger one leaves no stale shard files behind
    ShardedIndex.build(x, np.arange(150), shards=1).save(tmp_path / "idx")
    assert sorted(p.name for p in (tmp_path / "idx").iterdir()) == ["manifest.json", "shard-000.faiss"]
    assert ShardedIndex.load(tmp_path / "idx").ntotal == 150


def test_remove_on_flat_and_ivf_then_refusals(tmp_path) -> None:
    x, q = gaussian(100, 16, 16), gaussian(6, 16, 17)
    ids = np.arange(100)
    for factory in ("Flat", "IVF4,Flat"):
        index = ShardedIndex.build(x, ids, shards=2, factory=factory)
        gone = ids[::3]
        assert index.remove(np.concatenate([gone, [12345]])) == len(gone)  # unknown ids are ignored
        keep = np.setdiff1d(ids, gone)
        kw = {"nprobe": 4} if factory != "Flat" else {}
        scores, got = index.search(q, 10, **kw)
        b_scores, b_ids = brute(x[keep], keep, q, 10)
        assert_same_topk(scores, got, b_scores.astype(np.float32), b_ids, x[keep], keep, q)
        assert index.ntotal == len(keep)
        index.save(tmp_path / factory)
        back = ShardedIndex.load(tmp_path / factory)
        np.testing.assert_array_equal(back.search(q, 10, **kw)[1], got)
        np.testing.assert_array_equal(back.add(gaussian(1, 16, 18)), [100])  # removed ids are not reused

    hnsw = ShardedIndex.build(x, ids, factory="HNSW8")
    with pytest.raises(ImtextError, match="HNSW cannot delete.*rebuild"):
        hnsw.remove(np.array([1]))
    hnsw.save(tmp_path / "hnsw")
    mapped = ShardedIndex.load(tmp_path / "IVF4,Flat", mmap=True)  # FAISS would abort on a write here
    with pytest.raises(ImtextError, match="mmap=True"):
        mapped.add(gaussian(1, 16, 19))
    with pytest.raises(ImtextError, match="mmap=True"):
        mapped.remove(np.array([1]))
    with pytest.raises(ImtextError, match="only shard"):
        ShardedIndex.load(tmp_path / "Flat", shard=0).add(gaussian(1, 16, 19))


# ---- approximate indexes ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def blobs() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    x = clustered(5000, 32, 100, seed=20)
    rng = np.random.default_rng(21)
    q = x[rng.choice(5000, 200, replace=False)]  # queries near data points
    q = q + rng.standard_normal((200, 32)).astype(np.float32) * 0.05
    _, truth = brute(x, np.arange(5000), q, 10)
    return x, q, truth


def test_ivf_recall_and_nprobe(blobs) -> None:
    x, q, truth = blobs
    index = ShardedIndex.build(x, np.arange(5000), shards=3, factory="IVF64,Flat")
    recall = {p: recall_at(index.search(q, 10, nprobe=p)[1], truth) for p in (1, 16, 64)}
    assert recall[16] >= 0.9
    assert recall[1] < recall[16] - 0.2  # nprobe=1 misses the neighbours in other lists
    assert recall[64] == 1.0  # nprobe = nlist visits every list: exact
    # one shared quantizer: with every list probed, three IVF shards equal exact search
    np.testing.assert_array_equal(index.search(q, 10, nprobe=64)[1], truth)


@pytest.mark.parametrize("factory", ["IVF64,Flat", "IVF32,PQ16x4np"])
def test_ivf_shards_share_one_coarse_search_and_equal_one_shard(blobs, factory, tmp_path) -> None:
    """Shards trained from one sample share the quantizer, so 3 shards answer exactly like 1 shard at
    every nprobe (the coarse search runs once; PQ scores include the same centroid term)."""
    x, q, _ = blobs
    one = ShardedIndex.build(x, np.arange(5000), shards=1, factory=factory)
    three = ShardedIndex.build(x, np.arange(5000), shards=3, factory=factory)
    three.save(tmp_path / "three")
    loaded = ShardedIndex.load(tmp_path / "three")
    assert fx.share_one_quantizer(loaded._shards) and not fx.share_one_quantizer(one._shards)
    for nprobe in (1, 4, 16):
        s1, i1 = one.search(q, 10, nprobe=nprobe)
        for index in (three, loaded):
            s3, i3 = index.search(q, 10, nprobe=nprobe)
            np.testing.assert_array_equal(i3, i1)
            np.testing.assert_allclose(s3, s1, atol=1e-6)
    flat = ShardedIndex.build(x[:100], np.arange(100), shards=2)
    hnsw = ShardedIndex.build(x[:100], np.arange(100), shards=2, factory="HNSW8")
    assert not fx.share_one_quantizer(flat._shards) and not fx.share_one_quantizer(hnsw._shards)


def test_hnsw_recall_and_ef_search(blobs) -> None:
    x, q, truth = blobs
    index = ShardedIndex.build(x, np.arange(5000), shards=2, factory="HNSW32")
    recall = {ef: recall_at(index.search(q, 10, ef_search=ef)[1], truth) for ef in (2, 64)}
    assert recall[64] >= 0.9
    assert recall[2] < recall[64] - 0.05  # a tiny beam misses neighbours


def test_nested_and_wrapped_search_params(blobs, tmp_path) -> None:
    x, q, truth = blobs
    # IVF inside an explicit IDMap2, and IVF with an HNSW coarse quantizer: params reach the right level
    wrapped = ShardedIndex.build(x, np.arange(5000), shards=2, factory="IDMap2,IVF32,Flat")
    np.testing.assert_array_equal(wrapped.search(q, 10, nprobe=32)[1], truth)
    assert recall_at(wrapped.search(q, 10, nprobe=1)[1], truth) < 0.9
    nested = ShardedIndex.build(x, np.arange(5000), factory="IVF32_HNSW16,Flat")
    np.testing.assert_array_equal(nested.search(q, 10, nprobe=32, ef_search=64)[1], truth)
    assert recall_at(nested.search(q, 10, nprobe=1, ef_search=64)[1], truth) < 0.9
    # "np": skip FAISS's polysemous training (slow, and only for Hamming pre-filtering, which is off)
    pq = ShardedIndex.build(x, np.arange(5000), shards=2, factory="IVF32,PQ16x4np")
    pq.save(tmp_path / "pq")
    back = ShardedIndex.load(tmp_path / "pq", mmap=True)
    assert recall_at(back.search(q, 10, nprobe=32)[1], truth) >= 0.5  # 8-byte codes: coarse, not random
    assert recall_at(back.search(q, 10, nprobe=1)[1], truth) < 0.45
    np.testing.assert_array_equal(back.search(q, 10, nprobe=8)[1], pq.search(q, 10, nprobe=8)[1])

    flat = ShardedIndex.build(x[:100], np.arange(100))
    with pytest.raises(ImtextError, match="nprobe applies to IVF"):
        ShardedIndex.build(x[:300], np.arange(300), factory="HNSW8").search(q, 5, nprobe=4)
    with pytest.raises(ImtextError, match="ef_search applies to HNSW"):
        wrapped.search(q, 5, ef_search=16)
    with pytest.raises(ImtextError, match="do not apply"):
        flat.search(q, 5, nprobe=2)


def test_concurrent_searches_with_different_nprobe_do_not_interfere(blobs) -> None:
    x, q, _ = blobs
    index = ShardedIndex.build(x, np.arange(5000), shards=2, factory="IVF64,Flat")
    expect = {p: index.search(q, 10, nprobe=p)[1] for p in (1, 64)}
    with ThreadPoolExecutor(4) as pool:
        runs = list(pool.map(lambda p: (p, index.search(q, 10, nprobe=p)[1]), [1, 64] * 6))
    for p, got in runs:
        np.testing.assert_array_equal(got, expect[p])


def test_add_to_ivf_opens_a_new_shard_with_the_same_quantizer(blobs) -> None:
    x, q, truth = blobs
    index = ShardedIndex.build(x[:4000], np.arange(4000), factory="IVF64,Flat")
    index.add(x[4000:], ids=np.arange(4000, 5000), max_shard_size=4000)
    assert index.shard_count == 2
    np.testing.assert_array_equal(index.search(q, 10, nprobe=64)[1], truth)


# ---- validation ---------------------------------------------------------------------------------


def test_bad_inputs_are_clear_errors() -> None:
    x = gaussian(40, 8, 30)
    with pytest.raises(ImtextError, match="unique"):
        ShardedIndex.build(x, np.r_[np.arange(39), 0])
    with pytest.raises(ImtextError, match="one id per vector"):
        ShardedIndex.build(x, np.arange(39))
    with pytest.raises(ImtextError, match=">= 0"):
        ShardedIndex.build(x, np.arange(40) - 1)
    with pytest.raises(ImtextError, match="shards must be"):
        ShardedIndex.build(x, np.arange(40), shards=0)
    with pytest.raises(ImtextError, match="shards must be"):
        ShardedIndex.build(x, np.arange(40), shards=41)
    bad = x.copy()
    bad[7, 3] = np.nan
    with pytest.raises(ImtextError, match="row 7 holds NaN"):
        ShardedIndex.build(bad, np.arange(40))
    bad[7] = 0
    with pytest.raises(ImtextError, match="row 7 is all zeros"):
        ShardedIndex.build(bad, np.arange(40))
    bad[7] = 1e30  # squares overflow float32: normalising would give garbage
    with pytest.raises(ImtextError, match="row 7 has a norm too large"):
        ShardedIndex.build(bad, np.arange(40))
    with pytest.raises(ImtextError, match=r"asks for 256 IVF lists but only 40 training vectors.*IVF25"):
        ShardedIndex.build(x, np.arange(40), factory="IVF256,Flat")
    with pytest.raises(
        ImtextError, match=r"training index 'IVF4,PQ4np' on 40 vectors failed: Number of training"
    ):
        ShardedIndex.build(x, np.arange(40), factory="IVF4,PQ4np")  # PQ needs 256 points per codebook
    with pytest.raises(ImtextError, match="factory string 'Nonsense12'"):
        ShardedIndex.build(x, np.arange(40), factory="Nonsense12")
    index = ShardedIndex.build(x, np.arange(40))
    with pytest.raises(ImtextError, match="dimension 9 but the index holds 8-d"):
        index.search(gaussian(2, 9, 31), 3)
    with pytest.raises(ImtextError, match="k must be a positive integer"):
        index.search(x[:2], 0)
    with pytest.raises(ImtextError, match="2-D"):
        index.search(x[0], 3)
    scores, ids = index.search(x[:0], 3)
    assert scores.shape == (0, 3) and ids.shape == (0, 3)
