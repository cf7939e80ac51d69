"""Benchmark imtext.index.ShardedIndex: build time, size, queries/s (batched and one at a time) and
recall@10 against exact search, for Flat, IVF-Flat, HNSW and IVF-PQ at 1, 2 and 4 shards.

    python bench/index_bench.py                 # 1,000,000 x 512 (long on 2 cores)
    python bench/index_bench.py --n 200000      # scaled down
    python bench/index_bench.py --quick         # smoke run (20,000 vectors, a couple of minutes)

Data: seeded clustered vectors (Gaussian blobs around random unit centres, L2-normalised); queries are
data points plus a little noise. Ground truth is exact search (Flat, one shard). Rows are printed as they
finish (Markdown), then a summary of the two aims.

Queries/s are per CPU-second of this process (time.process_time), which on a machine shared with other
jobs measures the index rather than the neighbours; "wall/CPU" says how far the wall clock was stretched.
"""

from __future__ import annotations

import os

# Before FAISS loads libgomp: waiting threads sleep instead of spinning. On busy shared cores, spinning
# OpenMP threads made 2 threads about 10x slower than 1 for single queries.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import ctypes  # noqa: E402
import gc  # noqa: E402
import math  # noqa: E402
import platform  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from datetime import datetime, timezone  # noqa: E402
from pathlib import Path  # noqa: E402

import faiss  # noqa: E402
import numpy as np  # noqa: E402

from imtext.index import ShardedIndex, merge_topk  # noqa: E402

K = 10


@dataclass
class Row:
    factory: str
    shards: int
    setting: str
    build_s: float
    build_cpu_s: float
    size_mb: float
    rss_mb: float
    batch_qps: float
    single_qps: float
    stretch: float  # wall time / CPU time of the searches
    recall: float


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def clustered(n: int, dim: int, clusters: int, spread: float, seed: int) -> np.ndarray:
    """Blobs around random unit centres, built in chunks so 1M x 512 needs only its own 2 GB."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    x = np.empty((n, dim), dtype=np.float32)
    for a in range(0, n, 100_000):
        b = min(n, a + 100_000)
        x[a:b] = centres[rng.integers(0, clusters, b - a)]
        x[a:b] += rng.standard_normal((b - a, dim), dtype=np.float32) * np.float32(spread / math.sqrt(dim))
    faiss.normalize_L2(x)
    return x


def near_queries(x: np.ndarray, count: int, noise: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed + 1)
    q = x[rng.choice(len(x), count, replace=False)].copy()
    q += rng.standard_normal(q.shape, dtype=np.float32) * np.float32(noise / math.sqrt(x.shape[1]))
    faiss.normalize_L2(q)
    return q


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    hits = sum(len(np.intersect1d(f, t)) for f, t in zip(found, truth))
    return hits / truth.size


def release_memory() -> None:
    """Collect, then hand freed heap back to the OS, so the RSS growth of the next build is its own."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def index_bytes(index: ShardedIndex) -> int:
    """On-disk size of all shards (= the serialised FAISS indexes), via the real save path."""
    tmp = Path(tempfile.mkdtemp(prefix="imtext-index-bench-"))
    try:
        index.save(tmp)
        return sum(p.stat().st_size for p in tmp.glob("shard-*.faiss"))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def timed_search(
    index: ShardedIndex, q: np.ndarray, single: int, **kw
) -> tuple[np.ndarray, float, float, float]:
    """(ids of the batched search, batched q/s, single q/s, wall/CPU); q/s per CPU-second."""
    index.search(q[:20], K, **kw)  # warm-up: first-call allocations, BLAS start-up, page faults
    w, c = time.perf_counter(), time.process_time()
    _, ids = index.search(q, K, **kw)
    c1 = time.process_time()
    for i in range(single):
        index.search(q[i : i + 1], K, **kw)
    w2, c2 = time.perf_counter(), time.process_time()
    return ids, len(q) / (c1 - c), single / (c2 - c1), (w2 - w) / (c2 - c)


def merge_cost_us(q: np.ndarray, shards: int) -> float:
    """Microseconds per query spent in merge_topk alone for `shards` result lists of k=10."""
    rng = np.random.default_rng(0)
    scores = [rng.random((len(q), K), dtype=np.float32) for _ in range(shards)]
    ids = [rng.integers(0, 1 << 40, (len(q), K)) for _ in range(shards)]
    t = time.process_time()
    reps = 20
    for _ in range(reps):
        merge_topk(scores, ids, K)
    return (time.process_time() - t) / reps / len(q) * 1e6


def factories(n: int, dim: int, quick: bool) -> list[tuple[str, str, list[dict]]]:
    """(label, factory, settings): IVF with nlist ~ 4 sqrt(N); PQ with dim/8 bytes per vector."""
    nlist = max(16, int(round(4 * math.sqrt(n), -1)))
    m = dim // 8
    probes = [1, 16] if quick else [1, 4, 16, 64, 128]
    efs = [32, 128] if quick else [32, 128, 512]
    # "np": no polysemous training. FAISS runs it by default for PQ; it costs 10x the PQ training time
    # and only serves Hamming pre-filtering, which search leaves off.
    return [
        ("flat", "Flat", [{}]),
        ("ivf", f"IVF{nlist},Flat", [{"nprobe": p} for p in probes]),
        ("hnsw", "HNSW32", [{"ef_search": e} for e in efs]),
        ("ivfpq", f"IVF{nlist},PQ{m}np", [{"nprobe": p} for p in probes[-3:]]),
    ]


def setting_label(kw: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in kw.items()) or "exact"


def fmt_row(r: Row) -> str:
    return (
        f"| {r.factory} | {r.shards} | {r.setting} | {r.build_s:.1f} | {r.build_cpu_s:.1f} | {r.size_mb:.0f} | "
        f"{r.rss_mb:.0f} | {r.batch_qps:,.0f} | {r.single_qps:,.0f} | {r.stretch:.1f} | {r.recall:.3f} |"
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000, help="database vectors (default 1,000,000)")
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--clusters", type=int, default=1000)
    ap.add_argument(
        "--spread", type=float, default=2.0, help="blob noise norm / unit centre (2: same-blob cosine ~0.2)"
    )
    ap.add_argument("--queries", type=int, default=1000, help="queries searched as one batch")
    ap.add_argument("--single", type=int, default=200, help="queries searched one at a time")
    ap.add_argument("--shards", default="1,2,4")
    ap.add_argument("--only", default="flat,ivf,hnsw,ivfpq", help="which of flat,ivf,hnsw,ivfpq to run")
    ap.add_argument(
        "--threads", type=int, default=1, help="FAISS OpenMP threads (1: the cores here are shared)"
    )
    ap.add_argument("--train-sample", type=int, default=100_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rounds", type=int, default=3, help="timing rounds per setting; the best one counts")
    ap.add_argument("--quick", action="store_true", help="smoke run: --n 20000 --queries 200 --single 50")
    args = ap.parse_args(argv)
    if args.quick:
        args.n, args.queries, args.single = min(args.n, 20_000), min(args.queries, 200), min(args.single, 50)
        args.rounds = min(args.rounds, 2)
    shard_counts = [int(s) for s in args.shards.split(",")]
    wanted = set(args.only.split(","))
    faiss.omp_set_num_threads(args.threads)

    print(f"# index bench  {datetime.now(timezone.utc).isoformat(timespec='seconds')}")
    print(f"command: python {' '.join(sys.argv)}")
    print(
        f"machine: {cpu_model()}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; "
        f"faiss {faiss.__version__}, OpenMP threads {faiss.omp_get_max_threads()}, "
        f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}"
    )
    print(
        f"data: N={args.n:,} dim={args.dim} clusters={args.clusters} spread={args.spread} seed={args.seed}; "
        f"{args.queries} batched queries, {args.single} single queries, k={K}",
        flush=True,
    )
    t0 = time.perf_counter()
    x = clustered(args.n, args.dim, args.clusters, args.spread, args.seed)
    q = near_queries(x, args.queries, noise=0.5 * args.spread, seed=args.seed)
    ids = np.arange(args.n, dtype=np.int64)
    print(f"data made in {time.perf_counter() - t0:.1f}s\n")
    print(
        "| index | shards | setting | build s | build CPU s | size MB | RSS +MB | batched q/s | single q/s "
        "| wall/CPU | recall@10 |"
    )
    print("| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |", flush=True)

    truth: np.ndarray | None = None
    rows: list[Row] = []
    for label, factory, settings in factories(args.n, args.dim, args.quick):
        if label not in wanted and not (label == "flat" and truth is None):
            continue
        built: dict[int, tuple[ShardedIndex, float, float, float, float]] = {}
        for shards in shard_counts if label in wanted else shard_counts[:1]:
            release_memory()
            before = rss_mb()
            t, c = time.perf_counter(), time.process_time()
            index = ShardedIndex.build(
                x, ids, shards=shards, factory=factory, train_sample=args.train_sample, progress=False
            )
            build_s, build_cpu = time.perf_counter() - t, time.process_time() - c
            built[shards] = (index, build_s, build_cpu, rss_mb() - before, index_bytes(index) / 2**20)
        found_rows: list[Row] = []
        for kw in settings:
            # Rounds interleave the shard counts, and the best round counts: the load of a shared
            # machine drifts over minutes, and this keeps the drift out of the 1-vs-4-shard comparison.
            best: dict[int, list[float]] = {s: [0.0, 0.0, math.inf] for s in built}
            recalls: dict[int, float] = {}
            for _ in range(args.rounds):
                for shards, (index, *_rest) in built.items():
                    found, bq, sq, stretch = timed_search(index, q, args.single, **kw)
                    if truth is None:  # the first index is exact (Flat)
                        truth = found
                    recalls[shards] = recall_at_k(found, truth)
                    b = best[shards]
                    b[0], b[1], b[2] = max(b[0], bq), max(b[1], sq), min(b[2], stretch)
            for shards, (_, build_s, build_cpu, grown, size) in built.items():
                bq, sq, stretch = best[shards]
                found_rows.append(
                    Row(
                        factory,
                        shards,
                        setting_label(kw),
                        build_s,
                        build_cpu,
                        size,
                        grown,
                        bq,
                        sq,
                        stretch,
                        recalls[shards],
                    )
                )
        for row in sorted(found_rows, key=lambda r: r.shards):  # stable: settings stay in order
            rows.append(row)
            print(fmt_row(row), flush=True)
        del built, index
    print(f"\ntotal bench time {time.perf_counter() - t0:.0f}s, load average {os.getloadavg()[0]:.1f}")
    summarize(rows, q, shard_counts)
    return 0


def summarize(rows: list[Row], q: np.ndarray, shard_counts: list[int]) -> None:
    exact = sorted((r for r in rows if r.factory == "Flat"), key=lambda r: r.shards)
    if exact:
        base_b, base_s = exact[0].batch_qps, exact[0].single_qps
        good = [r for r in rows if r.recall >= 0.95 and r.factory != "Flat"]
        best = max(good, key=lambda r: r.batch_qps / base_b, default=None)
        if best is None:
            print("aim 1 (recall@10 >= 0.95 at 10x exact q/s): no approximate setting reached recall 0.95")
        else:
            ok = best.batch_qps >= 10 * base_b
            print(
                f"aim 1 (recall@10 >= 0.95 at 10x exact q/s): {'met' if ok else 'NOT met'}: "
                f"{best.factory} {best.setting} {best.shards} shard(s), recall {best.recall:.3f}, "
                f"{best.batch_qps / base_b:.0f}x exact batched q/s, {best.single_qps / base_s:.0f}x exact single q/s"
            )
    if 1 in shard_counts and 4 in shard_counts:
        print("aim 2 (4 shards cost < 10% over 1 shard), search time of 4 shards / 1 shard - 1:")
        one = {(r.factory, r.setting): r for r in rows if r.shards == 1}
        for r in rows:
            if r.shards == 4 and (r.factory, r.setting) in one:
                b = one[(r.factory, r.setting)]
                print(
                    f"  {r.factory:>16} {r.setting:<14} batched {b.batch_qps / r.batch_qps - 1:+6.1%}"
                    f"   single {b.single_qps / r.single_qps - 1:+6.1%}"
                )
        print(f"  merge_topk alone, 4 lists of k={K}: {merge_cost_us(q, 4):.2f} us per query (batched)")
        print_equal_recall(rows)


def print_equal_recall(rows: list[Row], targets: tuple[float, ...] = (0.8, 0.9, 0.95)) -> None:
    """Sharding changes recall as well as speed (4 HNSW graphs searched at one efSearch find more than one
    graph does), so also compare the fastest setting that reaches each recall target."""
    print("at equal recall, the fastest batched q/s reaching each recall@10 target, 1 shard vs 4 shards:")
    for factory in dict.fromkeys(r.factory for r in rows if r.factory != "Flat"):
        cells = []
        for target in targets:
            best = {}
            for shards in (1, 4):
                ok = [
                    r.batch_qps
                    for r in rows
                    if r.factory == factory and r.shards == shards and r.recall >= target
                ]
                best[shards] = max(ok, default=None)
            if best[1] and best[4]:
                cells.append(f">={target}: {best[1]:,.0f} vs {best[4]:,.0f} ({best[1] / best[4] - 1:+.0%})")
            else:
                one, four = (f"{best[n]:,.0f}" if best[n] else "-" for n in (1, 4))
                cells.append(f">={target}: {one} vs {four}")
        print(f"  {factory:>16}  " + "; ".join(cells))


if __name__ == "__main__":
    raise SystemExit(main())
