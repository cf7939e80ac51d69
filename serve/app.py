"""The imtext search API on Ray Serve: two encoders, one replica per index shard, one HTTP ingress.

    client --HTTP--> SearchAPI (FastAPI ingress: validation, fan-out, merge, metadata, images)
                       |-- TextEncoder  (@serve.batch: many queries, one forward pass)
                       |-- ImageEncoder (@serve.batch; decodes and checks the upload)
                       '-- shard-0 ... shard-{S-1} (IndexShard: shard i of the images and captions indexes)

Why this shape:
- Each IndexShard replica holds one shard, so an index larger than one machine's memory still serves, and
  the ingress merges the per-shard top-k with `imtext.index.merge_topk` (never holding a FAISS index).
- Every call to another deployment has a timeout: a dead or slow replica turns into a 503 the client can
  retry, never a hung request.
- Index swap without downtime (POST /admin/reload {"index_dir": ...}, with the admin token): the shards load
  the new collection next to the old one, then the ingress switches in one assignment. A request captures
  the collection it started with and asks the shards for exactly that one (folder + a hash of its
  collection.json, so a folder grown in place by `imtext index add` counts as new), so requests in flight
  finish on the old index and new ones use the new; the old one is freed once no request can need it. A
  shard replica that restarts later loads whatever collection it is asked for, on demand. Refused: a
  collection built by another model (409), one with more shards than the app runs (409), a damaged one (400).
  The swap lives in the ingress replica: keep SearchAPI at one replica, and put the new index_dir in the
  config too, so a restart or redeploy serves it. A redeploy with a new index_dir (`serve deploy`,
  `serve.run`) also swaps, by Serve's rolling update (max_surge_percent=100 everywhere), but it is not
  seamless: in a trial on 2 cores, 1 of 205 requests got a 503 after the shard timeout while the shard
  replicas rolled over, where the tests' 200 requests across POST /admin/reload all succeeded.

Run it with `imtext serve`, `serve run serve/config.yaml`, or
`serve run serve.app:build_app model_dir=DIR index_dir=DIR`.
"""

import asyncio
import hmac
import io
import logging
import mimetypes
import os
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, File, Form, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field
from ray import serve
from ray.exceptions import GetTimeoutError, RayActorError
from ray.serve.exceptions import RayServeException
from ray.serve.handle import DeploymentHandle, DeploymentResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from imtext import __version__
from imtext.errors import ImtextError
from imtext.index import ShardedIndex, merge_topk
from imtext.index.merge import empty_result
from serve.meta import (
    KINDS,
    CollectionMeta,
    ModelMismatch,
    TooManyShards,
    collection_version,
    read_meta,
    shard_counts,
)

log = logging.getLogger("imtext.serve")

MAX_QUERY_CHARS = 1000
K_MAX = 100
MAX_UPLOAD_BYTES = 10 * 1024 * 1024  # what a phone photo needs, with room to spare
MAX_IMAGE_PIXELS = 40_000_000  # decoded size guard (a small PNG can expand to gigabytes)
IMAGE_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")  # no EPS (Ghostscript) or other exotic decoders
ENCODER_TIMEOUT_S = 30.0
SHARD_TIMEOUT_S = 10.0
RELOAD_TIMEOUT_S = 600.0


# ---- errors ---------------------------------------------------------------------------------------


class ApiError(Exception):
    """An answer the client gets as `{"error": {"code", "message"}}` with this HTTP status; `cause` is the
    underlying error's message (for the log, or for an endpoint that may show it, like /admin/reload)."""

    def __init__(self, status: int, code: str, message: str, cause: str = "") -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.cause = status, code, message, cause


def error_response(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status)


# Faults of the machinery (a replica died, is restarting, is overloaded, did not answer in time): the
# client may retry, so they are 503s. Anything else raised by our own code is a 500.
UNAVAILABLE = (asyncio.TimeoutError, TimeoutError, GetTimeoutError, RayActorError, RayServeException)


async def call(response: DeploymentResponse, timeout_s: float, what: str) -> Any:
    """Await a handle call with a deadline, mapping machinery faults to 503 and bugs to 500."""

    async def wait() -> Any:
        return await response

    try:
        return await asyncio.wait_for(wait(), timeout_s)
    except UNAVAILABLE as e:
        response.cancel()
        log.warning(
            "%s unavailable: %s: %s", what, type(e).__name__, str(e).splitlines()[0] if str(e) else ""
        )
        raise ApiError(
            503, "unavailable", f"The {what} is unavailable right now; retry in a few seconds."
        ) from None
    except ApiError:
        raise
    except Exception as e:
        log.exception("%s failed", what)
        cause = getattr(e, "cause", None) or e  # a RayTaskError carries the replica's own exception
        raise ApiError(
            500,
            "internal",
            f"The {what} failed; the server log has the details.",
            cause=str(cause).strip().splitlines()[-1] if str(cause).strip() else type(cause).__name__,
        ) from None


# Serve pickles a deployment class by value when it is decorated: every module-level name its methods use
# must be defined above it (a helper defined further down is a NameError inside the replica), and this module
# must not use `from __future__ import annotations` (FastAPI could not resolve the string annotations of
# the ingress methods against the pickled globals).


def _versions() -> dict[str, str]:
    import faiss
    import ray

    try:
        from importlib.metadata import version

        torch_version = version("torch")
    except Exception:
        torch_version = "unknown"
    return {"imtext": __version__, "ray": ray.__version__, "faiss": faiss.__version__, "torch": torch_version}


# ---- decoding uploads -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Rejected:
    """An upload the image encoder refused (a value, not an exception: one bad image in a batch must not
    fail the other requests batched with it)."""

    status: int
    code: str
    message: str


def decode_image(data: bytes, max_pixels: int = MAX_IMAGE_PIXELS):
    """Bytes -> RGB PIL image, upright by EXIF (as the collection was embedded), or a Rejected."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    if not data:
        return Rejected(400, "empty_upload", "The uploaded file is empty.")
    try:
        with Image.open(io.BytesIO(data), formats=IMAGE_FORMATS) as im:
            w, h = im.size
            if w * h > max_pixels:
                return Rejected(
                    413,
                    "image_too_large",
                    f"The image is {w}x{h} pixels; the limit is {max_pixels // 1_000_000} megapixels.",
                )
            im.load()
            im = ImageOps.exif_transpose(im) or im
            return im.convert("RGB")
    except UnidentifiedImageError:
        return Rejected(
            415, "not_an_image", f"That file is not an image this server reads ({', '.join(IMAGE_FORMATS)})."
        )
    except Image.DecompressionBombError:
        return Rejected(413, "image_too_large", "The image is too large to decode safely.")
    except (OSError, SyntaxError, ValueError, EOFError) as e:  # truncated or damaged data
        return Rejected(400, "bad_image", f"The image could not be decoded ({str(e) or type(e).__name__}).")


# ---- the encoders ---------------------------------------------------------------------------------


# Every deployment has max_surge_percent=100: a redeploy (`serve deploy` with a new index_dir, a new model)
# starts each new replica and lets the old one serve until it is ready, instead of stopping it first.


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


# ---- the index shards -----------------------------------------------------------------------------


@serve.deployment(
    ray_actor_options={"num_cpus": 0.25},
    max_ongoing_requests=64,
    health_check_period_s=2,
    max_surge_percent=100,
)
class IndexShard:
    """Shard `shard` of a collection's images and captions indexes (one replica never holds the whole
    index). Holds up to `keep` collections (the current one and the one being swapped out), keyed by
    (folder, version), and loads one it is asked for but does not hold (after a swap, or a restart)."""

    def __init__(
        self, shard: int, index_dir: str, model_fingerprint: str, keep: int = 2, mmap: bool = False
    ) -> None:
        self.shard = shard
        self.fingerprint = model_fingerprint
        self.keep = max(1, keep)
        self.mmap = mmap
        self._held: OrderedDict[tuple[str, str], dict[str, ShardedIndex | None]] = OrderedDict()
        self._loading: dict[tuple[str, str], asyncio.Future] = {}
        # ready only once the shard is in memory
        self._held[(index_dir, collection_version(index_dir))] = self._load(index_dir)

    def _load(self, index_dir: str) -> dict[str, ShardedIndex | None]:
        counts = shard_counts(index_dir)
        return {
            kind: ShardedIndex.load(
                Path(index_dir) / kind, shard=self.shard, model_fingerprint=self.fingerprint, mmap=self.mmap
            )
            if self.shard < counts[kind]
            else None  # a smaller collection leaves this replica idle
            for kind in KINDS
        }

    async def _part(self, index_dir: str, version: str) -> dict[str, ShardedIndex | None]:
        """This shard of the collection, loading it (once, off the event loop) if it is not held yet."""
        key = (index_dir, version)
        if key in self._held:
            self._held.move_to_end(key)
            return self._held[key]
        task = self._loading.get(key)
        if task is None:
            task = self._loading[key] = asyncio.ensure_future(self._load_and_keep(key))
            task.add_done_callback(lambda _t: self._loading.pop(key, None))
        # shielded: a caller that times out must not cancel the load the other callers wait on
        return await asyncio.shield(task)

    async def _load_and_keep(self, key: tuple[str, str]) -> dict[str, ShardedIndex | None]:
        part = await asyncio.to_thread(self._load, key[0])
        self._held[key] = part
        while len(self._held) > self.keep:
            self._held.popitem(last=False)
        return part

    async def prepare(self, index_dir: str, version: str) -> dict[str, int]:
        """Load this shard of a collection ahead of a swap; returns the vectors held per kind."""
        part = await self._part(index_dir, version)
        return {kind: (0 if index is None else index.ntotal) for kind, index in part.items()}

    async def search(
        self, index_dir: str, version: str, kind: str, queries: np.ndarray, k: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k of this shard for `queries`: (scores, global ids), padded with id -1."""
        index = (await self._part(index_dir, version))[kind]
        if index is None:
            return empty_result(len(queries), k)
        if index.ntotal > 200_000:  # big shards search off the event loop (FAISS releases the GIL)
            return await asyncio.to_thread(index.search, queries, k)
        return index.search(queries, k)

    async def release(self, index_dir: str, version: str) -> bool:
        """Drop this shard of a swapped-out collection; True if it was held."""
        return self._held.pop((index_dir, version), None) is not None

    def held(self) -> list[list[str]]:
        return [list(key) for key in self._held]


# ---- the HTTP API -------------------------------------------------------------------------------------


class TextQuery(BaseModel):
    query: str = Field(
        ...,
        description=f"a sentence, 1 to {MAX_QUERY_CHARS} characters",
        examples=["a red circle above a blue square"],
    )
    k: int = Field(10, description=f"how many images to return (1 to {K_MAX})")


class ImageHit(BaseModel):
    rank: int
    id: int
    image_id: str
    score: float
    caption: str
    image_url: str


class CaptionHit(BaseModel):
    rank: int
    id: int
    caption: str
    image_id: str
    score: float


class TextResults(BaseModel):
    query: str
    k: int
    latency_ms: float
    results: list[ImageHit]


class ImageResults(BaseModel):
    k: int
    latency_ms: float
    captions: list[CaptionHit]
    images: list[ImageHit]


class ReloadRequest(BaseModel):
    index_dir: str = Field(..., description="a collection folder on the server, built with this app's model")


ERRORS = {
    400: {"description": "bad input, e.g. an empty query or a damaged image"},
    413: {"description": "upload too large"},
    415: {"description": "not an image"},
    422: {"description": "k out of range or a malformed request"},
    503: {"description": "a replica is unavailable; retry"},
}

api = FastAPI(
    title="imtext search API",
    version=__version__,
    description="Image <-> sentence search: sentences find images (POST /search/text), images find sentences "
    'and similar images (POST /search/image). Errors are JSON: `{"error": {"code", "message"}}`.',
)


@api.exception_handler(ApiError)
async def _api_error(_req: Request, exc: ApiError) -> JSONResponse:
    return error_response(exc.status, exc.code, exc.message)


@api.exception_handler(RequestValidationError)
async def _invalid(_req: Request, exc: RequestValidationError) -> JSONResponse:
    first = exc.errors()[0] if exc.errors() else {}
    where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
    msg = first.get("msg", "bad input")
    return error_response(422, "invalid_request", f"Invalid request: {where + ': ' if where else ''}{msg}.")


@api.exception_handler(StarletteHTTPException)
async def _http(_req: Request, exc: StarletteHTTPException) -> JSONResponse:
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    return error_response(exc.status_code, code, str(exc.detail))


@api.exception_handler(Exception)
async def _internal(_req: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error: %s", exc)
    return error_response(500, "internal", "Internal error; the server log has the details.")


@api.middleware("http")
async def _upload_limit(request: Request, call_next):
    """Refuse an upload that says it is too large before its body is parsed (or spooled to disk)."""
    length = request.headers.get("content-length")
    if (
        request.method == "POST"
        and length
        and length.isdigit()
        and int(length) > MAX_UPLOAD_BYTES + 64 * 1024
    ):
        return error_response(
            413,
            "upload_too_large",
            f"The upload is {int(length) / 2**20:.1f} MB; the limit is {MAX_UPLOAD_BYTES // 2**20} MB.",
        )
    return await call_next(request)


def check_k(k: int) -> int:
    if not 1 <= k <= K_MAX:
        raise ApiError(422, "bad_k", f"k must be between 1 and {K_MAX} (got {k}).")
    return k


def check_query(query: str) -> str:
    if not query.strip():
        raise ApiError(400, "empty_query", "Type a sentence to search for (the query is empty).")
    if len(query) > MAX_QUERY_CHARS:
        raise ApiError(
            400, "query_too_long", f"The query is {len(query)} characters; the limit is {MAX_QUERY_CHARS}."
        )
    return query


@serve.deployment(
    ray_actor_options={"num_cpus": 0.25}, max_ongoing_requests=256, num_replicas=1, max_surge_percent=100
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
    ) -> None:
        self.text, self.image, self.shards = text, image, shards
        self.model = model
        self.admin_token = admin_token or None
        self.encoder_timeout_s = encoder_timeout_s
        self.shard_timeout_s = shard_timeout_s
        self.reload_timeout_s = reload_timeout_s
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

    # -- plumbing ------------------------------------------------------------------------------------

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

    def _image_hits(self, meta: CollectionMeta, scores: np.ndarray, ids: np.ndarray) -> list[dict[str, Any]]:
        rows = meta.images.rows(ids)
        return [
            {
                "rank": r,
                "id": int(i),
                "image_id": row["image_id"],
                "score": float(s),
                "caption": row["caption"],
                "image_url": f"/images/{int(i)}",
            }
            for r, (s, i, row) in enumerate(zip(scores, ids, rows), 1)
        ]

    def _caption_hits(
        self, meta: CollectionMeta, scores: np.ndarray, ids: np.ndarray
    ) -> list[dict[str, Any]]:
        rows = meta.captions.rows(ids)
        return [
            {
                "rank": r,
                "id": int(i),
                "caption": row["caption"],
                "image_id": row["image_id"],
                "score": float(s),
            }
            for r, (s, i, row) in enumerate(zip(scores, ids, rows), 1)
        ]

    # -- endpoints -------------------------------------------------------------------------------------

    @api.get("/healthz", tags=["status"])
    async def healthz(self) -> dict[str, str]:
        """Liveness: the ingress answers (Serve health-checks every replica on its own)."""
        return {"status": "ok"}

    @api.get("/info", tags=["status"])
    async def info(self) -> dict[str, Any]:
        """The model and index in use, library versions, and example queries."""
        meta = self.meta
        return {
            "model": dict(self.model),
            "index": meta.index_info(),
            "collection": meta.collection_info(),
            "versions": self.versions,
            "examples": meta.examples,
        }

    @api.post("/search/text", response_model=TextResults, responses=ERRORS, tags=["search"])
    async def search_text(self, body: TextQuery) -> dict[str, Any]:
        """Images for a sentence, best first."""
        t0 = time.perf_counter()
        k = check_k(body.k)
        query = check_query(body.query)
        meta = self.meta  # one collection for the whole request, even if a swap happens meanwhile
        vector = await call(self.text.embed.remote(query), self.encoder_timeout_s, "text encoder")
        scores, ids = await self._search(meta, "images", vector, k)
        return {
            "query": body.query,
            "k": k,
            "latency_ms": (time.perf_counter() - t0) * 1000,
            "results": self._image_hits(meta, scores, ids),
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
            "captions": self._caption_hits(meta, c_scores, c_ids),
            "images": self._image_hits(meta, i_scores, i_ids),
        }

    @api.get(
        "/images/{image_id}",
        tags=["images"],
        responses={200: {"content": {"image/*": {}}}, 404: {"description": "no such image"}},
    )
    async def get_image(self, image_id: int) -> Response:
        """The photo behind a result, by its id (never by a path: the client cannot name a file)."""
        row = self.meta.images.get(image_id)
        if row is None:
            raise ApiError(404, "not_found", f"No image with id {image_id}.")
        path = Path(row["image_path"])
        try:
            data = await asyncio.to_thread(path.read_bytes)
        except OSError:
            log.warning("image %s: cannot read %s", image_id, path)
            raise ApiError(
                404, "image_missing", f"The file of image {image_id} is missing on the server."
            ) from None
        media = mimetypes.guess_type(path.name)[0] or ""
        if not media.startswith("image/"):
            media = "application/octet-stream"
        return Response(
            data,
            media_type=media,
            headers={"X-Content-Type-Options": "nosniff", "Cache-Control": "private, max-age=300"},
        )

    @api.post("/admin/reload", tags=["admin"], responses={401: {}, 403: {}, 409: {}})
    async def reload(self, body: ReloadRequest, request: Request) -> dict[str, Any]:
        """Swap in another collection (built by the same model) without dropping a request.

        Needs `Authorization: Bearer <admin token>` (the app's `admin_token`; off when none is set)."""
        self._check_admin(request)
        async with self._reload_lock:
            try:
                meta = await asyncio.to_thread(
                    read_meta, body.index_dir, self.model["fingerprint"], len(self.shards)
                )
            except ModelMismatch as e:
                raise ApiError(409, "model_mismatch", str(e)) from None
            except TooManyShards as e:
                raise ApiError(409, "too_many_shards", str(e)) from None
            except ImtextError as e:
                raise ApiError(400, "bad_index", str(e)) from None
            t0 = time.perf_counter()
            # every shard loads its part first; only then does the ingress switch (one assignment)
            try:
                await asyncio.gather(
                    *(
                        call(s.prepare.remote(meta.dir, meta.version), self.reload_timeout_s, "index shard")
                        for s in self.shards
                    )
                )
            except ApiError as e:
                # nothing was switched; free what the other replicas loaded (unless it is in use)
                if (meta.dir, meta.version) != (self.meta.dir, self.meta.version):
                    await asyncio.gather(
                        *(
                            call(
                                s.release.remote(meta.dir, meta.version), self.shard_timeout_s, "index shard"
                            )
                            for s in self.shards
                        ),
                        return_exceptions=True,
                    )
                if e.status != 500:
                    raise
                # the shard files themselves are bad (checksum, format)
                raise ApiError(
                    400, "bad_index", f"A shard replica could not load {meta.dir}: {e.cause}"
                ) from None
            previous, self.meta = self.meta, meta
            log.info("index swapped: %s -> %s in %.1f s", previous.dir, meta.dir, time.perf_counter() - t0)
            if (previous.dir, previous.version) != (meta.dir, meta.version):
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
        if (old.dir, old.version) == (self.meta.dir, self.meta.version):
            return
        try:
            await asyncio.gather(
                *(
                    call(s.release.remote(old.dir, old.version), self.shard_timeout_s, "index shard")
                    for s in self.shards
                )
            )
        except ApiError:  # a replica that restarted meanwhile does not hold it anyway
            pass

    def _check_admin(self, request: Request) -> None:
        if self.admin_token is None:
            raise ApiError(
                403,
                "admin_disabled",
                "Admin endpoints are off: start the app with an admin token (IMTEXT_ADMIN_TOKEN).",
            )
        given = request.headers.get("authorization", "")
        scheme, _, token = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            token.strip().encode(), self.admin_token.encode()
        ):
            raise ApiError(
                401, "unauthorized", "A valid `Authorization: Bearer <admin token>` header is required."
            )


# ---- the application builder ------------------------------------------------------------------------


def model_meta(model_dir: str | Path) -> dict[str, Any]:
    """What /info says about the model (and the fingerprint the index must match); loads the model once."""
    from imtext.model import TwoBranch

    model = TwoBranch.load(model_dir)
    cfg = model.config
    if cfg.image.backbone == "none":
        raise ImtextError(
            f"the model in {model_dir} has no image backbone (trained on features): it cannot "
            f"embed uploads; serve a model trained with --backbone NAME"
        )
    return {
        "fingerprint": model.fingerprint,
        "text_model": cfg.text.model,
        "backbone": cfg.image.backbone,
        "embed_dim": int(cfg.model.embed_dim),
    }


def _flag(value: Any) -> bool:
    """A boolean app argument; `serve run ... mmap=false` passes the string "false"."""
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on")
    return bool(value)


def _options(args: dict[str, Any], key: str) -> dict[str, Any]:
    opts = args.get(key) or {}
    if not isinstance(opts, dict):
        raise ImtextError(f"app argument {key} must be a mapping of deployment options, got {opts!r}")
    return dict(opts)


APP_ARGS = {
    "model_dir",
    "index_dir",
    "admin_token",
    "shard_slots",
    "encoder_timeout_s",
    "shard_timeout_s",
    "reload_timeout_s",
    "release_after_s",
    "text_batch_size",
    "image_batch_size",
    "batch_wait_timeout_s",
    "torch_threads",
    "mmap",
    "text_encoder",
    "image_encoder",
    "shard",
    "api",
}


def build_app(args: dict[str, Any]) -> serve.Application:
    """Serve's application builder: `serve run serve.app:build_app model_dir=DIR index_dir=DIR`.

    args: model_dir, index_dir (required); admin_token (default $IMTEXT_ADMIN_TOKEN; admin off without);
    release_after_s (how long shards keep a swapped-out collection; default: the two timeouts + 1 s);
    shard_slots (shard replicas to run, default: the collection's shard count; more leaves room for a bigger
    index swapped in later); encoder_timeout_s, shard_timeout_s, reload_timeout_s; text_batch_size,
    image_batch_size, batch_wait_timeout_s, torch_threads; and per-deployment option mappings
    text_encoder, image_encoder, shard, api (e.g. {"num_replicas": 2, "ray_actor_options": {"num_cpus": 1}}).
    """
    unknown = sorted(set(args) - APP_ARGS)
    if unknown:
        raise ImtextError(
            f"unknown app argument(s) {', '.join(unknown)}; known: {', '.join(sorted(APP_ARGS))}"
        )
    for key in ("model_dir", "index_dir"):
        if not args.get(key):
            raise ImtextError(
                f"app argument {key} is required (e.g. `serve run serve.app:build_app {key}=DIR ...`)"
            )
    model_dir = str(Path(args["model_dir"]).expanduser().resolve())
    index_dir = str(Path(args["index_dir"]).expanduser().resolve())
    model = model_meta(model_dir)
    meta = read_meta(index_dir, model["fingerprint"])  # refuse a mismatched collection before deploying
    slots = int(args.get("shard_slots") or max(meta.shards.values()))
    if slots < max(meta.shards.values()):
        raise ImtextError(
            f"shard_slots={slots} is fewer than the collection's {max(meta.shards.values())} shards"
        )
    threads = int(args.get("torch_threads", 1))
    wait = float(args.get("batch_wait_timeout_s", 0.002))

    text = TextEncoder.options(**_options(args, "text_encoder")).bind(
        model_dir, int(args.get("text_batch_size", 32)), wait, threads
    )
    image = ImageEncoder.options(**_options(args, "image_encoder")).bind(
        model_dir, int(args.get("image_batch_size", 8)), max(wait, 0.01), threads
    )
    shard_opts = _options(args, "shard")
    shards = [
        IndexShard.options(name=f"shard-{i}", **shard_opts).bind(
            i, index_dir, model["fingerprint"], mmap=_flag(args.get("mmap", False))
        )
        for i in range(slots)
    ]
    token = args.get("admin_token") or os.environ.get("IMTEXT_ADMIN_TOKEN") or None
    return SearchAPI.options(**_options(args, "api")).bind(
        text,
        image,
        shards,
        index_dir,
        model,
        admin_token=token,
        encoder_timeout_s=float(args.get("encoder_timeout_s", ENCODER_TIMEOUT_S)),
        shard_timeout_s=float(args.get("shard_timeout_s", SHARD_TIMEOUT_S)),
        reload_timeout_s=float(args.get("reload_timeout_s", RELOAD_TIMEOUT_S)),
        release_after_s=None if args.get("release_after_s") is None else float(args["release_after_s"]),
    )
