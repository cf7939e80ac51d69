"""Every failure the client sees is JSON, `{"error": {"code", "message"}}`, with a status that says who can
fix it: 4xx the caller, 503 nobody (retry: a replica is down, restarting, overloaded or late), 500 us.

- `ApiError`: raised anywhere in the ingress, answered by `api_error`;
- `Refusal`: raised by a replica (an index shard) for a request it cannot serve as asked; `call` turns it
  into the ApiError it names, so the client gets a clear 4xx/503 instead of a 500;
- `call`: awaits a call to another deployment with a deadline, so a dead or slow replica turns into a 503
  the client can retry, never a hung request;
- `clean_text`: every string the server echoes is encodable (a lone surrogate in a query never becomes a 500);
- the FastAPI exception handlers (`install_error_handlers`) give FastAPI's own errors (validation, unknown
  route, wrong method) and unexpected ones the same shape.
"""

import asyncio
import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from ray.exceptions import GetTimeoutError, RayActorError
from ray.serve.exceptions import RayServeException
from ray.serve.handle import DeploymentResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("imtext.serve")


class ApiError(Exception):
    """An answer the client gets as `{"error": {"code", "message"}}` with this HTTP status; `cause` is the
    underlying error's message (for the log, or for an endpoint that may show it, like /admin/reload);
    `details` are extra keys of the error object (e.g. `unknown_words`)."""

    def __init__(
        self, status: int, code: str, message: str, cause: str = "", details: dict[str, Any] | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.cause = status, code, message, cause
        self.details = dict(details or {})


class Refusal(Exception):
    """Raised in a replica for a request it cannot serve as asked (e.g. a shard whose index changed on disk);
    `call` answers it with this status and code instead of a 500. Pickles by its args (Ray ships it back)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(status, code, message)
        self.status, self.code, self.message = status, code, message

    def __str__(self) -> str:
        return self.message


def clean_text(text: str) -> str:
    """`text` with what UTF-8 cannot encode (lone surrogates, e.g. from a JSON `"\\ud800"`) replaced by
    U+FFFD, so it can be echoed in a response."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return "".join("\ufffd" if 0xD800 <= ord(c) <= 0xDFFF else c for c in text)


def _clean(value: Any) -> Any:
    if isinstance(value, str):
        return clean_text(value)
    if isinstance(value, list):
        return [_clean(v) for v in value]
    if isinstance(value, dict):
        return {clean_text(str(k)): _clean(v) for k, v in value.items()}
    return value


def error_response(
    status: int, code: str, message: str, details: dict[str, Any] | None = None
) -> JSONResponse:
    body = {"code": code, "message": message, **(details or {})}
    return JSONResponse({"error": _clean(body)}, status_code=status)


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
        cause = getattr(e, "cause", None) or e  # a RayTaskError carries the replica's own exception
        if isinstance(cause, Refusal):
            log.warning("%s refused: %s", what, cause.message)
            raise ApiError(cause.status, cause.code, cause.message) from None
        log.exception("%s failed", what)
        raise ApiError(
            500,
            "internal",
            f"The {what} failed; the server log has the details.",
            cause=str(cause).strip().splitlines()[-1] if str(cause).strip() else type(cause).__name__,
        ) from None


# ---- FastAPI exception handlers -------------------------------------------------------------------


async def api_error(_req: Request, exc: ApiError) -> JSONResponse:
    return error_response(exc.status, exc.code, exc.message, exc.details)


async def invalid_request(_req: Request, exc: RequestValidationError) -> JSONResponse:
    first = exc.errors()[0] if exc.errors() else {}
    where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
    msg = first.get("msg", "bad input")
    return error_response(422, "invalid_request", f"Invalid request: {where + ': ' if where else ''}{msg}.")


async def http_error(_req: Request, exc: StarletteHTTPException) -> JSONResponse:
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    return error_response(exc.status_code, code, str(exc.detail))


async def internal_error(_req: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error: %s", exc)
    return error_response(500, "internal", "Internal error; the server log has the details.")


def install_error_handlers(app: FastAPI) -> None:
    """Every error `app` answers, in the one JSON shape."""
    app.add_exception_handler(ApiError, api_error)
    app.add_exception_handler(RequestValidationError, invalid_request)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(Exception, internal_error)
