"""The Tune trial protocol, in one place: `tune/` builds a TrialSpec per trial, the trial reads it back.

A trial is the project's one train loop with a config that is the search's resolved base plus the values
Tune sampled (`section.key` -> value). `run_single_worker_trial` is the plain function trainable (what Ray
2.60 recommends when one worker is enough); multi-worker trials build a TorchTrainer from `spec.config()`.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from imtext.config import Config
from imtext.train.loop import Run


@dataclass(frozen=True)
class TrialSpec:
    """One trial: `base` is Config.to_dict() of the search's resolved base config, `params` the sampled
    values by dotted key. Plain data, so Ray ships it to a trial's process as it is."""

    base: dict[str, Any]
    params: dict[str, Any] = field(default_factory=dict)

    def config(self) -> Config:
        """The trial's config: the sampled params over the base, validated."""
        return Config.from_dict(self.base).override(dict(self.params)).validate()


def run_single_worker_trial(spec: TrialSpec) -> None:
    """Train one trial in this process and report every epoch to Tune with a checkpoint, so ASHA can stop
    poor trials early and an interrupted search resumes from the last epoch."""
    import ray.tune

    cfg = spec.config()
    torch.set_num_threads(max(1, int(cfg.train.cpus_per_worker)))
    device = torch.device("cuda" if cfg.train.use_gpu and torch.cuda.is_available() else "cpu")
    run = Run(cfg, device=device)
    checkpoint = ray.tune.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as d:
            run.restore(d)
    for metrics in run.epochs():
        with tempfile.TemporaryDirectory() as tmp:
            run.save(Path(tmp) / "model", metrics["epoch"], metrics)
            ray.tune.report(metrics, checkpoint=ray.tune.Checkpoint.from_directory(Path(tmp) / "model"))
