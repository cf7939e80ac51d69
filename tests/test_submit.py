"""`imtext submit` against a real Ray head (with its job server) started on 127.0.0.1 by the test."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

from imtext.jobs import DEFAULT_EXCLUDES, job_entrypoint, model_location
from tests.ray_head import start_head

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
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    env.pop("RAY_ADDRESS", None)
    # Explicit: with a token in ~/.ray/auth_token (a local `ray.init` writes one), `ray start` would turn token
    # auth on for this 127.0.0.1-only head, and the job client here has no token.
    env["RAY_AUTH_MODE"] = "disabled"
    head = start_head(bin_dir / "ray", env, tmp_path / "ray-head.log", num_cpus=6)
    try:
        yield head.dashboard
    finally:
        head.stop()


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
