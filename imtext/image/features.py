"""Precomputed backbone features: run a frozen backbone once per image and keep the vectors in parquet.

With a frozen backbone (image.finetune=false) every epoch would recompute the same CNN outputs; computing
them once turns training into MLP-only work over a (num_images, dim) matrix (backbone `none`).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

import imtext
from imtext.atomic import atomic_path, refuse_foreign
from imtext.errors import ImtextError
from imtext.image.backbones import build_backbone, image_transform

_META_KEYS = ("backbone", "weights", "image_size", "dim", "count", "imtext_version")
_INT_KEYS = ("image_size", "dim", "count")


def compute_features(
    pairs: pa.Table,
    backbone: str,
    weights: str,
    image_size: int,
    out_path: str | os.PathLike,
    batch_size: int = 32,
    num_threads: int | None = None,
    progress: bool = True,
) -> Path:
    """Pool the frozen backbone over each unique image_id of `pairs`; write `out_path` (parquet), atomically.

    Columns: image_id (string), feature (fixed_size_list<float32>[dim]); schema metadata: backbone,
    weights, image_size, dim, count, imtext_version. Images are read in eval mode with the eval transform.
    `num_threads` caps torch's intra-op threads for the run (restored afterwards).
    """
    if backbone == "none":
        raise ImtextError("compute_features needs a real backbone (image.backbone), not 'none'")
    if batch_size < 1:
        raise ImtextError("batch_size must be >= 1")
    refuse_foreign(out_path, is_features_file(out_path), "an imtext features file")  # before the long part
    ids, paths = _unique_images(pairs)
    model = build_backbone(backbone, weights, image_size).eval()
    transform = image_transform(backbone, image_size, train=False)
    load = _image_loader()

    old_threads = torch.get_num_threads()
    if num_threads:
        torch.set_num_threads(num_threads)
    features = np.empty((len(ids), model.out_dim), dtype=np.float32)
    try:
        with _progress(progress, len(ids), f"features {backbone}") as advance, torch.inference_mode():
            for start in range(0, len(ids), batch_size):
                stop = min(start + batch_size, len(ids))
                pixels = torch.stack([transform(load(p)) for p in paths[start:stop]])
                features[start:stop] = model(pixels).float().numpy()
                advance(stop - start)
    finally:
        torch.set_num_threads(old_threads)

    dim = model.out_dim
    table = pa.table(
        {
            "image_id": pa.array(ids, pa.string()),
            "feature": pa.FixedSizeListArray.from_arrays(pa.array(features.reshape(-1), pa.float32()), dim),
        }
    )
    meta = {
        "backbone": backbone,
        "weights": str(weights),
        "image_size": str(image_size),
        "dim": str(dim),
        "count": str(len(ids)),
        "imtext_version": imtext.__version__,
    }
    table = table.replace_schema_metadata({k: v.encode() for k, v in meta.items()})
    out_path = Path(out_path)
    with atomic_path(out_path) as tmp:
        pq.write_table(table, tmp)
    return out_path


def is_features_file(path: str | os.PathLike) -> bool:
    """True for a parquet file that compute_features wrote (what `imtext features --out` may replace)."""
    try:
        meta = pq.read_schema(path).metadata or {}
    except Exception:  # not a file, not parquet
        return False
    return b"imtext_version" in meta and b"backbone" in meta


def load_features(path: str | os.PathLike) -> tuple[list[str], np.ndarray, dict[str, Any]]:
    """Read a file written by compute_features: (image ids, float32 (N, dim) matrix, metadata)."""
    path = Path(path)
    if not path.is_file():
        raise ImtextError(f"features file not found: {path}; write it with `imtext features`")
    try:
        table = pq.read_table(path)
    except Exception as e:
        raise ImtextError(f"{path} is not a readable parquet file ({e}); recompute the features") from None
    if "image_id" not in table.column_names or "feature" not in table.column_names:
        raise ImtextError(f"{path} lacks the image_id/feature columns; recompute the features")
    raw = table.schema.metadata or {}
    meta: dict[str, Any] = {k.decode(): v.decode() for k, v in raw.items() if k.decode() in _META_KEYS}
    for key in _INT_KEYS:
        if key in meta:
            meta[key] = int(meta[key])

    ids_col = table.column("image_id")
    feat_col = table.column("feature").combine_chunks()
    if ids_col.null_count or feat_col.null_count:
        raise ImtextError(f"{path} has empty rows; recompute the features")
    n = len(table)
    if pa.types.is_fixed_size_list(feat_col.type):
        dim = feat_col.type.list_size
    elif pa.types.is_list(feat_col.type) or pa.types.is_large_list(feat_col.type):
        lengths = np.asarray(feat_col.value_lengths())
        dim = int(lengths[0]) if n else int(meta.get("dim", 0))
        if n and (lengths != dim).any():
            raise ImtextError(f"{path}: feature vectors have different lengths; recompute the features")
    else:
        raise ImtextError(f"{path}: column feature is {feat_col.type}, not a list of floats")
    values = np.asarray(feat_col.flatten(), dtype=np.float32)
    matrix = values.reshape(n, dim) if n else np.zeros((0, dim), np.float32)
    if "dim" in meta and meta["dim"] != dim:
        raise ImtextError(f"{path}: metadata says dim {meta['dim']} but vectors have {dim}")
    meta.setdefault("dim", dim)
    return [str(x) for x in ids_col.to_pylist()], matrix, meta


# ---- helpers ----------------------------------------------------------------------------------------


def _unique_images(pairs: pa.Table) -> tuple[list[str], list[str]]:
    """(image_id, image_path) for each image, in order of first appearance."""
    for col in ("image_id", "image_path"):
        if col not in pairs.column_names:
            raise ImtextError(f"pairs table has no {col!r} column (has: {', '.join(pairs.column_names)})")
    seen: dict[str, str] = {}
    for image_id, image_path in zip(
        pairs.column("image_id").to_pylist(), pairs.column("image_path").to_pylist()
    ):
        if image_id is None or image_path is None:
            raise ImtextError("pairs table has a row without image_id or image_path")
        seen.setdefault(str(image_id), str(image_path))
    if not seen:
        raise ImtextError("pairs table is empty: no images to compute features for")
    return list(seen), list(seen.values())


def _image_loader() -> Callable[[str], Any]:
    """imtext.data's load_image (EXIF-upright RGB, DataError naming the file) when present, else plain PIL."""
    try:
        from imtext.data.images import load_image
    except ImportError:
        return _load_image
    return load_image


def _load_image(path: str):
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except FileNotFoundError:
        raise ImtextError(f"image not found: {path}") from None
    except (UnidentifiedImageError, OSError) as e:
        raise ImtextError(f"cannot read image {path}: {e}") from None


class _progress:
    """A rich progress bar (or nothing), as a context manager that yields `advance(n)`."""

    def __init__(self, enabled: bool, total: int, label: str):
        self.enabled, self.total, self.label = enabled, total, label
        self.bar = None

    def __enter__(self) -> Callable[[int], None]:
        if not self.enabled:
            return lambda n: None
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.bar = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn()
        )
        self.bar.start()
        task = self.bar.add_task(self.label, total=self.total)
        return lambda n: self.bar.advance(task, n)

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.stop()
