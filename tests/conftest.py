"""Shared fixtures: one synthetic world, one quickly trained model, one local Ray for the whole session."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)

COCO_MINI = Path(__file__).resolve().parents[2] / "shared" / "data" / "coco-mini"
if not COCO_MINI.is_dir():  # CI clones elsewhere with shared/ beside the clone
    COCO_MINI = Path(os.environ.get("IMTEXT_COCO_MINI", Path.cwd().parent / "shared" / "data" / "coco-mini"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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


def tiny_config(world: Path, out: Path, **overrides):
    """A config that trains in seconds: small GRU, small heads, a few epochs."""
    from imtext.config import Config

    cfg = Config().override(
        {
            "data.spec": f"synth:{world}",
            "text.word_dim": 64,
            "text.hidden_dim": 96,
            "model.embed_dim": 64,
            "model.mlp_hidden": 128,
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
            "text.model": "bow",
            "text.word_dim": 1024,
            "model.embed_dim": 128,
            "model.mlp_hidden": 512,
            "model.dropout": 0.5,
            "loss.warmup_epochs": 30,
            "train.epochs": 8,
            "train.batch_size": 40,
            "train.lr": 2e-3,
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
