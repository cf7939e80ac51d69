"""Remote storage: `train.storage_path`, `train.out` and `tune --storage` take URIs (s3://, gs://, file://) and
hand them to Ray and pyarrow as URIs; `Path("s3://b/runs")` would make a local folder named `s3:`."""

from __future__ import annotations

from pathlib import Path

import pytest

from imtext import storage
from imtext.config import Config
from imtext.errors import ImtextError
from imtext.model import MODEL_FILES, TwoBranch
from tests.conftest import tiny_config


def test_uris_stay_uris():
    assert storage.absolute("s3://bucket/runs/") == "s3://bucket/runs"
    assert storage.join("gs://bucket/tune", "search", "train_runs") == "gs://bucket/tune/search/train_runs"
    assert storage.split("s3://bucket/models/coco") == ("s3://bucket/models", "coco")
    assert storage.absolute("runs/model") == str(Path("runs/model").resolve())


def test_run_paths_of_uris_are_uris(tmp_path, monkeypatch):
    from imtext.train.ray_train import run_paths

    monkeypatch.chdir(tmp_path)
    cfg = Config().override(
        {"train.out": "s3://bucket/models/coco", "train.storage_path": "s3://bucket/runs"}
    )
    assert run_paths(cfg) == ("s3://bucket/runs", "coco")
    cfg = Config().override({"train.out": "gs://bucket/models/coco"})
    assert run_paths(cfg) == ("gs://bucket/models/ray_results", "coco")  # beside the model, as for folders
    assert not any(tmp_path.iterdir())  # no local `s3:` or `gs:` folder


def test_a_uri_out_needs_ray_train():
    with pytest.raises(ImtextError, match="needs Ray Train"):
        Config().override({"train.out": "s3://bucket/m", "train.workers": 0}).validate()


def test_upload_and_refuse_foreign_targets(tmp_path):
    from imtext.train.ray_train import refuse_foreign_target

    local = tmp_path / "model"
    local.mkdir()
    for name in (*MODEL_FILES, "metrics.json"):
        (local / name).write_text(name)
    uri = f"file://{tmp_path}/remote/model"
    refuse_foreign_target(uri)  # nothing there yet
    assert storage.upload_dir(local, uri, last=("config.yaml",)) == uri
    assert storage.list_names(uri) == sorted((*MODEL_FILES, "metrics.json"))
    refuse_foreign_target(uri)  # a model directory may be replaced
    (tmp_path / "documents").mkdir()
    (tmp_path / "documents" / "letter.txt").write_text("keep me")
    with pytest.raises(ImtextError, match="is not an imtext model directory"):
        refuse_foreign_target(f"file://{tmp_path}/documents")


@pytest.mark.ray
@pytest.mark.slow  # one short Ray Train run: ~30 s here
def test_training_with_file_uris_writes_checkpoints_and_model_where_they_say(
    ray_session, synth_world, tmp_path, monkeypatch
):
    """A Ray Train run whose storage_path and out are file:// URIs: the checkpoints land under the storage
    URI's folder, the model under the out URI's folder, and nothing lands in the working directory."""
    from imtext.train.ray_train import fit

    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    runs, models = tmp_path / "shared" / "runs", tmp_path / "shared" / "models"
    cfg = tiny_config(
        synth_world,
        f"file://{models}/tiny",
        **{
            "train.storage_path": f"file://{runs}",
            "train.workers": 1,
            "train.epochs": 1,
            "train.num_to_keep": 1,
            "data.max_train_pairs": 256,
            "text.hidden_dim": 64,
            "model.embed_dim": 32,
            "model.mlp_hidden": 0,
        },
    )
    result = fit(cfg)
    assert result.error is None
    checkpoints = sorted(p.name for p in (runs / "tiny").glob("checkpoint_*") if p.is_dir())
    assert len(checkpoints) == 1, sorted(p.name for p in runs.rglob("*"))[:20]
    assert (runs / "tiny" / checkpoints[0] / "weights.safetensors").is_file()
    assert sorted(p.name for p in (models / "tiny").iterdir()) == sorted(
        (*MODEL_FILES, "metrics.json", "curves.png")
    )
    assert TwoBranch.load(models / "tiny").embed_texts(["a red circle"]).shape == (1, 32)
    assert list(work.iterdir()) == []  # no `file:` folder, no ray_results in the job's working directory


@pytest.mark.ray
@pytest.mark.slow  # one short Tune search: ~30 s here
def test_tune_with_a_file_uri_storage_keeps_the_experiment_and_outputs_there(
    ray_session, synth_world, tmp_path, monkeypatch
):
    """`imtext tune --storage file://...`: the trials' checkpoints and Tune's state live under
    <storage>/<run folder name>, the outputs (results table, best.yaml, best_model) are copied there too,
    and nothing lands in the working directory but the local run folder asked for."""
    from tune.run import run_tune

    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    store = tmp_path / "shared" / "tune"
    base = tiny_config(
        synth_world,
        str(tmp_path / "unused"),
        **{"data.max_train_pairs": 256, "text.hidden_dim": 64, "model.embed_dim": 32, "model.mlp_hidden": 0},
    )
    run_tune(
        base,
        Path(__file__).resolve().parents[1] / "tune" / "spaces" / "smoke.yaml",
        trials=1,
        scheduler="none",
        overrides={"train.epochs": 1},
        concurrent=1,
        cpus_per_trial=1,
        run_dir=work / "search",
        storage=f"file://{store}",
        verbose=0,
        summary=False,
    )
    experiment = store / "search"
    assert list(experiment.glob("*/checkpoint_*/weights.safetensors")), sorted(
        str(p.relative_to(store)) for p in store.rglob("*")
    )[:20]
    for output in ("results.parquet", "best.yaml", "best_model/weights.safetensors"):
        assert (experiment / output).is_file(), output
    assert sorted(p.name for p in work.iterdir()) == ["search"]  # the local outputs, no file: folder
    assert not list((work / "search").glob("*/checkpoint_*"))  # the checkpoints are in the storage only
