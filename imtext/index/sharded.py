"""ShardedIndex: one FAISS index per shard, cosine similarity (inner product over L2-normalised vectors),
searched shard by shard and merged into one global top-k.

Choices worth knowing:
- Shards are contiguous ranges of the input rows; every shard stores the global ids, so a shard loaded
  alone (a Serve replica) returns ids that mean the same as the whole index's.
- IVF / PQ indexes are trained once, on a random sample drawn from all vectors, and the trained empty
  index is cloned into every shard. All shards share one coarse quantizer and one PQ codebook, so nprobe
  means the same on each shard, scores are comparable across shards, add() can open a new shard
  without retraining, and search ranks the centroids once for all shards instead of once per shard.
- Missing results (k larger than a shard or than the whole index) come back as id -1, score -inf.
- search() only reads, so concurrent searches are safe (per-call nprobe / efSearch, never index.nprobe);
  add() and remove() must not run concurrently with search().
"""

from __future__ import annotations

import contextlib
import copy
import re
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from imtext.atomic import atomic_dir, atomic_path
from imtext.errors import ImtextError
from imtext.index import factory as fx
from imtext.index.manifest import (
    FORMAT_VERSION,
    METRIC,
    REBUILD,
    read_manifest,
    sha256_file,
    shard_file,
    verify_shard,
    write_manifest,
)
from imtext.index.merge import empty_result, merge_topk

DEFAULT_MAX_SHARD_SIZE = 1_000_000  # about 2 GB of 512-d float32 for Flat: one replica's worth of memory
_CHUNK = 65_536  # rows normalised and added at a time: bounds the extra memory of a build
_PROGRESS_MIN = 100_000  # builds at least this big show a progress bar
_SHARD_RE = re.compile(r"^shard-\d{3,}\.faiss$")


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _as_matrix(x: Any, what: str) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 2:
        raise ImtextError(f"{what} must be a 2-D array (rows, dim), got shape {x.shape}")
    if not np.issubdtype(x.dtype, np.floating):
        raise ImtextError(f"{what} must be floating point, got dtype {x.dtype}")
    return np.ascontiguousarray(x, dtype=np.float32)


def _check_rows(x: np.ndarray, what: str) -> None:
    """Refuse NaN/inf and all-zero rows (cosine is undefined for them); chunked to bound memory.

    One pass over squared norms finds every bad row (NaN, inf and overflow give a non-finite norm,
    zeros give 0); the slower checks only run to name the problem.
    """
    for a in range(0, len(x), _CHUNK):
        c = x[a : a + _CHUNK]
        sq = np.einsum("ij,ij->i", c, c)
        good = (sq > 0) & (sq < np.inf)
        if good.all():
            continue
        row = int(np.flatnonzero(~good)[0])
        if not np.isfinite(c[row]).all():
            raise ImtextError(f"{what} row {a + row} holds NaN or inf")
        if not c[row].any():
            raise ImtextError(f"{what} row {a + row} is all zeros: cosine is undefined")
        raise ImtextError(f"{what} row {a + row} has a norm too large or too small for float32")


def _normalised(x: np.ndarray) -> np.ndarray:
    out = np.array(x, dtype=np.float32, order="C", copy=True)
    faiss.normalize_L2(out)
    return out


def _as_ids(ids: Any, n: int) -> np.ndarray:
    ids = np.asarray(ids)
    if ids.shape != (n,):
        raise ImtextError(f"ids must be a 1-D array with one id per vector ({n}), got shape {ids.shape}")
    if n and not np.issubdtype(ids.dtype, np.integer):
        raise ImtextError(f"ids must be integers, got dtype {ids.dtype}")
    ids = ids.astype(np.int64)
    if n and ids.min() < 0:
        raise ImtextError("ids must be >= 0 (FAISS uses -1 for 'no result')")
    uniq, counts = np.unique(ids, return_counts=True)
    if len(uniq) != n:
        raise ImtextError(f"ids must be unique; repeated: {uniq[counts > 1][:5].tolist()}")
    return ids


@contextlib.contextmanager
def _progress(total: int, label: str, show: bool | None) -> Iterator[Callable[[int], None]]:
    """Yield advance(n); draws a rich bar on stderr when asked, or by default for big builds."""
    if not (show if show is not None else total >= _PROGRESS_MIN):
        yield lambda n: None
        return
    from rich.console import Console
    from rich.progress import Progress, TimeElapsedColumn

    with Progress(
        *Progress.get_default_columns(), TimeElapsedColumn(), console=Console(stderr=True), transient=False
    ) as bar:
        task = bar.add_task(label, total=total)
        yield lambda n: bar.advance(task, n)


@contextlib.contextmanager
def _status(message: str, show: bool | None, total: int) -> Iterator[None]:
    """A spinner with a clock for steps without a count (training), under the same rule as _progress."""
    if not (show if show is not None else total >= _PROGRESS_MIN):
        yield
        return
    from rich.console import Console

    console = Console(stderr=True)
    start = time.perf_counter()
    with console.status(message):
        yield
    console.print(f"{message}: {time.perf_counter() - start:.1f}s")


def _add_chunked(
    index: faiss.Index, vectors: np.ndarray, ids: np.ndarray, advance: Callable[[int], None]
) -> None:
    for a in range(0, len(vectors), _CHUNK):
        b = min(a + _CHUNK, len(vectors))
        index.add_with_ids(_normalised(vectors[a:b]), ids[a:b])
        advance(b - a)


class ShardedIndex:
    """A set of FAISS shards with a manifest; build() or load() one, then search()."""

    def __init__(
        self,
        shards: list[faiss.Index],
        *,
        dim: int,
        factory: str,
        model_fingerprint: str,
        numbers: list[int],
        id_ranges: list[tuple[int | None, int | None]],
        next_id: int,
        created: str,
        ids: list[np.ndarray | None] | None = None,
        source: Path | None = None,
        sha: list[str | None] | None = None,
        read_only: bool = False,
        disk_manifest: dict[str, Any] | None = None,
    ) -> None:
        """Internal: use ShardedIndex.build or ShardedIndex.load."""
        self._shards = shards
        self._dim = dim
        self._factory = factory
        self._fingerprint = model_fingerprint
        self._numbers = numbers
        self._id_ranges = id_ranges
        self._next_id = next_id
        self._created = created
        self._ids: list[np.ndarray | None] = ids if ids is not None else [None] * len(shards)
        self._source = source
        self._sha: list[str | None] = sha if sha is not None else [None] * len(shards)
        self._read_only = read_only
        self._disk_manifest = disk_manifest
        self._dirty: set[int] = set() if source is not None else set(range(len(shards)))
        self._partial = disk_manifest is not None and len(numbers) != len(disk_manifest["shards"])
        self._shared_coarse: bool | None = None  # do all shards share one IVF quantizer? (found lazily)

    # ---- building -------------------------------------------------------------------------------

    @classmethod
    def build(
        cls,
        vectors: np.ndarray,
        ids: np.ndarray,
        shards: int = 1,
        factory: str = "Flat",
        model_fingerprint: str = "",
        train_sample: int = 100_000,
        seed: int = 0,
        progress: bool | None = None,
    ) -> ShardedIndex:
        """Normalise `vectors` (N, D) (the caller's array is not changed), split them into `shards`
        contiguous ranges and index each with `factory` under the global `ids`.

        IVF/PQ factories are trained once on up to `train_sample` rows drawn at random (`seed`).
        """
        x = _as_matrix(vectors, "vectors")
        n, dim = x.shape
        if n == 0 or dim == 0:
            raise ImtextError(f"cannot build an index from an empty array of shape {x.shape}")
        id_arr = _as_ids(ids, n)
        if not isinstance(shards, (int, np.integer)) or not 1 <= shards <= n:
            raise ImtextError(
                f"shards must be an integer from 1 to the number of vectors ({n}), got {shards}"
            )
        if train_sample < 1:
            raise ImtextError(f"train_sample must be at least 1, got {train_sample}")
        _check_rows(x, "vectors")

        template = fx.new_index(dim, factory)
        if not template.is_trained:
            m = min(n, train_sample)
            pick = (
                np.arange(n) if m == n else np.sort(np.random.default_rng(seed).choice(n, m, replace=False))
            )
            with _status(f"training {factory} on {m} vectors", progress, n):
                fx.train(template, _normalised(x[pick]), factory)

        edges = [n * s // shards for s in range(shards + 1)]
        built: list[faiss.Index] = []
        id_parts: list[np.ndarray] = []
        with _progress(n, f"indexing {n} vectors ({factory}, {shards} shards)", progress) as advance:
            for s in range(shards):
                lo, hi = edges[s], edges[s + 1]
                index = faiss.clone_index(template)
                _add_chunked(index, x[lo:hi], id_arr[lo:hi], advance)
                built.append(index)
                id_parts.append(id_arr[lo:hi].copy())
        return cls(
            built,
            dim=dim,
            factory=factory,
            model_fingerprint=model_fingerprint,
            numbers=list(range(shards)),
            id_ranges=[(int(p.min()), int(p.max())) for p in id_parts],
            next_id=int(id_arr.max()) + 1,
            created=_now(),
            ids=list(id_parts),
        )

    # ---- properties -----------------------------------------------------------------------------

    @property
    def ntotal(self) -> int:
        """Vectors held by this object (one shard's worth when loaded with shard=i)."""
        return int(sum(s.ntotal for s in self._shards))

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def factory(self) -> str:
        return self._factory

    @property
    def model_fingerprint(self) -> str:
        return self._fingerprint

    @property
    def shard_count(self) -> int:
        """Shards held by this object (1 when loaded with shard=i; the manifest lists them all)."""
        return len(self._shards)

    @property
    def shard_numbers(self) -> list[int]:
        """Which manifest shards this object holds."""
        return list(self._numbers)

    @property
    def manifest(self) -> dict[str, Any]:
        """The manifest as save() would write it now (sha256 is None for shards changed since the last
        save); for a single shard loaded alone, the manifest on disk."""
        if self._partial:
            assert self._disk_manifest is not None
            return copy.deepcopy(self._disk_manifest)
        return {
            "format_version": FORMAT_VERSION,
            "model_fingerprint": self._fingerprint,
            "dim": self._dim,
            "metric": METRIC,
            "factory": self._factory,
            "shards": [
                {
                    "file": shard_file(pos),
                    "count": int(index.ntotal),
                    "sha256": None if pos in self._dirty else self._sha[pos],
                    "id_min": self._id_ranges[pos][0],
                    "id_max": self._id_ranges[pos][1],
                }
                for pos, index in enumerate(self._shards)
            ],
            "total": self.ntotal,
            "next_id": self._next_id,
            "created": self._created,
        }

    def __repr__(self) -> str:
        return (
            f"ShardedIndex(factory={self._factory!r}, dim={self._dim}, ntotal={self.ntotal}, "
            f"shards={self._numbers}, model_fingerprint={self._fingerprint!r})"
        )

    # ---- searching ------------------------------------------------------------------------------

    def search(
        self, queries: np.ndarray, k: int, nprobe: int | None = None, ef_search: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Global top-k by cosine: scores (Q, k) float32, descending, and ids (Q, k) int64.

        nprobe (IVF) and ef_search (HNSW) hold for this call only. Slots left empty (k larger than the
        index, or an approximate search that found fewer) come back as id -1, score -inf.
        """
        q = _as_matrix(queries, "queries")
        if q.shape[1] != self._dim:
            raise ImtextError(
                f"queries have dimension {q.shape[1]} but the index holds {self._dim}-d vectors"
            )
        if not isinstance(k, (int, np.integer)) or k < 1:
            raise ImtextError(f"k must be a positive integer, got {k!r}")
        for name, value in (("nprobe", nprobe), ("ef_search", ef_search)):
            if value is not None and (not isinstance(value, (int, np.integer)) or value < 1):
                raise ImtextError(f"{name} must be a positive integer, got {value!r}")
        _check_rows(q, "queries")
        q = _normalised(q)
        nq = len(q)
        k = int(k)
        params = fx.search_params(self._shards[0], nprobe, ef_search)  # one factory: valid for every shard
        if nq == 0:
            return empty_result(0, k)
        if self._shared_coarse is None:
            self._shared_coarse = fx.share_one_quantizer(self._shards)
        if self._shared_coarse:
            results = fx.search_shared_coarse(self._shards, q, k, params)
        else:  # a params object is only read during search, so one serves every shard
            results = [
                index.search(q, min(k, int(index.ntotal)), params=params)
                for index in self._shards
                if index.ntotal > 0
            ]
        scores = [d for d, _ in results]
        ids = [i for _, i in results]
        if not scores:
            return empty_result(nq, k)
        if len(scores) == 1 and scores[0].shape[1] == k:  # one shard: nothing to merge
            d, i = scores[0], ids[0]
            d[i < 0] = -np.inf
            return d, i
        return merge_topk(scores, ids, k)

    # ---- saving and loading ---------------------------------------------------------------------

    def save(self, folder: str | Path) -> Path:
        """Write shard-000.faiss ... and manifest.json, each atomically, the manifest last.

        A new folder appears whole or not at all (written beside it, then renamed). Saving into an
        existing folder replaces file by file; saving back where it was loaded from rewrites only the
        shards that changed.
        """
        if self._partial:
            assert self._disk_manifest is not None
            raise ImtextError(
                f"this object holds shard {self._numbers} of {len(self._disk_manifest['shards'])} only; "
                f"load the whole index (without shard=) to save it"
            )
        folder = Path(folder)
        if folder.exists():
            same = self._source is not None and folder.resolve() == self._source.resolve()
            manifest = self._write(folder, reuse=same)
        else:
            with atomic_dir(folder) as tmp:
                manifest = self._write(tmp, reuse=False)
        self._dirty.clear()
        self._numbers = list(range(len(self._shards)))
        self._source = folder
        self._disk_manifest = manifest
        return folder

    def _write(self, folder: Path, reuse: bool) -> dict[str, Any]:
        for pos, index in enumerate(self._shards):
            path = folder / shard_file(pos)
            if reuse and pos not in self._dirty and self._sha[pos] is not None and path.is_file():
                continue
            with atomic_path(path) as tmp:
                faiss.write_index(index, str(tmp))
                self._sha[pos] = sha256_file(tmp)
            self._dirty.discard(pos)
        manifest = self.manifest
        manifest["saved"] = _now()
        write_manifest(folder, manifest)
        keep = {shard_file(pos) for pos in range(len(self._shards))}
        for stale in folder.iterdir():  # shards of an earlier, bigger index in the same folder
            if _SHARD_RE.match(stale.name) and stale.name not in keep:
                stale.unlink()
        return manifest

    @classmethod
    def load(
        cls,
        folder: str | Path,
        shard: int | None = None,
        model_fingerprint: str | None = None,
        mmap: bool = False,
        verify: bool = True,
    ) -> ShardedIndex:
        """Load every shard, or only shard number `shard` (what one Serve replica holds).

        Each loaded shard's sha256 is checked against the manifest (verify=False skips it: only for
        folders you just wrote yourself). With model_fingerprint, refuse an index another model built.
        mmap=True maps the shard files read-only instead of reading them into memory; such an index can
        search but not add or remove.
        """
        folder = Path(folder)
        m = read_manifest(folder)
        if model_fingerprint is not None and model_fingerprint != m["model_fingerprint"]:
            built_by = m["model_fingerprint"] or "(no fingerprint recorded)"
            raise ImtextError(
                f"index in {folder} was built by model {built_by}, asked to query with model "
                f"{model_fingerprint}: rebuild with `imtext index build`"
            )
        entries = m["shards"]
        if shard is None:
            numbers = list(range(len(entries)))
        elif isinstance(shard, (int, np.integer)) and 0 <= shard < len(entries):
            numbers = [int(shard)]
        else:
            raise ImtextError(f"shard must be from 0 to {len(entries) - 1} for {folder}, got {shard!r}")
        flags = (faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY) if mmap else 0
        loaded = []
        for number in numbers:
            entry = entries[number]
            path = verify_shard(folder, entry) if verify else folder / entry["file"]
            if not path.is_file():
                raise ImtextError(f"shard file {path} listed in the manifest is missing: {REBUILD}")
            try:
                index = faiss.read_index(str(path), flags)
            except RuntimeError as e:
                raise ImtextError(f"cannot read shard file {path} ({fx.first_line(e)}): {REBUILD}") from None
            if index.d != m["dim"] or index.ntotal != entry["count"]:
                raise ImtextError(
                    f"shard file {path} holds {index.ntotal} vectors of dimension {index.d}, the manifest "
                    f"says {entry['count']} of dimension {m['dim']}: {REBUILD}"
                )
            loaded.append(index)
        next_id = m.get("next_id")
        if next_id is None:
            next_id = max((e["id_max"] for e in entries if e.get("id_max") is not None), default=-1) + 1
        return cls(
            loaded,
            dim=int(m["dim"]),
            factory=str(m["factory"]),
            model_fingerprint=str(m["model_fingerprint"]),
            numbers=numbers,
            id_ranges=[(entries[n].get("id_min"), entries[n].get("id_max")) for n in numbers],
            next_id=int(next_id),
            created=str(m.get("created", "")),
            source=folder,
            sha=[entries[n]["sha256"] for n in numbers],
            read_only=mmap,
            disk_manifest=m,
        )

    # ---- growing and shrinking ------------------------------------------------------------------

    def _check_writable(self, what: str) -> None:
        if self._read_only:
            # FAISS aborts the whole process when asked to change a memory-mapped IVF: refuse first.
            raise ImtextError(
                f"cannot {what}: this index was loaded with mmap=True (read-only); load it without mmap"
            )
        if self._partial:
            raise ImtextError(f"cannot {what}: only shard {self._numbers} is loaded; load the whole index")

    def _ids_of(self, pos: int) -> np.ndarray:
        ids = self._ids[pos]
        if ids is None:
            ids = self._ids[pos] = fx.stored_ids(self._shards[pos])
        return ids

    def _set_ids(self, pos: int, ids: np.ndarray) -> None:
        self._ids[pos] = ids
        self._id_ranges[pos] = (int(ids.min()), int(ids.max())) if len(ids) else (None, None)
        self._dirty.add(pos)

    def _empty_like(self) -> faiss.Index:
        """A new empty shard that shares the trained quantizer / codebooks of the existing ones."""
        fresh = fx.new_index(self._dim, self._factory)
        if fresh.is_trained:
            return fresh
        index = faiss.clone_index(self._shards[-1])  # costs one shard's memory for a moment
        index.reset()
        return index

    def add(
        self, vectors: np.ndarray, ids: np.ndarray | None = None, max_shard_size: int = DEFAULT_MAX_SHARD_SIZE
    ) -> np.ndarray:
        """Add vectors without a rebuild and return their ids (new ones, counting on from the largest id
        ever given, when `ids` is None). Fills the last shard up to `max_shard_size`, then opens new
        shards. Call save() to persist. IVF shards keep their original quantizer: after adding many
        vectors unlike the training sample, rebuild for best recall.
        """
        self._check_writable("add")
        x = _as_matrix(vectors, "vectors")
        if x.shape[1] != self._dim:
            raise ImtextError(
                f"vectors have dimension {x.shape[1]} but the index holds {self._dim}-d vectors"
            )
        n = len(x)
        if max_shard_size < 1:
            raise ImtextError(f"max_shard_size must be at least 1, got {max_shard_size}")
        if ids is None:
            new_ids = np.arange(self._next_id, self._next_id + n, dtype=np.int64)
        else:
            new_ids = _as_ids(ids, n)
            present = np.concatenate([self._ids_of(p) for p in range(len(self._shards))])
            dup = new_ids[np.isin(new_ids, present)]
            if len(dup):
                raise ImtextError(
                    f"ids already in the index: {dup[:5].tolist()}; remove them first or pick new ids"
                )
        if n == 0:
            return new_ids
        _check_rows(x, "vectors")
        done = 0
        with _progress(n, f"adding {n} vectors", None) as advance:
            while done < n:
                pos = len(self._shards) - 1
                room = max_shard_size - int(self._shards[pos].ntotal)
                if room <= 0:
                    self._shards.append(self._empty_like())
                    self._shared_coarse = None
                    self._ids.append(np.empty(0, dtype=np.int64))
                    self._id_ranges.append((None, None))
                    self._sha.append(None)
                    self._numbers.append(len(self._numbers))
                    continue
                take = min(room, n - done)
                part = new_ids[done : done + take]
                old = self._ids_of(pos)
                _add_chunked(self._shards[pos], x[done : done + take], part, advance)
                self._set_ids(pos, np.concatenate([old, part]))
                done += take
        self._next_id = max(self._next_id, int(new_ids.max()) + 1)
        return new_ids

    def remove(self, ids: np.ndarray) -> int:
        """Remove vectors by global id (ids not present are ignored); return how many were removed.
        Call save() to persist."""
        self._check_writable("remove")
        if fx.is_hnsw(self._shards[0]):
            raise ImtextError(
                "HNSW cannot delete vectors (its graph has no removal in FAISS): rebuild the index "
                "without them with `imtext index build`, or use a Flat or IVF factory"
            )
        drop = np.asarray(ids)
        if drop.ndim != 1 or (len(drop) and not np.issubdtype(drop.dtype, np.integer)):
            raise ImtextError(
                f"ids to remove must be a 1-D integer array, got shape {drop.shape} dtype {drop.dtype}"
            )
        drop = drop.astype(np.int64)
        removed = 0
        for pos, index in enumerate(self._shards):
            held = self._ids_of(pos)
            hit = np.isin(held, drop)
            if not hit.any():
                continue
            try:
                removed += int(index.remove_ids(np.ascontiguousarray(held[hit])))
            except RuntimeError as e:
                raise ImtextError(
                    f"index {self._factory!r} cannot remove vectors ({fx.first_line(e)}): rebuild without them"
                ) from None
            self._set_ids(pos, held[~hit])
        return removed
