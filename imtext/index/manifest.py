"""The index folder's manifest.json: what the shards are, which model made them, and their checksums.

The manifest is written last (atomically), so a folder whose manifest exists is complete; a shard file
whose checksum differs from its manifest entry is corrupt or from another build.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from imtext.atomic import write_json
from imtext.errors import ImtextError

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
METRIC = "inner_product"
REBUILD = "rebuild it with `imtext index build`"


def shard_file(number: int) -> str:
    return f"shard-{number:03d}.faiss"


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Streamed, so checking a multi-GB shard does not hold it in memory twice."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def write_manifest(folder: str | os.PathLike, manifest: dict[str, Any]) -> None:
    write_json(Path(folder) / MANIFEST, manifest)


def read_manifest(folder: str | os.PathLike) -> dict[str, Any]:
    """Read and sanity-check manifest.json; every problem is an ImtextError that says what to do."""
    path = Path(folder) / MANIFEST
    if not Path(folder).is_dir():
        raise ImtextError(f"index folder {folder} does not exist: build one with `imtext index build`")
    if not path.is_file():
        raise ImtextError(f"{path} is missing, so {folder} is not a complete imtext index: {REBUILD}")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ImtextError(f"{path} is not valid JSON ({e}): {REBUILD}") from None
    if not isinstance(manifest, dict):
        raise ImtextError(f"{path} is not an imtext index manifest: {REBUILD}")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise ImtextError(
            f"{path} has index format version {version!r}, this imtext reads version {FORMAT_VERSION}: {REBUILD}"
        )
    missing = [
        key
        for key in ("model_fingerprint", "dim", "metric", "factory", "shards", "total")
        if key not in manifest
    ]
    if missing:
        raise ImtextError(f"{path} lacks {', '.join(missing)}: {REBUILD}")
    if manifest["metric"] != METRIC:
        raise ImtextError(
            f"{path} says metric {manifest['metric']!r}; imtext indexes use {METRIC!r}: {REBUILD}"
        )
    for entry in manifest["shards"]:
        if not isinstance(entry, dict) or not {"file", "count", "sha256"} <= entry.keys():
            raise ImtextError(f"{path} has a malformed shard entry {entry!r}: {REBUILD}")
        if Path(entry["file"]).name != entry["file"]:
            raise ImtextError(
                f"{path} names shard file {entry['file']!r} outside the index folder: {REBUILD}"
            )
    return manifest


def verify_shard(folder: str | os.PathLike, entry: dict[str, Any]) -> Path:
    """Return the shard's path once it exists and matches its checksum."""
    path = Path(folder) / entry["file"]
    if not path.is_file():
        raise ImtextError(f"shard file {path} listed in {MANIFEST} is missing: {REBUILD}")
    digest = sha256_file(path)
    if digest != entry["sha256"]:
        raise ImtextError(
            f"shard file {path} is corrupt (sha256 {digest[:12]}... but {MANIFEST} says "
            f"{str(entry['sha256'])[:12]}...): {REBUILD}"
        )
    return path
