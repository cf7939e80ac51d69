"""`imtext demo`: the whole chain on an embedded default, each stage reused on a second run unless --fresh.

synthetic world (or --data coco:DIR with EfficientNet-Lite0 features)
  -> Ray Train on a local Ray -> R@K table -> sharded index (Ray Data) -> Ray Serve + the search page
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, field
from pathlib import Path

from imtext.config import Config
from imtext.ray_setup import shutdown_ray
from imtext.report import console, print_metrics, print_table

# The demo runs Ray Train, Ray Data and Serve one after another on one machine, often a 2-core laptop:
# declaring at least this many logical CPUs keeps one stage's actors from waiting on another's.
DEMO_MIN_CPUS = 4


@dataclass
class DemoPlan:
    """What the demo makes and where; `--tiny` shrinks every stage to a minute."""

    workdir: Path
    data_spec: str
    synth: bool
    tiny: bool
    config: Config = field(default_factory=Config)

    @property
    def model_dir(self) -> Path:
        return self.workdir / "model"

    @property
    def index_dir(self) -> Path:
        return self.workdir / "index"

    @property
    def features_path(self) -> Path:
        return self.workdir / "features.parquet"


def plan(args: argparse.Namespace) -> DemoPlan:
    workdir = Path(args.workdir).resolve()
    synth = not args.data
    spec = args.data or f"synth:{workdir / 'synth'}"
    p = DemoPlan(workdir, spec, synth, args.tiny)
    overrides: dict = {"data.spec": spec, "train.out": str(p.model_dir), "train.workers": 1}
    if synth:
        # More scenes, few epochs: the world is free to draw and a small one overfits within 3 epochs.
        overrides.update(
            {"train.epochs": 2 if args.tiny else 4, "train.batch_size": 128, "train.cpus_per_worker": 2.0}
        )
        if args.tiny:
            overrides.update(
                {
                    "text.hidden_dim": 64,
                    "model.embed_dim": 64,
                    "model.mlp_hidden": 128,
                    "loss.warmup_epochs": 1,
                }
            )
    else:
        # Real photos: a frozen ImageNet backbone (works offline), features pooled once, MLP heads trained.
        # On a few hundred captions a wide bag of words beats the GRU, and summing over all negatives
        # throughout beats switching to the hardest (measured on coco-mini).
        overrides.update(
            {
                "image.backbone": "efficientnet_lite0",
                "image.finetune": False,
                "data.features": str(p.features_path),
                "data.val_split": "val",
                "train.epochs": 3 if args.tiny else 12,
                "train.batch_size": 40,
                "text.model": "bow",
                "text.word_dim": 1024,
                "model.embed_dim": 128,
                "model.mlp_hidden": 512,
                "model.dropout": 0.5,
                "loss.warmup_epochs": 1000,
            }
        )
    p.config = Config().override(overrides).validate()
    return p


def _stage(name: str, done: bool, fresh: bool) -> bool:
    """True when the stage must run; says so either way."""
    if done and not fresh:
        console.print(f"[bold]{name}[/bold]: reusing what exists (--fresh rebuilds)")
        return False
    console.print(f"[bold cyan]{name}[/bold cyan] ...")
    return True


def run_demo(args: argparse.Namespace) -> int:
    p = plan(args)
    p.workdir.mkdir(parents=True, exist_ok=True)
    fresh = args.fresh
    started = time.perf_counter()
    timings: list[list] = []

    def timed(stage: str, t0: float) -> None:
        timings.append([stage, f"{time.perf_counter() - t0:.1f} s"])

    # 1. data
    t0 = time.perf_counter()
    if p.synth:
        world = p.workdir / "synth"
        if _stage("data: synthetic world", (world / "synth.json").is_file(), fresh):
            from imtext.data.synth import generate

            generate(world, n_images=300 if p.tiny else 2000, seed=0, order_pairs=30 if p.tiny else 100)
    else:
        from imtext.data import load_pairs

        load_pairs(p.data_spec)  # fail early, with the loader's own message, on a bad dataset
        if _stage("features: EfficientNet-Lite0 over every photo", p.features_path.is_file(), fresh):
            from imtext.image.features import compute_features

            compute_features(
                load_pairs(p.data_spec),
                backbone="efficientnet_lite0",
                weights="default",
                image_size=224,
                out_path=p.features_path,
            )
    timed("data", t0)

    # 2. train on Ray
    t0 = time.perf_counter()
    if _stage("train: Ray Train, 1 worker", (p.model_dir / "weights.safetensors").is_file(), fresh):
        from imtext.train.ray_train import fit

        _connect_ray()
        fit(p.config)
    timed("train", t0)

    # 3. evaluate
    t0 = time.perf_counter()
    console.print("[bold cyan]eval[/bold cyan] ...")
    _evaluate(p)
    timed("eval", t0)

    # 4. index
    t0 = time.perf_counter()
    if _stage(
        "index: embed with Ray Data, 2 FAISS shards", (p.index_dir / "collection.json").is_file(), fresh
    ):
        from imtext.collection import build_collection

        _connect_ray()
        build_collection(p.model_dir, p.data_spec, p.index_dir, shards=2, factory="Flat", use_ray=True)
    timed("index", t0)

    print_table(
        "demo stages",
        ["stage", "time"],
        [*timings, ["total so far", f"{time.perf_counter() - started:.1f} s"]],
    )
    if args.no_serve:
        return 0

    # 5. serve + page
    from imtext.cli.apps import serve_until_interrupted

    _connect_ray()
    return serve_until_interrupted(
        p.model_dir,
        p.index_dir,
        host=args.host,
        port=args.port,
        ui_port=args.ui_port,
        exit_after_ready=args.exit_after_ready,
        started=started,
    )


def _connect_ray() -> None:
    """A local Ray with at least DEMO_MIN_CPUS logical CPUs (see imtext.ray_setup), or RAY_ADDRESS."""
    from imtext.ray_setup import ensure_ray

    ensure_ray(min_cpus=DEMO_MIN_CPUS)


def _evaluate(p: DemoPlan) -> None:
    from imtext.data import load_pairs
    from imtext.evaluate import evaluate
    from imtext.model import TwoBranch
    from imtext.train.batches import SplitView

    model = TwoBranch.load(p.model_dir)
    pairs = load_pairs(p.data_spec)
    splits = ["test", "order"] if p.synth else ["val"]
    for split in splits:
        metrics = evaluate(model, SplitView.from_table(pairs, split))
        print_metrics(metrics, title=f"{split} split")


def cmd_demo(args: argparse.Namespace) -> int:
    try:
        return run_demo(args)
    except KeyboardInterrupt:
        console.print("stopped")
        return 130
    finally:
        shutdown_ray()
