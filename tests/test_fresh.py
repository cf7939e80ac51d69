"""Training on fresh synthetic scenes (data.fresh_scenes, imtext.train.fresh): every drawn caption is true of
its scene, the stream is reproducible per (seed, rank, epoch) and differs across them, twins are exact
mirrors, and the training loop runs on it with an epoch as long as the stored split's."""

from __future__ import annotations

import random

import pytest
import torch

from imtext.config import Config
from imtext.data.synth import DRAW_KINDS, draw_captioned, draw_count_pair, mirror_scene, parse_query, render
from imtext.errors import ImtextError
from imtext.text.mirror import mirror_caption
from imtext.train.fresh import INDEX_STRIDE, FreshScenes
from tests.conftest import tiny_config


def _kind(caption: str) -> str:
    """What a drawn caption teaches: a relation, a place in the frame, or neither."""
    query = parse_query(caption)
    placed = any(m.position for m in query.mentions)
    return "relation" if query.relation else "position" if placed else "other"


@pytest.mark.parametrize("kind", DRAW_KINDS)
def test_drawn_captions_are_true_of_their_scenes(kind):
    rng = random.Random(7)
    kinds = set()
    for _ in range(300):
        scene, caption = draw_captioned(rng, 64, kind)
        assert parse_query(caption).matches(scene, 64, sizes=True), (caption, scene)
        kinds.add(_kind(caption))
        if kind == "relation":
            assert len(scene.objects) == 2, caption
    assert kinds == ({"relation", "position", "other"} if kind == "world" else {kind})


def test_draw_kinds_are_checked():
    with pytest.raises(ValueError, match="kind must be one of"):
        draw_captioned(random.Random(0), 64, "count")


class _Words:
    """A featurizer stand-in that keeps the caption, so the test can read what was drawn."""

    def __call__(self, caption: str) -> str:
        return caption


def _stream(**kw) -> FreshScenes:
    from torchvision.transforms import functional as F

    args = {"samples": 200, "image_size": 64, "seed": 0, "relations": 1.0, "twins": "all"} | kw
    return FreshScenes(_Words(), F.to_tensor, **args)


def _items(ds: FreshScenes) -> list[tuple]:
    return list(iter(ds))


def test_stream_is_reproducible_and_new_per_epoch_and_rank():
    first, again = _items(_stream()), _items(_stream())
    assert len(first) == 200
    assert [c for _, c, *_ in first] == [c for _, c, *_ in again]
    assert all(torch.equal(a[0], b[0]) for a, b in zip(first, again))
    later = _stream()
    later.set_epoch(1)
    other_rank = _stream(rank=1)
    for ds in (later, other_rank):
        assert [c for _, c, *_ in _items(ds)] != [c for _, c, *_ in first]
    indices = [i for _, _, i, *_ in first] + [i for _, _, i, *_ in _items(other_rank)]
    assert len(set(indices)) == 400  # one loss may gather both ranks: an index names one image
    assert min(i for _, _, i, *_ in _items(other_rank)) >= INDEX_STRIDE


@pytest.mark.parametrize("kind", DRAW_KINDS)
@pytest.mark.parametrize("axis", ["h", "v"])
def test_mirrored_scenes_make_mirrored_captions_true(kind, axis):
    rng = random.Random(3)
    checked = 0
    for _ in range(300):
        scene, caption = draw_captioned(rng, 64, kind)
        mirrored = mirror_caption(caption, axis)
        if mirrored is None:
            continue
        twin = mirror_scene(scene, 64, axis)
        assert parse_query(mirrored).matches(twin, 64, sizes=True), (mirrored, twin)
        assert not parse_query(caption).matches(twin, 64), (caption, twin)  # the original is now false
        checked += 1
    assert checked >= 40


def _twin_axis(a: tuple, b: tuple) -> str | None:
    """The axis along which item b is item a's twin (its caption mirrored), or None."""
    return next((axis for axis in "hv" if b[1] == mirror_caption(a[1], axis)), None)


def test_twins_follow_their_captions_only_when_asked():
    items = _items(_stream())
    pairs = [(a, b, _twin_axis(a, b)) for a, b in zip(items, items[1:])]
    twins = [(a, b, axis) for a, b, axis in pairs if axis]
    assert {axis for *_, axis in twins} == {"h", "v"}
    # every relation caption names a side or an up-down place: about half of the items are twins
    assert 70 <= len(twins) <= 100, len(twins)
    for a, b, axis in twins:
        if axis == "h":  # every shape is symmetric left-right: the twin's pixels are the flipped image's
            assert (b[0] - a[0].flip(-1)).abs().mean() < 0.02
    for twins in ("sides", "places"):  # places: up-down twins only in the relation epochs (none here)
        sides = _items(_stream(twins=twins))
        assert {_twin_axis(a, b) for a, b in zip(sides, sides[1:])} == {"h", None}, twins
    plain = _items(_stream(twins="off"))
    assert not any(_twin_axis(a, b) for a, b in zip(plain, plain[1:]))


FRESH = {"data.spec": "synth:/w", "data.fresh_scenes": True, "text.sentence_encoder": "none"}


def test_config_takes_fresh_scenes_on_a_synthetic_world():
    assert Config().override(FRESH).validate().data.fresh_twins == "sides"


@pytest.mark.parametrize(
    "change, words",
    [
        ({"data.spec": "coco:/c"}, "is not one"),
        ({"data.features": "f.parquet"}, "data.features"),
        ({"text.sentence_encoder": "minilm"}, "text.sentence_encoder"),
        ({"data.fresh_relations": 1.5}, r"within \[0, 1\]"),
        ({"data.fresh_positions": -0.1}, r"within \[0, 1\]"),
        ({"data.fresh_updown_from": -1}, ">= 0"),
    ],
)
def test_config_refuses_what_fresh_scenes_cannot_serve(change, words):
    with pytest.raises(ImtextError, match=words):
        Config().override({**FRESH, **change}).validate()


def test_training_loop_runs_on_fresh_scenes_with_the_stored_splits_epoch(synth_world, tmp_path):
    from imtext.data import load_pairs
    from imtext.model import TwoBranch
    from imtext.train.loop import train_local

    cfg = tiny_config(synth_world, tmp_path / "m", **{"data.fresh_scenes": True, "train.epochs": 2})
    _, history = train_local(cfg)
    captions = load_pairs(f"synth:{synth_world}", splits=["train"]).num_rows
    assert [m["steps"] for m in history] == [captions // cfg.train.batch_size] * 2
    assert history[-1]["loss"] < history[0]["loss"]
    assert TwoBranch.load(tmp_path / "m").source_config.data.fresh_scenes


def test_a_world_must_exist_behind_the_spec(tmp_path):
    from imtext.train.fresh import world_meta

    with pytest.raises(ImtextError, match="not one"):
        world_meta(f"synth:{tmp_path}")


def test_places_twins_mirror_up_down_in_the_relation_epochs_and_for_position_captions():
    stream = _stream(relations=0.3, positions=0.4, relation_epochs=1, twins="places", samples=400)
    first = _items(stream)
    assert {_twin_axis(a, b) for a, b in zip(first, first[1:])} >= {"h", "v"}
    stream.set_epoch(1)
    later = _items(stream)
    kinds = [_kind(c) for _, c, *_ in later]
    assert 0.25 < kinds.count("position") / len(kinds) < 0.6  # 0.4 of the draws, their twins and the mix's
    up_down = [a for a, b in zip(later, later[1:]) if _twin_axis(a, b) == "v"]
    assert up_down and all(_kind(a[1]) == "position" for a in up_down)


def test_no_up_down_twin_before_its_epoch():
    stream = _stream(relation_epochs=3, twins="places", updown_from=1)
    axes = []
    for epoch in (0, 1):
        stream.set_epoch(epoch)
        items = _items(stream)
        axes.append({_twin_axis(a, b) for a, b in zip(items, items[1:])})
    assert axes == [{"h", None}, {"h", "v", None}]


def test_relation_and_position_shares_must_fit_one_epoch():
    with pytest.raises(ImtextError, match="at most 1"):
        _stream(relations=0.7, positions=0.4)
    with pytest.raises(ImtextError, match="at most 1"):
        Config().override({**FRESH, "data.fresh_relations": 0.7, "data.fresh_positions": 0.4}).validate()


def test_first_epochs_draw_relations_alone_then_the_worlds_mix():
    stream = _stream(relations=0.0, relation_epochs=1, twins="off")
    first = {parse_query(c).relation is not None for _, c, *_ in _items(stream)}
    stream.set_epoch(1)
    later = {parse_query(c).relation is not None for _, c, *_ in _items(stream)}
    assert first == {True} and later == {True, False}


def test_count_pairs_differ_by_one_object_and_their_number_alone():
    rng = random.Random(5)
    numbers = set()
    for _ in range(200):
        a, caption_a, b, caption_b = draw_count_pair(rng, 64)
        assert abs(len(a.objects) - len(b.objects)) == 1 and a.background == b.background
        fewer, more = sorted((a, b), key=lambda s: len(s.objects))
        assert all(o in more.objects for o in fewer.objects)  # the same scene, one object less
        assert parse_query(caption_a).matches(a, 64, sizes=True) and parse_query(caption_b).matches(
            b, 64, True
        )
        assert not parse_query(caption_a).matches(b, 64) and not parse_query(caption_b).matches(a, 64)
        words_a, words_b = caption_a.split(), caption_b.split()
        differ = [(x, y) for x, y in zip(words_a, words_b) if x != y]
        assert len(words_a) == len(words_b) and 1 <= len(differ) <= 3, (
            caption_a,
            caption_b,
        )  # number, is/are, plural
        numbers.add(tuple(sorted((len(a.objects), len(b.objects)))))
    assert len(numbers) >= 3  # 1 and 2, 2 and 3 of a kind, with or without another object


def _paired_share(items: list[tuple]) -> float:
    """The share of items that come as count pairs, side by side."""
    paired, i = 0, 0
    while i < len(items) - 1:
        if _count_pair(items[i][1], items[i + 1][1]):
            paired, i = paired + 2, i + 2
        else:
            i += 1
    return paired / len(items)


def test_count_pairs_ride_side_by_side_from_their_epoch():
    stream = _stream(relations=0.2, counts=0.4, relation_epochs=2, counts_from=1, twins="off", samples=300)
    shares, relations = [], []
    for epoch in range(3):  # before counts_from; a relation epoch with count pairs; the mix
        stream.set_epoch(epoch)
        items = _items(stream)
        assert len(items) == 300 and len({i for _, _, i, *_ in items}) == 300  # a pair is two images
        shares.append(_paired_share(items))
        relations.append(sum(parse_query(c).relation is not None for _, c, *_ in items) / len(items))
    assert shares[0] == 0 and relations[0] == 1.0  # the relation epochs before counts_from: relations alone
    # 0.4 of the draws are pairs, two items each: 0.57 of the items
    assert 0.45 < shares[1] < 0.7 and 0.25 < relations[1] < 0.55, (shares, relations)  # the rest relations
    assert 0.45 < shares[2] < 0.7 and relations[2] < 0.3, (shares, relations)  # 0.2 of the draws relations
    with pytest.raises(ImtextError, match="at most 1"):
        _stream(relations=0.5, positions=0.3, counts=0.3)
    with pytest.raises(ImtextError, match="counts_from must be >= 0"):
        Config().override({**FRESH, "data.fresh_counts": 0.2, "data.fresh_counts_from": -1}).validate()


def _count_pair(a: str, b: str) -> bool:
    """Two captions of one kind of object, each with its number, the numbers different."""
    qa, qb = parse_query(a), parse_query(b)
    if len(qa.mentions) != 1 or len(qb.mentions) != 1 or qa.relation or qb.relation:
        return False
    ma, mb = qa.mentions[0], qb.mentions[0]
    counted = ma.at_most is not None and mb.at_most is not None
    return counted and (ma.color, ma.shape) == (mb.color, mb.shape) and ma.at_least != mb.at_least


@pytest.mark.parametrize("size", [64, 48])
def test_the_batched_fast_path_gives_the_transforms_exact_pixels(size):
    """smallcnn's fresh scenes: raw pixels per item (resized when the CNN's size is not the world's),
    normalised once per batch, equal to the collection's transform item by item
    (imtext.image.image_transform: Resize, ToTensor, Normalize)."""
    from imtext.image import image_transform, normalization
    from imtext.train.fresh import NormalizedBatch, RawPixels

    rng = random.Random(1)
    images = [render(draw_captioned(rng, 64)[0], 64) for _ in range(16)]
    reference = torch.stack([image_transform("smallcnn", size, train=True)(im) for im in images])
    items = [(RawPixels(size)(im), [1], k, None, None) for k, im in enumerate(images)]
    batch = NormalizedBatch(*normalization("smallcnn"))(items)
    assert torch.equal(batch["images"], reference)
