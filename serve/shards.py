"""The index shard deployment: one replica holds shard i of a collection's images and captions indexes.

Each IndexShard replica holds one shard, so an index larger than one machine's memory still serves; the
ingress merges the per-shard top-k (never holding a FAISS index itself). A replica holds the collections it
is asked for by (folder, version) -- the current one, and the old one for a while after a swap -- and loads
one it does not hold on demand, so a replica that restarts after a swap serves whatever it is asked for.

A load is checked against the version asked for (a hash of collection.json, read before and after the
files): a folder rebuilt or grown in place since the ingress read it is refused (`index_changed`), never
served under the old version's name, and a folder that is gone is reported as such (`index_missing`), both
as a clear 503 (409 during a reload). A replica whose start-up folder has vanished (removed after a swap)
still starts, holding nothing, and loads what requests ask for.
"""

import asyncio
import logging
from collections import OrderedDict
from pathlib import Path

import numpy as np
from ray import serve

from imtext.collection.format import KINDS, collection_version, shard_counts
from imtext.errors import ImtextError
from imtext.index import ShardedIndex
from imtext.index.merge import empty_result
from serve.errors import Refusal

log = logging.getLogger("imtext.serve")


def _version(index_dir: str) -> str | None:
    """The folder's version, or None when it (or its collection.json) is gone."""
    try:
        return collection_version(index_dir)
    except ImtextError:
        return None


@serve.deployment(
    ray_actor_options={"num_cpus": 0.25},
    max_ongoing_requests=64,
    max_queued_requests=256,
    health_check_period_s=2,
    max_surge_percent=100,
)
class IndexShard:
    """Shard `shard` of a collection's images and captions indexes (one replica never holds the whole
    index). Holds up to `keep` collections (the current one and the one being swapped out), keyed by
    (folder, version), and loads one it is asked for but does not hold (after a swap, or a restart)."""

    def __init__(
        self, shard: int, index_dir: str, model_fingerprint: str, keep: int = 2, mmap: bool = False
    ) -> None:
        self.shard = shard
        self.fingerprint = model_fingerprint
        self.keep = max(1, keep)
        self.mmap = mmap
        self._held: OrderedDict[tuple[str, str], dict[str, ShardedIndex | None]] = OrderedDict()
        self._loading: dict[tuple[str, str], asyncio.Future] = {}
        # ready only once the shard is in memory; a start-up folder that is gone (removed after a swap to
        # another one) leaves the replica empty but alive: requests name the collection they want
        version = _version(index_dir)
        if version is None:
            log.warning(
                "shard %d: the start-up collection %s is gone; holding nothing until a request names one",
                shard,
                index_dir,
            )
        else:
            self._held[(index_dir, version)] = self._load(index_dir, version)

    def _load(self, index_dir: str, version: str) -> dict[str, ShardedIndex | None]:
        """This shard of `index_dir`, checked to be `version` (before and after the files are read)."""
        found = _version(index_dir)
        if found is None:
            raise Refusal(
                503,
                "index_missing",
                f"The index folder {index_dir} is gone from the server; an administrator must reload "
                "an existing one (POST /admin/reload).",
            )
        if found != version:
            raise Refusal(
                503,
                "index_changed",
                f"The index in {index_dir} changed on disk since it was loaded; an administrator must "
                "reload it (POST /admin/reload).",
            )
        counts = shard_counts(index_dir)
        part = {
            kind: ShardedIndex.load(
                Path(index_dir) / kind, shard=self.shard, model_fingerprint=self.fingerprint, mmap=self.mmap
            )
            if self.shard < counts[kind]
            else None  # a smaller collection leaves this replica idle
            for kind in KINDS
        }
        if _version(index_dir) != version:  # replaced while its files were read: they may mix two versions
            raise Refusal(
                503, "index_changed", f"The index in {index_dir} changed on disk while it was loading; retry."
            )
        return part

    async def _part(self, index_dir: str, version: str) -> dict[str, ShardedIndex | None]:
        """This shard of the collection, loading it (once, off the event loop) if it is not held yet."""
        key = (index_dir, version)
        if key in self._held:
            self._held.move_to_end(key)
            return self._held[key]
        task = self._loading.get(key)
        if task is None:
            task = self._loading[key] = asyncio.ensure_future(self._load_and_keep(key))
            task.add_done_callback(lambda _t: self._loading.pop(key, None))
        # shielded: a caller that times out must not cancel the load the other callers wait on
        return await asyncio.shield(task)

    async def _load_and_keep(self, key: tuple[str, str]) -> dict[str, ShardedIndex | None]:
        part = await asyncio.to_thread(self._load, *key)
        self._held[key] = part
        while len(self._held) > self.keep:
            self._held.popitem(last=False)
        return part

    async def prepare(self, index_dir: str, version: str) -> dict[str, int]:
        """Load this shard of a collection ahead of a swap; returns the vectors held per kind."""
        part = await self._part(index_dir, version)
        return {kind: (0 if index is None else index.ntotal) for kind, index in part.items()}

    async def search(
        self, index_dir: str, version: str, kind: str, queries: np.ndarray, k: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k of this shard for `queries`: (scores, global ids), padded with id -1."""
        index = (await self._part(index_dir, version))[kind]
        if index is None:
            return empty_result(len(queries), k)
        if index.ntotal > 200_000:  # big shards search off the event loop (FAISS releases the GIL)
            return await asyncio.to_thread(index.search, queries, k)
        return index.search(queries, k)

    async def release(self, index_dir: str, version: str) -> bool:
        """Drop this shard of a swapped-out collection; True if it was held."""
        return self._held.pop((index_dir, version), None) is not None

    def held(self) -> list[list[str]]:
        return [list(key) for key in self._held]
