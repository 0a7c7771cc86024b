"""How `raylift tune` searches: the search algorithm and trial scheduler built from the `tune:` section.

```yaml
tune:
  search: optuna          # random (default) | optuna | hyperopt | bohb
  sampler: tpe            # optuna only: tpe (default) | nsga2
  seed: 0                 # seeds every search (Tune's random variants included)
  num_samples: 16         # random: repeats of the grid; optuna/hyperopt/bohb: trials in all
  metrics: {val_mpjpe: min, macs_per_frame: min}   # or `metric: val_mpjpe` (minimised)
  scheduler: fifo         # asha (default) | fifo | hyperband (HyperBandForBOHB, for bohb)
```
- `random`: Tune's `BasicVariantGenerator`, seeded: every `grid` value crossed with the others,
  `choice` and ranges sampled, `num_samples` times over; branches through a `tune.sample_from`.
- `optuna`: `ray.tune.search.optuna.OptunaSearch` with `optuna.samplers.TPESampler` or
  `NSGAIISampler` (seeded). The space is define-by-run: a branch's keys are suggested only when
  the branch is chosen. Several objectives go to Optuna as metric and mode lists.
- `hyperopt`: `ray.tune.search.hyperopt.HyperOptSearch` (TPE, seeded); branches as nested `hp.choice`.
- `bohb`: `ray.tune.search.bohb.TuneBOHB` (seeded) with its scheduler
  `ray.tune.schedulers.HyperBandForBOHB` over the reported epoch, `max_t` = train.epochs.

The model-based searchers sit in a `ConcurrencyLimiter` (Ray's search-algorithm guide), so they
suggest no more trials than run at once and learn from the finished ones. They sample: `grid`
(enumerate every value) is refused there, as are branches with bohb (ConfigSpace's conditions are
not what Tune converts). Objectives must be metrics trials report (`REPORTED_METRICS`). Ray's
schedulers (ASHA, HyperBand) compare trials on one metric, so several objectives need
`scheduler: fifo`, and a search that takes them (optuna; random, which samples regardless). On
`raylift tune --resume`, `Tuner.restore` restores the searcher's state (Optuna's study,
HyperOpt's trials), so the search goes on from the trials it has seen.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any, Optional

from pipelines.config import ExperimentConfig
from pipelines.tune.space import (
    Conditional, Dim, Dimension, branch_label, conditionals, param_space, resolve, search_labels,
)
from preprocessing.schema import ConfigError

MODEL_BASED = ("optuna", "hyperopt", "bohb")
ALGORITHMS = ("random", *MODEL_BASED)  # tune.search's values
# What every trial reports each epoch: the task's validation metric (val_px for image models,
# val_mpjpe otherwise), the training loss, and the costs of the trial's model and run.
TASK_METRICS = ("val_mpjpe", "val_px")
COST_METRICS = ("macs_per_frame", "params", "train_frames_per_s", "peak_memory_mb")
REPORTED_METRICS = (*TASK_METRICS, "loss", *COST_METRICS)
OPTUNA_CHOICE_TYPES = (str, int, float, bool, type(None))  # what optuna's categorical distributions hold


@dataclass
class Search:
    """What the Tuner takes from `tune.search` and `tune.scheduler`."""

    param_space: dict[str, Any]  # empty for model-based searchers, which hold the space themselves
    search_alg: Any
    scheduler: Any
    metric: str  # the first objective: the schedulers' metric and the result grid's
    mode: str

    def tune_config(self, num_samples: int) -> Any:
        """Tune's TuneConfig. Concurrency is the search algorithm's own limit (set by `make_search`)."""
        from ray import tune

        return tune.TuneConfig(metric=self.metric, mode=self.mode, search_alg=self.search_alg,
                               scheduler=self.scheduler, num_samples=num_samples)


def objectives(cfg: ExperimentConfig) -> dict[str, str]:
    """The search's objectives in order, metric -> "min" | "max"."""
    return dict(cfg.tune.metrics) or {cfg.tune.metric: "min"}


def reported_metrics(cfg: ExperimentConfig) -> tuple[str, ...]:
    """The metrics this config's trials report (`REPORTED_METRICS` less the other task's metric)."""
    from models.registry import is_image_model, model_class

    task = "val_px" if is_image_model(model_class(cfg.model.name)) else "val_mpjpe"
    return tuple(m for m in REPORTED_METRICS if m not in TASK_METRICS or m == task)


def check_search(cfg: ExperimentConfig, dims: list[Dim]) -> None:
    """Refuse, in one line naming the key, a search the algorithm or scheduler cannot run."""
    tc = cfg.tune
    goals = objectives(cfg)
    where = "tune.metrics" if tc.metrics else "tune.metric"
    reported = reported_metrics(cfg)
    for name in goals:
        if name not in reported:
            raise ConfigError(f"{where}: no trial reports {name!r} (expected one of {', '.join(reported)})")
    if len(goals) > 1:
        if tc.search not in ("optuna", "random"):
            raise ConfigError(f"tune.metrics: search {tc.search} optimises one objective, got {len(goals)} "
                              f"({', '.join(goals)}); use search: optuna")
        if tc.scheduler != "fifo":
            raise ConfigError(f"tune.metrics: scheduler {tc.scheduler} compares trials on one metric, got "
                              f"{len(goals)} ({', '.join(goals)}); use scheduler: fifo")
    if (tc.search == "bohb") != (tc.scheduler == "hyperband"):
        raise ConfigError(f"tune.scheduler: search bohb runs with scheduler hyperband (HyperBandForBOHB) and only "
                          f"it, got search {tc.search} with scheduler {tc.scheduler}")
    if tc.scheduler == "pbt":
        from pipelines.tune.pbt import check_pbt  # imports Ray Train: only when asked for

        check_pbt(cfg, dims)
    if tc.sampler != "tpe" and tc.search != "optuna":
        raise ConfigError(f"tune.sampler: {tc.sampler} is an optuna sampler, but tune.search is {tc.search}")
    if tc.search not in MODEL_BASED:
        return
    for d in dims:
        if d.kind == "grid":
            raise ConfigError(f"tune.space.{d.key}.grid: search {tc.search} samples, it does not enumerate: "
                              "use choice (or search: random)")
        if isinstance(d, Conditional) and tc.search == "bohb":
            raise ConfigError(f"tune.space.{d.key}.branches: search bohb cannot search branches; use optuna or hyperopt")
    if tc.search == "optuna":
        for label, d in search_labels(dims):
            odd = [v for v in d.values if not isinstance(v, OPTUNA_CHOICE_TYPES)] if d.discrete else []
            if odd:
                raise ConfigError(f"tune.space.{label}: optuna chooses among numbers, strings, booleans and "
                                  f"null, got {odd[0]!r}")


def make_search(cfg: ExperimentConfig, dims: list[Dim], concurrency: int) -> Search:
    """The search algorithm (at most `concurrency` trials at once), scheduler and param_space."""
    from ray.tune.search import BasicVariantGenerator, ConcurrencyLimiter

    check_search(cfg, dims)
    goals = objectives(cfg)
    metric, mode = next(iter(goals.items()))
    algorithm = cfg.tune.search
    if algorithm == "random":
        return Search(param_space(dims), BasicVariantGenerator(max_concurrent=concurrency, random_state=cfg.tune.seed),
                      make_scheduler(cfg, dims), metric, mode)
    searcher = {"optuna": _optuna, "hyperopt": _hyperopt, "bohb": _bohb}[algorithm](cfg, dims, goals)
    return Search({}, ConcurrencyLimiter(searcher, max_concurrent=concurrency), make_scheduler(cfg, dims), metric, mode)


def make_scheduler(cfg: ExperimentConfig, dims: Optional[list[Dim]] = None) -> Any:
    """ASHA, HyperBandForBOHB or PBT (over `dims`) on the reported `epoch` (Train's own count, which
    continues at k+1 after a trial is retried, resumed or continues another's checkpoint, where
    Tune's training_iteration would restart at 1), or FIFO."""
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, HyperBandForBOHB

    tc = cfg.tune
    if tc.scheduler == "pbt":
        from pipelines.tune.pbt import make_pbt

        return make_pbt(cfg, dims or [])
    if tc.scheduler == "asha":
        return ASHAScheduler(time_attr="epoch", max_t=cfg.train.epochs,
                             grace_period=tc.grace_period, reduction_factor=tc.reduction_factor)
    if tc.scheduler == "hyperband":
        return HyperBandForBOHB(time_attr="epoch", max_t=cfg.train.epochs, reduction_factor=tc.reduction_factor)
    return FIFOScheduler()


def _optuna(cfg: ExperimentConfig, dims: list[Dim], goals: dict[str, str]) -> Any:
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    seed = cfg.tune.seed
    sampler = optuna.samplers.NSGAIISampler(seed=seed) if cfg.tune.sampler == "nsga2" else optuna.samplers.TPESampler(seed=seed)
    several = len(goals) > 1
    return OptunaSearch(functools.partial(optuna_space, dims), sampler=sampler,
                        metric=list(goals) if several else next(iter(goals)),
                        mode=list(goals.values()) if several else next(iter(goals.values())))


def optuna_space(dims: list[Dim], trial: Any) -> Optional[dict[str, Any]]:
    """The define-by-run space: suggests each key, and a branch's keys only when it is chosen.
    Without branches the parameters are the trial's overrides ("overrides/<key>"); with branches
    they are kept under "search" and the returned flat overrides are resolved from them."""
    prefix = "search/" if conditionals(dims) else "overrides/"
    sampled: dict[str, Any] = {}
    for d in dims:
        sampled[d.key] = _suggest(trial, prefix + d.key, d)
        for b in getattr(d, "branches", ()):
            if b.value == sampled[d.key]:
                for inner in b.dims:
                    label = branch_label(d.key, b.value, inner.key)
                    sampled[label] = _suggest(trial, prefix + label, inner)
    if not conditionals(dims):
        return None
    return {f"overrides/{k}": v for k, v in resolve(dims, sampled).items()}


def _suggest(trial: Any, name: str, d: Dim) -> Any:
    if d.discrete:
        return trial.suggest_categorical(name, list(d.values))
    low, high = d.values
    if d.kind == "randint":
        return trial.suggest_int(name, low, high - 1)
    return trial.suggest_float(name, low, high, log=d.kind == "loguniform")


def _hyperopt(cfg: ExperimentConfig, dims: list[Dim], goals: dict[str, str]) -> Any:
    from ray.tune.search.hyperopt import HyperOptSearch

    (metric, mode), = goals.items()
    return HyperOptSearch(hyperopt_space(dims), metric=metric, mode=mode, random_state_seed=cfg.tune.seed)


def hyperopt_space(dims: list[Dim]) -> dict[str, Any]:
    """{"overrides": flat dict} as a hyperopt expression: each key a (key, value) pair, a
    conditional key an `hp.choice` among its branches' pairs (nested choices for their keys),
    all joined into one dict."""
    from hyperopt import hp
    from hyperopt.pyll import scope

    parts = []
    for d in dims:
        if isinstance(d, Conditional):
            parts.append(hp.choice(d.key, [
                tuple(b.fixed(d.key).items())
                + tuple((inner.key, _hp(branch_label(d.key, b.value, inner.key), inner)) for inner in b.dims)
                for b in d.branches
            ]))
        else:
            parts.append(((d.key, _hp(d.key, d)),))
    return {"overrides": scope.dict(functools.reduce(scope.add, parts))}


def _hp(label: str, d: Dimension) -> Any:
    from hyperopt import hp
    from hyperopt.pyll import scope

    if d.discrete:
        return hp.choice(label, list(d.values))
    low, high = d.values
    if d.kind == "randint":
        return scope.int(hp.randint(label, low, high))
    if d.kind == "loguniform":
        return hp.loguniform(label, math.log(low), math.log(high))
    return hp.uniform(label, low, high)


def _bohb(cfg: ExperimentConfig, dims: list[Dim], goals: dict[str, str]) -> Any:
    from ray.tune.search.bohb import TuneBOHB

    class PlainTuneBOHB(TuneBOHB):
        """TuneBOHB whose suggestions hold Python scalars: ConfigSpace hands numpy ones
        (np.int64 for an integer choice), which a config's int fields and JSON refuse."""

        def suggest(self, trial_id: str) -> Optional[dict]:
            config = super().suggest(trial_id)
            return config and {"overrides": {k: getattr(v, "item", lambda: v)() for k, v in config["overrides"].items()}}

    (metric, mode), = goals.items()
    return PlainTuneBOHB(TuneBOHB.convert_search_space(param_space(dims)), metric=metric, mode=mode, seed=cfg.tune.seed)
