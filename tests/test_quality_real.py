"""Quality on real photos (flickr8k-762, EfficientNet-Lite0 features): `imtext train` with no flags beyond
--data, --features and --backbone must beat the ridge baseline on the test split by a clear margin, and
reach a floor set from measurements (docs/BENCHMARKS.md, "Real photos"), with margin for noise.

Measured (test split, 102 photos): ridge 382.0 (95% interval 348-412); the defaults (bag of words beside the
frozen all-MiniLM-L6-v2 sentence encoder) 423.9 / 420.6 / 431.0 with seeds 0 / 1 / 2, i.e. 1.10-1.13 x
ridge (issue #15 asks for 1.10 x). Without the sentence encoder the same recipe was at parity (373-384), so
the asserted 1.05 x fails if the sentence encoder stops reaching the text branch; the seed-to-seed spread
(about +-5 rsum) is why it is not 1.10 x here.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from imtext.baseline import RidgeBaseline
from imtext.data import load_pairs
from imtext.image.features import load_features
from imtext.train.batches import FeatureLookup, SplitView

pytestmark = pytest.mark.slow  # about a minute: features of 762 photos, then a few seconds per epoch

MIN_TEST_RSUM = 405  # measured 421-431 over seeds 0-2; without the sentence encoder 373-384
MARGIN = 1.05  # x the ridge's test rsum; measured 1.10-1.13


def imtext(*args: str) -> str:
    """The console script of this environment, as a user types it."""
    exe = Path(sys.executable).with_name("imtext")
    done = subprocess.run([str(exe), *args], capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return done.stdout


def test_default_recipe_beats_the_ridge_baseline_on_real_photos(flickr8k, tmp_path):
    data = f"flickr8k:{flickr8k}"
    features = tmp_path / "lite0.parquet"
    imtext("features", "--data", data, "--backbone", "efficientnet_lite0", "--out", str(features))
    model_dir = tmp_path / "model"
    imtext(
        "train",
        "--data",
        data,
        "--features",
        str(features),
        "--backbone",
        "efficientnet_lite0",
        "--out",
        str(model_dir),
        "--workers",
        "0",
    )
    report = tmp_path / "eval.json"
    out = imtext(
        "eval",
        "--model",
        str(model_dir),
        "--data",
        data,
        "--features",
        str(features),
        "--split",
        "test",
        "--baseline",
        "--json",
        str(report),
    )
    assert "model rsum / ridge rsum" in out, out  # the comparison a user reads
    metrics = json.loads(report.read_text())
    model_rsum, ridge_rsum = metrics["rsum"], metrics["baseline"]["rsum"]
    # The console's numbers are the library's: the ridge refitted here scores the same.
    pairs = load_pairs(data)
    views = {s: SplitView.from_table(pairs, s) for s in ("train", "val", "test")}
    lookup = FeatureLookup(*load_features(features)[:2])
    ridge, _ = RidgeBaseline.fit_selected(views["train"], views["val"], lookup)
    assert ridge.evaluate(views["test"], lookup)["rsum"] == pytest.approx(ridge_rsum)
    print(f"\nflickr8k-762 test rsum: imtext defaults {model_rsum:.1f}, ridge {ridge_rsum:.1f}")
    assert model_rsum >= MARGIN * ridge_rsum, (model_rsum, ridge_rsum)
    assert model_rsum >= MIN_TEST_RSUM, model_rsum
