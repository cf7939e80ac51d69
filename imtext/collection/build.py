"""Building, growing and shrinking a collection: embed a dataset's images and captions with a model (Ray Data
or this process), index them in sharded FAISS indexes and write the folder described in
imtext.collection.format; add new items, or remove images with their captions, without a rebuild.

The folder is always written whole into a temporary sibling and renamed into place (atomic_dir), so a
crash or a refused add leaves the previous collection as it was, and a reader never sees half of one.
"""

from __future__ import annotations

import os
import shutil
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from imtext.atomic import atomic_dir, atomic_path, refuse_foreign, write_json
from imtext.collection.format import (
    CAPTIONS_SCHEMA,
    FORMAT_VERSION,
    IMAGES_SCHEMA,
    INFO,
    TABLES,
    image_roots_of,
)
from imtext.collection.search import Collection
from imtext.embed import CAPTION, IMAGE, embed_collection, embedding_files, write_embeddings
from imtext.errors import ImtextError
from imtext.index import ShardedIndex
from imtext.index.manifest import sha256_file
from imtext.ray_setup import ensure_ray


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


# ---- building -------------------------------------------------------------------------------------


def load_indexing_model(model_dir: str | os.PathLike, device: str = "cpu"):
    """A model that can embed photos (what indexing, searching and serving need), or a clear refusal."""
    from imtext.model import TwoBranch

    path = Path(model_dir)
    if not path.exists():
        raise ImtextError(f"model directory {path} does not exist: train one with `imtext train` first")
    model = TwoBranch.load(path, device=device)
    if not model.can_embed_images:
        raise ImtextError(
            f"the model in {path} was trained on precomputed features without a backbone (image.backbone=none), "
            f"so it cannot embed photos; train with --backbone NAME (and --features) to index a collection"
        )
    return model


def _split_tables(
    pairs: pa.Table,
    first_image_id: int = 0,
    first_caption_id: int = 0,
    image_index: dict[str, int] | None = None,
) -> tuple[pa.Table, pa.Table]:
    """Pairs -> (images table, captions table). Images are the unique image_ids in order of first
    appearance, numbered from first_image_id; `image_index` maps image_ids that already have an id."""
    known = dict(image_index or {})
    img_id, img_key, img_path, img_caption = [], [], [], []
    cap_key, cap_text, cap_img_key, cap_path, cap_image = [], [], [], [], []
    next_image = first_image_id
    for iid, path, cid, caption in zip(
        pairs.column("image_id").to_pylist(),
        pairs.column("image_path").to_pylist(),
        pairs.column("caption_id").to_pylist(),
        pairs.column("caption").to_pylist(),
    ):
        if iid not in known:
            known[iid] = next_image
            img_id.append(next_image)
            img_key.append(iid)
            img_path.append(path)
            img_caption.append(caption)
            next_image += 1
        cap_key.append(cid)
        cap_text.append(caption)
        cap_img_key.append(iid)
        cap_path.append(path)
        cap_image.append(known[iid])
    images = pa.table([img_id, img_key, img_path, img_caption], schema=IMAGES_SCHEMA)
    captions = pa.table(
        [
            list(range(first_caption_id, first_caption_id + len(cap_key))),
            cap_key,
            cap_text,
            cap_img_key,
            cap_path,
            cap_image,
        ],
        schema=CAPTIONS_SCHEMA,
    )
    return images, captions


def _check_factory(factory: str, dim: int, n: int, shards: int) -> None:
    """Refuse a bad factory string or shard count before the (long) embedding, not after it."""
    from imtext.index import factory as fx

    if not isinstance(shards, int) or shards < 1:
        raise ImtextError(f"--shards must be a positive integer, got {shards!r}")
    if shards > n:
        raise ImtextError(
            f"--shards {shards} is more than the {n} image(s) to index; use --shards {max(1, n)} or fewer"
        )
    template = fx.new_index(dim, factory)
    ivf = fx.ivf_of(template)
    if ivf is not None and ivf.nlist > n:
        raise ImtextError(
            f"factory {factory!r} asks for {ivf.nlist} IVF lists but the collection has only {n} images; "
            f"use IVF{max(1, int(4 * np.sqrt(n)))} or fewer lists (about 4*sqrt(N)), or Flat"
        )


def _write_parquet(table: pa.Table, path: Path) -> str:
    """Write atomically (never in place: a hard-linked copy of an older collection may share the file)
    and return its sha256."""
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)
        digest = sha256_file(tmp)
    return digest


def _embed(
    model_dir,
    model,
    images: pa.Table,
    captions: pa.Table,
    use_ray: bool,
    actors: int,
    batch_size: int,
    progress: bool,
):
    """Embed the new images and captions (Ray Data when `use_ray`), the one step build and add share."""
    if use_ray:
        ensure_ray()  # the Ray this process joined, else a local one
    return embed_collection(
        Path(model_dir).resolve(),
        images.column("id").to_pylist(),
        images.column("image_path").to_pylist(),
        captions.column("id").to_pylist(),
        captions.column("caption").to_pylist(),
        use_ray=use_ray,
        actors=actors,
        batch_size=batch_size,
        model=model,
        progress=progress,
    )


def build_collection(
    model_dir: str | os.PathLike,
    data_spec: str,
    out: str | os.PathLike,
    shards: int = 2,
    factory: str = "Flat",
    splits: list[str] | None = None,
    use_ray: bool = True,
    actors: int = 2,
    batch_size: int = 64,
    progress: bool = True,
    summary: bool | None = None,
) -> Path:
    """Embed every image and caption of `data_spec` (`splits`, default all) with the model and write the
    collection to `out` (replacing an earlier collection there, atomically). Returns the folder.
    `progress`: a live count of the items embedded; `summary` (default: as `progress`): a table at the end.
    The example queries the data source proposes (imtext.data.suggested_queries) are kept in collection.json."""
    from imtext.data import image_roots, load_pairs, split_names, suggested_queries

    out = Path(out)
    refuse_foreign(out, (out / INFO).is_file(), "an imtext collection")  # atomic_dir replaces it whole
    model = load_indexing_model(model_dir)
    pairs = load_pairs(data_spec, splits=splits)
    images, captions = _split_tables(pairs)
    dim = model.embed_dim
    _check_factory(factory, dim, len(images), shards)

    report = _embed(model_dir, model, images, captions, use_ray, actors, batch_size, progress)
    rows = []
    with atomic_dir(out) as tmp:
        files = {}
        for name, table, embedded, kind in (
            ("images", images, report.images, IMAGE),
            ("captions", captions, report.captions, CAPTION),
        ):
            start = time.perf_counter()
            write_embeddings(tmp / "embeddings", kind, embedded)
            index = ShardedIndex.build(
                embedded.vectors,
                embedded.ids,
                shards=shards,
                factory=factory,
                model_fingerprint=model.fingerprint,
            )
            index.save(tmp / name)
            parquet = TABLES[name][0]
            files[parquet] = _write_parquet(table, tmp / parquet)
            rows.append(_summary_row(name, len(table), index, start))
        info = {
            "format_version": FORMAT_VERSION,
            "model_fingerprint": model.fingerprint,
            "model_dir": str(Path(model_dir).resolve()),
            "data": data_spec,
            "image_roots": image_roots_of(images.column("image_path").to_pylist(), image_roots(data_spec)),
            "splits": split_names(pairs),
            "created": _now(),
            "counts": {"images": len(images), "captions": len(captions)},
            "factory": factory,
            "shards": shards,
            "dim": dim,
            "files": files,
            "embedding": report.engine,
        }
        examples = suggested_queries(data_spec, pairs)
        if examples:
            info["examples"] = examples
        write_json(tmp / INFO, info)  # last: a folder with collection.json is complete
    if progress if summary is None else summary:
        _print_summary(f"collection {out}", rows, report)
    return out


def _summary_row(name: str, items: Any, index: ShardedIndex, started: float) -> list[Any]:
    """One row of the table build, add and remove print: what the index holds now, and how long it took."""
    return [name, items, index.shard_count, index.factory, index.dim, time.perf_counter() - started]


def _print_summary(title: str, rows: list[list[Any]], report: Any = None) -> None:
    from imtext.report import console, print_table

    if report is not None:
        n = len(report.images.ids) + len(report.captions.ids)
        console.print(f"embedded {n} items in {report.seconds:.1f} s ({report.engine})")
    print_table(title, ["collection", "items", "shards", "factory", "dim", "time s"], rows)


# ---- growing --------------------------------------------------------------------------------------


def _copy_collection(src: Path, dst: Path) -> None:
    """Hard-link (else copy) every file of src into dst: the new version starts as the old one without
    doubling the disk; every later write in dst goes through a rename, so src is never touched."""

    def link(s: str, d: str) -> None:
        try:
            os.link(s, d)
        except OSError:
            shutil.copy2(s, d)

    shutil.copytree(src, dst, copy_function=link, dirs_exist_ok=True)


def add_to_collection(
    index_dir: str | os.PathLike,
    model_dir: str | os.PathLike,
    data_spec: str,
    splits: list[str] | None = None,
    use_ray: bool = True,
    actors: int = 2,
    batch_size: int = 64,
    progress: bool = True,
) -> dict[str, Any]:
    """Append the images (by image_id) and captions (by image_id + caption_id) of `data_spec` that the
    collection lacks, under new ids, without rebuilding. The model must be the one the collection was
    built with. Returns {"images": added, "captions": added, "counts": totals, "image_ids": [...],
    "caption_ids": [...]}."""
    from imtext.data import image_roots, load_pairs, split_names

    folder = Path(index_dir)
    model = load_indexing_model(model_dir)
    col = Collection.load(folder, model_fingerprint=model.fingerprint)  # refuses another model's collection
    info = col.info
    pairs = load_pairs(data_spec, splits=splits)

    old_images, old_captions = col.meta.images.table, col.meta.captions.table
    image_ids, caption_ids = col.meta.images.ids, col.meta.captions.ids
    known_images = dict(zip(old_images.column("image_id").to_pylist(), old_images.column("id").to_pylist()))
    known_captions = set(
        zip(old_captions.column("image_id").to_pylist(), old_captions.column("caption_id").to_pylist())
    )
    fresh = [
        (iid, cid) not in known_captions
        for iid, cid in zip(pairs.column("image_id").to_pylist(), pairs.column("caption_id").to_pylist())
    ]
    pairs = pairs.filter(pa.array(fresh, pa.bool_()))
    result: dict[str, Any] = {
        "images": 0,
        "captions": 0,
        "counts": dict(info["counts"]),
        "image_ids": [],
        "caption_ids": [],
    }
    if len(pairs) == 0:
        if progress:
            from imtext.report import console

            console.print(f"nothing to add: every image and caption of {data_spec} is already in {folder}")
        return result

    next_image = col.images.manifest.get("next_id", int(image_ids.max(initial=-1)) + 1)
    next_caption = col.captions.manifest.get("next_id", int(caption_ids.max(initial=-1)) + 1)
    next_image = max(int(next_image), int(image_ids.max(initial=-1)) + 1)
    next_caption = max(int(next_caption), int(caption_ids.max(initial=-1)) + 1)
    images, captions = _split_tables(pairs, next_image, next_caption, image_index=known_images)

    report = _embed(model_dir, model, images, captions, use_ray, actors, batch_size, progress)
    rows = []
    with atomic_dir(folder) as tmp:
        _copy_collection(folder, tmp)
        files = {}
        for name, old, new, embedded, kind, idx in (
            ("images", old_images, images, report.images, IMAGE, col.images),
            ("captions", old_captions, captions, report.captions, CAPTION, col.captions),
        ):
            start = time.perf_counter()
            if len(new):
                first = len(embedding_files(tmp / "embeddings", kind))
                write_embeddings(tmp / "embeddings", kind, embedded, first_file=first)
                idx.add(embedded.vectors, ids=embedded.ids)
                idx.save(tmp / name)
            parquet = TABLES[name][0]
            files[parquet] = _write_parquet(pa.concat_tables([old, new]), tmp / parquet)
            rows.append(_summary_row(name, f"{idx.ntotal} (+{len(new)})", idx, start))
        counts = {"images": col.images.ntotal, "captions": col.captions.ntotal}
        new_info = dict(info)
        # a collection from before image_roots were recorded: its own images' folders stand in for them
        old_roots = col.meta.image_roots or image_roots_of(old_images.column("image_path").to_pylist(), [])
        new_info.update(
            image_roots=image_roots_of(
                images.column("image_path").to_pylist(), old_roots + image_roots(data_spec)
            ),
            counts=counts,
            files=files,
            splits=sorted(set(info.get("splits") or []) | set(split_names(pairs)), key=_split_order),
            updated=_now(),
            additions=[
                *info.get("additions", []),
                {
                    "data": data_spec,
                    "splits": split_names(pairs),
                    "images": len(images),
                    "captions": len(captions),
                    "at": _now(),
                },
            ],
        )
        write_json(tmp / INFO, new_info)
    if progress:
        _print_summary(f"collection {folder} (added)", rows, report)
    result.update(
        images=len(images),
        captions=len(captions),
        counts=counts,
        image_ids=images.column("id").to_pylist(),
        caption_ids=captions.column("id").to_pylist(),
    )
    return result


def _split_order(name: str) -> tuple[int, str]:
    order = {"train": 0, "val": 1, "test": 2}
    return order.get(name, len(order)), name


# ---- shrinking ------------------------------------------------------------------------------------


def _drop_embeddings(folder: Path, kind: str, drop: np.ndarray) -> None:
    """Rewrite the embeddings files of `kind` without the rows in `drop` (each file atomically: the file in
    `folder` may be a hard link shared with the previous collection); a file left empty is unlinked."""
    for path in embedding_files(folder, kind):
        table = pq.read_table(path)
        keep = ~np.isin(table.column("id").to_numpy(), drop)
        if keep.all():
            continue
        path.unlink()
        if keep.any():
            with atomic_path(path) as tmp:
                pq.write_table(table.filter(pa.array(keep)), tmp)


def remove_from_collection(
    index_dir: str | os.PathLike, image_ids: list[str], progress: bool = True
) -> dict[str, Any]:
    """Remove images (by the dataset's image_id, as `imtext index search` prints it) and all their captions
    from the collection: both indexes, the metadata tables and the stored embeddings, without re-embedding.
    Removed ids are never reused. Returns {"images": removed, "captions": removed, "counts": totals}.

    A running Serve app keeps serving the old version until POST /admin/reload. HNSW indexes cannot delete
    vectors (rebuild them instead)."""
    wanted = list(dict.fromkeys(str(i) for i in image_ids))
    if not wanted:
        raise ImtextError("no image ids to remove: give at least one --image-id")
    folder = Path(index_dir)
    col = Collection.load(folder)
    images_table, captions_table = col.meta.images.table, col.meta.captions.table
    known = set(images_table.column("image_id").to_pylist())
    unknown = [i for i in wanted if i not in known]
    if unknown:
        raise ImtextError(
            f"{len(unknown)} image id(s) are not in {folder}: {', '.join(unknown[:5])}"
            f"{' ...' if len(unknown) > 5 else ''} (ids are the dataset's image_id, as `imtext index search` prints)"
        )
    doomed = set(wanted)
    image_gone = np.array([i in doomed for i in images_table.column("image_id").to_pylist()], dtype=bool)
    caption_gone = np.array([i in doomed for i in captions_table.column("image_id").to_pylist()], dtype=bool)
    if image_gone.all():
        raise ImtextError(f"removing every image would leave {folder} empty; delete the folder instead")
    info = dict(col.info)
    rows = []
    with atomic_dir(folder) as tmp:
        _copy_collection(folder, tmp)
        files = {}
        for name, table, gone, index, kind in (
            ("images", images_table, image_gone, col.images, IMAGE),
            ("captions", captions_table, caption_gone, col.captions, CAPTION),
        ):
            start = time.perf_counter()
            drop = table.column("id").to_numpy()[gone]
            index.remove(drop)  # refuses HNSW before anything is written
            index.save(tmp / name)
            _drop_embeddings(tmp / "embeddings", kind, drop)
            parquet = TABLES[name][0]
            files[parquet] = _write_parquet(table.filter(pa.array(~gone)), tmp / parquet)
            rows.append(_summary_row(name, f"{index.ntotal} (-{int(gone.sum())})", index, start))
        counts = {"images": col.images.ntotal, "captions": col.captions.ntotal}
        info.update(
            counts=counts,
            files=files,
            updated=_now(),
            removals=[
                *info.get("removals", []),
                {
                    "image_ids": wanted,
                    "images": int(image_gone.sum()),
                    "captions": int(caption_gone.sum()),
                    "at": _now(),
                },
            ],
        )
        write_json(tmp / INFO, info)
    if progress:
        _print_summary(f"collection {folder} (removed)", rows)
    return {"images": int(image_gone.sum()), "captions": int(caption_gone.sum()), "counts": counts}
