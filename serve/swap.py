"""The steps of an index swap (POST /admin/reload), each across every shard replica; SearchAPI runs them.

Index swap without downtime: the shards load the new collection next to the old one (`load_everywhere`),
then the ingress switches in one assignment. A request captures the collection it started with and asks
the shards for exactly that one (folder + a hash of its collection.json, so a folder grown in place by
`imtext index add` counts as new), so requests in flight finish on the old index and new ones use the new;
the old one is freed (`release_everywhere`) once no request can need it. A shard replica that restarts
later loads whatever collection it is asked for, on demand. Refused: a collection built by another model
(409), one with more shards than the app runs (409), a damaged or malformed one (400), and any folder
outside the app's index root (403: the admin token names collections, not arbitrary server folders).
The swap lives in the ingress
replica: keep SearchAPI at one replica, and put the new index_dir in the config too, so a restart or
redeploy serves it.
"""

import asyncio
import hmac
import logging
import os
from pathlib import Path

from fastapi import Request
from ray.serve.handle import DeploymentHandle

from imtext.collection.format import CollectionMeta, ModelMismatch, TooManyShards, read_meta
from imtext.errors import ImtextError
from serve.errors import ApiError, call

log = logging.getLogger("imtext.serve")


def check_admin(request: Request, admin_token: str | None) -> None:
    """403 when the app has no admin token, 401 unless the request carries it as a Bearer token."""
    if admin_token is None:
        raise ApiError(
            403,
            "admin_disabled",
            "Admin endpoints are off: start the app with an admin token (IMTEXT_ADMIN_TOKEN).",
        )
    given = request.headers.get("authorization", "")
    scheme, _, token = given.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), admin_token.encode()):
        raise ApiError(
            401, "unauthorized", "A valid `Authorization: Bearer <admin token>` header is required."
        )


def same(a: CollectionMeta, b: CollectionMeta) -> bool:
    """The same collection: the same folder with the same contents."""
    return (a.dir, a.version) == (b.dir, b.version)


def confine(index_dir: str, index_root: str) -> str:
    """`index_dir` resolved (a relative one from the root, symbolic links followed), or a 403 when it lies
    outside `index_root`, a 400 when it is not a path at all."""
    try:
        root = Path(index_root).resolve()
        path = (root / Path(index_dir).expanduser()).resolve()
    except (ValueError, OSError, RuntimeError) as e:  # a NUL byte, a symlink loop
        raise ApiError(400, "bad_index", f"{index_dir!r} is not a usable folder name ({e}).") from None
    if not path.is_relative_to(root):
        raise ApiError(
            403,
            "outside_index_root",
            f"{index_dir} is outside the app's index root {root}; only collections under it can be loaded.",
        )
    return os.fspath(path)


def open_collection(
    index_dir: str, model_fingerprint: str, max_shards: int, index_root: str | None = None
) -> CollectionMeta:
    """The collection to swap in, confined to `index_root` and checked against the app's model and shard
    count (blocking: run it in a thread). A malformed folder is a 400, whatever is wrong with it."""
    if index_root is not None:
        index_dir = confine(index_dir, index_root)
    try:
        return read_meta(index_dir, model_fingerprint, max_shards)
    except ModelMismatch as e:
        raise ApiError(409, "model_mismatch", str(e)) from None
    except TooManyShards as e:
        raise ApiError(409, "too_many_shards", str(e)) from None
    except ImtextError as e:
        raise ApiError(400, "bad_index", str(e)) from None
    except Exception as e:  # a malformed file the reader did not foresee is still the folder's fault
        log.warning("reload of %s: %s: %s", index_dir, type(e).__name__, e)
        raise ApiError(
            400, "bad_index", f"{index_dir} is not a readable imtext collection ({type(e).__name__})."
        ) from None


async def load_everywhere(
    shards: list[DeploymentHandle],
    meta: CollectionMeta,
    current: CollectionMeta,
    timeout_s: float,
    release_timeout_s: float,
) -> None:
    """Every shard replica loads its part of `meta`. On a failure nothing may switch: what the other replicas
    loaded is freed again (unless it is `current`), and a shard that could not load its files is a 400."""
    try:
        await asyncio.gather(
            *(call(s.prepare.remote(meta.dir, meta.version), timeout_s, "index shard") for s in shards)
        )
    except ApiError as e:
        if not same(meta, current):
            await release_everywhere(shards, meta, release_timeout_s)
        if e.code in ("index_changed", "index_missing"):  # the folder changed after it was read here
            raise ApiError(
                409, e.code, f"{meta.dir} changed on disk or vanished while the shards loaded it; retry."
            ) from None
        if e.status != 500:
            raise
        # the shard files themselves are bad (checksum, format)
        raise ApiError(400, "bad_index", f"A shard replica could not load {meta.dir}: {e.cause}") from None


async def release_everywhere(shards: list[DeploymentHandle], meta: CollectionMeta, timeout_s: float) -> None:
    """Every shard replica drops its part of `meta`; a replica that fails to answer (one that restarted
    meanwhile does not hold it anyway) is skipped."""
    await asyncio.gather(
        *(call(s.release.remote(meta.dir, meta.version), timeout_s, "index shard") for s in shards),
        return_exceptions=True,
    )
