"""`curves.png`: a training run's history on one picture (loss, validation R@1/5/10 per direction, rsum),
written next to metrics.json by every training run (the in-process loop and the Ray Train export).

matplotlib runs on its Agg backend (no display, no GUI toolkit), imported only when a picture is drawn.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from imtext.atomic import write_bytes

CURVES_FILE = "curves.png"
DIRECTIONS = {"i2t": "image → text (annotation)", "t2i": "text → image (search)"}


def _series(history: Sequence[dict[str, Any]], key: str) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for row in history:
        value = row.get(key)
        if isinstance(value, (int, float)) and value == value:  # skips None and NaN
            xs.append(float(row["epoch"]) + 1)  # people count epochs from 1
            ys.append(float(value))
    return xs, ys


def by_epoch(history: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per epoch, in order; a later row for the same epoch wins (a restored run repeats one)."""
    rows: dict[int, dict[str, Any]] = {}
    for row in history:
        if "epoch" in row and row["epoch"] == row["epoch"]:
            rows[int(row["epoch"])] = dict(row)
    return [rows[e] for e in sorted(rows)]


def render_curves(history: Sequence[dict[str, Any]], title: str = "") -> bytes:
    """The PNG bytes of three panels: training loss, validation R@K per direction, validation rsum."""
    import io

    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure  # a Figure of its own: no pyplot state, safe in any thread
    from matplotlib.ticker import MaxNLocator

    rows = by_epoch(history)
    fig = Figure(figsize=(13, 3.8), dpi=100, layout="constrained")
    loss_ax, recall_ax, rsum_ax = fig.subplots(1, 3)

    for key, label, style in (
        ("loss", "loss", "-"),
        ("loss_i2t", "i2t term", ":"),
        ("loss_t2i", "t2i term", "--"),
    ):
        xs, ys = _series(rows, key)
        if xs:
            loss_ax.plot(xs, ys, style, marker="o", markersize=3, label=label)
    loss_ax.set(title="training loss", xlabel="epoch")
    losses = [y for line in loss_ax.lines for y in line.get_ydata()]
    if losses and min(losses) > 0 and max(losses) / min(losses) > 20:
        # warm-up epochs sum over all negatives, later ones average a few: a log axis shows both
        loss_ax.set_yscale("log")
        loss_ax.set_title("training loss (log scale)")

    colors = {"r1": "tab:blue", "r5": "tab:orange", "r10": "tab:green"}
    for direction, style in (("i2t", "-"), ("t2i", "--")):
        for k, color in colors.items():
            xs, ys = _series(rows, f"{direction}_{k}")
            if xs:
                recall_ax.plot(
                    xs, ys, style, color=color, marker="o", markersize=3, label=f"{direction} R@{k[1:]}"
                )
    recall_ax.set(title="validation R@K (solid: i2t, dashed: t2i)", xlabel="epoch", ylabel="%")

    xs, ys = _series(rows, "rsum")
    if xs:
        rsum_ax.plot(xs, ys, "-", color="black", marker="o", markersize=3, label="rsum")
        best = max(range(len(ys)), key=ys.__getitem__)
        rsum_ax.annotate(
            f"best {ys[best]:.1f}",
            (xs[best], ys[best]),
            textcoords="offset points",
            xytext=(0, 6),
            ha="center",
        )
        rsum_ax.margins(x=0.08, y=0.15)
    rsum_ax.set(title="validation rsum (sum of the six R@K, max 600)", xlabel="epoch")

    for ax in (loss_ax, recall_ax, rsum_ax):
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=7)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if title:
        fig.suptitle(title, fontsize=10)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def write_curves(history: Sequence[dict[str, Any]], directory: str | Path, title: str = "") -> Path:
    """Write `curves.png` into `directory` (atomically) and return its path."""
    path = Path(directory) / CURVES_FILE
    write_bytes(path, render_curves(history, title))
    return path
