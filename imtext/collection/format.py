"""The collection format: one reader of INDEX_DIR's metadata, used by the CLI, the builder and Serve alike.

Layout of INDEX_DIR (written by `imtext index build`, grown by `imtext index add`):

    collection.json    format_version, model_fingerprint, model_dir, data, splits, created, counts, factory,
                       shards, files (sha256 of the two parquet tables), image_roots (the folders its
                       image files lie in: nothing outside them is ever read or served as its image)
    images/            ShardedIndex folder; ids = images.parquet `id`
    images.parquet     id, image_id, image_path, caption (the image's first caption)
    captions/          ShardedIndex folder; ids = captions.parquet `id`
    captions.parquet   id, caption_id, caption, image_id, image_path, image (the image's id)
    embeddings/        images-*.parquet, captions-*.parquet (id, vector)

`read_meta` reads everything but the vectors: the facts, the two tables (checked against their checksums,
schemas and the index manifests) and the model check. The FAISS shards are opened by whoever needs them
(`Collection.load` here, one shard per replica in Serve).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from imtext.errors import ImtextError
from imtext.index.manifest import REBUILD, read_manifest, read_versioned_json, sha256_file

FORMAT_VERSION = 1
INFO = "collection.json"
KINDS = ("images", "captions")
IMAGES_PARQUET, CAPTIONS_PARQUET = "images.parquet", "captions.parquet"

IMAGES_SCHEMA = pa.schema(
    [("id", pa.int64()), ("image_id", pa.string()), ("image_path", pa.string()), ("caption", pa.string())]
)
CAPTIONS_SCHEMA = pa.schema(
    [
        ("id", pa.int64()),
        ("caption_id", pa.string()),
        ("caption", pa.string()),
        ("image_id", pa.string()),
        ("image_path", pa.string()),
        ("image", pa.int64()),
    ]
)
TABLES = {"images": (IMAGES_PARQUET, IMAGES_SCHEMA), "captions": (CAPTIONS_PARQUET, CAPTIONS_SCHEMA)}


def image_roots_of(paths: Any, base: list[str]) -> list[str]:
    """`base` (a data source's image folders) plus the folder of every path in `paths` outside them (a
    manifest may list photos elsewhere on purpose), all absolute with links resolved, sorted."""
    roots = [str(Path(r).resolve()) for r in base]
    extra = set()
    for p in dict.fromkeys(paths):
        real = Path(p).resolve()
        if not any(real.is_relative_to(r) for r in roots):
            extra.add(str(real.parent))
    return sorted(set(roots) | extra)


def confined_path(path: str | os.PathLike, roots: list[str] | None) -> Path | None:
    """The real file behind `path` (links resolved) when it exists and lies within one of `roots`; None
    otherwise. `roots` None (a collection written before image_roots were recorded) skips the roots check."""
    try:
        real = Path(path).resolve(strict=True)
    except (OSError, RuntimeError, ValueError):
        return None
    if not real.is_file():
        return None
    if roots is not None and not any(real.is_relative_to(r) for r in roots):
        return None
    return real


class ModelMismatch(ImtextError):
    """The collection was built by another model: its vectors live in another space."""


class TooManyShards(ImtextError):
    """The collection has more shards than the running app has shard replicas (a redeploy is needed)."""


def read_info(folder: str | os.PathLike) -> dict[str, Any]:
    """collection.json, checked enough that later code can trust its keys."""
    return read_versioned_json(
        folder,
        INFO,
        kind="collection",
        version=FORMAT_VERSION,
        missing=f"{folder} is not an imtext collection ({INFO} is missing)",
        required=("model_fingerprint", "model_dir", "counts", "factory", "shards"),
    )


def check_model(folder: str | os.PathLike, info: dict[str, Any], model_fingerprint: str | None) -> None:
    """Refuse a model other than the one that built the collection (ModelMismatch); None skips the check."""
    if model_fingerprint is None or model_fingerprint == info["model_fingerprint"]:
        return
    raise ModelMismatch(
        f"the collection in {folder} was built with model {info['model_fingerprint']} ({info['model_dir']}), "
        f"but the model given is {model_fingerprint}: its vectors live in another space and cannot share an "
        f"index. Use the model it was built with, or rebuild it with this one (`imtext index build --model ...`)"
    )


def read_table(folder: str | os.PathLike, name: str, schema: pa.Schema, sha: str | None) -> pa.Table:
    """One metadata table of a collection, checked against its checksum and schema."""
    path = Path(folder) / name
    if not path.is_file():
        raise ImtextError(f"{path} is missing: {REBUILD}")
    if sha is not None and sha256_file(path) != sha:
        raise ImtextError(
            f"{path} is corrupt or from another build (its sha256 differs from {INFO}): {REBUILD}"
        )
    try:
        table = pq.read_table(path)
    except Exception as e:  # pyarrow raises several types for a damaged file
        raise ImtextError(f"cannot read {path} ({e}): {REBUILD}") from None
    if not set(schema.names) <= set(table.column_names):
        raise ImtextError(
            f"{path} lacks columns {sorted(set(schema.names) - set(table.column_names))}: {REBUILD}"
        )
    return table.select(schema.names)


class Rows:
    """One metadata table with a unique id column, looked up by id in O(log n) without a Python dict."""

    def __init__(self, table: pa.Table, what: str, where: str = "") -> None:
        self.table = table
        self.what = what
        self.where = where
        ids = table.column("id").to_numpy().astype(np.int64)
        self._order = np.argsort(ids, kind="stable")
        self._sorted = ids[self._order]
        if len(ids) > 1 and not (np.diff(self._sorted) > 0).all():
            raise ImtextError(f"{where}: {what} ids are not unique: {REBUILD}")

    def __len__(self) -> int:
        return len(self._sorted)

    @property
    def ids(self) -> np.ndarray:
        """Every id, ascending."""
        return self._sorted

    def positions(self, ids: Any) -> np.ndarray:
        """Row positions of `ids`; -1 for an id the table lacks."""
        wanted = np.asarray(ids, dtype=np.int64).reshape(-1)
        if not len(self._sorted):
            return np.full(len(wanted), -1, dtype=np.int64)
        at = np.minimum(np.searchsorted(self._sorted, wanted), len(self._sorted) - 1)
        return np.where(self._sorted[at] == wanted, self._order[at], -1)

    def rows(self, ids: Any) -> list[dict[str, Any]]:
        """Rows for `ids`, in order. Negative ids (the padding of a search result shorter than k) are
        skipped; an unknown id is an ImtextError (the index and its metadata disagree)."""
        wanted = np.asarray(ids, dtype=np.int64).reshape(-1)
        wanted = wanted[wanted >= 0]
        pos = self.positions(wanted)
        if (pos < 0).any():
            raise ImtextError(
                f"unknown {self.what} id(s) {wanted[pos < 0][:5].tolist()} in {self.where}: its metadata lacks "
                f"them (if its index returned them, {REBUILD})"
            )
        return self.table.take(pa.array(pos, pa.int64())).to_pylist()

    def get(self, id_: int) -> dict[str, Any] | None:
        """The row of one id, or None (also for an id no int64 can hold)."""
        if not -(2**63) <= int(id_) < 2**63:
            return None
        pos = int(self.positions([id_])[0])
        return None if pos < 0 else self.table.slice(pos, 1).to_pylist()[0]


def example_queries(images: pa.Table, n: int) -> list[str]:
    """The first caption of n images spread evenly over the collection (the page's example queries)."""
    if n < 1 or len(images) == 0:
        return []
    picks = np.unique(np.linspace(0, len(images) - 1, num=min(n, len(images))).round().astype(int))
    return list(dict.fromkeys(images.column("caption").take(pa.array(picks)).to_pylist()))


def stored_or_first_captions(info: dict, images: pa.Table, n: int) -> list[str]:
    """The page's n example queries: those the data source proposed when the collection was built (kept in
    collection.json), then the first captions of images spread over the collection, up to n."""
    stored = [str(q) for q in info.get("examples") or [] if str(q).strip()][:n]
    if len(stored) == n:
        return stored
    return list(dict.fromkeys([*stored, *example_queries(images, n)]))[:n]


def collection_version(index_dir: str | os.PathLike) -> str:
    """A short hash of collection.json: a folder rebuilt or grown in place gets a new one (the file records
    when it was made and the checksums of its tables), so a reader never mistakes it for what it holds."""
    path = Path(index_dir) / INFO
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    except OSError as e:
        raise ImtextError(f"cannot read {path} ({e.strerror}): {REBUILD}") from None


def shard_counts(index_dir: str | os.PathLike) -> dict[str, int]:
    """Shard files per kind, read from the two manifests (cheap: no FAISS file is opened)."""
    folder = Path(index_dir)
    return {kind: len(read_manifest(folder / kind)["shards"]) for kind in KINDS}


@dataclass(frozen=True)
class CollectionMeta:
    """Everything of a collection but its vectors. Frozen: a Serve request captures one and keeps using
    it, so an index swap in the middle of a request never mixes two collections."""

    dir: str
    version: str  # changes when the folder is rebuilt or grown in place (`imtext index add`)
    info: dict[str, Any]
    images: Rows
    captions: Rows
    shards: dict[str, int]  # shard files per kind (from the manifests)
    factory: dict[str, str]
    examples: list[str] = field(default_factory=list)

    @property
    def model_fingerprint(self) -> str:
        return str(self.info["model_fingerprint"])

    @property
    def model_dir(self) -> Path:
        return Path(self.info["model_dir"])

    @property
    def image_roots(self) -> list[str] | None:
        """The folders this collection's image files must lie in (None for a collection built before they
        were recorded)."""
        roots = self.info.get("image_roots")
        return [str(r) for r in roots] if isinstance(roots, list) else None

    def index_info(self) -> dict[str, Any]:
        """Count, shards and factory per kind (the `index` part of GET /info)."""
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
        return {key: self.info.get(key) for key in ("created", "updated", "splits", "counts")}


def read_meta(
    index_dir: str | os.PathLike,
    model_fingerprint: str | None = None,
    max_shards: int | None = None,
    examples: int = 6,
) -> CollectionMeta:
    """Read INDEX_DIR's facts and tables, checked against each other and the index manifests.

    Refuses a collection another model built (ModelMismatch, when `model_fingerprint` is given), one with
    more shards than `max_shards` replicas can hold (TooManyShards), and a damaged or malformed one
    (ImtextError, whatever is wrong in its files: a value of the wrong type is not a traceback)."""
    try:
        folder = Path(index_dir).resolve()
    except (OSError, RuntimeError, ValueError) as e:
        raise ImtextError(f"{index_dir!r} is not a usable folder name ({e})") from None
    try:
        return _read_meta(folder, model_fingerprint, max_shards, examples)
    except ImtextError:
        raise
    except (TypeError, AttributeError, KeyError, ValueError, IndexError, pa.ArrowException) as e:
        raise ImtextError(
            f"{folder} is not a well-formed imtext collection ({type(e).__name__}: {e}): {REBUILD}"
        ) from None


def _read_meta(
    folder: Path, model_fingerprint: str | None, max_shards: int | None, examples: int
) -> CollectionMeta:
    info = read_info(folder)
    version = collection_version(folder)
    check_model(folder, info, model_fingerprint)
    manifests = {kind: read_manifest(folder / kind) for kind in KINDS}
    for kind, m in manifests.items():
        if m["model_fingerprint"] != info["model_fingerprint"]:
            raise ImtextError(f"{folder / kind} was built by another model than {INFO} says: {REBUILD}")
    shards = {kind: len(m["shards"]) for kind, m in manifests.items()}
    if max_shards is not None and max(shards.values()) > max_shards:
        raise TooManyShards(
            f"the collection in {folder} has {max(shards.values())} shards but this app runs {max_shards} shard "
            f"replicas; redeploy with its index_dir (`serve deploy` / `imtext serve`) to add replicas"
        )
    files = info.get("files") or {}
    if not isinstance(files, dict) or not isinstance(info["counts"], dict):
        raise ImtextError(f"{folder / INFO} has malformed files or counts entries: {REBUILD}")
    tables = {
        kind: read_table(folder, name, schema, files.get(name)) for kind, (name, schema) in TABLES.items()
    }
    counts = info["counts"]
    for kind, table in tables.items():
        total = manifests[kind]["total"]
        if not len(table) == total == counts.get(kind):
            raise ImtextError(
                f"{folder} is inconsistent: {kind} has {len(table)} metadata rows, {total} indexed vectors "
                f"and {INFO} says {counts.get(kind)}: {REBUILD}"
            )
    return CollectionMeta(
        dir=str(folder),
        version=version,
        info=info,
        images=Rows(tables["images"], "image", str(folder)),
        captions=Rows(tables["captions"], "caption", str(folder)),
        shards=shards,
        factory={kind: str(m["factory"]) for kind, m in manifests.items()},
        examples=stored_or_first_captions(info, tables["images"], examples),
    )
