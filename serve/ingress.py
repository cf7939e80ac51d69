"""The HTTP ingress: the FastAPI app and SearchAPI, the one deployment clients talk to.

SearchAPI validates a request, has an encoder embed it, asks every shard at once for its top-k, merges the
global top-k with `imtext.index.merge_topk` (it never holds a FAISS index), and attaches the metadata.
Every call to another deployment goes through `serve.errors.call`, with a deadline, and each search has
an overall deadline too (503 past it). Request bodies are counted as they stream (serve/uploads.py). POST
/admin/reload swaps the collection without downtime (serve/swap.py has how), confined to the index root.
GET /images/{id} serves only a file inside the collection's image roots that is an image.

Serve ships SearchAPI to its replica pickled by value (`@serve.deployment` rebinds the module's name to a
Deployment, so cloudpickle cannot find the class by reference), and `@serve.ingress` pickles `api` with the
endpoints when the class is decorated, capturing the globals that exist then: whatever the endpoints use is
imported or defined above the class. FastAPI reads the endpoints' annotations as types; this module does
not use `from __future__ import annotations`, which would turn them into strings to resolve.
"""

import asyncio
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, File, Form, Request, UploadFile
from fastapi import Path as PathParam
from fastapi.responses import Response
from ray import serve
from ray.serve.handle import DeploymentHandle

from imtext import __version__
from imtext.collection.format import CollectionMeta, confined_path, read_meta
from imtext.index import merge_topk
from serve.errors import ApiError, call, install_error_handlers
from serve.schemas import (
    ERRORS,
    K_MAX,
    MAX_ID,
    ImageResults,
    ReloadRequest,
    TextQuery,
    TextResults,
    caption_hits,
    check_k,
    check_query,
    errors,
    image_hits,
)
from serve.swap import check_admin, load_everywhere, open_collection, release_everywhere, same
from serve.uploads import MAX_UPLOAD_BYTES, BodyLimit, Rejected

log = logging.getLogger("imtext.serve")

ENCODER_TIMEOUT_S = 30.0
SHARD_TIMEOUT_S = 10.0
RELOAD_TIMEOUT_S = 600.0
REQUEST_TIMEOUT_S = 45.0  # a whole search; the calls inside it have their own, shorter deadlines
MAX_SERVED_IMAGE_BYTES = 64 * 2**20
# what GET /images/{id} serves, by the file's first bytes (never by its name)
IMAGE_SIGNATURES = (
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
    (b"BM", "image/bmp"),
    (b"II*\x00", "image/tiff"),
    (b"MM\x00*", "image/tiff"),
)


def image_media_type(data: bytes) -> str | None:
    """The media type of an image file from its signature; None when it is not an image we serve."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return next((media for magic, media in IMAGE_SIGNATURES if data.startswith(magic)), None)


def read_image_file(meta: CollectionMeta, image_id: int, path: str) -> tuple[bytes, str]:
    """The bytes and media type of image `image_id`, read only from inside the collection's image roots and
    only if it is an image; a 404 otherwise (blocking: run it in a thread)."""
    real = confined_path(path, meta.image_roots)
    missing = ApiError(404, "image_missing", f"The file of image {image_id} is missing on the server.")
    if real is None:
        log.warning("image %s: %s is missing or outside the image roots %s", image_id, path, meta.image_roots)
        raise missing
    try:
        if real.stat().st_size > MAX_SERVED_IMAGE_BYTES:
            raise missing
        data = real.read_bytes()
    except OSError:
        log.warning("image %s: cannot read %s", image_id, real)
        raise missing from None
    media = image_media_type(data)
    if media is None:
        log.warning("image %s: %s is not an image file; not served", image_id, real)
        raise missing
    return data, media


def _trained_at(model_dir: Path) -> str | None:
    """When the model's weights were written (UTC, ISO 8601): the model directory the collection was built
    with, whose fingerprint the served model matches. None when that folder is gone."""
    import datetime as dt

    try:
        mtime = (model_dir / "weights.safetensors").stat().st_mtime
    except OSError:
        return None
    return dt.datetime.fromtimestamp(mtime, dt.timezone.utc).isoformat(timespec="seconds")


def _data_name(meta: CollectionMeta) -> str | None:
    """The dataset the collection was built from, as KIND:NAME (its folder's name, never a server path)."""
    spec = str(meta.info.get("data") or "")
    if not spec:
        return None
    kind, _, path = spec.partition(":")
    return f"{kind}:{Path(path.split(',')[0]).name}" if path else kind


api = FastAPI(
    title="imtext search API",
    version=__version__,
    description="Image <-> sentence search: sentences find images (POST /search/text), images find sentences "
    'and similar images (POST /search/image). Errors are JSON: `{"error": {"code", "message"}}`.',
)
install_error_handlers(api)
api.add_middleware(BodyLimit)


def _versions() -> dict[str, str]:
    import faiss
    import ray

    try:
        from importlib.metadata import version

        torch_version = version("torch")
    except Exception:
        torch_version = "unknown"
    return {"imtext": __version__, "ray": ray.__version__, "faiss": faiss.__version__, "torch": torch_version}


@serve.deployment(
    ray_actor_options={"num_cpus": 0.25},
    max_ongoing_requests=256,
    max_queued_requests=512,  # past it the proxy answers 503 at once instead of queueing without bound
    num_replicas=1,
    max_surge_percent=100,
)
@serve.ingress(api)
class SearchAPI:
    """Validates, encodes, fans out to every shard at once, merges the global top-k, attaches metadata.

    Keep it at one replica when using POST /admin/reload: the swap changes this replica's state only.
    """

    async def __init__(
        self,
        text: DeploymentHandle,
        image: DeploymentHandle,
        shards: list[DeploymentHandle],
        index_dir: str,
        model: dict[str, Any],
        admin_token: str | None = None,
        encoder_timeout_s: float = ENCODER_TIMEOUT_S,
        shard_timeout_s: float = SHARD_TIMEOUT_S,
        reload_timeout_s: float = RELOAD_TIMEOUT_S,
        release_after_s: float | None = None,
        index_root: str | None = None,
        request_timeout_s: float = REQUEST_TIMEOUT_S,
    ) -> None:
        self.text, self.image, self.shards = text, image, shards
        self.model = model
        self.admin_token = admin_token or None
        self.encoder_timeout_s = encoder_timeout_s
        self.shard_timeout_s = shard_timeout_s
        self.reload_timeout_s = reload_timeout_s
        self.request_timeout_s = request_timeout_s
        # /admin/reload loads only collections under this folder (default: the one index_dir lies in)
        self.index_root = str(Path(index_root or Path(index_dir).resolve().parent).resolve())
        # by then no request that started before a swap can still ask for the old collection
        self.release_after_s = (
            (encoder_timeout_s + shard_timeout_s + 1.0) if release_after_s is None else release_after_s
        )
        self.meta: CollectionMeta = await asyncio.to_thread(
            read_meta, index_dir, model["fingerprint"], len(shards)
        )
        self._reload_lock = asyncio.Lock()
        self._tasks: set[asyncio.Task] = set()
        self.versions = _versions()
        self.trained = await asyncio.to_thread(_trained_at, self.meta.model_dir)

    # -- plumbing ------------------------------------------------------------------------------------

    async def _within_deadline(self, work):
        """Run a search with the app's overall deadline: past it, a 503 the client may retry."""
        try:
            return await asyncio.wait_for(work, self.request_timeout_s)
        except asyncio.TimeoutError:
            raise ApiError(
                503, "timeout", f"The search took over {self.request_timeout_s:g} s; retry in a few seconds."
            ) from None

    async def _search(self, meta: CollectionMeta, kind: str, vector: np.ndarray, k: int):
        """Global top-k of `kind` in collection `meta`: every shard at once, merged here."""
        queries = np.ascontiguousarray(vector.reshape(1, -1), dtype=np.float32)  # the shards normalise
        n = meta.shards[kind]
        parts = await asyncio.gather(
            *(
                call(
                    self.shards[i].search.remote(meta.dir, meta.version, kind, queries, k),
                    self.shard_timeout_s,
                    "index shard",
                )
                for i in range(n)
            )
        )
        scores, ids = merge_topk([p[0] for p in parts], [p[1] for p in parts], k)
        keep = ids[0] >= 0
        return scores[0][keep], ids[0][keep]

    # -- endpoints -------------------------------------------------------------------------------------

    @api.get("/healthz", tags=["status"], responses=errors(503))
    async def healthz(self) -> dict[str, str]:
        """Liveness: the ingress answers (Serve health-checks every replica on its own)."""
        return {"status": "ok"}

    @api.get("/info", tags=["status"], responses=errors(503))
    async def info(self) -> dict[str, Any]:
        """The model and index in use, library versions, and example queries."""
        meta = self.meta
        return {
            "model": {**self.model, "trained": self.trained},
            "index": meta.index_info(),
            "collection": {**meta.collection_info(), "version": meta.version, "data": _data_name(meta)},
            "versions": self.versions,
            "examples": meta.examples,
        }

    @api.post("/search/text", response_model=TextResults, responses=ERRORS, tags=["search"])
    async def search_text(self, body: TextQuery) -> dict[str, Any]:
        """Images for a sentence, best first. A query with no word the model knows is a 400
        (`no_known_words`, with the words in `unknown_words`); words it does not know are listed in the
        answer's `unknown_words` and ignored."""
        return await self._within_deadline(self._search_text(body))

    async def _search_text(self, body: TextQuery) -> dict[str, Any]:
        t0 = time.perf_counter()
        k = check_k(body.k)
        query = check_query(body.query)
        meta = self.meta  # one collection for the whole request, even if a swap happens meanwhile
        encoded = await call(self.text.embed.remote(query), self.encoder_timeout_s, "text encoder")
        if isinstance(encoded, Rejected):
            raise ApiError(encoded.status, encoded.code, encoded.message, details=encoded.details)
        vector, unknown = encoded
        scores, ids = await self._search(meta, "images", vector, k)
        return {
            "query": query,
            "k": k,
            "latency_ms": (time.perf_counter() - t0) * 1000,
            "results": image_hits(meta.images, scores, ids, meta.version),
            "unknown_words": unknown,
        }

    @api.post("/search/image", response_model=ImageResults, responses=ERRORS, tags=["search"])
    async def search_image(
        self,
        file: UploadFile = File(
            ..., description=f"a JPEG/PNG/WebP/GIF/BMP/TIFF, at most {MAX_UPLOAD_BYTES // 2**20} MB"
        ),
        k: int = Form(10, description=f"how many captions and images to return (1 to {K_MAX})"),
    ) -> dict[str, Any]:
        """Captions that describe an image, and the collection's most similar images."""
        return await self._within_deadline(self._search_image(file, k))

    async def _search_image(self, file: UploadFile, k: int) -> dict[str, Any]:
        t0 = time.perf_counter()
        k = check_k(k)
        data = await file.read(MAX_UPLOAD_BYTES + 1)
        if len(data) > MAX_UPLOAD_BYTES:
            raise ApiError(
                413, "upload_too_large", f"The upload is over the {MAX_UPLOAD_BYTES // 2**20} MB limit."
            )
        if not data:
            raise ApiError(400, "empty_upload", "The uploaded file is empty.")
        meta = self.meta
        vector = await call(self.image.embed.remote(data), self.encoder_timeout_s, "image encoder")
        if isinstance(vector, Rejected):
            raise ApiError(vector.status, vector.code, vector.message)
        (c_scores, c_ids), (i_scores, i_ids) = await asyncio.gather(
            self._search(meta, "captions", vector, k), self._search(meta, "images", vector, k)
        )
        return {
            "k": k,
            "latency_ms": (time.perf_counter() - t0) * 1000,
            "captions": caption_hits(meta.captions, c_scores, c_ids),
            "images": image_hits(meta.images, i_scores, i_ids, meta.version),
        }

    @api.get(
        "/images/{image_id}",
        tags=["images"],
        response_class=Response,
        responses={
            200: {
                "description": "the image file",
                "content": {"image/*": {"schema": {"type": "string", "format": "binary"}}},
            },
            **errors(404, 422, 503),
        },
    )
    async def get_image(
        self, image_id: int = PathParam(..., description="a result's `id` (0 to 2^63-1)")
    ) -> Response:
        """The photo behind a result, by its id (never by a path: the client cannot name a file). Only a
        file inside the collection's image folders that is an image is ever served."""
        meta = self.meta
        row = meta.images.get(image_id) if 0 <= image_id <= MAX_ID else None
        if row is None:
            raise ApiError(404, "not_found", f"No image with id {image_id}.")
        data, media = await asyncio.to_thread(read_image_file, meta, image_id, row["image_path"])
        return Response(
            data,
            media_type=media,
            headers={"X-Content-Type-Options": "nosniff", "Cache-Control": "private, max-age=300"},
        )

    @api.post("/admin/reload", tags=["admin"], responses=errors(400, 401, 403, 409, 413, 422, 503))
    async def reload(self, body: ReloadRequest, request: Request) -> dict[str, Any]:
        """Swap in another collection (built by the same model, under the app's index root) without
        dropping a request.

        Needs `Authorization: Bearer <admin token>` (the app's `admin_token`; off when none is set)."""
        check_admin(request, self.admin_token)
        async with self._reload_lock:
            meta = await asyncio.to_thread(
                open_collection, body.index_dir, self.model["fingerprint"], len(self.shards), self.index_root
            )
            t0 = time.perf_counter()
            # every shard loads its part first; only then does the ingress switch (one assignment)
            await load_everywhere(self.shards, meta, self.meta, self.reload_timeout_s, self.shard_timeout_s)
            previous, self.meta = self.meta, meta
            log.info("index swapped: %s -> %s in %.1f s", previous.dir, meta.dir, time.perf_counter() - t0)
            if not same(previous, meta):
                self._tasks.add(task := asyncio.create_task(self._release_later(previous)))
                task.add_done_callback(self._tasks.discard)
        return {
            "status": "ok",
            "index": meta.index_info(),
            "collection": meta.collection_info(),
            "seconds": time.perf_counter() - t0,
        }

    async def _release_later(self, old: CollectionMeta) -> None:
        """Free the swapped-out shards once no request that started before the swap can still ask for them;
        skipped if that collection became current again."""
        await asyncio.sleep(self.release_after_s)
        if not same(old, self.meta):
            await release_everywhere(self.shards, old, self.shard_timeout_s)
