"""Quality on the synthetic world (seeded, CPU): the demo's model, trained exactly as `imtext demo` trains it
(the synthetic recipe with the demo's settings, imtext.cli.demo.DEMO_SYNTH, on the demo's world), reaches
the test rsum issue #16 asks of it, with margin.

Measured (docs/BENCHMARKS.md, "Demo: its model"): test rsum 316 in the demo, 309.5 / 301.5 / 304.0 in-process
over seeds 0-2, 322.7 on 2026-11-30; the bar is #16's 280.

Word order is measured, not asserted: on the `order` split a caption's mirror twin holds the same words, and
`order_pair_accuracy` (does a caption score its own image above the mirrored one?) is printed. Any bag of
words scores exactly 0.5 there (tests/test_synth.py shows it without training one), and the GRU measured
0.49 (docs/BENCHMARKS.md, "word order"): it does not read word order yet. Until 2026-11-30 this test trained
the recipe and a bag of words for 7 epochs on 4,000 scenes and asserted that the GRU's `order` rsum beat the
bag's by 20; it did (258 vs 235), but by retrieving the pair among the other images, not by telling its two
images apart, so that comparison now lives only in the benchmarks (and this test takes a third of the time).
"""

from __future__ import annotations

import argparse
import time

import pytest

from imtext.cli.demo import plan
from imtext.data import load_pairs
from imtext.data.synth import generate, order_pair_accuracy
from imtext.evaluate import embed_split
from imtext.metrics import retrieval
from imtext.report import print_metrics
from imtext.train.batches import SplitView
from imtext.train.loop import train_local

pytestmark = pytest.mark.slow  # about 2 minutes on 2 cores: the demo's 5 epochs on 2,000 scenes

MIN_TEST_RSUM = 280  # of 600, on the demo world's 200 test images (#16's target)


def test_demo_model_reaches_its_quality_and_reports_word_order(tmp_path):
    import torch

    torch.set_num_threads(2)
    demo = plan(argparse.Namespace(workdir=str(tmp_path), data=None, tiny=False))
    world = generate(tmp_path / "synth", n_images=demo.images, seed=0, order_pairs=demo.order_pairs)
    cfg = demo.config.override({"data.spec": f"synth:{world}", "train.workers": 0})  # the loop Ray Train runs
    started = time.perf_counter()
    model, _ = train_local(cfg)
    seconds = time.perf_counter() - started
    pairs = load_pairs(cfg.data.spec, splits=["test", "order"])
    scores = {}
    for split in ("test", "order"):
        view = SplitView.from_table(pairs, split)
        img, txt = embed_split(model, view)
        scores[split] = retrieval(img, txt, view.caption_image)
        print_metrics(scores[split], title=f"the demo's model on {split} ({seconds:.0f} s of training)")
    told_apart = order_pair_accuracy(view.image_ids, view.caption_image, img, txt)
    print(
        f"test rsum {scores['test']['rsum']:.1f}; order rsum {scores['order']['rsum']:.1f}, mirrored pairs "
        f"told apart {told_apart:.3f} (0.5: word order not read); training {seconds:.0f} s"
    )
    assert scores["test"]["rsum"] >= MIN_TEST_RSUM
