"""The demo's model where a user looks first: test rsum, the time to a working page, and precision@5 of
every example query the page offers, judged against the synthetic world's scenes (imtext.data.synth).

    python bench/demo_quality.py --workdir /tmp/demo-bench            # `imtext demo --fresh` as a user runs it
    python bench/demo_quality.py --workdir /tmp/demo-seeds --seeds 0 1 2   # its settings, other seeds

The first form runs `imtext demo --fresh` in a subprocess, notes its "ready after N s" and the machine's
load, asks the running API for the page's examples (GET /info) and each one's top 5 images (POST
/search/text: what the page shows), scores them, stops the demo with Ctrl-C and evaluates the model on the
world's held-out `test` and `order` splits. The second trains the demo's exact config in this process
(no Ray, no page: the same loop Ray Train runs) once per seed, and scores a collection built in-process the
way the demo builds its own. A match has every colour, shape, count, position and relation the query
names (sizes in the `+sizes` column); "of N" is how many images in the collection match at all, which caps
the hits when fewer than 5 do. "most" is 3 of the top 5, or every match there is when fewer exist.

Both forms also score DEV_QUERIES other queries like the page's (the world's captions of the same kinds,
drawn with another seed): settings are chosen by those, never by the six the page offers.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from imtext.data.synth import Precision, SceneIndex  # noqa: E402
from tests.conftest import free_port  # noqa: E402
from tests.logged_process import interrupt, start_logged, wait_for_line  # noqa: E402

if TYPE_CHECKING:
    from imtext.model import TwoBranch

README_QUERY = "a red circle left of a blue square"  # the README's own example, beside the page's
K = 5
DEV_QUERIES = 48  # 12 of each kind the page offers, drawn with another seed: what settings are chosen by


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workdir", required=True, type=Path, help="the demo's --workdir (rebuilt: --fresh)")
    p.add_argument("--seeds", type=int, nargs="*", help="train in-process with these seeds instead")
    p.add_argument(
        "--set",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="with --seeds: overrides of the demo's config",
    )
    p.add_argument("--threads", type=int, default=2, help="torch threads for in-process work")
    p.add_argument("--timeout", type=float, default=900, help="seconds to wait for the demo's page")
    return p.parse_args(argv)


def score_examples(
    scenes: SceneIndex, ranked: dict[str, list[str]], among: list[str]
) -> list[tuple[Precision, Precision]]:
    """(precision@5, precision@5 with sizes) per query."""
    return [
        (
            scenes.precision_at_k(q, ids, K, among=among),
            scenes.precision_at_k(q, ids, K, among=among, sizes=True),
        )
        for q, ids in ranked.items()
    ]


def dev_queries(world: Path, offered: list[str], n: int = DEV_QUERIES) -> list[str]:
    """n queries like the page's examples (the world's own captions of the same kinds, drawn with another
    seed), none of them in `offered`. Settings are chosen by these and the page's six are reported: choosing by
    the six would fit the settings to six queries."""
    from imtext.data import load_pairs
    from imtext.data.synth import suggest_queries

    pairs = load_pairs(f"synth:{world}")
    ids, captions = pairs["image_id"].to_pylist(), pairs["caption"].to_pylist()
    drawn = suggest_queries(world, ids, captions, n=n + len(offered), seed=1)
    return [q for q in drawn if q not in offered][:n]


def dev_score(rows: list[tuple[Precision, Precision]]) -> str:
    """Mean precision@5 and the share with most of the top 5 right, over dev_queries' rows."""
    mean = sum(p.value for p, _ in rows) / len(rows)
    return f"{mean:.2f} ({sum(p.most for p, _ in rows)}/{len(rows)})"


def print_examples(rows: list[tuple[Precision, Precision]], title: str) -> None:
    print(f"\n{title}\n")
    print("| query | precision@5 | of N matching | most? | +sizes |")
    print("| --- | ---: | ---: | --- | ---: |")
    for p, ps in rows:
        extra = " (README, not offered)" if p.query == README_QUERY else ""
        print(
            f"| {p.query}{extra} | {p.hits}/5 | {p.relevant} | {'yes' if p.most else 'no'} | "
            f"{ps.hits}/5 of {ps.relevant} |"
        )
    for p, _ in rows:
        for rank, unmet in enumerate(p.unmet, 1):
            if unmet:
                print(f"  {p.query!r} #{rank}: {'; '.join(unmet)}")


def one_object_images(model: TwoBranch, spec: str, scenes: SceneIndex) -> tuple[dict, dict[str, str]]:
    """The embedding and the split of every one-object scene's image, by image_id: what shape_accuracy and
    frame_place_accuracy judge, embedded once for both."""
    from imtext.data import load_image, load_pairs

    pairs = load_pairs(spec)
    paths = dict(zip(pairs["image_id"].to_pylist(), pairs["image_path"].to_pylist()))
    split = dict(zip(pairs["image_id"].to_pylist(), pairs["split"].to_pylist()))
    single = [i for i, s in scenes.scenes.items() if len(s.objects) == 1]
    images = dict(zip(single, model.embed_images([load_image(paths[i]) for i in single])))
    return images, {i: split[i] for i in single}


def shape_accuracy(
    model: TwoBranch, scenes: SceneIndex, images: dict, split: dict[str, str]
) -> dict[str, float]:
    """Colour and shape accuracy on the world's one-object scenes (imtext.data.synth.one_object_accuracy; a
    model that has learned colour alone scores 1.0 / 0.25): `shape` over all of them, training scenes
    included (what a search of the whole collection meets), `held_out` and `small_held_out` over the val and
    test scenes alone (what the model has learned, not remembered). `images` and `split`: one_object_images."""
    import numpy as np

    from imtext.data.synth import ONE_OBJECT_SENTENCES, one_object_accuracy

    texts = model.embed_texts(list(ONE_OBJECT_SENTENCES))

    def accuracy(ids: list[str]) -> dict[str, float]:
        vectors = np.stack([images[i] for i in ids])
        return one_object_accuracy([scenes.scenes[i].objects[0] for i in ids], vectors, texts)

    every, held = accuracy(list(images)), accuracy([i for i in images if split[i] in ("val", "test")])
    return {"shape": every["shape"], "held_out": held["shape"], "small_held_out": held["small"]}


# The place phrases frame_place_accuracy sets against each other, per axis (as imtext.data.synth.positions
# writes them).
OPPOSITE_PLACES = {
    "left-right": ("on the left", "on the right"),
    "up-down": ("near the top", "near the bottom"),
}


def frame_place_accuracy(model: TwoBranch, scenes: SceneIndex, images: dict) -> dict[str, float]:
    """Does the model know where in the frame an object lies? For each one-object scene whose object sits
    in a side third (left/right) or in the top/bottom third (imtext.data.synth.positions), "a COLOUR SHAPE
    on the left" against "... on the right" (and "near the top" against "near the bottom"): how often the
    true place scores higher. 0.5 is a model that ignores the place words; they are what "near the bottom
    there is a small green cross" asks for. `images`: one_object_images."""
    from imtext.data.synth import positions

    trials: dict[str, list[tuple[str, str, str]]] = {axis: [] for axis in OPPOSITE_PLACES}
    for i in images:
        o = scenes.scenes[i].objects[0]
        held = positions(o, scenes.image_size)
        for axis, places in OPPOSITE_PLACES.items():
            for true, false in (places, places[::-1]):
                if true in held:
                    trials[axis].append(
                        (i, f"a {o.color} {o.shape} {true}", f"a {o.color} {o.shape} {false}")
                    )
    sentences = sorted({t for rows in trials.values() for _, *pair in rows for t in pair})
    text = dict(zip(sentences, model.embed_texts(sentences)))
    return {
        axis: sum(float(images[i] @ text[t]) > float(images[i] @ text[f]) for i, t, f in rows) / len(rows)
        for axis, rows in trials.items()
    }


def count_pairs(model: TwoBranch, image_size: int) -> float:
    """imtext.data.synth.count_pair_accuracy on the probe's 300 pairs, drawn at the world's size."""
    from imtext.data.synth import count_pair_accuracy, count_probe

    images, captions = count_probe(image_size)
    return count_pair_accuracy(model.embed_images(images), model.embed_texts(captions))


def evaluate_model(model: TwoBranch, spec: str) -> dict[str, float]:
    """Test and order rsum, and the order pairs' accuracy (0.5: word order not read; see order_pair_accuracy),
    also for the left-right and the up-down pairs apart."""
    from imtext.data import load_pairs
    from imtext.data.synth import order_pair_accuracy, order_pair_accuracy_by_axis
    from imtext.evaluate import embed_split
    from imtext.metrics import retrieval
    from imtext.train.batches import SplitView

    pairs = load_pairs(spec, splits=["test", "order"])
    out = {}
    for split in ("test", "order"):
        view = SplitView.from_table(pairs, split)
        img, txt = embed_split(model, view)
        out[split] = retrieval(img, txt, view.caption_image)["rsum"]
    out["pairs"] = order_pair_accuracy(view.image_ids, view.caption_image, img, txt)
    axes = order_pair_accuracy_by_axis(view.image_ids, view.caption_image, img, txt, view.captions)
    out["pairs_h"], out["pairs_v"] = axes["left-right"], axes["up-down"]
    return out


# ---- the demo as a user runs it ------------------------------------------------------------------------


def run_demo(args: argparse.Namespace) -> None:
    port, ui_port = free_port(), free_port()
    cmd = [str(Path(sys.executable).parent / "imtext"), "demo", "--fresh", "--workdir", str(args.workdir)]
    cmd += ["--port", str(port), "--ui-port", str(ui_port)]
    load_before = os.getloadavg()
    started = time.time()
    proc, lines = start_logged(cmd)
    try:
        try:
            wait_for_line(lines, proc, "Ctrl-C stops everything", args.timeout - (time.time() - started))
        except RuntimeError as e:
            sys.exit(f"the demo did not get ready: {e}")
        load_at_ready = os.getloadavg()
        ready = next(re.search(r"ready after (\d+) s", line) for line in lines if "ready after" in line)
        api = f"http://127.0.0.1:{port}"
        with httpx.Client(base_url=api, timeout=120) as http:
            info = http.get("/info").json()
            queries = [*info["examples"], README_QUERY]
            dev = dev_queries(args.workdir / "synth", queries)
            ranked = {
                q: [
                    h["image_id"]
                    for h in http.post("/search/text", json={"query": q, "k": K}).json()["results"]
                ]
                for q in [*queries, *dev]
            }
            among_n = info["index"]["images"]["count"]
    finally:
        interrupt(proc)  # Ctrl-C, as a user stops the demo
    import torch

    from imtext.model import TwoBranch

    torch.set_num_threads(args.threads)
    world = args.workdir / "synth"
    scenes = SceneIndex.load(world)
    assert among_n == len(scenes.scenes), (among_n, len(scenes.scenes))  # the demo indexes every split
    rows = score_examples(scenes, ranked, list(scenes.scenes))
    rows, dev_rows = rows[: len(queries)], rows[len(queries) :]
    model = TwoBranch.load(args.workdir / "model")
    rsum = evaluate_model(model, f"synth:{world}")
    places = frame_place_accuracy(model, scenes, one_object_images(model, f"synth:{world}", scenes)[0])
    counts = count_pairs(model, scenes.image_size)
    stages = [line.rstrip() for line in lines if re.match(r"\s*(data|train|eval|index)\s+\S+ s ", line)]
    print("\nstages:", *stages, sep="\n  ")
    to_ready = next(i for i, line in enumerate(lines) if "ready after" in line) + 1
    print(
        f"\nready after {ready.group(1)} s ({to_ready} lines of output to there); "
        f"test rsum {rsum['test']:.1f}, order rsum {rsum['order']:.1f}, "
        f"order pair accuracy {rsum['pairs']:.3f} (left-right {rsum['pairs_h']:.3f}, "
        f"up-down {rsum['pairs_v']:.3f}); places in the frame: left-right {places['left-right']:.3f}, "
        f"up-down {places['up-down']:.3f}; count pairs told apart {counts:.3f}; {len(dev)} other "
        f"example-like queries: precision@5 {dev_score(dev_rows)}; "
        f"load average before {load_before[0]:.2f}, at ready {load_at_ready[0]:.2f} (1 min)"
    )
    print_examples(rows, f"the page's examples, top {K} images from the demo's API ({api})")


# ---- the demo's settings, other seeds, in this process ------------------------------------------------------


def run_seeds(args: argparse.Namespace) -> None:
    import torch

    from imtext.cli.demo import plan
    from imtext.collection import Collection, build_collection
    from imtext.model import TwoBranch
    from imtext.train.loop import train_local

    torch.set_num_threads(args.threads)
    demo = plan(argparse.Namespace(workdir=str(args.workdir), data=None, tiny=False))
    demo.config = demo.config.override(args.set)  # the world is drawn at the size these settings read
    world = Path(demo.data_spec.partition(":")[2])
    if not (world / "synth.json").is_file():
        demo.draw_world()
    scenes = SceneIndex.load(world)
    summary = []
    for seed in args.seeds:
        out = args.workdir / f"model-seed{seed}"
        cfg = demo.config.override({"train.seed": seed, "train.out": str(out), "train.workers": 0})
        t0 = time.perf_counter()
        _, history = train_local(cfg)
        seconds = time.perf_counter() - t0
        model = TwoBranch.load(out)
        rsum = evaluate_model(model, demo.data_spec)
        index = build_collection(
            out, demo.data_spec, args.workdir / f"index-seed{seed}", use_ray=False, progress=False
        )
        col = Collection.load(index)
        queries = [*col.meta.examples, README_QUERY]
        dev = dev_queries(world, queries)
        hits = col.search_images(model.embed_texts([*queries, *dev]), K)
        ranked = {q: [h["image_id"] for h in row] for q, row in zip([*queries, *dev], hits)}
        rows = score_examples(scenes, ranked, list(scenes.scenes))
        rows, dev_rows = rows[: len(queries)], rows[len(queries) :]
        print_examples(rows, f"seed {seed}: the page's examples, top {K} images (in-process collection)")
        most = sum(p.most for p, _ in rows[:-1])
        hits = sum(p.hits for p, _ in rows[:-1])
        images, split = one_object_images(model, demo.data_spec, scenes)
        shapes = shape_accuracy(model, scenes, images, split)
        places = frame_place_accuracy(model, scenes, images)
        counts = count_pairs(model, scenes.image_size)
        summary.append(
            (seed, rsum, seconds, hits, most, len(rows) - 1, shapes, places, counts, history, dev_rows)
        )
    print(
        "\n| seed | test rsum | order rsum | order pairs (left-right / up-down) | val rsum per epoch "
        "| train s (this process) | examples: matches (most) | shape (all) | shape (held-out) "
        "| small (held-out) | places in the frame (left-right / up-down) | count pairs "
        f"| {DEV_QUERIES} other queries: precision@5 (most) |"
    )
    print("| ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: |")
    for seed, rsum, seconds, hits, most, n, shapes, places, counts, history, dev_rows in summary:
        curve = " / ".join(f"{m['rsum']:.0f}" for m in history)
        print(
            f"| {seed} | {rsum['test']:.1f} | {rsum['order']:.1f} | "
            f"{rsum['pairs']:.3f} ({rsum['pairs_h']:.2f} / {rsum['pairs_v']:.2f}) | {curve} | "
            f"{seconds:.0f} | {hits}/{K * n} ({most} of {n}) | {shapes['shape']:.2f} | "
            f"{shapes['held_out']:.2f} | {shapes['small_held_out']:.2f} | "
            f"{places['left-right']:.2f} / {places['up-down']:.2f} | {counts:.2f} | {dev_score(dev_rows)} |"
        )


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.seeds:
        run_seeds(args)
    else:
        run_demo(args)


if __name__ == "__main__":
    main()
