"""`imtext demo` end to end on a tiny setting, as a user runs it: every stage, the running API and page,
Ctrl-C stopping everything (no Ray process left behind), and a second run reusing what exists; a quiet
console (under 40 lines to "ready", Ray's own log only with --verbose) that still shows a real error."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest

from tests.conftest import free_port
from tests.logged_process import start_logged, wait_for_line

pytestmark = [pytest.mark.ray, pytest.mark.slow]
IMTEXT = str(Path(sys.executable).parent / "imtext")


def _start(workdir: Path, port: int, ui_port: int, *extra: str) -> tuple[subprocess.Popen, list[str]]:
    cmd = [
        IMTEXT,
        "demo",
        "--tiny",
        "--workdir",
        str(workdir),
        "--port",
        str(port),
        "--ui-port",
        str(ui_port),
    ]
    return start_logged([*cmd, *extra])


def _wait_for(lines: list[str], proc: subprocess.Popen, needle: str, timeout: float) -> None:
    try:
        wait_for_line(lines, proc, needle, timeout)
    except RuntimeError as e:
        pytest.fail(f"demo: {e}")


def _descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def test_demo_end_to_end_then_ctrl_c_then_reuse(tmp_path):
    workdir = tmp_path / "demo"
    port, ui_port = free_port(), free_port()
    started = time.time()
    proc, lines = _start(workdir, port, ui_port)
    _wait_for(lines, proc, "Ctrl-C stops everything", timeout=600)
    print(f"demo ready after {time.time() - started:.0f} s")
    out = "".join(lines)
    for stage in ("data", "train", "eval", "index"):
        assert stage in out
    assert "R@1" in out and "test " in out and "order " in out  # the R@K table, a row per split
    for artifact in (
        "synth/synth.json",
        "model/weights.safetensors",
        "model/curves.png",
        "index/collection.json",
    ):
        assert (workdir / artifact).is_file(), artifact

    # #16: one screen from start to "ready": our own lines (an epoch line each, a table of what was made,
    # where Ray's logs are), none of Ray's workers or Serve's (they are in Ray's log files)
    to_ready = lines[: next(i for i, line in enumerate(lines) if "ready after" in line) + 1]
    print(f"{len(to_ready)} lines from start to ready")
    assert len(to_ready) < 40, "".join(to_ready)
    assert re.search(r"epoch +1/2 ", out) and re.search(r"epoch +2/2 ", out) and "val rsum" in out
    assert "Ray's logs: " in out and "what the demo made" in out
    for noise in (
        "(TrainController",
        "(RayTrainWorker",
        "(ServeController",
        "(ProxyActor",
        "TrainingReport(",
    ):
        assert noise not in out, noise

    api = f"http://127.0.0.1:{port}"
    assert httpx.get(f"{api}/healthz", timeout=30).json()["status"] == "ok"
    info = httpx.get(f"{api}/info", timeout=30).json()
    query = info["examples"][0]
    hits = httpx.post(f"{api}/search/text", json={"query": query, "k": 5}, timeout=60).json()["results"]
    assert len(hits) == 5 and hits[0]["score"] >= hits[-1]["score"]
    assert httpx.get(f"http://127.0.0.1:{ui_port}/", timeout=30).status_code == 200

    family = _descendants(proc.pid)
    assert family, "the demo started no child processes (Ray?)"
    proc.send_signal(signal.SIGINT)  # what Ctrl-C sends
    assert proc.wait(timeout=120) in (0, 130)
    deadline = time.time() + 30
    while time.time() < deadline and any(
        p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in family
    ):
        time.sleep(1)
    left = [p for p in family if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert not left, f"processes left behind after Ctrl-C: {[(p.pid, p.name()) for p in left]}"

    # A second run reuses data, model and index, and --exit-after-ready makes it non-interactive;
    # --verbose brings Ray's own log (its workers', Serve's) back to the terminal.
    proc2, lines2 = _start(workdir, free_port(), free_port(), "--exit-after-ready", "--verbose")
    assert proc2.wait(timeout=600) == 0, "".join(lines2)[-4000:]
    time.sleep(0.5)
    out2 = "".join(lines2)
    assert out2.count("reusing what exists") >= 3
    assert "ready after" in out2
    assert "(ServeController" in out2 or "(ProxyActor" in out2, out2[-4000:]


def test_a_real_error_inside_ray_still_reaches_the_terminal(tiny_model, tmp_path):
    """The quiet console hides Ray's chatter, not failures: a photo that cannot be read, met by a Ray Data
    actor while indexing (log_to_driver is off), is named on the terminal and the demo exits non-zero.
    The data and a model are in place beforehand, so only the index stage runs (no training)."""
    import shutil

    from imtext.data import load_pairs
    from imtext.data.synth import generate

    workdir = tmp_path / "demo"
    world = generate(workdir / "synth", n_images=300, seed=0, order_pairs=30)  # what `demo --tiny` draws
    shutil.copytree(tiny_model, workdir / "model")
    pairs = load_pairs(f"synth:{world}")
    train_paths = [
        p for p, s in zip(pairs["image_path"].to_pylist(), pairs["split"].to_pylist()) if s == "train"
    ]
    bad = Path(train_paths[0])
    bad.write_bytes(b"this is not a picture")
    proc, lines = _start(workdir, free_port(), free_port(), "--no-serve")
    rc = proc.wait(timeout=600)
    time.sleep(0.5)
    out = "".join(lines)
    assert rc == 2, out[-4000:]  # a user's error: one line, no traceback (imtext.cli.main)
    assert "not a readable image" in out and bad.name in out, out[-4000:]
    assert "Traceback" not in out


def test_the_demo_reports_test_not_the_split_that_chose_the_epoch():
    """On real photos the demo's eval line is the test split's (flickr8k has one); only data without a test
    split (coco's train2017/val2017) falls back to val, and says so."""
    from imtext.cli.demo import eval_splits

    assert eval_splits(True, {"train", "val", "test", "order"}) == ["test", "order"]
    assert eval_splits(False, {"train", "val", "test"}) == ["test"]
    assert eval_splits(False, {"train", "val"}) == ["val"]
