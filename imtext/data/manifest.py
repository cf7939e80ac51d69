"""Your own pairs: a CSV or Parquet manifest with columns image_path, caption and optionally split.

Relative image paths are resolved against the manifest's folder, so a folder with images and a manifest
can be moved as a whole. A missing or empty split is "train". image_id is the image's path relative to the
manifest's folder (absolute when outside it), so two files with the same name in different folders stay apart.
"""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from imtext.data.pairs import RawPairs
from imtext.data.report import warn
from imtext.errors import DataError

REQUIRED = ("image_path", "caption")


def _read_table(path: Path, source: str) -> pa.Table:
    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            # Read these as text whatever they look like ("001.jpg" must not become 1); absent ones are ignored.
            types = {c: pa.string() for c in ("image_path", "caption", "split")}
            return pacsv.read_csv(path, convert_options=pacsv.ConvertOptions(column_types=types))
        if suffix in (".parquet", ".pq"):
            return pq.read_table(path)
    except (pa.ArrowException, OSError) as e:
        raise DataError(f"{source}: cannot read manifest {path}: {e}") from None
    raise DataError(f"{source}: manifest must be a .csv or .parquet file, got {path.name}")


def read(path: Path, source: str) -> RawPairs:
    if not path.is_file():
        raise DataError(f"{source}: manifest not found: expected {path}")
    table = _read_table(path, source)
    missing = [c for c in REQUIRED if c not in table.column_names]
    if missing:
        raise DataError(
            f"{source}: manifest lacks column(s) {', '.join(missing)}; "
            f"found {', '.join(table.column_names) or '(none)'}; need image_path, caption[, split]"
        )
    try:
        col = {
            c: table.column(c).cast(pa.string()).to_pylist()
            for c in (*REQUIRED, "split")
            if c in table.column_names
        }
    except pa.ArrowException as e:  # e.g. a list or struct column where text was expected
        raise DataError(f"{source}: manifest columns must be text ({e})") from None
    splits = col.get("split") or [None] * table.num_rows
    root = path.parent.absolute()
    raw = RawPairs(source=source, missing_hint=f"Relative paths are resolved against {root}.")
    no_path = 0
    seen: dict[str, int] = {}
    for rel, caption, split in zip(col["image_path"], col["caption"], splits):
        if not rel or not rel.strip():
            no_path += 1
            continue
        full = Path(os.path.normpath(root / Path(rel.strip()).expanduser()))
        try:
            image_id = full.relative_to(root).as_posix()
        except ValueError:
            image_id = full.as_posix()
        k = seen[image_id] = seen.get(image_id, -1) + 1
        raw.add(image_id, str(full), f"{image_id}#{k}", caption, (split or "").strip() or "train")
    if no_path:
        warn(f"{source}: skipped {no_path} manifest row(s) with an empty image_path")
    return raw
