"""Tune search spaces written in YAML, over any dotted config key.

```yaml
tune:
  space:
    data.windows.frames: {grid: [9, 27, 81, 243]}
    model.depth: {grid: [2, 4, 6, 8]}
    train.lr: {loguniform: [1.0e-5, 1.0e-3]}
    model.dim: {choice: [256, 512]}
```
Domains: `grid` (every value, crossed with the other grids), `choice` (one sampled per trial),
`uniform` / `loguniform` ([low, high]) and `randint` ([low, high), integers). Keys under `data.`
decide which windows a trial needs, so they must be `grid` or `choice`: the datasets for every
value are prepared once, before any trial starts.
"""
from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from typing import Any

from preprocessing.schema import ConfigError

DOMAINS = ("grid", "choice", "uniform", "loguniform", "randint")
DATA_PREFIX = "data."


@dataclass(frozen=True)
class Dimension:
    """One searched key: its domain kind and its values (a list) or bounds ([low, high])."""

    key: str
    kind: str
    values: tuple

    @property
    def discrete(self) -> bool:
        return self.kind in ("grid", "choice")

    def candidates(self) -> tuple:
        """Values a config must accept: every discrete value, or both bounds of a range."""
        if self.discrete:
            return self.values
        low, high = self.values
        return (low, high - 1) if self.kind == "randint" else (low, high)

    def to_tune(self) -> Any:
        from ray import tune

        if self.kind == "grid":
            return tune.grid_search(list(self.values))
        if self.kind == "choice":
            return tune.choice(list(self.values))
        low, high = self.values
        return {"uniform": tune.uniform, "loguniform": tune.loguniform, "randint": tune.randint}[self.kind](low, high)


def parse_space(space: dict[str, Any], where: str = "tune.space") -> list[Dimension]:
    """Validate the YAML space; errors name the key and what was expected."""
    if not space:
        raise ConfigError(f"{where}: empty search space (expected e.g. model.depth: {{grid: [2, 4]}})")
    dims = []
    for key, spec in space.items():
        at = f"{where}.{key}"
        if not isinstance(spec, dict) or len(spec) != 1 or next(iter(spec)) not in DOMAINS:
            raise ConfigError(f"{at}: expected one of {{{', '.join(d + ': ...' for d in DOMAINS)}}}, got {spec!r}")
        kind, values = next(iter(spec.items()))
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{at}.{kind}: expected a non-empty list, got {values!r}")
        if kind in ("uniform", "loguniform", "randint"):
            if len(values) != 2 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
                raise ConfigError(f"{at}.{kind}: expected [low, high] numbers, got {values!r}")
            if not values[0] < values[1]:
                raise ConfigError(f"{at}.{kind}: low must be < high, got {values!r}")
            if kind == "loguniform" and values[0] <= 0:
                raise ConfigError(f"{at}.loguniform: bounds must be > 0, got {values!r}")
            if kind == "randint" and not all(isinstance(v, int) for v in values):
                raise ConfigError(f"{at}.randint: bounds must be integers, got {values!r}")
        if key.startswith(DATA_PREFIX) and kind not in ("grid", "choice"):
            raise ConfigError(f"{at}: data keys need grid or choice (their windows are prepared before trials)")
        dims.append(Dimension(key, kind, tuple(values)))
    return dims


def param_space(dims: list[Dimension]) -> dict[str, Any]:
    """The Tuner's param_space: {"overrides": {dotted key: sampler}}."""
    return {"overrides": {d.key: d.to_tune() for d in dims}}


def candidate_overrides(dims: list[Dimension]) -> list[dict[str, Any]]:
    """Every combination of candidate values: each must form a valid config."""
    keys = [d.key for d in dims]
    return [dict(zip(keys, combo)) for combo in itertools.product(*(d.candidates() for d in dims))]


def data_variants(dims: list[Dimension]) -> list[dict[str, Any]]:
    """Each distinct assignment of the data.* keys (one prepared dataset each)."""
    data_dims = [d for d in dims if d.key.startswith(DATA_PREFIX)]
    keys = [d.key for d in data_dims]
    return [dict(zip(keys, combo)) for combo in itertools.product(*(d.values for d in data_dims))]


def data_key(overrides: dict[str, Any]) -> str:
    """Stable key of a trial's data.* values (trials with equal keys share windows)."""
    return json.dumps({k: v for k, v in sorted(overrides.items()) if k.startswith(DATA_PREFIX)}, sort_keys=True)
