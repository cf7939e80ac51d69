"""MS-COCO captions in the official layout.

    DIR/annotations/captions_train2017.json   DIR/train2017/*.jpg   -> split "train"
    DIR/annotations/captions_val2017.json     DIR/val2017/*.jpg     -> split "val"

COCO publishes no captions for its test images, so "val" is the held-out set: train on "train", report on
"val". For a split whose 2017 file is absent the 2014 one is used (captions_train2014.json with train2014/);
the two releases hold the same photos, so they are never mixed. "train2017", "val2017" (and the 2014 names)
are accepted as split names. image_id is the COCO id, caption_id the annotation id.
"""

from __future__ import annotations

import json
from pathlib import Path

from imtext.data.pairs import RawPairs, caption_text, check_requested, image_name, requested_splits
from imtext.data.report import warn
from imtext.errors import DataError

SPLITS = ("train", "val")
YEARS = ("2017", "2014")


def _key(value: object, where: str) -> object:
    """An image id as a dict key: COCO's are integers; a list or object there is a malformed file."""
    if value is None or isinstance(value, (int, str)):
        return value
    raise DataError(f"{where}: image id {value!r:.80} is not an integer or a string")


def annotation_files(root: Path) -> dict[str, tuple[Path, Path]]:
    """split -> (captions JSON, image folder) for the splits present, preferring 2017 over 2014."""
    found = {}
    for split in SPLITS:
        for year in YEARS:
            ann = root / "annotations" / f"captions_{split}{year}.json"
            if ann.is_file():
                found[split] = (ann, root / f"{split}{year}")
                break
    return found


def read(root: Path, source: str, splits: list[str] | str | None) -> RawPairs:
    """Parse only the requested splits' files (the full train JSON is large)."""
    files = annotation_files(root)
    if not files:
        expected = root / "annotations" / "captions_train2017.json"
        raise DataError(f"{source}: COCO captions not found: expected {expected} (and captions_val2017.json)")
    wanted = requested_splits(splits)
    check_requested(wanted, list(files), source)
    raw = RawPairs(source=source)
    orphans = 0
    for split, (ann_path, image_dir) in files.items():
        if wanted is not None and split not in wanted:
            continue
        where = f"{source}: {ann_path}"
        try:
            data = json.loads(ann_path.read_text(encoding="utf-8"))
            images = {
                _key(img["id"], where): image_name(img["file_name"], where, f"image {img['id']!r} file_name")
                for img in data["images"]
            }
            anns = data["annotations"]
            if not isinstance(anns, list) or not all(isinstance(a, dict) for a in anns):
                raise TypeError("'annotations' is not a list of objects")
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError, KeyError, TypeError) as e:
            raise DataError(
                f"{source}: {ann_path} is not a COCO captions file ({type(e).__name__}: {e})"
            ) from None
        by_image: dict[int, list[dict]] = {}
        for ann in anns:
            if _key(ann.get("image_id"), where) in images:
                by_image.setdefault(ann["image_id"], []).append(ann)
            else:
                orphans += 1
        for image_id, fname in images.items():
            caps = by_image.get(image_id)
            if not caps:
                raw.uncaptioned += 1
                continue
            for j, ann in enumerate(caps):
                cid = str(ann["id"]) if "id" in ann else f"{image_id}#{j}"
                caption = caption_text(ann.get("caption"), where, f"the caption of annotation {cid}")
                raw.add(str(image_id), str(image_dir / fname), cid, caption, split)
    if orphans:
        warn(f"{source}: skipped {orphans} caption(s) whose image_id is not among the images")
    return raw
