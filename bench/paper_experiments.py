"""The paper's comparisons (Baqapuri 2015), re-run with Ray Tune: text model x negative sampling x direction
weights (tune/spaces/paper_grid.yaml), on

- the synthetic world: best checkpoint of each cell (chosen on val) scored on `test`, plus the `order`
  split, where a caption and its twin hold the same words in another order (a bag of words cannot tell
  them apart); `order acc` = how often the true image/caption outscores its mirrored twin (50 = chance);
- coco-mini with frozen EfficientNet-Lite0 features (the paper's setting: a fixed CNN, trained heads);
  coco-mini has only train (80 photos) and val (79), so val both picks the epoch and is reported;
- flickr8k-762 (real photos, `--flickr DIR`), frozen EfficientNet-Lite0 features, the library's defaults
  apart from the grid's factors: dev picks each trial's epoch, test is reported beside the ridge
  baseline (bench/baselines.py) with 95% bootstrap intervals.

    python bench/paper_experiments.py --quick             # a few minutes: bow/gru x all/hardest x 3 weightings
    python bench/paper_experiments.py --images 600 --epochs 6

Each dataset's search is a folder under --workdir; a finished one is reused, an interrupted one resumed
(--fresh starts over). Tables print to the terminal and go to WORKDIR/paper_tables.md.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import sys
import time
from datetime import date
from pathlib import Path
from typing import Any, get_args

import numpy as np
import pandas as pd
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # `tune` when run from a checkout without the editable install

from imtext.atomic import write_text  # noqa: E402
from imtext.config import Config, Negatives, TextModel  # noqa: E402
from imtext.recipes import load_recipe  # noqa: E402
from tune.results import fmt, print_wide  # noqa: E402
from tune.space import load_space  # noqa: E402

GRID = ROOT / "tune" / "spaces" / "paper_grid.yaml"
COCO_MINI = ROOT.parent / "shared" / "data" / "coco-mini"
FLICKR8K = ROOT.parent / "shared" / "data" / "flickr8k-762"
TEXT_MODELS = list(get_args(TextModel))
NEGATIVES = [n for n in get_args(Negatives) if n not in ("top-k", "infonce")]  # the paper's three hinges
WEIGHTS = {"1/1": [1.0, 1.0], "1/0.25": [1.0, 0.25], "0.25/1": [0.25, 1.0]}


def small_model(cfg: Config) -> Config:
    """Heads small enough for a 2-core CPU (the default sizes are for real data on a GPU)."""
    return cfg.override(
        {
            "text.word_dim": 128,
            "text.hidden_dim": 128,
            "model.embed_dim": 128,
            "model.mlp_hidden": 256,
            "train.batch_size": 128,
            "text.hash_buckets": 1 << 16,
        }
    )


def run_search(name: str, base: Config, args: argparse.Namespace, epochs: int) -> pd.DataFrame:
    """The (restricted) paper grid as one Tune run, without early stopping: every cell trains `epochs`."""
    from tune.run import SPEC_FILE, run_tune

    run_dir = Path(args.workdir).resolve() / name
    if args.fresh and run_dir.exists():
        shutil.rmtree(run_dir)
    if (run_dir / "results.parquet").is_file():
        print(f"[{name}] reusing {run_dir} (--fresh reruns it)")
    else:
        space = load_space(GRID).restrict(
            **{
                "text.model": args.text_models,
                "loss.negatives": args.negatives,
                "loss.weights": [WEIGHTS[w] for w in args.weights],
            }
        )
        space.base["train.epochs"] = epochs
        print(
            f"[{name}] {space.grid_size} trials x {epochs} epochs, {args.concurrent} at a time -> {run_dir}"
        )
        resume = run_dir if (run_dir / SPEC_FILE).is_file() else None
        run_tune(
            base,
            space,
            trials=1,
            scheduler="none",
            run_dir=run_dir,
            concurrent=args.concurrent,
            cpus_per_trial=1,
            resume=resume,
            verbose=args.verbose,
            summary=False,
        )
    return pd.read_parquet(run_dir / "results.parquet")


# ---- scoring checkpoints on other splits --------------------------------------------------------------


def twin_accuracy(img: np.ndarray, txt: np.ndarray, view) -> dict[str, float]:
    """On the order split: % of captions whose own image beats the mirrored twin (t2i), and % of images
    that score their k-th caption above the twin's k-th caption (i2t). Ties count half."""
    by_image: dict[int, list[int]] = {}
    for c, i in enumerate(view.caption_image):
        by_image.setdefault(int(i), []).append(c)
    index = {iid: n for n, iid in enumerate(view.image_ids)}
    t2i, i2t = [], []
    for iid, n in index.items():
        twin_id = iid[:-1] + ("b" if iid.endswith("a") else "a")
        if not iid.startswith("order_") or twin_id not in index:
            continue
        m = index[twin_id]
        for own_c, twin_c in zip(by_image[n], by_image[m]):
            t2i.append(np.sign(txt[own_c] @ img[n] - txt[own_c] @ img[m]))
            i2t.append(np.sign(img[n] @ txt[own_c] - img[n] @ txt[twin_c]))
    score = lambda s: float(np.mean((np.asarray(s) + 1) / 2) * 100) if s else math.nan  # noqa: E731
    return {"order_t2i_acc": score(t2i), "order_i2t_acc": score(i2t)}


def score_checkpoints(frame: pd.DataFrame, spec: str, splits: list[str], features: str = "") -> pd.DataFrame:
    """Each trial's best checkpoint on `splits`: R@K columns prefixed by the split, twin accuracy on order,
    and on `test` the 95% bootstrap interval of rsum (test images resampled), as beside the ridge row."""
    from imtext.data import load_pairs
    from imtext.evaluate import embed_split
    from imtext.metrics import bootstrap_interval, retrieval
    from imtext.model import TwoBranch
    from imtext.train.batches import FeatureLookup, SplitView

    pairs = load_pairs(spec, splits=splits)
    views = {s: SplitView.from_table(pairs, s) for s in splits}
    lookup = None
    if features:
        from imtext.image.features import load_features

        ids, matrix, _ = load_features(features)
        lookup = FeatureLookup(ids, matrix)
    rows = []
    for ckpt in frame["checkpoint"]:
        model = TwoBranch.load(ckpt)
        row: dict[str, Any] = {}
        for split, view in views.items():
            img, txt = embed_split(model, view, lookup)
            row.update({f"{split}_{k}": v for k, v in retrieval(img, txt, view.caption_image).items()})
            if split == "order":
                row.update(twin_accuracy(img, txt, view))
            if split == "test":
                row["test_rsum_lo"], row["test_rsum_hi"] = bootstrap_interval(img, txt, view.caption_image)
        rows.append(row)
    return pd.concat([frame.reset_index(drop=True), pd.DataFrame(rows)], axis=1)


# ---- tables -------------------------------------------------------------------------------------------


def weights_label(row: pd.Series) -> str:
    return f"{row['loss.i2t_weight']:g}/{row['loss.t2i_weight']:g}"


def cell_table(frame: pd.DataFrame, split: str, order: bool) -> tuple[list[str], list[list[Any]]]:
    """One row per grid cell, in grid order: R@1/5/10, medr per direction on `split`, rsum (+ order acc)."""
    headers = ["text", "negatives", "w i2t/t2i"]
    for d in ("i2t", "t2i"):
        headers += [f"{d} R@1", f"{d} R@5", f"{d} R@10", f"{d} medr"]
    headers.append("rsum")
    interval = f"{split}_rsum_lo" in frame
    if interval:
        headers.append("95% interval")
    if order:
        headers += ["order i2t acc", "order t2i acc", "order rsum"]
    key = {m: n for n, m in enumerate(TEXT_MODELS)}
    neg = {m: n for n, m in enumerate(NEGATIVES)}
    wts = {w: n for n, w in enumerate(WEIGHTS)}
    frame = frame.assign(w=frame.apply(weights_label, axis=1))
    frame = frame.sort_values(
        ["text.model", "loss.negatives", "w"], key=lambda s: s.map({**key, **neg, **wts})
    )
    rows = []
    for _, r in frame.iterrows():
        cells = [r["text.model"], r["loss.negatives"], r["w"]]
        for d in ("i2t", "t2i"):
            cells += [r[f"{split}_{d}_{k}"] for k in ("r1", "r5", "r10", "medr")]
        cells.append(r[f"{split}_rsum"])
        if interval:
            cells.append(f"{r[f'{split}_rsum_lo']:.0f}-{r[f'{split}_rsum_hi']:.0f}")
        if order:
            cells += [r["order_i2t_acc"], r["order_t2i_acc"], r["order_rsum"]]
        rows.append(cells)
    return headers, rows


def margins_table(frame: pd.DataFrame, split: str, order: bool) -> tuple[list[str], list[list[Any]]]:
    """Means over the other two factors: what each factor does on its own."""
    frame = frame.assign(w=frame.apply(weights_label, axis=1))
    cols = [f"{split}_i2t_rsum", f"{split}_t2i_rsum", f"{split}_rsum"] + (
        ["order_t2i_acc", "order_i2t_acc"] if order else []
    )
    headers = ["factor", "value", "trials", "i2t rsum", "t2i rsum", "rsum"] + (
        ["order t2i acc", "order i2t acc"] if order else []
    )
    rows = []
    for factor, col in (
        ("text model", "text.model"),
        ("negatives", "loss.negatives"),
        ("weights i2t/t2i", "w"),
    ):
        for value, group in frame.groupby(col, sort=False):
            rows.append([factor, value, len(group), *[float(group[c].mean()) for c in cols]])
    return headers, rows


def markdown(title: str, headers: list[str], rows: list[list[Any]]) -> str:
    lines = [f"**{title}**", "", "| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def show(title: str, table: tuple[list[str], list[list[Any]]], md: list[str]) -> None:
    print_wide(title, *table)
    md.append(markdown(title, *table))


# ---- the two datasets ---------------------------------------------------------------------------------


def synth_experiment(args: argparse.Namespace, md: list[str]) -> None:
    from imtext.data.synth import generate

    world = Path(args.workdir).resolve() / f"synth_{args.images}_{args.order_pairs}"
    if not (world / "synth.json").is_file():
        generate(world, n_images=args.images, seed=0, order_pairs=args.order_pairs)
    base = small_model(load_recipe("synthetic")).override(
        {"data.spec": f"synth:{world}", "train.seed": args.seed}
    )
    frame = run_search(f"synth_{args.images}_e{args.epochs}", base, args, args.epochs)
    frame = score_checkpoints(frame, f"synth:{world}", ["test", "order"])
    n_test = args.images - round(args.images * 0.8) - round(args.images * 0.1)
    where = f"synthetic world, {args.images} scenes ({n_test} test), {2 * args.order_pairs} order images, {args.epochs} epochs"
    show(f"{where}: test split (R@K in %), order split", cell_table(frame, "test", order=True), md)
    show(f"{where}: means per factor", margins_table(frame, "test", order=True), md)


def coco_experiment(args: argparse.Namespace, md: list[str]) -> None:
    from imtext.data import load_pairs
    from imtext.image.features import compute_features

    feats = Path(args.workdir).resolve() / "coco_mini_efficientnet_lite0.parquet"
    spec = f"coco:{args.coco}"
    if not feats.is_file():
        compute_features(
            load_pairs(spec),
            backbone="efficientnet_lite0",
            weights="default",
            image_size=224,
            out_path=feats,
            batch_size=32,
        )
    base = small_model(load_recipe("synthetic")).override(
        {
            "data.spec": spec,
            "data.features": str(feats),
            "image.backbone": "efficientnet_lite0",
            "data.val_split": "val",
            "data.test_split": "val",
            "train.batch_size": 64,
            "loss.warmup_epochs": max(1, args.coco_epochs // 4),
            "train.seed": args.seed,
        }
    )
    frame = run_search(f"coco_mini_e{args.coco_epochs}", base, args, args.coco_epochs)
    frame = score_checkpoints(frame, spec, ["val"], features=str(feats))
    where = f"coco-mini, frozen EfficientNet-Lite0 features, {args.coco_epochs} epochs"
    show(
        f"{where}: val split (79 images, 5 captions each; R@K in %)",
        cell_table(frame, "val", order=False),
        md,
    )
    show(f"{where}: means per factor", margins_table(frame, "val", order=False), md)


def flickr_experiment(args: argparse.Namespace, md: list[str]) -> None:
    """The grid on real photos, from the library's defaults (what a user gets), with the ridge row."""
    from imtext.baseline import QUALITY_COLUMNS, RidgeBaseline, quality_row
    from imtext.data import load_pairs
    from imtext.image.features import compute_features, load_features
    from imtext.metrics import bootstrap_interval
    from imtext.train.batches import FeatureLookup, SplitView

    feats = Path(args.workdir).resolve() / "flickr8k_762_efficientnet_lite0.parquet"
    spec = f"flickr8k:{args.flickr}"
    pairs = load_pairs(spec)
    if not feats.is_file():
        compute_features(pairs, "efficientnet_lite0", "default", 224, feats, batch_size=32)
    base = Config().override(
        {
            "data.spec": spec,
            "data.features": str(feats),
            "image.backbone": "efficientnet_lite0",
            # n-gram tables are hash_buckets x word_dim: 512 keeps the five text models comparable on a CPU
            "text.word_dim": 512,
            "text.sentence_encoder": "none",  # the paper's text models on their own
            "train.epochs": args.flickr_epochs,
            "loss.warmup_epochs": 1,  # hinge cells: one epoch on all negatives first (the grid's base)
            "train.seed": args.seed,
        }
    )
    frame = run_search(f"flickr8k_762_e{args.flickr_epochs}", base, args, args.flickr_epochs)
    frame = score_checkpoints(frame, spec, ["val", "test"], features=str(feats))
    where = (
        f"flickr8k-762, frozen EfficientNet-Lite0 features, {args.flickr_epochs} epochs, epoch chosen on dev"
    )
    show(
        f"{where}: test split (102 images, 510 captions; R@K in %)",
        cell_table(frame, "test", order=False),
        md,
    )
    show(f"{where}: means per factor (test)", margins_table(frame, "test", order=False), md)
    views = {s: SplitView.from_table(pairs, s) for s in ("train", "val", "test")}
    lookup = FeatureLookup(*load_features(feats)[:2])
    ridge, _ = RidgeBaseline.fit_selected(views["train"], views["val"], lookup)
    img, txt = ridge.embed_split(views["test"], lookup)
    from imtext.metrics import retrieval

    row = quality_row(
        f"ridge (lambda {ridge.lam:g})",
        retrieval(img, txt, views["test"].caption_image),
        bootstrap_interval(img, txt, views["test"].caption_image),
    )
    show("flickr8k-762 test: the linear baseline on the same features", (QUALITY_COLUMNS, [row]), md)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=1000, help="synthetic scenes (80/10/10 train/val/test)")
    p.add_argument("--order-pairs", type=int, default=100, help="mirrored image pairs in the order split")
    p.add_argument("--epochs", type=int, default=8, help="epochs per synthetic trial")
    p.add_argument(
        "--coco-epochs", type=int, default=20, help="epochs per coco-mini trial (tiny: 7 steps each)"
    )
    p.add_argument("--text-models", nargs="+", default=TEXT_MODELS, choices=TEXT_MODELS)
    p.add_argument("--negatives", nargs="+", default=NEGATIVES, choices=NEGATIVES)
    p.add_argument(
        "--weights", nargs="+", default=list(WEIGHTS), choices=list(WEIGHTS), help="i2t/t2i weights"
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="a few minutes: 400 scenes, 3 epochs, bow/gru x all/hardest x 3 weightings",
    )
    p.add_argument("--flickr-epochs", type=int, default=12, help="epochs per flickr8k-762 trial")
    p.add_argument("--no-synth", action="store_true")
    p.add_argument("--no-flickr", action="store_true")
    p.add_argument("--flickr", default=str(FLICKR8K), metavar="DIR")
    p.add_argument("--no-coco", action="store_true")
    p.add_argument("--coco", default=str(COCO_MINI), metavar="DIR")
    p.add_argument("--concurrent", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workdir", default="runs/paper", metavar="DIR")
    p.add_argument("--fresh", action="store_true", help="rerun searches that already finished")
    p.add_argument("--verbose", type=int, default=1, help="Ray Tune verbosity (0 silent, 1 status, 2 all)")
    args = p.parse_args(argv)
    if args.quick:
        args.images, args.order_pairs, args.epochs, args.coco_epochs = 400, 50, 3, 10
        args.text_models, args.negatives = ["bow", "gru"], ["all", "hardest"]
    torch.set_num_threads(1)
    import ray

    # Our own Ray (run_tune joins it): the trials' per-epoch log lines stay in their log files.
    ray.init(
        address="local",
        num_cpus=max(4, 2 * (os.cpu_count() or 1)),
        include_dashboard=False,
        log_to_driver=False,
    )
    start = time.perf_counter()
    md = [
        f"_{date.today()}, `python bench/paper_experiments.py {' '.join(sys.argv[1:] if argv is None else argv)}`_\n"
    ]
    if not args.no_synth:
        synth_experiment(args, md)
    if not args.no_coco:
        coco_experiment(args, md)
    if not args.no_flickr:
        flickr_experiment(args, md)
    md.append(f"_total {time.perf_counter() - start:.0f} s_\n")
    out = Path(args.workdir) / "paper_tables.md"
    write_text(out, "\n".join(md))
    print(f"tables: {out}  ({time.perf_counter() - start:.0f} s)")
    ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
