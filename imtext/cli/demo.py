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
from imtext.errors import ImtextError
from imtext.ray_setup import shutdown_ray
from imtext.recipes import load_recipe
from imtext.report import console, print_split_metrics, print_table

# The demo runs Ray Train, Ray Data and Serve one after another on one machine, often a 2-core laptop:
# declaring at least this many logical CPUs keeps one stage's actors from waiting on another's.
DEMO_MIN_CPUS = 4
# Epoch lines the demo prints at most (every k-th epoch and the last), so its output fits one screen.
DEMO_EPOCH_LINES = 8

# The demo's model on the synthetic world: the synthetic recipe, trained for what a first visit can wait
# (page ready after 144 s on the 2-core machine; the goal is 3 minutes). Chosen in docs/BENCHMARKS.md
# ("Fresh scenes", "Up and down", "Counting"):
# - fresh scenes (data.fresh_scenes): every step draws new scenes instead of rereading the world's 1,600
#   training scenes. The model had learned those by heart (held-out shapes 0.40) and never read word order
#   (0.50); now shapes 0.9-1.0 and mirrored pairs 0.92-0.98.
# - The first 9 epochs draw two-object scenes captioned with their relation, each side-naming caption beside
#   its mirror, and from epoch 5 each up-down one beside its mirror too (without those twins up and down
#   were never read: 0.48). From epoch 5 a fifth of the draws are pairs of scenes one object apart, captioned
#   with their counts ("two yellow crosses" / "three yellow crosses"): without them counts were read at
#   0.55-0.65, with them 0.92-0.94. The last 10 epochs draw the world's mix with a fifth each of relations,
#   places in the frame and count pairs.
# - 48 px, the world drawn at that size; the from-scratch CNN at half width, in float32 (in bf16 it learned
#   shapes less surely: train.cpu_bf16), and a GRU of 128 per direction.
# - InfoNCE in batches of 64 at lr 2e-3 (every run that read word order used it). Linear heads: the recipe's
#   1024-wide MLP kept the CNN from learning shapes.
DEMO_SYNTH_WORLD = (2000, 100)  # scenes (80/10/10 train/val/test), mirrored pairs (the `order` split)
DEMO_SYNTH: dict = {
    "data.fresh_scenes": True,
    "data.fresh_relation_epochs": 9,
    "data.fresh_relations": 0.2,
    "data.fresh_positions": 0.2,
    "data.fresh_twins": "places",
    "data.fresh_updown_from": 5,
    "data.fresh_counts": 0.2,
    "data.fresh_counts_from": 5,
    "image.image_size": 48,
    "image.smallcnn_width": 16,
    "text.hidden_dim": 128,
    "train.epochs": 19,
    "train.batch_size": 64,
    "train.lr": 2e-3,
    "model.mlp_hidden": 0,
    "train.backbone_lr_scale": 1.0,
    "loss.negatives": "infonce",
    "loss.temperature": 0.1,
    "loss.warmup_epochs": 0,
    "train.cpus_per_worker": 2.0,
}


@dataclass
class DemoPlan:
    """What the demo makes and where; `--tiny` shrinks every stage to a minute."""

    workdir: Path
    data_spec: str
    synth: bool
    tiny: bool
    config: Config = field(default_factory=Config)
    images: int = 0  # the synthetic world's scenes (train/val/test 80/10/10) ...
    order_pairs: int = 0  # ... and its mirrored pairs (the `order` split)

    @property
    def model_dir(self) -> Path:
        return self.workdir / "model"

    @property
    def index_dir(self) -> Path:
        return self.workdir / "index"

    @property
    def features_path(self) -> Path:
        return self.workdir / "features.parquet"

    def draw_world(self, root: Path | None = None) -> Path:
        """Draw the synthetic world (into `root`, by default the demo's own folder) at the size its model
        reads: resized, its small shapes blur, and a CNN learned them worse (docs/BENCHMARKS.md, "Up and
        down")."""
        from imtext.data.synth import generate

        world = root or Path(self.data_spec.partition(":")[2])
        size = self.config.image.size()
        return generate(world, n_images=self.images, seed=0, order_pairs=self.order_pairs, image_size=size)


def plan(args: argparse.Namespace) -> DemoPlan:
    workdir = Path(args.workdir).resolve()
    synth = not args.data
    spec = args.data or f"synth:{workdir / 'synth'}"
    p = DemoPlan(workdir, spec, synth, args.tiny)
    if synth:
        p.images, p.order_pairs = (300, 30) if args.tiny else DEMO_SYNTH_WORLD
    overrides: dict = {"data.spec": spec, "train.out": str(p.model_dir), "train.workers": 1}
    if synth:
        overrides.update(DEMO_SYNTH)
        if args.tiny:
            overrides.update(
                {
                    "train.epochs": 2,
                    "data.fresh_relation_epochs": 1,
                    "train.batch_size": 128,
                    "text.hidden_dim": 64,
                    "model.embed_dim": 64,
                    "model.mlp_hidden": 128,
                }
            )
    else:
        # Real photos: the library's defaults (chosen on flickr8k-762's dev split, docs/BENCHMARKS.md) on a
        # frozen ImageNet backbone that works offline, its features pooled once.
        overrides.update(
            {
                "image.backbone": "efficientnet_lite0",
                "image.finetune": False,
                "data.features": str(p.features_path),
                "data.val_split": "val",
            }
        )
        if args.tiny:
            overrides["train.epochs"] = 3
    base = load_recipe("synthetic") if synth else Config()
    p.config = base.override(overrides).validate()
    return p


def _every(epochs: int) -> str:
    """How often the demo prints an epoch (at most DEMO_EPOCH_LINES lines)."""
    from imtext.report import epoch_stride

    k = epoch_stride(epochs, DEMO_EPOCH_LINES)
    return "" if k == 1 else f"1 epoch in {k} shown, "


def _stage(name: str, done: bool, fresh: bool, doing: str = "") -> bool:
    """True when the stage must run; says so either way, in one line."""
    if done and not fresh:
        console.print(f"[bold]{name:<6}[/bold] reusing what exists (--fresh rebuilds)")
        return False
    console.print(f"[bold cyan]{name:<6}[/bold cyan] {doing}")
    return True


def _where(path: Path) -> str:
    """A path as short as it is unambiguous: relative to the working folder when inside it."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def run_demo(args: argparse.Namespace) -> int:
    from imtext.ray_setup import configure_console

    configure_console(verbose=getattr(args, "verbose", False))
    p = plan(args)
    p.workdir.mkdir(parents=True, exist_ok=True)
    fresh = args.fresh
    started = time.perf_counter()
    made: list[list] = []  # stage, time, what it made, where

    def done(stage: str, t0: float, what: str, where: Path | str = "") -> None:
        made.append([stage, f"{time.perf_counter() - t0:.1f} s", what, _where(where) if where else ""])

    source = "the synthetic world" if p.synth else p.data_spec
    console.print(
        f"[bold]imtext demo[/bold]: {source} -> Ray Train -> R@K -> sharded index (Ray Data) -> Ray Serve + page"
        + ("" if getattr(args, "verbose", False) else "   (--verbose: Ray's own log here too)"),
        highlight=False,
    )

    # 1. data
    t0 = time.perf_counter()
    if p.synth:
        world = p.workdir / "synth"
        if _stage("data", (world / "synth.json").is_file(), fresh, f"drawing {p.images:,} synthetic scenes"):
            p.draw_world()
        done("data", t0, _count_pairs(p.data_spec), world)
    else:
        from imtext.data import load_pairs

        load_pairs(p.data_spec)  # fail early, with the loader's own message, on a bad dataset
        if _stage("data", p.features_path.is_file(), fresh, "EfficientNet-Lite0 features of every photo"):
            from imtext.image.features import compute_features

            compute_features(
                load_pairs(p.data_spec),
                backbone="efficientnet_lite0",
                weights="default",
                image_size=224,
                out_path=p.features_path,
            )
        done("data", t0, _count_pairs(p.data_spec), p.features_path)

    # 2. train on Ray
    t0 = time.perf_counter()
    epochs = p.config.train.epochs
    if _stage(
        "train",
        (p.model_dir / "weights.safetensors").is_file(),
        fresh,
        f"Ray Train, {p.config.train.workers} worker, {epochs} epochs (validation rsum, max 600; "
        f"{_every(epochs)}all in curves.png)",
    ):
        from imtext.report import epoch_line, epoch_printer
        from imtext.train.ray_train import fit

        _connect_ray()
        with console.status("training on Ray Train ...", spinner="dots") as status:
            print_line = epoch_printer(epochs, indent="       ", lines=DEMO_EPOCH_LINES)

            def on_epoch(m: dict) -> None:
                status.update(f"training on Ray Train: {epoch_line(m, epochs)}")
                print_line(m)

            fit(p.config, on_epoch=on_epoch)
    done("train", t0, _best_epoch(p.model_dir), p.model_dir / "curves.png")

    # 3. evaluate
    t0 = time.perf_counter()
    results = _evaluate(p)
    done("eval", t0, ", ".join(f"{split} rsum {m['rsum']:.1f}" for split, m in results.items()))

    # 4. index
    t0 = time.perf_counter()
    if _stage(
        "index",
        _index_fits_model(p),
        fresh,
        "embedding the collection with Ray Data into 2 FAISS shards per kind",
    ):
        from imtext.collection import build_collection

        _connect_ray()
        # a live count of the images and captions embedded so far (each one vector of the index)
        build_collection(
            p.model_dir,
            p.data_spec,
            p.index_dir,
            shards=2,
            factory="Flat",
            use_ray=True,
            progress=True,
            summary=False,
        )
    done("index", t0, _index_counts(p.index_dir), p.index_dir)

    print_table(
        f"what the demo made ({time.perf_counter() - started:.0f} s so far)",
        ["stage", "time", "result", "where"],
        made,
        compact=True,
    )
    _say_where_logs_are()
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


def _count_pairs(spec: str) -> str:
    from imtext.data import load_pairs

    table = load_pairs(spec)
    return f"{len(set(table['image_id'].to_pylist())):,} images, {table.num_rows:,} captions"


def _best_epoch(model_dir: Path) -> str:
    from imtext.model import read_metrics

    metrics = read_metrics(model_dir)
    best, history = metrics.get("best", {}), metrics.get("history", [])
    if "rsum" not in best:
        return "model"
    if history and not (model_dir / "curves.png").is_file():  # a model from before curves.png existed
        from imtext.train.curves import write_curves

        write_curves(history, model_dir, title=f"{model_dir.name}: Ray Train")
    return f"val rsum {best['rsum']:.1f} (epoch {int(best['epoch']) + 1} of {len(history)}); curves.png"


def _index_counts(index_dir: Path) -> str:
    from imtext.collection import read_info

    counts = read_info(index_dir).get("counts", {})
    return f"{counts.get('images', '?'):,} images, {counts.get('captions', '?'):,} captions"


def _say_where_logs_are() -> None:
    from imtext.ray_setup import is_verbose, logs_dir

    where = logs_dir()
    if where:
        shown = "shown above" if is_verbose() else "--verbose shows them here"
        console.print(f"Ray's logs: {where}  ({shown})", highlight=False)


def _index_fits_model(p: DemoPlan) -> bool:
    """A reusable index: one there, built by this model (an index from an older imtext, whose fingerprint
    covered less, or from another model, is rebuilt)."""
    if not (p.index_dir / "collection.json").is_file():
        return False
    from imtext.collection import read_info
    from imtext.model import TwoBranch

    try:
        return read_info(p.index_dir)["model_fingerprint"] == TwoBranch.load(p.model_dir).fingerprint
    except ImtextError:
        return False


def _connect_ray() -> None:
    """A local Ray with at least DEMO_MIN_CPUS logical CPUs (see imtext.ray_setup), or RAY_ADDRESS."""
    from imtext.ray_setup import ensure_ray

    ensure_ray(min_cpus=DEMO_MIN_CPUS)


def _evaluate(p: DemoPlan) -> dict[str, dict]:
    """R@K on the held-out splits, one compact table (the `order` split: captions that differ only in word
    order, which a bag of words cannot tell apart)."""
    from imtext.data import load_pairs
    from imtext.evaluate import evaluate
    from imtext.model import TwoBranch
    from imtext.train.batches import SplitView

    model = TwoBranch.load(p.model_dir)
    pairs = load_pairs(p.data_spec)
    splits = eval_splits(p.synth, set(pairs.column("split").to_pylist()))
    results = {split: evaluate(model, SplitView.from_table(pairs, split)) for split in splits}
    title = "eval   R@K in % on held-out splits (medr: median rank)"
    if splits == ["val"]:
        title += "; val also chose the epoch: no test split here"
    print_split_metrics(results, title=title)
    return results


def eval_splits(synth: bool, present: set[str]) -> list[str]:
    """The splits the demo reports: `test` (and the synthetic world's `order`), never the `val` split that
    chose the best epoch, unless the data has no test split (coco's train2017/val2017)."""
    if synth:
        return ["test", "order"]
    return ["test"] if "test" in present else ["val"]


def cmd_demo(args: argparse.Namespace) -> int:
    try:
        return run_demo(args)
    except KeyboardInterrupt:
        console.print("stopped")
        return 130
    except ImtextError:
        raise  # one line from imtext.cli.main
    except Exception as e:  # a stage failed, often inside Ray: a worker's error comes with its traceback
        if getattr(args, "verbose", False):
            raise
        console.print("[bold red]the demo stopped with an error:[/bold red]")
        console.print(f"{type(e).__name__}: {e}", markup=False, highlight=False)
        _say_where_logs_are()
        console.print("rerun with --verbose for this process's traceback and Ray's full log here")
        return 1
    finally:
        shutdown_ray()
