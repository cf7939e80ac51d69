"""Embed a collection's images and captions with a trained model, with Ray Data or in this process.

Both paths run the same `embed_rows` on the same batches of (id, kind, path, text) rows, so they give the
same vectors; Ray Data spreads the batches over an actor pool that loads the model once per actor (one
GPU per actor when the cluster has GPUs). The driver collects (id, vector) rows, sorts them by id and
writes the parquet shards itself, so row order never depends on which actor finished first and the
files land on the driver's disk even when the actors run on other machines.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from imtext.atomic import atomic_path
from imtext.data.report import examples
from imtext.errors import DataError, ImtextError

IMAGE, CAPTION = "image", "caption"
ROWS_PER_FILE = 100_000  # embeddings parquet shard size (about 100 MB of 256-d float32)
_ROW_SCHEMA = pa.schema(
    [
        pa.field("id", pa.int64()),
        pa.field("kind", pa.string()),
        pa.field("path", pa.string()),
        pa.field("text", pa.string()),
    ]
)


@dataclass
class Embedded:
    """Vectors for one kind (images or captions), sorted by id."""

    ids: np.ndarray  # (N,) int64, ascending
    vectors: np.ndarray  # (N, D) float32, L2-normalised


@dataclass
class EmbedReport:
    images: Embedded
    captions: Embedded
    seconds: float
    engine: str  # "ray data (2 actors, cpu)" or "in-process"


# ---- the work of one batch (runs inside a Ray actor or in this process) ---------------------------


def embed_rows(model: Any, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Embed one batch of rows: images are read from `path`, captions taken from `text`.

    An unreadable image does not fail the batch (a Ray task error would bury the message in a remote
    traceback): its row comes back with a zero vector and the reason in `error`, and the driver stops
    with one message naming every bad file.
    """
    ids = np.asarray(batch["id"], dtype=np.int64)
    kinds = [str(k) for k in batch["kind"]]
    dim = model.embed_dim
    vectors = np.zeros((len(ids), dim), dtype=np.float32)
    errors = [""] * len(ids)

    from imtext.data.images import load_image

    img_rows, pictures = [], []
    for i, kind in enumerate(kinds):
        if kind != IMAGE:
            continue
        try:
            pictures.append(load_image(str(batch["path"][i])))
            img_rows.append(i)
        except DataError as e:
            errors[i] = str(e)
    if pictures:
        vectors[img_rows] = model.embed_images(pictures)
    txt_rows = [i for i, kind in enumerate(kinds) if kind == CAPTION]
    if txt_rows:
        vectors[txt_rows] = model.embed_texts([str(batch["text"][i]) for i in txt_rows])
    return {
        "id": ids,
        "kind": np.asarray(kinds, dtype=object),
        "vector": vectors,
        "error": np.asarray(errors, dtype=object),
    }


class Embedder:
    """The Ray Data actor: loads the model once, then embeds batch after batch."""

    def __init__(self, model_dir: str, device: str = "cpu", threads: int = 1):
        import torch

        from imtext.model import TwoBranch

        torch.set_num_threads(max(1, threads))
        self.model = TwoBranch.load(model_dir, device=device)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return embed_rows(self.model, batch)


# ---- driving it -----------------------------------------------------------------------------------


def rows_table(
    image_ids: Sequence[int], image_paths: Sequence[str], caption_ids: Sequence[int], captions: Sequence[str]
) -> pa.Table:
    """The work list: images first, then captions (so most batches hold one kind only)."""
    n_img, n_cap = len(image_ids), len(caption_ids)
    return pa.table(
        {
            "id": pa.array([*map(int, image_ids), *map(int, caption_ids)], pa.int64()),
            "kind": pa.array([IMAGE] * n_img + [CAPTION] * n_cap, pa.string()),
            "path": pa.array([*map(str, image_paths), *([""] * n_cap)], pa.string()),
            "text": pa.array([*([""] * n_img), *map(str, captions)], pa.string()),
        },
        schema=_ROW_SCHEMA,
    )


def embed_collection(
    model_dir: str | os.PathLike,
    image_ids: Sequence[int],
    image_paths: Sequence[str],
    caption_ids: Sequence[int],
    captions: Sequence[str],
    use_ray: bool = True,
    actors: int = 2,
    batch_size: int = 64,
    model: Any = None,
    progress: bool = True,
) -> EmbedReport:
    """Embed the images (read from their paths) and the captions; vectors come back sorted by id.

    use_ray=True runs a Ray Data actor pool of `actors` (one GPU each when Ray has GPUs, else one CPU
    each) on the Ray this process is connected to (call `ensure_ray()` first); use_ray=False embeds here
    with `model` (or the model loaded from model_dir).
    """
    if batch_size < 1:
        raise ImtextError(f"batch_size must be at least 1, got {batch_size}")
    rows = rows_table(image_ids, image_paths, caption_ids, captions)
    start = time.perf_counter()
    if len(rows) == 0:
        batches: list[dict[str, np.ndarray]] = []
        engine = "nothing to embed"
    elif use_ray:
        batches, engine = _run_ray(str(model_dir), rows, actors, batch_size, progress)
    else:
        if model is None:
            from imtext.model import TwoBranch

            model = TwoBranch.load(model_dir)
        batches, engine = _run_local(model, rows, batch_size, progress), "in-process"
    seconds = time.perf_counter() - start

    bad = [str(e) for b in batches for e in b["error"] if e]
    if bad:
        raise DataError(
            f"{len(bad)} image(s) could not be read: {examples(bad)}; fix or remove them and rerun"
        )
    return EmbedReport(
        images=_collect(batches, IMAGE, len(image_ids)),
        captions=_collect(batches, CAPTION, len(caption_ids)),
        seconds=seconds,
        engine=engine,
    )


def _batches_of(rows: pa.Table, batch_size: int) -> Iterator[pa.Table]:
    """Slices of at most batch_size rows that never mix images and captions."""
    kinds = rows.column("kind").to_pylist()
    n_img = kinds.count(IMAGE)
    for lo, hi in ((0, n_img), (n_img, len(rows))):
        for a in range(lo, hi, batch_size):
            yield rows.slice(a, min(batch_size, hi - a))


def _run_local(model: Any, rows: pa.Table, batch_size: int, progress: bool) -> list[dict[str, np.ndarray]]:
    out = []
    with _progress(len(rows), "embedding (in-process)", progress) as advance:
        for part in _batches_of(rows, batch_size):
            batch = {name: part.column(name).to_numpy(zero_copy_only=False) for name in part.column_names}
            out.append(embed_rows(model, batch))
            advance(len(part))
    return out


def _run_ray(
    model_dir: str, rows: pa.Table, actors: int, batch_size: int, progress: bool
) -> tuple[list[dict[str, np.ndarray]], str]:
    import ray
    import ray.data

    if not ray.is_initialized():
        raise ImtextError("Ray is not running in this process: call imtext.ray_setup.ensure_ray() first")
    gpus = int(ray.cluster_resources().get("GPU", 0))
    actors = max(1, min(actors, gpus) if gpus else actors)
    per_actor = {"num_gpus": 1, "num_cpus": 1} if gpus else {"num_cpus": 1}
    with _quiet_ray_data():
        # A few batches per block: blocks are what the pool hands out, so several per actor keep both busy.
        ds = ray.data.from_arrow(_blocks(rows, batch_size * 4))
        # Ray's core worker logs an error line for this pool ("constructor arguments in the object store and
        # max_restarts > 0", ray#57733): Ray Data's own arguments, for any actor pool. Harmless, and kept:
        # max_restarts=0 would hide it and give up the restarts that carry a build through a lost node.
        ds = ds.map_batches(
            Embedder,
            fn_constructor_kwargs={"model_dir": model_dir, "device": "cuda" if gpus else "cpu", "threads": 1},
            compute=ray.data.ActorPoolStrategy(size=actors),
            batch_size=batch_size,
            batch_format="numpy",
            udf_modifying_row_count=False,
            **per_actor,
        )
        out = []
        with _progress(len(rows), f"embedding (Ray Data, {actors} actor(s))", progress) as advance:
            for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
                out.append({k: np.asarray(v) for k, v in batch.items()})
                advance(len(batch["id"]))
    return out, f"ray data ({actors} actor(s), {'gpu' if gpus else 'cpu'})"


@contextlib.contextmanager
def _quiet_ray_data() -> Iterator[None]:
    """One progress bar (ours, counting rows) instead of Ray Data's per-operator bars and log lines."""
    from ray.data import DataContext

    ctx = DataContext.get_current()
    saved = (ctx.enable_progress_bars, ctx.print_on_execution_start)
    ctx.enable_progress_bars, ctx.print_on_execution_start = False, False
    try:
        yield
    finally:
        ctx.enable_progress_bars, ctx.print_on_execution_start = saved


def _blocks(rows: pa.Table, size: int) -> list[pa.Table]:
    return list(_batches_of(rows, size))


def _collect(batches: list[dict[str, np.ndarray]], kind: str, expected: int) -> Embedded:
    ids, vecs = [], []
    for b in batches:
        mask = np.asarray([k == kind for k in b["kind"]], dtype=bool)
        if mask.any():
            ids.append(np.asarray(b["id"], dtype=np.int64)[mask])
            vecs.append(np.asarray(b["vector"], dtype=np.float32)[mask])
    if not ids:
        return Embedded(np.empty(0, np.int64), np.empty((0, 0), np.float32))
    id_arr, vec_arr = np.concatenate(ids), np.concatenate(vecs)
    order = np.argsort(id_arr, kind="stable")
    id_arr, vec_arr = id_arr[order], np.ascontiguousarray(vec_arr[order])
    if len(id_arr) != expected or (len(id_arr) > 1 and not (np.diff(id_arr) > 0).all()):
        raise ImtextError(
            f"embedding returned {len(id_arr)} {kind} rows for {expected} inputs (lost or repeated)"
        )
    return Embedded(id_arr, vec_arr)


@contextlib.contextmanager
def _progress(total: int, label: str, show: bool) -> Iterator[Callable[[int], None]]:
    if not show or total == 0:
        yield lambda n: None
        return
    from rich.console import Console
    from rich.progress import MofNCompleteColumn, Progress, TimeElapsedColumn

    # the live count of rows embedded (each becomes one vector of the index), then the time so far
    columns = (*Progress.get_default_columns(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=Console(stderr=True)) as bar:
        task = bar.add_task(label, total=total)
        yield lambda n: bar.advance(task, n)


# ---- the embeddings/ folder ------------------------------------------------------------------------


def write_embeddings(
    folder: str | os.PathLike,
    kind: str,
    embedded: Embedded,
    first_file: int = 0,
    rows_per_file: int = ROWS_PER_FILE,
) -> list[Path]:
    """Write `{kind}s-00000.parquet`, ... (id int64, vector list<float32>), sorted by id, each atomically.

    `first_file` numbers the files on from an earlier write (index add appends files, never rewrites).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    n = len(embedded.ids)
    for number, a in enumerate(range(0, n, rows_per_file), start=first_file):
        b = min(a + rows_per_file, n)
        vecs = embedded.vectors[a:b]
        dim = vecs.shape[1]
        flat = pa.array(vecs.reshape(-1), pa.float32())
        offsets = pa.array(np.arange(0, (b - a) * dim + 1, dim, dtype=np.int32))
        table = pa.table(
            {"id": pa.array(embedded.ids[a:b], pa.int64()), "vector": pa.ListArray.from_arrays(offsets, flat)}
        )
        path = folder / f"{kind}s-{number:05d}.parquet"
        with atomic_path(path) as tmp:
            pq.write_table(table, tmp)
        written.append(path)
    return written


def embedding_files(folder: str | os.PathLike, kind: str) -> list[Path]:
    return sorted(Path(folder).glob(f"{kind}s-*.parquet"))


def read_embeddings(folder: str | os.PathLike, kind: str) -> Embedded:
    """All `{kind}s-*.parquet` files of `folder`, as one id-sorted matrix."""
    files = embedding_files(folder, kind)
    if not files:
        raise ImtextError(f"no {kind} embeddings in {folder}: rebuild with `imtext index build`")
    ids, vecs = [], []
    for f in files:
        t = pq.read_table(f)
        col = t.column("vector").combine_chunks()
        n = len(t)
        flat = col.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
        ids.append(t.column("id").to_numpy())
        vecs.append(flat.reshape(n, -1) if n else np.empty((0, 0), np.float32))
    id_arr = np.concatenate(ids).astype(np.int64)
    vec_arr = np.concatenate([v for v in vecs if v.size] or [np.empty((0, 0), np.float32)])
    order = np.argsort(id_arr, kind="stable")
    return Embedded(id_arr[order], np.ascontiguousarray(vec_arr[order]))
