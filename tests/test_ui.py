"""The Gradio page in a real browser (Debian's chromium driven by Playwright) against an HTTP API.

By default the API is tests/fake_api.py, whose ranking is known in advance. To run the same checks against
the real Serve app, replace the `search_case` fixture: it only has to say where the API is and which
sentence / image have a known best answer there.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from fake_api import IMAGES, FakeApi, free_port  # noqa: E402

from imtext.errors import ImtextError  # noqa: E402
from ui.app import captions_html, footer_text, image_label, launch  # noqa: E402
from ui.client import ApiClient, ApiError  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts"
DOCS_SHOTS = ROOT / "docs" / "screenshots"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
VIEWPORT = {"width": 1280, "height": 800}
WAIT_MS = 20_000  # a loaded 2-core machine can take a while; a pass usually takes well under a second


@dataclass(frozen=True)
class SearchCase:
    """An API and what it must answer: swap the fixture that makes this to test another API."""

    api_url: str
    sentence: str  # a query whose best image is known ...
    sentence_top_label: str  # ... and text its gallery label (the image's caption) contains
    image_path: Path  # an image whose own caption must come first ...
    image_caption: str  # ... that caption
    example: str  # one of /info's example queries
    example_top_label: str  # text in the top gallery label when that example is clicked
    name: str = "fake-api"  # which API: screenshots are named after it; the README shows the real app


def _fake_case(tmp_path_factory) -> Iterator[SearchCase]:
    stripes, circle = IMAGES[3], IMAGES[1]
    img = tmp_path_factory.mktemp("upload") / "stripes.png"
    img.write_bytes(stripes.png)
    with FakeApi() as api:
        yield SearchCase(
            api_url=api.url,
            sentence="a blue round circle",  # not a caption verbatim: ranking, not lookup
            sentence_top_label=circle.captions[0],
            image_path=img,
            image_caption=stripes.captions[0],
            example="yellow and black stripes",
            example_top_label=stripes.captions[0],
        )


def _serve_case(request) -> Iterator[SearchCase]:
    """The real Ray Serve app over a small index of real photos (coco-mini val2017, EfficientNet-Lite0).

    The sentence, the upload and the example are taken where this model is right in-process (a caption
    whose photo it ranks first, a photo whose own caption it ranks first), so the page is checked against
    answers the pipeline is known to give."""
    from imtext.collection import Collection
    from imtext.data import load_image
    from imtext.model import TwoBranch
    from serve.launch import start

    artifacts = request.getfixturevalue("coco_artifacts")
    request.getfixturevalue("ray_session")
    model = TwoBranch.load(artifacts["model"])
    col = Collection.load(artifacts["index"])
    caps = col.caption_rows(range(col.captions.ntotal))
    _, top_image = col.images.search(model.embed_texts([c["caption"] for c in caps]), 1)
    hits = [c for c, top in zip(caps, top_image[:, 0]) if top == c["image"]]
    sentence = hits[0]
    images = col.image_rows(range(col.images.ntotal))
    _, top_caption = col.captions.search(model.embed_images([load_image(r["image_path"]) for r in images]), 1)
    # a photo whose best caption is its own first caption (the one its gallery label shows)
    upload = next(r for r, top in zip(images, top_caption[:, 0]) if caps[top]["caption"] == r["caption"])
    running = start(artifacts["model"], artifacts["index"], port=free_port())
    try:
        info = httpx.get(f"{running.url}/info", timeout=30).json()
        example = info["examples"][0]
        example_top = httpx.post(
            f"{running.url}/search/text", json={"query": example, "k": 1}, timeout=60
        ).json()
        yield SearchCase(
            api_url=running.url,
            sentence=sentence["caption"],
            sentence_top_label=col.image_rows([sentence["image"]])[0]["caption"],
            image_path=Path(upload["image_path"]),
            image_caption=upload["caption"],
            example=example,
            example_top_label=example_top["results"][0]["caption"],
            name="serve-app",
        )
    finally:
        running.stop()


@pytest.fixture(scope="module", params=["fake-api", "serve-app"])
def search_case(request, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SearchCase]:
    """The page against a fake API with a ranking known in advance, then against the real Serve app."""
    if request.param == "fake-api":
        yield from _fake_case(tmp_path_factory)
    else:
        yield from _serve_case(request)


@pytest.fixture(scope="module")
def page_url(search_case: SearchCase) -> Iterator[str]:
    page = launch(search_case.api_url, port=free_port(), block=False)
    try:
        yield page.url
    finally:
        page.close()


@pytest.fixture(scope="module")
def browser_context(tmp_path_factory: pytest.TempPathFactory):
    if not CHROMIUM.exists():
        if os.environ.get("CI"):
            pytest.fail(f"CI is set but {CHROMIUM} is missing: run .ci/install-browser.sh first")
        pytest.skip(f"{CHROMIUM} not installed (run .ci/install-browser.sh)")
    from playwright.sync_api import expect, sync_playwright

    profile = tmp_path_factory.mktemp("chromium-profile")  # a new, empty user data dir
    with sync_playwright() as p:
        ctx = p.chromium.launch_persistent_context(
            str(profile),
            executable_path=str(CHROMIUM),
            args=CHROMIUM_ARGS,
            headless=True,
            viewport=VIEWPORT,
            device_scale_factor=1,
        )
        ctx.set_default_timeout(WAIT_MS)
        expect.set_options(timeout=WAIT_MS)  # expect() has its own 5 s default
        try:
            yield ctx
        finally:
            ctx.close()


@pytest.fixture
def external_requests() -> list[str]:
    """URLs the page asked for outside 127.0.0.1: the page must work offline."""
    return []


@pytest.fixture
def page(browser_context, page_url: str, external_requests: list[str]):
    pg = browser_context.new_page()
    pg.on(
        "request",
        lambda r: (
            None if urlsplit(r.url).hostname in ("127.0.0.1", None) else external_requests.append(r.url)
        ),
    )
    pg.goto(page_url)
    pg.wait_for_selector("#query textarea, #query input")
    yield pg
    pg.close()


def _docs_name(case: SearchCase, name: str) -> str | None:
    """Only the real app's page goes into the README."""
    return name if case.name == "serve-app" else None


def _shot(pg, name: str, docs_name: str | None = None, full_page: bool = False) -> Path:
    """Screenshot into test-artifacts/; docs/screenshots/ only if missing or IMTEXT_UPDATE_SCREENSHOTS=1,
    so a test run does not dirty tracked files with every latency number."""
    # gallery thumbnails load lazily and fade in: wait until every visible one is decoded
    pg.wait_for_function(
        "Array.from(document.querySelectorAll('.gallery-item img'))"
        ".every(i => i.complete && i.naturalWidth > 0)"
    )
    pg.wait_for_timeout(400)
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"ui-{name}.png"
    pg.screenshot(path=str(path), full_page=full_page)
    if docs_name:
        target = DOCS_SHOTS / docs_name
        if not target.exists() or os.environ.get("IMTEXT_UPDATE_SCREENSHOTS") == "1":
            DOCS_SHOTS.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)
    return path


def _query_box(pg):
    return pg.locator("#query textarea, #query input").first


# -- real browser ----------------------------------------------------------------------------------


@pytest.mark.browser
def test_sentence_search_shows_the_expected_image_first(
    page, search_case: SearchCase, external_requests: list[str]
):
    from playwright.sync_api import expect

    expect(page.locator("#imtext-header h1")).to_contain_text("image ⇄ text search")
    # the footer comes from /info: model, index and its size
    expect(page.locator("#imtext-footer")).to_contain_text("images (")

    _query_box(page).fill(search_case.sentence)
    page.click("#search-btn")
    labels = page.locator("#text-gallery .caption-label")
    expect(labels.first).to_contain_text(search_case.sentence_top_label)
    expect(labels.first).to_contain_text("#1 · ")
    expect(labels.first).to_contain_text("σ (")  # #16: a relative score, the raw cosine in brackets
    n = labels.count()
    assert 1 <= n <= 8  # the default k is 8
    # latency of this query is now in the footer
    expect(page.locator("#imtext-footer")).to_contain_text("ms round trip")
    page.locator("#text-gallery img").first.wait_for(state="visible")
    _shot(page, f"text-search-{search_case.name}", _docs_name(search_case, "ui-text-search.png"))

    # Enter submits too, and a clicked example runs its own search
    _query_box(page).fill("")
    page.locator("#examples").get_by_text(search_case.example, exact=True).click()
    expect(_query_box(page)).to_have_value(search_case.example)
    expect(labels.first).to_contain_text(search_case.example_top_label)
    _query_box(page).fill(search_case.sentence)
    _query_box(page).press("Enter")
    expect(labels.first).to_contain_text(search_case.sentence_top_label)

    # the k slider reaches the API
    k_box = page.locator("#k-slider input[type=number]")
    k_box.fill("3")
    k_box.press("Enter")
    page.click("#search-btn")
    expect(labels).to_have_count(3)
    expect(labels.first).to_contain_text(search_case.sentence_top_label)
    assert external_requests == []  # no fonts, analytics or CDN: the page works without internet


@pytest.mark.browser
def test_image_search_ranks_its_own_caption_first(page, search_case: SearchCase):
    from playwright.sync_api import expect

    page.get_by_role("tab", name="Search by image").click()
    page.locator("#upload input[type=file]").set_input_files(str(search_case.image_path))
    rows = page.locator("#captions-list li")
    expect(rows.first).to_contain_text(search_case.image_caption)
    assert rows.count() >= 2
    # the uploaded photo stays in view, beside its captions and look-alikes (#16)
    photo, captions = page.locator("#upload img").first, page.locator("#captions-list")
    expect(photo).to_be_visible()
    left, right = photo.bounding_box(), captions.bounding_box()
    assert left["x"] + left["width"] <= right["x"] and abs(left["y"] - right["y"]) < 200
    expect(rows.first).to_contain_text("σ (")
    expect(page.locator("#image-gallery .caption-label").first).to_contain_text(search_case.image_caption)
    page.locator("#image-gallery img").first.wait_for(state="visible")
    _shot(page, f"image-search-{search_case.name}", _docs_name(search_case, "ui-image-search.png"))


@pytest.mark.browser
def test_page_explains_unknown_words_scores_and_what_is_served(page, search_case: SearchCase):
    """#16: words the model does not know are named, the footer says which collection and model are served,
    when they were built, and what the scores mean."""
    from playwright.sync_api import expect

    footer = page.locator("#imtext-footer")
    expect(footer).to_contain_text("Collection")
    expect(footer).to_contain_text(", built ")
    expect(footer).to_contain_text("Model trained ")
    expect(footer).to_contain_text("standard deviations above the typical score")
    expect(footer).to_contain_text("raw cosine")
    _query_box(page).fill(f"{search_case.sentence} zzqx")
    page.click("#search-btn")
    expect(page.locator("#text-status")).to_contain_text("Not in the vocabulary:")
    expect(page.locator("#text-status")).to_contain_text("zzqx")
    expect(page.locator("#text-gallery .caption-label").first).to_contain_text("σ (")
    _shot(
        page,
        f"unknown-words-{search_case.name}",
        _docs_name(search_case, "ui-unknown-words.png"),
        full_page=True,
    )


@pytest.mark.browser
def test_empty_query_shows_the_api_message_not_a_traceback(page, search_case: SearchCase):
    from playwright.sync_api import expect

    resp = httpx.post(f"{search_case.api_url}/search/text", json={"query": "", "k": 8}, timeout=30)
    assert 400 <= resp.status_code < 500
    message = resp.json()["error"]["message"]  # the API's own words are what the user must see

    _query_box(page).fill("")
    page.click("#search-btn")
    expect(page.locator("#text-status")).to_contain_text(message)
    expect(page.get_by_test_id("toast-body")).to_contain_text(message)
    body = page.locator("body").inner_text()
    assert "Traceback" not in body
    _shot(page, f"empty-query-{search_case.name}")

    # what the user typed is echoed literally, not rendered as Markdown/HTML
    odd = "a *blue* <b>circle</b> & [x](y) #tag_a_b"
    _query_box(page).fill(odd)
    page.click("#search-btn")
    expect(page.locator("#text-status")).to_contain_text(f"“{odd}”")


@pytest.mark.browser
def test_api_down_is_a_friendly_message(browser_context):
    from playwright.sync_api import expect

    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    running = launch(dead, port=free_port(), block=False)
    pg = browser_context.new_page()
    try:
        pg.goto(running.url)
        expect(pg.locator("#imtext-footer")).to_contain_text("Cannot reach the search API")
        _query_box(pg).fill("a dog")
        pg.click("#search-btn")
        expect(pg.locator("#text-status")).to_contain_text("is it running? (start it with: imtext serve)")
        assert "Traceback" not in pg.locator("body").inner_text()
        _shot(pg, "api-down")
    finally:
        pg.close()
        running.close()


# -- the page's formatting, without a browser --------------------------------------------------------


def test_footer_and_labels_format_the_api_values():
    info = {
        "model": {
            "fingerprint": "0123456789abcdef",
            "text_model": "gru",
            "sentence_encoder": "minilm",
            "backbone": "resnet18",
            "embed_dim": 512,
        },
        "index": {
            "images": {"count": 12345, "shards": 4, "factory": "HNSW32"},
            "captions": {"count": 61725, "shards": 4, "factory": "IVF256,Flat"},
        },
    }
    text = footer_text(info, None, {"latency_ms": 3.25, "roundtrip_ms": 12.04})
    for part in (
        "gru + minilm text",
        "resnet18 images",
        "512-d",
        "fingerprint 01234567",
        "12,345 images (4 shards, HNSW32)",
        "61,725 captions (4 shards, IVF256,Flat)",
        "3.2 ms in the API",
        "12.0 ms round trip",
    ):
        assert part in text, part
    assert "Cannot reach" in footer_text(None, "Cannot reach the API")
    assert image_label({"rank": 2, "score": 0.51234, "caption": "a cat"}) == "#2 · 0.512 — a cat"
    assert (
        image_label({"rank": 2, "score": 0.51234, "caption": "a cat"}, 2.345) == "#2 · +2.3σ (0.512) — a cat"
    )
    html_out = captions_html([{"rank": 1, "caption": "<b>x</b> & y", "image_id": "i1", "score": 1.7}])
    assert "&lt;b&gt;x&lt;/b&gt; &amp; y" in html_out and "<b>x" not in html_out
    assert 'style="width:100%"' in html_out  # scores above 1 do not overflow the bar


def test_scores_are_relative_to_the_querys_typical_match_and_the_footer_says_so():
    """#16: every result read 0.897 (the embeddings fill a narrow cone); the page shows how far a match
    stands above the query's typical score instead, with the raw cosine beside it and in the API."""
    from ui.app import SCORE_HELP, relative_scores

    crowded = [0.905, 0.899, 0.898, 0.897, 0.897, 0.897, 0.896, 0.896, 0.895, 0.895]  # one stands out
    rel = relative_scores(crowded)
    assert rel[0] > 2.5 and all(abs(r) < 1 for r in rel[1:])
    assert rel == sorted(rel, reverse=True)
    assert relative_scores([0.9, 0.8]) == [None, None]  # too few to judge: the raw cosine only
    assert relative_scores([0.5] * 6) == [0.0] * 6
    html_out = captions_html([{"rank": 1, "caption": "x", "image_id": "i", "score": 0.905}], [rel[0]])
    assert f"{rel[0]:+.1f}σ (0.905)" in html_out and 'style="width:' in html_out
    info = {
        "model": {"text_model": "gru", "trained": "2026-01-01T22:00:00+00:00"},
        "index": {"images": {"count": 3}, "captions": {"count": 15}},
        "collection": {"data": "synth:world", "splits": ["test"], "created": "2026-01-02T03:04:05+00:00"},
    }
    text = footer_text(info)
    assert SCORE_HELP in text and "raw cosine" in text and "median" in text
    assert "**Collection** synth:world (test), built 2026-01-02 03:04 UTC" in text
    assert "**Model** trained 2026-01-01 22:00 UTC" in text


def test_an_empty_result_says_why():
    from ui.app import empty_reason

    empty = {"index": {"images": {"count": 0}, "captions": {"count": 0}}}
    assert "has no images yet" in empty_reason("images", empty) and "imtext index add" in empty_reason(
        "images", empty
    )
    assert "did not answer" in empty_reason("captions", None)
    some = {"index": {"images": {"count": 12}}}
    assert "12 in the collection" in empty_reason("images", some)
    assert "has no captions yet" in captions_html([], why=empty_reason("captions", empty))


# -- the HTTP contract and the client, without a browser ---------------------------------------------

_HIT_KEYS = {"rank", "id", "image_id", "score", "caption", "image_url"}


def test_api_keeps_the_http_contract(search_case: SearchCase):
    """The shapes the page relies on; run against the real Serve app by swapping `search_case`."""
    with httpx.Client(base_url=search_case.api_url, timeout=30) as http:
        assert http.get("/healthz").json() == {"status": "ok"}
        info = http.get("/info").json()
        assert set(info) >= {"model", "index", "versions", "examples"}
        assert set(info["model"]) >= {"fingerprint", "text_model", "backbone", "embed_dim"}
        for part in ("images", "captions"):
            assert isinstance(info["index"][part]["count"], int) and info["index"][part]["count"] > 0
            assert set(info["index"][part]) >= {"count", "shards", "factory"}
        assert set(info["versions"]) >= {"imtext", "ray", "faiss", "torch"}
        assert search_case.example in info["examples"]

        res = http.post("/search/text", json={"query": search_case.sentence, "k": 3}).json()
        assert res["query"] == search_case.sentence and res["k"] == 3 and res["latency_ms"] >= 0
        assert [h["rank"] for h in res["results"]] == [1, 2, 3]
        assert all(set(h) >= _HIT_KEYS for h in res["results"])
        scores = [h["score"] for h in res["results"]]
        assert scores == sorted(scores, reverse=True)
        top = res["results"][0]
        img = http.get(top["image_url"])
        assert img.status_code == 200 and img.headers["content-type"] in ("image/jpeg", "image/png")

        with open(search_case.image_path, "rb") as f:
            res = http.post(
                "/search/image", files={"file": ("q.png", f, "image/png")}, data={"k": "4"}
            ).json()
        assert res["k"] == 4 and len(res["captions"]) == 4 and 1 <= len(res["images"]) <= 4
        assert all(set(c) >= {"rank", "id", "caption", "image_id", "score"} for c in res["captions"])
        assert all(set(h) >= _HIT_KEYS for h in res["images"])
        assert res["captions"][0]["caption"] == search_case.image_caption

        for resp in (
            http.post("/search/text", json={"query": "", "k": 3}),
            http.post("/search/text", json={"query": "a dog", "k": 0}),
            http.post(
                "/search/image", files={"file": ("x.txt", b"not an image", "text/plain")}, data={"k": "3"}
            ),
        ):
            assert 400 <= resp.status_code < 500, resp.text
            err = resp.json()["error"]
            assert err["code"] and err["message"]


def test_client_turns_failures_into_api_errors(search_case: SearchCase):
    with ApiClient(search_case.api_url) as client:
        with pytest.raises(ApiError) as e:
            client.search_text("   ", 5)
        assert 400 <= e.value.status < 500 and e.value.code and len(str(e.value)) > 5
        with pytest.raises(ApiError) as e:
            client.search_image(b"plain text", 3, "notes.txt")
        assert 400 <= e.value.status < 500 and e.value.code
        res = client.search_image(search_case.image_path, 2)
        assert res["roundtrip_ms"] >= res["latency_ms"] >= 0
        first = client.image(res["images"][0]["id"])
        assert min(first.size) > 0 and client.image(res["images"][0]["id"]) is first  # cached

    with ApiClient(f"http://127.0.0.1:{free_port()}") as dead:
        assert dead.health() is False
        with pytest.raises(ApiError) as e:
            dead.info()
        assert e.value.code == "unreachable" and "imtext serve" in str(e.value)

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/info":
            return httpx.Response(502, text="<html>bad gateway</html>")
        if request.url.path == "/search/text":
            return httpx.Response(422, json={"detail": "k is too large"})
        return httpx.Response(200, text="not json")

    with ApiClient("http://api.invalid", transport=httpx.MockTransport(handler)) as client:
        with pytest.raises(ApiError, match="answered 502 Bad Gateway") as e:
            client.info()
        assert e.value.code == "http_502"
        with pytest.raises(ApiError, match="k is too large"):
            client.search_text("x", 500)
        with pytest.raises(ApiError, match="not JSON"):
            client.search_image(b"x", 1)
        assert isinstance(e.value, ImtextError)  # the CLI prints these without a traceback


def test_imtext_ui_command_serves_the_page_and_stops_on_ctrl_c(tmp_path):
    """`imtext ui --api URL` as the README prints it, through the console script: the page answers,
    Ctrl-C ends it with exit 0 (it once crashed on a handler the CLI named but ui.app lacked)."""
    import signal
    import subprocess
    import time

    imtext = Path(sys.executable).parent / "imtext"
    port = free_port()
    with FakeApi() as api:
        proc = subprocess.Popen(
            [str(imtext), "ui", "--api", api.url, "--port", str(port)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, "GRADIO_ANALYTICS_ENABLED": "False"},
        )
        try:
            deadline, status = time.monotonic() + 120, None
            while time.monotonic() < deadline and proc.poll() is None:
                try:
                    status = httpx.get(f"http://127.0.0.1:{port}/", timeout=2).status_code
                    break
                except httpx.HTTPError:
                    time.sleep(0.5)
            assert status == 200, (
                f"the page never answered; output:\n{proc.stdout.read() if proc.poll() else ''}"
            )
            proc.send_signal(signal.SIGINT)
            out, _ = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
    assert proc.returncode == 0, out
    assert f"http://127.0.0.1:{port}/" in out and "Traceback" not in out


# -- #13: unknown words, the image cache, the upload limit (no browser) ------------------------------


def test_unknown_words_reach_the_page():
    from ui.app import unknown_words_note

    assert unknown_words_note(["zzqx", "*blorf*"]) == r" Not in the vocabulary: zzqx, \*blorf\*."
    assert unknown_words_note([]) == "" and unknown_words_note(None) == ""

    def handler(request: httpx.Request) -> httpx.Response:
        msg = "No word of the query is in the model's vocabulary (not in the vocabulary: zzqx, blorf)."
        err = {"code": "no_known_words", "message": msg, "unknown_words": ["zzqx", "blorf"]}
        return httpx.Response(400, json={"error": err})

    with ApiClient("http://api.invalid", transport=httpx.MockTransport(handler)) as client:
        with pytest.raises(ApiError, match="not in the vocabulary: zzqx, blorf") as e:
            client.search_text("zzqx blorf", 3)
    assert (e.value.status, e.value.code, e.value.unknown_words) == (400, "no_known_words", ["zzqx", "blorf"])


def test_image_cache_is_keyed_by_collection_version_and_bounded_in_bytes():
    import io as _io

    from PIL import Image as PILImage

    served: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        served.append(str(request.url.params.get("v")))
        color = (255, 0, 0) if request.url.params.get("v") == "one" else (0, 0, 255)
        buf = _io.BytesIO()
        PILImage.new("RGB", (2000, 1000), color).save(buf, format="PNG")
        return httpx.Response(200, content=buf.getvalue(), headers={"content-type": "image/png"})

    budget = 768 * 384 * 3 * 2  # room for two cached images
    with ApiClient(
        "http://api.invalid", transport=httpx.MockTransport(handler), cache_bytes=budget
    ) as client:
        a = client.image(1, "/images/1?v=one")
        assert max(a.size) <= 768 and a.getpixel((0, 0)) == (255, 0, 0)  # shrunk for the gallery
        assert client.image(1, "/images/1?v=one") is a  # cached
        b = client.image(1, "/images/1?v=two")  # the same id after a reload: fetched again, not stale
        assert b.getpixel((0, 0)) == (0, 0, 255) and served == ["one", "two"]
        client.image(2, "/images/2?v=two")
        assert len(client._cache) == 2 and client._cached_bytes() <= budget  # the oldest went


def test_page_refuses_uploads_over_the_api_limit(monkeypatch):
    """launch() passes Gradio the same 10 MB limit the API has."""
    import gradio as gr

    from serve.uploads import MAX_UPLOAD_BYTES
    from ui import app as ui_app

    seen = {}

    def fake_launch(self, **kwargs):
        seen.update(kwargs)
        raise OSError(98, "stop here")

    monkeypatch.setattr(gr.Blocks, "launch", fake_launch)
    with pytest.raises(ImtextError):
        ui_app.launch(f"http://127.0.0.1:{free_port()}", port=free_port(), block=False)
    assert seen["max_file_size"] == ui_app.MAX_UPLOAD == f"{MAX_UPLOAD_BYTES // 2**20}mb"
