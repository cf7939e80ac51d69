"""Never delete what imtext did not write: every `--out` that is replaced whole refuses a folder (or file)
of another kind and leaves it byte-identical; the atomic folder swap never loses the previous version."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from imtext.atomic import atomic_dir, recover_interrupted_swap
from imtext.cli import main
from imtext.errors import ImtextError
from tests.conftest import tiny_config


def _documents(folder: Path) -> dict[str, bytes]:
    """A user's folder: what it holds, to compare after a refusal."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "thesis.txt").write_text("years of work")
    (folder / "photos").mkdir(exist_ok=True)
    (folder / "photos" / "a.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    return _snapshot(folder)


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_train_refuses_an_out_folder_it_did_not_write(synth_world, tmp_path, capsys):
    docs = tmp_path / "Documents"
    before = _documents(docs)
    argv = ["train", "--data", f"synth:{synth_world}", "--workers", "0", "--epochs", "1", "--out", str(docs)]
    assert main(argv) == 2
    assert "is not an imtext model directory; refusing to replace it" in capsys.readouterr().err
    assert _snapshot(docs) == before

    from imtext.train.ray_train import fit  # refuses before Ray starts

    with pytest.raises(ImtextError, match="not an imtext model directory"):
        fit(tiny_config(synth_world, docs, **{"train.workers": 1}))
    assert _snapshot(docs) == before


def test_train_never_removes_a_run_folder_ray_did_not_write(synth_world, tmp_path):
    from imtext.train.ray_train import fit

    storage = tmp_path / "storage"
    before = _documents(storage / "mine")
    cfg = tiny_config(
        synth_world, tmp_path / "model", **{"train.storage_path": str(storage), "train.name": "mine"}
    )
    with pytest.raises(ImtextError, match="not a Ray Train run folder"):
        fit(cfg)
    assert _snapshot(storage / "mine") == before
    with pytest.raises(ImtextError, match="plain folder name"):
        cfg.override({"train.name": "../../elsewhere"}).validate()


def test_features_refuse_a_file_they_did_not_write(synth_world, tmp_path):
    from imtext.data import load_pairs
    from imtext.image.features import compute_features

    target = tmp_path / "notes.parquet"
    target.write_text("not features")
    with pytest.raises(ImtextError, match="not an imtext features file"):
        compute_features(
            load_pairs(f"synth:{synth_world}", splits=["val"]),
            backbone="smallcnn",
            weights="none",
            image_size=64,
            out_path=target,
            progress=False,
        )
    assert target.read_text() == "not features"


def test_index_build_refuses_a_foreign_out(tiny_model, synth_world, tmp_path, capsys):
    docs = tmp_path / "Documents"
    before = _documents(docs)
    argv = [
        "index",
        "build",
        "--model",
        str(tiny_model),
        "--data",
        f"synth:{synth_world}",
        "--out",
        str(docs),
        "--no-ray",
    ]
    assert main(argv) == 2
    assert "not an imtext collection" in capsys.readouterr().err and _snapshot(docs) == before


def test_atomic_dir_puts_the_previous_version_back_when_the_swap_fails(tmp_path, monkeypatch):
    target = tmp_path / "artifact"
    target.mkdir()
    (target / "v").write_text("1")
    real_replace = os.replace
    calls = []

    def second_rename_fails(src, dst):
        calls.append((src, dst))
        if len(calls) == 2:
            raise OSError("disk full")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", second_rename_fails)
    with pytest.raises(OSError, match="disk full"):
        with atomic_dir(target) as tmp:
            (tmp / "v").write_text("2")
    monkeypatch.undo()
    assert (target / "v").read_text() == "1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["artifact"]  # no temporary or .old folder left


def test_an_interrupted_swap_is_recovered(tmp_path):
    target = tmp_path / "artifact"
    old = tmp_path / ".artifact.old"  # what a kill between atomic_dir's two renames leaves
    old.mkdir()
    (old / "v").write_text("1")
    assert recover_interrupted_swap(target) and (target / "v").read_text() == "1" and not old.exists()
    assert not recover_interrupted_swap(target)  # nothing to do the second time
    old.mkdir()
    (old / "v").write_text("0")
    with atomic_dir(target) as tmp:  # the next write recovers first, then replaces
        (tmp / "v").write_text("2")
    assert (target / "v").read_text() == "2" and not old.exists()
