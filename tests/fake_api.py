"""A stand-in for the imtext search API (same HTTP contract as the Serve app), for testing the UI alone.

It serves a handful of generated PNGs with known captions and ranks them in a way a test can predict:
sentences by word overlap with an image's captions, images by the distance between mean colours. Run it
in-process with `FakeApi().start()` or by hand with `python tests/fake_api.py --port 8000`.
"""

from __future__ import annotations

import argparse
import io
import re
import socket
import threading
import time
from dataclasses import dataclass

import numpy as np
import uvicorn
from fastapi import FastAPI, File, Form, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from PIL import Image, ImageDraw, UnidentifiedImageError
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException


@dataclass(frozen=True)
class FakeImage:
    id: int
    image_id: str
    captions: tuple[str, ...]
    png: bytes


def _draw(kind: str, fg: tuple[int, int, int], bg: tuple[int, int, int]) -> bytes:
    img = Image.new("RGB", (240, 180), bg)
    d = ImageDraw.Draw(img)
    if kind == "square":
        d.rectangle([70, 40, 170, 140], fill=fg)
    elif kind == "circle":
        d.ellipse([70, 40, 170, 140], fill=fg)
    elif kind == "triangle":
        d.polygon([(120, 25), (190, 155), (50, 155)], fill=fg)
    elif kind == "stripes":
        for x in range(0, 240, 40):
            d.rectangle([x, 0, x + 19, 180], fill=fg)
    elif kind == "cross":
        d.rectangle([105, 20, 135, 160], fill=fg)
        d.rectangle([50, 75, 190, 105], fill=fg)
    elif kind == "gradient":
        for x in range(240):
            v = int(40 + 200 * x / 239)
            d.line([(x, 0), (x, 180)], fill=(v, v, v))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


_SPECS = [
    (
        "square",
        (220, 30, 30),
        (250, 250, 250),
        ("a red square on a white background", "a bright red box in the middle"),
    ),
    ("circle", (30, 60, 220), (250, 250, 250), ("a blue circle on a white background", "a round blue disc")),
    (
        "triangle",
        (30, 170, 60),
        (235, 235, 220),
        ("a green triangle pointing up", "a green pyramid shape on cream paper"),
    ),
    (
        "stripes",
        (240, 200, 20),
        (20, 20, 20),
        ("yellow and black stripes", "bold vertical bands of yellow on black"),
    ),
    (
        "cross",
        (140, 40, 170),
        (240, 240, 240),
        ("a purple cross", "a violet plus sign on a light background"),
    ),
    ("gradient", (0, 0, 0), (0, 0, 0), ("a gray gradient from dark to light", "smooth shades of grey")),
]

IMAGES: list[FakeImage] = [
    FakeImage(i, f"fake-{kind}", caps, _draw(kind, fg, bg)) for i, (kind, fg, bg, caps) in enumerate(_SPECS)
]
# captions get global ids in order, like the real index does
CAPTIONS: list[tuple[int, int, str]] = [
    (cid, im.id, cap) for cid, (im, cap) in enumerate((im, c) for im in IMAGES for c in im.captions)
]
_STOP = {"a", "an", "the", "on", "of", "in", "and", "from", "to", "up"}


def _words(s: str) -> set[str]:
    return {w for w in re.findall(r"[a-z]+", s.lower()) if w not in _STOP}


def _mean_rgb(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.float64).reshape(-1, 3).mean(0)


_MEANS = {im.id: _mean_rgb(im.png) for im in IMAGES}


def rank_text(query: str, k: int) -> list[tuple[int, float]]:
    """(image id, score) best first: share of the query's words found in the image's captions."""
    q = _words(query)
    scores = []
    for im in IMAGES:
        cap_words = set().union(*(_words(c) for c in im.captions))
        scores.append((im.id, len(q & cap_words) / max(len(q), 1)))
    return sorted(scores, key=lambda s: (-s[1], s[0]))[:k]


def rank_image(data: bytes, k: int) -> list[tuple[int, float]]:
    """(image id, score) best first: 1 minus the mean-colour distance, scaled to 0..1."""
    m = _mean_rgb(data)
    scores = [(i, 1.0 - float(np.linalg.norm(m - mu)) / 441.7) for i, mu in _MEANS.items()]
    return sorted(scores, key=lambda s: (-s[1], s[0]))[:k]


def _err(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status)


class TextQuery(BaseModel):
    query: str = ""
    k: int = 10


def create_app(delay_s: float = 0.0) -> FastAPI:
    """The fake app; `delay_s` slows every search (for checking that the page shows it is busy)."""
    app = FastAPI(title="imtext fake API")

    @app.exception_handler(RequestValidationError)
    async def _invalid(_req: Request, exc: RequestValidationError) -> JSONResponse:
        return _err(422, "invalid_request", f"Invalid request: {exc.errors()[0].get('msg', 'bad input')}")

    @app.exception_handler(StarletteHTTPException)
    async def _http(_req: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _err(exc.status_code, "not_found" if exc.status_code == 404 else "http_error", str(exc.detail))

    @app.get("/healthz")
    def healthz() -> dict:
        return {"status": "ok"}

    @app.get("/info")
    def info() -> dict:
        return {
            "model": {
                "fingerprint": "f4ke0123456789abcdef",
                "text_model": "bow",
                "backbone": "tiny-cnn",
                "embed_dim": 64,
                "trained": "2026-01-01T22:00:00+00:00",
            },
            "index": {
                "images": {"count": len(IMAGES), "shards": 2, "factory": "Flat"},
                "captions": {"count": len(CAPTIONS), "shards": 2, "factory": "Flat"},
            },
            "collection": {
                "data": "synth:fake-world",
                "splits": ["test"],
                "created": "2026-01-02T03:04:05+00:00",
                "updated": None,
                "counts": {"images": len(IMAGES), "captions": len(CAPTIONS)},
                "version": "f4ke",
            },
            "versions": {"imtext": "0.1.0", "ray": "fake", "faiss": "fake", "torch": "fake"},
            "examples": [IMAGES[1].captions[1], IMAGES[3].captions[0], IMAGES[4].captions[1]],
        }

    def _image_hit(rank: int, image_id: int, score: float) -> dict:
        im = IMAGES[image_id]
        return {
            "rank": rank,
            "id": im.id,
            "image_id": im.image_id,
            "score": round(score, 6),
            "caption": im.captions[0],
            "image_url": f"/images/{im.id}",
        }

    def _check_k(k: int) -> JSONResponse | None:
        if not 1 <= k <= 100:
            return _err(422, "bad_k", f"k must be between 1 and 100 (got {k}).")
        return None

    @app.post("/search/text")
    def search_text(body: TextQuery):
        t0 = time.perf_counter()
        if (bad := _check_k(body.k)) is not None:
            return bad
        if not body.query.strip():
            return _err(400, "empty_query", "Type a sentence to search for (the query is empty).")
        time.sleep(delay_s)
        hits = rank_text(body.query, body.k)
        known = set().union(*(_words(c) for im in IMAGES for c in im.captions))
        return {
            "query": body.query,
            "k": body.k,
            "latency_ms": (time.perf_counter() - t0) * 1000,
            "results": [_image_hit(r, i, s) for r, (i, s) in enumerate(hits, 1)],
            "unknown_words": sorted(_words(body.query) - known),
        }

    @app.post("/search/image")
    async def search_image(file: UploadFile = File(...), k: int = Form(10)):
        t0 = time.perf_counter()
        if (bad := _check_k(k)) is not None:
            return bad
        data = await file.read()
        try:
            hits = rank_image(data, len(IMAGES))
        except (UnidentifiedImageError, OSError):
            return _err(400, "bad_image", "That file is not an image we can read (try a JPEG or PNG).")
        time.sleep(delay_s)
        img_score = dict(hits)
        # a caption scores as its image, minus a hair per position so the order is total and stable
        caps = sorted(CAPTIONS, key=lambda c: (-img_score[c[1]], c[0]))[:k]
        captions = [
            {
                "rank": r,
                "id": cid,
                "caption": cap,
                "image_id": IMAGES[iid].image_id,
                "score": round(img_score[iid] - 1e-3 * (cid % 2), 6),
            }
            for r, (cid, iid, cap) in enumerate(caps, 1)
        ]
        return {
            "k": k,
            "latency_ms": (time.perf_counter() - t0) * 1000,
            "captions": captions,
            "images": [_image_hit(r, i, s) for r, (i, s) in enumerate(hits[:k], 1)],
        }

    @app.get("/images/{image_id}")
    def image(image_id: int):
        if not 0 <= image_id < len(IMAGES):
            return _err(404, "not_found", f"No image with id {image_id}.")
        return Response(IMAGES[image_id].png, media_type="image/png")

    return app


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class FakeApi:
    """uvicorn in a daemon thread; `start()` returns once it accepts connections, `close()` stops it."""

    def __init__(self, host: str = "127.0.0.1", port: int | None = None, delay_s: float = 0.0):
        self.host, self.port = host, port or free_port(host)
        cfg = uvicorn.Config(
            create_app(delay_s), host=self.host, port=self.port, log_level="warning", lifespan="off"
        )
        self._server = uvicorn.Server(cfg)
        self._thread = threading.Thread(target=self._server.run, name="fake-api", daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 10.0) -> FakeApi:
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"fake API did not start on {self.url}")
            time.sleep(0.02)
        return self

    def close(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=5)

    def __enter__(self) -> FakeApi:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8000)
    args = ap.parse_args()
    uvicorn.run(create_app(), host=args.host, port=args.port)
