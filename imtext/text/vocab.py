"""Word vocabulary with document frequencies, built from the training captions only.

Ids 0 and 1 are reserved for padding and unknown words. Document frequencies are stored alongside the
words so the tf-idf weights (and thus every buffer of a text encoder) can be rebuilt from vocab.json alone.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from imtext.atomic import write_json
from imtext.errors import ImtextError
from imtext.text.tokenize import tokenize

PAD, UNK = "<pad>", "<unk>"
PAD_ID, UNK_ID = 0, 1
_FORMAT = "imtext-vocab/1"


class Vocab:
    """Maps words to ids; `idf` gives smoothed inverse document frequencies (sklearn's formula)."""

    def __init__(self, words: Sequence[str], df: Sequence[int], num_docs: int, min_count: int = 1):
        if len(words) != len(df):
            raise ValueError("words and df must have the same length")
        self.words: list[str] = [PAD, UNK, *words]
        self.df: list[int] = [0, 0, *(int(d) for d in df)]
        self.num_docs = int(num_docs)
        self.min_count = int(min_count)
        self._index = {w: i for i, w in enumerate(self.words)}
        if len(self._index) != len(self.words):
            raise ValueError("duplicate words in vocabulary")
        self._idf: np.ndarray | None = None

    @classmethod
    def build(cls, captions: Iterable[str], min_count: int = 1) -> Vocab:
        """Count words over `captions` (pass the TRAINING split only) and keep those seen >= min_count times.

        Ids are assigned by descending frequency, ties alphabetically, so the same captions always give
        the same ids regardless of their order.
        """
        counts: Counter[str] = Counter()
        df: Counter[str] = Counter()
        n = 0
        for caption in captions:
            tokens = tokenize(caption)
            counts.update(tokens)
            df.update(set(tokens))
            n += 1
        kept = sorted((w for w, c in counts.items() if c >= min_count), key=lambda w: (-counts[w], w))
        kept = [w for w in kept if w not in (PAD, UNK)]
        return cls(kept, [df[w] for w in kept], n, min_count)

    def __len__(self) -> int:
        return len(self.words)

    def __contains__(self, word: str) -> bool:
        return word in self._index

    def id(self, token: str) -> int:
        return self._index.get(token, UNK_ID)

    def ids(self, tokens: Iterable[str]) -> list[int]:
        """Word ids; unknown words map to 1 (`<unk>`)."""
        get = self._index.get
        return [get(t, UNK_ID) for t in tokens]

    @property
    def idf(self) -> np.ndarray:
        """float32 (len(vocab),): log((1+N)/(1+df)) + 1; `<pad>` gets 0, `<unk>` gets 1.0.

        `<unk>` takes the smallest possible idf (that of a word in every caption): the unknown bucket mixes
        many different rare words, so its weight should not dominate a caption.
        """
        if self._idf is None:
            df = np.asarray(self.df, dtype=np.float64)
            idf = np.log((1.0 + self.num_docs) / (1.0 + df)) + 1.0
            idf[PAD_ID] = 0.0
            idf[UNK_ID] = 1.0
            self._idf = idf.astype(np.float32)
        return self._idf

    # ---- persistence -------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "format": _FORMAT,
            "num_docs": self.num_docs,
            "min_count": self.min_count,
            "words": self.words[2:],
            "df": self.df[2:],
        }

    @classmethod
    def from_dict(cls, raw: Any) -> Vocab:
        try:
            if not isinstance(raw, dict) or raw.get("format") != _FORMAT:
                raise ValueError(f"expected format {_FORMAT!r}")
            words, df = raw["words"], raw["df"]
            if not all(isinstance(w, str) for w in words) or not all(isinstance(d, int) for d in df):
                raise ValueError("words must be strings and df integers")
            return cls(words, df, int(raw["num_docs"]), int(raw.get("min_count", 1)))
        except (KeyError, TypeError, ValueError) as e:
            raise ImtextError(
                f"not a valid imtext vocabulary ({e}); rebuild it from the training captions"
            ) from None

    def save(self, path: str | os.PathLike) -> None:
        write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | os.PathLike) -> Vocab:
        path = Path(path)
        if not path.is_file():
            raise ImtextError(f"vocabulary file not found: {path} (it is saved next to the model weights)")
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ImtextError(f"{path} is not a readable vocabulary JSON file: {e}") from None
        try:
            return cls.from_dict(raw)
        except ImtextError as e:
            raise ImtextError(f"{path}: {e}") from None

    def __repr__(self) -> str:
        return f"Vocab({len(self)} words, {self.num_docs} captions, min_count={self.min_count})"
