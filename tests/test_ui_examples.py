"""The page's example queries, typed into the page in a real browser, judged against the synthetic world (#16).

The synthetic world knows every scene's shapes, colours and positions (imtext.data.synth), so a query's
results can be checked exactly: for every example the page offers (and the README's own query) the test
types it, reads the top 5 gallery labels, checks that they are the API's top 5 (whose image ids are known)
and scores those images' scenes. It prints precision@5 per example.

By default the page serves a model trained with the demo's own settings (imtext.cli.demo: the synthetic
recipe with the demo's overrides) on the suite's 600-scene world, in-process (under a minute), and asserts what
it reaches, with margin. IMTEXT_DEMO_WORKDIR=DIR (a finished `imtext demo --workdir DIR`) runs the same test
against the demo's model, collection and world. Neither model gets most of the top 5 right for every example
yet (the relation examples fail: docs/BENCHMARKS.md, "Demo: its model"), so the bars are what they reach,
with margin, not the issue's "most". bench/demo_quality.py records the demo's numbers.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from fake_api import free_port  # noqa: E402
from test_ui import _query_box, _shot, browser_context  # noqa: E402, F401  (the fixture is used below)

from imtext.data.synth import Precision, SceneIndex  # noqa: E402
from ui.app import CALIBRATION_K, launch  # noqa: E402

pytestmark = [pytest.mark.ray, pytest.mark.browser]

K = 5
README_QUERY = "a red circle left of a blue square"
DEMO_WORKDIR = os.environ.get("IMTEXT_DEMO_WORKDIR", "")
# Bars below what the models reach (of the 30 top-5 images of the 6 offered examples; 2026-11-30, the
# examples the synthetic world proposes, imtext.data.suggested_queries): the suite's model put 17 on target
# (a full match) and 30 on the right colours (11 and 25 with the earlier settings and examples); a model
# trained for 3 epochs with the suite's `tiny_config` put 0 and 2 on the earlier examples; chance is about 1
# and 6. The demo's model (bench/demo_quality.py): see docs/BENCHMARKS.md.
BARS = {"suite-model": (11, 24), "demo-model": (12, 27)}  # (full matches, colour matches) of 30


@dataclass(frozen=True)
class ExamplesCase:
    api_url: str
    page_url: str
    scenes: SceneIndex
    name: str  # "suite-model" or "demo-model"


@pytest.fixture(scope="module")
def examples_case(request, tmp_path_factory) -> Iterator[ExamplesCase]:
    from serve.launch import start

    if DEMO_WORKDIR:
        root = Path(DEMO_WORKDIR)
        model, index, world, name = root / "model", root / "index", root / "synth", "demo-model"
    else:
        import argparse

        from imtext.cli.demo import plan
        from imtext.collection import build_collection
        from imtext.train.loop import train_local

        world, name = request.getfixturevalue("synth_world"), "suite-model"
        root = tmp_path_factory.mktemp("examples")
        demo = plan(argparse.Namespace(workdir=str(root), data=None, tiny=False))
        model = root / "model"
        train_local(
            demo.config.override({"data.spec": f"synth:{world}", "train.out": str(model), "train.workers": 0})
        )
        # every split, as the demo indexes its world
        index = build_collection(model, f"synth:{world}", root / "index", use_ray=False, progress=False)
    request.getfixturevalue("ray_session")
    running = start(model, index, port=free_port())
    page = launch(running.url, port=free_port(), block=False)
    try:
        yield ExamplesCase(running.url, page.url, SceneIndex.load(world), name)
    finally:
        page.close()
        running.stop()


def _top_ids(api_url: str, query: str) -> list[dict]:
    """The API's answer to what the page asks (it fetches CALIBRATION_K and shows the first k)."""
    res = httpx.post(f"{api_url}/search/text", json={"query": query, "k": CALIBRATION_K}, timeout=60)
    return res.json()["results"][:K]


def test_each_offered_example_finds_matching_scenes(browser_context, examples_case: ExamplesCase):  # noqa: F811
    from playwright.sync_api import expect

    case = examples_case
    pg = browser_context.new_page()
    try:
        pg.goto(case.page_url)
        offered_box = pg.locator("#examples")
        expect(offered_box).to_be_visible()
        info = httpx.get(f"{case.api_url}/info", timeout=30).json()
        offered = info["examples"]
        assert len(offered) >= 5
        # what the page shows is what /info offers (Gradio shortens a long example to "first words...")
        buttons = offered_box.get_by_role("button")
        expect(buttons).to_have_count(len(offered))
        for shown, example in zip(buttons.all_inner_texts(), offered):
            shown = shown.strip()
            assert shown == example or (shown.endswith("...") and example.startswith(shown[:-3])), shown
        k_box = pg.locator("#k-slider input[type=number]")
        k_box.fill(str(K))
        k_box.press("Enter")

        labels = pg.locator("#text-gallery .caption-label")
        among = list(case.scenes.scenes)
        results: list[Precision] = []
        for query in [*offered, README_QUERY]:
            _query_box(pg).fill("")
            _query_box(pg).press_sequentially(query)  # typed, as a person types it
            pg.click("#search-btn")
            expect(pg.locator("#text-status")).to_contain_text(f"{K} images for “{query}”")
            expect(labels).to_have_count(K)
            hits = _top_ids(case.api_url, query)
            shown = labels.all_inner_texts()
            for rank, (label, hit) in enumerate(zip(shown, hits), 1):  # the page shows the API's ranking
                assert label.startswith(f"#{rank} · ") and label.endswith(f"— {hit['caption']}"), (label, hit)
            results.append(case.scenes.precision_at_k(query, [h["image_id"] for h in hits], K, among=among))
            if query == offered[0]:
                _shot(pg, f"examples-{case.name}")
    finally:
        pg.close()

    print(f"\nprecision@{K} of the page's examples ({case.name}):")
    for p in results:
        tag = "  (the README's query, not offered)" if p.query == README_QUERY else ""
        print(
            f"  {p.hits}/{K} (of {p.relevant} matching; on colour {p.colour_hits}/{K}; "
            f"most: {'yes' if p.most else 'no'})  {p.query}{tag}"
        )
        for rank, unmet in enumerate(p.unmet, 1):
            if unmet:
                print(f"      #{rank}: {'; '.join(unmet)}")
    on_offer = [p for p in results if p.query != README_QUERY]
    full, colours = sum(p.hits for p in on_offer), sum(p.colour_hits for p in on_offer)
    most = sum(p.most for p in on_offer)
    print(
        f"  offered: {full}/{K * len(on_offer)} match, {colours} on colour, most for {most} of {len(on_offer)}"
    )
    min_full, min_colours = BARS[case.name]
    assert len(on_offer) == 6 and full >= min_full and colours >= min_colours
