"""Uploaded images and request bodies: the size limits, and decoding that refuses bad input with a value
instead of raising.

- `BodyLimit` (ASGI middleware on the ingress) counts every request body as it streams, chunked or not, and
  answers 413 as soon as it passes its route's limit: an upload may be 10 MB, anything else (JSON) 64 kB.
  A `Content-Length` over the limit is refused before a byte is read; one that lies changes nothing.
- `decode_image` (in the image encoder) turns the bytes into an RGB image or a `Rejected`: whatever goes
  wrong while decoding (any exception) is that upload's 4xx; images over the pixel or aspect-ratio caps are
  refused from their header, and a large photo is shrunk while it is decoded (JPEG draft mode, then a
  reduce), so a small upload never costs the encoder a full-resolution decode and resize.
"""

import io
import json
from dataclasses import dataclass, field
from typing import Any

MAX_UPLOAD_BYTES = 10 * 1024 * 1024  # what a phone photo needs, with room to spare
MULTIPART_SLACK = 64 * 1024  # the multipart envelope and the `k` field around the file
MAX_JSON_BYTES = 64 * 1024  # a 1000-character query or a folder name, many times over
UPLOAD_PATHS = ("/search/image",)
MAX_IMAGE_PIXELS = 40_000_000  # decoded size guard (a small PNG can expand to gigabytes)
MAX_ASPECT_RATIO = 20.0  # wider panoramas than 20:1 are not photos the model can describe
IMAGE_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")  # no EPS (Ghostscript) or other exotic decoders


@dataclass(frozen=True)
class Rejected:
    """An input an encoder refused (a value, not an exception: one bad image in a batch must not fail the
    other requests batched with it). `details` become extra keys of the error object."""

    status: int
    code: str
    message: str
    details: dict[str, Any] = field(default_factory=dict, compare=False)


def bad_image(e: BaseException) -> Rejected:
    reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return Rejected(400, "bad_image", f"The image could not be decoded ({reason[:200]}).")


def decode_image(
    data: bytes,
    max_pixels: int = MAX_IMAGE_PIXELS,
    max_aspect: float = MAX_ASPECT_RATIO,
    min_side: int | None = None,
):
    """Bytes -> RGB PIL image, upright by EXIF (as the collection was embedded), or a Rejected.

    With `min_side`, a larger image is shrunk while decoding until its shorter side is about `min_side`
    (never below it), which the model's own resize then takes down to its input size."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    if not data:
        return Rejected(400, "empty_upload", "The uploaded file is empty.")
    try:
        with Image.open(io.BytesIO(data), formats=IMAGE_FORMATS) as im:
            w, h = im.size
            if w < 1 or h < 1:
                return Rejected(400, "bad_image", f"The image is {w}x{h} pixels.")
            if w * h > max_pixels:
                return Rejected(
                    413,
                    "image_too_large",
                    f"The image is {w}x{h} pixels; the limit is {max_pixels // 1_000_000} megapixels.",
                )
            if max(w, h) / min(w, h) > max_aspect:
                return Rejected(
                    400,
                    "bad_aspect_ratio",
                    f"The image is {w}x{h} pixels; images longer than {max_aspect:g}:1 are not accepted.",
                )
            if min_side and min(w, h) > 2 * min_side:
                scale = min_side / min(w, h)
                im.draft("RGB", (max(1, round(w * scale)), max(1, round(h * scale))))  # JPEG: DCT scaling
            im.load()
            out = ImageOps.exif_transpose(im) or im
            if min_side and min(out.size) >= 2 * min_side:
                out = out.reduce(min(out.size) // min_side)  # box filter; the shorter side stays >= min_side
            return out.convert("RGB")
    except UnidentifiedImageError:
        return Rejected(
            415, "not_an_image", f"That file is not an image this server reads ({', '.join(IMAGE_FORMATS)})."
        )
    except Image.DecompressionBombError:
        return Rejected(413, "image_too_large", "The image is too large to decode safely.")
    except Exception as e:  # truncated, damaged or hostile data, whatever the decoder raises
        return bad_image(e)


# ---- the body limit ---------------------------------------------------------------------------------


class BodyTooLarge(Exception):
    """Raised into the app when a body passes its limit; BodyLimit answers 413 instead of the app."""


def body_limit(path: str) -> int:
    return MAX_UPLOAD_BYTES + MULTIPART_SLACK if path in UPLOAD_PATHS else MAX_JSON_BYTES


def _too_large(limit: int) -> bytes:
    if limit > MAX_JSON_BYTES:
        error = {
            "code": "upload_too_large",
            "message": f"The upload is over the {MAX_UPLOAD_BYTES // 2**20} MB limit.",
        }
    else:
        error = {
            "code": "body_too_large",
            "message": f"The request body is over the {limit // 1024} kB limit.",
        }
    return json.dumps({"error": error}).encode()


class BodyLimit:
    """ASGI middleware: refuse a request body over its route's limit (`body_limit`) with a 413 JSON error,
    counting the bytes as they arrive, so a chunked body (no Content-Length) or one whose Content-Length
    lies is stopped at the limit, never read whole."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = body_limit(scope.get("path", ""))
        length = dict(scope.get("headers") or []).get(b"content-length", b"")
        if length.isdigit() and int(length) > limit:
            await self._refuse(send, limit)
            return
        received, over, started = 0, False, False

        async def counted_receive() -> dict:
            nonlocal received, over
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    over = True
                    raise BodyTooLarge
            return message

        async def guarded_send(message: dict) -> None:
            nonlocal started
            if over:
                return  # whatever the app answers to the interrupted body, the client gets the 413
            started = True
            await send(message)

        try:
            await self.app(scope, counted_receive, guarded_send)
        except Exception:
            if not over:
                raise
        if over and not started:
            await self._refuse(send, limit)

    @staticmethod
    async def _refuse(send: Any, limit: int) -> None:
        body = _too_large(limit)
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
