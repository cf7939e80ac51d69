"""The caption of a left-right flipped image: "a dog to the left of a man" becomes "a dog to the right of a
man". A horizontal flip is the usual augmentation for photos, but it makes every caption that says left or
right false; swapping those words keeps the pair true (as MDETR's flip does for referring expressions).
"""

from __future__ import annotations

from imtext.text.tokenize import tokenize

MIRRORED = {"left": "right", "right": "left", "leftmost": "rightmost", "rightmost": "leftmost"}


def mirror_caption(caption: str) -> str | None:
    """The caption's tokens with the side words swapped, joined by spaces (the featurizer tokenizes again),
    or None when it names no side: then the flipped image fits the caption as it is."""
    tokens = tokenize(caption)
    if not any(t in MIRRORED for t in tokens):
        return None
    return " ".join(MIRRORED.get(t, t) for t in tokens)
