"""`imtext submit` against a real Ray head (with its job server) started on 127.0.0.1 by the test."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from imtext.jobs import DEFAULT_EXCLUDES, job_entrypoint, model_location
from tests.conftest import free_port

pytestmark = pytest.mark.ray
REPO = Path(__file__).resolve().parents[1]


def test_entrypoint_and_model_line():
    assert job_entrypoint(["train", "--data", "synth:/d w"]) == "imtext train --data 'synth:/d w'"
    assert job_entrypoint(["python", "x.py"]) == "python x.py"
    assert model_location("epoch 0\nmodel directory: /a/b\n") == "/a/b"
    assert model_location("nothing here") is None


@pytest.fixture
def ray_head(tmp_path):
    """A separate single-node cluster with a dashboard/job server, stopped (with all its processes) after."""
    bin_dir = Path(sys.executable).parent
    dash = free_port()
    cmd = [
        str(bin_dir / "ray"),
        "start",
        "--head",
        "--block",
        f"--port={free_port()}",
        "--node-ip-address=127.0.0.1",
        "--dashboard-host=127.0.0.1",
        f"--dashboard-port={dash}",
        f"--dashboard-agent-listen-port={free_port()}",
        f"--ray-client-server-port={free_port()}",
        f"--min-worker-port={20000}",
        f"--max-worker-port={20999}",
        "--num-cpus=6",
        "--include-dashboard=true",
    ]
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    env.pop("RAY_ADDRESS", None)
    log = open(tmp_path / "ray-head.log", "w")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    address = f"http://127.0.0.1:{dash}"
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                if httpx.get(f"{address}/api/version", timeout=2).status_code < 500:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None:
                pytest.fail(f"ray start exited: {(tmp_path / 'ray-head.log').read_text()[-2000:]}")
            time.sleep(1)
        else:
            pytest.fail("the Ray head's job server did not come up in 120 s")
        yield address
    finally:
        proc.send_signal(signal.SIGTERM)  # `ray start --block` stops the processes it started
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()


def test_excludes_keep_every_package_file_and_drop_the_projects_data():
    """Ray's own matcher over the checkout: every file of the packages ships, the root-level data and runs
    folders do not (an unanchored `data` once dropped imtext/data/ on clusters with imtext installed)."""
    from ray._private.runtime_env.packaging import _get_excludes  # the matcher `ray job submit` uses; private

    root = Path(__file__).resolve().parents[1]
    excluded = _get_excludes(root, DEFAULT_EXCLUDES)
    for package in ("imtext", "serve", "tune", "ui"):
        for path in (root / package).rglob("*.py"):
            assert not excluded(path), f"{path.relative_to(root)} would not ship"
    assert excluded(root / "data" / "coco" / "x.jpg") and excluded(root / "runs" / "model" / "a.safetensors")
    assert excluded(root / ".venv" / "bin" / "python")


@pytest.mark.slow
def test_submit_training_job_to_a_real_head(ray_head, synth_world, tmp_path, capsys):
    from imtext.jobs import submit

    out = tmp_path / "job-model"
    args = [
        "train",
        "--data",
        f"synth:{synth_world}",
        "--workers",
        "1",
        "--epochs",
        "1",
        "--batch-size",
        "64",
        "--out",
        str(out),
        "--set",
        "data.max_train_pairs=256",
        "--set",
        "text.hidden_dim=64",
        "--set",
        "model.embed_dim=32",
        "--set",
        "model.mlp_hidden=0",
    ]
    if not shutil.which("imtext", path=str(Path(sys.executable).parent)):
        pytest.fail("the imtext console script is not installed beside this Python")
    code = submit(args, address=ray_head, working_dir=REPO, submission_id=f"imtext-test-{os.getpid()}")
    printed = capsys.readouterr().out
    print(printed[-3000:])
    assert code == 0
    assert f"submitted job imtext-test-{os.getpid()}" in printed
    assert f"the model landed at {out}" in printed
    assert (out / "weights.safetensors").is_file()
