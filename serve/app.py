"""The imtext search API on Ray Serve: two encoders, one replica per index shard, one HTTP ingress.

    client --HTTP--> SearchAPI (FastAPI ingress: validation, fan-out, merge, metadata, images)
                       |-- TextEncoder  (@serve.batch: many queries, one forward pass)
                       |-- ImageEncoder (@serve.batch; decodes and checks the upload)
                       '-- shard-0 ... shard-{S-1} (IndexShard: shard i of the images and captions indexes)

Why this shape:
- Each IndexShard replica holds one shard, so an index larger than one machine's memory still serves, and
  the ingress merges the per-shard top-k (serve/shards.py, serve/ingress.py).
- Every call to another deployment has a timeout: a dead or slow replica turns into a 503 the client can
  retry, never a hung request (serve/errors.py).
- The index swaps without downtime by POST /admin/reload (serve/swap.py). A redeploy with a new index_dir
  (`serve deploy`, `serve.run`) also swaps, by Serve's rolling update (max_surge_percent=100 everywhere),
  but it is not seamless: in a trial on 2 cores, 1 of 205 requests got a 503 after the shard timeout while
  the shard replicas rolled over, where the tests' 200 requests across POST /admin/reload all succeeded.

This module is only the application builder, `build_app`; its arguments are `AppArgs`. Run it with
`imtext serve`, `serve run serve/config.yaml`, or `serve run serve.app:build_app model_dir=DIR index_dir=DIR`.
"""

# No `from __future__ import annotations`: Serve validates the args into AppArgs only when build_app's
# parameter annotation is the class itself, not a string.

import os
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from ray import serve

from imtext.collection.format import read_meta
from imtext.errors import ImtextError
from serve.encoders import ImageEncoder, TextEncoder
from serve.ingress import (
    ENCODER_TIMEOUT_S,
    RELOAD_TIMEOUT_S,
    REQUEST_TIMEOUT_S,
    SHARD_TIMEOUT_S,
    SearchAPI,
)
from serve.shards import IndexShard

DeploymentOptions = dict[str, Any]


class AppArgs(BaseModel):
    """build_app's arguments (`args:` in serve/config.yaml, `key=value` after `serve run serve.app:build_app`).

    Per-deployment options (text_encoder, image_encoder, shard, api) are Serve's deployment options, e.g.
    {"num_replicas": 2, "ray_actor_options": {"num_cpus": 1}}; the shard options apply to every shard-i.
    """

    model_config = ConfigDict(extra="forbid")

    model_dir: str = Field(min_length=1, description="the model folder (`imtext train --out`)")
    index_dir: str = Field(min_length=1, description="the collection folder (`imtext index build`)")
    admin_token: str | None = Field(
        None,
        description="POST /admin/reload's token; default $IMTEXT_ADMIN_TOKEN, "
        "admin endpoints off without one",
    )
    index_root: str | None = Field(
        None,
        description="the folder POST /admin/reload may load collections from (relative index_dir values "
        "are taken from it); default: the folder index_dir lies in",
    )
    shard_slots: int | None = Field(
        None,
        description="shard replicas to run; default (None or 0): the "
        "collection's shard count; more leaves room for a bigger index swapped in",
    )
    encoder_timeout_s: float = ENCODER_TIMEOUT_S
    shard_timeout_s: float = SHARD_TIMEOUT_S
    reload_timeout_s: float = RELOAD_TIMEOUT_S
    request_timeout_s: float = Field(
        REQUEST_TIMEOUT_S, gt=0, description="a whole search, past which the client gets a 503"
    )
    release_after_s: float | None = Field(
        None, description="how long shards keep a swapped-out collection; default: the two timeouts + 1 s"
    )
    text_batch_size: int = 32
    image_batch_size: int = 8
    batch_wait_timeout_s: float = 0.002
    torch_threads: int = 1
    mmap: bool = Field(False, description="memory-map the shards read-only (large IVF/PQ indexes)")
    text_encoder: DeploymentOptions = {}
    image_encoder: DeploymentOptions = {}
    shard: DeploymentOptions = {}
    api: DeploymentOptions = {}

    @field_validator("text_encoder", "image_encoder", "shard", "api", mode="before")
    @classmethod
    def _none_is_no_options(cls, value: Any) -> Any:
        return {} if value is None else value  # `shard:` with nothing under it in YAML


def _problem(error: dict[str, Any]) -> str:
    key = ".".join(str(p) for p in error["loc"]) or "args"
    if error["type"] in ("missing", "string_too_short") and key in ("model_dir", "index_dir"):
        return f"app argument {key} is required (e.g. `serve run serve.app:build_app {key}=DIR ...`)"
    if error["type"] == "extra_forbidden":
        return f"unknown app argument {key}; known: {', '.join(AppArgs.model_fields)}"
    return f"app argument {key}: {error['msg']} (got {error['input']!r})"


def parse_args(args: dict[str, Any]) -> AppArgs:
    """The arguments checked and typed, or an ImtextError that names every bad, unknown or missing key."""
    try:
        return AppArgs.model_validate(args)
    except ValidationError as e:
        raise ImtextError("; ".join(_problem(err) for err in e.errors())) from None


def model_meta(model_dir: str | Path) -> dict[str, Any]:
    """What /info says about the model (and the fingerprint the index must match); loads the model once."""
    from imtext.collection import load_indexing_model

    model = load_indexing_model(model_dir)  # refuses a model that cannot embed uploads
    return {
        "fingerprint": model.fingerprint,
        "text_model": model.text_config.model,
        "sentence_encoder": model.text_config.sentence_encoder,  # "none", or the frozen encoder beside it
        "backbone": model.image_config.backbone,
        "embed_dim": model.embed_dim,
    }


def build_app(args: AppArgs) -> serve.Application:
    """Serve's application builder: `serve run serve.app:build_app model_dir=DIR index_dir=DIR`.

    Serve validates the `args` of a config or command line into AppArgs; from Python, a plain dict works too
    (`build_app({"model_dir": ..., "index_dir": ...})`), with problems raised as ImtextError.
    """
    if not isinstance(args, AppArgs):
        args = parse_args(args)
    model_dir = str(Path(args.model_dir).expanduser().resolve())
    index_dir = str(Path(args.index_dir).expanduser().resolve())
    index_root = str(Path(args.index_root or Path(index_dir).parent).expanduser().resolve())
    if not Path(index_dir).is_relative_to(index_root):
        raise ImtextError(f"index_dir {index_dir} is outside index_root {index_root}")
    model = model_meta(model_dir)
    meta = read_meta(index_dir, model["fingerprint"])  # refuse a mismatched collection before deploying
    slots = args.shard_slots or max(meta.shards.values())
    if slots < max(meta.shards.values()):
        raise ImtextError(
            f"shard_slots={slots} is fewer than the collection's {max(meta.shards.values())} shards"
        )
    threads, wait = args.torch_threads, args.batch_wait_timeout_s

    text = TextEncoder.options(**args.text_encoder).bind(model_dir, args.text_batch_size, wait, threads)
    image = ImageEncoder.options(**args.image_encoder).bind(
        model_dir, args.image_batch_size, max(wait, 0.01), threads
    )
    shards = [
        IndexShard.options(name=f"shard-{i}", **args.shard).bind(
            i, index_dir, model["fingerprint"], mmap=args.mmap
        )
        for i in range(slots)
    ]
    token = args.admin_token or os.environ.get("IMTEXT_ADMIN_TOKEN") or None
    return SearchAPI.options(**args.api).bind(
        text,
        image,
        shards,
        index_dir,
        model,
        admin_token=token,
        encoder_timeout_s=args.encoder_timeout_s,
        shard_timeout_s=args.shard_timeout_s,
        reload_timeout_s=args.reload_timeout_s,
        release_after_s=args.release_after_s,
        index_root=index_root,
        request_timeout_s=args.request_timeout_s,
    )
