"""What long work prints: tables of what it made and one line per epoch (rich when on a terminal)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table

console = Console(stderr=False)

METRIC_COLUMNS = ("r1", "r5", "r10", "medr", "meanr")
DIRECTIONS = {"i2t": "image -> text (annotation)", "t2i": "text -> image (search)"}


def print_table(
    title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]], compact: bool = False
) -> None:
    """A rich table; `compact` drops the frame (title, header, one rule, the rows: for one-screen output)."""
    style = {"box": box.SIMPLE_HEAD, "show_edge": False, "pad_edge": False} if compact else {}
    table = Table(title=title, title_justify="left", **style)
    for c in columns:
        table.add_column(str(c))
    for row in rows:
        table.add_row(*[_fmt(v) for v in row])
    console.print(table)


def metrics_rows(metrics: dict[str, Any]) -> list[list[Any]]:
    """The paper's layout: one row per direction, R@1/5/10 and median/mean rank."""
    return [[DIRECTIONS[d], *[metrics.get(f"{d}_{c}", "") for c in METRIC_COLUMNS]] for d in DIRECTIONS]


def print_metrics(metrics: dict[str, Any], title: str = "") -> None:
    print_table(
        f"{title}  rsum={_fmt(metrics.get('rsum', float('nan')))}",
        ["direction", "R@1", "R@5", "R@10", "medr", "meanr"],
        metrics_rows(metrics),
    )


def print_split_metrics(results: dict[str, dict[str, Any]], title: str) -> None:
    """Several splits' R@K in one compact table: a row per split and direction, rsum per split."""
    rows = []
    for split, m in results.items():
        for d in DIRECTIONS:
            row = [m.get(f"{d}_{c}", "") for c in ("r1", "r5", "r10", "medr")]
            rows.append([split, DIRECTIONS[d], *row, m.get("rsum", "") if d == "i2t" else ""])
    print_table(title, ["split", "direction", "R@1", "R@5", "R@10", "medr", "rsum"], rows, compact=True)


def epoch_line(m: dict[str, Any], epochs: int | None = None, indent: str = "") -> str:
    """One epoch: its loss, throughput and validation rsum (R@1 per direction)."""
    of = f"/{epochs}" if epochs else ""
    epoch = f"{int(m['epoch']) + 1}{of}"  # people count from 1
    return (
        f"{indent}epoch {epoch:>5}  loss {m['loss']:.4f}  {m.get('samples_per_s', 0):7.1f} samples/s  "
        f"val rsum {m.get('rsum', float('nan')):6.1f}  (R@1 i2t {m.get('i2t_r1', 0):5.1f}, "
        f"t2i {m.get('t2i_r1', 0):5.1f})"
    )


def epoch_stride(epochs: int | None, lines: int) -> int:
    """Print every k-th epoch so that `epochs` take at most `lines` lines (0: no limit)."""
    return max(1, -(-epochs // lines)) if lines and epochs else 1


def epoch_printer(
    epochs: int | None = None, indent: str = "", lines: int = 0
) -> Callable[[dict[str, Any]], None]:
    """A line per epoch as it ends (`imtext train` and the demo, on Ray Train or in-process); with `lines`,
    at most that many: every k-th epoch and the last (the demo's output fits one screen; curves.png and
    metrics.json keep every epoch)."""
    every = epoch_stride(epochs, lines)

    def show(m: dict[str, Any]) -> None:
        n = int(m["epoch"]) + 1
        if n % every == 0 or n == epochs:
            console.print(epoch_line(m, epochs, indent), highlight=False)

    return show


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.1f}" if abs(v) >= 10 or v == 0 else f"{v:.2f}"
    return str(v)
