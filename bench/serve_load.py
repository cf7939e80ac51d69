"""Load on the Serve app over loopback, next to the same pipeline called in-process.

    python bench/serve_load.py                         # 2,000 requests at concurrency 1, 8 and 32
    python bench/serve_load.py --quick                 # 200 per level (a smoke run)
    python bench/serve_load.py --model DIR --index DIR --requests 5000 --concurrency 1 16 64

POST /search/text with captions of the collection as queries (k=10). The in-process row runs the same
steps one query at a time without HTTP or Ray: encode (TwoBranch.embed_texts), search every shard (each
loaded alone, as a replica holds it), merge_topk, attach the metadata rows. "overhead" is the HTTP p50 at
that concurrency over the in-process p50. Without --model/--index it trains a small model on a synthetic
world and indexes it first (about a minute), all in a temporary folder.

The load generator is one asyncio client in this process, so on a small machine it competes with the app for
the same cores: the numbers are what one host serving itself reaches, not what the app would serve to
clients elsewhere.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import shutil
import socket
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

K = 10


@dataclass
class Result:
    name: str
    concurrency: int
    requests: int
    errors: int
    seconds: float
    lat_ms: np.ndarray

    def row(self, base_p50: float | None) -> list[str]:
        p50, p95, p99 = (
            np.percentile(self.lat_ms, q) if len(self.lat_ms) else float("nan") for q in (50, 95, 99)
        )
        overhead = f"{p50 / base_p50:.0f}x" if base_p50 else ("1x" if self.name == "in-process" else "")
        return [
            self.name,
            str(self.concurrency),
            str(self.requests),
            f"{p50:.1f}",
            f"{p95:.1f}",
            f"{p99:.1f}",
            f"{self.requests / self.seconds:.0f}",
            str(self.errors),
            overhead,
        ]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_world(root: Path) -> tuple[Path, Path]:
    """A small model trained on a synthetic world, and its collection (2 shards)."""
    from imtext.collection import build_collection
    from imtext.config import Config
    from imtext.data.synth import generate
    from imtext.train.loop import train_local

    world = generate(root / "world", n_images=600, seed=1, order_pairs=40)
    cfg = Config().override(
        {
            "data.spec": f"synth:{world}",
            "text.word_dim": 64,
            "text.hidden_dim": 96,
            "model.embed_dim": 64,
            "model.mlp_hidden": 128,
            "train.epochs": 2,
            "train.batch_size": 64,
            "train.out": str(root / "model"),
        }
    )
    train_local(cfg)
    index = build_collection(
        root / "model", f"synth:{world}", root / "index", shards=2, use_ray=False, progress=False
    )
    return root / "model", index


def in_process(model_dir: Path, index_dir: Path, queries: list[str], n: int) -> Result:
    """The app's steps, one query at a time, with no HTTP and no Ray."""
    from imtext.collection import Collection
    from imtext.index import ShardedIndex, merge_topk
    from imtext.model import TwoBranch

    model = TwoBranch.load(model_dir)
    col = Collection.load(index_dir)
    shards = [
        ShardedIndex.load(index_dir / "images", shard=i) for i in range(len(col.images.manifest["shards"]))
    ]
    lat = []
    for q in queries[:20]:  # warm-up
        model.embed_texts([q])
    t_all = time.perf_counter()
    for i in range(n):
        t0 = time.perf_counter()
        v = model.embed_texts([queries[i % len(queries)]])
        parts = [s.search(v, K) for s in shards]
        scores, ids = merge_topk([p[0] for p in parts], [p[1] for p in parts], K)
        rows = col.image_rows(ids[0])
        _ = [{"rank": r, "score": float(s), **row} for r, (s, row) in enumerate(zip(scores[0], rows), 1)]
        lat.append((time.perf_counter() - t0) * 1000)
    return Result("in-process", 1, n, 0, time.perf_counter() - t_all, np.array(lat))


async def http_load(url: str, queries: list[str], n: int, concurrency: int, health: bool = False) -> Result:
    """n requests from `concurrency` workers; `health` sends GET /healthz instead (the proxy and ingress
    alone, no encoder or shard: what Serve's HTTP path costs by itself)."""
    import httpx

    lat: list[float] = []
    errors = 0
    next_i = 0
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=60.0, limits=limits) as client:
        for q in queries[:10]:  # warm-up (connections, batch queues)
            await client.post("/search/text", json={"query": q, "k": K})

        async def worker() -> None:
            nonlocal next_i, errors
            while next_i < n:
                i = next_i
                next_i += 1
                t0 = time.perf_counter()
                try:
                    if health:
                        r = await client.get("/healthz")
                    else:
                        r = await client.post(
                            "/search/text", json={"query": queries[i % len(queries)], "k": K}
                        )
                    ok = r.status_code == 200
                except httpx.HTTPError:
                    ok = False
                if ok:
                    lat.append((time.perf_counter() - t0) * 1000)
                else:
                    errors += 1

        t_all = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        seconds = time.perf_counter() - t_all
    name = "GET /healthz (Serve, no-op)" if health else "POST /search/text (Serve)"
    return Result(name, concurrency, n, errors, seconds, np.array(lat))


def markdown(rows: list[list[str]]) -> str:
    head = [
        "path",
        "concurrency",
        "requests",
        "p50 ms",
        "p95 ms",
        "p99 ms",
        "req/s",
        "errors",
        "p50 vs in-process",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, help="model directory (default: train a small one)")
    ap.add_argument("--index", type=Path, help="collection directory (default: build one)")
    ap.add_argument("--requests", type=int, default=2000, help="requests per concurrency level")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--quick", action="store_true", help="200 requests per level")
    ap.add_argument("--port", type=int, default=0, help="API port (default: a free one)")
    args = ap.parse_args(argv)
    if (args.model is None) != (args.index is None):
        ap.error("give both --model and --index, or neither")
    n = 200 if args.quick else args.requests

    import torch

    torch.set_num_threads(1)
    tmp = None
    try:
        if args.model is None:
            tmp = Path(tempfile.mkdtemp(prefix="imtext-serve-bench-"))
            print("training a small model and indexing a synthetic world ...", flush=True)
            model_dir, index_dir = make_world(tmp)
        else:
            model_dir, index_dir = args.model, args.index
        import pyarrow.parquet as pq

        queries = (
            pq.read_table(index_dir / "captions.parquet", columns=["caption"]).column("caption").to_pylist()
        )
        queries = [queries[i] for i in np.random.default_rng(0).permutation(len(queries))]

        base = in_process(model_dir, index_dir, queries, n)
        print(f"in-process: p50 {np.percentile(base.lat_ms, 50):.2f} ms", flush=True)

        from imtext.ray_setup import ensure_ray
        from serve.launch import start

        ensure_ray()
        t0 = time.perf_counter()
        running = start(model_dir, index_dir, port=args.port or free_port())
        print(f"Serve app up in {time.perf_counter() - t0:.0f} s at {running.url}", flush=True)
        results = []
        load_before = os.getloadavg()[0]
        try:
            results.append(asyncio.run(http_load(running.url, queries, n, 1, health=True)))
            for c in args.concurrency:
                r = asyncio.run(http_load(running.url, queries, n, c))
                print(
                    f"concurrency {c}: p50 {np.percentile(r.lat_ms, 50):.1f} ms, "
                    f"{r.requests / r.seconds:.0f} req/s, {r.errors} errors",
                    flush=True,
                )
                results.append(r)
        finally:
            running.stop()
            import ray

            ray.shutdown()
        base_p50 = float(np.percentile(base.lat_ms, 50))
        rows = [base.row(None)] + [r.row(None if "healthz" in r.name else base_p50) for r in results]
        print()
        print(
            f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
            f"{datetime.now(timezone.utc):%Y-%m-%d}; load average {load_before:.1f} before the HTTP runs, "
            f"{os.getloadavg()[0]:.1f} after; command: python bench/serve_load.py {' '.join(sys.argv[1:])}"
        )
        print(markdown(rows))
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
