"""What one training step of the demo's model costs on this CPU: float32 against bf16 in the image backbone
(train.amp on a CPU with native bf16), AdamW per tensor against fused, at 64 and 48 px; and what drawing the
fresh scenes costs beside it. Prints a table in ms per sample (docs/BENCHMARKS.md, "Counting, and bf16").

    python bench/demo_step.py            # 2 torch threads, as the demo's Ray Train worker
    python bench/demo_step.py --threads 1

Each row trains the demo's model (imtext.cli.demo's settings) on the same batches of fresh scenes: a few
warm-up steps, then `--steps` timed ones. No Ray: the loop Ray Train runs, in this process.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from imtext.cli.demo import plan  # noqa: E402
from imtext.train.loop import Run, cpu_bf16, loss_for_epoch, train_epoch  # noqa: E402

WARMUP = 3


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", type=int, default=30, help="timed steps of 64 samples per setting and round")
    p.add_argument("--sizes", type=int, nargs="*", default=[64, 48])
    p.add_argument("--rounds", type=int, default=3, help="rounds over the settings; each keeps its best")
    return p.parse_args(argv)


def time_steps(run: Run, batches: list, bf16: bool, fused: bool) -> float:
    """ms per sample of train_epoch over `batches` (after WARMUP steps), with the given precision and optimizer."""
    run.model.bf16_backbone_on_cpu = bf16
    params = [g["params"] for g in run.opt.param_groups]
    opt = torch.optim.AdamW(
        [{"params": p, "lr": 1e-3} for p in params], weight_decay=run.cfg.train.weight_decay, fused=fused
    )
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    loss_fn = loss_for_epoch(run.cfg, run.cfg.train.epochs - 1)
    # the same collated batches replayed for every row (a list is all train_epoch iterates): no drawing
    train_epoch(run.model, batches[:WARMUP], loss_fn, opt, sched, run.cfg, run.device)
    t0 = time.perf_counter()
    train_epoch(run.model, batches[WARMUP:], loss_fn, opt, sched, run.cfg, run.device)
    return (time.perf_counter() - t0) * 1e3 / sum(len(b["ids"]) for b in batches[WARMUP:])


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        demo = plan(argparse.Namespace(workdir=tmp, data=None, tiny=False))
        for size in args.sizes:
            cfg = demo.config.override(
                {"image.image_size": size, "train.workers": 0, "train.out": f"{tmp}/m"}
            )
            demo.config = cfg
            demo.draw_world(Path(tmp) / f"synth{size}")
            cfg = cfg.override({"data.spec": f"synth:{tmp}/synth{size}"})
            run = Run(cfg)
            run.loader.dataset.set_epoch(cfg.train.epochs - 1)  # the world's mix, as the last epochs draw
            n = (WARMUP + args.steps) * cfg.train.batch_size
            t0 = time.perf_counter()
            batches = []
            for batch in run.loader:
                batches.append(batch)
                if len(batches) * cfg.train.batch_size >= n:
                    break
            drawing = (time.perf_counter() - t0) * 1e3 / n
            cells: dict[tuple[bool, bool], float] = {}
            for _ in range(args.rounds):  # rounds interleave the settings; each keeps its best
                for key in ((False, False), (False, True), (True, False), (True, True)):
                    cells[key] = min(cells.get(key, float("inf")), time_steps(run, batches, *key))
            rows.append((size, drawing, cells))
    print(
        f"\none step of the demo's model, batch 64, {args.threads} thread(s), best of {args.rounds} rounds of "
        f"{args.steps} steps; "
        f"native bf16 on this CPU: {cpu_bf16()}\n"
    )
    print(
        "| px | float32, AdamW per tensor | float32, fused AdamW | bf16 backbone | bf16 + fused (default) "
        "| drawing the scenes |"
    )
    print("| ---: | ---: | ---: | ---: | ---: | ---: |")
    for size, drawing, c in rows:
        print(
            f"| {size} | {c[False, False]:.3f} | {c[False, True]:.3f} | {c[True, False]:.3f} | "
            f"{c[True, True]:.3f} | {drawing:.3f} |"
        )
    print("\nms per sample")


if __name__ == "__main__":
    main()
