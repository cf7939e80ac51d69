"""Read one image as RGB, turning every way a file can be bad into a DataError that names the file."""

from __future__ import annotations

import os

from PIL import Image, ImageOps, UnidentifiedImageError

from imtext.errors import DataError


def load_image(path: str | os.PathLike) -> Image.Image:
    """Decode `path` fully (so a truncated file fails here, not later in a batch) and return it as RGB,
    rotated upright by its EXIF orientation tag if it has one."""
    try:
        with Image.open(path) as im:
            im.load()
            im = ImageOps.exif_transpose(im) or im
            return im.convert("RGB")
    except FileNotFoundError:
        raise DataError(f"image not found: {path}") from None
    except IsADirectoryError:
        raise DataError(f"expected an image file, found a folder: {path}") from None
    except UnidentifiedImageError:
        raise DataError(f"not a readable image (unknown or corrupt format): {path}") from None
    except Image.DecompressionBombError as e:
        raise DataError(f"image too large to decode safely: {path} ({e})") from None
    except (OSError, SyntaxError, ValueError) as e:
        # PIL reports truncated or damaged data as OSError ("image file is truncated") or SyntaxError.
        raise DataError(f"cannot read image {path}: {e}") from None
