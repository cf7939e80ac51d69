"""Karpathy's split files (dataset_flickr8k.json, dataset_flickr30k.json, dataset_coco.json).

Spec: `karpathy:FILE.json[,IMAGES_DIR]`. Each entry of `images` has `filename`, `split` (train, val, test
or restval), `sentences` with `raw` and `sentid`, and for COCO `filepath` (train2014/val2014) and `cocoid`.
Images are found at IMAGES_DIR/[filepath/]filename; IMAGES_DIR defaults to the JSON's folder. The
"restval" images join "train", as in VSE++ and most papers that report on the 1k/5k COCO test sets.
"""

from __future__ import annotations

import json
from pathlib import Path

from imtext.data.pairs import RawPairs, caption_text, image_name
from imtext.errors import DataError


def split_spec(path: str) -> tuple[Path, Path | None]:
    """`FILE.json,IMAGES_DIR` -> (FILE.json, IMAGES_DIR); the comma after `.json` is the separator."""
    cut = path.find(".json,")
    if cut < 0:
        return Path(path).expanduser(), None
    return Path(path[: cut + 5]).expanduser(), Path(path[cut + 6 :]).expanduser()


def read(path: str, source: str) -> RawPairs:
    json_path, image_root = split_spec(path)
    if not json_path.is_file():
        raise DataError(f"{source}: Karpathy split file not found: expected {json_path}")
    try:
        data = json.loads(json_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
        raise DataError(f"{source}: {json_path} is not valid JSON ({e})") from None
    images = data.get("images") if isinstance(data, dict) else None
    if not isinstance(images, list):
        raise DataError(f"{source}: {json_path} has no 'images' list; is it a Karpathy dataset_*.json file?")
    given = image_root is not None
    image_root = image_root if given else json_path.parent
    hint = (
        ""
        if given
        else f"Images are looked up beside the JSON; pass the folder as karpathy:{json_path},IMAGES_DIR."
    )
    raw = RawPairs(source=source, missing_hint=hint)
    where = f"{source}: {json_path}"
    for k, entry in enumerate(images):
        try:
            fname = entry["filename"]
            split = entry["split"]
        except (KeyError, TypeError):
            raise DataError(f"{source}: image entry {k} lacks 'filename' or 'split'") from None
        fname = image_name(fname, where, f"image entry {k} filename")
        if not isinstance(split, str):
            raise DataError(f"{where}: image entry {k} has split {split!r:.80}, not a name")
        folder = entry.get("filepath") or ""
        if folder:
            folder = image_name(folder, where, f"image entry {k} filepath")
        image_id = str(entry["cocoid"]) if "cocoid" in entry else Path(fname).stem
        image_path = image_root / folder / fname
        sentences = entry.get("sentences") or []
        if not isinstance(sentences, list):
            raise DataError(f"{where}: image entry {k} has 'sentences' that are not a list")
        if not sentences:
            raw.uncaptioned += 1
        for j, sent in enumerate(sentences):
            if not isinstance(sent, dict):
                raise DataError(f"{where}: sentence {j} of image entry {k} is not an object")
            cid = str(sent["sentid"]) if "sentid" in sent else f"{image_id}#{j}"
            caption = caption_text(sent.get("raw"), where, f"sentence {cid} 'raw'")
            raw.add(image_id, str(image_path), cid, caption, split)
    return raw
