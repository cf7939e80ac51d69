"""The `imtext` command line. Each subcommand is one arrow of the data flow:

    data synth -> features -> train -> eval -> index build -> serve (+ the page) ; tune, submit, demo

The parser imports nothing heavy, so `--help` is instant; each command imports its module when it runs.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from imtext import __version__
from imtext.errors import ImtextError

DATA_HELP = (
    "dataset as KIND:PATH - synth:DIR, coco:DIR, flickr8k:DIR, karpathy:FILE.json[,IMAGES_DIR], "
    "manifest:FILE.csv|parquet"
)


# ---- shared option groups -------------------------------------------------------------------------


def _config_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("configuration (flags override --config, which overrides the defaults)")
    g.add_argument("--config", metavar="YAML", help="a config file (e.g. best.yaml from `imtext tune`)")
    g.add_argument("--data", metavar="KIND:PATH", help=DATA_HELP)
    g.add_argument(
        "--features", metavar="PARQUET", help="precomputed backbone features from `imtext features`"
    )
    g.add_argument("--text-model", choices=["bow", "bigram", "trigram", "skipgram", "gru"])
    g.add_argument("--backbone", help="smallcnn, resnet18/50/152, vgg16/19, efficientnet_lite0, none")
    g.add_argument("--negatives", choices=["all", "hardest", "semi-hard", "top-k"])
    g.add_argument("--margin", type=float)
    g.add_argument("--epochs", type=int)
    g.add_argument("--batch-size", type=int, help="the global batch (split across workers)")
    g.add_argument("--lr", type=float)
    g.add_argument("--seed", type=int)
    g.add_argument("--out", metavar="DIR", help="where the model directory goes (default runs/model)")
    g.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override any config key, e.g. --set loss.i2t_weight=0.5 (repeatable)",
    )


FLAG_KEYS = {
    "data": "data.spec",
    "features": "data.features",
    "text_model": "text.model",
    "backbone": "image.backbone",
    "negatives": "loss.negatives",
    "margin": "loss.margin",
    "epochs": "train.epochs",
    "batch_size": "train.batch_size",
    "lr": "train.lr",
    "seed": "train.seed",
    "out": "train.out",
    "workers": "train.workers",
}


def flag_overrides(args: argparse.Namespace) -> dict:
    """The config keys that command-line flags set explicitly (typed values, unset flags left out)."""
    return {
        key: getattr(args, name) for name, key in FLAG_KEYS.items() if getattr(args, name, None) is not None
    }


def _load_config(args: argparse.Namespace):
    from imtext.config import Config

    cfg = Config.load(args.config) if getattr(args, "config", None) else Config()
    cfg = cfg.override(flag_overrides(args))
    if getattr(args, "gpu", None) is not None:
        cfg.train.use_gpu = args.gpu
    return cfg.override(getattr(args, "overrides", []) or []).validate()


# ---- commands ------------------------------------------------------------------------------------


def cmd_data_synth(args: argparse.Namespace) -> int:
    from imtext.data.synth import generate

    order_pairs = args.order_pairs if args.order_pairs is not None else max(1, args.images // 10)
    out = generate(
        args.out, n_images=args.images, seed=args.seed, image_size=args.image_size, order_pairs=order_pairs
    )
    return cmd_data_show(argparse.Namespace(data=f"synth:{out}"))


def cmd_data_show(args: argparse.Namespace) -> int:
    from imtext.data import load_pairs
    from imtext.report import print_table

    table = load_pairs(args.data)
    splits = table["split"].to_pylist()
    images = table["image_id"].to_pylist()
    rows = []
    for split in sorted(set(splits)):
        n_img = len({i for i, s in zip(images, splits) if s == split})
        rows.append([split, n_img, splits.count(split)])
    print_table(args.data, ["split", "images", "captions"], rows)
    return 0


def cmd_features(args: argparse.Namespace) -> int:
    from imtext.data import load_pairs
    from imtext.image.features import compute_features, load_features
    from imtext.report import print_table

    pairs = load_pairs(args.data)
    out = compute_features(
        pairs,
        backbone=args.backbone,
        weights=args.weights,
        image_size=args.image_size,
        out_path=args.out,
        batch_size=args.batch_size,
    )
    ids, matrix, meta = load_features(out)
    print_table(
        "features",
        ["file", "images", "dim", "backbone"],
        [[str(out), len(ids), matrix.shape[1], args.backbone]],
    )
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from imtext.report import print_metrics

    cfg = _load_config(args)
    if args.print_config:
        print(cfg.to_yaml())
        return 0
    if cfg.train.workers == 0:
        from imtext.report import epoch_printer
        from imtext.train.loop import best_metrics, train_local

        _, history = train_local(cfg, on_epoch=epoch_printer())
        best = best_metrics(history)
    else:
        from imtext.train.ray_train import fit

        result = fit(cfg, resume=args.resume, address=args.address)
        from imtext.model import read_metrics

        best = read_metrics(cfg.train.out).get("best", result.metrics)
    print_metrics(best, title=f"best validation epoch ({best.get('epoch', '?')})")
    print(f"model directory: {Path(cfg.train.out).resolve()}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from imtext.data import load_pairs
    from imtext.evaluate import embed_split
    from imtext.metrics import coco_1k, coco_5k, retrieval
    from imtext.model import TwoBranch
    from imtext.report import print_metrics
    from imtext.train.batches import FeatureLookup, SplitView

    model = TwoBranch.load(args.model)
    pairs = load_pairs(args.data, splits=[args.split])
    view = SplitView.from_table(pairs, args.split)
    features = None
    if args.features:
        from imtext.image.features import load_features

        ids, matrix, _ = load_features(args.features)
        features = FeatureLookup(ids, matrix)
    img, txt = embed_split(model, view, features)
    protocol = {"all": retrieval, "coco1k": coco_1k, "coco5k": coco_5k}[args.protocol]
    metrics = protocol(img, txt, view.caption_image)
    print_metrics(
        metrics,
        title=f"{args.data} [{args.split}] {len(view.image_ids)} images, {len(view.captions)} captions",
    )
    if args.json:
        from imtext.atomic import write_json

        write_json(args.json, metrics)
    return 0


def cmd_submit(args: argparse.Namespace) -> int:
    from imtext.jobs import submit

    return submit(
        args.entrypoint,
        address=args.address,
        working_dir=args.working_dir,
        follow=not args.no_wait,
        submission_id=args.submission_id,
    )


def _lazy(module: str, func: str):
    """A handler living in another module (serve/, tune/, ui/ or a heavy part of imtext)."""

    def run(args: argparse.Namespace) -> int:
        import importlib

        return getattr(importlib.import_module(module), func)(args)

    return run


# ---- the parser ----------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="imtext",
        description=(
            "Image <-> sentence retrieval (Baqapuri 2015): train a two-branch model with a ranking loss on Ray, "
            "tune it, index a collection with FAISS and serve a search page.\n\n"
            "Start with `imtext demo`; every stage is also a command of its own."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Each command has its own --help. Datasets: " + DATA_HELP + ".",
    )
    parser.add_argument("--version", action="version", version=f"imtext {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    # data
    data = sub.add_parser("data", help="make or inspect a dataset")
    dsub = data.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    synth = dsub.add_parser(
        "synth",
        help="draw the synthetic world (coloured shapes, 5 captions each)",
        description="Draw scenes of coloured shapes with 5 captions each (colours, shapes, sizes, counts, "
        "spatial relations), deterministically from the seed. Use it as --data synth:DIR.",
    )
    synth.add_argument("--out", required=True, metavar="DIR")
    synth.add_argument("--images", type=int, default=2000, help="number of scenes (default 2000)")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--image-size", type=int, default=64)
    synth.add_argument(
        "--order-pairs", type=int, help="mirrored scene pairs in the `order` split (default images/10)"
    )
    synth.set_defaults(func=cmd_data_synth)
    show = dsub.add_parser("show", help="count images and captions per split")
    show.add_argument("--data", required=True, metavar="KIND:PATH", help=DATA_HELP)
    show.set_defaults(func=cmd_data_show)

    # features
    feats = sub.add_parser(
        "features",
        help="pool a frozen CNN over every image once (the paper's setting)",
        description="Run a pretrained backbone once over every image and store the pooled features "
        "(parquet). Train on them with `imtext train --features FILE --backbone NAME`.",
    )
    feats.add_argument("--data", required=True, metavar="KIND:PATH", help=DATA_HELP)
    feats.add_argument(
        "--backbone", default="efficientnet_lite0", help="default: efficientnet_lite0 (works offline)"
    )
    feats.add_argument("--weights", default="default", help="default | none | /path/to/weights")
    feats.add_argument("--image-size", type=int, default=224)
    feats.add_argument("--batch-size", type=int, default=32)
    feats.add_argument("--out", required=True, metavar="FILE.parquet")
    feats.set_defaults(func=cmd_features)

    # train
    train = sub.add_parser(
        "train",
        help="train the two-branch model (Ray Train by default)",
        description="Train on --data with the ranking loss; the best epoch by validation rsum becomes the "
        "model directory (config.yaml, weights.safetensors, vocab.json, metrics.json). Runs under Ray Train "
        "with --workers N (a local Ray unless --address/RAY_ADDRESS); --workers 0 runs a plain loop here.",
    )
    _config_options(train)
    r = train.add_argument_group("where it runs")
    r.add_argument("--workers", type=int, help="Ray Train workers (default 1); 0 = in-process without Ray")
    r.add_argument("--gpu", dest="gpu", action="store_true", default=None, help="one GPU per worker")
    r.add_argument("--cpu", dest="gpu", action="store_false", help="CPU only (default)")
    r.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else a local Ray)")
    r.add_argument("--resume", action="store_true", help="continue the interrupted run behind --out")
    train.add_argument(
        "--print-config", action="store_true", help="print the resolved config as YAML and exit"
    )
    train.set_defaults(func=cmd_train)

    # eval
    ev = sub.add_parser("eval", help="R@1/5/10, median and mean rank of a model on a split")
    ev.add_argument("--model", required=True, metavar="DIR")
    ev.add_argument("--data", required=True, metavar="KIND:PATH", help=DATA_HELP)
    ev.add_argument("--split", default="test")
    ev.add_argument(
        "--features", metavar="PARQUET", help="precomputed features, if the model was trained on them"
    )
    ev.add_argument(
        "--protocol",
        choices=["all", "coco1k", "coco5k"],
        default="all",
        help="all images of the split (default), COCO 1K (mean of 5 folds) or 5K",
    )
    ev.add_argument("--json", metavar="FILE", help="also write the metrics as JSON")
    ev.set_defaults(func=cmd_eval)

    # index
    idx = sub.add_parser("index", help="embed a collection and build, grow or query its sharded FAISS index")
    isub = idx.add_subparsers(dest="index_command", metavar="ACTION", required=True)
    build = isub.add_parser("build", help="embed images and captions with Ray Data and build the indexes")
    build.add_argument("--model", required=True, metavar="DIR")
    build.add_argument("--data", required=True, metavar="KIND:PATH", help=DATA_HELP)
    build.add_argument("--split", action="append", help="splits to index (repeatable; default: all)")
    build.add_argument("--shards", type=int, default=2)
    build.add_argument(
        "--factory", default="Flat", help="FAISS index factory: Flat, HNSW32, IVF1024,Flat, IVF1024,PQ64, ..."
    )
    build.add_argument("--out", required=True, metavar="DIR")
    build.add_argument("--no-ray", action="store_true", help="embed in this process instead of Ray Data")
    build.set_defaults(func=_lazy("imtext.collection", "cmd_build"))
    add = isub.add_parser("add", help="append new items to an existing index (no rebuild)")
    add.add_argument("--index", required=True, metavar="DIR")
    add.add_argument("--model", required=True, metavar="DIR")
    add.add_argument("--data", required=True, metavar="KIND:PATH", help=DATA_HELP)
    add.add_argument("--split", action="append")
    add.add_argument("--no-ray", action="store_true", help="embed in this process instead of Ray Data")
    add.set_defaults(func=_lazy("imtext.collection", "cmd_add"))
    search = isub.add_parser("search", help="query an index from the shell")
    search.add_argument("--index", required=True, metavar="DIR")
    search.add_argument("--model", metavar="DIR", help="default: the model the index was built with")
    q = search.add_mutually_exclusive_group(required=True)
    q.add_argument("--text", help="a sentence: finds images")
    q.add_argument("--image", metavar="FILE", help="an image: finds captions")
    search.add_argument("-k", type=int, default=10)
    search.set_defaults(func=_lazy("imtext.collection", "cmd_search"))

    # serve / ui
    srv = sub.add_parser(
        "serve",
        help="host the encoders and the sharded index on Ray Serve, with the search page",
        description="Starts the Ray Serve app (HTTP API, OpenAPI docs at /docs) and the Gradio page beside it.",
    )
    srv.add_argument("--model", required=True, metavar="DIR")
    srv.add_argument("--index", required=True, metavar="DIR")
    srv.add_argument(
        "--host", default="127.0.0.1", help="bind address (default 127.0.0.1; 0.0.0.0 exposes it)"
    )
    srv.add_argument("--port", type=int, default=8000, help="API port (default 8000)")
    srv.add_argument("--ui-port", type=int, default=7860, help="page port (default 7860)")
    srv.add_argument("--no-ui", action="store_true", help="only the API")
    srv.add_argument("--address", help="Ray cluster address (default: a local Ray)")
    srv.set_defaults(func=_lazy("serve.launch", "cmd_serve"))
    ui = sub.add_parser("ui", help="only the search page, talking to a running API")
    ui.add_argument("--api", default="http://127.0.0.1:8000", help="the Serve app's URL")
    ui.add_argument("--host", default="127.0.0.1")
    ui.add_argument("--port", type=int, default=7860)
    ui.set_defaults(func=_lazy("ui.app", "cmd_ui"))

    # tune
    tune = sub.add_parser(
        "tune",
        help="search margins, negatives and the usual hyperparameters with Ray Tune",
        description="Run Ray Tune over a YAML search space (tune/spaces/*.yaml) with the same train loop.",
    )
    tune.add_argument("--space", default="tune/spaces/default.yaml", metavar="YAML")
    tune.add_argument("--trials", type=int, default=8, help="samples (for grid spaces: repeats of the grid)")
    tune.add_argument("--scheduler", choices=["asha", "none"], default="asha")
    tune.add_argument("--search", choices=["random", "optuna"], default="random")
    tune.add_argument("--metric", choices=["rsum", "i2t_rsum", "t2i_rsum"], default="rsum")
    tune.add_argument("--concurrent", type=int, default=2, help="trials at once")
    tune.add_argument("--cpus-per-trial", type=float, default=1.0)
    tune.add_argument("--gpus-per-trial", type=float, default=0.0)
    tune.add_argument(
        "--workers-per-trial", type=int, default=1, help=">1 runs each trial as a Ray Train run"
    )
    tune.add_argument("--run-dir", default="runs/tune", metavar="DIR")
    tune.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted search")
    tune.add_argument("--address", help="Ray cluster address (default: a local Ray)")
    _config_options(tune)
    tune.set_defaults(func=_lazy("tune.run", "cmd_tune"))

    # submit
    sm = sub.add_parser(
        "submit",
        help="send an imtext command to a Ray cluster as a Ray job",
        description="Wraps `ray job submit`: imtext submit --address http://HEAD:8265 -- train --data ... "
        "The working directory is shipped with the job; logs are followed until it ends.",
    )
    sm.add_argument("--address", help="the cluster's dashboard / job server (default: RAY_ADDRESS)")
    sm.add_argument("--working-dir", default=".", help="shipped to the cluster (default: .)")
    sm.add_argument("--submission-id", help="a job id of your choosing")
    sm.add_argument("--no-wait", action="store_true", help="print the job id and return")
    sm.add_argument(
        "entrypoint", nargs=argparse.REMAINDER, help="-- then an imtext command, e.g. -- train ..."
    )
    sm.set_defaults(func=cmd_submit)

    # demo
    demo = sub.add_parser(
        "demo",
        help="the whole chain on the synthetic world: data, Ray Train, eval, index, Serve, page",
        description="Generate data, train on a local Ray, evaluate, build the sharded index and bring up Serve "
        "with the search page. A second run reuses what exists unless --fresh.",
    )
    demo.add_argument(
        "--data", metavar="KIND:PATH", help="default: the synthetic world; coco:DIR uses EfficientNet-Lite0"
    )
    demo.add_argument("--workdir", default="runs/demo", metavar="DIR")
    demo.add_argument("--fresh", action="store_true", help="rebuild every stage")
    demo.add_argument("--tiny", action="store_true", help="a minute-sized setting (for tests)")
    demo.add_argument("--no-serve", action="store_true", help="stop after the index")
    demo.add_argument(
        "--exit-after-ready", action="store_true", help="stop once the API answers (non-interactive)"
    )
    demo.add_argument("--host", default="127.0.0.1")
    demo.add_argument("--port", type=int, default=8000)
    demo.add_argument("--ui-port", type=int, default=7860)
    demo.set_defaults(func=_lazy("imtext.demo", "cmd_demo"))
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "submit" and args.entrypoint and args.entrypoint[0] == "--":
        args.entrypoint = args.entrypoint[1:]
    try:
        return int(args.func(args) or 0)
    except ImtextError as e:
        print(f"imtext: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("imtext: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
