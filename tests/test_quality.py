"""Quality on the synthetic world (seeded, CPU): the demo's model, trained exactly as `imtext demo` trains it
(the synthetic recipe with the demo's settings, imtext.cli.demo.DEMO_SYNTH, on the demo's world; the session
fixture `demo_model`, which the page's example test serves too), reaches
the test rsum issue #16 asks of it, and gets most of the top 5 right for most of the examples its page offers
(imtext.data.suggested_queries, searched over the whole world as the demo indexes it), with margin.

Measured (docs/BENCHMARKS.md, "Demo: its model"; linear heads, lr 6e-4): test rsum 314.2 in the demo and
here (seed 0, 2 threads), 309.8 / 337.4 / 336.1 in-process over seeds 0-2 with 1 thread; the bar is #16's 280.
The examples: 18 of their 30 top-5 images match, most for 5 of 6 (the relation example fails); bars 14 and 3.

Word order is measured, not asserted: on the `order` split a caption's mirror twin holds the same words, and
`order_pair_accuracy` (does a caption score its own image above the mirrored one?) is printed. Any bag of
words scores exactly 0.5 there (tests/test_synth.py shows it without training one), and the GRU measured
0.49 (docs/BENCHMARKS.md, "word order"): it does not read word order yet. Until 2026-11-30 this test trained
the recipe and a bag of words for 7 epochs on 4,000 scenes and asserted that the GRU's `order` rsum beat the
bag's by 20; it did (258 vs 235), but by retrieving the pair among the other images, not by telling its two
images apart, so that comparison now lives only in the benchmarks (and this test takes a third of the time).
"""

from __future__ import annotations

import pytest

from imtext.data import load_pairs
from imtext.data.synth import ONE_OBJECT_SENTENCES, SceneIndex, one_object_accuracy, order_pair_accuracy
from imtext.evaluate import embed_split
from imtext.metrics import retrieval
from imtext.report import print_metrics
from imtext.train.batches import SplitView

pytestmark = pytest.mark.slow  # about 2 minutes on 2 cores: the demo's 5 epochs on 2,000 scenes

MIN_TEST_RSUM = 280  # of 600, on the demo world's 200 test images (#16's target)
# The page's examples (imtext.data.suggested_queries) searched over the whole world, as the demo indexes it:
# full matches among their 30 top-5 images, and examples with most of their top 5 right (#16 asks all 6)
MIN_EXAMPLE_HITS, MIN_EXAMPLES_MOSTLY_RIGHT = 14, 3


def test_demo_model_reaches_its_quality_and_reports_word_order(demo_model):
    import torch

    from imtext.model import TwoBranch

    torch.set_num_threads(2)
    model, spec, seconds = TwoBranch.load(demo_model.model_dir), demo_model.spec, demo_model.seconds
    pairs = load_pairs(spec, splits=["test", "order"])
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
    world_images = embed_world(model, spec)
    scenes = SceneIndex.load(demo_model.world)
    examples = example_precision(model, spec, scenes, world_images)
    for p in examples:
        print(f"  {p.hits}/5 of {p.relevant} matching (most: {'yes' if p.most else 'no'})  {p.query}")
    hits, mostly = sum(p.hits for p in examples), sum(p.most for p in examples)
    held_out = shapes_seen(model, scenes, world_images)
    print(
        f"the page's examples: {hits}/{5 * len(examples)} of their top 5 match, most for {mostly} of "
        f"{len(examples)}; held-out one-object scenes ({held_out['scenes']}): colour {held_out['colour']:.2f}, "
        f"shape {held_out['shape']:.2f} (chance 0.25)"
    )
    assert scores["test"]["rsum"] >= MIN_TEST_RSUM
    assert len(examples) == 6 and hits >= MIN_EXAMPLE_HITS and mostly >= MIN_EXAMPLES_MOSTLY_RIGHT


def embed_world(model, spec: str):
    """Every image of the world (every split, as the demo indexes it) embedded once: (pairs, ids, vectors)."""
    from imtext.data import load_image

    pairs = load_pairs(spec)
    paths = dict(zip(pairs["image_id"].to_pylist(), pairs["image_path"].to_pylist()))
    ids = list(paths)
    return pairs, ids, model.embed_images([load_image(paths[i]) for i in ids])


def example_precision(model, spec: str, scenes: SceneIndex, world_images) -> list:
    """Precision@5 of the examples a collection of the whole world offers, searched over all its images."""
    import numpy as np

    from imtext.data import suggested_queries

    pairs, ids, images = world_images
    queries = suggested_queries(spec, pairs)
    top = np.argsort(-(model.embed_texts(queries) @ images.T), axis=1)[:, :5]
    return [scenes.precision_at_k(q, [ids[j] for j in row], 5, among=ids) for q, row in zip(queries, top)]


def shapes_seen(model, scenes: SceneIndex, world_images) -> dict[str, float]:
    """one_object_accuracy on the val and test scenes that hold one object: printed, not asserted. The demo's
    model remembers its training scenes' shapes (0.77 over all one-object scenes, training included) but
    tells shapes apart in new scenes barely above chance (0.31-0.34; docs/BENCHMARKS.md)."""
    pairs, ids, images = world_images
    split = dict(zip(pairs["image_id"].to_pylist(), pairs["split"].to_pylist()))
    rows = [
        n for n, i in enumerate(ids) if split[i] in ("val", "test") and len(scenes.scenes[i].objects) == 1
    ]
    objects = [scenes.scenes[ids[n]].objects[0] for n in rows]
    return one_object_accuracy(objects, images[rows], model.embed_texts(list(ONE_OBJECT_SENTENCES)))
