"""Ray Tune: search spaces are checked against Config before anything runs, and a small ASHA search on the
synthetic world writes every output (table, best.yaml, best_model/, plot), resumes, and its best.yaml
retrains to the rsum its trial reported."""

from __future__ import annotations

import math
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import tiny_config

from imtext.config import Config
from imtext.errors import ImtextError
from tune.space import expand, load_space, param_space, space_from_dict

SPACES = Path(__file__).resolve().parents[1] / "tune" / "spaces"


# ---- spaces (no Ray needed) ------------------------------------------------------------------------


def test_shipped_spaces_load_and_paper_grid_has_45_cells():
    for name in ("default", "paper_grid", "smoke"):
        load_space(SPACES / f"{name}.yaml")
    grid = load_space(SPACES / "paper_grid.yaml")
    assert grid.has_grid and grid.grid_size == 5 * 3 * 3
    assert not load_space(SPACES / "default.yaml").has_grid


def test_weights_pseudo_key_expands_to_both_direction_weights():
    assert expand({"loss.weights": [1, 0.25], "loss.margin": 0.1}) == {
        "loss.margin": 0.1,
        "loss.i2t_weight": 1.0,
        "loss.t2i_weight": 0.25,
    }
    cfg = Config().override(expand({"loss.weights": [0.25, 1.0]}))
    assert (cfg.loss.i2t_weight, cfg.loss.t2i_weight) == (0.25, 1.0)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"params": {"loss.margn": {"uniform": [0.1, 0.2]}}}, "loss.margn"),
        ({"params": {"optim.lr": {"uniform": [0.1, 0.2]}}}, "unknown config key 'optim.lr'"),
        ({"params": {"loss.negatives": {"choice": ["all", "hardest-ish"]}}}, "hardest-ish"),
        ({"params": {"loss.margin": {"loguniform": [0.0, 0.5]}}}, "low > 0"),
        ({"params": {"loss.margin": {"uniform": [0.5, 0.1]}}}, "low must be below high"),
        ({"params": {"loss.margin": {"normal": [0.1, 0.2]}}}, "one of"),
        ({"params": {"loss.weights": {"grid": [[1, 1], [0, 0]]}}}, "both directions off"),
        ({"base": {"train.epochs": "many"}, "params": {"loss.margin": 0.2}}, "train.epochs must be int"),
        ({"params": {}}, "nothing to search"),
        ({"parms": {"loss.margin": 0.2}}, "unknown top-level"),
    ],
)
def test_bad_spaces_fail_with_a_clear_message(raw, message):
    with pytest.raises(ImtextError, match=message.replace("(", r"\(")):
        space_from_dict(raw, source="bad.yaml")


def test_param_space_maps_distributions_to_ray():
    from ray.tune.search.sample import Categorical, Float

    ps = param_space(load_space(SPACES / "default.yaml"))
    assert isinstance(ps["loss.margin"], Float) and isinstance(ps["text.model"], Categorical)
    assert ps["loss.margin"].lower == 0.05 and ps["loss.margin"].upper == 0.5
    grid = param_space(load_space(SPACES / "paper_grid.yaml"))
    assert grid["loss.weights"] == {"grid_search": [[1.0, 1.0], [1.0, 0.25], [0.25, 1.0]]}


def test_base_precedence_and_absolute_paths(tmp_path, monkeypatch):
    """defaults < the space's base: < command-line flags; relative data paths become absolute for trials."""
    import argparse

    from imtext.cli.config_flags import explicit_overrides
    from tune.run import resolve_base

    monkeypatch.chdir(tmp_path)
    smoke = load_space(SPACES / "smoke.yaml")
    base = Config().override({"data.spec": "synth:worlds/w1", "train.epochs": 9})
    cfg = resolve_base(base, smoke, 2.0, 0.0, 1, tmp_path / "run")
    assert cfg.train.epochs == 2 and cfg.loss.warmup_epochs == 0  # the space's base: wins over the config
    assert cfg.data.spec == f"synth:{tmp_path / 'worlds' / 'w1'}"
    assert cfg.train.cpus_per_worker == 2.0 and cfg.train.out == str(tmp_path / "run" / "best_retrain")
    args = argparse.Namespace(epochs=4, margin=None, overrides=["loss.warmup_epochs=1"])
    assert explicit_overrides(args) == ["train.epochs=4", "loss.warmup_epochs=1"]
    cfg = resolve_base(base, smoke, 1.0, 0.0, 2, tmp_path / "run", explicit_overrides(args))
    assert (cfg.train.epochs, cfg.loss.warmup_epochs) == (4, 1)  # explicit flags win over the space
    assert cfg.train.workers == 2 and cfg.train.cpus_per_worker == 0.5


def test_optuna_refuses_grid_spaces_before_writing_anything(tmp_path):
    from tune.run import run_tune

    with pytest.raises(ImtextError, match="optuna cannot walk grid"):
        run_tune(Config(), SPACES / "paper_grid.yaml", search="optuna", run_dir=tmp_path / "run")
    assert not (tmp_path / "run").exists()


# ---- one small search ---------------------------------------------------------------------------------


@pytest.mark.slow
def test_asha_search_writes_outputs_resumes_and_best_yaml_retrains(ray_session, synth_world, tmp_path):
    from imtext.model import TwoBranch, read_config
    from imtext.train.loop import train_local
    from tune.run import run_tune

    base = tiny_config(synth_world, tmp_path / "unused", **{"data.max_train_pairs": 1000, "train.seed": 3})
    run_dir = tmp_path / "run"
    start = time.perf_counter()
    run_tune(
        base,
        SPACES / "smoke.yaml",
        trials=4,
        scheduler="asha",
        concurrent=2,
        cpus_per_trial=1,
        run_dir=run_dir,
        verbose=0,
    )
    print(f"search: {time.perf_counter() - start:.1f} s")

    frame = pd.read_parquet(run_dir / "results.parquet")
    assert len(frame) == 4 and len(pd.read_csv(run_dir / "results.csv")) == 4
    for col in (
        "trial_id",
        "status",
        "loss.margin",
        "loss.negatives",
        "epochs",
        "best_epoch",
        "best_rsum",
        "best_i2t_r1",
        "best_t2i_medr",
        "final_rsum",
        "checkpoint",
    ):
        assert col in frame.columns, col
    assert frame["loss.margin"].between(0.05, 0.5).all()
    assert set(frame["loss.negatives"]) <= {"all", "hardest", "semi-hard"}
    assert set(frame["status"]) <= {"done", "stopped"}
    assert frame["epochs"].between(1, 2).all() and (frame["epochs"] == 2).any()
    # rsum is the sum of the six recalls, at the best epoch of each trial
    six = sum(frame[f"best_{d}_r{k}"] for d in ("i2t", "t2i") for k in (1, 5, 10))
    assert (six - frame["best_rsum"]).abs().max() < 1e-6

    best = frame.loc[frame["best_rsum"].idxmax()]
    cfg = Config.load(run_dir / "best.yaml")
    assert (
        cfg.loss.margin == pytest.approx(best["loss.margin"]) and cfg.loss.negatives == best["loss.negatives"]
    )
    assert cfg.data.spec == f"synth:{synth_world.resolve()}" and cfg.train.epochs == 2
    assert read_config(run_dir / "best_model").loss.negatives == best["loss.negatives"]
    TwoBranch.load(run_dir / "best_model")
    assert not (run_dir / "best_model" / "train_state.pt").exists()
    assert (run_dir / "plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # a finished search keeps its checkpoints' weights but drops their optimiser state
    assert len(list(run_dir.glob("*/checkpoint_*/weights.safetensors"))) >= 4
    assert not list(run_dir.glob("*/checkpoint_*/train_state.pt"))

    # --resume on a finished run: restores the experiment, reruns nothing, writes the same table again
    (run_dir / "results.parquet").unlink()
    run_tune(resume=run_dir, verbose=0, summary=False)
    again = pd.read_parquet(run_dir / "results.parquet")
    assert sorted(again["trial_id"]) == sorted(frame["trial_id"])
    assert again["best_rsum"].max() == pytest.approx(frame["best_rsum"].max())

    # best.yaml retrains in-process (same seed, one thread) to the trial's reported rsum
    torch.set_num_threads(1)
    cfg.train.out = str(tmp_path / "retrain")
    _, history = train_local(cfg)
    retrained = history[int(best["best_epoch"])]["rsum"]
    print(f"trial best rsum {best['best_rsum']:.1f}, retrained from best.yaml {retrained:.1f}")
    assert math.isfinite(retrained) and abs(retrained - best["best_rsum"]) <= 10.0
