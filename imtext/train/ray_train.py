"""Ray Train wiring: `train_func` on N workers under TorchTrainer, the best k checkpoints kept by validation
rsum, restore after worker failures, resume of an interrupted run, and the best checkpoint copied out as the
model directory.

`train.storage_path` (the checkpoints) and `train.out` (the model) are local folders or URIs (s3://, gs://,
file://): URIs go to Ray as they are, and a model bound for a URI is written locally, then uploaded.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

from imtext import storage
from imtext.atomic import atomic_dir, write_json
from imtext.config import Config
from imtext.errors import ImtextError
from imtext.model import CONFIG_FILE, MODEL_FILES, refuse_foreign_out
from imtext.ray_setup import ensure_ray
from imtext.train.loop import BEST_METRIC, TRAIN_STATE_FILE, train_func

RUN_MARKER = ".validate_storage_marker"  # Ray Train writes it first into every run folder


def run_paths(cfg: Config) -> tuple[str, str]:
    """(storage_path, name) of the Ray Train run behind `train.out`; a rerun with both restores it.
    Both parts may be URIs; by default the run sits in `ray_results` beside `train.out`."""
    parent, out_name = storage.split(cfg.train.out)
    if cfg.train.storage_path:
        storage_path = storage.absolute(cfg.train.storage_path)
    else:
        storage_path = storage.join(parent, "ray_results")
    return storage_path, cfg.train.name or out_name


def refuse_foreign_target(out: str) -> None:
    """`refuse_foreign_out` for a local folder or a URI: only a model directory or an empty folder is replaced."""
    if not storage.is_uri(out):
        refuse_foreign_out(out)
        return
    names = storage.list_names(out)
    if storage.is_file(out) or (names and not set(MODEL_FILES) <= set(names)):
        raise ImtextError(
            f"{out} exists and is not an imtext model directory; refusing to replace it: pick an empty or new --out"
        )


def fit(cfg: Config, resume: bool = False, address: str | None = None, callbacks: list | None = None):
    """Run training under TorchTrainer and write the best checkpoint to `train.out`. Returns the Result."""
    cfg = cfg.validate().with_absolute_paths()  # the workers run in Ray's own working folders
    if cfg.train.workers < 1:
        raise ImtextError(
            "Ray Train needs train.workers >= 1 (use --workers 0 for the plain in-process loop)"
        )
    refuse_foreign_target(cfg.train.out)  # before training, not after
    storage_path, name = run_paths(cfg)
    run_dir = storage.join(storage_path, name)
    if storage.exists(run_dir) and not resume:
        # a fresh run; `--resume` continues the old one instead. Only a Ray Train run folder is removed.
        ours = storage.exists(storage.join(run_dir, RUN_MARKER))
        if not ours and (storage.is_file(run_dir) or storage.list_names(run_dir)):
            raise ImtextError(
                f"{run_dir} exists and is not a Ray Train run folder; refusing to replace it: "
                "pick an empty or new --out or train.name"
            )
        storage.delete_dir(run_dir)
    elif resume and not storage.exists(run_dir):
        raise ImtextError(f"nothing to resume: no Ray Train run at {run_dir}")
    ensure_ray(address)
    trainer = build_trainer(cfg, name, storage_path, callbacks=callbacks)
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


def export_best(result, out: str | Path) -> str:
    """Copy the best checkpoint (by validation rsum) into the model-artifact format at `out`, a folder or a URI
    (written locally first, then uploaded with config.yaml last: a reader never loads a half-copied model).
    Returns where the model is."""
    best = result.get_best_checkpoint(metric=BEST_METRIC, mode="max") or result.checkpoint
    if best is None:
        raise ImtextError("training reported no checkpoint; nothing to export")
    if storage.is_uri(out):
        refuse_foreign_target(str(out))
        with tempfile.TemporaryDirectory(prefix="imtext-model-") as tmp:
            local = _write_model(result, best, Path(tmp) / "model")
            storage.clear_dir(out)  # a previous model (refuse_foreign_target let nothing else through)
            return storage.upload_dir(local, out, last=(CONFIG_FILE,))
    return str(_write_model(result, best, out))


def _write_model(result, best, out: str | Path) -> Path:
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
