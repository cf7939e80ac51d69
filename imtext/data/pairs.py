"""The one table every source becomes: one row per (image, caption), with the checks all sources share.

Sources only parse their format into `RawPairs`; `finalize` does the rest the same way for all of them:
tidy captions, drop empty ones, pick the requested splits, check that image files exist, and say what was
skipped (with counts) or stop with a DataError when nothing usable is left.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import PurePosixPath, PureWindowsPath
from typing import Any

import pyarrow as pa

from imtext.data.report import examples, warn
from imtext.errors import DataError

PAIRS_SCHEMA = pa.schema(
    [
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("image_path", pa.string(), nullable=False),  # absolute
        pa.field("caption_id", pa.string(), nullable=False),
        pa.field("caption", pa.string(), nullable=False),
        pa.field("split", pa.string(), nullable=False),
    ]
)

# Names users meet in the wild for the same roles: COCO's folder names, Flickr's "dev", Karpathy's "restval".
SPLIT_ALIASES = {
    "train2014": "train",
    "train2017": "train",
    "val2014": "val",
    "val2017": "val",
    "dev": "val",
    "valid": "val",
    "validation": "val",
    "restval": "train",
}
_ORDER = {"train": 0, "val": 1, "test": 2, "order": 3}


def canonical_split(name: str) -> str:
    name = name.strip().lower()
    return SPLIT_ALIASES.get(name, name)


def sort_splits(names: set[str] | list[str]) -> list[str]:
    """train, val, test, order first (in that order), then any others alphabetically."""
    return sorted(set(names), key=lambda s: (_ORDER.get(s, len(_ORDER)), s))


def split_names(table: pa.Table) -> list[str]:
    """The splits present in a pairs table, in the order train, val, test, order, others."""
    return sort_splits(table.column("split").unique().to_pylist())


def requested_splits(splits: list[str] | str | None) -> list[str] | None:
    """Normalise the `splits` argument: a single name is accepted, aliases map to canonical names."""
    if splits is None:
        return None
    if isinstance(splits, str):
        splits = [splits]
    return [canonical_split(s) for s in splits]


def check_requested(wanted: list[str] | None, available: list[str], source: str) -> None:
    if wanted is None:
        return
    unknown = [s for s in wanted if s not in available]
    if unknown:
        raise DataError(
            f"{source}: no split named {', '.join(map(repr, unknown))}; "
            f"available splits: {', '.join(available) or '(none)'}"
        )


@dataclass
class RawPairs:
    """What a source parsed, before the shared checks. Paths may be relative; captions untidied."""

    source: str  # the spec, for messages
    image_id: list[str] = field(default_factory=list)
    image_path: list[str] = field(default_factory=list)
    caption_id: list[str] = field(default_factory=list)
    caption: list[str | None] = field(default_factory=list)
    split: list[str] = field(default_factory=list)
    uncaptioned: int = 0  # images the source lists without any caption
    missing_hint: str = ""  # added to the error when no image file exists (e.g. "pass IMAGES_DIR")

    def add(self, image_id: str, image_path: str, caption_id: str, caption: str | None, split: str) -> None:
        self.image_id.append(image_id)
        self.image_path.append(image_path)
        self.caption_id.append(caption_id)
        self.caption.append(caption)
        self.split.append(split)


def image_name(value: Any, source: str, what: str) -> str:
    """A file name from an annotation file, checked to stay inside the images folder it is joined to: a
    non-empty string, not absolute, no `..` part, no NUL. An annotation file names photos of its dataset,
    never other files of the host (which a collection would then read, and a server serve)."""
    if not isinstance(value, str) or not value.strip():
        raise DataError(f"{source}: {what} is not a file name: {value!r}")
    if "\0" in value:
        raise DataError(f"{source}: {what} {value!r} contains a NUL character")
    posix, windows = PurePosixPath(value.replace("\\", "/")), PureWindowsPath(value)
    if posix.is_absolute() or windows.is_absolute() or windows.drive or ".." in posix.parts:
        raise DataError(
            f"{source}: {what} {value!r} points outside the images folder (absolute and '..' paths are refused)"
        )
    return value


def caption_text(value: Any, source: str, what: str) -> str | None:
    """A caption from an annotation file: a string, or None (missing; counted as empty)."""
    if value is None or isinstance(value, str):
        return value
    raise DataError(f"{source}: {what} is not text: {value!r:.80}")


def tidy_caption(text: str | None) -> str:
    """Collapse runs of whitespace (COCO captions carry stray newlines and trailing spaces)."""
    return " ".join(text.split()) if text else ""


def finalize(raw: RawPairs, splits: list[str] | str | None, check_images: bool) -> pa.Table:
    """Turn parsed rows into a PAIRS_SCHEMA table, reporting every skip; see the module docstring."""
    src = raw.source
    n = len(raw.caption)
    if n == 0:
        raise DataError(f"{src}: the source lists no captions at all")
    paths = [os.path.abspath(p) for p in raw.image_path]
    captions = [tidy_caption(c) for c in raw.caption]
    split = [canonical_split(s) for s in raw.split]
    _check_ids(raw, paths, split)

    keep = [bool(c) for c in captions]
    n_empty = n - sum(keep)
    if n_empty:
        warn(f"{src}: skipped {n_empty} empty caption(s)")
    had = {raw.image_id[i] for i in range(n)}
    kept_images = {raw.image_id[i] for i in range(n) if keep[i]}
    uncaptioned = raw.uncaptioned + len(had - kept_images)
    if uncaptioned:
        warn(f"{src}: {uncaptioned} image(s) have no caption and are left out")

    wanted = requested_splits(splits)
    check_requested(wanted, sort_splits({split[i] for i in range(n) if keep[i]}), src)
    if wanted is not None:
        wanted_set = set(wanted)
        keep = [k and s in wanted_set for k, s in zip(keep, split)]

    if check_images:
        unique_paths = sorted({paths[i] for i in range(n) if keep[i]})
        missing = [p for p in unique_paths if not os.path.isfile(p)]
        if missing:
            gone = set(missing)
            dropped = sum(1 for i in range(n) if keep[i] and paths[i] in gone)
            keep = [k and p not in gone for k, p in zip(keep, paths)]
            if not any(keep):
                hint = f" {raw.missing_hint}" if raw.missing_hint else ""
                raise DataError(
                    f"{src}: none of the {len(unique_paths)} image file(s) exist "
                    f"(e.g. {examples(missing, 2)}).{hint}"
                )
            warn(
                f"{src}: {len(missing)} image file(s) missing or not a file, their {dropped} caption(s) "
                f"skipped: {examples(missing)}"
            )

    idx = [i for i in range(n) if keep[i]]
    if not idx:
        what = f" in split(s) {', '.join(wanted)}" if wanted else ""
        raise DataError(f"{src}: no usable (image, caption) pairs{what}")
    return pa.table(
        {
            "image_id": [raw.image_id[i] for i in idx],
            "image_path": [paths[i] for i in idx],
            "caption_id": [raw.caption_id[i] for i in idx],
            "caption": [captions[i] for i in idx],
            "split": [split[i] for i in idx],
        },
        schema=PAIRS_SCHEMA,
    )


def _check_ids(raw: RawPairs, paths: list[str], split: list[str]) -> None:
    """An image id must name one file in one split (else retrieval ground truth and split hygiene break),
    and caption ids must be unique."""
    path_of: dict[str, str] = {}
    split_of: dict[str, str] = {}
    for iid, p, s in zip(raw.image_id, paths, split):
        if path_of.setdefault(iid, p) != p:
            raise DataError(f"{raw.source}: image id {iid!r} names two files: {path_of[iid]} and {p}")
        if split_of.setdefault(iid, s) != s:
            raise DataError(f"{raw.source}: image {iid!r} is in two splits: {split_of[iid]} and {s}")
    dup = [c for c, k in Counter(raw.caption_id).items() if k > 1]
    if dup:
        raise DataError(f"{raw.source}: {len(dup)} caption id(s) occur more than once: {examples(dup)}")
