"""The caption of a left-right flipped image: "a dog to the left of a man" becomes "a dog to the right of a
man". A horizontal flip is the usual augmentation for photos, but it makes every caption that says left or
right false; swapping those words keeps the pair true (as MDETR's flip does for referring expressions).

Top-bottom (axis "v") is for scenes that can be drawn upside down, the synthetic world's (imtext.train.fresh):
photos are not flipped that way, the sky stays up.
"""

from __future__ import annotations

from imtext.text.tokenize import tokenize

MIRRORED = {"left": "right", "right": "left", "leftmost": "rightmost", "rightmost": "leftmost"}
UPSIDE_DOWN = {
    "above": "below",
    "below": "above",
    "over": "under",
    "under": "over",
    "beneath": "above",
    "top": "bottom",
    "bottom": "top",
    "topmost": "bottommost",
    "bottommost": "topmost",
}


def mirror_caption(caption: str, axis: str = "h") -> str | None:
    """The caption's tokens with the side words (axis "h") or the up-down words (axis "v") swapped, joined by
    spaces (the featurizer tokenizes again), or None when it names none: then the flipped image fits the
    caption as it is."""
    words = {"h": MIRRORED, "v": UPSIDE_DOWN}[axis]
    tokens = tokenize(caption)
    if not any(t in words for t in tokens):
        return None
    return " ".join(words.get(t, t) for t in tokens)
