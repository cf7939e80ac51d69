"""What the HTTP ingress holds of a collection: its metadata tables and facts, never its vectors.

The ingress turns the ids that come back from the shard replicas into captions, image ids and image files.
Those tables are small per row (a few strings), so one copy per ingress replica is fine, while the FAISS
shards (the big part) live one per IndexShard replica. Reading a collection here also checks that it can
be swapped in: the model that built it and its shard counts.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from imtext.collection import (
    CAPTIONS_PARQUET,
    CAPTIONS_SCHEMA,
    IMAGES_PARQUET,
    IMAGES_SCHEMA,
    read_info,
    read_table,
)
from imtext.errors import ImtextError
from imtext.index.manifest import read_manifest

KINDS = ("images", "captions")
REBUILD = "rebuild it with `imtext index build`"


class ModelMismatch(ImtextError):
    """The collection was built by another model: its vectors live in another space."""


class TooManyShards(ImtextError):
    """The collection has more shards than the running app has shard replicas (a redeploy is needed)."""


class Rows:
    """One metadata table with a sorted id column, looked up by id in O(log n) without a Python dict."""

    def __init__(self, table: pa.Table, what: str) -> None:
        self.table = table
        self.what = what
        ids = table.column("id").to_numpy().astype(np.int64)
        self._order = np.argsort(ids, kind="stable")
        self._sorted = ids[self._order]

    def __len__(self) -> int:
        return len(self._sorted)

    def positions(self, ids: Any) -> np.ndarray:
        """Row positions of `ids`; -1 for an id the table lacks."""
        wanted = np.asarray(ids, dtype=np.int64).reshape(-1)
        if not len(self._sorted):
            return np.full(len(wanted), -1, dtype=np.int64)
        at = np.minimum(np.searchsorted(self._sorted, wanted), len(self._sorted) - 1)
        return np.where(self._sorted[at] == wanted, self._order[at], -1)

    def rows(self, ids: Any) -> list[dict[str, Any]]:
        """Rows for `ids` in order; an unknown id is an error (the shards and tables disagree)."""
        pos = self.positions(ids)
        if (pos < 0).any():
            bad = np.asarray(ids).reshape(-1)[pos < 0][:5].tolist()
            raise ImtextError(
                f"the index returned {self.what} id(s) {bad} that its metadata lacks: {REBUILD}"
            )
        return self.table.take(pa.array(pos, pa.int64())).to_pylist()

    def get(self, id_: int) -> dict[str, Any] | None:
        pos = int(self.positions([id_])[0])
        return None if pos < 0 else self.table.slice(pos, 1).to_pylist()[0]


@dataclass(frozen=True)
class CollectionMeta:
    """One collection as the ingress sees it. Frozen: a request captures one and keeps using it, so an
    index swap in the middle of a request never mixes two collections."""

    dir: str
    version: str  # changes when the folder is rebuilt or grown in place (`imtext index add`)
    info: dict[str, Any]
    images: Rows
    captions: Rows
    shards: dict[str, int]  # shard files per kind (from the manifests)
    factory: dict[str, str]
    examples: list[str] = field(default_factory=list)

    def index_info(self) -> dict[str, Any]:
        """The `index` part of GET /info."""
        return {
            kind: {
                "count": len(getattr(self, kind)),
                "shards": self.shards[kind],
                "factory": self.factory[kind],
            }
            for kind in KINDS
        }

    def collection_info(self) -> dict[str, Any]:
        """A few facts that tell two collections apart (what /info shows after a swap)."""
        return {
            "created": self.info.get("created"),
            "updated": self.info.get("updated"),
            "splits": self.info.get("splits"),
            "counts": self.info.get("counts"),
        }


def _examples(images: pa.Table, n: int) -> list[str]:
    """The first caption of n images spread evenly over the collection (the page's example queries)."""
    if n < 1 or len(images) == 0:
        return []
    picks = np.unique(np.linspace(0, len(images) - 1, num=min(n, len(images))).round().astype(int))
    return list(dict.fromkeys(images.column("caption").take(pa.array(picks)).to_pylist()))


def collection_version(index_dir: str | Path) -> str:
    """A short hash of collection.json: a folder rebuilt or grown in place gets a new one (the file records
    when it was made and the checksums of its tables), so a replica never mistakes it for what it holds."""
    path = Path(index_dir) / "collection.json"
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    except OSError as e:
        raise ImtextError(f"cannot read {path} ({e.strerror}): {REBUILD}") from None


def shard_counts(index_dir: str | Path) -> dict[str, int]:
    """Shard files per kind, read from the two manifests (cheap: no FAISS file is opened)."""
    folder = Path(index_dir)
    return {kind: len(read_manifest(folder / kind)["shards"]) for kind in KINDS}


def read_meta(
    index_dir: str | Path,
    model_fingerprint: str | None = None,
    max_shards: int | None = None,
    examples: int = 6,
) -> CollectionMeta:
    """Read INDEX_DIR's facts and tables, refusing a collection another model built (ModelMismatch) or one
    with more shards than `max_shards` replicas can hold (TooManyShards)."""
    folder = Path(index_dir).resolve()
    version = collection_version(folder) if folder.is_dir() else ""
    info = read_info(folder)
    if model_fingerprint is not None and info["model_fingerprint"] != model_fingerprint:
        raise ModelMismatch(
            f"the collection in {folder} was built by model {info['model_fingerprint']}, but this app serves "
            f"model {model_fingerprint}: its vectors live in another space. Build it with this model "
            f"(`imtext index build --model ...`) or serve the model it was built with"
        )
    manifests = {kind: read_manifest(folder / kind) for kind in KINDS}
    for kind, m in manifests.items():
        if m["model_fingerprint"] != info["model_fingerprint"]:
            raise ImtextError(
                f"{folder / kind} was built by another model than collection.json says: {REBUILD}"
            )
    shards = {kind: len(m["shards"]) for kind, m in manifests.items()}
    if max_shards is not None and max(shards.values()) > max_shards:
        raise TooManyShards(
            f"the collection in {folder} has {max(shards.values())} shards but this app runs {max_shards} shard "
            f"replicas; redeploy with its index_dir (`serve deploy` / `imtext serve`) to add replicas"
        )
    files = info.get("files", {})
    images = read_table(folder, IMAGES_PARQUET, IMAGES_SCHEMA, files.get(IMAGES_PARQUET))
    captions = read_table(folder, CAPTIONS_PARQUET, CAPTIONS_SCHEMA, files.get(CAPTIONS_PARQUET))
    for kind, table in (("images", images), ("captions", captions)):
        if len(table) != manifests[kind]["total"]:
            raise ImtextError(
                f"{folder} is inconsistent: {len(table)} {kind} rows but {manifests[kind]['total']} indexed "
                f"vectors: {REBUILD}"
            )
    return CollectionMeta(
        dir=str(folder),
        version=version,
        info=info,
        images=Rows(images, "image"),
        captions=Rows(captions, "caption"),
        shards=shards,
        factory={kind: str(m["factory"]) for kind, m in manifests.items()},
        examples=_examples(images, examples),
    )
