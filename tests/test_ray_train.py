"""Ray Train: 2 workers with checkpoints, and resume of an interrupted run. These share the session's local
Ray (each TorchTrainer run still costs ~30 s here). Recovery from a failure mid-run (a node lost with its
worker, restored from the last checkpoint) is tests/test_multinode.py's, on a real two-node cluster."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from imtext.model import TwoBranch
from tests.conftest import tiny_config

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def _cfg(world, out, **kw):
    base = {"data.max_train_pairs": 768, "train.batch_size": 64, "train.cpus_per_worker": 1.0}
    base.update(kw)
    return tiny_config(world, out, **base)


def _check_curves(model_dir: Path) -> None:
    """curves.png (#16) is a real picture: three panels side by side, not an empty canvas."""
    from PIL import Image

    with Image.open(model_dir / "curves.png") as im:
        im.load()
        assert im.format == "PNG" and im.width > 2 * im.height > 200
        assert len(set(im.convert("L").getdata())) > 10  # lines and text, not a blank image


def test_in_process_run_writes_curves_next_to_metrics(tiny_model):
    """train_local (the shared `tiny_model` run) draws its history too."""
    history = json.loads((tiny_model / "metrics.json").read_text())["history"]
    assert len(history) >= 2
    _check_curves(tiny_model)


def _epochs(model_dir: Path) -> list[int]:
    history = json.loads((model_dir / "metrics.json").read_text())["history"]
    return [int(row["epoch"]) for row in history]


def test_two_workers_checkpoint_export_and_resume(ray_session, synth_world, tmp_path, monkeypatch):
    from imtext.train.ray_train import fit, run_paths

    # Relative paths, as the README's `imtext train --data synth:data/synth` gives them: the workers run in
    # Ray's own working folders, so fit() must hand them absolute ones.
    (tmp_path / "data").symlink_to(synth_world, target_is_directory=True)
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "model"
    cfg = _cfg(Path("data"), out, **{"train.workers": 2, "train.epochs": 2, "train.num_to_keep": 2})
    seen: list[dict] = []
    result = fit(cfg, on_epoch=seen.append)  # what `imtext train` prints a line of, as each epoch ends
    assert result.error is None
    assert [int(m["epoch"]) for m in seen] == [0, 1] and all("rsum" in m and "loss" in m for m in seen)
    model = TwoBranch.load(out)  # the best checkpoint, in the model-artifact format
    assert sorted(p.name for p in out.iterdir()) == [
        "config.yaml",
        "curves.png",
        "metrics.json",
        "vocab.json",
        "weights.safetensors",
    ]
    _check_curves(out)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["best"]["rsum"] == max(row["rsum"] for row in metrics["history"])
    assert model.embed_texts(["a red circle"]).shape == (1, 64)
    storage, name = run_paths(cfg)
    checkpoints = [p for p in (Path(storage) / name).glob("checkpoint_*") if p.is_dir()]
    assert 1 <= len(checkpoints) <= 2  # num_to_keep

    # Resume: the same run continues from its last checkpoint (optimizer and scheduler state included)
    resumed = fit(cfg.override({"train.epochs": 3}), resume=True)
    assert resumed.error is None
    assert int(resumed.metrics["epoch"]) == 2
    assert int(resumed.metrics["start_epoch"]) == 2  # continued after epoch 1, did not start over
    assert sorted(_epochs(out)) == [1, 2]  # the two kept checkpoints (num_to_keep=2) span both runs
