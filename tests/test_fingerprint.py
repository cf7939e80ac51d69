"""The model fingerprint (#13 item 6) covers what decides an embedding -- the weights, the vocabulary and
every text / image / model setting that changes one -- so an index built by a model is refused once any of
them changed, and kept when only a training setting did. Also the model directory's own files: an empty
config.yaml is an error, and atomic writes never touch the process's umask."""

from __future__ import annotations

import json
import os
import shutil
import threading
from pathlib import Path

import pytest
import yaml

from imtext.errors import ImtextError


@pytest.fixture(scope="module")
def built(tiny_model, synth_world, tmp_path_factory) -> Path:
    from imtext.collection import build_collection

    out = tmp_path_factory.mktemp("fp") / "index"
    return build_collection(
        tiny_model, f"synth:{synth_world}", out, shards=1, splits=["test"], use_ray=False, progress=False
    )


def _variant(tiny_model: Path, tmp_path: Path, edit) -> Path:
    """A copy of the model directory with one file edited by `edit(folder)`."""
    folder = Path(shutil.copytree(tiny_model, tmp_path / "variant"))
    edit(folder)
    return folder


def _set(section: str, key: str, value):
    def edit(folder: Path) -> None:
        raw = yaml.safe_load((folder / "config.yaml").read_text())
        raw[section][key] = value
        (folder / "config.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))

    return edit


def _vocab(folder: Path) -> None:
    raw = json.loads((folder / "vocab.json").read_text())
    raw["words"][0], raw["words"][1] = raw["words"][1], raw["words"][0]  # same size, two ids swapped
    (folder / "vocab.json").write_text(json.dumps(raw))


def _fingerprint(folder: Path) -> str:
    from imtext.model import TwoBranch

    return TwoBranch.load(folder).fingerprint


def test_fingerprint_is_stable_across_loads(tiny_model):
    assert _fingerprint(tiny_model) == _fingerprint(tiny_model)


@pytest.mark.parametrize(
    "what, edit",
    [
        ("vocab.json", _vocab),
        ("text.max_len", _set("text", "max_len", 3)),
        ("text.weighting", _set("text", "weighting", "counts")),
        ("image.image_size", _set("image", "image_size", 48)),
    ],
)
def test_a_changed_vocabulary_or_embedding_setting_refuses_the_old_index(
    tiny_model, built, tmp_path, what, edit
):
    from imtext.collection import ModelMismatch, read_meta

    variant = _variant(tiny_model, tmp_path, edit)
    fp = _fingerprint(variant)
    assert fp != _fingerprint(tiny_model), what
    with pytest.raises(ModelMismatch, match="another space"):
        read_meta(built, model_fingerprint=fp)


@pytest.mark.parametrize(
    "what, edit",
    [
        ("train.epochs", _set("train", "epochs", 99)),
        ("train.lr", _set("train", "lr", 0.5)),
        ("loss.margin", _set("loss", "margin", 0.9)),
        ("model.dropout", _set("model", "dropout", 0.5)),
        ("text.min_count", _set("text", "min_count", 7)),
        ("image.finetune", _set("image", "finetune", False)),
        ("data.spec", _set("data", "spec", "synth:elsewhere")),
    ],
)
def test_a_changed_training_setting_keeps_the_index(tiny_model, built, tmp_path, what, edit):
    from imtext.collection import read_meta

    variant = _variant(tiny_model, tmp_path, edit)
    assert _fingerprint(variant) == _fingerprint(tiny_model), what
    read_meta(built, model_fingerprint=_fingerprint(variant))  # accepted


# ---- the model directory's files ---------------------------------------------------------------------


@pytest.mark.parametrize("content", ["", "\n\n", "# only a comment\n"])
def test_an_empty_config_yaml_is_an_error_not_the_defaults(tmp_path, content):
    from imtext.config import Config

    path = tmp_path / "config.yaml"
    path.write_text(content)
    with pytest.raises(ImtextError, match="is empty"):
        Config.load(path)


def test_atomic_writes_never_change_the_process_umask(tmp_path, monkeypatch):
    """The published mode follows the umask, read without os.umask (which would change it for every thread
    for a moment)."""
    from imtext import atomic

    calls = []
    real_umask = os.umask
    monkeypatch.setattr(os, "umask", lambda m: calls.append(m) or real_umask(m))
    old = real_umask(0o027)
    try:
        atomic.write_text(tmp_path / "f.txt", "x")
        with atomic.atomic_dir(tmp_path / "d") as d:
            (d / "g").write_text("y")
        seen = []
        stop = threading.Event()

        def watch():  # another thread sees the umask unchanged throughout
            while not stop.is_set():
                seen.append(atomic._proc_umask())

        t = threading.Thread(target=watch)
        t.start()
        for i in range(50):
            atomic.write_text(tmp_path / f"h{i}", "z")
        stop.set()
        t.join()
    finally:
        real_umask(old)
    assert calls == []
    assert (tmp_path / "f.txt").stat().st_mode & 0o777 == 0o640
    assert (tmp_path / "d").stat().st_mode & 0o777 == 0o750
    assert seen and set(seen) <= {0o027}
