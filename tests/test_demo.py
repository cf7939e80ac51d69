"""`imtext demo` end to end on a tiny setting, as a user runs it: every stage, the running API and page,
Ctrl-C stopping everything (no Ray process left behind), and a second run reusing what exists."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import psutil
import pytest

from tests.conftest import free_port

pytestmark = [pytest.mark.ray, pytest.mark.slow]
IMTEXT = str(Path(sys.executable).parent / "imtext")


def _start(workdir: Path, port: int, ui_port: int, *extra: str) -> tuple[subprocess.Popen, list[str]]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "160"}
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.Popen(
        [
            IMTEXT,
            "demo",
            "--tiny",
            "--workdir",
            str(workdir),
            "--port",
            str(port),
            "--ui-port",
            str(ui_port),
            *extra,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        start_new_session=True,
    )
    lines: list[str] = []

    def pump() -> None:
        for line in proc.stdout:
            lines.append(line)
            sys.stdout.write(line)

    threading.Thread(target=pump, daemon=True).start()
    return proc, lines


def _wait_for(lines: list[str], proc: subprocess.Popen, needle: str, timeout: float) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if any(needle in line for line in lines):
            return
        if proc.poll() is not None:
            time.sleep(0.5)
            pytest.fail(f"demo exited ({proc.returncode}) before {needle!r}:\n{''.join(lines)[-4000:]}")
        time.sleep(0.5)
    proc.kill()
    pytest.fail(f"no {needle!r} within {timeout} s:\n{''.join(lines)[-4000:]}")


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
    assert "R@1" in out and "test split" in out and "order split" in out  # the R@K tables
    for artifact in ("synth/synth.json", "model/weights.safetensors", "index/collection.json"):
        assert (workdir / artifact).is_file(), artifact

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

    # A second run reuses data, model and index, and --exit-after-ready makes it non-interactive.
    proc2, lines2 = _start(workdir, free_port(), free_port(), "--exit-after-ready")
    assert proc2.wait(timeout=600) == 0, "".join(lines2)[-4000:]
    time.sleep(0.5)
    out2 = "".join(lines2)
    assert out2.count("reusing what exists") >= 3
    assert "ready after" in out2
