"""Uploaded images: the size limits, and decoding that refuses bad input with a value instead of raising.

The ingress checks the byte limit (`refuse_large_uploads` before reading the body, again after reading it);
the image encoder decodes, so a decompression bomb or a damaged file costs an encoder replica a rejection,
never the ingress its memory.
"""

import io
from dataclasses import dataclass

from fastapi import Request

from serve.errors import error_response

MAX_UPLOAD_BYTES = 10 * 1024 * 1024  # what a phone photo needs, with room to spare
MAX_IMAGE_PIXELS = 40_000_000  # decoded size guard (a small PNG can expand to gigabytes)
IMAGE_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")  # no EPS (Ghostscript) or other exotic decoders


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


async def refuse_large_uploads(request: Request, call_next):
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
