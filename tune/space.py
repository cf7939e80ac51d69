"""Search spaces as YAML (tune/spaces/*.yaml): read, check against `Config`, and turn into Ray Tune's
param_space. The format is documented at the top of tune/spaces/default.yaml.

Every key is a `section.key` of `Config`, plus one pseudo-key, `loss.weights: [i2t, t2i]`, so a grid can
walk the direction weights as pairs ([1, 1], [1, 0.25], [0.25, 1]) instead of their full product.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from imtext.config import Config
from imtext.errors import ImtextError

WEIGHTS_KEY = "loss.weights"
DISTRIBUTIONS = ("choice", "grid", "uniform", "loguniform", "randint")
TOP_LEVEL = ("base", "params", "asha")


@dataclass
class Space:
    """A parsed search space: fixed overrides, searched params (name -> {kind: args} or a constant), ASHA."""

    base: dict[str, Any] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    asha: dict[str, Any] = field(default_factory=dict)
    source: str = ""

    @property
    def has_grid(self) -> bool:
        return any(_kind(spec) == "grid" for spec in self.params.values())

    @property
    def grid_size(self) -> int:
        return math.prod(len(spec["grid"]) for spec in self.params.values() if _kind(spec) == "grid")

    def to_dict(self) -> dict[str, Any]:
        return {"base": dict(self.base), "params": dict(self.params), "asha": dict(self.asha)}

    def restrict(self, **choices: list[Any]) -> Space:
        """A copy whose grid/choice for `key` keeps only the given values (bench subsets), e.g.
        restrict(**{"text.model": ["bow", "gru"]})."""
        params = dict(self.params)
        for key, values in choices.items():
            spec = params.get(key)
            kind = _kind(spec)
            if kind not in ("grid", "choice"):
                raise ImtextError(f"{self.source or 'space'}: {key} is not a grid or choice param")
            unknown = [v for v in values if v not in spec[kind]]
            if unknown:
                raise ImtextError(f"{key}: {unknown} not in the space's values {spec[kind]}")
            params[key] = {kind: list(values)}
        out = Space(dict(self.base), params, dict(self.asha), self.source)
        out.check()
        return out

    def check(self) -> Space:
        """Every key must be a Config key (or loss.weights) and every end value must make a valid Config."""
        where = self.source or "search space"
        probe = Config()
        for key, value in self.base.items():
            _check_value(probe, key, value, f"{where}: base.{key}")
        for key, spec in self.params.items():
            kind = _kind(spec)
            if kind is None:
                values = [spec]
            elif kind in ("choice", "grid"):
                values = spec[kind]
                if not isinstance(values, list) or not values:
                    raise ImtextError(f"{where}: params.{key}.{kind} must be a non-empty list")
            else:
                values = spec[kind]
                if not (isinstance(values, list) and len(values) == 2 and all(_is_number(v) for v in values)):
                    raise ImtextError(
                        f"{where}: params.{key}.{kind} must be [low, high] numbers, got {values!r}"
                    )
                low, high = values
                if low >= high:
                    raise ImtextError(f"{where}: params.{key}.{kind}: low must be below high, got {values!r}")
                if kind == "loguniform" and low <= 0:
                    raise ImtextError(f"{where}: params.{key}.loguniform needs low > 0, got {values!r}")
                if kind == "randint" and not all(isinstance(v, int) for v in values):
                    raise ImtextError(f"{where}: params.{key}.randint needs integers, got {values!r}")
            for v in values:
                _check_value(probe, key, v, f"{where}: params.{key}")
        unknown = set(self.asha) - {"grace_period", "reduction_factor"}
        if unknown:
            raise ImtextError(
                f"{where}: asha accepts grace_period and reduction_factor, not {sorted(unknown)}"
            )
        return self


def load_space(path: str | Path) -> Space:
    """Read and check a space file; errors name the file and the offending key."""
    path = Path(path)
    if not path.is_file():
        raise ImtextError(f"search space not found: {path} (see tune/spaces/default.yaml for the format)")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ImtextError(f"{path} is not valid YAML: {e}") from None
    return space_from_dict(raw, source=str(path))


def space_from_dict(raw: dict[str, Any], source: str = "") -> Space:
    where = source or "search space"
    if not isinstance(raw, dict):
        raise ImtextError(f"{where}: expected a mapping with base / params / asha")
    unknown = set(raw) - set(TOP_LEVEL)
    if unknown:
        raise ImtextError(f"{where}: unknown top-level key(s) {sorted(unknown)}; use {', '.join(TOP_LEVEL)}")
    parts = {}
    for name in TOP_LEVEL:
        part = raw.get(name) or {}
        if not isinstance(part, dict):
            raise ImtextError(f"{where}: {name} must be a mapping of section.key: value")
        parts[name] = part
    if not parts["params"]:
        raise ImtextError(f"{where}: params is empty; nothing to search")
    return Space(parts["base"], parts["params"], parts["asha"], source).check()


def param_space(space: Space) -> dict[str, Any]:
    """Ray Tune's param_space: a flat {"section.key": domain or constant}."""
    from ray import tune as ray_tune

    out: dict[str, Any] = {}
    for key, spec in space.params.items():
        kind = _kind(spec)
        if kind is None:
            out[key] = spec
        elif kind == "grid":
            out[key] = ray_tune.grid_search(spec["grid"])
        elif kind == "choice":
            out[key] = ray_tune.choice(spec["choice"])
        elif kind == "uniform":
            out[key] = ray_tune.uniform(*spec["uniform"])
        elif kind == "loguniform":
            out[key] = ray_tune.loguniform(*spec["loguniform"])
        elif kind == "randint":
            out[key] = ray_tune.randint(*spec["randint"])
    return out


def expand(params: dict[str, Any]) -> dict[str, Any]:
    """Sampled params -> Config overrides (loss.weights [a, b] -> loss.i2t_weight, loss.t2i_weight)."""
    out = {k: _plain(v) for k, v in params.items() if k != WEIGHTS_KEY}
    if WEIGHTS_KEY in params:
        i2t, t2i = params[WEIGHTS_KEY]
        out["loss.i2t_weight"], out["loss.t2i_weight"] = float(i2t), float(t2i)
    return out


def apply(base: Config, space: Space, params: dict[str, Any]) -> Config:
    """The Config one trial trains with: base, then the space's fixed overrides, then its sampled params."""
    return base.override(expand(space.base)).override(expand(params)).validate()


def format_value(value: Any) -> str:
    """Short display of a sampled value (loss.weights [1, 0.25] -> '1/0.25')."""
    if isinstance(value, list | tuple):
        return "/".join(format_value(v) for v in value)
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _plain(v: Any) -> Any:
    """numpy scalars (what some samplers return) -> Python values, so YAML and Config accept them."""
    return v.item() if hasattr(v, "item") and not isinstance(v, list | tuple | dict) else v


def _kind(spec: Any) -> str | None:
    if isinstance(spec, dict):
        if len(spec) != 1 or next(iter(spec)) not in DISTRIBUTIONS:
            raise ImtextError(
                f"a searched value must be a constant or one of {{{': ..., '.join(DISTRIBUTIONS)}: ...}}, got {spec!r}"
            )
        return next(iter(spec))
    return None


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _check_value(probe: Config, key: str, value: Any, where: str) -> None:
    if key == WEIGHTS_KEY:
        if not (
            isinstance(value, list | tuple)
            and len(value) == 2
            and all(_is_number(v) and v >= 0 for v in value)
        ):
            raise ImtextError(
                f"{where}: loss.weights values are [i2t_weight, t2i_weight] pairs >= 0, got {value!r}"
            )
        if not any(value):
            raise ImtextError(f"{where}: loss.weights {value!r} switches both directions off")
    try:
        probe.override(expand({key: value})).validate()
    except ImtextError as e:
        raise ImtextError(f"{where}: {e}") from None
