"""Word-swap hard negatives: a caption with one word replaced by another of the same group ("a red circle
on the left" -> "a red square on the left") is a sentence its image does not match, and it differs from the
true caption in exactly the word a model can ignore while the batch's other captions are easy to tell apart
(NegCLIP, Yuksekgonul et al., ICLR 2023). Given to the loss as one more negative of the caption's image
(`loss.swap_negatives`), it rewards the image branch for encoding what the swapped word names.

Groups are words of one kind that exclude each other in a sentence: colours, shapes, counts, left/right.
`loss.swap_words` writes them as `red green blue; circle square triangle; left right` (groups split by `;`,
words by spaces or commas), or `synthetic` for the synthetic world's own words (imtext.data.synth).
"""

from __future__ import annotations

import random
import re

from imtext.errors import ImtextError
from imtext.text.tokenize import tokenize

SYNTHETIC = "synthetic"


def synthetic_groups() -> list[tuple[str, ...]]:
    """The synthetic world's exclusive words: colours, shapes (singular and plural), counts, sides, ends
    of the frame and the vertical relations. Sizes stay out: retrieval there is judged without them."""
    from imtext.data.synth import COLORS, NUMBERS, PLURALS, SHAPES

    return [
        tuple(COLORS),
        SHAPES,
        tuple(PLURALS[s] for s in SHAPES),
        tuple(NUMBERS.values()),
        ("left", "right"),
        ("top", "bottom"),
        ("above", "below"),
    ]


def parse_groups(spec: str) -> list[tuple[str, ...]]:
    """`loss.swap_words` -> word groups; ImtextError on a group of one word or a word in two groups."""
    if spec.strip() == SYNTHETIC:
        return synthetic_groups()
    groups: list[tuple[str, ...]] = []
    seen: set[str] = set()
    for part in spec.split(";"):
        words = tuple(dict.fromkeys(w for w in re.split(r"[\s,]+", part.strip().lower()) if w))
        if not words:
            continue
        if len(words) < 2:
            raise ImtextError(f"loss.swap_words: the group {part.strip()!r} needs at least two words")
        for w in words:
            if tokenize(w) != [w]:
                raise ImtextError(f"loss.swap_words: {w!r} is not one word as captions are tokenized")
            if w in seen:
                raise ImtextError(f"loss.swap_words: {w!r} is in two groups")
            seen.add(w)
        groups.append(words)
    if not groups:
        raise ImtextError(
            "loss.swap_words is empty: give word groups ('red green blue; circle square') or 'synthetic'"
        )
    return groups


class WordSwap:
    """Makes word-swapped copies of a caption (see the module's docstring)."""

    def __init__(self, groups: list[tuple[str, ...]]):
        self.group_of = {w: g for g in groups for w in g}

    @classmethod
    def from_spec(cls, spec: str) -> WordSwap:
        return cls(parse_groups(spec))

    def __call__(self, caption: str, rng: random.Random | None = None) -> str | None:
        """The caption's tokens with one group word (chosen at random) replaced by another word of its
        group, joined by spaces; None when the caption has no word of any group."""
        rng = rng or random
        tokens = tokenize(caption)
        slots = [i for i, t in enumerate(tokens) if t in self.group_of]
        if not slots:
            return None
        i = rng.choice(slots)
        tokens[i] = rng.choice([w for w in self.group_of[tokens[i]] if w != tokens[i]])
        return " ".join(tokens)
