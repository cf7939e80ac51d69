"""The imtext search page: a Gradio process of its own that talks to the Serve app's HTTP API.

Kept apart from Serve so the page can restart, scale or be left out without touching the model replicas;
the browser only ever talks to this process (images are fetched from the API here, server-side).
Run it with `imtext ui --api URL` or `python -m ui.app --api URL`.
"""

from __future__ import annotations

import argparse
import html
import logging
import os
import re
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import gradio as gr
from PIL import Image

from imtext.errors import ImtextError
from ui.client import ApiClient, ApiError

log = logging.getLogger(__name__)

TITLE = "imtext — image ⇄ text search"
K_DEFAULT, K_MAX = 8, 50
# Scores are shown relative to the query's own best matches: the page asks the API for this many (its
# maximum) and shows the first k. Too few results (a tiny collection) and only the raw cosine is shown.
CALIBRATION_K, MIN_CALIBRATION = 100, 5
SCORE_HELP = (
    "**Scores** +2.0σ: the match is 2 standard deviations above the typical score of the query's "
    f"{CALIBRATION_K} best matches (their median); +2σ and more stands out, near 0 is no better than the "
    "crowd. In brackets: the raw cosine similarity (the API's `score`)."
)
MAX_UPLOAD = "10mb"  # what the API accepts (serve/uploads.py MAX_UPLOAD_BYTES); Gradio refuses more

CSS = """
.gradio-container { max-width: 1240px !important; margin: 0 auto !important; }
#imtext-header h1 { margin: 0 0 2px 0; font-size: 1.7rem; }
#imtext-header p { margin: 0; color: var(--body-text-color-subdued); }
#imtext-footer { font-size: 0.82rem; color: var(--body-text-color-subdued); border-top: 1px solid
  var(--border-color-primary); padding-top: 6px; }
#imtext-footer p, #imtext-footer strong, #imtext-footer code { margin: 0; font-size: 0.82rem; }
.imtext-subhead p { margin: 0; }
.imtext-status { min-height: 1.4em; font-size: 0.9rem; }
.imtext-status p { margin: 0; }
#query-row { align-items: stretch; }
#query-row button { min-height: 100%; }
.imtext-captions ol { list-style: none; margin: 0; padding: 0; }
.imtext-captions li { display: grid; grid-template-columns: 2.2em 1fr 7.5em; gap: 8px; align-items: center;
  padding: 6px 4px; border-bottom: 1px solid var(--border-color-primary); font-size: 0.95rem; }
.imtext-captions li:first-child { font-weight: 600; }
.imtext-captions .rank { color: var(--body-text-color-subdued); text-align: right; }
.imtext-captions .score { font-variant-numeric: tabular-nums; font-size: 0.85rem; }
.imtext-captions .bar { height: 5px; border-radius: 3px; background: var(--color-accent); margin-top: 3px; }
.imtext-captions .from { color: var(--body-text-color-subdued); font-size: 0.8rem; font-weight: 400; }
.imtext-captions .empty { color: var(--body-text-color-subdued); padding: 24px 4px; }
"""

CAPTIONS_EMPTY = (
    '<div class="imtext-captions"><p class="empty">Upload an image to see the sentences that '
    "describe it best.</p></div>"
)


@dataclass
class _PageState:
    """What the page knows about the API: shared by every visitor, refreshed on each page load."""

    client: ApiClient
    info: dict[str, Any] | None = None
    info_error: str | None = None
    examples: list[str] = field(default_factory=list)

    def refresh(self) -> None:
        try:
            self.info = self.client.info()
            self.info_error = None
            self.examples = [str(e) for e in self.info.get("examples", []) if str(e).strip()][:6]
        except ApiError as e:
            self.info_error = e.message


# -- formatting (pure functions: easy to test, nothing Gradio-specific) ------------------------------


def footer_text(
    info: dict[str, Any] | None, info_error: str | None = None, last: dict[str, Any] | None = None
) -> str:
    """The model and index in use, the collection and when it and the model were built, the last query's
    latency, and what the scores mean."""
    if info is None:
        head = (
            f"⚠️ {md_escape(info_error)}" if info_error else "Model and index: unknown (API not reached yet)."
        )
    else:
        m, idx = info.get("model", {}), info.get("index", {})
        im, cap = idx.get("images", {}), idx.get("captions", {})

        def v(d: dict[str, Any], key: str) -> str:
            return md_escape(str(d.get(key, "?")))

        fp = md_escape(str(m.get("fingerprint", ""))[:8]) or "?"
        encoder = str(m.get("sentence_encoder") or "none")
        text = v(m, "text_model") + ("" if encoder == "none" else f" + {md_escape(encoder)}")
        head = (
            f"**Model** {text} text · {v(m, 'backbone')} images · {v(m, 'embed_dim')}-d · "
            f"fingerprint {fp} &nbsp;|&nbsp; **Index** "
            f"{_count(im)} images ({v(im, 'shards')} shards, {v(im, 'factory')}) · "
            f"{_count(cap)} captions ({v(cap, 'shards')} shards, {v(cap, 'factory')})"
        )
    if last is not None and "latency_ms" in last:
        head += (
            f" &nbsp;|&nbsp; **Last query** {last['latency_ms']:.1f} ms in the API, "
            f"{last.get('roundtrip_ms', float('nan')):.1f} ms round trip"
        )
    built = built_text(info) if info is not None else ""
    return head + (f"  \n{built}" if built else "") + f"  \n{SCORE_HELP}"


def built_text(info: dict[str, Any]) -> str:
    """'**Collection** synth:synth, 2,000 images, built 2026-11-29 20:13 UTC · **Model** trained ...'."""
    col, model = info.get("collection") or {}, info.get("model") or {}
    parts = []
    if col:
        what = md_escape(str(col.get("data") or "a collection"))
        splits = col.get("splits")
        if isinstance(splits, list) and splits:
            what += f" ({md_escape(', '.join(map(str, splits)))})"
        when = _when(col.get("created"))
        parts.append(f"**Collection** {what}" + (f", built {when}" if when else ""))
        if col.get("updated") and col.get("updated") != col.get("created"):
            parts[-1] += f", updated {_when(col.get('updated'))}"
    if model.get("trained"):
        parts.append(f"**Model** trained {_when(model['trained'])}")
    return " &nbsp;|&nbsp; ".join(parts)


def _when(stamp: Any) -> str:
    """An ISO 8601 time as 'YYYY-MM-DD HH:MM UTC' (or as given when it is not one)."""
    import datetime as dt

    if not stamp:
        return ""
    try:
        t = dt.datetime.fromisoformat(str(stamp))
    except ValueError:
        return md_escape(str(stamp))
    if t.tzinfo is not None:
        t = t.astimezone(dt.timezone.utc)
    return t.strftime("%Y-%m-%d %H:%M") + (" UTC" if t.tzinfo is not None else "")


def relative_scores(scores: list[float]) -> list[float | None]:
    """Each score in standard deviations above the median of `scores` (a query's best matches): a match
    that stands out of the crowd reads +3σ, an ordinary one near 0, however narrow the cone the embeddings
    fill (where every cosine reads 0.9). None for each when there are too few to judge."""
    import statistics

    if len(scores) < MIN_CALIBRATION:
        return [None] * len(scores)
    typical, spread = statistics.median(scores), statistics.pstdev(scores)
    if spread < 1e-9:
        return [0.0] * len(scores)
    return [(s - typical) / spread for s in scores]


def _score(score: float, rel: float | None) -> str:
    return f"{rel:+.1f}σ ({score:.3f})" if rel is not None else f"{score:.3f}"


def _count(section: dict[str, Any]) -> str:
    n = section.get("count")
    return f"{n:,}" if isinstance(n, int) else "?"


def image_label(hit: dict[str, Any], rel: float | None = None) -> str:
    """'#1 · +2.3σ (0.897) — caption': rank, relative score (raw cosine in brackets), the image's caption."""
    return f"#{hit.get('rank', '?')} · {_score(float(hit.get('score', 0.0)), rel)} — {hit.get('caption', '')}"


def captions_html(
    captions: list[dict[str, Any]], rel: list[float | None] | None = None, why: str = ""
) -> str:
    """Ranked captions with a score bar (its length: the relative score, +4σ fills it; the raw cosine when
    there is none); escaped, since captions come from a data set. `why` explains an empty list."""
    if not captions:
        return f'<div class="imtext-captions"><p class="empty">{html.escape(why or "No captions found.")}</p></div>'
    rel = rel or [None] * len(captions)
    rows = []
    for c, r in zip(captions, rel):
        score = float(c.get("score", 0.0))
        width = max(0.0, min(1.0, r / 4 if r is not None else score)) * 100
        rows.append(
            f'<li data-rank="{int(c.get("rank", 0))}"><span class="rank">{int(c.get("rank", 0))}</span>'
            f'<span class="caption">{html.escape(str(c.get("caption", "")))}'
            f' <span class="from">· {html.escape(str(c.get("image_id", "")))}</span></span>'
            f'<span class="score">{html.escape(_score(score, r))}'
            f'<div class="bar" style="width:{width:.0f}%"></div></span></li>'
        )
    return f'<div class="imtext-captions" id="captions-list"><ol>{"".join(rows)}</ol></div>'


def empty_reason(kind: str, info: dict[str, Any] | None) -> str:
    """Why a search found no `kind` ('images' or 'captions'): what the page knows about the collection."""
    count = ((info or {}).get("index", {}).get(kind) or {}).get("count")
    if count == 0:
        return (
            f"The collection has no {kind} yet: add some with `imtext index add` (or build one with "
            "`imtext index build`), then reload the API."
        )
    if info is None:
        return f"No {kind} came back, and the API's /info did not answer: is the collection loaded?"
    return f"The index returned no {kind} for this query ({_count(info['index'].get(kind, {}))} in the collection)."


def unknown_words_note(words: Any) -> str:
    """' Not in the vocabulary: a, b.' for the query's words the model does not know ('' for none)."""
    if not isinstance(words, list) or not words:
        return ""
    return f" Not in the vocabulary: {md_escape(', '.join(str(w) for w in words))}."


def md_escape(text: str) -> str:
    """Show API text literally in a Markdown component (a message or query with `*` or `_` in it).
    URLs are left alone: Markdown links them, and escapes inside a link would show as backslashes."""
    parts = re.split(r"(https?://[^\s<>()]+[^\s<>().,;:!?])", text)
    return "".join(
        p if i % 2 else re.sub(r"([\\`*_{}\[\]()#+!|~<>&])", r"\\\1", p) for i, p in enumerate(parts)
    )


def _placeholder(size: tuple[int, int] = (160, 120)) -> Image.Image:
    return Image.new("RGB", size, (200, 200, 205))


# -- the page ---------------------------------------------------------------------------------------


def build_page(api_url: str, client: ApiClient | None = None) -> gr.Blocks:
    """The Blocks page for the API at `api_url`; reaching the API is tried, not required, at build time."""
    state = _PageState(client or ApiClient(api_url))
    state.refresh()

    def gallery_items(hits: list[dict[str, Any]], rel: list[float | None]) -> list[tuple[Image.Image, str]]:
        items = []
        for h, r in zip(hits, rel):
            try:
                img = state.client.image(int(h["id"]), h.get("image_url"))
            except (ApiError, KeyError, ValueError) as e:
                log.warning("image %s unavailable: %s", h.get("id"), e)
                img = _placeholder()
            items.append((img, image_label(h, r)))
        return items

    def top(hits: list[dict[str, Any]], k: int) -> tuple[list[dict[str, Any]], list[float | None]]:
        """The first k hits and their relative scores (judged against all the hits fetched)."""
        rel = relative_scores([float(h.get("score", 0.0)) for h in hits])
        return hits[:k], rel[:k]

    def fail(e: Exception) -> str:
        msg = e.message if isinstance(e, ApiError) else "Something went wrong on the page; see its log."
        if not isinstance(e, ApiError):
            log.exception("unexpected error in a search handler")
        gr.Warning(msg)
        return f"⚠️ {md_escape(msg)}"

    def search_text(query: str, k: float):
        query = (query or "").strip()
        try:
            # an empty query goes to the API too: its message is the one rule for what a valid query is
            res = state.client.search_text(query, max(int(k), CALIBRATION_K))
            hits, rel = top(res.get("results", []), int(k))
            status = (
                f"{len(hits)} images for “{md_escape(query)}”."
                if hits
                else f"No images for “{md_escape(query)}”. {md_escape(empty_reason('images', state.info))}"
            )
            status += unknown_words_note(res.get("unknown_words"))
            return gallery_items(hits, rel), status, footer_text(state.info, state.info_error, res)
        except Exception as e:  # never a traceback in the browser
            return [], fail(e), footer_text(state.info, state.info_error)

    def run_example(sample: Any, k: float):
        text = sample[0] if isinstance(sample, (list, tuple)) else str(sample or "")
        gallery, status, footer = search_text(text, k)
        return text, gallery, status, footer

    def search_image(path: str | None, k: float):
        if not path:
            return CAPTIONS_EMPTY, [], "Upload an image first.", footer_text(state.info, state.info_error)
        try:
            res = state.client.search_image(path, max(int(k), CALIBRATION_K))
            caps, cap_rel = top(res.get("captions", []), int(k))
            hits, rel = top(res.get("images", []), int(k))
            status = f"{len(caps)} captions and {len(hits)} similar images."
            if not hits:
                status += " " + md_escape(empty_reason("images", state.info))
            return (
                captions_html(caps, cap_rel, why=empty_reason("captions", state.info)),
                gallery_items(hits, rel),
                status,
                footer_text(state.info, state.info_error, res),
            )
        except Exception as e:
            return CAPTIONS_EMPTY, [], fail(e), footer_text(state.info, state.info_error)

    def on_load():
        state.refresh()
        samples = [[e] for e in state.examples]
        return (gr.Dataset(samples=samples, visible=bool(samples)), footer_text(state.info, state.info_error))

    with gr.Blocks(title=TITLE, analytics_enabled=False, delete_cache=(1800, 3600)) as demo:
        with gr.Row(equal_height=True):
            with gr.Column(scale=4, min_width=400):
                gr.Markdown(
                    f"# {TITLE}\nFind the images a sentence describes, or the sentences (and look-alike "
                    "images) for a photo: one shared embedding space, searched with a sharded FAISS index.",
                    elem_id="imtext-header",
                )
            with gr.Column(scale=1, min_width=220):
                k = gr.Slider(1, K_MAX, value=K_DEFAULT, step=1, label="Results (k)", elem_id="k-slider")

        with gr.Tabs():
            with gr.Tab("Search by sentence", id="text", elem_id="tab-text"):
                with gr.Row(elem_id="query-row"):
                    query = gr.Textbox(
                        placeholder="e.g. a dog catching a frisbee on the beach",
                        show_label=False,
                        scale=6,
                        autofocus=True,
                        max_length=500,
                        elem_id="query",
                        container=False,
                    )
                    go = gr.Button("Search", variant="primary", scale=1, min_width=110, elem_id="search-btn")
                examples = gr.Dataset(
                    components=[query],
                    samples=[[e] for e in state.examples],
                    label="Try an example",
                    type="values",
                    samples_per_page=6,
                    visible=bool(state.examples),
                    elem_id="examples",
                )
                text_status = gr.Markdown(elem_classes=["imtext-status"], elem_id="text-status")
                text_gallery = gr.Gallery(
                    label="Images",
                    show_label=False,
                    columns=5,
                    height=400,
                    object_fit="cover",
                    elem_id="text-gallery",
                    buttons=["fullscreen"],
                    interactive=False,
                )

            with gr.Tab("Search by image", id="image", elem_id="tab-image"):
                with gr.Row():
                    with gr.Column(scale=2, min_width=300):
                        upload = gr.Image(
                            type="filepath",
                            image_mode=None,
                            sources=["upload", "clipboard"],
                            height=330,
                            label="Your image",
                            elem_id="upload",
                        )
                        describe = gr.Button(
                            "Describe & find similar", variant="primary", elem_id="image-btn"
                        )
                        image_status = gr.Markdown(elem_classes=["imtext-status"], elem_id="image-status")
                    with gr.Column(scale=3, min_width=380):
                        gr.Markdown("**Sentences that describe it**", elem_classes=["imtext-subhead"])
                        captions = gr.HTML(CAPTIONS_EMPTY, elem_id="captions", max_height=250)
                        gr.Markdown("**Similar images**", elem_classes=["imtext-subhead"])
                        image_gallery = gr.Gallery(
                            label="Similar images",
                            show_label=False,
                            columns=5,
                            height=190,
                            object_fit="cover",
                            elem_id="image-gallery",
                            buttons=["fullscreen"],
                            interactive=False,
                        )

        footer = gr.Markdown(footer_text(state.info, state.info_error), elem_id="imtext-footer")

        text_outputs = [text_gallery, text_status, footer]
        go.click(search_text, [query, k], text_outputs, concurrency_limit=4)
        query.submit(search_text, [query, k], text_outputs, concurrency_limit=4)
        examples.click(run_example, [examples, k], [query, *text_outputs], concurrency_limit=4)

        image_outputs = [captions, image_gallery, image_status, footer]
        upload.upload(search_image, [upload, k], image_outputs, concurrency_limit=4)
        describe.click(search_image, [upload, k], image_outputs, concurrency_limit=4)
        upload.clear(lambda: (CAPTIONS_EMPTY, [], ""), None, [captions, image_gallery, image_status])

        demo.load(on_load, None, [examples, footer])
    demo._imtext_client = state.client  # so launch() can close it with the server
    return demo


def theme() -> gr.themes.Base:
    """Gradio's default theme in calmer colours; its fonts ship with Gradio (no Google Fonts fetch)."""
    return gr.themes.Default(primary_hue="indigo", secondary_hue="sky", neutral_hue="slate")


@dataclass
class RunningPage:
    """A launched page: `url` to open it, `close()` to stop the server and the API client."""

    blocks: gr.Blocks
    url: str

    def close(self) -> None:
        self.blocks.close(verbose=False)
        client = getattr(self.blocks, "_imtext_client", None)
        if client is not None:
            client.close()

    def __enter__(self) -> RunningPage:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def launch(
    api_url: str, host: str = "127.0.0.1", port: int = 7860, block: bool = True, share: bool = False
) -> RunningPage:
    """Start the page. With `block=False` it returns at once (tests, `imtext serve`) and serves until
    `close()`; with `block=True` it serves until Ctrl-C or `close()` from another thread, then cleans up."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    demo = build_page(api_url)
    demo.queue(default_concurrency_limit=4, max_size=64)
    page = RunningPage(demo, f"http://{host}:{port}/")
    try:
        _app, local_url, _share_url = demo.launch(
            server_name=host,
            server_port=port,
            share=share,
            prevent_thread_lock=True,
            quiet=True,
            ssr_mode=False,
            show_error=False,
            max_file_size=MAX_UPLOAD,
            footer_links=["gradio", "settings"],
            theme=theme(),
            css=CSS,
        )
    except OSError as e:  # Gradio's "Cannot find empty port in range"
        page.close()
        raise ImtextError(
            f"Cannot start the page on {host}:{port} ({e.strerror or 'port in use'}); "
            "pick another port with --port."
        ) from e
    except BaseException:
        page.close()
        raise
    page.url = local_url or page.url
    if block:
        try:
            while demo.is_running:  # not demo.block_thread(): it leaves the queue and our client open
                time.sleep(0.2)
        except KeyboardInterrupt:
            pass
        finally:
            page.close()
    return page


def serve_page(api_url: str, host: str = "127.0.0.1", port: int = 7860, share: bool = False) -> int:
    """Serve the page until Ctrl-C (`imtext ui`, `python -m ui.app`); warns when the API does not answer yet."""
    with ApiClient(api_url) as probe:
        if not probe.health():
            print(f"warning: the API at {api_url} does not answer yet; the page will say so until it does.")
    print(f"imtext page on http://{host}:{port}/ (API {api_url}); Ctrl-C stops it.")
    try:
        launch(api_url, host=host, port=port, block=True, share=share)
    except KeyboardInterrupt:
        pass
    return 0


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m ui.app", description="The imtext search page (Gradio).")
    ap.add_argument(
        "--api",
        default=os.environ.get("IMTEXT_API", "http://127.0.0.1:8000"),
        help="base URL of the imtext HTTP API (default: $IMTEXT_API or http://127.0.0.1:8000)",
    )
    ap.add_argument("--host", default="127.0.0.1", help="interface to bind (default: 127.0.0.1)")
    ap.add_argument("--port", type=int, default=7860)
    ap.add_argument("--share", action="store_true", help="ask Gradio for a public share link")
    args = ap.parse_args(argv)
    try:
        serve_page(args.api, host=args.host, port=args.port, share=args.share)
    except ImtextError as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
