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


def read_versioned_json(
    folder: str | os.PathLike, name: str, *, kind: str, version: int, missing: str, required: tuple[str, ...]
) -> dict[str, Any]:
    """folder/name as a dict, checked for its format version and `required` keys; every problem is an
    ImtextError that says what to do. `kind` names the document in messages, `missing` is the message
    for a folder without the file. Index manifests and collection files both come through here."""
    path = Path(folder) / name
    if not Path(folder).is_dir():
        raise ImtextError(f"index folder {folder} does not exist: build one with `imtext index build`")
    if not path.is_file():
        raise ImtextError(f"{missing}: {REBUILD}")
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ImtextError(f"{path} is not valid JSON ({e}): {REBUILD}") from None
    if not isinstance(document, dict):
        raise ImtextError(f"{path} is not an imtext {kind} file: {REBUILD}")
    found = document.get("format_version")
    if found != version:
        raise ImtextError(
            f"{path} has {kind} format version {found!r}, this imtext reads version {version}: {REBUILD}"
        )
    absent = [key for key in required if key not in document]
    if absent:
        raise ImtextError(f"{path} lacks {', '.join(absent)}: {REBUILD}")
    return document


def read_manifest(folder: str | os.PathLike) -> dict[str, Any]:
    """Read and sanity-check manifest.json; every problem is an ImtextError that says what to do."""
    path = Path(folder) / MANIFEST
    manifest = read_versioned_json(
        folder,
        MANIFEST,
        kind="index",
        version=FORMAT_VERSION,
        missing=f"{path} is missing, so {folder} is not a complete imtext index",
        required=("model_fingerprint", "dim", "metric", "factory", "shards", "total"),
    )
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
