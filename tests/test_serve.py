"""The Ray Serve app, for real: deployments on the shared local Ray, HTTP on a free loopback port.

The app is started once for the module (Serve start-up is slow on a small machine). Each test gets it
serving collection A, as started (the `client` fixture swaps A back in after a test that swapped it out),
and no test changes a collection on disk that another one reads, so the tests pass in any order.
"""

from __future__ import annotations

import io
import json
import shutil
import threading
import time
from datetime import datetime
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from imtext.errors import ImtextError
from tests.conftest import free_port

TOKEN = "test-admin-token"
K = 10


# ---- fixtures -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def collections(tiny_model, synth_world, tmp_path_factory) -> dict[str, Path]:
    """A: every split, 2 shards (the one served first); B: the test split, 1 shard (swapped in);
    three: 3 shards (more than the app runs); foreign: B relabelled as another model's."""
    from imtext.collection import build_collection

    root = tmp_path_factory.mktemp("collections")
    data = f"synth:{synth_world}"
    out = {
        "A": build_collection(tiny_model, data, root / "A", shards=2, use_ray=False, progress=False),
        "B": build_collection(
            tiny_model, data, root / "B", shards=1, splits=["test"], use_ray=False, progress=False
        ),
        "three": build_collection(
            tiny_model, data, root / "three", shards=3, splits=["test"], use_ray=False, progress=False
        ),
    }
    corrupt = root / "corrupt"  # metadata fine, a shard file damaged (its checksum no longer matches)
    shutil.copytree(out["B"], corrupt)
    shard = corrupt / "images" / "shard-000.faiss"
    raw = bytearray(shard.read_bytes())
    raw[-100:] = bytes(100)
    shard.write_bytes(bytes(raw))
    out["corrupt"] = corrupt
    foreign = root / "foreign"
    shutil.copytree(out["B"], foreign)
    info = json.loads((foreign / "collection.json").read_text())
    info["model_fingerprint"] = "0123456789abcdef"
    (foreign / "collection.json").write_text(json.dumps(info))
    out["foreign"] = foreign
    return out


@pytest.fixture(scope="module")
def local(tiny_model, collections):
    """The same pipeline in-process (model + whole index), to check the app's answers against."""
    from imtext.collection import Collection
    from imtext.model import TwoBranch

    return TwoBranch.load(tiny_model), Collection.load(collections["A"])


@pytest.fixture(scope="module")
def api(ray_session, tiny_model, collections, tmp_path_factory):
    from serve.launch import start

    running = start(
        tiny_model,
        collections["A"],
        host="127.0.0.1",
        port=free_port(),
        admin_token=TOKEN,
        options={
            "shard_timeout_s": 3.0,
            "encoder_timeout_s": 20.0,
            "release_after_s": 2.0,
            # reloads may name any test's folder (the grown-in-place one lives in its own tmp_path)
            "index_root": str(tmp_path_factory.getbasetemp()),
        },
    )
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="module")
def http(api):
    """One HTTP client for the module, and what GET /info says about collection A once the app is up."""
    with httpx.Client(base_url=api.url, timeout=60.0) as c:
        yield c, c.get("/info").json()["collection"]


@pytest.fixture
def client(http, collections):
    """The app's client, the app serving collection A: a test before may have swapped in another one."""
    c, served_first = http
    if c.get("/info").json()["collection"] != served_first:
        resp = c.post(
            "/admin/reload",
            json={"index_dir": str(collections["A"])},
            headers={"Authorization": f"Bearer {TOKEN}"},
        )
        assert resp.status_code == 200, resp.text
        assert c.get("/info").json()["collection"] == served_first
    return c


def png_bytes(path: str | Path) -> bytes:
    return Path(path).read_bytes()


def assert_error(resp: httpx.Response, status: int, code: str) -> None:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/json")
    body = resp.json()
    assert body["error"]["code"] == code, body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]


def assert_same_ranking(hits: list[dict], scores: np.ndarray, ids: np.ndarray) -> None:
    """The app's hits equal the in-process top-k: the same score at every rank, and the same id except
    where two scores tie to 1e-5 (exact ties may come back in another order from another batch size)."""
    assert [h["rank"] for h in hits] == list(range(1, len(ids) + 1))
    np.testing.assert_allclose([h["score"] for h in hits], scores, atol=1e-5)
    expected = dict(zip(ids.tolist(), scores.tolist()))
    for h, s, i in zip(hits, scores, ids):
        if h["id"] != i:  # only a tie may swap places
            assert h["id"] in expected and abs(expected[h["id"]] - s) < 1e-5, (h, s, i)


# ---- no Ray needed --------------------------------------------------------------------------------


def test_decode_image_rejects_each_bad_upload_cleanly(synth_world):
    from serve.uploads import Rejected, decode_image

    png = png_bytes(next((synth_world / "images").glob("*.png")))
    ok = decode_image(png)
    assert not isinstance(ok, Rejected) and ok.mode == "RGB"
    assert decode_image(b"hello, not an image") == Rejected(415, "not_an_image", decode_image(b"x").message)
    assert decode_image(png[: len(png) // 2]).code == "bad_image"
    assert decode_image(b"").code == "empty_upload"
    # 8000x8000 compresses to a few kB but would decode to 64 MP: refused from its header, before decoding
    big = io.BytesIO()
    Image.new("1", (8000, 8000)).save(big, format="PNG")
    assert len(big.getvalue()) < 100_000
    r = decode_image(big.getvalue(), max_pixels=40_000_000)
    assert (r.status, r.code) == (413, "image_too_large")
    # a format PIL knows but we do not accept (EPS would run Ghostscript)
    assert decode_image(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n").code == "not_an_image"


def test_call_turns_faults_into_503_and_bugs_into_500():
    import asyncio

    from ray.serve.exceptions import RayServeException

    from serve.errors import ApiError, call

    class FakeResponse:  # what a DeploymentHandle call returns: awaitable, cancellable
        def __init__(self, body):
            self.body, self.cancelled = body, False

        def __await__(self):
            return self.body().__await__()

        def cancel(self):
            self.cancelled = True

    async def ok():
        return 42

    async def slow():
        await asyncio.sleep(30)

    async def overloaded():
        raise RayServeException("replica queue full")

    async def bug():
        raise ValueError("a bug in the replica")

    async def run(body, timeout=5.0):
        r = FakeResponse(body)
        try:
            return await call(r, timeout, "index shard"), r
        except ApiError as e:
            return e, r

    assert asyncio.run(run(ok))[0] == 42
    t0 = time.monotonic()
    err, r = asyncio.run(run(slow, timeout=0.2))
    assert (err.status, err.code) == (503, "unavailable") and r.cancelled and time.monotonic() - t0 < 5
    err, _ = asyncio.run(run(overloaded))
    assert (err.status, err.code) == (503, "unavailable")
    err, _ = asyncio.run(run(bug))
    assert (err.status, err.code, err.cause) == (500, "internal", "a bug in the replica")
    assert "bug" not in err.message  # the client gets no internals


def test_read_meta_checks_model_and_shards(tiny_model, collections):
    from imtext.collection import ModelMismatch, TooManyShards, read_meta

    meta = read_meta(collections["A"], max_shards=2)
    assert meta.index_info()["images"] == {"count": len(meta.images), "shards": 2, "factory": "Flat"}
    fp = meta.info["model_fingerprint"]
    rows = meta.images.rows([3, 0])
    assert [r["id"] for r in rows] == [3, 0]
    assert meta.images.get(10**9) is None and meta.images.get(-1) is None
    with pytest.raises(ImtextError, match="metadata lacks"):
        meta.captions.rows([0, 10**9])
    with pytest.raises(ModelMismatch, match="another space"):
        read_meta(collections["foreign"], model_fingerprint=fp)
    with pytest.raises(TooManyShards, match="3 shards"):
        read_meta(collections["three"], model_fingerprint=fp, max_shards=2)
    with pytest.raises(ImtextError, match="does not exist"):
        read_meta(collections["A"] / "nope")


def test_build_app_and_check_dirs_refuse_bad_input(tiny_model, collections, tmp_path):
    from serve.app import build_app
    from serve.launch import check_dirs

    with pytest.raises(ImtextError, match="index_dir is required"):
        build_app({"model_dir": str(tiny_model)})
    with pytest.raises(ImtextError, match="unknown app argument.*shard_timeout"):
        build_app({"model_dir": str(tiny_model), "index_dir": str(collections["A"]), "shard_timeout": 3})
    with pytest.raises(ImtextError, match="another space"):
        build_app({"model_dir": str(tiny_model), "index_dir": str(collections["foreign"])})
    with pytest.raises(ImtextError, match="not a model directory"):
        check_dirs(tmp_path, collections["A"])
    with pytest.raises(ImtextError, match="not an imtext collection"):
        check_dirs(tiny_model, tmp_path)
    assert check_dirs(tiny_model, collections["A"]) == (
        Path(tiny_model).resolve(),
        collections["A"].resolve(),
    )


def test_build_app_takes_typed_args_as_serve_passes_them(tiny_model, collections):
    """Serve validates a builder's args into the pydantic model its parameter is annotated with; what
    `serve run serve.app:build_app key=value` passes are strings."""
    import inspect

    from serve.app import AppArgs, build_app, parse_args

    assert inspect.signature(build_app).parameters["args"].annotation is AppArgs
    args = AppArgs.model_validate(
        {
            "model_dir": str(tiny_model),
            "index_dir": str(collections["A"]),
            "mmap": "false",
            "shard_timeout_s": "3",
            "shard_slots": "3",
            "shard": None,
        }
    )
    assert (args.mmap, args.shard_timeout_s, args.shard_slots, args.shard) == (False, 3.0, 3, {})
    assert parse_args({"model_dir": "m", "index_dir": "i", "mmap": "true"}).mmap is True
    assert type(build_app(args)).__name__ == "Application"
    with pytest.raises(ImtextError, match="app argument mmap: .*boolean"):
        parse_args({"model_dir": "m", "index_dir": "i", "mmap": "perhaps"})
    with pytest.raises(ImtextError, match="app argument shard: .*dictionary"):
        parse_args({"model_dir": "m", "index_dir": "i", "shard": 3})
    with pytest.raises(ImtextError, match="model_dir is required.*; .*index_dir is required"):
        parse_args({"model_dir": ""})
    with pytest.raises(ImtextError, match="shard_slots=1 is fewer than the collection's 2 shards"):
        build_app({"model_dir": str(tiny_model), "index_dir": str(collections["A"]), "shard_slots": 1})


def test_config_yaml_is_a_valid_serve_config_for_build_app(tiny_model, collections):
    import yaml
    from ray.serve.schema import ServeDeploySchema

    from serve.app import build_app

    raw = yaml.safe_load((Path(__file__).parents[1] / "serve" / "config.yaml").read_text())
    config = ServeDeploySchema.model_validate(raw)
    assert config.http_options.host == "127.0.0.1"
    [app] = config.applications
    assert app.import_path == "serve.app:build_app"
    assert {d.name for d in app.deployments} <= {"TextEncoder", "ImageEncoder", "SearchAPI"}
    args = {**app.args, "model_dir": str(tiny_model), "index_dir": str(collections["A"])}
    built = build_app(args)  # every argument the file sets is one build_app understands
    assert type(built).__name__ == "Application"


# ---- the running app --------------------------------------------------------------------------------


@pytest.mark.ray
def test_health_info_and_docs(client, local, collections):
    model, col = local
    assert client.get("/healthz").json() == {"status": "ok"}
    info = client.get("/info").json()
    trained = info["model"].pop("trained")  # when the model was exported, for the page's footer
    assert datetime.fromisoformat(trained).tzinfo is not None, trained
    assert info["model"] == {
        "fingerprint": model.fingerprint,
        "text_model": model.text_config.model,
        "sentence_encoder": model.text_config.sentence_encoder,
        "backbone": model.image_config.backbone,
        "embed_dim": model.embed_dim,
    }
    assert info["index"] == {
        "images": {"count": col.images.ntotal, "shards": 2, "factory": "Flat"},
        "captions": {"count": col.captions.ntotal, "shards": 2, "factory": "Flat"},
    }
    assert set(info["versions"]) == {"imtext", "ray", "faiss", "torch"}
    assert info["examples"] and set(info["examples"]) <= set(
        col.meta.captions.table.column("caption").to_pylist()
    )
    docs = client.get("/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/search/text", "/search/image", "/images/{image_id}", "/healthz", "/info"} <= set(paths)


@pytest.mark.ray
def test_search_text_matches_in_process_and_finds_the_image(client, local):
    model, col = local
    caps = col.meta.captions.table.to_pylist()
    q = model.embed_texts([c["caption"] for c in caps])
    scores, ids = col.images.search(q, K)
    found = [n for n, c in enumerate(caps) if c["image"] in ids[n]]
    assert found, "the tiny model finds no image for any caption in-process; nothing to check"
    rng = np.random.default_rng(0)
    for n in rng.choice(found, size=min(6, len(found)), replace=False):
        body = client.post("/search/text", json={"query": caps[n]["caption"], "k": K}).json()
        assert body["query"] == caps[n]["caption"] and body["k"] == K and body["latency_ms"] > 0
        hits = body["results"]
        assert caps[n]["image"] in [h["id"] for h in hits]  # the caption finds its image in the top k
        s1, i1 = col.images.search(model.embed_texts([caps[n]["caption"]]), K)
        assert_same_ranking(hits, s1[0], i1[0])
        rows = col.image_rows(i1[0])
        for h, row in zip(hits, rows):
            if h["id"] == row["id"]:
                assert (h["image_id"], h["caption"]) == (row["image_id"], row["caption"])
                assert h["image_url"] == f"/images/{row['id']}?v={col.meta.version}"


@pytest.mark.ray
def test_search_image_ranks_the_image_itself_first(client, local):
    model, col = local
    row = col.image_rows([7])[0]
    data = png_bytes(row["image_path"])
    resp = client.post("/search/image", files={"file": ("seven.png", data, "image/png")}, data={"k": "5"})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["k"] == 5 and len(body["images"]) == 5 and len(body["captions"]) == 5
    top = body["images"][0]
    assert (top["id"], top["image_id"]) == (7, row["image_id"]) and top["score"] == pytest.approx(
        1.0, abs=1e-4
    )
    from imtext.data import load_image

    v = model.embed_images([load_image(row["image_path"])])
    s, i = col.captions.search(v, 5)
    assert_same_ranking(body["captions"], s[0], i[0])
    cap_rows = {r["id"]: r for r in col.caption_rows(i[0])}
    for c in body["captions"]:
        if c["id"] in cap_rows:
            assert (c["caption"], c["image_id"]) == (
                cap_rows[c["id"]]["caption"],
                cap_rows[c["id"]]["image_id"],
            )


@pytest.mark.ray
def test_get_image_by_id_only(client, local):
    _, col = local
    row = col.image_rows([3])[0]
    resp = client.get("/images/3")
    assert resp.status_code == 200
    assert resp.headers["content-type"] == "image/png"
    assert resp.content == png_bytes(row["image_path"])
    assert_error(client.get(f"/images/{col.images.ntotal + 5}"), 404, "not_found")
    assert_error(client.get("/images/-1"), 404, "not_found")
    assert_error(client.get("/images/abc"), 422, "invalid_request")
    # a path is never accepted: it is not an id, and no route serves files by name
    assert client.get("/images/..%2F..%2Fetc%2Fpasswd").status_code in (404, 422)
    assert_error(client.get("/images/3/../../etc/passwd"), 404, "not_found")


@pytest.mark.ray
def test_bad_inputs_get_4xx_json_and_change_nothing(client, local):
    _, col = local
    png = png_bytes(col.image_rows([0])[0]["image_path"])
    info_before = client.get("/info").json()
    query = {"query": "a big green circle", "k": 5}
    before = client.post("/search/text", json=query).json()["results"]

    assert_error(client.post("/search/text", json={"query": "", "k": 5}), 400, "empty_query")
    assert_error(client.post("/search/text", json={"query": " \t\n ", "k": 5}), 400, "empty_query")
    assert_error(client.post("/search/text", json={"query": "a" * 1001, "k": 5}), 400, "query_too_long")
    assert client.post("/search/text", json={"query": "a " * 500, "k": 5}).status_code == 200  # 1000 is fine
    assert_error(client.post("/search/text", json={"query": "dog", "k": 0}), 422, "bad_k")
    assert_error(client.post("/search/text", json={"query": "dog", "k": 101}), 422, "bad_k")
    assert_error(client.post("/search/text", json={"query": "dog", "k": "many"}), 422, "invalid_request")
    assert_error(client.post("/search/text", json={"k": 5}), 422, "invalid_request")
    assert_error(
        client.post("/search/text", content=b"{not json", headers={"content-type": "application/json"}),
        422,
        "invalid_request",
    )
    assert_error(
        client.post("/search/image", files={"file": ("a.txt", b"just text", "text/plain")}),
        415,
        "not_an_image",
    )
    assert_error(
        client.post("/search/image", files={"file": ("a.png", png[: len(png) // 2], "image/png")}),
        400,
        "bad_image",
    )
    assert_error(
        client.post("/search/image", files={"file": ("a.png", b"", "image/png")}), 400, "empty_upload"
    )
    assert_error(
        client.post("/search/image", files={"file": ("a.png", png, "image/png")}, data={"k": "0"}),
        422,
        "bad_k",
    )
    assert_error(client.post("/search/image", data={"k": "3"}), 422, "invalid_request")
    big = png + b"\0" * (10 * 2**20)  # over 10 MB
    assert_error(
        client.post("/search/image", files={"file": ("a.png", big, "image/png")}), 413, "upload_too_large"
    )
    assert_error(client.get("/no/such/route"), 404, "not_found")
    assert_error(client.get("/search/text"), 405, "method_not_allowed")

    assert client.get("/info").json() == info_before
    after = client.post("/search/text", json=query).json()["results"]
    assert [h["id"] for h in after] == [h["id"] for h in before]


# ---- faults and the index swap (the `client` fixture serves A again to the next test) ------------------


class Load:
    """A bounded client loop on loopback in a thread: records (status, seconds, body) per request."""

    def __init__(
        self,
        url: str,
        queries: list[str],
        n: int | None = None,
        seconds: float | None = None,
        timeout: float = 30.0,
    ) -> None:
        self.url, self.queries, self.n, self.seconds, self.timeout = url, queries, n, seconds, timeout
        self.results: list[tuple[int, float, dict]] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        end = time.monotonic() + (self.seconds or 1e9)
        with httpx.Client(base_url=self.url, timeout=self.timeout) as c:
            i = 0
            while not self.stop.is_set() and time.monotonic() < end and (self.n is None or i < self.n):
                t0 = time.monotonic()
                try:
                    r = c.post("/search/text", json={"query": self.queries[i % len(self.queries)], "k": 5})
                    body = (
                        r.json() if r.headers.get("content-type", "").startswith("application/json") else {}
                    )
                    self.results.append((r.status_code, time.monotonic() - t0, body))
                except httpx.HTTPError as e:  # a hang or a dropped connection: recorded as a failure
                    self.results.append((0, time.monotonic() - t0, {"exception": repr(e)}))
                i += 1

    def __enter__(self) -> Load:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=120)


def _replica_names(deployment: str) -> list[str]:
    """Serve has no API that lists replica actors; its fault-tolerance guide ("simulate system errors")
    finds them by their SERVE_REPLICA:: names in the "serve" namespace and kills them with ray.kill, as here."""
    import ray

    return sorted(
        a["name"]
        for a in ray.util.list_named_actors(all_namespaces=True)
        if a["namespace"] == "serve" and a["name"].startswith(f"SERVE_REPLICA::imtext#{deployment}#")
    )


@pytest.mark.ray
def test_killed_shard_replica_comes_back_and_requests_fail_cleanly(api, client):
    import ray

    [victim] = _replica_names("shard-1")
    queries = client.get("/info").json()["examples"]
    with Load(api.url, queries, seconds=60.0, timeout=30.0) as load:
        while len(load.results) < 5:
            time.sleep(0.05)
        ray.kill(ray.get_actor(victim, namespace="serve"), no_restart=True)
        killed_at = len(load.results)
        # wait until Serve has a new replica and requests succeed again
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            new = [n for n in _replica_names("shard-1") if n != victim]
            tail = load.results[killed_at:]
            if new and len(tail) >= 5 and all(s == 200 for s, _, _ in tail[-5:]):
                break
            time.sleep(0.2)
    results = load.results
    assert results and all(s in (200, 503) for s, _, _ in results), {s for s, _, _ in results}
    for status, seconds, body in results:
        assert seconds < 15, "a request hung instead of failing fast"
        if status == 503:
            assert body["error"]["code"] == "unavailable"
    assert [n for n in _replica_names("shard-1") if n != victim], "Serve did not replace the killed replica"
    # all succeed afterwards
    for q in queries[:5]:
        assert client.post("/search/text", json={"query": q, "k": 5}).status_code == 200


@pytest.mark.ray
def test_admin_reload_refuses_bad_requests_and_changes_nothing(client, collections):
    before = client.get("/info").json()
    auth = {"Authorization": f"Bearer {TOKEN}"}
    body = {"index_dir": str(collections["B"])}
    assert_error(client.post("/admin/reload", json=body), 401, "unauthorized")
    assert_error(
        client.post("/admin/reload", json=body, headers={"Authorization": "Bearer wrong"}),
        401,
        "unauthorized",
    )
    assert_error(
        client.post("/admin/reload", json={"index_dir": str(collections["foreign"])}, headers=auth),
        409,
        "model_mismatch",
    )
    assert_error(
        client.post("/admin/reload", json={"index_dir": str(collections["three"])}, headers=auth),
        409,
        "too_many_shards",
    )
    assert_error(
        client.post("/admin/reload", json={"index_dir": "/no/such/dir"}, headers=auth),
        403,
        "outside_index_root",
    )
    no_such = str(collections["A"].parent / "no-such-collection")  # inside the root, but not there
    assert_error(client.post("/admin/reload", json={"index_dir": no_such}, headers=auth), 400, "bad_index")
    resp = client.post("/admin/reload", json={"index_dir": str(collections["corrupt"])}, headers=auth)
    assert_error(resp, 400, "bad_index")
    assert "corrupt" in resp.json()["error"]["message"]
    assert_error(client.post("/admin/reload", json={}, headers=auth), 422, "invalid_request")
    assert client.get("/info").json() == before
    assert client.post("/search/text", json={"query": "a red circle", "k": 3}).status_code == 200


@pytest.mark.ray
def test_index_swap_under_load_drops_no_request(api, client, collections):
    from imtext.collection import Collection

    b = Collection.load(collections["B"])
    b_image_ids = set(b.meta.images.table.column("image_id").to_pylist())
    queries = client.get("/info").json()["examples"]
    with Load(api.url, queries, n=200) as load:
        while len(load.results) < 50:
            time.sleep(0.02)
        swapped_at = len(load.results)
        resp = client.post(
            "/admin/reload",
            json={"index_dir": str(collections["B"])},
            headers={"Authorization": f"Bearer {TOKEN}"},
        )
        done_at = len(load.results)
        load.thread.join(timeout=180)
    assert resp.status_code == 200, resp.text
    statuses = [s for s, _, _ in load.results]
    assert len(statuses) == 200 and statuses.count(200) == 200, {s: statuses.count(s) for s in set(statuses)}
    # requests that started after the swap answered from B; the ones before it from A
    after = [body for _, _, body in load.results[done_at + 1 :]]
    assert after and all({h["image_id"] for h in body["results"]} <= b_image_ids for body in after)
    assert any(
        not {h["image_id"] for h in body["results"]} <= b_image_ids
        for _, _, body in load.results[:swapped_at]
    )
    info = client.get("/info").json()
    assert info["index"] == {
        "images": {"count": b.images.ntotal, "shards": 1, "factory": "Flat"},
        "captions": {"count": b.captions.ntotal, "shards": 1, "factory": "Flat"},
    }
    assert info["collection"]["splits"] == ["test"]
    # once no old request can need it, every shard replica lets the old collection go (memory back to 1x)
    from ray import serve

    shards = [serve.get_deployment_handle(f"shard-{i}", app_name="imtext") for i in range(2)]
    b_dir = str(collections["B"].resolve())
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        held = [[d for d, _version in h.held.remote().result(timeout_s=10)] for h in shards]
        if held == [[b_dir]] * 2:
            break
        time.sleep(0.5)
    assert held == [[b_dir]] * 2


@pytest.mark.ray
def test_reload_picks_up_a_collection_grown_in_place(client, collections, tiny_model, synth_world, tmp_path):
    """`imtext index add` rewrites the folder under the same path: a reload of that path must serve it."""
    from imtext.collection import add_to_collection

    auth = {"Authorization": f"Bearer {TOKEN}"}
    b_dir = str(
        shutil.copytree(collections["B"], tmp_path / "B")
    )  # grown here: B stays as the others know it
    assert client.post("/admin/reload", json={"index_dir": b_dir}, headers=auth).status_code == 200
    before = client.get("/info").json()["index"]["images"]["count"]
    added = add_to_collection(
        b_dir, tiny_model, f"synth:{synth_world}", splits=["val"], use_ray=False, progress=False
    )
    assert added["images"] > 0
    resp = client.post("/admin/reload", json={"index_dir": b_dir}, headers=auth)
    assert resp.status_code == 200, resp.text
    assert client.get("/info").json()["index"]["images"]["count"] == before + added["images"]
    # a new image is found by the shards, not only listed in the metadata
    new_id = added["image_ids"][0]
    from imtext.collection import Collection

    path = Collection.load(b_dir).image_path(new_id)
    body = client.post(
        "/search/image", files={"file": ("new.png", path.read_bytes(), "image/png")}, data={"k": "3"}
    ).json()
    assert body["images"][0]["id"] == new_id


# ---- hardening against whole classes of input (#13) ---------------------------------------------------


def _image_bytes(size: tuple[int, int], fmt: str = "PNG", color=(200, 40, 40)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format=fmt)
    return buf.getvalue()


def test_decode_image_caps_the_aspect_ratio_shrinks_big_photos_and_answers_any_exception(monkeypatch):
    from PIL import Image as PILImage

    from serve.uploads import Rejected, decode_image

    # a long, thin strip passes the pixel cap but would explode in a resize: refused from its header
    r = decode_image(_image_bytes((20_000, 10)))
    assert isinstance(r, Rejected) and (r.status, r.code) == (400, "bad_aspect_ratio")
    assert not isinstance(decode_image(_image_bytes((200, 10))), Rejected)  # 20:1 is still fine
    # a big JPEG is decoded small (draft) and reduced: the shorter side stays at least min_side
    big = _image_bytes((3000, 2000), "JPEG")
    t0 = time.perf_counter()
    small = decode_image(big, min_side=128)
    assert not isinstance(small, Rejected) and 128 <= min(small.size) < 256, small.size
    assert small.size[0] > small.size[1]  # the aspect is kept
    assert time.perf_counter() - t0 < 2.0
    assert decode_image(big).size == (3000, 2000)  # no min_side: full size, as before
    # whatever a decoder raises is that upload's 400, never an exception into the batch
    for exc in (RuntimeError("decoder bug"), MemoryError(), ZeroDivisionError(), KeyError("x")):

        def broken(*_a, exc=exc, **_k):
            raise exc

        monkeypatch.setattr(PILImage, "open", broken)
        r = decode_image(b"\x89PNG\r\n\x1a\n....")
        assert isinstance(r, Rejected) and (r.status, r.code) == (400, "bad_image"), (exc, r)


def test_encoders_answer_each_input_alone(tiny_model):
    """One bad query or image in a @serve.batch gets its own Rejected; the others in the batch still get
    their vectors (the classes are called directly, without Serve)."""
    import numpy as np

    from imtext.model import TwoBranch
    from serve.encoders import ImageEncoder, TextEncoder
    from serve.uploads import Rejected

    text = object.__new__(TextEncoder.func_or_class)
    text.model = TwoBranch.load(tiny_model)
    known = next(w for w in text.model.vocab.words[2:] if w.isalpha())
    out = text._embed([f"a {known}", "zzqx blorf zzqx", "!!! ???", f"{known} zzqx", "\ud800 " + known])
    vec, unknown = out[0]
    assert vec.shape == (text.model.embed_dim,) and unknown == ([] if "a" in text.model.vocab else ["a"])
    assert isinstance(out[1], Rejected) and (out[1].status, out[1].code) == (400, "no_known_words")
    assert out[1].details == {"unknown_words": ["zzqx", "blorf"]}
    assert "not in the vocabulary: zzqx, blorf" in out[1].message
    assert isinstance(out[2], Rejected) and out[2].details == {"unknown_words": []}
    assert out[3][1] == ["zzqx"] and np.allclose(np.linalg.norm(out[3][0]), 1.0, atol=1e-5)
    assert not isinstance(out[4], Rejected)

    class Model:  # breaks on one particular image, like a transform that fails on one input
        def embed_images(self, images):
            if any(im.size == (13, 13) for im in images):
                raise RuntimeError("cannot transform this one")
            return np.ones((len(images), 4), np.float32)

    image = object.__new__(ImageEncoder.func_or_class)
    image.model, image.min_side = Model(), 128
    good, bad = _image_bytes((32, 24)), _image_bytes((13, 13))
    out = image._embed([good, bad, b"not an image", good])
    assert [type(o).__name__ for o in out] == ["ndarray", "Rejected", "Rejected", "ndarray"]
    assert (out[1].code, out[2].code) == ("bad_image", "not_an_image")


def test_call_answers_replica_refusals_and_full_queues():
    import asyncio

    from ray.serve.exceptions import BackPressureError

    from serve.errors import ApiError, Refusal, call

    class FakeResponse:
        def __init__(self, exc):
            self.exc = exc

        def __await__(self):
            async def body():
                raise self.exc

            return body().__await__()

        def cancel(self):
            pass

    class Wrapped(Exception):  # what a RayTaskError looks like: the replica's exception as `cause`
        def __init__(self, cause):
            super().__init__("remote")
            self.cause = cause

    async def run(exc):
        try:
            await call(FakeResponse(exc), 5.0, "index shard")
        except ApiError as e:
            return e

    refused = asyncio.run(run(Wrapped(Refusal(503, "index_changed", "changed on disk"))))
    assert (refused.status, refused.code, refused.message) == (503, "index_changed", "changed on disk")
    full = asyncio.run(run(BackPressureError(num_queued_requests=9, max_queued_requests=8)))
    assert (full.status, full.code) == (503, "unavailable")
    import pickle

    again = pickle.loads(pickle.dumps(Refusal(409, "x", "y")))  # Ray ships it back pickled
    assert (again.status, again.code, again.message) == (409, "x", "y")


def test_every_deployment_has_a_bounded_queue():
    from serve.encoders import ImageEncoder, TextEncoder
    from serve.ingress import SearchAPI
    from serve.shards import IndexShard

    for d in (SearchAPI, TextEncoder, ImageEncoder, IndexShard):
        assert d.max_ongoing_requests and 0 < d.max_queued_requests <= 4 * d.max_ongoing_requests, d.name


def test_search_deadline_answers_503():
    import asyncio
    from types import SimpleNamespace

    from serve.errors import ApiError
    from serve.ingress import SearchAPI

    within = SearchAPI.func_or_class._within_deadline  # called on a stand-in: no replica to build
    with pytest.raises(ApiError) as e:
        asyncio.run(within(SimpleNamespace(request_timeout_s=0.05), asyncio.sleep(5)))
    assert (e.value.status, e.value.code) == (503, "timeout")


def test_malformed_collections_are_imtext_errors(collections, tmp_path):
    from imtext.collection import read_meta

    for name, change in {
        "counts": lambda info: info.update(counts="many"),
        "files": lambda info: info.update(files=[1, 2]),
        "shards": lambda info: info.update(shards={"x": []}),
    }.items():
        bad = shutil.copytree(collections["B"], tmp_path / name)
        info = json.loads((bad / "collection.json").read_text())
        change(info)
        (bad / "collection.json").write_text(json.dumps(info))
        if name == "shards":  # a manifest whose shard list is a number
            m = json.loads((bad / "images" / "manifest.json").read_text())
            m["shards"] = 7
            (bad / "images" / "manifest.json").write_text(json.dumps(m))
        with pytest.raises(ImtextError):
            read_meta(bad)
    with pytest.raises(ImtextError, match="not a usable folder name"):
        read_meta("bad\0name")
    assert read_meta(collections["B"]).images.get(10**30) is None  # no int64 holds it: no row, no error


def test_reload_is_confined_to_the_index_root(collections, tmp_path):
    from serve.errors import ApiError
    from serve.swap import confine, open_collection

    root = collections["A"].parent
    assert confine("B", str(root)) == str(collections["B"].resolve())  # relative: from the root
    assert confine(str(collections["B"]), str(root)) == str(collections["B"].resolve())
    (root / "escape").symlink_to(tmp_path, target_is_directory=True)
    for outside in ("/etc", "../", "B/../../..", str(tmp_path), "escape"):
        with pytest.raises(ApiError) as e:
            confine(outside, str(root))
        assert (e.value.status, e.value.code) == (403, "outside_index_root"), outside
    (root / "escape").unlink()
    with pytest.raises(ApiError) as e:
        confine("B\0", str(root))
    assert e.value.status == 400
    fp = json.loads((collections["B"] / "collection.json").read_text())["model_fingerprint"]
    with pytest.raises(ApiError) as e:
        open_collection("/etc", fp, 2, str(root))
    assert e.value.status == 403


def test_images_are_served_only_from_the_image_roots_and_only_if_images(collections, synth_world, tmp_path):
    from imtext.collection import read_meta
    from serve.errors import ApiError
    from serve.ingress import image_media_type, read_image_file

    meta = read_meta(collections["A"])
    assert meta.image_roots == [str(synth_world.resolve())]  # recorded at build: the data source's folder
    row = meta.images.get(3)
    data, media = read_image_file(meta, 3, row["image_path"])
    assert data == Path(row["image_path"]).read_bytes() and media == "image/png"
    secret = tmp_path / "secret.png"  # named like an image, outside the roots
    secret.write_bytes(Path(row["image_path"]).read_bytes())
    link = synth_world / "images" / "link-to-outside.png"  # inside the roots, pointing out
    link.symlink_to(secret)
    not_image = synth_world / "notes.png"  # inside the roots, not an image
    not_image.write_text("root:x:0:0")
    try:
        for path in ("/etc/passwd", str(secret), str(link), str(not_image), "/no/such/file.png"):
            with pytest.raises(ApiError) as e:
                read_image_file(meta, 3, path)
            assert (e.value.status, e.value.code) == (404, "image_missing"), path
    finally:
        link.unlink()
        not_image.unlink()
    assert image_media_type(b"\xff\xd8\xff\xe0") == "image/jpeg"
    assert image_media_type(b"RIFF1234WEBPVP8 ") == "image/webp"
    assert image_media_type(b"<svg>") is None


def test_shard_replica_checks_the_version_it_loads_and_survives_a_vanished_folder(collections, tmp_path):
    import asyncio

    from imtext.collection.format import collection_version
    from serve.errors import Refusal
    from serve.shards import IndexShard

    folder = shutil.copytree(collections["B"], tmp_path / "B")
    fp = json.loads((folder / "collection.json").read_text())["model_fingerprint"]
    old = collection_version(folder)
    q = np.ones((1, json.loads((folder / "collection.json").read_text())["dim"]), np.float32)

    replica = IndexShard.func_or_class(0, str(folder), fp)
    scores, ids = asyncio.run(replica.search(str(folder), old, "images", q, 3))
    assert ids.shape == (1, 3)
    # the folder changes on disk (as `imtext index add` in place would): what is held keeps serving, but
    # a replica that has to load it (a restart) refuses to pass the new files off as the old version
    info = json.loads((folder / "collection.json").read_text())
    info["updated"] = "later"
    (folder / "collection.json").write_text(json.dumps(info))
    assert asyncio.run(replica.search(str(folder), old, "images", q, 3))[1].shape == (1, 3)
    restarted = IndexShard.func_or_class(0, str(folder), fp)
    with pytest.raises(Refusal) as e:
        asyncio.run(restarted.search(str(folder), old, "images", q, 3))
    assert (e.value.status, e.value.code) == (503, "index_changed")
    # a start-up folder that is gone: the replica still starts, and says what is missing when asked
    shutil.rmtree(folder)
    orphan = IndexShard.func_or_class(0, str(folder), fp)
    assert orphan.held() == []
    with pytest.raises(Refusal) as e:
        asyncio.run(orphan.search(str(folder), old, "images", q, 3))
    assert (e.value.status, e.value.code) == (503, "index_missing")
    b = str(collections["B"].resolve())
    assert asyncio.run(orphan.search(b, collection_version(b), "images", q, 3))[1].shape == (1, 3)


def _chunks(data: bytes, size: int = 64 * 1024):
    for i in range(0, len(data), size):
        yield data[i : i + size]


@pytest.mark.ray
def test_hostile_inputs_get_4xx_never_500(client, local, collections):
    _, col = local
    # text the server cannot encode (a lone surrogate, as JSON allows) is cleaned, not a 500
    raw = b'{"query": "a red circle \\ud800 left", "k": 3}'
    resp = client.post("/search/text", content=raw, headers={"content-type": "application/json"})
    assert resp.status_code == 200, resp.text
    assert resp.json()["query"] == "a red circle \ufffd left"
    # no known word: a clear 400 that lists the words; some unknown: 200 that lists them
    resp = client.post("/search/text", json={"query": "zzqx blorf", "k": 3})
    assert_error(resp, 400, "no_known_words")
    assert resp.json()["error"]["unknown_words"] == ["zzqx", "blorf"]
    body = client.post("/search/text", json={"query": "a red circle zzqx", "k": 3}).json()
    assert body["unknown_words"] == ["zzqx"] and len(body["results"]) == 3
    # ids out of any real range
    for bad in ("99999999999999999999999999", "-99999999999999999999", str(2**63), str(2**63 - 1)):
        assert_error(client.get(f"/images/{bad}"), 404, "not_found")
    # images over the aspect-ratio cap
    strip = _image_bytes((8000, 20))
    assert_error(
        client.post("/search/image", files={"file": ("s.png", strip, "image/png")}), 400, "bad_aspect_ratio"
    )
    # bodies counted as they stream: chunked (no Content-Length) JSON and uploads stop at the limit
    big_json = b'{"query": "' + b"a" * 200_000 + b'", "k": 3}'
    resp = client.post(
        "/search/text", content=_chunks(big_json), headers={"content-type": "application/json"}
    )
    assert "content-length" not in resp.request.headers
    assert_error(resp, 413, "body_too_large")
    boundary = "imtextboundary"
    upload = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n'
            "Content-Type: image/png\r\n\r\n"
        ).encode()
        + b"\0" * (11 * 2**20)
        + f"\r\n--{boundary}--\r\n".encode()
    )
    resp = client.post(
        "/search/image",
        content=_chunks(upload),
        headers={"content-type": f"multipart/form-data; boundary={boundary}"},
    )
    assert_error(resp, 413, "upload_too_large")
    assert_error(
        client.post("/admin/reload", json={"index_dir": "x" * 100_000}, headers={"Authorization": "x"}),
        413,
        "body_too_large",
    )
    # a malformed collection inside the root is a 400; a relative escape is a 403
    auth = {"Authorization": f"Bearer {TOKEN}"}
    bad = collections["A"].parent / "malformed"
    if not bad.exists():
        shutil.copytree(collections["B"], bad)
        info = json.loads((bad / "collection.json").read_text())
        info["counts"] = "lots"
        (bad / "collection.json").write_text(json.dumps(info))
    assert_error(client.post("/admin/reload", json={"index_dir": str(bad)}, headers=auth), 400, "bad_index")
    assert_error(
        client.post("/admin/reload", json={"index_dir": "../../../../etc"}, headers=auth),
        403,
        "outside_index_root",
    )
    assert client.post("/search/text", json={"query": "a red circle", "k": 3}).status_code == 200
