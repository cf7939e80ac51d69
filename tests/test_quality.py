"""Quality on the synthetic world (seeded, CPU): its recipe (imtext/recipes/synthetic.yaml) retrieves well,
and an order-aware text model beats bag of words on captions that differ only in word order."""

from __future__ import annotations

import time

import pytest

from imtext.data import load_pairs
from imtext.evaluate import evaluate
from imtext.recipes import load_recipe
from imtext.report import print_metrics
from imtext.train.batches import SplitView
from imtext.train.loop import train_local

pytestmark = pytest.mark.slow  # about 8 minutes on 2 cores: two models trained for 7 epochs

# The measured levels, the seed spread and the runs that chose this world's size and the epochs are in
# docs/BENCHMARKS.md ("Quality on the synthetic world"); the bars below have margin below them.
SCENES, ORDER_PAIRS, SEED = 4000, 150, 7
EPOCHS = 7
MIN_TEST_RSUM = 300  # of 600, on 400 test images
MIN_ORDER_GAP = 20  # GRU over bag of words on captions that differ only in word order


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from imtext.data.synth import generate

    return generate(
        tmp_path_factory.mktemp("quality") / "world", n_images=SCENES, seed=SEED, order_pairs=ORDER_PAIRS
    )


def _train_and_score(world, tmp_path, **overrides) -> dict[str, dict[str, float]]:
    cfg = load_recipe("synthetic").override(
        {
            "data.spec": f"synth:{world}",
            "train.out": str(tmp_path / "model"),
            "train.epochs": EPOCHS,
            **overrides,
        }
    )
    started = time.perf_counter()
    model, history = train_local(cfg)
    seconds = time.perf_counter() - started
    pairs = load_pairs(cfg.data.spec, splits=["test", "order"])
    scores = {split: evaluate(model, SplitView.from_table(pairs, split)) for split in ("test", "order")}
    for split, metrics in scores.items():
        print_metrics(metrics, title=f"{cfg.text.model} on {split} ({seconds:.0f} s of training)")
    scores["seconds"] = {"train": seconds}
    return scores


def test_default_model_and_word_order(world, tmp_path):
    import torch

    torch.set_num_threads(2)
    default = _train_and_score(world, tmp_path / "default")  # the default config: GRU + small CNN
    bow = _train_and_score(world, tmp_path / "bow", **{"text.model": "bow"})
    print(
        f"test rsum: default {default['test']['rsum']:.1f}, bow {bow['test']['rsum']:.1f}; "
        f"order rsum: default {default['order']['rsum']:.1f}, bow {bow['order']['rsum']:.1f}; "
        f"training {default['seconds']['train']:.0f} s + {bow['seconds']['train']:.0f} s"
    )
    assert default["test"]["rsum"] >= MIN_TEST_RSUM
    assert default["order"]["rsum"] - bow["order"]["rsum"] >= MIN_ORDER_GAP
