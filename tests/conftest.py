"""Shared fixtures: one synthetic world, one quickly trained model, one local Ray for the whole session."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)

COCO_MINI = Path(__file__).resolve().parents[2] / "shared" / "data" / "coco-mini"
if not COCO_MINI.is_dir():  # CI clones elsewhere with shared/ beside the clone
    COCO_MINI = Path(os.environ.get("IMTEXT_COCO_MINI", Path.cwd().parent / "shared" / "data" / "coco-mini"))
FLICKR8K = COCO_MINI.parent / "flickr8k-762"  # real photos for quality (tests/test_quality_real.py)


_handed_out: set[int] = set()


def free_port() -> int:
    """A port nothing listens on now and that this process has not handed out before: the kernel may give
    the same ephemeral port to two calls in a row (CI once got one port for a head's GCS and dashboard)."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _handed_out:
            _handed_out.add(port)
            return port


# Suite order. test_quality runs first: it trains the demo's model (the session fixture demo_model, which
# test_ui_examples serves later) on an idle machine, before any Ray starts (beside the shared Ray and its
# Serve it took 1.7x as long). Then every module that uses the shared session Ray, back to back, while that
# Ray is fresh; then the modules without Ray; the modules that start Ray clusters of their own (`ray start
# --head`, a second raylet, the demo's local Ray) run last. In CI the shared Ray's later users hung (a
# two-worker Ray Train run waiting on "Requesting resources: {'CPU': 1.0} * 2" with 0 of 8 CPUs in use;
# later Serve's first replica never starting) when minutes of CPU-bound training (test_quality) ran between
# them on the 2-core machine, while the same modules back to back pass. pytest-timeout (pyproject.toml)
# turns any hang left into a failure with every thread's stack instead of a CI run that never ends.
SHARED_RAY_MODULES = [
    "test_ray_train",
    "test_cluster_storage",
    "test_collection",
    "test_tune",
    "test_serve",
    "test_api_fuzz",
    "test_ui",
    "test_ui_examples",
]
OWN_CLUSTER_MODULES = {
    "test_demo",
    "test_documented_commands",
    "test_multinode",
    "test_wheel_submit",
}


FIRST_MODULES = ["test_quality"]


def pytest_collection_modifyitems(config, items):
    def rank(item) -> tuple[int, int]:
        module = Path(str(item.fspath)).stem
        if module in FIRST_MODULES:
            return -1, FIRST_MODULES.index(module)
        if module in SHARED_RAY_MODULES:
            return 0, SHARED_RAY_MODULES.index(module)
        return (2, 0) if module in OWN_CLUSTER_MODULES else (1, 0)

    items.sort(key=rank)  # stable: the order within each group is kept


@pytest.fixture(autouse=True)
def _keep_the_latest_ray_cluster_file():
    """Tests that run `ray start --head` (submit, multinode, documented commands) make Ray record their head
    as "the latest cluster" (/tmp/ray/ray_current_cluster). Once that head is stopped, Ray processes of the
    session's own Ray that look the address up (Ray Train's placement-group cleaner and controller) wait on
    a dead GCS: a later Ray Train test then hung. Each test leaves the file as it found it."""
    from ray._common.utils import get_ray_address_file

    path = Path(get_ray_address_file(None))
    before = path.read_bytes() if path.is_file() else None
    yield
    after = path.read_bytes() if path.is_file() else None
    if after != before:
        if before is None:
            path.unlink(missing_ok=True)
        else:
            path.write_bytes(before)


@pytest.fixture(scope="session")
def flickr8k() -> Path:
    if not (FLICKR8K / "Flickr8k.token.txt").is_file():
        pytest.fail(f"flickr8k-762 not found at {FLICKR8K}; it sits beside coco-mini in ../shared/data")
    return FLICKR8K


@pytest.fixture(scope="session")
def coco_mini() -> Path:
    if not (COCO_MINI / "annotations").is_dir():
        pytest.fail(f"coco-mini not found at {COCO_MINI}; set IMTEXT_COCO_MINI to ../shared/data/coco-mini")
    return COCO_MINI


@pytest.fixture(scope="session")
def synth_world(tmp_path_factory) -> Path:
    """A small synthetic world shared by the tests that need data (600 scenes)."""
    from imtext.data.synth import generate

    return generate(tmp_path_factory.mktemp("synth") / "world", n_images=600, seed=1, order_pairs=40)


@dataclass(frozen=True)
class DemoModel:
    model_dir: Path
    world: Path
    spec: str  # synth:<world>
    seconds: float  # training, in this process


@pytest.fixture(scope="session")
def demo_model(tmp_path_factory) -> DemoModel:
    """The demo's model, trained as `imtext demo` trains it (the synthetic recipe with the demo's settings,
    imtext.cli.demo.DEMO_SYNTH, on the demo's 2,000-scene world, seed 0) by the loop Ray Train runs, here in
    this process on 2 threads: the quality test judges it and the page's example test serves it. About 2
    minutes, once a session."""
    import argparse
    import time

    from imtext.cli.demo import plan
    from imtext.train.loop import train_local

    root = tmp_path_factory.mktemp("demo")
    demo = plan(argparse.Namespace(workdir=str(root), data=None, tiny=False))
    world = demo.draw_world(root / "synth")
    cfg = demo.config.override({"data.spec": f"synth:{world}", "train.workers": 0})
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        started = time.perf_counter()
        train_local(cfg)
        seconds = time.perf_counter() - started
    finally:
        torch.set_num_threads(threads)
    return DemoModel(Path(cfg.train.out), world, cfg.data.spec, seconds)


def tiny_config(world: Path, out: Path, **overrides):
    """A config that trains in seconds: the synthetic recipe with a small GRU, linear heads, a few epochs.

    With the recipe's MLP heads (128 wide until 2026-11-30) the model's best validation rsum landed anywhere
    from 80 to 122 as the seed or the convolutions' rounding changed (channels-last on CPU); with linear
    heads, 187 (seed 0)."""
    from imtext.recipes import load_recipe

    cfg = load_recipe("synthetic").override(
        {
            "data.spec": f"synth:{world}",
            "text.word_dim": 64,
            "text.hidden_dim": 96,
            "model.embed_dim": 64,
            "model.mlp_hidden": 0,  # linear heads: the from-scratch CNN learns under them (docs/BENCHMARKS.md)
            "train.epochs": 3,
            "train.batch_size": 64,
            "train.out": str(out),
            "loss.warmup_epochs": 1,
        }
    )
    return cfg.override(overrides)


@pytest.fixture(scope="session")
def tiny_model(synth_world, tmp_path_factory) -> Path:
    """A model directory trained in-process for a few epochs (for index, serve and page tests)."""
    from imtext.train.loop import train_local

    out = tmp_path_factory.mktemp("model") / "model"
    train_local(tiny_config(synth_world, out))
    return out


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray for every test that needs it (starting Ray costs ~15 s here)."""
    import ray

    # More logical CPUs than cores: Train's controller, its workers and Serve's actors would otherwise
    # wait on each other on a 2-core machine.
    ray.init(
        address="local", num_cpus=8, include_dashboard=False, log_to_driver=False, configure_logging=False
    )
    yield ray
    try:
        from ray import serve

        serve.shutdown()
    except Exception:
        pass
    ray.shutdown()


@pytest.fixture(scope="session")
def coco_artifacts(coco_mini, tmp_path_factory) -> dict:
    """Real photos end to end: EfficientNet-Lite0 features of the 80 train2017 photos -> a bag-of-words model
    trained on them -> a 2-shard collection of the 79 val2017 photos embedded from raw pixels.

    val2017 stays unseen until the search: the run's "validation" split is train itself, so the last,
    best-fitting epoch is kept. These settings were measured on coco-mini (R@10 0.61-0.65 over seeds 0-3).
    """
    import time

    from imtext.collection import build_collection
    from imtext.config import Config
    from imtext.data import load_pairs
    from imtext.image.features import compute_features
    from imtext.train.loop import train_local

    root = tmp_path_factory.mktemp("coco")
    spec = f"coco:{coco_mini}"
    t0 = time.perf_counter()
    train_pairs = load_pairs(spec, splits=["train"])
    feats = compute_features(
        train_pairs,
        backbone="efficientnet_lite0",
        weights="default",
        image_size=224,
        out_path=root / "features.parquet",
        num_threads=2,
        progress=False,
    )
    t_feat = time.perf_counter() - t0
    cfg = Config().override(
        {
            "data.spec": spec,
            "data.features": str(feats),
            "data.train_split": "train",
            "data.val_split": "train",
            "image.backbone": "efficientnet_lite0",
            # the library's defaults otherwise: they are what a user with real photos gets
            "train.seed": 0,
            "train.out": str(root / "model"),
        }
    )
    train_local(cfg)
    t_train = time.perf_counter() - t0 - t_feat
    index = build_collection(
        root / "model",
        spec,
        root / "index",
        shards=2,
        splits=["val"],
        use_ray=False,
        batch_size=16,
        progress=False,
    )
    t_build = time.perf_counter() - t0 - t_feat - t_train
    return {
        "spec": spec,
        "train_pairs": train_pairs,
        "features": feats,
        "model": root / "model",
        "index": index,
        "seconds": {"features": t_feat, "train": t_train, "index": t_build},
    }
