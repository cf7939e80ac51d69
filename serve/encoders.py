"""The two encoder deployments: sentences -> vectors (TextEncoder), uploaded bytes -> vectors (ImageEncoder).

Each replica loads the model once. `@serve.batch` gathers the queries that arrive together into one forward
pass (batch size and wait are set per deployment by build_app), and the forward pass runs in a worker
thread, so the replica's event loop (health checks, batching) stays responsive. Decoding an upload happens
here too, so the ingress stays light.

Every deployment has max_surge_percent=100: a redeploy (`serve deploy` with a new index_dir, a new model)
starts each new replica and lets the old one serve until it is ready, instead of stopping it first.
"""

import asyncio

import numpy as np
from ray import serve

from serve.uploads import Rejected, decode_image


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
    health_check_period_s=2,
    max_surge_percent=100,
)
class TextEncoder(_Encoder):
    """Sentences -> vectors. Concurrent queries are batched into one forward pass."""

    def __init__(
        self, model_dir: str, max_batch_size: int = 32, batch_wait_timeout_s: float = 0.002, threads: int = 1
    ) -> None:
        super().__init__(model_dir, max_batch_size, batch_wait_timeout_s, threads)

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.002)
    async def embed(self, texts: list[str]) -> list[np.ndarray]:
        # a worker thread keeps the replica's event loop (health checks, batching) responsive
        vectors = await asyncio.to_thread(self.model.embed_texts, texts)
        return list(vectors)


@serve.deployment(
    ray_actor_options={"num_cpus": 0.5},
    max_ongoing_requests=32,
    health_check_period_s=2,
    max_surge_percent=100,
)
class ImageEncoder(_Encoder):
    """Uploaded bytes -> vector (or Rejected). Decoding happens here, so the ingress stays light."""

    def __init__(
        self, model_dir: str, max_batch_size: int = 8, batch_wait_timeout_s: float = 0.01, threads: int = 1
    ) -> None:
        super().__init__(model_dir, max_batch_size, batch_wait_timeout_s, threads)

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.01)
    async def embed(self, uploads: list[bytes]) -> list[np.ndarray | Rejected]:
        return await asyncio.to_thread(self._embed, uploads)

    def _embed(self, uploads: list[bytes]) -> list[np.ndarray | Rejected]:
        decoded = [decode_image(data) for data in uploads]
        good = [i for i, d in enumerate(decoded) if not isinstance(d, Rejected)]
        out: list[np.ndarray | Rejected] = list(decoded)
        if good:
            vectors = self.model.embed_images([decoded[i] for i in good])
            for i, v in zip(good, vectors):
                out[i] = v
        return out
