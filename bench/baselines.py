"""The default model beside the ridge TF-IDF -> image-feature baseline, on real photos, with intervals.

    python bench/baselines.py --data flickr8k:../shared/data/flickr8k-762
    python bench/baselines.py --data coco:../shared/data/coco-mini --test-split val --dev-from-train 0.25

Both are fitted on the training split only. The validation ("dev") split chooses the ridge's lambda and
the model's best epoch; the test split is only reported. Datasets without a separate dev split (coco-mini:
train2017 and val2017 photos only) get one carved from the training images (`--dev-from-train`), so the
test photos never choose anything. Each row carries a 95% bootstrap interval on rsum (test images
resampled with replacement). Features come from `imtext features` (EfficientNet-Lite0 by default, offline),
cached under --work.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from imtext.baseline import QUALITY_COLUMNS, RidgeBaseline, quality_row  # noqa: E402
from imtext.config import Config  # noqa: E402
from imtext.data import load_pairs  # noqa: E402
from imtext.evaluate import embed_split  # noqa: E402
from imtext.image.features import compute_features, load_features  # noqa: E402
from imtext.metrics import bootstrap_interval, retrieval  # noqa: E402
from imtext.recipes import load_recipe  # noqa: E402
from imtext.text.sentence import load_sentence_encoder  # noqa: E402
from imtext.train.batches import FeatureLookup, SplitView  # noqa: E402
from imtext.train.loop import train_local  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, metavar="KIND:PATH")
    p.add_argument("--train-split", default="train")
    p.add_argument("--dev-split", default="val", help="chooses lambda and the best epoch (default val)")
    p.add_argument("--test-split", default="test", help="reported only (default test)")
    p.add_argument(
        "--dev-from-train",
        type=float,
        default=0.0,
        metavar="FRACTION",
        help="carve the dev split from this fraction of the training images (for data without one)",
    )
    p.add_argument("--features", metavar="PARQUET", help="default: computed once into --work")
    p.add_argument("--backbone", default="efficientnet_lite0")
    p.add_argument("--seeds", type=int, default=3, help="default-model runs (seeds 0..N-1)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="config overrides for the model rows (default: none, i.e. imtext's defaults)",
    )
    p.add_argument(
        "--config",
        metavar="YAML|RECIPE",
        help="start the model rows from this config or recipe instead of the defaults (e.g. synthetic)",
    )
    p.add_argument("--label", default="imtext defaults", help="the model rows' name")
    p.add_argument(
        "--sentence-ridge",
        default="minilm",
        metavar="NAME",
        help="a second ridge row with this sentence encoder's vectors beside the tf-idf (none: skip)",
    )
    p.add_argument("--work", default="runs/bench/baselines", help="features cache and model folders")
    p.add_argument("--json", metavar="FILE", help="also write every row as JSON")
    return p.parse_args(argv)


def split_views(pairs: pa.Table, args: argparse.Namespace) -> dict[str, SplitView]:
    train = SplitView.from_table(pairs, args.train_split)
    test = SplitView.from_table(pairs, args.test_split)
    if not args.dev_from_train:
        return {"train": train, "dev": SplitView.from_table(pairs, args.dev_split), "test": test}
    return {**carve(train, args.dev_from_train), "test": test}


def carve(train: SplitView, fraction: float) -> dict[str, SplitView]:
    """Every k-th training image (in sorted id order) becomes dev: deterministic and spread out."""
    if not 0 < fraction < 1:
        raise SystemExit("--dev-from-train must be between 0 and 1")
    step = max(2, round(1 / fraction))
    dev_ids = set(sorted(train.image_ids)[::step])

    def keep(is_dev: bool) -> SplitView:
        rows = [n for n, i in enumerate(train.caption_image) if (train.image_ids[i] in dev_ids) == is_dev]
        images = list(dict.fromkeys(train.caption_image[rows].tolist()))
        where = {old: new for new, old in enumerate(images)}
        return SplitView(
            [train.image_ids[i] for i in images],
            [train.image_paths[i] for i in images],
            [train.captions[r] for r in rows],
            np.array([where[train.caption_image[r]] for r in rows], dtype=np.int64),
        )

    return {"train": keep(False), "dev": keep(True)}


def as_manifest(views: dict[str, SplitView], path: Path, feature_path: Path) -> tuple[str, Path]:
    """The three splits as a parquet manifest, so `imtext train` reads exactly them, and the features
    re-keyed to the manifest's image ids (a manifest names an image by its path)."""
    import pyarrow.parquet as pq

    rows = {"image_path": [], "caption": [], "split": []}
    original = {}
    for split, view in views.items():
        for image_id, image_path in zip(view.image_ids, view.image_paths):
            original[str(Path(image_path).resolve())] = image_id
        for caption, owner in zip(view.captions, view.caption_image):
            rows["image_path"].append(str(Path(view.image_paths[owner]).resolve()))
            rows["caption"].append(caption)
            rows["split"].append({"dev": "val"}.get(split, split))  # the loaders call the dev split val
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(rows), path)
    spec = f"manifest:{path}"
    pairs = load_pairs(spec)
    by_path = dict(zip(pairs["image_path"].to_pylist(), pairs["image_id"].to_pylist()))
    table = pq.read_table(feature_path)
    renamed = [by_path.get(str(Path(p).resolve())) for p in original]  # manifest id per original image
    row_of = {iid: n for n, iid in enumerate(table["image_id"].to_pylist())}
    keep = [row_of[original[p]] for p in original]
    rekeyed = table.take(pa.array(keep)).set_column(0, "image_id", pa.array(renamed, pa.string()))
    out = path.with_name("features.parquet")
    pq.write_table(rekeyed.replace_schema_metadata(table.schema.metadata), out)
    return spec, out


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(1)  # small models: one thread is fastest and leaves the other core free
    work = Path(args.work) / args.data.replace(":", "_").replace("/", "_").strip("._")
    pairs = load_pairs(args.data)
    views = split_views(pairs, args)
    feature_path = Path(args.features) if args.features else work / f"{args.backbone}.parquet"
    if not feature_path.is_file():
        compute_features(pairs, args.backbone, "default", 224, feature_path)
    ids, matrix, meta = load_features(feature_path)
    features = FeatureLookup(ids, matrix)
    print(
        f"{args.data}: train {len(views['train'].image_ids)} / dev {len(views['dev'].image_ids)} / "
        f"test {len(views['test'].image_ids)} images; features {meta.get('backbone', '?')} ({features.dim})"
    )

    results = []
    test = views["test"]

    def add(name: str, img: np.ndarray, txt: np.ndarray, extra: dict) -> dict:
        metrics = retrieval(img, txt, test.caption_image)
        interval = bootstrap_interval(img, txt, test.caption_image)
        results.append({"name": name, **metrics, "interval": interval, **extra})
        return metrics

    ridge, dev_scores = RidgeBaseline.fit_selected(views["train"], views["dev"], features)
    add(ridge.name, *ridge.embed_split(test, features), {"dev_rsum": dev_scores[ridge.lam], "kind": "ridge"})
    if args.sentence_ridge != "none":  # the same outside knowledge of words as the default model, linearly
        sentence = load_sentence_encoder(args.sentence_ridge)
        both, both_dev = RidgeBaseline.fit_selected(views["train"], views["dev"], features, sentence=sentence)
        add(both.name, *both.embed_split(test, features), {"dev_rsum": both_dev[both.lam], "kind": "ridge+"})
    spec, model_features = as_manifest(views, work / "pairs.parquet", feature_path)
    for seed in range(args.seeds):
        out = work / f"model-seed{seed}"
        cfg = (load_recipe(args.config) if args.config else Config()).override(
            {
                "data.spec": spec,
                "data.features": str(model_features),
                "data.train_split": "train",
                "data.val_split": "val",
                "image.backbone": args.backbone,
                "train.workers": 0,
                "train.seed": seed,
                "train.out": str(out),
            }
        )
        cfg = cfg.override(args.overrides).validate()
        started = time.perf_counter()
        _, history = train_local(cfg)
        best = max(history, key=lambda m: m["rsum"])
        from imtext.model import TwoBranch

        model = TwoBranch.load(out)  # the best epoch by dev rsum, as `imtext train` exports it
        img, txt = embed_split(model, test, features)
        add(
            f"{args.label} (seed {seed})",
            img,
            txt,
            {
                "dev_rsum": best["rsum"],
                "best_epoch": best["epoch"],
                "seconds": time.perf_counter() - started,
                "kind": "model",
            },
        )

    ridge_rsum = results[0]["rsum"]
    rows = []
    for r in results:
        rows.append([*quality_row(r["name"], r, r["interval"]), f"{r['rsum'] / ridge_rsum:.3f}"])
    models = [r["rsum"] for r in results if r["kind"] == "model"]
    if models:
        mean = float(np.mean(models))
        rows.append(
            [
                f"{args.label}: mean of {len(models)}",
                *[""] * 6,
                round(mean, 1),
                "",
                f"{mean / ridge_rsum:.3f}",
            ]
        )
    print(f"\n{args.data} [{args.test_split}]: {len(test.image_ids)} images, {len(test.captions)} captions\n")
    for row in [[*QUALITY_COLUMNS, "x ridge"], ["---"] * (len(QUALITY_COLUMNS) + 1), *rows]:
        print("| " + " | ".join(str(v) for v in row) + " |")  # markdown, ready for docs/BENCHMARKS.md
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
