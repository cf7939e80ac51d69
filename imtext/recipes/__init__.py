"""Packaged recipes: partial configs for settings that differ from the library's defaults.

The defaults suit real photos with a frozen pretrained backbone (docs/BENCHMARKS.md, "real photos");
`synthetic.yaml` holds what the synthetic world (the demo, the synthetic quality test) trains best with.
A recipe is an ordinary config file: `imtext train --config synthetic` or `--config path/to/own.yaml`.
"""

from __future__ import annotations

from pathlib import Path

from imtext.config import Config
from imtext.errors import ImtextError

RECIPES_DIR = Path(__file__).resolve().parent


def recipe_names() -> list[str]:
    return sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))


def resolve_config(name_or_path: str) -> Path:
    """A packaged recipe's file for a bare name (`synthetic`), else the path as given."""
    if "/" not in name_or_path and not name_or_path.endswith((".yaml", ".yml")):
        path = RECIPES_DIR / f"{name_or_path}.yaml"
        if not path.is_file():
            raise ImtextError(
                f"no recipe named {name_or_path!r}; packaged recipes: {', '.join(recipe_names())} "
                "(or give a path to a .yaml config)"
            )
        return path
    return Path(name_or_path)


def load_recipe(name_or_path: str) -> Config:
    """The config of a recipe name or a config file: defaults overridden by what the file sets."""
    return Config.load(resolve_config(name_or_path))
