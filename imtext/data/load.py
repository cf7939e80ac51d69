"""`KIND:PATH` specs -> the pairs table. The one entry point the trainer, the CLI and the tests use."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa

from imtext.data import coco, flickr8k, karpathy, manifest, synth
from imtext.data.pairs import RawPairs, finalize
from imtext.errors import DataError

KINDS = {
    "flickr8k": "flickr8k:DIR (Flickr8k.token.txt, Flickr_8k.*Images.txt, Flicker8k_Dataset/)",
    "karpathy": "karpathy:FILE.json[,IMAGES_DIR] (dataset_flickr8k/flickr30k/coco.json)",
    "coco": "coco:DIR (annotations/captions_{train,val}2017.json, train2017/, val2017/)",
    "manifest": "manifest:FILE.csv|FILE.parquet (columns image_path, caption[, split])",
    "synth": "synth:DIR (made by `imtext data synth --out DIR`)",
}


def _kinds_help() -> str:
    return "; ".join(KINDS.values())


def parse_spec(spec: str) -> tuple[str, str]:
    """'coco:/data/coco' -> ('coco', '/data/coco'). Kind is case-insensitive; the path keeps any colons."""
    kind, sep, path = spec.partition(":")
    kind = kind.strip().lower()
    if not sep:
        raise DataError(f"data spec {spec!r} has no KIND: prefix; use one of: {_kinds_help()}")
    if kind not in KINDS:
        raise DataError(f"unknown data kind {kind!r} in {spec!r}; known kinds: {_kinds_help()}")
    if not path.strip():
        raise DataError(f"data spec {spec!r} has no path; expected {KINDS[kind]}")
    return kind, path.strip()


def image_roots(spec: str) -> list[str]:
    """The folder(s) a source's images live under by its layout, absolute with links resolved: where a
    collection built from it may read (and a server may serve) image files. A manifest's is its own folder
    (paths outside it are the manifest author's explicit choice; `imtext.collection` records those too)."""
    kind, path = parse_spec(spec)
    if kind == "karpathy":
        json_path, images = karpathy.split_spec(path)
        root = images if images is not None else json_path.parent
    elif kind == "manifest":
        root = Path(path).expanduser().parent
    else:
        root = Path(path).expanduser()
    return [str(root.resolve())]


def load_pairs(spec: str, splits: list[str] | None = None, check_images: bool = True) -> pa.Table:
    """Read a data source into a PAIRS_SCHEMA table (one row per image-caption pair).

    `splits` picks splits by name (aliases such as val2017, dev, restval are accepted); None keeps all.
    With `check_images`, rows whose image file is missing are skipped with a warning (existence only:
    decoding is left to `load_image`). Anything skipped is reported on stderr with a count.
    """
    kind, path = parse_spec(spec)
    raw: RawPairs
    try:
        if kind == "flickr8k":
            raw = flickr8k.read(Path(path).expanduser(), spec)
        elif kind == "karpathy":
            raw = karpathy.read(path, spec)
        elif kind == "coco":
            raw = coco.read(Path(path).expanduser(), spec, splits)
        elif kind == "manifest":
            raw = manifest.read(Path(path).expanduser(), spec)
        else:
            raw = synth.read(Path(path).expanduser(), spec)
        return finalize(raw, splits, check_images)
    except DataError:
        raise
    except (TypeError, AttributeError, KeyError, IndexError, ValueError, RecursionError) as e:
        # a malformed annotation file the checks above did not foresee: still the file's fault, not a bug
        raise DataError(f"{spec}: malformed annotation data ({type(e).__name__}: {e})") from None
    except OSError as e:  # unreadable annotation file (permissions, a folder where a file should be)
        raise DataError(f"{spec}: cannot read {e.filename or 'the data'} ({e.strerror or e})") from None


def suggested_queries(spec: str, pairs: pa.Table, n: int = 6) -> list[str]:
    """Example searches a data source proposes for a collection of `pairs` (its own rows): the synthetic world
    knows every scene, so it offers queries with several answers (imtext.data.synth.suggest_queries); other
    sources propose none, and a collection then offers the first captions of images spread over it."""
    kind, path = parse_spec(spec)
    if kind != "synth":
        return []
    return synth.suggest_queries(
        Path(path).expanduser(), pairs.column("image_id").to_pylist(), pairs.column("caption").to_pylist(), n
    )
