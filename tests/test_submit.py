"""`imtext submit`'s pieces: the job's entrypoint, the model line it reports, and what it ships. Submitting to
a real head, as typed, is tests/test_wheel_submit.py's (from the wheel, to its own head) and
tests/test_multinode.py's (to a two-node cluster, losing a node)."""

from __future__ import annotations

from pathlib import Path

from imtext.jobs import DEFAULT_EXCLUDES, job_entrypoint, model_location


def test_entrypoint_and_model_line():
    assert job_entrypoint(["train", "--data", "synth:/d w"]) == "imtext train --data 'synth:/d w'"
    assert job_entrypoint(["python", "x.py"]) == "python x.py"
    assert model_location("epoch 0\nmodel directory: /a/b\n") == "/a/b"
    assert model_location("nothing here") is None


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
