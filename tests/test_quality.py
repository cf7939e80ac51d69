"""Quality on the synthetic world (seeded, CPU): the demo's model, trained exactly as `imtext demo` trains it
(the synthetic recipe with the demo's settings, imtext.cli.demo.DEMO_SYNTH, on the demo's world; the session
fixture `demo_model`, which the page's example test serves too), reaches the test rsum issue #16 asks of it,
reads word order, and gets most of the top 5 right for most of the examples its page offers
(imtext.data.suggested_queries, searched over the whole world as the demo indexes it), with margin.

The demo trains on fresh scenes (data.fresh_scenes, imtext.train.fresh): 19 epochs of newly drawn scenes at
48 px, the first 9 of them two-object scenes captioned with their relation, beside their mirrors, and from
epoch 5 pairs of scenes one object apart captioned with their counts. Measured in docs/BENCHMARKS.md
("Counting", in-process, 1 thread, seeds 0 / 1 / 2): test rsum 432 / 438 / ...; mirrored pairs told apart
0.87 / 0.98 (up-down 0.77 / 0.97); count pairs 0.93 / 0.94; the examples 22 / 23 of 30 on target, most for 6
of 6. In the demo (seed 0, Ray Train, 2 threads): 436.7, 0.92 (up-down 0.87), count pairs 0.92, 21 of 30,
most for 5 of 6.

Word order: on the `order` split a caption's mirror twin holds the same words, so any bag of words tells the
pair apart exactly half the time (tests/test_synth.py shows it without training one). The model trained on
the stored scenes scored 0.49, the demo's model before up-down twins 0.72 (left-right 0.96, up-down 0.48).
Counting: each image of a count pair ("two yellow crosses" / "three yellow crosses") against its twin's
caption; before count pairs the demo's model scored 0.55-0.65.
"""

from __future__ import annotations

import pytest

from imtext.data import load_pairs
from imtext.data.synth import (
    ONE_OBJECT_SENTENCES,
    SceneIndex,
    count_pair_accuracy,
    count_probe,
    one_object_accuracy,
    order_pair_accuracy,
    order_pair_accuracy_by_axis,
)
from imtext.evaluate import embed_split
from imtext.metrics import retrieval
from imtext.report import print_metrics
from imtext.train.batches import SplitView

pytestmark = pytest.mark.slow  # about 2 minutes on 2 cores: the demo's 19 epochs of fresh scenes

MIN_TEST_RSUM = 280  # of 600, on the demo world's 200 test images (#16's target)
MIN_ORDER_PAIRS = 0.75  # mirrored pairs told apart (0.5: word order not read; measured 0.87-0.98) ...
MIN_UP_DOWN_PAIRS = 0.65  # ... the up-down ones among them (measured 0.77-0.97)
MIN_COUNT_PAIRS = 0.8  # count pairs told apart (0.5: numbers not read; measured 0.92-0.94)
# The page's examples (imtext.data.suggested_queries) searched over the whole world, as the demo indexes it:
# full matches among their 30 top-5 images, and examples with most of their top 5 right (#16 asks all 6)
MIN_EXAMPLE_HITS, MIN_EXAMPLES_MOSTLY_RIGHT = 18, 4


@pytest.fixture(autouse=True)
def _two_threads():
    """Embedding on both cores, and the suite's one thread back afterwards (tests/conftest.py)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def test_demo_model_reaches_its_quality_and_reads_word_order(demo_model):
    from imtext.model import TwoBranch

    model, spec, seconds = TwoBranch.load(demo_model.model_dir), demo_model.spec, demo_model.seconds
    pairs = load_pairs(spec, splits=["test", "order"])
    scores = {}
    for split in ("test", "order"):
        view = SplitView.from_table(pairs, split)
        img, txt = embed_split(model, view)
        scores[split] = retrieval(img, txt, view.caption_image)
        print_metrics(scores[split], title=f"the demo's model on {split} ({seconds:.0f} s of training)")
    told_apart = order_pair_accuracy(view.image_ids, view.caption_image, img, txt)
    axes = order_pair_accuracy_by_axis(view.image_ids, view.caption_image, img, txt, view.captions)
    probe_images, probe_captions = count_probe(SceneIndex.load(demo_model.world).image_size)
    counted = count_pair_accuracy(model.embed_images(probe_images), model.embed_texts(probe_captions))
    print(
        f"test rsum {scores['test']['rsum']:.1f}; order rsum {scores['order']['rsum']:.1f}, mirrored pairs "
        f"told apart {told_apart:.3f} (left-right {axes['left-right']:.3f}, up-down {axes['up-down']:.3f}; "
        f"0.5: word order not read); count pairs {counted:.3f}; training {seconds:.0f} s"
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
    assert told_apart >= MIN_ORDER_PAIRS and axes["up-down"] >= MIN_UP_DOWN_PAIRS
    assert counted >= MIN_COUNT_PAIRS
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
    """one_object_accuracy on the val and test scenes that hold one object: printed, not asserted. Trained on
    fresh scenes the demo's model names 0.88-0.99 of their shapes; trained on the stored ones it remembered
    them (0.77 over all one-object scenes, 0.31-0.40 over held-out ones; docs/BENCHMARKS.md)."""
    pairs, ids, images = world_images
    split = dict(zip(pairs["image_id"].to_pylist(), pairs["split"].to_pylist()))
    rows = [
        n for n, i in enumerate(ids) if split[i] in ("val", "test") and len(scenes.scenes[i].objects) == 1
    ]
    objects = [scenes.scenes[ids[n]].objects[0] for n in rows]
    return one_object_accuracy(objects, images[rows], model.embed_texts(list(ONE_OBJECT_SENTENCES)))
