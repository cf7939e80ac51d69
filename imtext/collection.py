"""A searchable collection: a model's embeddings of a dataset's images and captions, in two sharded FAISS
indexes (images, captions) plus the metadata that turns an index id back into a photo or a sentence.

Layout of INDEX_DIR (written by `imtext index build`, grown by `imtext index add`):

    collection.json    format_version, model_fingerprint, model_dir, data, splits, created, counts, factory,
                       shards, files (sha256 of the two parquet tables)
    images/            ShardedIndex folder; ids = images.parquet `id`
    images.parquet     id, image_id, image_path, caption (the image's first caption)
    captions/          ShardedIndex folder; ids = captions.parquet `id`
    captions.parquet   id, caption_id, caption, image_id, image_path, image (the image's id)
    embeddings/        images-*.parquet, captions-*.parquet (id, vector)

The folder is always written whole into a temporary sibling and renamed into place (atomic_dir), so a
crash or a refused add leaves the previous collection as it was, and a reader never sees half of one.
"""

from __future__ import annotations

import argparse
import os
import shutil
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from imtext.atomic import atomic_dir, atomic_path, write_json
from imtext.embed import CAPTION, IMAGE, embed_collection, embedding_files, write_embeddings
from imtext.errors import ImtextError
from imtext.index import ShardedIndex
from imtext.index.manifest import REBUILD, read_versioned_json, sha256_file

FORMAT_VERSION = 1
INFO = "collection.json"
IMAGES_PARQUET, CAPTIONS_PARQUET = "images.parquet", "captions.parquet"

IMAGES_SCHEMA = pa.schema(
    [("id", pa.int64()), ("image_id", pa.string()), ("image_path", pa.string()), ("caption", pa.string())]
)
CAPTIONS_SCHEMA = pa.schema(
    [
        ("id", pa.int64()),
        ("caption_id", pa.string()),
        ("caption", pa.string()),
        ("image_id", pa.string()),
        ("image_path", pa.string()),
        ("image", pa.int64()),
    ]
)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


# ---- reading a collection -------------------------------------------------------------------------


def read_info(folder: str | os.PathLike) -> dict[str, Any]:
    """collection.json, checked enough that later code can trust its keys."""
    return read_versioned_json(
        folder,
        INFO,
        kind="collection",
        version=FORMAT_VERSION,
        missing=f"{folder} is not an imtext collection ({INFO} is missing)",
        required=("model_fingerprint", "model_dir", "counts", "factory", "shards"),
    )


def read_table(folder: Path, name: str, schema: pa.Schema, sha: str | None) -> pa.Table:
    """One metadata table of a collection, checked against its checksum and schema (Serve reads these too)."""
    path = folder / name
    if not path.is_file():
        raise ImtextError(f"{path} is missing: {REBUILD}")
    if sha is not None and sha256_file(path) != sha:
        raise ImtextError(
            f"{path} is corrupt or from another build (its sha256 differs from {INFO}): {REBUILD}"
        )
    try:
        table = pq.read_table(path)
    except Exception as e:  # pyarrow raises several types for a damaged file
        raise ImtextError(f"cannot read {path} ({e}): {REBUILD}") from None
    if not set(schema.names) <= set(table.column_names):
        raise ImtextError(
            f"{path} lacks columns {sorted(set(schema.names) - set(table.column_names))}: {REBUILD}"
        )
    return table.select(schema.names)


class Collection:
    """A built collection, ready to search: `.images` and `.captions` are ShardedIndexes whose ids are the
    `id` columns of images.parquet and captions.parquet."""

    def __init__(
        self,
        folder: Path,
        info: dict[str, Any],
        images: ShardedIndex,
        captions: ShardedIndex,
        image_table: pa.Table,
        caption_table: pa.Table,
    ) -> None:
        """Internal: use Collection.load."""
        self.folder = folder
        self.info = info
        self.images = images
        self.captions = captions
        self._images = image_table
        self._captions = caption_table
        self._image_ids = image_table.column("id").to_numpy()
        self._caption_ids = caption_table.column("id").to_numpy()

    @classmethod
    def load(
        cls,
        folder: str | os.PathLike,
        shard: int | None = None,
        model_fingerprint: str | None = None,
        mmap: bool = False,
    ) -> Collection:
        """Open INDEX_DIR: both indexes (checksums verified) and their metadata tables.

        shard=i loads only shard i of each index (what one Serve replica holds; the metadata stays whole,
        it is small). With model_fingerprint, a collection built by another model is refused.
        """
        folder = Path(folder)
        info = read_info(folder)
        if model_fingerprint is not None and model_fingerprint != info["model_fingerprint"]:
            raise ImtextError(
                f"the collection in {folder} was built with model {info['model_fingerprint']} "
                f"({info['model_dir']}), but the model given is {model_fingerprint}: its vectors live in a "
                f"different space; query with the model it was built with, or rebuild with `imtext index build`"
            )
        fp = info["model_fingerprint"]
        images = ShardedIndex.load(folder / "images", shard=shard, model_fingerprint=fp, mmap=mmap)
        captions = ShardedIndex.load(folder / "captions", shard=shard, model_fingerprint=fp, mmap=mmap)
        files = info.get("files", {})
        image_table = read_table(folder, IMAGES_PARQUET, IMAGES_SCHEMA, files.get(IMAGES_PARQUET))
        caption_table = read_table(folder, CAPTIONS_PARQUET, CAPTIONS_SCHEMA, files.get(CAPTIONS_PARQUET))
        counts = info["counts"]
        for name, table, index in (("images", image_table, images), ("captions", caption_table, captions)):
            total = index.manifest["total"]
            if not len(table) == total == counts.get(name):
                raise ImtextError(
                    f"{folder} is inconsistent: {name} has {len(table)} metadata rows, {total} indexed vectors "
                    f"and {INFO} says {counts.get(name)}: {REBUILD}"
                )
            ids = table.column("id").to_numpy()
            if len(ids) > 1 and not (np.diff(ids) > 0).all():
                raise ImtextError(f"{folder / (name + '.parquet')} ids are not sorted and unique: {REBUILD}")
        return cls(folder, info, images, captions, image_table, caption_table)

    # ---- metadata lookups ----------------------------------------------------------------------

    @property
    def model_fingerprint(self) -> str:
        return str(self.info["model_fingerprint"])

    @property
    def model_dir(self) -> Path:
        return Path(self.info["model_dir"])

    def _rows(self, table: pa.Table, all_ids: np.ndarray, ids: Any, what: str) -> list[dict[str, Any]]:
        wanted = np.asarray(ids, dtype=np.int64).reshape(-1)
        wanted = wanted[wanted >= 0]  # -1 pads a search result shorter than k (always at its end)
        pos = np.minimum(np.searchsorted(all_ids, wanted), max(len(all_ids) - 1, 0))
        bad = all_ids[pos] != wanted if len(all_ids) else np.ones(len(wanted), dtype=bool)
        if bad.any():
            raise ImtextError(f"unknown {what} id(s) {wanted[bad][:5].tolist()} in {self.folder}")
        return table.take(pa.array(pos, pa.int64())).to_pylist()

    def image_rows(self, ids: Any) -> list[dict[str, Any]]:
        """images.parquet rows for `ids`, in that order; negative ids (search padding) are skipped, an
        unknown id is an ImtextError."""
        return self._rows(self._images, self._image_ids, ids, "image")

    def caption_rows(self, ids: Any) -> list[dict[str, Any]]:
        """captions.parquet rows for `ids`, in that order (negative ids skipped, unknown ids refused)."""
        return self._rows(self._captions, self._caption_ids, ids, "caption")

    def image_path(self, id: int) -> Path:
        """The file of image `id` (what GET /images/{id} serves)."""
        if isinstance(id, bool) or not isinstance(id, (int, np.integer)) or id < 0:
            raise ImtextError(f"unknown image id {id!r} in {self.folder}")
        return Path(self.image_rows([int(id)])[0]["image_path"])

    def examples(self, n: int = 5) -> list[str]:
        """Captions for example queries: the first caption of n images spread evenly over the collection."""
        total = len(self._images)
        if n < 1 or total == 0:
            return []
        picks = np.unique(np.linspace(0, total - 1, num=min(n, total)).round().astype(int))
        captions = self._images.column("caption").take(pa.array(picks)).to_pylist()
        return list(dict.fromkeys(captions))  # unique, order kept

    # ---- searching -----------------------------------------------------------------------------

    def search_images(self, queries: np.ndarray, k: int) -> list[list[dict[str, Any]]]:
        """Top-k images per query vector: rows of images.parquet with `rank` (1-based) and `score`."""
        return self._search(self.images, self.image_rows, queries, k)

    def search_captions(self, queries: np.ndarray, k: int) -> list[list[dict[str, Any]]]:
        """Top-k captions per query vector: rows of captions.parquet with `rank` and `score`."""
        return self._search(self.captions, self.caption_rows, queries, k)

    @staticmethod
    def _search(index: ShardedIndex, rows_of, queries: np.ndarray, k: int) -> list[list[dict[str, Any]]]:
        scores, ids = index.search(queries, k)
        out = []
        for s_row, i_row in zip(scores, ids):
            rows = rows_of(i_row)
            out.append(
                [{"rank": r + 1, "score": float(s), **row} for r, (s, row) in enumerate(zip(s_row, rows))]
            )
        return out

    def __repr__(self) -> str:
        c = self.info["counts"]
        return (
            f"Collection({str(self.folder)!r}, images={c['images']}, captions={c['captions']}, "
            f"factory={self.info['factory']!r}, model={self.model_fingerprint})"
        )


# ---- building -------------------------------------------------------------------------------------


def _load_model(model_dir: str | os.PathLike):
    from imtext.model import TwoBranch

    path = Path(model_dir)
    if not path.exists():
        raise ImtextError(f"model directory {path} does not exist: train one with `imtext train` first")
    model = TwoBranch.load(path)
    if model.config.image.backbone == "none":
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


def _ensure_ray(use_ray: bool) -> None:
    if use_ray:
        from imtext.train.ray_train import ensure_ray

        ensure_ray()


def _refuse_foreign_folder(out: Path) -> None:
    """atomic_dir replaces `out` whole: never let a typo wipe a folder that is not a collection."""
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / INFO).is_file())):
        raise ImtextError(
            f"{out} exists and is not an imtext collection; refusing to replace it: pick an empty or new --out"
        )


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
    _ensure_ray(use_ray)
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
) -> Path:
    """Embed every image and caption of `data_spec` (`splits`, default all) with the model and write the
    collection to `out` (replacing an earlier collection there, atomically). Returns the folder."""
    from imtext.data import load_pairs, split_names

    out = Path(out)
    _refuse_foreign_folder(out)
    model = _load_model(model_dir)
    pairs = load_pairs(data_spec, splits=splits)
    images, captions = _split_tables(pairs)
    dim = int(model.config.model.embed_dim)
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
            files[f"{name}.parquet"] = _write_parquet(table, tmp / f"{name}.parquet")
            rows.append([name, len(table), index.shard_count, factory, dim, time.perf_counter() - start])
        info = {
            "format_version": FORMAT_VERSION,
            "model_fingerprint": model.fingerprint,
            "model_dir": str(Path(model_dir).resolve()),
            "data": data_spec,
            "splits": split_names(pairs),
            "created": _now(),
            "counts": {"images": len(images), "captions": len(captions)},
            "factory": factory,
            "shards": shards,
            "dim": dim,
            "files": files,
            "embedding": report.engine,
        }
        write_json(tmp / INFO, info)  # last: a folder with collection.json is complete
    if progress:
        _print_summary(f"collection {out}", rows, report)
    return out


def _print_summary(title: str, rows: list[list[Any]], report: Any) -> None:
    from imtext.report import console, print_table

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
    from imtext.data import load_pairs, split_names

    folder = Path(index_dir)
    info = read_info(folder)
    model = _load_model(model_dir)
    if model.fingerprint != info["model_fingerprint"]:
        raise ImtextError(
            f"the collection in {folder} was built with model {info['model_fingerprint']} ({info['model_dir']}); "
            f"the model in {model_dir} is {model.fingerprint}. Vectors of two models cannot share an index: "
            f"add with the original model, or rebuild with `imtext index build`"
        )
    col = Collection.load(folder, model_fingerprint=model.fingerprint)
    pairs = load_pairs(data_spec, splits=splits)

    known_images = dict(zip(col._images.column("image_id").to_pylist(), col._image_ids.tolist()))
    known_captions = set(
        zip(col._captions.column("image_id").to_pylist(), col._captions.column("caption_id").to_pylist())
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

    next_image = col.images.manifest.get("next_id", int(col._image_ids.max(initial=-1)) + 1)
    next_caption = col.captions.manifest.get("next_id", int(col._caption_ids.max(initial=-1)) + 1)
    next_image = max(int(next_image), int(col._image_ids.max(initial=-1)) + 1)
    next_caption = max(int(next_caption), int(col._caption_ids.max(initial=-1)) + 1)
    images, captions = _split_tables(pairs, next_image, next_caption, image_index=known_images)

    report = _embed(model_dir, model, images, captions, use_ray, actors, batch_size, progress)
    rows = []
    with atomic_dir(folder) as tmp:
        _copy_collection(folder, tmp)
        files = {}
        for name, old, new, embedded, kind, idx in (
            ("images", col._images, images, report.images, IMAGE, col.images),
            ("captions", col._captions, captions, report.captions, CAPTION, col.captions),
        ):
            start = time.perf_counter()
            if len(new):
                first = len(embedding_files(tmp / "embeddings", kind))
                write_embeddings(tmp / "embeddings", kind, embedded, first_file=first)
                idx.add(embedded.vectors, ids=embedded.ids)
                idx.save(tmp / name)
            files[f"{name}.parquet"] = _write_parquet(pa.concat_tables([old, new]), tmp / f"{name}.parquet")
            rows.append(
                [
                    name,
                    f"{idx.ntotal} (+{len(new)})",
                    idx.shard_count,
                    idx.factory,
                    idx.dim,
                    time.perf_counter() - start,
                ]
            )
        counts = {"images": col.images.ntotal, "captions": col.captions.ntotal}
        new_info = dict(info)
        new_info.update(
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


# ---- the CLI handlers (wired in imtext/cli.py) ------------------------------------------------------


def cmd_build(args: argparse.Namespace) -> int:
    build_collection(
        args.model,
        args.data,
        args.out,
        shards=args.shards,
        factory=args.factory,
        splits=args.split,
        use_ray=not args.no_ray,
    )
    return 0


def cmd_add(args: argparse.Namespace) -> int:
    add_to_collection(
        args.index, args.model, args.data, splits=args.split, use_ray=not getattr(args, "no_ray", False)
    )
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    from imtext.report import print_table

    k = int(args.k)
    if k < 1:
        raise ImtextError(f"-k must be at least 1, got {k}")
    info = read_info(args.index)
    model = _load_model(args.model or info["model_dir"])
    col = Collection.load(args.index, model_fingerprint=model.fingerprint)
    if args.text is not None:
        text = " ".join(args.text.split())
        if not text:
            raise ImtextError("the text query is empty: give a sentence, e.g. --text 'a dog on a beach'")
        hits = col.search_images(model.embed_texts([text]), k)[0]
        print_table(
            f"images for {text!r}",
            ["rank", "score", "image_id", "caption", "path"],
            [[h["rank"], f"{h['score']:.3f}", h["image_id"], h["caption"], h["image_path"]] for h in hits],
        )
        return 0
    from imtext.data import load_image

    query = model.embed_images([load_image(args.image)])
    caps = col.search_captions(query, k)[0]
    print_table(
        f"captions for {args.image}",
        ["rank", "score", "image_id", "caption"],
        [[h["rank"], f"{h['score']:.3f}", h["image_id"], h["caption"]] for h in caps],
    )
    imgs = col.search_images(query, k)[0]
    print_table(
        f"similar images to {args.image}",
        ["rank", "score", "image_id", "path"],
        [[h["rank"], f"{h['score']:.3f}", h["image_id"], h["image_path"]] for h in imgs],
    )
    return 0
