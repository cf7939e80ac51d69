"""Training throughput: the same model, data and steps as a plain in-process loop, under Ray Train with 1
worker and with 2 workers. Prints samples/s (steady state, after warm-up steps), the start-up time of each
Ray run separately, and the ratio Ray Train (1 worker) / plain loop (aim: >= 0.9).

    python bench/train_throughput.py                      # the synthetic world, CPU
    python bench/train_throughput.py --gpu --backbone resnet50 --image-size 224 --batch-size 256
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from datetime import date
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from imtext.config import Config  # noqa: E402
from imtext.report import print_table  # noqa: E402
from imtext.train.loop import Run, loss_for_epoch, train_epoch  # noqa: E402


def timed_steps(run: Run, model: torch.nn.Module, warmup: int, steps: int) -> tuple[float, int]:
    """(seconds for `steps` steps after `warmup` steps, samples per step on this worker)."""
    loss_fn = loss_for_epoch(run.cfg, epoch=10**6)  # the configured strategy, not the warm-up one
    train_epoch(model, run.loader, loss_fn, run.opt, run.sched, run.cfg, run.device, max_steps=warmup)
    if run.device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    done = 0
    while done < steps:
        stats = train_epoch(
            model, run.loader, loss_fn, run.opt, run.sched, run.cfg, run.device, max_steps=steps - done
        )
        done += int(stats["steps"])
    if run.device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, run.loader.batch_size


def plain(cfg: Config, warmup: int, steps: int, threads: int) -> dict:
    torch.set_num_threads(threads)
    device = torch.device("cuda" if cfg.train.use_gpu and torch.cuda.is_available() else "cpu")
    run = Run(cfg, device=device)
    seconds, per_step = timed_steps(run, run.model, warmup, steps)
    return {"samples_per_s": steps * per_step / seconds, "startup_s": 0.0}


def ray_worker(config: dict) -> dict:
    """Ray Train's per-worker function for the benchmark: the same steps, timed inside the worker."""
    import ray.train
    import ray.train.torch

    cfg = Config.from_dict(config["config"])
    torch.set_num_threads(config["threads"])
    ctx = ray.train.get_context()
    device = ray.train.torch.get_device() if cfg.train.use_gpu else torch.device("cpu")
    run = Run(cfg, ctx.get_world_rank(), ctx.get_world_size(), device)
    model = ray.train.torch.prepare_model(run.model, move_to_device=False) if run.world > 1 else run.model
    first_step = time.time()
    seconds, per_step = timed_steps(run, model, config["warmup"], config["steps"])
    # Ray Train returns rank 0's return value as `Result.return_value`
    return {"seconds": seconds, "global_batch": per_step * run.world, "first_step_at": first_step}


def with_ray(cfg: Config, workers: int, warmup: int, steps: int, threads: int) -> dict:
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    resources = {"CPU": threads, **({"GPU": 1} if cfg.train.use_gpu else {})}
    trainer = TorchTrainer(
        ray_worker,
        train_loop_config={"config": cfg.to_dict(), "warmup": warmup, "steps": steps, "threads": threads},
        scaling_config=ScalingConfig(
            num_workers=workers, use_gpu=cfg.train.use_gpu, resources_per_worker=resources
        ),
        run_config=RunConfig(name=f"bench-{workers}w-{int(time.time())}", storage_path="/tmp/imtext-bench"),
    )
    started = time.time()
    result = trainer.fit()
    m = result.return_value
    return {
        "samples_per_s": steps * m["global_batch"] / m["seconds"],
        "startup_s": m["first_step_at"] - started,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="", help="KIND:PATH (default: a synthetic world made in /tmp)")
    ap.add_argument("--backbone", default="smallcnn")
    ap.add_argument("--image-size", type=int, default=0)
    ap.add_argument("--text-model", default="gru")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument(
        "--threads", type=int, default=1, help="torch threads per worker (and for the plain loop)"
    )
    ap.add_argument("--gpu", action="store_true")
    ap.add_argument("--amp", action="store_true", default=True)
    ap.add_argument("--skip-two", action="store_true", help="skip the 2-worker run")
    args = ap.parse_args()

    data = args.data
    if not data:
        from imtext.data.synth import generate

        world = Path("/tmp/imtext-bench/synth")
        if not (world / "synth.json").is_file():
            generate(world, n_images=1200, seed=0)
        data = f"synth:{world}"
    cfg = Config().override(
        {
            "data.spec": data,
            "image.backbone": args.backbone,
            "image.image_size": args.image_size,
            "image.weights": "none",
            "text.model": args.text_model,
            "train.batch_size": args.batch_size,
            "train.use_gpu": args.gpu,
            "train.amp": args.amp,
            "train.out": "",
            "loss.negatives": "hardest",
        }
    )
    rows = []
    base = plain(cfg, args.warmup, args.steps, args.threads)
    rows.append(["plain loop (in-process)", f"{base['samples_per_s']:.1f}", "-", "1.00"])

    import ray

    ray.init(address="local", num_cpus=max(4, args.threads * 4), include_dashboard=False, log_to_driver=False)
    one = with_ray(cfg, 1, args.warmup, args.steps, args.threads)
    rows.append(
        [
            "Ray Train, 1 worker",
            f"{one['samples_per_s']:.1f}",
            f"{one['startup_s']:.1f}",
            f"{one['samples_per_s'] / base['samples_per_s']:.2f}",
        ]
    )
    if not args.skip_two:
        two = with_ray(cfg, 2, args.warmup, args.steps, args.threads)
        rows.append(
            [
                "Ray Train, 2 workers (DDP)",
                f"{two['samples_per_s']:.1f}",
                f"{two['startup_s']:.1f}",
                f"{two['samples_per_s'] / base['samples_per_s']:.2f}",
            ]
        )
    ray.shutdown()
    device = (
        torch.cuda.get_device_name(0)
        if args.gpu and torch.cuda.is_available()
        else platform.processor() or "CPU"
    )
    print_table(
        f"train throughput, {args.backbone} + {args.text_model}, global batch {args.batch_size}, "
        f"{args.steps} steps after {args.warmup} warm-up, {args.threads} thread(s)/worker, {device}, {date.today()}",
        ["run", "samples/s (steady)", "start-up s", "ratio to plain"],
        rows,
    )


if __name__ == "__main__":
    main()
