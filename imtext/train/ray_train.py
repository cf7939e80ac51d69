"""Ray Train wiring: `train_func` on N workers under TorchTrainer, the best k checkpoints kept by validation
rsum, restore after worker failures, resume of an interrupted run, and the best checkpoint copied out as the
model directory.

`train.storage_path` (the checkpoints) and `train.out` (the model) are local folders or URIs (s3://, gs://,
file://): URIs go to Ray as they are, and a model bound for a URI is written locally, then uploaded.
"""

from __future__ import annotations

import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from imtext import storage
from imtext.atomic import atomic_dir, write_json
from imtext.config import Config
from imtext.errors import ImtextError
from imtext.model import CONFIG_FILE, MODEL_FILES, refuse_foreign_out
from imtext.ray_setup import ensure_ray
from imtext.train.curves import by_epoch, write_curves
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


def fit(
    cfg: Config,
    resume: bool = False,
    address: str | None = None,
    callbacks: list | None = None,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
):
    """Run training under TorchTrainer and write the best checkpoint to `train.out` (with metrics.json and
    curves.png). `on_epoch` gets each epoch's metrics here, in this process, as the run reports them (the
    workers' own logs go to Ray's log files). Returns the Result."""
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
    feed = EpochFeed(on_epoch)
    try:
        trainer = build_trainer(cfg, name, storage_path, callbacks=[*(callbacks or []), feed.callback()])
        result = trainer.fit()
    finally:
        feed.close()
    if result.error:
        raise result.error
    export_best(result, cfg.train.out, seen=feed.rows)
    return result


class _Mailbox:
    """A tiny actor (no CPU): Train's controller puts each report's metrics in, the driver takes them out."""

    def __init__(self) -> None:
        self.items: list[dict[str, Any]] = []

    def put(self, item: dict[str, Any]) -> None:
        self.items.append(item)

    def take(self) -> list[dict[str, Any]]:
        items, self.items = self.items, []
        return items


class EpochFeed:
    """Every epoch's metrics, brought from Ray Train's controller into this process while the run goes on.

    A `ray.train.UserCallback` runs on the controller (another process); it sends rank 0's metrics of each
    report to a `_Mailbox` actor, and a thread here empties the mailbox twice a second, keeps the rows
    (`rows`: the history of this run, restored epochs included) and calls `on_epoch` for each."""

    def __init__(self, on_epoch: Callable[[dict[str, Any]], None] | None = None, poll_s: float = 0.5):
        import ray

        self.on_epoch, self.poll_s = on_epoch, poll_s
        self.rows: list[dict[str, Any]] = []
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        # on this process's node: losing another node (and its workers) must not take the live lines with it
        here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
        self.mailbox = ray.remote(num_cpus=0)(_Mailbox).options(scheduling_strategy=here).remote()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, name="imtext-epoch-feed", daemon=True)
        self._thread.start()

    def callback(self):
        """The UserCallback for RunConfig(callbacks=...): pickled to the controller with the mailbox handle."""
        import ray.train

        mailbox = self.mailbox

        class FeedEpochs(ray.train.UserCallback):
            def after_report(self, run_context, metrics, checkpoint) -> None:
                if metrics:
                    mailbox.put.remote(dict(metrics[0]))  # fire and forget: never blocks the controller

        return FeedEpochs()

    def _take(self) -> None:
        import ray

        for row in ray.get(self.mailbox.take.remote(), timeout=30):
            self.rows.append(row)
            if self.on_epoch is not None:
                self.on_epoch(row)

    def _poll(self) -> None:
        while not self._stop.wait(self.poll_s):
            try:
                self._take()
            except Exception:  # a slow or lost mailbox costs the live lines, never the run
                continue

    def close(self) -> None:
        """Stop polling, take what is left (a report's put may still be in flight), end the actor."""
        import ray

        self._stop.set()
        self._thread.join(timeout=35)
        try:
            self._take()
            time.sleep(self.poll_s)
            self._take()
        except Exception:
            pass
        ray.kill(self.mailbox)


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


def export_best(result, out: str | Path, seen: list[dict[str, Any]] | None = None) -> str:
    """Copy the best checkpoint (by validation rsum) into the model-artifact format at `out`, a folder or a URI
    (written locally first, then uploaded with config.yaml last: a reader never loads a half-copied model),
    with metrics.json and curves.png of the run's history. The history is what the Result keeps (the
    kept checkpoints' metrics) joined with `seen`, every report this process saw (EpochFeed.rows).
    Returns where the model is."""
    best = result.get_best_checkpoint(metric=BEST_METRIC, mode="max") or result.checkpoint
    if best is None:
        raise ImtextError("training reported no checkpoint; nothing to export")
    if storage.is_uri(out):
        refuse_foreign_target(str(out))
        with tempfile.TemporaryDirectory(prefix="imtext-model-") as tmp:
            local = _write_model(result, best, Path(tmp) / "model", seen)
            storage.clear_dir(out)  # a previous model (refuse_foreign_target let nothing else through)
            return storage.upload_dir(local, out, last=(CONFIG_FILE,))
    return str(_write_model(result, best, out, seen))


def _write_model(result, best, out: str | Path, seen: list[dict[str, Any]] | None = None) -> Path:
    history = by_epoch([*_history(result), *(seen or [])])
    refuse_foreign_out(out)
    with best.as_directory() as src, atomic_dir(out) as tmp:
        for item in Path(src).iterdir():
            if item.name != TRAIN_STATE_FILE:
                shutil.copy2(item, tmp / item.name)
        best_row = max(history, key=lambda m: m.get(BEST_METRIC, -1.0)) if history else {}
        write_json(tmp / "metrics.json", {"best": best_row, "history": history, "ray_run": str(result.path)})
        write_curves(history, tmp, title=f"{Path(out).name}: Ray Train")
    return Path(out)


def _history(result) -> list[dict[str, Any]]:
    df = result.metrics_dataframe
    if df is None or df.empty:
        return [result.metrics] if result.metrics else []
    keep = [c for c in df.columns if not c.startswith(("config", "_")) and "/" not in c]
    return df[keep].sort_values("epoch").to_dict(orient="records") if "epoch" in df else []
