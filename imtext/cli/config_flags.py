"""The config flags shared by `imtext train` and `imtext tune`: one option group, one flag -> key mapping,
one resolution order (defaults < --config < flags < --set)."""

from __future__ import annotations

import argparse
import typing

from imtext.config import Backbone, Config, Negatives, TextModel
from imtext.recipes import load_recipe

DATA_HELP = (
    "dataset as KIND:PATH - synth:DIR, coco:DIR, flickr8k:DIR, karpathy:FILE.json[,IMAGES_DIR], "
    "manifest:FILE.csv|parquet"
)

# flag (argparse dest) -> config key
FLAG_KEYS = {
    "data": "data.spec",
    "features": "data.features",
    "text_model": "text.model",
    "backbone": "image.backbone",
    "negatives": "loss.negatives",
    "margin": "loss.margin",
    "epochs": "train.epochs",
    "batch_size": "train.batch_size",
    "lr": "train.lr",
    "seed": "train.seed",
    "out": "train.out",
    "workers": "train.workers",
}


def add_config_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("configuration (flags override --config, which overrides the defaults)")
    g.add_argument(
        "--config",
        metavar="YAML|RECIPE",
        help="a config file (e.g. best.yaml from `imtext tune`) or a packaged recipe by name: "
        "synthetic (the synthetic world's settings; the defaults suit real photos)",
    )
    g.add_argument("--data", metavar="KIND:PATH", help=DATA_HELP)
    g.add_argument(
        "--features", metavar="PARQUET", help="precomputed backbone features from `imtext features`"
    )
    g.add_argument("--text-model", choices=typing.get_args(TextModel))
    g.add_argument("--backbone", choices=typing.get_args(Backbone))
    g.add_argument("--negatives", choices=typing.get_args(Negatives))
    g.add_argument("--margin", type=float)
    g.add_argument("--epochs", type=int)
    g.add_argument("--batch-size", type=int, help="the global batch (split across workers)")
    g.add_argument("--lr", type=float)
    g.add_argument("--seed", type=int)
    g.add_argument("--out", metavar="DIR", help="where the model directory goes (default runs/model)")
    g.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override any config key, e.g. --set loss.i2t_weight=0.5 (repeatable)",
    )


def flag_overrides(args: argparse.Namespace) -> dict:
    """The config keys that command-line flags set explicitly (typed values, unset flags left out)."""
    return {
        key: getattr(args, name) for name, key in FLAG_KEYS.items() if getattr(args, name, None) is not None
    }


def explicit_overrides(args: argparse.Namespace) -> list[str]:
    """What the command line set explicitly (flags and --set) as `key=value` assignments: `imtext tune`
    applies them over its search space's `base:`."""
    flags = [f"{key}={value}" for key, value in flag_overrides(args).items()]
    return flags + list(getattr(args, "overrides", None) or [])


def load_config(args: argparse.Namespace) -> Config:
    """The resolved, validated config of a command: defaults < --config < flags < --set."""
    cfg = load_recipe(args.config) if getattr(args, "config", None) else Config()
    cfg = cfg.override(flag_overrides(args))
    if getattr(args, "gpu", None) is not None:
        cfg.train.use_gpu = args.gpu
    return cfg.override(getattr(args, "overrides", []) or []).validate()
