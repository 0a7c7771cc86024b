"""Which searched parameters mattered: Optuna's parameter importances (fANOVA, its default) over a
finished search's trials.

The study is rebuilt in memory from the trials table: one `optuna.trial.create_trial` per trial
with a score, its searched values as the params and its best validation metric as the value. Each
parameter's distribution spans the values the trials took (log scale where `tune.space` searched it
log-uniformly); a parameter with one value only cannot explain anything and is left out. Scores of
trials the scheduler stopped early come from fewer epochs, as in the trials table.
"""
from __future__ import annotations

import math
import numbers
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import numpy as np

MIN_TRIALS = 2


def _is_number(value: Any) -> bool:
    """Ints and floats, Python's or NumPy's (NumPy registers its scalars as `numbers`), not bools."""
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


def _distribution(values: Sequence[Any], log: bool):
    """The Optuna distribution spanning `values`, or None when they are all equal."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    if all(_is_number(v) for v in values):
        low, high = min(values), max(values)
        if low == high:
            return None
        if all(isinstance(v, numbers.Integral) for v in values):
            return IntDistribution(int(low), int(high), log=log and low >= 1)
        return FloatDistribution(float(low), float(high), log=log and low > 0)
    choices = sorted({str(v) for v in values})
    return CategoricalDistribution(choices) if len(choices) > 1 else None


def _param(value: Any, distribution) -> Any:
    from optuna.distributions import CategoricalDistribution, IntDistribution

    if isinstance(distribution, CategoricalDistribution):
        return str(value)
    return int(value) if isinstance(distribution, IntDistribution) else float(value)


def _log_domain(space: Mapping[str, Any], key: str) -> bool:
    """Whether `tune.space` searched `key` on a log scale (e.g. {loguniform: [low, high]})."""
    domain = space.get(key)
    return isinstance(domain, Mapping) and any("log" in str(kind) for kind in domain)


def param_importances(rows: Sequence[Mapping[str, Any]], metric_col: str,
                      space: Mapping[str, Any]) -> tuple[dict[str, float], Optional[str]]:
    """({searched key: importance}, summing to 1, most important first; None) or ({}, the one-line
    reason there are none: too few scored trials, or no searched value varied)."""
    scored = [r for r in rows if r.get(metric_col) is not None and math.isfinite(float(r[metric_col]))]
    if len(scored) < MIN_TRIALS:
        return {}, f"{len(scored)} trial(s) with a score: importances need at least {MIN_TRIALS}."
    keys = sorted({k for r in scored for k in r if "." in k and all(k in s for s in scored)})
    distributions = {}
    for key in keys:
        dist = _distribution([r[key] for r in scored], _log_domain(space, key))
        if dist is not None:
            distributions[key] = dist
    if not distributions:
        return {}, f"no searched value varied across the {len(scored)} scored trials: nothing to attribute."
    import optuna

    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # create_study's "A new study created" line
    try:
        study = optuna.create_study(direction="minimize")
        for r in scored:
            study.add_trial(optuna.trial.create_trial(
                params={k: _param(r[k], d) for k, d in distributions.items()},
                distributions=distributions, value=float(r[metric_col]),
            ))
        evaluator = optuna.importance.FanovaImportanceEvaluator(seed=0)  # deterministic forests
        try:
            found = optuna.importance.get_param_importances(study, evaluator=evaluator)
        except ImportError as e:  # fANOVA fits scikit-learn forests
            return {}, f"Optuna's fANOVA importances need scikit-learn ({e})."
    finally:
        optuna.logging.set_verbosity(verbosity)
    return {k: float(v) for k, v in found.items()}, None


def plot_importances(importances: Mapping[str, float], path: Path) -> None:
    """A horizontal bar per searched parameter, the most important on top."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(importances)[::-1]
    fig, ax = plt.subplots(figsize=(6, 1.5 + 0.4 * len(names)), dpi=100)
    ax.barh(names, [importances[n] for n in names], color="C0")
    ax.set_xlabel("importance (fANOVA, sums to 1)")
    ax.set_xlim(0, 1)
    ax.set_title("Optuna parameter importances for the validation metric", fontsize=10)
    ax.grid(True, axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
