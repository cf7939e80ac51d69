"""The one train loop. Ray Train runs `train_func` on every worker, a Ray Tune trial runs it through
imtext.train.trial, and `train_local` runs it in this process (tests, benchmarks, a laptop without Ray).

`train.batch_size` is the *global* batch: each of N workers takes batch_size / N captions per step.
"""

from __future__ import annotations

import math
import random
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler

from imtext.atomic import write_json
from imtext.config import Config
from imtext.data import load_pairs
from imtext.errors import ImtextError
from imtext.evaluate import evaluate
from imtext.image import train_flip_probability
from imtext.loss import RankingLoss
from imtext.model import WEIGHTS_FILE, TwoBranch, refuse_foreign_out
from imtext.text import Vocab
from imtext.text.swap import WordSwap
from imtext.train.batches import FeatureLookup, PairDataset, SplitView, collate_pairs
from imtext.train.distributed import batch_loss
from imtext.train.fresh import FreshScenes, fresh_dataset

TRAIN_STATE_FILE = "train_state.pt"
BEST_METRIC = "rsum"


@dataclass
class Setup:
    """Everything a worker builds before its first step."""

    config: Config
    train: SplitView
    val: SplitView
    vocab: Vocab
    features: FeatureLookup | None
    model: TwoBranch
    sentences: torch.Tensor | None = (
        None  # the training captions' sentence vectors, when the text branch has them
    )


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def prepare(cfg: Config) -> Setup:
    """Read the pairs, build the vocabulary from the training split only, and build the model."""
    cfg.validate()
    seed_everything(cfg.train.seed)
    pairs = load_pairs(cfg.data.spec, splits=[cfg.data.train_split, cfg.data.val_split])
    train = SplitView.from_table(pairs, cfg.data.train_split, cfg.data.max_train_pairs)
    val = SplitView.from_table(pairs, cfg.data.val_split)
    vocab = Vocab.build(train.captions, min_count=cfg.text.min_count)
    features = None
    if cfg.data.features:
        from imtext.image.features import load_features

        ids, matrix, _meta = load_features(cfg.data.features)
        features = FeatureLookup(ids, matrix)
    # Precomputed features mean a frozen backbone, as in the paper (config.yaml of the model records it).
    frozen = features is not None or not cfg.image.finetune
    if features is not None and cfg.image.finetune and cfg.image.backbone != "none":
        print(
            f"note: training on precomputed features ({cfg.data.features}): the {cfg.image.backbone} "
            "backbone stays frozen (image.finetune=true applies to training from pixels)"
        )
    model = TwoBranch.from_config(
        cfg, vocab, feature_dim=features.dim if features else None, frozen_backbone=frozen
    )
    sentences = None
    if model.sentence_encoder is not None:
        start = time.perf_counter()
        sentences = model.sentence_vectors(train.captions)
        print(
            f"sentence encoder {cfg.text.sentence_encoder}: {len(train.captions):,} training captions "
            f"in {time.perf_counter() - start:.0f} s"
        )
    return Setup(cfg, train, val, vocab, features, model, sentences)


def cpu_bf16() -> bool:
    """Whether this CPU computes in bf16 natively (AMX or AVX512-BF16): there, with train.cpu_bf16, the small
    CNN under bf16 autocast makes the demo's step a fifth to a quarter faster (docs/BENCHMARKS.md, "Counting,
    and bf16 on CPU"); elsewhere oneDNN emulates bf16 and autocast would be slower."""
    probes = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
    try:
        return any(getattr(torch.cpu, name)() for name in probes if hasattr(torch.cpu, name))
    except RuntimeError:  # a torch build without the probes' kernels
        return False


def make_optimizer(model: TwoBranch, cfg: Config) -> torch.optim.Optimizer:
    groups = [{"params": model.head_parameters(), "lr": cfg.train.lr}]
    backbone = model.backbone_parameters()
    if backbone:
        groups.append({"params": backbone, "lr": cfg.train.lr * cfg.train.backbone_lr_scale})
    # One fused kernel per step instead of a loop over tensors: 6% of the demo's CPU step
    fused = next(model.parameters()).device.type in ("cpu", "cuda")
    return torch.optim.AdamW(groups, weight_decay=cfg.train.weight_decay, fused=fused)


def make_scheduler(opt: torch.optim.Optimizer, cfg: Config, steps_per_epoch: int):
    total = max(1, cfg.train.epochs * steps_per_epoch)
    warmup = min(steps_per_epoch, total // 10)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if cfg.train.lr_schedule == "constant":
            return 1.0
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))

    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


def loss_for_epoch(cfg: Config, epoch: int) -> RankingLoss:
    """Sum over negatives while warming up, then the configured strategy (VSE++ collapses otherwise)."""
    negatives = "all" if epoch < cfg.loss.warmup_epochs else cfg.loss.negatives
    return RankingLoss.from_config(cfg.loss, negatives=negatives)


def make_loader(setup: Setup, rank: int, world_size: int, device: torch.device) -> DataLoader:
    cfg = setup.config
    transform = None if setup.features else setup.model.image_preprocess(train=True)
    local_batch = max(2, cfg.train.batch_size // world_size)
    if cfg.data.fresh_scenes:  # new scenes every step; the stored split sets how many per epoch
        samples = max(1, len(setup.train.captions) // world_size)
        dataset, collate = fresh_dataset(cfg, setup.model.featurizer, transform, samples, rank)
        return DataLoader(
            dataset,
            batch_size=local_batch,
            drop_last=samples >= local_batch,
            collate_fn=collate,
            num_workers=cfg.train.loader_workers,
            pin_memory=device.type == "cuda",
            # not persistent: each epoch's workers must get the dataset's new epoch (set_epoch)
        )
    swap = WordSwap.from_spec(cfg.loss.swap_words) if cfg.loss.swap_negatives else None
    dataset = PairDataset(
        setup.train,
        setup.model.featurizer,
        transform=transform,
        features=setup.features,
        swap=swap,
        swaps=cfg.loss.swap_negatives,
        sentences=setup.sentences,
        hflip=train_flip_probability(cfg.image.backbone, cfg.train.flip),
    )
    if world_size > 1:
        sampler = DistributedSampler(
            dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=cfg.train.seed
        )
    else:
        sampler = RandomSampler(dataset, generator=torch.Generator().manual_seed(cfg.train.seed))
    return DataLoader(
        dataset,
        batch_size=local_batch,
        sampler=sampler,
        drop_last=len(dataset) >= local_batch * world_size,
        collate_fn=collate_pairs,
        num_workers=cfg.train.loader_workers,
        pin_memory=device.type == "cuda",
        persistent_workers=cfg.train.loader_workers > 0,
    )


def train_epoch(
    model: torch.nn.Module,
    loader: DataLoader,
    loss_fn: RankingLoss,
    opt: torch.optim.Optimizer,
    sched,
    cfg: Config,
    device: torch.device,
    max_steps: int = 0,
) -> dict[str, float]:
    """One pass over this worker's shard; returns the mean loss (and its unweighted image-annotation and
    image-search terms, which show a model specialising in one direction), steps and samples/s."""
    model.train()
    autocast = device.type == "cuda" and cfg.train.amp
    total, steps, samples = 0.0, 0, 0
    parts = {"i2t": torch.zeros((), device=device), "t2i": torch.zeros((), device=device)}
    start = time.perf_counter()
    for batch in loader:
        images = batch["images"].to(device, non_blocking=True)
        if images.dim() == 4 and cfg.train.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        ids, lengths = batch["ids"], batch["lengths"]
        n = len(ids)
        if "swap_ids" in batch:  # word-swapped captions ride along in the text branch's forward pass
            ids, lengths = _stack_texts(ids, batch["swap_ids"]), torch.cat([lengths, batch["swap_lengths"]])
        ids = ids.to(device, non_blocking=True)
        sentences = batch["sentences"].to(device, non_blocking=True) if "sentences" in batch else None
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            img, txt = model(images, ids, lengths, sentences)
        hard = hard_valid = None
        if "swap_ids" in batch:
            txt, swapped = txt[:n], txt[n:]
            hard = swapped.reshape(-1, n, swapped.shape[1]).transpose(0, 1).float()  # (B, swaps, D)
            hard_valid = batch["swap_valid"].to(device)
        loss = batch_loss(
            loss_fn,
            img.float(),
            txt.float(),
            batch["image_index"].to(device),
            cfg.train.gather_negatives,
            hard,
            hard_valid,
        )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.train.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)
        opt.step()
        sched.step()
        total += float(loss.detach())
        for name in parts:
            parts[name] += loss_fn.last_parts[name]
        steps += 1
        samples += n
        if max_steps and steps >= max_steps:
            break
    elapsed = time.perf_counter() - start
    return {
        "loss": total / max(1, steps),
        **{f"loss_{name}": float(v) / max(1, steps) for name, v in parts.items()},
        "steps": steps,
        "samples_per_s": samples / max(elapsed, 1e-9),
    }


def _stack_texts(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Two padded id batches (B1, L1), (B2, L2) as one (B1 + B2, max(L1, L2)), padded with 0."""
    width = max(a.shape[1], b.shape[1])
    return torch.cat([torch.nn.functional.pad(t, (0, width - t.shape[1])) for t in (a, b)])


def save_checkpoint(
    directory: Path, model: TwoBranch, cfg: Config, opt, sched, epoch: int, metrics: dict
) -> None:
    model.save(directory, config=cfg, metrics=metrics)
    state = {"epoch": epoch, "optimizer": opt.state_dict(), "scheduler": sched.state_dict()}
    torch.save(state, directory / TRAIN_STATE_FILE)


def restore_checkpoint(directory: Path, model: TwoBranch, opt, sched) -> int:
    """Load weights and optimiser/scheduler state; returns the next epoch to run."""
    from safetensors.torch import load_file

    model.load_state_dict(load_file(str(directory / WEIGHTS_FILE)))
    state = torch.load(directory / TRAIN_STATE_FILE, weights_only=True, map_location="cpu")
    opt.load_state_dict(state["optimizer"])
    sched.load_state_dict(state["scheduler"])
    return int(state["epoch"]) + 1


class Run:
    """One training run on one worker: built from a config, restorable, iterated epoch by epoch.

    The three drivers below (Ray Train, a Tune trial, this process) differ only in how they report.
    """

    def __init__(self, cfg: Config, rank: int = 0, world: int = 1, device: torch.device | None = None):
        self.rank, self.world = rank, world
        self.device = device or torch.device("cpu")
        self.setup = prepare(cfg)
        self.cfg = self.setup.config
        self.model = self.setup.model.to(self.device)
        self.model.bf16_backbone_on_cpu = self.device.type == "cpu" and self.cfg.train.cpu_bf16 and cpu_bf16()
        if self.cfg.train.channels_last and self.setup.features is None:
            # cuDNN and oneDNN both run convolutions faster on channels-last weights and inputs (the demo's
            # small CNN: 27% less time per step on 2 CPU cores); saved weights stay contiguous
            self.model = self.model.to(memory_format=torch.channels_last)
        self.loader = make_loader(self.setup, rank, world, self.device)
        if len(self.loader) == 0:
            raise ImtextError("the training split is smaller than one batch; lower train.batch_size")
        self.opt = make_optimizer(self.model, self.cfg)
        self.sched = make_scheduler(self.opt, self.cfg, len(self.loader))
        self.start_epoch = 0

    def restore(self, directory: str | Path) -> None:
        self.start_epoch = restore_checkpoint(Path(directory), self.model, self.opt, self.sched)

    def save(self, directory: str | Path, epoch: int, metrics: dict[str, Any]) -> Path:
        save_checkpoint(Path(directory), self.model, self.cfg, self.opt, self.sched, epoch, metrics)
        return Path(directory)

    def epochs(self, wrapped: torch.nn.Module | None = None, max_steps: int = 0) -> Iterator[dict[str, Any]]:
        """Train epoch after epoch; rank 0 adds validation metrics (R@K, rsum) to what it yields."""
        for epoch in range(self.start_epoch, self.cfg.train.epochs):
            if isinstance(self.loader.sampler, DistributedSampler):
                self.loader.sampler.set_epoch(epoch)
            if isinstance(self.loader.dataset, FreshScenes):
                self.loader.dataset.set_epoch(epoch)
            stats = train_epoch(
                wrapped or self.model,
                self.loader,
                loss_for_epoch(self.cfg, epoch),
                self.opt,
                self.sched,
                self.cfg,
                self.device,
                max_steps,
            )
            # start_epoch shows where this attempt began: after a restore it is the checkpoint's epoch + 1
            metrics = {
                "epoch": epoch,
                "start_epoch": self.start_epoch,
                "lr": self.sched.get_last_lr()[0],
                **stats,
            }
            if self.rank == 0:
                metrics.update(evaluate(self.model, self.setup.val, self.setup.features, device=self.device))
            yield metrics


# ---- how Ray Train and this process drive the loop (a Tune trial: imtext.train.trial) -----------------------------------------------------------


def train_func(loop_config: dict[str, Any]) -> None:
    """Ray Train's `train_loop_per_worker` (also what a multi-worker Tune trial runs through TorchTrainer).

    loop_config: {"config": Config.to_dict()}.
    """
    import ray.train
    import ray.train.torch

    cfg = Config.from_dict(loop_config["config"])
    ctx = ray.train.get_context()
    device = ray.train.torch.get_device() if cfg.train.use_gpu else torch.device("cpu")
    torch.set_num_threads(max(1, int(cfg.train.cpus_per_worker)))
    run = Run(cfg, ctx.get_world_rank(), ctx.get_world_size(), device)
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as d:
            run.restore(d)
    wrapped = ray.train.torch.prepare_model(run.model, move_to_device=False) if run.world > 1 else run.model
    if cfg.train.compile:
        wrapped = torch.compile(wrapped)
    for metrics in run.epochs(wrapped):
        if run.rank == 0:
            with tempfile.TemporaryDirectory() as tmp:
                run.save(Path(tmp) / "model", metrics["epoch"], metrics)
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(Path(tmp) / "model"))
        else:
            ray.train.report(metrics, checkpoint=None)


def train_local(
    cfg: Config, on_epoch: Callable[[dict[str, Any]], None] | None = None, max_steps: int = 0
) -> tuple[TwoBranch, list[dict[str, Any]]]:
    """The same loop in this process, without Ray. Saves the best epoch (by validation rsum) to train.out,
    with metrics.json (every epoch) and curves.png (imtext.train.curves) beside it. Returns the model as the
    last epoch left it, and every epoch's metrics: the best model is the one in train.out (TwoBranch.load)."""
    if cfg.train.out:
        refuse_foreign_out(cfg.train.out)  # before training, not after
    device = torch.device("cuda" if cfg.train.use_gpu and torch.cuda.is_available() else "cpu")
    run = Run(cfg, device=device)
    history: list[dict[str, Any]] = []
    for metrics in run.epochs(max_steps=max_steps):
        history.append(metrics)
        if on_epoch:
            on_epoch(metrics)
        if run.cfg.train.out and metrics is best_metrics(history):
            run.model.save(run.cfg.train.out, config=run.cfg)
    if run.cfg.train.out and history:
        from imtext.train.curves import write_curves

        out = Path(run.cfg.train.out)
        write_json(out / "metrics.json", {"best": best_metrics(history), "history": history})
        write_curves(history, out, title=f"{out.name}: in-process training")
    return run.model, history


def best_metrics(history: list[dict[str, Any]]) -> dict[str, Any]:
    return max(history, key=lambda m: m.get(BEST_METRIC, -1.0)) if history else {}
