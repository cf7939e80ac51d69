"""A small HTTP client for the imtext search API, so the Gradio page only deals in plain values.

The page runs in its own process and reaches the Serve app over HTTP. Every failure (API down, timeout,
4xx/5xx with the API's `{"error": {"code", "message"}}` body, a reply that is not JSON) becomes one
`ApiError` whose message a person can read, never an httpx traceback.
"""

from __future__ import annotations

import io
import mimetypes
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any

import httpx
from PIL import Image, UnidentifiedImageError

from imtext.errors import ImtextError

DEFAULT_TIMEOUT = httpx.Timeout(30.0, connect=3.0)


class ApiError(ImtextError):
    """The API could not answer: `code` is the API's error code (or a client-side one), `status` the HTTP
    status (0 when no reply came back at all)."""

    def __init__(
        self, message: str, code: str = "error", status: int = 0, unknown_words: list[str] | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.status = status
        self.unknown_words = list(unknown_words or [])  # no_known_words: the query's words the model lacks


CACHED_SIDE = 768  # images are kept at most this large (the galleries show them at 190-400 px)
CACHE_BYTES = 128 * 2**20  # decoded pixels the cache may hold in all


class ApiClient:
    """Thread-safe client (Gradio runs handlers in a thread pool); images are cached in a small LRU because
    the same top results come back query after query. The cache is keyed by the image's URL, which names
    the collection version (`?v=`), so a reload never shows a stale photo under a reused id; it holds
    images shrunk to CACHED_SIDE and at most `cache_bytes` of pixels (and `cache_size` images)."""

    def __init__(
        self,
        base_url: str,
        timeout: httpx.Timeout | float = DEFAULT_TIMEOUT,
        cache_size: int = 256,
        transport: httpx.BaseTransport | None = None,
        cache_bytes: int = CACHE_BYTES,
    ):
        self.base_url = base_url.rstrip("/")
        self._http = httpx.Client(
            base_url=self.base_url, timeout=timeout, follow_redirects=True, transport=transport
        )
        self._cache: OrderedDict[str, Image.Image] = OrderedDict()
        self._cache_size = cache_size
        self._cache_bytes = cache_bytes
        self._lock = threading.Lock()

    # -- endpoints -------------------------------------------------------------------------------------

    def health(self) -> bool:
        """True when the API answers `/healthz` with status ok; never raises."""
        try:
            return self._json("GET", "/healthz").get("status") == "ok"
        except ApiError:
            return False

    def info(self) -> dict[str, Any]:
        return self._json("GET", "/info")

    def search_text(self, query: str, k: int) -> dict[str, Any]:
        """Images ranked for a sentence; adds `roundtrip_ms` (what the page waited) next to `latency_ms`."""
        return self._timed("POST", "/search/text", json={"query": query, "k": int(k)})

    def search_image(self, image: str | Path | bytes, k: int, filename: str | None = None) -> dict[str, Any]:
        """Captions and similar images for an image (a path or raw bytes), sent as the upload's own bytes
        so the API sees exactly what the user gave."""
        if isinstance(image, (str, Path)):
            path = Path(image)
            try:
                data = path.read_bytes()
            except OSError as e:
                raise ApiError(
                    f"Cannot read the uploaded file {path.name}: {e.strerror}.", "bad_upload"
                ) from e
            filename = filename or path.name
        else:
            data = image
            filename = filename or "upload"
        ctype = mimetypes.guess_type(filename)[0] or "application/octet-stream"
        return self._timed(
            "POST", "/search/image", files={"file": (filename, data, ctype)}, data={"k": str(int(k))}
        )

    def image(self, image_id: int, url: str | None = None) -> Image.Image:
        """The image behind a result, decoded (and cached) here: the browser may not reach the API host.
        `url` is the hit's `image_url` (it names the collection version the id belongs to)."""
        key = url or f"/images/{image_id}"
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
        resp = self._request("GET", key)
        try:
            img = Image.open(io.BytesIO(resp.content))
            img.load()
            img.thumbnail((CACHED_SIDE, CACHED_SIDE))
        except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as e:
            raise ApiError(
                f"The API sent image {image_id} in a form that cannot be decoded.", "bad_image"
            ) from e
        with self._lock:
            self._cache[key] = img
            while len(self._cache) > 1 and (
                len(self._cache) > self._cache_size or self._cached_bytes() > self._cache_bytes
            ):
                self._cache.popitem(last=False)
        return img

    def _cached_bytes(self) -> int:
        return sum(im.width * im.height * len(im.getbands()) for im in self._cache.values())

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> ApiClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- plumbing --------------------------------------------------------------------------------------

    def _timed(self, method: str, path: str, **kw: Any) -> dict[str, Any]:
        t0 = time.perf_counter()
        body = self._json(method, path, **kw)
        body["roundtrip_ms"] = (time.perf_counter() - t0) * 1000.0
        return body

    def _json(self, method: str, path: str, **kw: Any) -> dict[str, Any]:
        resp = self._request(method, path, **kw)
        try:
            body = resp.json()
        except ValueError as e:
            raise ApiError(
                f"The API at {self.base_url} answered {path} with something that is not JSON.",
                "bad_reply",
                resp.status_code,
            ) from e
        if not isinstance(body, dict):
            raise ApiError(
                f"The API answered {path} with an unexpected reply.", "bad_reply", resp.status_code
            )
        return body

    def _request(self, method: str, path: str, **kw: Any) -> httpx.Response:
        try:
            resp = self._http.request(method, path, **kw)
        except httpx.TimeoutException as e:
            raise ApiError(
                f"The search API at {self.base_url} did not answer in time; try again.", "timeout"
            ) from e
        except httpx.TransportError as e:
            raise ApiError(
                f"Cannot reach the search API at {self.base_url}; is it running? (start it with: imtext serve)",
                "unreachable",
            ) from e
        if resp.status_code >= 400:
            raise _error_from(resp)
        return resp


def _error_from(resp: httpx.Response) -> ApiError:
    """The API's own message when it sent one (`{"error": {...}}`, or FastAPI's `{"detail": ...}`)."""
    code, message, unknown = f"http_{resp.status_code}", "", None
    try:
        body = resp.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        err = body.get("error")
        if isinstance(err, dict):
            code = str(err.get("code") or code)
            message = str(err.get("message") or "")
            if isinstance(err.get("unknown_words"), list):
                unknown = [str(w) for w in err["unknown_words"]]
        elif isinstance(body.get("detail"), str):
            message = body["detail"]
    if not message:
        reason = resp.reason_phrase or "error"
        message = f"The search API answered {resp.status_code} {reason}."
    return ApiError(message, code, resp.status_code, unknown)
