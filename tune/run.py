"""`imtext tune`: Ray Tune over a YAML search space with the project's one train loop.

A trial is either `imtext.train.trial.run_single_worker_trial` (one worker, a plain function trainable) or, with
--workers-per-trial > 1, a driver function that runs a TorchTrainer and forwards its reports to Tune with
TuneReportCallback (Ray 2.60's pattern; `Tuner(trainer)` no longer works). The run folder is the Tune
experiment folder; tune/results.py writes the tables, best.yaml, best_model/ and plot.png into it.

With `storage` (a URI such as s3://bucket/tune, or a folder every node mounts), the experiment (trial
checkpoints, Train runs, Tune's state) lives in `<storage>/<run folder name>` instead, and the outputs written
into the local run folder are copied there at the end.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, get_args

from imtext import storage as store
from imtext.atomic import write_json
from imtext.config import Config, SelectionMetric, TuneScheduler, TuneSearch
from imtext.errors import ImtextError
from tune.space import Space, expand, load_space, param_space, space_from_dict

SPEC_FILE = "imtext_tune.json"  # what --resume needs to rebuild the trainable and write the outputs
METRICS = get_args(SelectionMetric)


# ---- trainables (module level, so Ray can import them on its workers) -------------------------------


def single_worker_trial(config: dict[str, Any], base: dict[str, Any]) -> None:
    """One trial in one process: the sampled params on top of the resolved base config."""
    from imtext.train.trial import TrialSpec, run_single_worker_trial

    run_single_worker_trial(TrialSpec(base, expand(config)))


def multi_worker_trial(config: dict[str, Any], base: dict[str, Any], storage: str, metric: str) -> None:
    """One trial as a Ray Train run on train.workers workers; TuneReportCallback forwards each report
    (checkpoints stay in the Train run's storage; their paths arrive as `checkpoint_path`)."""
    import ray.tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from imtext.train.ray_train import build_trainer
    from imtext.train.trial import TrialSpec

    cfg = TrialSpec(base, expand(config)).config()
    # The trial id is stable across a restore, so a resumed trial finds its Train run again.
    trainer = build_trainer(
        cfg,
        f"train_{ray.tune.get_context().get_trial_id()}",
        storage,
        callbacks=[TuneReportCallback()],
        num_to_keep=1,
        metric=metric,
    )
    result = trainer.fit()
    if result.error:
        raise result.error


# ---- building the search ---------------------------------------------------------------------------


def resolve_base(
    base_cfg: Config,
    space: Space,
    cpus_per_trial: float,
    gpus_per_trial: float,
    workers_per_trial: int,
    run_dir: Path,
    overrides: dict[str, Any] | list[str] | None = None,
) -> Config:
    """Every trial's starting config: the user's config, the space's fixed overrides, then `overrides`
    (the command line's explicit flags win over the space file), then the trial's resources."""
    cfg = base_cfg.override(expand(space.base)).override(overrides or {})
    workers = max(1, workers_per_trial)
    cfg.train.cpus_per_worker = cpus_per_trial / workers
    cfg.train.use_gpu = gpus_per_trial > 0
    if workers > 1:
        cfg.train.workers = workers
    cfg.train.out = str(run_dir / "best_retrain")  # where `imtext train --config best.yaml` writes
    return cfg.with_absolute_paths().validate()


def experiment_path(spec: dict[str, Any]) -> str:
    """Where Tune keeps the experiment: `<storage>/<run folder name>`, or the run folder itself."""
    if spec.get("storage"):
        return store.join(spec["storage"], Path(spec["run_dir"]).name)
    return spec["run_dir"]


def _trainable(spec: dict[str, Any]):
    """The wrapped trainable for a spec (identical on a fresh start and on --resume)."""
    from ray import tune as ray_tune

    base = spec["base"]
    workers = spec["workers_per_trial"]
    if workers > 1:
        fn = ray_tune.with_parameters(
            multi_worker_trial,
            base=base,
            storage=store.join(experiment_path(spec), "train_runs"),
            metric=spec["metric"],
        )
        # The driver only waits on the Train run; the workers ask for their own CPUs (and GPUs).
        return ray_tune.with_resources(fn, {"cpu": 0.1})
    fn = ray_tune.with_parameters(single_worker_trial, base=base)
    return ray_tune.with_resources(fn, {"cpu": spec["cpus_per_trial"], "gpu": spec["gpus_per_trial"]})


def _scheduler(spec: dict[str, Any]):
    if spec["scheduler"] == "none":
        return None
    from ray.tune.schedulers import ASHAScheduler

    base = Config.from_dict(spec["base"])
    max_t = base.train.epochs
    asha = spec["space"].get("asha", {})
    # Hardest negatives plateau until the warm-up (sum over negatives) ends: never judge a trial before.
    grace = int(asha.get("grace_period", base.loss.warmup_epochs + 1))
    if grace < base.loss.warmup_epochs + 1:
        print(
            f"note: ASHA grace_period {grace} is shorter than loss.warmup_epochs + 1; "
            "hardest-negative trials may be stopped before they improve"
        )
    return ASHAScheduler(
        time_attr="training_iteration",
        max_t=max_t,
        grace_period=max(1, min(grace, max_t)),
        reduction_factor=float(asha.get("reduction_factor", 2)),
    )


def _searcher(spec: dict[str, Any], space: Space):
    if spec["search"] == "random":
        return None
    if space.has_grid:
        raise ImtextError(
            f"--search optuna cannot walk grid params in {space.source}; use --search random, "
            "or write them as {choice: [...]}"
        )
    try:
        from ray.tune.search.optuna import OptunaSearch

        return OptunaSearch(seed=Config.from_dict(spec["base"]).train.seed)
    except (ImportError, AssertionError) as e:
        raise ImtextError(f"--search optuna needs a working optuna (pip install 'optuna>=3'): {e}") from None


def run_tune(
    base_cfg: Config | None = None,
    space_path: str | Path | Space = "tune/spaces/default.yaml",
    trials: int = 8,
    scheduler: str = "asha",
    search: str = "random",
    metric: str = "rsum",
    run_dir: str | Path = "runs/tune",
    concurrent: int = 2,
    cpus_per_trial: float = 1.0,
    gpus_per_trial: float = 0.0,
    workers_per_trial: int = 1,
    resume: str | Path | None = None,
    address: str | None = None,
    verbose: int = 1,
    summary: bool = True,
    overrides: dict[str, Any] | list[str] | None = None,
    storage: str | None = None,
):
    """Run (or with `resume=RUN_DIR` continue) a search; write the outputs into the run folder.
    `storage`: a URI or shared folder for the experiment (see the module docstring); default the run folder.

    Precedence: base_cfg < the space's `base:` < `overrides` < the sampled params.
    Returns the ResultGrid. Outputs: results.parquet/.csv, best.yaml, best_model/, plot.png.
    """
    from ray import tune as ray_tune

    from imtext.ray_setup import ensure_ray
    from tune.results import write_outputs

    if resume:
        run_dir = Path(resume).expanduser().resolve()
        spec_path = run_dir / SPEC_FILE
        if not spec_path.is_file():
            raise ImtextError(
                f"nothing to resume: {run_dir} has no {SPEC_FILE} (not an `imtext tune` run folder)"
            )
        spec = json.loads(spec_path.read_text())
        spec["run_dir"] = str(run_dir)  # the folder may have moved since
        space = space_from_dict(spec["space"], source=spec["space_source"])
    else:
        for flag, value, choices in (
            ("--metric", metric, METRICS),
            ("--scheduler", scheduler, get_args(TuneScheduler)),
            ("--search", search, get_args(TuneSearch)),
        ):
            if value not in choices:
                raise ImtextError(f"{flag} {value!r}; choose one of {', '.join(choices)}")
        if trials < 1 or concurrent < 1 or workers_per_trial < 1:
            raise ImtextError("--trials, --concurrent and --workers-per-trial must be at least 1")
        if cpus_per_trial <= 0:
            raise ImtextError("--cpus-per-trial must be > 0")
        run_dir = Path(run_dir).expanduser().resolve()
        if run_dir.exists() and any(run_dir.iterdir()):
            raise ImtextError(
                f"{run_dir} already holds a run; continue it with --resume {run_dir}, or choose another --run-dir"
            )
        space = space_path if isinstance(space_path, Space) else load_space(space_path)
        base = resolve_base(
            base_cfg or Config(), space, cpus_per_trial, gpus_per_trial, workers_per_trial, run_dir, overrides
        )
        spec = {
            "base": base.to_dict(),
            "space": space.to_dict(),
            "space_source": space.source or "<api>",
            "trials": trials,
            "scheduler": scheduler,
            "search": search,
            "metric": metric,
            "run_dir": str(run_dir),
            "concurrent": concurrent,
            "cpus_per_trial": cpus_per_trial,
            "gpus_per_trial": gpus_per_trial,
            "workers_per_trial": workers_per_trial,
            "storage": store.absolute(storage) if storage else "",
        }
        searcher = _searcher(spec, space)  # fail on optuna + grid before anything is written
        write_json(run_dir / SPEC_FILE, spec)

    # Every epoch checkpoints and num_to_keep=1 forces a state snapshot each time; on small data that
    # is intended, not a bottleneck worth a warning per epoch.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    ensure_ray(address)
    trainable = _trainable(spec)
    if resume:
        print(f"resuming the search in {run_dir}")
        tuner = ray_tune.Tuner.restore(experiment_path(spec), trainable=trainable, resume_errored=True)
    else:
        tuner = ray_tune.Tuner(
            trainable,
            param_space=param_space(space),
            tune_config=ray_tune.TuneConfig(
                metric=metric,
                mode="max",
                num_samples=trials,
                max_concurrent_trials=concurrent,
                scheduler=_scheduler(spec),
                search_alg=searcher,
            ),
            run_config=ray_tune.RunConfig(
                name=run_dir.name,
                storage_path=spec["storage"] or str(run_dir.parent),
                checkpoint_config=ray_tune.CheckpointConfig(
                    num_to_keep=1, checkpoint_score_attribute=metric, checkpoint_score_order="max"
                ),
                failure_config=ray_tune.FailureConfig(
                    max_failures=Config.from_dict(spec["base"]).train.max_failures
                ),
                verbose=verbose,
            ),
        )
    grid = tuner.fit()
    left = unfinished(grid, spec, space)
    hint = f"continue it with: imtext tune --resume {run_dir}"
    try:
        write_outputs(grid, spec, space, summary=summary)
    except ImtextError:
        if not left:
            raise
        raise ImtextError(f"the search was interrupted before any trial finished an epoch; {hint}") from None
    if spec.get("storage"):
        print(f"outputs copied to {store.upload_dir(run_dir, experiment_path(spec))}")
    if left:
        print(
            f"the search was interrupted with {left} trial(s) unfinished; the outputs cover what ran so far; {hint}"
        )
    elif not grid.num_errors and not store.is_uri(experiment_path(spec)):
        prune_optimizer_state(Path(experiment_path(spec)))
    return grid


def prune_optimizer_state(run_dir: Path) -> int:
    """Once every trial has ended, drop the optimiser state from the trial checkpoints: only a trial that
    resumes needs it, and it is two thirds of a checkpoint (7 of the 12 GB the 90 trials of
    bench/paper_experiments.py left).
    Returns the number of files removed."""
    from imtext.train.loop import TRAIN_STATE_FILE

    files = [
        *run_dir.glob(f"*/checkpoint_*/{TRAIN_STATE_FILE}"),
        *run_dir.glob(f"train_runs/*/checkpoint_*/{TRAIN_STATE_FILE}"),
    ]
    for f in files:
        f.unlink(missing_ok=True)
    return len(files)


def unfinished(grid, spec: dict[str, Any], space: Space) -> int:
    """Trials the search still owes (not started, or cut off by an interrupt); 0 when it is complete."""
    expected = spec["trials"] * space.grid_size
    return max(0, expected - grid.num_terminated - grid.num_errors)
