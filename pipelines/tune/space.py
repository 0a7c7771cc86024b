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

Conditional keys: `branches` maps each value of a key to the keys that apply only when that value
is chosen; a branch's plain values are constants, its domains are sampled (`choice`, `uniform`,
`loguniform`, `randint`; not `grid`, which would enumerate keys that most trials do not have).
```yaml
    model.name:
      branches:
        mixste: {model.depth: {choice: [1, 2]}, model.dim: 32, data.windows.frames: {choice: [9, 27]}}
        poseformer: {model.depth: {choice: [1, 2]}, model.spatial_dim: 16,
                     data.windows.mode: seq2frame, data.windows.frames: {choice: [9]}}
```
A branch key `<section>.name` picks the section's type (the model): trials then start that
section from `{name: <branch>}` plus the branch's values instead of the base config's section, so
one model's recipe keys never reach another (`trial_base`). Branches sit at the top of the space
(none inside a branch). Every trial's `config["overrides"]` is one flat {dotted key: value} dict:
the chosen branch's key and values merged with the other keys.
"""
from __future__ import annotations

import functools
import itertools
import json
from dataclasses import dataclass
from typing import Any, Iterable, Union

from preprocessing.schema import ConfigError

DOMAINS = ("grid", "choice", "uniform", "loguniform", "randint")
BRANCHES = "branches"
DATA_PREFIX = "data."
SECTION_SELECTOR = ".name"  # a branch key `<section>.name` replaces the section (see trial_base)


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

    def assignments(self) -> list[dict[str, Any]]:
        """{key: candidate} for each candidate."""
        return [{self.key: v} for v in self.candidates()]

    def data_assignments(self) -> list[dict[str, Any]]:
        """{key: value} for each value of a data.* key; one empty assignment for other keys."""
        return [{self.key: v} for v in self.values] if self.key.startswith(DATA_PREFIX) else [{}]

    def to_tune(self) -> Any:
        from ray import tune

        if self.kind == "grid":
            return tune.grid_search(list(self.values))
        if self.kind == "choice":
            return tune.choice(list(self.values))
        low, high = self.values
        return {"uniform": tune.uniform, "loguniform": tune.loguniform, "randint": tune.randint}[self.kind](low, high)


@dataclass(frozen=True)
class Branch:
    """One value of a conditional key, with the constants and dimensions that apply when it is chosen."""

    value: Any
    constants: tuple[tuple[str, Any], ...]
    dims: tuple[Dimension, ...]

    def fixed(self, key: str) -> dict[str, Any]:
        """What choosing this branch of `key` sets for sure: the key and the constants."""
        return {key: self.value, **dict(self.constants)}


@dataclass(frozen=True)
class Conditional:
    """A key whose value chooses a branch of further keys (`branches` in the YAML)."""

    key: str
    branches: tuple[Branch, ...]

    kind = BRANCHES
    discrete = True  # one branch per value: datasets and candidates enumerate them

    @property
    def values(self) -> tuple:
        return tuple(b.value for b in self.branches)

    def assignments(self) -> list[dict[str, Any]]:
        """Each branch's fixed values crossed with every combination of its dimensions' candidates."""
        return [{**b.fixed(self.key), **combo} for b in self.branches for combo in _product(d.assignments() for d in b.dims)]

    def data_assignments(self) -> list[dict[str, Any]]:
        """Each branch's fixed values (which pick the model the windows are cut for) crossed with
        every combination of its data.* dimensions' values."""
        return [{**b.fixed(self.key), **combo} for b in self.branches
                for combo in _product(d.data_assignments() for d in b.dims)]


Dim = Union[Dimension, Conditional]


def branch_label(key: str, branch: Any, inner: str) -> str:
    """The name a searcher gives `inner` inside the branch `key = branch`: "model.depth[model.name=mixste]".
    Each branch's keys are their own parameters (branches may give one key different domains)."""
    return f"{inner}[{key}={branch}]"


def parse_space(space: dict[str, Any], where: str = "tune.space") -> list[Dim]:
    """Validate the YAML space; errors name the key and what was expected."""
    if not space:
        raise ConfigError(f"{where}: empty search space (expected e.g. model.depth: {{grid: [2, 4]}})")
    dims: list[Dim] = []
    for key, spec in space.items():
        if isinstance(spec, dict) and list(spec) == [BRANCHES]:
            dims.append(_parse_conditional(key, spec[BRANCHES], f"{where}.{key}.{BRANCHES}", set(space)))
        else:
            dims.append(_parse_dimension(key, spec, f"{where}.{key}"))
    return dims


def _parse_dimension(key: str, spec: Any, at: str) -> Dimension:
    if not isinstance(spec, dict) or len(spec) != 1 or next(iter(spec)) not in DOMAINS:
        expected = ", ".join(d + ": ..." for d in (*DOMAINS, BRANCHES))
        raise ConfigError(f"{at}: expected one of {{{expected}}}, got {spec!r}")
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
    return Dimension(key, kind, tuple(values))


def _parse_conditional(key: str, branches: Any, at: str, top_keys: set[str]) -> Conditional:
    if not isinstance(branches, dict) or not branches:
        raise ConfigError(f"{at}: expected a mapping of each value of {key} to its keys, got {branches!r}")
    parsed = []
    for value, body in branches.items():
        body = {} if body is None else body
        if not isinstance(body, dict):
            raise ConfigError(f"{at}.{value}: expected a mapping of dotted keys to values or domains, got {body!r}")
        constants, dims = [], []
        for inner, spec in body.items():
            here = f"{at}.{value}.{inner}"
            if inner == key or inner in top_keys:
                raise ConfigError(f"{here}: {inner} is also a key at the top of tune.space (set it in one place)")
            if isinstance(spec, dict) and list(spec) == [BRANCHES]:
                raise ConfigError(f"{here}: branches inside a branch are not supported (put them at the top of tune.space)")
            if isinstance(spec, dict) and len(spec) == 1 and next(iter(spec)) in DOMAINS:
                if "grid" in spec:
                    raise ConfigError(f"{here}.grid: a branch's keys are sampled, not enumerated: use choice")
                dims.append(_parse_dimension(inner, spec, here))
            else:
                constants.append((inner, spec))
        parsed.append(Branch(value, tuple(constants), tuple(dims)))
    return Conditional(key, tuple(parsed))


def conditionals(dims: list[Dim]) -> list[Conditional]:
    """The space's conditional keys (`branches`)."""
    return [d for d in dims if isinstance(d, Conditional)]


def searched_keys(dims: list[Dim]) -> list[str]:
    """Every key the space may set, branch keys and constants included, in order."""
    keys: dict[str, None] = {}
    for d in dims:
        keys[d.key] = None
        for b in getattr(d, "branches", ()):
            keys.update(dict.fromkeys(k for k, _ in b.constants))
            keys.update(dict.fromkeys(inner.key for inner in b.dims))
    return list(keys)


def trial_base(raw: dict, dims: list[Dim]) -> dict:
    """The config trials' overrides apply to: `raw` without each section whose type a branch key
    `<section>.name` picks (every trial sets that key, and its branch's values rebuild the section)."""
    out = dict(raw)
    for cond in conditionals(dims):
        if cond.key.endswith(SECTION_SELECTOR) and "." not in cond.key[: -len(SECTION_SELECTOR)]:
            out.pop(cond.key[: -len(SECTION_SELECTOR)], None)
    return out


def resolve(dims: list[Dim], sampled: dict[str, Any]) -> dict[str, Any]:
    """A trial's flat overrides from a searcher's sampled values (keys as `search_labels` names
    them): each top-level key, and for a conditional key its chosen branch's constants and values."""
    out: dict[str, Any] = {}
    for d in dims:
        out[d.key] = sampled[d.key]
        for b in getattr(d, "branches", ()):
            if b.value == out[d.key]:
                out.update(b.constants)
                out.update({inner.key: sampled[branch_label(d.key, b.value, inner.key)] for inner in b.dims})
    return out


def search_labels(dims: list[Dim]) -> list[tuple[str, Dim]]:
    """(label, dimension) of every parameter a searcher samples: top-level keys by name, each
    branch's dimensions by `branch_label`; a conditional key is itself a choice among its branches."""
    out: list[tuple[str, Dim]] = []
    for d in dims:
        out.append((d.key, d))
        for b in getattr(d, "branches", ()):
            out += [(branch_label(d.key, b.value, inner.key), inner) for inner in b.dims]
    return out


def param_space(dims: list[Dim]) -> dict[str, Any]:
    """The Tuner's param_space for Tune's own (random and grid) search: {"overrides": {dotted key:
    sampler}}. With branches, every parameter is sampled under "search" (`search_labels`) and
    "overrides" is resolved from them per trial (a `tune.sample_from`), so the seeded random state
    of Tune's variant generator draws them all."""
    from ray import tune

    if not conditionals(dims):
        return {"overrides": {d.key: d.to_tune() for d in dims}}
    choices = {label: tune.choice(list(d.values)) if isinstance(d, Conditional) else d.to_tune()
               for label, d in search_labels(dims)}
    return {"search": choices, "overrides": tune.sample_from(functools.partial(_resolve_config, dims))}


def _resolve_config(dims: list[Dim], config: dict[str, Any]) -> dict[str, Any]:
    return resolve(dims, dict(config["search"]))


def candidate_overrides(dims: list[Dim]) -> list[dict[str, Any]]:
    """Every combination of candidate values (each branch with its own keys): each must form a valid config."""
    return _product(d.assignments() for d in dims)


def data_variants(dims: list[Dim]) -> list[dict[str, Any]]:
    """Each distinct assignment of the data.* keys (one prepared dataset each), with the branch
    values that lead to it (a branch's model decides which windows are valid for it)."""
    variants: dict[str, dict[str, Any]] = {}
    for values in _product(d.data_assignments() for d in dims):
        variants.setdefault(data_key(values), values)
    return list(variants.values())


def data_key(overrides: dict[str, Any]) -> str:
    """Stable key of a trial's data.* values (trials with equal keys share windows)."""
    return json.dumps({k: v for k, v in sorted(overrides.items()) if k.startswith(DATA_PREFIX)}, sort_keys=True)


def _product(options: Iterable[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Every way of taking one dict from each list, merged in order."""
    return [{k: v for part in combo for k, v in part.items()} for combo in itertools.product(*options)]
