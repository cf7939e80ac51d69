"""The `imtext` argument parser. Each subcommand is one arrow of the data flow:

    data synth -> features -> train -> eval -> index build -> serve (+ the page) ; tune, submit, demo

It imports nothing heavy, so `--help` is instant; each command imports its handler when it runs.
"""

from __future__ import annotations

import argparse
import typing

from imtext import __version__
from imtext.cli.config_flags import DATA_HELP, add_config_options
from imtext.config import Backbone, EvalProtocol, SelectionMetric, TuneScheduler, TuneSearch


def _lazy(module: str, func: str):
    """A handler imported when its command runs (so --help never imports torch, Ray or an app)."""

    def run(args: argparse.Namespace) -> int:
        import importlib

        return getattr(importlib.import_module(module), func)(args)

    return run


def _ray_options(p: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    r = p.add_argument_group("where it runs")
    r.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else a local Ray)")
    r.add_argument(
        "--ray-cpus",
        type=int,
        metavar="N",
        help="logical CPUs of a local Ray (default: the machine's cores); on a 2-core laptop 4 lets stages overlap",
    )
    r.add_argument(
        "--verbose", action="store_true", help="Ray's own log here too (default: in its log files)"
    )
    return r


COMMANDS = "imtext.cli.commands"
APPS = "imtext.cli.apps"


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
    synth.set_defaults(func=_lazy(COMMANDS, "cmd_data_synth"))
    show = dsub.add_parser("show", help="count images and captions per split")
    show.add_argument("--data", required=True, metavar="KIND:PATH", help=DATA_HELP)
    show.set_defaults(func=_lazy(COMMANDS, "cmd_data_show"))

    # features
    feats = sub.add_parser(
        "features",
        help="pool a frozen CNN over every image once (the paper's setting)",
        description="Run a pretrained backbone once over every image and store the pooled features "
        "(parquet). Train on them with `imtext train --features FILE --backbone NAME`.",
    )
    feats.add_argument("--data", required=True, metavar="KIND:PATH", help=DATA_HELP)
    feats.add_argument(
        "--backbone",
        default="efficientnet_lite0",
        choices=[b for b in typing.get_args(Backbone) if b != "none"],
        help="default: efficientnet_lite0 (works offline)",
    )
    feats.add_argument("--weights", default="default", help="default | none | /path/to/weights")
    feats.add_argument("--image-size", type=int, default=224)
    feats.add_argument("--batch-size", type=int, default=32)
    feats.add_argument("--out", required=True, metavar="FILE.parquet")
    feats.set_defaults(func=_lazy(COMMANDS, "cmd_features"))

    # train
    train = sub.add_parser(
        "train",
        help="train the two-branch model (Ray Train by default)",
        description="Train on --data with the ranking loss; the best epoch by validation rsum becomes the "
        "model directory (config.yaml, weights.safetensors, vocab.json, metrics.json). Runs under Ray Train "
        "with --workers N (a local Ray unless --address/RAY_ADDRESS); --workers 0 runs a plain loop here.",
    )
    add_config_options(train)
    r = _ray_options(train)
    r.add_argument("--workers", type=int, help="Ray Train workers (default 1); 0 = in-process without Ray")
    r.add_argument("--gpu", dest="gpu", action="store_true", default=None, help="one GPU per worker")
    r.add_argument("--cpu", dest="gpu", action="store_false", help="CPU only (default)")
    r.add_argument("--resume", action="store_true", help="continue the interrupted run behind --out")
    train.add_argument(
        "--print-config", action="store_true", help="print the resolved config as YAML and exit"
    )
    train.set_defaults(func=_lazy(COMMANDS, "cmd_train"))

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
        choices=typing.get_args(EvalProtocol),
        default="all",
        help="all images of the split (default), COCO 1K (mean of 5 folds) or 5K",
    )
    ev.add_argument(
        "--baseline",
        action="store_true",
        help="also fit the ridge TF-IDF -> image-feature baseline on --train-split (lambda chosen on "
        "--val-split) and print its row beside the model's, with 95%% bootstrap intervals (needs --features)",
    )
    ev.add_argument("--train-split", default="train", help="the baseline's training split (default train)")
    ev.add_argument("--val-split", default="val", help="the baseline's validation split (default val)")
    ev.add_argument("--json", metavar="FILE", help="also write the metrics as JSON")
    ev.set_defaults(func=_lazy(COMMANDS, "cmd_eval"))

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
    _ray_options(build)
    build.set_defaults(func=_lazy(COMMANDS, "cmd_index_build"))
    add = isub.add_parser("add", help="append new items to an existing index (no rebuild)")
    add.add_argument("--index", required=True, metavar="DIR")
    add.add_argument("--model", required=True, metavar="DIR")
    add.add_argument("--data", required=True, metavar="KIND:PATH", help=DATA_HELP)
    add.add_argument("--split", action="append")
    add.add_argument("--no-ray", action="store_true", help="embed in this process instead of Ray Data")
    _ray_options(add)
    add.set_defaults(func=_lazy(COMMANDS, "cmd_index_add"))
    rm = isub.add_parser(
        "remove",
        help="remove images and their captions from an index (no rebuild)",
        description="Remove images, with all their captions, from both indexes, the metadata and the stored "
        "embeddings. A running Serve app picks the change up with POST /admin/reload.",
    )
    rm.add_argument("--index", required=True, metavar="DIR")
    rm.add_argument(
        "--image-id",
        required=True,
        action="append",
        metavar="ID",
        help="the dataset's image_id, as `imtext index search` prints it (repeatable)",
    )
    rm.set_defaults(func=_lazy(COMMANDS, "cmd_index_remove"))
    search = isub.add_parser("search", help="query an index from the shell")
    search.add_argument("--index", required=True, metavar="DIR")
    search.add_argument("--model", metavar="DIR", help="default: the model the index was built with")
    q = search.add_mutually_exclusive_group(required=True)
    q.add_argument("--text", help="a sentence: finds images")
    q.add_argument("--image", metavar="FILE", help="an image: finds captions")
    search.add_argument("-k", type=int, default=10)
    search.set_defaults(func=_lazy(COMMANDS, "cmd_index_search"))

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
    srv.add_argument(
        "--index-root",
        metavar="DIR",
        help="the folder POST /admin/reload may load collections from (a relative index_dir is taken from "
        "it); it must contain --index (default: the folder --index lies in)",
    )
    srv.add_argument(
        "--app-arg",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a Serve app argument (serve/config.yaml's `args`; the value is YAML), repeatable, e.g. "
        "shard_slots=4 or 'shard={ray_actor_options: {resources: {imtext_shard: 1}}}' (one shard per "
        "node that declares the resource)",
    )
    srv.add_argument(
        "--proxy-location",
        choices=["EveryNode", "HeadOnly"],
        default="EveryNode",
        help="where Serve runs its HTTP proxies (Ray's default: EveryNode; HeadOnly when the nodes share "
        "one host, as in a test cluster)",
    )
    _ray_options(srv)
    srv.set_defaults(func=_lazy(APPS, "cmd_serve"))
    ui = sub.add_parser("ui", help="only the search page, talking to a running API")
    ui.add_argument("--api", default="http://127.0.0.1:8000", help="the Serve app's URL")
    ui.add_argument("--host", default="127.0.0.1")
    ui.add_argument("--port", type=int, default=7860)
    ui.set_defaults(func=_lazy(APPS, "cmd_ui"))

    # tune
    tune = sub.add_parser(
        "tune",
        help="search margins, negatives and the usual hyperparameters with Ray Tune",
        description="Run Ray Tune over a YAML search space (tune/spaces/*.yaml) with the same train loop.",
    )
    tune.add_argument("--space", default="tune/spaces/default.yaml", metavar="YAML")
    tune.add_argument("--trials", type=int, default=8, help="samples (for grid spaces: repeats of the grid)")
    tune.add_argument("--scheduler", choices=typing.get_args(TuneScheduler), default="asha")
    tune.add_argument("--search", choices=typing.get_args(TuneSearch), default="random")
    tune.add_argument("--metric", choices=typing.get_args(SelectionMetric), default="rsum")
    tune.add_argument("--concurrent", type=int, default=2, help="trials at once")
    tune.add_argument("--cpus-per-trial", type=float, default=1.0)
    tune.add_argument("--gpus-per-trial", type=float, default=0.0)
    tune.add_argument(
        "--workers-per-trial", type=int, default=1, help=">1 runs each trial as a Ray Train run"
    )
    tune.add_argument("--run-dir", default="runs/tune", metavar="DIR")
    tune.add_argument(
        "--storage",
        metavar="URI_OR_DIR",
        help="keep the experiment (trials, checkpoints) in URI_OR_DIR/<run-dir name> (s3://, gs://, file://, "
        "or a folder every node mounts) and copy the outputs there; default: the run folder",
    )
    tune.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted search")
    _ray_options(tune)
    add_config_options(tune)
    tune.set_defaults(func=_lazy(APPS, "cmd_tune"))

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
    sm.set_defaults(func=_lazy(COMMANDS, "cmd_submit"))

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
    demo.add_argument(
        "--verbose", action="store_true", help="Ray's own log here too (default: in its log files)"
    )
    demo.set_defaults(func=_lazy("imtext.cli.demo", "cmd_demo"))
    return parser
