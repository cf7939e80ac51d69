"""A built collection opened for searching from Python or the shell: its metadata (imtext.collection.format)
plus both FAISS indexes. Serve opens the same files differently: one shard per replica."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from imtext.collection.format import CollectionMeta, read_meta, stored_or_first_captions
from imtext.errors import ImtextError
from imtext.index import ShardedIndex


class Collection:
    """`.images` and `.captions` are ShardedIndexes whose ids are the `id` columns of images.parquet and
    captions.parquet; `.meta` holds those tables and the collection's facts."""

    def __init__(self, meta: CollectionMeta, images: ShardedIndex, captions: ShardedIndex) -> None:
        """Use Collection.load."""
        self.meta = meta
        self.images = images
        self.captions = captions

    @classmethod
    def load(
        cls,
        folder: str | os.PathLike,
        shard: int | None = None,
        model_fingerprint: str | None = None,
        mmap: bool = False,
    ) -> Collection:
        """Open INDEX_DIR: both indexes (checksums verified) and their metadata tables.

        shard=i loads only shard i of each index (the metadata stays whole, it is small). With
        model_fingerprint, a collection built by another model is refused (ModelMismatch).
        """
        meta = read_meta(folder, model_fingerprint)
        fp = meta.model_fingerprint
        root = Path(meta.dir)
        images = ShardedIndex.load(root / "images", shard=shard, model_fingerprint=fp, mmap=mmap)
        captions = ShardedIndex.load(root / "captions", shard=shard, model_fingerprint=fp, mmap=mmap)
        return cls(meta, images, captions)

    @property
    def folder(self) -> Path:
        return Path(self.meta.dir)

    @property
    def info(self) -> dict[str, Any]:
        return self.meta.info

    @property
    def model_fingerprint(self) -> str:
        return self.meta.model_fingerprint

    @property
    def model_dir(self) -> Path:
        return self.meta.model_dir

    # ---- metadata lookups ----------------------------------------------------------------------

    def image_rows(self, ids: Any) -> list[dict[str, Any]]:
        """images.parquet rows for `ids`, in that order; negative ids (search padding) are skipped, an
        unknown id is an ImtextError."""
        return self.meta.images.rows(ids)

    def caption_rows(self, ids: Any) -> list[dict[str, Any]]:
        """captions.parquet rows for `ids`, in that order (negative ids skipped, unknown ids refused)."""
        return self.meta.captions.rows(ids)

    def image_path(self, id: int) -> Path:
        """The file of image `id`."""
        if isinstance(id, bool) or not isinstance(id, (int, np.integer)) or id < 0:
            raise ImtextError(f"unknown image id {id!r} in {self.folder}")
        return Path(self.image_rows([int(id)])[0]["image_path"])

    def examples(self, n: int = 5) -> list[str]:
        """Example queries: those the data source proposed (the synthetic world's), else the first caption
        of n images spread evenly over the collection."""
        return stored_or_first_captions(self.info, self.meta.images.table, n)

    # ---- searching -----------------------------------------------------------------------------

    def search_images(self, queries: np.ndarray, k: int) -> list[list[dict[str, Any]]]:
        """Top-k images per query vector: rows of images.parquet with `rank` (1-based) and `score`."""
        return self._search(self.images, self.image_rows, queries, k)

    def search_captions(self, queries: np.ndarray, k: int) -> list[list[dict[str, Any]]]:
        """Top-k captions per query vector: rows of captions.parquet with `rank` and `score`."""
        return self._search(self.captions, self.caption_rows, queries, k)

    @staticmethod
    def _search(index: ShardedIndex, rows_of, queries: np.ndarray, k: int) -> list[list[dict[str, Any]]]:
        scores, ids = index.search(queries, k)
        out = []
        for s_row, i_row in zip(scores, ids):
            rows = rows_of(i_row)
            out.append(
                [{"rank": r + 1, "score": float(s), **row} for r, (s, row) in enumerate(zip(s_row, rows))]
            )
        return out

    def __repr__(self) -> str:
        c = self.info["counts"]
        return (
            f"Collection({str(self.folder)!r}, images={c['images']}, captions={c['captions']}, "
            f"factory={self.info['factory']!r}, model={self.model_fingerprint})"
        )
