"""The two encoder deployments: sentences -> vectors (TextEncoder), uploaded bytes -> vectors (ImageEncoder).

Each replica loads the model once. `@serve.batch` gathers the queries that arrive together into one forward
pass (batch size and wait are set per deployment by build_app), and the forward pass runs in a worker
thread, so the replica's event loop (health checks, batching) stays responsive. Decoding an upload happens
here too, so the ingress stays light.

Bad input never fails a batch: each query or upload gets its own answer, a vector or a `Rejected` (a query
with no word the model knows, an image that does not decode, whatever the exception). Queues are bounded
(`max_queued_requests`): a full one answers the ingress at once, which gives the client a 503.

Every deployment has max_surge_percent=100: a redeploy (`serve deploy` with a new index_dir, a new model)
starts each new replica and lets the old one serve until it is ready, instead of stopping it first.
"""

import asyncio
import logging

import numpy as np
from ray import serve

from serve.uploads import Rejected, bad_image, decode_image

log = logging.getLogger("imtext.serve")


def unknown_words(vocab, query: str) -> tuple[list[str], int]:
    """(the query's words the vocabulary lacks, in order, each once; how many of its words it knows)."""
    from imtext.text.tokenize import tokenize

    words = tokenize(query)
    unknown = list(dict.fromkeys(w for w in words if w not in vocab))
    return unknown, sum(1 for w in words if w in vocab)


def no_known_words(query_unknown: list[str]) -> Rejected:
    if not query_unknown:
        message = "The query has no words (only punctuation or symbols); type a sentence."
    else:
        shown = ", ".join(query_unknown[:20]) + (" ..." if len(query_unknown) > 20 else "")
        message = f"No word of the query is in the model's vocabulary (not in the vocabulary: {shown})."
    return Rejected(400, "no_known_words", message, {"unknown_words": query_unknown[:100]})


class _Encoder:
    """Loads the model once per replica; batches configurable per deployment (see build_app)."""

    def __init__(
        self, model_dir: str, max_batch_size: int, batch_wait_timeout_s: float, threads: int
    ) -> None:
        import torch

        from imtext.model import TwoBranch

        torch.set_num_threads(threads)
        # a replica given a GPU (ray_actor_options num_gpus) sees it here; otherwise the CPU
        self.model = TwoBranch.load(model_dir, device="cuda" if torch.cuda.is_available() else "cpu")
        self.embed.set_max_batch_size(max_batch_size)
        self.embed.set_batch_wait_timeout_s(batch_wait_timeout_s)

    def fingerprint(self) -> str:
        return self.model.fingerprint


@serve.deployment(
    ray_actor_options={"num_cpus": 0.5},
    max_ongoing_requests=64,
    max_queued_requests=256,
    health_check_period_s=2,
    max_surge_percent=100,
)
class TextEncoder(_Encoder):
    """Sentences -> (vector, unknown words), or a Rejected for a query with no word the model knows (with a
    sentence encoder: with no words at all). Concurrent queries are batched into one forward pass."""

    def __init__(
        self, model_dir: str, max_batch_size: int = 32, batch_wait_timeout_s: float = 0.002, threads: int = 1
    ) -> None:
        super().__init__(model_dir, max_batch_size, batch_wait_timeout_s, threads)

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.002)
    async def embed(self, texts: list[str]) -> list[tuple[np.ndarray, list[str]] | Rejected]:
        # a worker thread keeps the replica's event loop (health checks, batching) responsive
        return await asyncio.to_thread(self._embed, texts)

    def _embed(self, texts: list[str]) -> list[tuple[np.ndarray, list[str]] | Rejected]:
        out: list[tuple[np.ndarray, list[str]] | Rejected] = []
        checked = [unknown_words(self.model.vocab, t) for t in texts]
        # A sentence encoder reads words the vocabulary lacks (a synonym, a rarer word): a query needs only
        # some words then; a bag or GRU alone needs one it knows.
        reads_any = self.model.sentence_encoder is not None
        good = [i for i, (unknown, known) in enumerate(checked) if known or (reads_any and unknown)]
        vectors = dict(zip(good, self._vectors([texts[i] for i in good])))
        for i, (unknown, _known) in enumerate(checked):
            vector = vectors.get(i)
            if i not in good:
                out.append(no_known_words(unknown))
            elif isinstance(vector, Rejected):
                out.append(vector)
            else:
                out.append((vector, unknown))
        return out

    def _vectors(self, texts: list[str]) -> list[np.ndarray | Rejected]:
        """One forward pass; if it fails, one per query, so a query that breaks it fails alone."""
        if not texts:
            return []
        try:
            return list(self.model.embed_texts(texts))
        except Exception:
            if len(texts) == 1:
                log.exception("text encoder: cannot embed a query")
                return [Rejected(400, "bad_query", "The query could not be encoded.")]
            return [v for t in texts for v in self._vectors([t])]


@serve.deployment(
    ray_actor_options={"num_cpus": 0.5},
    max_ongoing_requests=32,
    max_queued_requests=64,
    health_check_period_s=2,
    max_surge_percent=100,
)
class ImageEncoder(_Encoder):
    """Uploaded bytes -> vector (or Rejected). Decoding happens here, so the ingress stays light."""

    def __init__(
        self, model_dir: str, max_batch_size: int = 8, batch_wait_timeout_s: float = 0.01, threads: int = 1
    ) -> None:
        super().__init__(model_dir, max_batch_size, batch_wait_timeout_s, threads)
        # decoding shrinks big photos to twice the model's input size before the transform
        self.min_side = 2 * self.model.image_config.size()

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.01)
    async def embed(self, uploads: list[bytes]) -> list[np.ndarray | Rejected]:
        return await asyncio.to_thread(self._embed, uploads)

    def _embed(self, uploads: list[bytes]) -> list[np.ndarray | Rejected]:
        decoded = [self._decode(data) for data in uploads]
        good = [i for i, d in enumerate(decoded) if not isinstance(d, Rejected)]
        out: list[np.ndarray | Rejected] = list(decoded)
        for i, v in zip(good, self._vectors([decoded[i] for i in good])):
            out[i] = v
        return out

    def _decode(self, data: bytes):
        try:
            return decode_image(data, min_side=self.min_side)
        except Exception as e:  # decode_image answers every decoder error itself; this is the last guard
            return bad_image(e)

    def _vectors(self, images: list) -> list[np.ndarray | Rejected]:
        """One forward pass; if it fails, one per image, so an image that breaks it fails alone."""
        if not images:
            return []
        try:
            return list(self.model.embed_images(images))
        except Exception as e:
            if len(images) == 1:
                log.warning("image encoder: cannot embed an upload: %s: %s", type(e).__name__, e)
                return [bad_image(e)]
            return [v for im in images for v in self._vectors([im])]
