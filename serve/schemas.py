"""What the HTTP API accepts and returns: the request and response models (its OpenAPI schema), the error
responses it documents, the checks on a query the models cannot express with the app's own error codes,
and the hits of a search as the response models have them."""

from typing import Any

import numpy as np
from pydantic import BaseModel, Field

from imtext.collection.format import Rows
from serve.errors import ApiError

MAX_QUERY_CHARS = 1000
K_MAX = 100


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


def image_hits(images: Rows, scores: np.ndarray, ids: np.ndarray) -> list[dict[str, Any]]:
    """Ranked ImageHits: the collection's images `ids` (best first) with their `scores`."""
    rows = images.rows(ids)
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


def caption_hits(captions: Rows, scores: np.ndarray, ids: np.ndarray) -> list[dict[str, Any]]:
    """Ranked CaptionHits: the collection's captions `ids` (best first) with their `scores`."""
    rows = captions.rows(ids)
    return [
        {"rank": r, "id": int(i), "caption": row["caption"], "image_id": row["image_id"], "score": float(s)}
        for r, (s, i, row) in enumerate(zip(scores, ids, rows), 1)
    ]
