"""Flickr8k in its official layout (Hodosh et al., 2013).

    DIR/Flickr8k.token.txt             IMG.jpg#N<TAB>caption   (5 per image)
    DIR/Flickr_8k.{train,dev,test}Images.txt                     one file name per line
    DIR/Flicker8k_Dataset/IMG.jpg      (the official zip's spelling; Flickr8k_Dataset/ or Images/ also work)

The text files may also sit in DIR/Flickr8k_text/, as the official text zip unpacks them. dev -> "val".
"""

from __future__ import annotations

from pathlib import Path

from imtext.data.pairs import RawPairs, image_name
from imtext.data.report import examples, warn
from imtext.errors import DataError

TOKEN_FILE = "Flickr8k.token.txt"
SPLIT_FILES = {
    "train": "Flickr_8k.trainImages.txt",
    "val": "Flickr_8k.devImages.txt",
    "test": "Flickr_8k.testImages.txt",
}
IMAGE_DIRS = ("Flicker8k_Dataset", "Flickr8k_Dataset", "Images")


def read(root: Path, source: str) -> RawPairs:
    if not root.is_dir():
        raise DataError(f"{source}: {root} is not a folder (expected the Flickr8k folder with {TOKEN_FILE})")
    text_dir = next((d for d in (root, root / "Flickr8k_text") if (d / TOKEN_FILE).is_file()), None)
    if text_dir is None:
        raise DataError(f"{source}: caption file not found: expected {root / TOKEN_FILE}")
    image_dir = next((root / d for d in IMAGE_DIRS if (root / d).is_dir()), None)
    if image_dir is None:
        raise DataError(
            f"{source}: image folder not found: expected {root / IMAGE_DIRS[0]} (or {', '.join(IMAGE_DIRS[1:])})"
        )

    split_of: dict[str, str] = {}
    for split, name in SPLIT_FILES.items():
        path = text_dir / name
        if not path.is_file():
            raise DataError(f"{source}: split list not found: expected {path}")
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                split_of[line.strip()] = split

    raw = RawPairs(source=source, missing_hint=f"Images are looked up in {image_dir}.")
    bad_lines, unlisted = 0, set()
    captioned = set()
    for line in (text_dir / TOKEN_FILE).read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        key, sep, caption = line.partition("\t")
        if not sep:  # tolerate a space instead of the tab
            key, _, caption = line.partition(" ")
        fname, _, num = key.strip().rpartition("#")
        if not fname or not num.isdigit():
            bad_lines += 1
            continue
        if fname not in split_of:
            unlisted.add(fname)  # e.g. the release's stray "2258277193_586949ec62.jpg.1"
            continue
        fname = image_name(fname, f"{source}: {TOKEN_FILE}", "image name")
        captioned.add(fname)
        stem = Path(fname).stem
        raw.add(stem, str(image_dir / fname), f"{stem}#{num}", caption, split_of[fname])
    if bad_lines:
        warn(f"{source}: skipped {bad_lines} line(s) of {TOKEN_FILE} not of the form IMG.jpg#N<TAB>caption")
    if unlisted:
        warn(
            f"{source}: {len(unlisted)} captioned image(s) are in no split list, skipped: {examples(sorted(unlisted))}"
        )
    raw.uncaptioned = len(set(split_of) - captioned)
    return raw
