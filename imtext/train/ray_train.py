"""Ray Train wiring: `train_func` on N workers under TorchTrainer, the best k checkpoints kept by validation
rsum, restore after worker failures, resume of an interrupted run, and the best checkpoint copied out as the
model directory."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from imtext.atomic import atomic_dir, refuse_foreign, write_json
from imtext.config import Config
from imtext.errors import ImtextError
from imtext.model import refuse_foreign_out
from imtext.ray_setup import ensure_ray
from imtext.train.loop import BEST_METRIC, TRAIN_STATE_FILE, train_func

RUN_MARKER = ".validate_storage_marker"  # Ray Train writes it first into every run folder


def run_paths(cfg: Config) -> tuple[str, str]:
    """(storage_path, name) of the Ray Train run behind `train.out`; a rerun with both restores it."""
    out = Path(cfg.train.out).resolve()
    storage = Path(cfg.train.storage_path).resolve() if cfg.train.storage_path else out.parent / "ray_results"
    return str(storage), cfg.train.name or out.name


def fit(cfg: Config, resume: bool = False, address: str | None = None, callbacks: list | None = None):
    """Run training under TorchTrainer and write the best checkpoint to `train.out`. Returns the Result."""
    cfg = cfg.validate().with_absolute_paths()  # the workers run in Ray's own working folders
    if cfg.train.workers < 1:
        raise ImtextError(
            "Ray Train needs train.workers >= 1 (use --workers 0 for the plain in-process loop)"
        )
    refuse_foreign_out(cfg.train.out)  # before training, not after
    storage, name = run_paths(cfg)
    run_dir = Path(storage) / name
    if run_dir.exists() and not resume:
        # a fresh run; `--resume` continues the old one instead. Only a Ray Train run folder is removed.
        refuse_foreign(
            run_dir, (run_dir / RUN_MARKER).exists(), "a Ray Train run folder", "--out or train.name"
        )
        shutil.rmtree(run_dir)
    elif resume and not run_dir.exists():
        raise ImtextError(f"nothing to resume: no Ray Train run at {run_dir}")
    ensure_ray(address)
    trainer = build_trainer(cfg, name, storage, callbacks=callbacks)
    result = trainer.fit()
    if result.error:
        raise result.error
    export_best(result, cfg.train.out)
    return result


def build_trainer(
    cfg: Config,
    name: str,
    storage_path: str,
    callbacks: list | None = None,
    num_to_keep: int | None = None,
    metric: str = BEST_METRIC,
):
    """TorchTrainer running `train_func` as `cfg` says (workers, GPUs, checkpoints kept, restarts)."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    resources = {"CPU": cfg.train.cpus_per_worker}
    if cfg.train.use_gpu:
        resources["GPU"] = 1
    return TorchTrainer(
        train_func,
        train_loop_config={"config": cfg.to_dict()},
        scaling_config=ScalingConfig(
            num_workers=cfg.train.workers, use_gpu=cfg.train.use_gpu, resources_per_worker=resources
        ),
        run_config=RunConfig(
            name=name,
            storage_path=storage_path,
            checkpoint_config=CheckpointConfig(
                num_to_keep=num_to_keep or cfg.train.num_to_keep,
                checkpoint_score_attribute=metric,
                checkpoint_score_order="max",
            ),
            failure_config=FailureConfig(max_failures=cfg.train.max_failures),
            callbacks=callbacks or None,
        ),
    )


def export_best(result, out: str | Path) -> Path:
    """Copy the best checkpoint (by validation rsum) into the model-artifact format at `out`."""
    best = result.get_best_checkpoint(metric=BEST_METRIC, mode="max") or result.checkpoint
    if best is None:
        raise ImtextError("training reported no checkpoint; nothing to export")
    history = _history(result)
    refuse_foreign_out(out)
    with best.as_directory() as src, atomic_dir(out) as tmp:
        for item in Path(src).iterdir():
            if item.name != TRAIN_STATE_FILE:
                shutil.copy2(item, tmp / item.name)
        best_row = max(history, key=lambda m: m.get(BEST_METRIC, -1.0)) if history else {}
        write_json(tmp / "metrics.json", {"best": best_row, "history": history, "ray_run": str(result.path)})
    return Path(out)


def _history(result) -> list[dict[str, Any]]:
    df = result.metrics_dataframe
    if df is None or df.empty:
        return [result.metrics] if result.metrics else []
    keep = [c for c in df.columns if not c.startswith(("config", "_")) and "/" not in c]
    return df[keep].sort_values("epoch").to_dict(orient="records") if "epoch" in df else []
