"""Caption tokenizer: lowercase words made of letters and digits, nothing else.

Kept deliberately simple (no stemming, no stop words) so train and serve tokenize identically and the
vocabulary file fully describes the text side.
"""

from __future__ import annotations

import re

# A word is a run of letters/digits (any script), optionally joined by inner apostrophes ("don't", "o'clock").
_WORD = re.compile(r"[^\W_]+(?:'[^\W_]+)*")
# Typographic apostrophes and backticks are folded to ' so "don’t" and "don't" are one word.
_APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'", "`": "'", "\u02bc": "'"})


def tokenize(text: str) -> list[str]:
    """Split a caption into lowercase words; punctuation (and apostrophes at word edges) is dropped."""
    return _WORD.findall(text.lower().translate(_APOSTROPHES))
