"""What the HTTP API accepts and returns: the request and response models (its OpenAPI schema), the error
responses it documents, the checks on a query the models cannot express with the app's own error codes,
and the hits of a search as the response models have them."""

from typing import Any

import numpy as np
from pydantic import BaseModel, Field

from imtext.collection.format import Rows
from serve.errors import ApiError, clean_text

MAX_QUERY_CHARS = 1000
K_MAX = 100
MAX_ID = 2**63 - 1  # ids are int64 in the collection; anything larger names no row
MAX_PATH_CHARS = 4096


class TextQuery(BaseModel):
    # The limits are documented in the schema but checked by check_query / check_k, so that the answer
    # carries the app's own error codes (empty_query, query_too_long, bad_k).
    query: str = Field(
        ...,
        description=f"a sentence, 1 to {MAX_QUERY_CHARS} characters, with at least one word the model knows",
        examples=["a red circle above a blue square"],
        json_schema_extra={"minLength": 1, "maxLength": MAX_QUERY_CHARS},
    )
    k: int = Field(
        10,
        description=f"how many images to return (1 to {K_MAX})",
        json_schema_extra={"minimum": 1, "maximum": K_MAX},
    )


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
    unknown_words: list[str] = Field(
        default_factory=list, description="words of the query the model does not know (they were ignored)"
    )


class ImageResults(BaseModel):
    k: int
    latency_ms: float
    captions: list[CaptionHit]
    images: list[ImageHit]


class ReloadRequest(BaseModel):
    index_dir: str = Field(
        ...,
        description="a collection folder under the app's index root (relative paths are taken from the "
        "root), built with this app's model",
        max_length=MAX_PATH_CHARS,
    )


class ErrorDetail(BaseModel):
    code: str = Field(..., description="a stable, machine-readable code, e.g. empty_query, bad_k, not_found")
    message: str = Field(..., description="what went wrong and what to do, for a person")
    unknown_words: list[str] | None = Field(
        None, description="no_known_words only: the query's words the model does not know"
    )


class ErrorResponse(BaseModel):
    """Every error the API answers: `{"error": {"code", "message"}}`."""

    error: ErrorDetail


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The documented error responses of a route (FastAPI's own 422 schema is replaced by ours)."""
    return {status: {"model": ErrorResponse, "description": ERROR_TEXT[status]} for status in statuses}


ERROR_TEXT = {
    400: "bad input: an empty query, no known word, a damaged image, a malformed collection",
    401: "the admin token is missing or wrong",
    403: "admin endpoints are off, or the folder is outside the index root",
    404: "no such image",
    409: "the collection was built by another model, has too many shards, or changed while loading",
    413: "the body or the image is too large",
    415: "not an image this server reads",
    422: "k out of range, or a malformed request",
    503: "a replica is unavailable, overloaded or late; retry",
}
ERRORS = errors(400, 413, 415, 422, 503)


def check_k(k: int) -> int:
    if not 1 <= k <= K_MAX:
        raise ApiError(422, "bad_k", f"k must be between 1 and {K_MAX} (got {k}).")
    return k


def check_query(query: str) -> str:
    """The query, with anything UTF-8 cannot carry replaced (it is echoed back), or a 400."""
    query = clean_text(query)
    if not query.strip():
        raise ApiError(400, "empty_query", "Type a sentence to search for (the query is empty).")
    if len(query) > MAX_QUERY_CHARS:
        raise ApiError(
            400, "query_too_long", f"The query is {len(query)} characters; the limit is {MAX_QUERY_CHARS}."
        )
    return query


def image_hits(images: Rows, scores: np.ndarray, ids: np.ndarray, version: str = "") -> list[dict[str, Any]]:
    """Ranked ImageHits: the collection's images `ids` (best first) with their `scores`. `image_url` names
    the collection `version` (`?v=`), so a client that caches by URL never mixes two collections' ids."""
    rows = images.rows(ids)
    suffix = f"?v={version}" if version else ""
    return [
        {
            "rank": r,
            "id": int(i),
            "image_id": row["image_id"],
            "score": float(s),
            "caption": row["caption"],
            "image_url": f"/images/{int(i)}{suffix}",
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
