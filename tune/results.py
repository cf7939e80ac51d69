"""What a search leaves in its run folder, each file written atomically:

- results.parquet / results.csv: one row per trial (id, status, every sampled param, epochs run, the
  metrics of its best epoch as best_*, the last epoch's final_rsum / final_loss, its best checkpoint);
- best.yaml: the full Config of the best trial, ready for `imtext train --config best.yaml`;
- best_model/: that trial's best checkpoint as a model directory (without the optimiser state);
- plot.png: the metric against the margin, one colour per negative-sampling strategy;
and a printed table in the paper's layout (R@1/5/10 and medr per direction, rsum).
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path
from typing import Any

import pandas as pd

from imtext.atomic import atomic_dir, atomic_path, write_text
from imtext.config import Config
from imtext.errors import ImtextError
from imtext.train.loop import TRAIN_STATE_FILE
from tune.space import Space, expand, format_value

DIRECTIONS = ("i2t", "t2i")
RANK_KEYS = ("r1", "r5", "r10", "medr", "meanr")
METRIC_KEYS = ("rsum", "i2t_rsum", "t2i_rsum", *(f"{d}_{k}" for d in DIRECTIONS for k in RANK_KEYS))


def _nan(v: Any) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def _best_checkpoint(result, metric: str, best: dict[str, Any]) -> str:
    """The path of a trial's best checkpoint: Tune's own (single worker) or the Train run's (multi-worker)."""
    try:
        ckpt = result.get_best_checkpoint(metric=metric, mode="max")
    except (RuntimeError, ValueError, KeyError):
        ckpt = None
    if ckpt is not None:
        return str(ckpt.path)
    path = best.get("checkpoint_path")
    return str(path) if isinstance(path, str) and path else ""


def trial_statuses(grid) -> dict[str, str]:
    """trial id -> Tune's status (TERMINATED, ERROR, RUNNING, PAUSED, PENDING). ResultGrid exposes only the
    counts publicly; the per-trial list sits behind it (empty if a later Ray moves it)."""
    trials = getattr(getattr(grid, "_experiment_analysis", None), "trials", None) or []
    return {t.trial_id: str(t.status) for t in trials}


def trial_rows(grid, spec: dict[str, Any]) -> list[dict[str, Any]]:
    """One dict per trial (see the module docstring). status: done | stopped (by ASHA) | error |
    interrupted (the search was stopped before this trial ended; `--resume` continues it)."""
    base = Config.from_dict(spec["base"])
    metric = spec["metric"]
    statuses = trial_statuses(grid)
    rows = []
    for result in grid:
        params = expand(dict(result.config or {}))
        cfg = base.override(params)
        df = result.metrics_dataframe
        history = df.to_dict(orient="records") if df is not None and not df.empty else []
        history = [h for h in history if not math.isnan(_nan(h.get(metric)))]
        best = max(history, key=lambda h: _nan(h[metric])) if history else {}
        last = history[-1] if history else {}
        trial_id = (result.metrics or {}).get("trial_id") or Path(result.path).name
        tune_status = statuses.get(trial_id, "TERMINATED")
        if result.error:
            status = "error"
        elif tune_status not in ("TERMINATED", "ERROR"):
            status = "interrupted"
        else:
            status = "stopped" if len(history) < cfg.train.epochs else "done"
        row: dict[str, Any] = {"trial_id": trial_id, "status": status, **params, "epochs": len(history)}
        row["best_epoch"] = int(best["epoch"]) if best else -1
        row.update({f"best_{k}": _nan(best.get(k)) for k in METRIC_KEYS})
        row["final_rsum"], row["final_loss"] = _nan(last.get("rsum")), _nan(last.get("loss"))
        row["checkpoint"] = _best_checkpoint(result, metric, best) if best else ""
        row["trial_path"] = str(result.path)
        rows.append(row)
    return rows


def best_row(rows: list[dict[str, Any]], metric: str) -> dict[str, Any]:
    scored = [r for r in rows if not math.isnan(r[f"best_{metric}"]) and r["checkpoint"]]
    if not scored:
        raise ImtextError(
            "no trial reported a metric with a checkpoint; see the trial logs in the run folder"
        )
    return max(scored, key=lambda r: r[f"best_{metric}"])


def searched_keys(space: Space) -> list[str]:
    return list(expand({k: [1, 1] if k == "loss.weights" else 0 for k in space.params}))


def write_outputs(grid, spec: dict[str, Any], space: Space, summary: bool = True) -> dict[str, Any]:
    """Write every output into the run folder; returns the best trial's row."""
    run_dir = Path(spec["run_dir"])
    metric = spec["metric"]
    rows = trial_rows(grid, spec)
    frame = pd.DataFrame(rows)
    with atomic_path(run_dir / "results.parquet") as tmp:
        frame.to_parquet(tmp, index=False)
    write_text(run_dir / "results.csv", frame.to_csv(index=False))
    keys = searched_keys(space)
    if summary:
        print_summary(rows, keys, metric)
    best = best_row(rows, metric)
    cfg = Config.from_dict(spec["base"]).override({k: best[k] for k in keys if k in best}).validate()
    write_text(
        run_dir / "best.yaml",
        f"# best trial {best['trial_id']} of `imtext tune` ({run_dir}): {metric} "
        f"{best[f'best_{metric}']:.1f} at epoch {best['best_epoch']}\n"
        f"# retrain: imtext train --config {run_dir / 'best.yaml'}\n" + cfg.to_yaml(),
    )
    export_model(best["checkpoint"], run_dir / "best_model", spec.get("storage", ""))
    plot(rows, spec, run_dir / "plot.png")
    print(
        f"best trial {best['trial_id']}: {metric} {best[f'best_{metric}']:.1f} (epoch {best['best_epoch']}); "
        f"outputs in {run_dir}"
    )
    return best


def export_model(checkpoint: str, out: Path, storage: str = "") -> Path:
    """Copy a checkpoint into the model-directory format (TwoBranch.load reads it); a checkpoint in object
    storage (`storage` a URI: Ray reports its path inside that filesystem) is downloaded first."""
    src = Path(checkpoint)
    if storage and not src.is_dir():
        from ray.train import Checkpoint

        from imtext.storage import filesystem

        with Checkpoint(checkpoint, filesystem=filesystem(storage)[0]).as_directory() as local:
            return export_model(local, out)
    if not src.is_dir():
        raise ImtextError(f"the best checkpoint {src} is gone; rerun the search")
    with atomic_dir(out) as tmp:
        for item in src.iterdir():
            if item.name != TRAIN_STATE_FILE and item.is_file():
                shutil.copy2(item, tmp / item.name)
    return out


def plot(rows: list[dict[str, Any]], spec: dict[str, Any], path: Path) -> Path:
    """Best metric per trial against its margin (log x), one colour per negatives strategy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    base = Config.from_dict(spec["base"])
    metric = spec["metric"]
    groups: dict[str, list[tuple[float, float]]] = {}
    for r in rows:
        y = r[f"best_{metric}"]
        if math.isnan(y):
            continue
        margin = r.get("loss.margin", base.loss.margin)
        negatives = r.get("loss.negatives", base.loss.negatives)
        groups.setdefault(str(negatives), []).append((float(margin), y))
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    for name, points in sorted(groups.items()):
        xs, ys = zip(*sorted(points))
        ax.scatter(xs, ys, label=name, s=30)
    ax.set_xscale("log")
    ax.set_xlabel("margin (loss.margin)")
    ax.set_ylabel(f"best validation {metric}")
    ax.set_title(f"imtext tune: {len(rows)} trials")
    ax.grid(True, which="both", alpha=0.3)
    if groups:
        ax.legend(title="negatives")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return path


def short_name(key: str) -> str:
    section, _, name = key.partition(".")
    return section if name == "model" else name


def config_columns(row: dict[str, Any], keys: list[str]) -> list[str]:
    """A trial's searched values for display; the two direction weights become one 'i2t/t2i' cell."""
    cells = []
    for k in keys:
        if k == "loss.t2i_weight" and "loss.i2t_weight" in keys:
            continue
        if k == "loss.i2t_weight" and "loss.t2i_weight" in keys:
            cells.append(format_value([row.get(k), row.get("loss.t2i_weight")]))
        else:
            cells.append(format_value(row.get(k)))
    return cells


def config_headers(keys: list[str]) -> list[str]:
    out = []
    for k in keys:
        if k == "loss.t2i_weight" and "loss.i2t_weight" in keys:
            continue
        out.append(
            "weights i2t/t2i" if k == "loss.i2t_weight" and "loss.t2i_weight" in keys else short_name(k)
        )
    return out


def print_summary(rows: list[dict[str, Any]], keys: list[str], metric: str, title: str = "") -> None:
    """The paper's layout: one row per configuration, R@1/5/10 and medr per direction, then rsum."""
    headers, table = summary_table(rows, keys, metric)
    print_wide(
        title or f"trials by best validation {metric} (i2t = annotation, t2i = search)", headers, table
    )


def summary_table(
    rows: list[dict[str, Any]], keys: list[str], metric: str
) -> tuple[list[str], list[list[Any]]]:
    headers = [*config_headers(keys)]
    for d in ("i2t", "t2i"):
        headers += [f"{d} R@1", f"{d} R@5", f"{d} R@10", f"{d} medr"]
    extra = [] if metric == "rsum" else [metric]
    headers += [*extra, "rsum", "epochs", "status"]
    ordered = sorted(
        rows, key=lambda r: -r[f"best_{metric}"] if not math.isnan(r[f"best_{metric}"]) else math.inf
    )
    table = []
    for r in ordered:
        cells = config_columns(r, keys)
        for d in ("i2t", "t2i"):
            cells += [r[f"best_{d}_{k}"] for k in ("r1", "r5", "r10", "medr")]
        table.append([*cells, *[r[f"best_{m}"] for m in extra], r["best_rsum"], r["epochs"], r["status"]])
    return headers, table


def print_wide(title: str, headers: list[str], table: list[list[Any]]) -> None:
    """A rich table that is not squeezed to 80 columns when stdout is a file or a pipe (logs, CI)."""
    from rich.console import Console
    from rich.table import Table

    console = Console() if Console().is_terminal else Console(width=240)
    out = Table(title=title, title_justify="left")
    for h in headers:
        out.add_column(h)
    for row in table:
        out.add_row(*[fmt(v) for v in row])
    console.print(out)


def fmt(v: Any) -> str:
    if isinstance(v, float):
        return "-" if math.isnan(v) else (f"{v:.1f}" if abs(v) >= 10 or v == 0 else f"{v:.2f}")
    return str(v)
