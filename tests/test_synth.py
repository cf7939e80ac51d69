"""The synthetic world: deterministic, the promised splits and counts, captions true of their images,
and an `order` split that a bag of words cannot solve."""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imtext.data import PAIRS_SCHEMA, load_pairs, split_names
from imtext.data.synth import (
    COLORS,
    ONE_OBJECT_KINDS,
    PLURALS,
    SHAPES,
    Obj,
    generate,
    one_object_accuracy,
    order_pair_accuracy,
    order_pair_accuracy_by_axis,
    read_scenes,
)
from imtext.errors import DataError

N, PAIRS, SIZE = 200, 20, 64
NUM = {"one": 1, "two": 2, "three": 3}
SHAPE_OF = {**{s: s for s in SHAPES}, **{p: s for s, p in PLURALS.items()}}


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    return generate(
        tmp_path_factory.mktemp("synth") / "w", n_images=N, seed=3, image_size=SIZE, order_pairs=PAIRS
    )


@pytest.fixture(scope="module")
def table(world):
    return load_pairs(f"synth:{world}")


@pytest.fixture(scope="module")
def scenes(world) -> dict[str, dict]:
    return {s["image"].rsplit(".", 1)[0]: s for s in read_scenes(world)}


def _captions_by_image(table) -> dict[str, list[str]]:
    out: dict[str, list[str]] = defaultdict(list)
    for r in sorted(table.to_pylist(), key=lambda r: r["caption_id"]):
        out[r["image_id"]].append(r["caption"])
    return out


def _image_bytes(world: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((world / "images").iterdir())}


def test_same_seed_same_bytes_other_seed_differs(world, tmp_path):
    again = generate(tmp_path / "again", n_images=N, seed=3, image_size=SIZE, order_pairs=PAIRS)
    for name in ("captions.jsonl", "scenes.jsonl", "synth.json"):
        assert (again / name).read_bytes() == (world / name).read_bytes()
    assert _image_bytes(again) == _image_bytes(world)

    other = generate(tmp_path / "other", n_images=N, seed=4, image_size=SIZE, order_pairs=PAIRS)
    assert (other / "captions.jsonl").read_bytes() != (world / "captions.jsonl").read_bytes()
    a, b = _image_bytes(world), _image_bytes(other)
    assert a.keys() == b.keys()
    assert sum(a[k] != b[k] for k in a) > 0.95 * len(a)


def test_regenerating_replaces_the_world_but_never_foreign_folders(tmp_path):
    out = generate(tmp_path / "w", n_images=5, seed=0, order_pairs=1)
    assert len(list((out / "images").iterdir())) == 7
    generate(out, n_images=3, seed=0, order_pairs=0)  # an earlier world is replaced as a whole
    assert sorted(p.name for p in (out / "images").iterdir()) == [
        "img_00000.png",
        "img_00001.png",
        "img_00002.png",
    ]
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("precious")
    with pytest.raises(DataError, match="not empty and not a synthetic world"):
        generate(tmp_path / "mine", n_images=3)
    assert (tmp_path / "mine" / "thesis.tex").read_text() == "precious"


def test_counts_per_split_and_five_captions_each(world, table):
    meta = json.loads((world / "synth.json").read_text())
    assert meta["images"] == {"train": 160, "val": 20, "test": 20, "order": 40}
    assert (meta["seed"], meta["image_size"], meta["version"]) == (3, SIZE, 1)
    assert table.schema.equals(PAIRS_SCHEMA)
    assert split_names(table) == ["train", "val", "test", "order"]
    for image_id, n in Counter(table.column("image_id").to_pylist()).items():
        assert n == 5, image_id
    image_split = set(zip(table.column("image_id").to_pylist(), table.column("split").to_pylist()))
    images_per_split = Counter(split for _, split in image_split)
    assert images_per_split == {"train": 160, "val": 20, "test": 20, "order": 40}
    assert len(list((world / "images").iterdir())) == 240
    caps = _captions_by_image(table)
    assert all(len(set(c)) == 5 for c in caps.values())  # five different sentences per image
    with Image.open(table.column("image_path")[0].as_py()) as im:
        assert im.size == (SIZE, SIZE) and im.mode == "RGB"


def test_order_pairs_share_word_bags_but_not_images(world, table, scenes):
    caps = _captions_by_image(table)
    order_ids = sorted(i for i in caps if i.startswith("order_"))
    assert len(order_ids) == 2 * PAIRS
    for p in range(PAIRS):
        a, b = f"order_{p:04d}_a", f"order_{p:04d}_b"
        assert scenes[a]["pair"] == scenes[b]["pair"] == p
        for ca, cb in zip(caps[a], caps[b]):
            assert Counter(ca.split()) == Counter(cb.split()) and ca != cb
        words = {w for c in caps[a] + caps[b] for w in c.split()}
        assert not words & {"right", "below", "under", "beneath"}  # one relation vocabulary in the split
        same = [(o["color"], o["shape"], o["size"], o["rgb"]) for o in scenes[a]["objects"]]
        assert same == [(o["color"], o["shape"], o["size"], o["rgb"]) for o in scenes[b]["objects"]]
        assert len({(c, s) for c, s, *_ in same}) == 2
        pa_ = np.asarray(Image.open(world / "images" / f"{a}.png"))
        pb = np.asarray(Image.open(world / "images" / f"{b}.png"))
        assert np.abs(pa_.astype(int) - pb.astype(int)).sum() > 0


def test_order_pair_accuracy_is_one_half_for_any_bag_of_words_and_one_for_an_oracle(world, table):
    """The metric that says whether a model reads word order: a bag of words (here untrained, any weights
    would do) embeds a caption and its mirror twin alike, so it scores exactly 0.5; embeddings that know
    which image is which score 1.0, and swapped ones 0.0."""
    import torch

    from imtext.config import Config
    from imtext.evaluate import embed_split
    from imtext.model import TwoBranch
    from imtext.text import Vocab
    from imtext.train.batches import SplitView

    view = SplitView.from_table(table, "order")
    torch.manual_seed(0)
    cfg = Config().override({"text.sentence_encoder": "none", "image.backbone": "smallcnn"})
    bow = TwoBranch.from_config(cfg, Vocab.build(view.captions))
    img, txt = embed_split(bow, view)
    assert order_pair_accuracy(view.image_ids, view.caption_image, img, txt) == 0.5
    oracle_img = np.eye(len(view.image_ids), dtype=np.float32)
    oracle_txt = oracle_img[view.caption_image]
    assert order_pair_accuracy(view.image_ids, view.caption_image, oracle_img, oracle_txt) == 1.0
    row = {iid: n for n, iid in enumerate(view.image_ids)}
    twin = [row[i[:-1] + ("b" if i.endswith("a") else "a")] for i in view.image_ids]
    swapped_img = oracle_img[twin]  # each image embedded as its mirror twin
    assert order_pair_accuracy(view.image_ids, view.caption_image, swapped_img, oracle_txt) == 0.0
    with pytest.raises(DataError, match="no order pairs"):
        order_pair_accuracy(["img_00001"], np.zeros(1, int), oracle_img[:1, :1], oracle_img[:1, :1])


def test_order_pair_accuracy_by_axis_keeps_the_two_axes_apart(world, table):
    """Embeddings right about every left-right pair and swapped for every up-down one: 1.0 and 0.0 by axis,
    0.5 together, which alone would read as a bag of words."""
    from imtext.train.batches import SplitView

    view = SplitView.from_table(table, "order")
    row = {iid: n for n, iid in enumerate(view.image_ids)}
    up_down = {
        int(n)
        for c, n in enumerate(view.caption_image)
        if " above " in view.captions[c] or " over " in view.captions[c]
    }
    assert 0 < len(up_down) < len(view.image_ids)  # the world holds pairs of both axes
    img = np.eye(len(view.image_ids), dtype=np.float32)
    txt = img[view.caption_image]
    twin = [row[i[:-1] + ("b" if i.endswith("a") else "a")] for i in view.image_ids]
    img = img[[twin[n] if n in up_down else n for n in range(len(view.image_ids))]]
    args = (view.image_ids, view.caption_image, img, txt)
    assert order_pair_accuracy_by_axis(*args, view.captions) == {"left-right": 1.0, "up-down": 0.0}
    expected = sum(n not in up_down for n in view.caption_image) / len(view.caption_image)
    assert order_pair_accuracy(*args) == pytest.approx(expected)


def _colours_in(pixels: np.ndarray) -> set[str]:
    """Palette colours with at least 8 pixels within the shade jitter of their base colour."""
    flat = pixels.reshape(-1, 3).astype(int)
    return {
        name for name, rgb in COLORS.items() if (np.linalg.norm(flat - np.array(rgb), axis=1) < 40).sum() >= 8
    }


def test_colour_words_match_pixels(world, table, scenes):
    caps = _captions_by_image(table)
    for image_id, captions in caps.items():
        pixels = np.asarray(Image.open(world / "images" / f"{image_id}.png").convert("RGB"))
        present = _colours_in(pixels)
        assert present == {o["color"] for o in scenes[image_id]["objects"]}, image_id
        said = {w for c in captions for w in c.split() if w in COLORS}
        assert said and said <= present, (image_id, captions, present)


def _find(scene: dict, words: list[str]) -> list[dict]:
    """Objects matching the last colour and shape word in `words`."""
    color = next(w for w in reversed(words) if w in COLORS)
    shape = next(SHAPE_OF[w] for w in reversed(words) if w in SHAPE_OF)
    return [o for o in scene["objects"] if o["color"] == color and o["shape"] == shape]


def test_relation_and_count_captions_are_true(table, scenes):
    checked = Counter()
    for image_id, captions in _captions_by_image(table).items():
        scene = scenes[image_id]
        for cap in captions:
            w = cap.split()
            rel = None
            for i, word in enumerate(w):
                if word in ("left", "right") and i + 1 < len(w) and w[i + 1] == "of":
                    rel, left, right = word, w[:i], w[i + 2 :]
                elif word in ("above", "over", "below", "under", "beneath"):
                    rel, left, right = word, w[:i], w[i + 1 :]
            if rel:
                (x,), (y,) = _find(scene, left), _find(scene, list(reversed(right)))
                if rel == "left":
                    assert x["cx"] + 6 <= y["cx"], cap
                elif rel == "right":
                    assert x["cx"] >= y["cx"] + 6, cap
                elif rel in ("above", "over"):
                    assert x["cy"] + 6 <= y["cy"], cap
                else:
                    assert x["cy"] >= y["cy"] + 6, cap
                checked["relation"] += 1
            for i, word in enumerate(w):
                if word in NUM and i + 1 < len(w) and w[i + 1] not in ("shapes", "objects", "shape"):
                    noun = next(j for j in range(i + 1, len(w)) if w[j] in SHAPE_OF)
                    assert len(_find(scene, w[i : noun + 1])) == NUM[word], cap
                    checked["count"] += 1
                if word in ("shapes", "objects") and w[i - 1] in NUM:
                    assert len(scene["objects"]) == NUM[w[i - 1]], cap
                    checked["total"] += 1
    assert checked["relation"] > 300 and checked["count"] > 50 and checked["total"] > 5


def test_positions_are_true(table, scenes):
    n = 0
    for r in table.to_pylist():
        cap, scene = r["caption"], scenes[r["image_id"]]
        for phrase, ok in (
            ("on the left", lambda o: o["cx"] <= 0.35 * SIZE),
            ("at the top", lambda o: o["cy"] <= 0.35 * SIZE),
            ("in the middle", lambda o: abs(o["cx"] - SIZE / 2) <= 0.1 * SIZE),
        ):
            if phrase in cap and f"{phrase} of" not in cap:
                head = cap.split(phrase)[0].split() or cap.split(phrase)[1].split()
                assert all(ok(o) for o in _find(scene, head)), cap
                n += 1
    assert n > 20


def test_generate_rejects_bad_arguments(tmp_path):
    with pytest.raises(DataError, match="image_size"):
        generate(tmp_path / "w", n_images=2, image_size=16)
    with pytest.raises(DataError, match="at least one image"):
        generate(tmp_path / "w", n_images=0, order_pairs=0)


# -- reading a sentence back: what it requires of a scene (#16: precision@5 of the page's examples) ----------


def test_every_caption_matches_its_own_scene_and_not_its_mirror_twin(world, table):
    from imtext.data.synth import SceneIndex

    scenes = SceneIndex.load(world)
    for image_id, captions in _captions_by_image(table).items():
        for cap in captions:
            assert scenes.unmet(cap, image_id, sizes=True) == [], (image_id, cap)
        if image_id.startswith("order_"):  # the twin holds the same objects, the other way round
            twin = image_id[:-1] + ("b" if image_id.endswith("a") else "a")
            for cap in captions:
                assert any("not left" in r or "not above" in r for r in scenes.unmet(cap, twin)), cap


def test_parse_query_reads_objects_counts_positions_and_relations():
    from imtext.data.synth import Mention, parse_query

    q = parse_query("A red circle to the left of a big blue square")
    assert q.mentions == (Mention("red", "circle"), Mention("blue", "square", size="large"))
    assert q.relation == (0, "left", 1) and q.total is None
    q = parse_query("on the left side there is a little purple cross")
    assert q.mentions == (Mention("purple", "cross", size="small", position="on the left"),)
    q = parse_query("there are two white triangles at the top right")
    assert q.mentions == (
        Mention("white", "triangle", at_least=2, at_most=2, position="in the top right corner"),
    )
    assert parse_query("a pair of green crosses").mentions[0].at_most == 2
    assert parse_query("exactly one yellow circle").mentions[0].at_most == 1
    assert parse_query("yellow circles").mentions[0] == Mention("yellow", "circle", at_least=2)
    assert parse_query("three objects").total == 3 and parse_query("a single shape").total == 1
    assert parse_query("a green square under a red cross").relation == (0, "below", 1)
    assert parse_query("something in the centre").position == "in the middle"
    with pytest.raises(DataError, match="names no object"):
        parse_query("a dog catching a frisbee")


def test_scene_checks_and_precision_at_k():
    from imtext.data.synth import Obj, Scene, SceneIndex

    def obj(color, shape, cx, cy, size="small"):
        return Obj(shape, color, size, cx, cy, 6.0, COLORS[color])

    bg = (40, 40, 40)
    scenes = SceneIndex(
        {
            "left": Scene([obj("red", "circle", 10, 32), obj("blue", "square", 50, 32, "large")], bg),
            "right": Scene([obj("red", "circle", 50, 32), obj("blue", "square", 10, 32, "large")], bg),
            "no-square": Scene([obj("red", "circle", 10, 32), obj("blue", "cross", 50, 32)], bg),
            "two": Scene([obj("red", "circle", 10, 10), obj("red", "circle", 10, 50)], bg),
        },
        image_size=64,
    )
    query = "a red circle left of a blue square"
    assert scenes.unmet(query, "left") == []
    assert scenes.unmet(query, "right") == ["red circle not left blue square"]
    assert scenes.unmet(query, "no-square")[0] == "1+ blue square: 0 in the scene"
    assert scenes.relevant("a small blue square", sizes=True) == []
    assert scenes.relevant("a small blue square") == ["left", "right"]  # sizes only when asked
    assert scenes.relevant("two red circles on the left") == ["two"]
    assert scenes.relevant("a red circle on the left") == ["left", "no-square", "two"]
    assert scenes.relevant("a red circle in the middle") == []
    assert scenes.relevant("three shapes") == [] and scenes.relevant("two objects") == list(scenes.scenes)

    p = scenes.precision_at_k(query, ["right", "left", "two"], k=3)
    assert (p.hits, p.k, p.relevant, p.ceiling) == (1, 3, 1, 1) and p.most  # the only match is there
    assert p.colour_hits == 2  # "two" has no blue: red circle and blue square colours are in the other two
    assert p.unmet[0] and p.unmet[1] == ()
    p = scenes.precision_at_k("a red circle", ["two", "no-square", "right", "left"], k=4)
    assert (p.hits, p.value, p.most) == (4, 1.0, True)
    p = scenes.precision_at_k("a red circle on the left", ["right", "left", "two"], k=3)
    assert (p.hits, p.relevant, p.most) == (2, 3, True)
    p = scenes.precision_at_k("a red circle on the left", ["right", "left", "two", "no-square", "x"][:4], k=4)
    assert (p.hits, p.most) == (3, True)
    p = scenes.precision_at_k("a red circle on the left", ["right", "left"], k=2)
    assert (p.hits, p.most) == (1, False)  # 2 of 2 were possible
    with pytest.raises(DataError, match="not an image"):
        scenes.unmet(query, "elsewhere")


def test_one_object_accuracy_tells_a_model_that_sees_colour_only_from_one_that_sees_shapes():
    """An oracle that embeds each object as its own sentence scores 1.0 on both; one that sees colour and
    mistakes every shape for a circle scores colour 1.0 and shape 1/4 (the circles among four shapes)."""
    objects = [
        Obj(sh, c, size, 32.0, 32.0, 6.0, (0, 0, 0))
        for c in COLORS
        for sh in SHAPES
        for size in ("small", "large")
    ]
    sentences = np.eye(len(ONE_OBJECT_KINDS), dtype=np.float32)
    row = {cs: n for n, cs in enumerate(ONE_OBJECT_KINDS)}
    oracle = sentences[[row[(o.color, o.shape)] for o in objects]]
    assert one_object_accuracy(objects, oracle, sentences) == {
        "colour": 1.0,
        "shape": 1.0,
        "small": 1.0,
        "scenes": len(objects),
    }
    colour_only = sentences[[row[(o.color, "circle")] for o in objects]]
    got = one_object_accuracy(objects, colour_only, sentences)
    assert got["colour"] == 1.0 and got["shape"] == got["small"] == 0.25
    with pytest.raises(DataError, match="no one-object scenes"):
        one_object_accuracy([], oracle[:0], sentences)


def test_suggested_queries_are_searches_of_each_kind_with_several_answers(world, table):
    """The page's examples for a synthetic collection: the kinds in turn (an object, a place, a count, a
    relation), each with at least MIN_ANSWERS matching images in the collection, the same on every call;
    a collection of a few images gets fewer (never a needle); other data sources propose none."""
    from imtext.data import suggested_queries
    from imtext.data.synth import MIN_ANSWERS, QUERY_KINDS, SceneIndex, parse_query, query_kind

    spec = f"synth:{world}"
    queries = suggested_queries(spec, table, n=6)
    assert queries == suggested_queries(spec, table, n=6) and len(set(queries)) == len(queries) == 6
    kinds = [query_kind(parse_query(q)) for q in queries]
    present = [k for k in QUERY_KINDS if k in kinds]  # 240 images: few relations have 5 answers
    assert len(present) >= 3 and kinds[: len(present)] == present  # one of each kind first, in turn
    index, ids = SceneIndex.load(world), table.column("image_id").to_pylist()
    assert all(len(index.relevant(q, list(set(ids)))) >= MIN_ANSWERS for q in queries)
    assert set(queries) <= set(table.column("caption").to_pylist())  # the world's own words
    few = table.slice(0, 5 * 4)  # four images: no query has five answers
    assert suggested_queries(spec, few) == []
    assert suggested_queries("coco:/nowhere", table) == []
