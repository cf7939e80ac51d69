"""What long work prints: tables of what it made and one line per epoch (rich when on a terminal)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from rich.console import Console
from rich.table import Table

console = Console(stderr=False)

METRIC_COLUMNS = ("r1", "r5", "r10", "medr", "meanr")


def print_table(title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    table = Table(title=title, title_justify="left")
    for c in columns:
        table.add_column(str(c))
    for row in rows:
        table.add_row(*[_fmt(v) for v in row])
    console.print(table)


def metrics_rows(metrics: dict[str, Any]) -> list[list[Any]]:
    """The paper's layout: one row per direction, R@1/5/10 and median/mean rank."""
    names = {"i2t": "image -> text (annotation)", "t2i": "text -> image (search)"}
    return [[names[d], *[metrics.get(f"{d}_{c}", "") for c in METRIC_COLUMNS]] for d in ("i2t", "t2i")]


def print_metrics(metrics: dict[str, Any], title: str = "") -> None:
    print_table(
        f"{title}  rsum={_fmt(metrics.get('rsum', float('nan')))}",
        ["direction", "R@1", "R@5", "R@10", "medr", "meanr"],
        metrics_rows(metrics),
    )


def epoch_printer() -> Callable[[dict[str, Any]], None]:
    def show(m: dict[str, Any]) -> None:
        console.print(
            f"epoch {m['epoch']:>3}  loss {m['loss']:.4f}  {m.get('samples_per_s', 0):7.1f} samples/s  "
            f"val rsum {m.get('rsum', float('nan')):6.1f}  (i2t R@1 {m.get('i2t_r1', 0):5.1f}, "
            f"t2i R@1 {m.get('t2i_r1', 0):5.1f})"
        )

    return show


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.1f}" if abs(v) >= 10 or v == 0 else f"{v:.2f}"
    return str(v)
