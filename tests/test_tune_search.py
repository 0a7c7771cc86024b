"""`tune.search`: random, optuna, hyperopt and bohb through Ray Tune's own searchers, several
objectives, conditional spaces (branches), seeding, search state across a resume, the one-line
refusals, and one real optuna search of tiny trials on CPU."""
from __future__ import annotations

import copy
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from pipelines.config import config_from_dict, load_config
from pipelines.tune.driver import check_space, tune_experiment
from pipelines.tune.search import REPORTED_METRICS, make_scheduler, make_search
from pipelines.tune.space import (
    Conditional, candidate_overrides, data_key, data_variants, parse_space, searched_keys, trial_base,
)
from preprocessing.schema import ConfigError, apply_values
from tests.helpers import tune_demo_raw

REPO = Path(__file__).resolve().parents[1]

# Two models, each with its own recipe keys; PoseFormer predicts the centre frame (seq2frame windows).
BRANCHES = {
    "mixste": {"model.depth": {"choice": [1, 2]}, "model.dim": 16, "model.heads": 2, "model.drop_path_rate": 0.0,
               "data.windows.frames": {"choice": [9, 27]}},
    "poseformer": {"model.depth": {"choice": [1, 2]}, "model.spatial_dim": 8, "model.heads": 2,
                   "model.drop_path_rate": 0.0, "data.windows.mode": "seq2frame", "data.windows.frames": {"choice": [9]}},
}
SPACE = {
    "train.lr": {"loguniform": [1.0e-4, 3.0e-3]},
    "train.batch_size": {"randint": [2, 5]},
    "model.name": {"branches": BRANCHES},
}


def _raw(tmp_path: Path, **tune) -> dict:
    """configs/tune_demo.yaml with SPACE searched (and `tune` set) and its outputs under tmp_path."""
    return tune_demo_raw(tmp_path, **{"space": copy.deepcopy(SPACE), **tune})


def _search(raw: dict, concurrency: int = 1):
    cfg, dims = check_space(raw)
    return cfg, dims, make_search(cfg, dims, concurrency)


def _suggestions(searcher, n: int) -> list[dict]:
    """n suggestions of a model-based searcher, each completed (with made-up scores) before the next."""
    out = []
    for i in range(n):
        config = searcher.suggest(f"t{i}")
        out.append(config)
        searcher.on_trial_complete(f"t{i}", {"val_mpjpe": 100.0 + i, "loss": 1.0, "macs_per_frame": 1e6, "epoch": 1})
    return out


def _check_in_space(raw: dict, dims, overrides: dict) -> None:
    """`overrides` is flat, holds the top-level keys and exactly the chosen branch's keys, every value
    in its domain, and makes a valid config."""
    assert all(isinstance(k, str) and not isinstance(v, dict) for k, v in overrides.items())
    cond = next(d for d in dims if isinstance(d, Conditional))
    branch = next(b for b in cond.branches if b.value == overrides["model.name"])
    expected = {"train.lr", "train.batch_size", "model.name", *dict(branch.constants), *(d.key for d in branch.dims)}
    assert set(overrides) == expected
    assert 1.0e-4 <= overrides["train.lr"] <= 3.0e-3 and type(overrides["train.lr"]) is float
    assert overrides["train.batch_size"] in (2, 3, 4) and type(overrides["train.batch_size"]) is int
    for key, value in branch.constants:
        assert overrides[key] == value
    for d in branch.dims:
        assert overrides[d.key] in d.values
    cfg = config_from_dict(apply_values(trial_base(raw, dims), overrides))
    assert cfg.model.name == overrides["model.name"] and cfg.train.lr == overrides["train.lr"]


# ----------------------------------------------------------------------------- the space


def test_branches_parse_into_their_own_candidates_and_data_variants(tmp_path):
    raw = _raw(tmp_path)
    cfg, dims = check_space(raw)  # every branch's every candidate combination is a valid config
    cond = dims[2]
    assert isinstance(cond, Conditional) and cond.values == ("mixste", "poseformer")
    # lr 2 bounds x batch 2 bounds x (mixste 2 depths x 2 T + poseformer 2 depths x 1 T)
    combos = candidate_overrides(dims)
    assert len(combos) == 2 * 2 * (4 + 2)
    assert all(("model.dim" in c) == (c["model.name"] == "mixste") for c in combos)
    assert all(("model.spatial_dim" in c) == (c["model.name"] == "poseformer") for c in combos)
    # One dataset per distinct data.* assignment, each with the branch's model it is cut for.
    variants = data_variants(dims)
    assert [(v["model.name"], v["data.windows.frames"], v.get("data.windows.mode")) for v in variants] == [
        ("mixste", 9, None), ("mixste", 27, None), ("poseformer", 9, "seq2frame")]
    assert len({data_key(v) for v in variants}) == 3
    assert {"model.dim", "model.spatial_dim", "data.windows.mode"} <= set(searched_keys(dims))
    # model.name picks the model: the base's MixSTE recipe (dim 32, heads 4) reaches no trial.
    assert "model" in raw and "model" not in trial_base(raw, dims)
    poseformer = config_from_dict(apply_values(trial_base(raw, dims), combos[-1]))
    assert poseformer.model.name == "poseformer" and poseformer.model.heads == 2


def test_each_branch_combination_is_validated(tmp_path):
    space = copy.deepcopy(SPACE)
    del space["model.name"]["branches"]["poseformer"]["data.windows.mode"]  # PoseFormer on seq2seq windows
    with pytest.raises(ConfigError, match=r"combination \{.*'model.name': 'poseformer'.*seq2frame"):
        check_space(_raw(tmp_path, space=space))


@pytest.mark.parametrize("space, message", [
    ({"model.name": {"branches": {}}}, r"tune.space.model.name.branches: expected a mapping of each value"),
    ({"model.name": {"branches": {"mixste": {"model.depth": {"grid": [1, 2]}}}}},
     r"tune.space.model.name.branches.mixste.model.depth.grid: a branch's keys are sampled, not enumerated: use choice"),
    ({"model.name": {"branches": {"mixste": {"model.depth": {"branches": {1: {}}}}}}},
     r"branches inside a branch are not supported"),
    ({"model.depth": {"choice": [1]}, "model.name": {"branches": {"mixste": {"model.depth": 2}}}},
     r"tune.space.model.name.branches.mixste.model.depth: model.depth is also a key at the top"),
    ({"model.name": {"branches": {"mixste": [1, 2]}}}, r"tune.space.model.name.branches.mixste: expected a mapping"),
    ({"model.name": {"branches": {"mixste": {"data.windows.frames": {"uniform": [9, 27]}}}}},
     r"data.windows.frames: data keys need grid or choice"),
])
def test_bad_branches_are_refused_in_one_line(space, message):
    with pytest.raises(ConfigError, match=message) as e:
        parse_space(space)
    assert "\n" not in str(e.value)


# ----------------------------------------------------------------------------- each algorithm


@pytest.mark.parametrize("algorithm", ["optuna", "hyperopt"])
def test_model_based_suggestions_satisfy_the_conditional_space(tmp_path, algorithm):
    raw = _raw(tmp_path, search=algorithm, num_samples=12)
    cfg, dims, search = _search(raw)
    assert search.param_space == {} and type(search.search_alg).__name__ == "ConcurrencyLimiter"
    configs = _suggestions(search.search_alg, 12)
    for config in configs:
        _check_in_space(raw, dims, config["overrides"])
    assert {c["overrides"]["model.name"] for c in configs} == {"mixste", "poseformer"}
    # Each branch's keys are their own parameters: only the chosen branch's were suggested.
    if algorithm == "optuna":
        study = search.search_alg.searcher._ot_study  # the study Ray's OptunaSearch keeps (no public getter)
        for trial, config in zip(study.trials, configs):
            chosen = config["overrides"]["model.name"]
            assert {p for p in trial.params if "[" in p} == {
                f"search/model.depth[model.name={chosen}]", f"search/data.windows.frames[model.name={chosen}]"}


def test_random_search_resolves_branches_from_seeded_samples(tmp_path):
    from ray.tune.search.variant_generator import generate_variants

    raw = _raw(tmp_path)
    cfg, dims, search = _search(raw)
    # BasicVariantGenerator(random_state=tune.seed): its generator (no public getter) is numpy's, seeded 0.
    assert search.search_alg._random_state.random() == np.random.default_rng(0).random()

    def draw(seed: int) -> list[dict]:
        """12 samples, each as Tune's variant generator resolves one (a space without grids is one variant)."""
        rng = np.random.RandomState(seed)
        return [next(generate_variants(copy.deepcopy(search.param_space), random_state=rng))[1]["overrides"]
                for _ in range(12)]

    drawn = draw(0)
    for overrides in drawn:
        _check_in_space(raw, dims, overrides)
    assert {o["model.name"] for o in drawn} == {"mixste", "poseformer"}
    assert draw(0) == drawn and draw(1) != drawn


def test_random_search_without_branches_keeps_its_grid(tmp_path):
    raw = _raw(tmp_path, space={"data.windows.frames": {"grid": [9, 27]}, "model.depth": {"grid": [1, 2]}})
    from ray.tune.schedulers import ASHAScheduler

    cfg, dims, search = _search(raw)
    assert set(search.param_space) == {"overrides"}
    assert search.param_space["overrides"]["model.depth"] == {"grid_search": [1, 2]}
    assert isinstance(search.scheduler, ASHAScheduler) and (search.metric, search.mode) == ("val_mpjpe", "min")


def test_bohb_suggests_python_values_with_its_hyperband_scheduler(tmp_path):
    space = {"train.lr": {"loguniform": [1.0e-4, 3.0e-3]}, "model.depth": {"choice": [1, 2]},
             "data.windows.frames": {"choice": [9, 27]}, "train.batch_size": {"randint": [2, 5]}}
    raw = _raw(tmp_path, search="bohb", scheduler="hyperband", space=space)
    raw["train"]["epochs"] = 6
    cfg, dims, search = _search(raw, concurrency=3)
    scheduler = search.scheduler
    assert type(scheduler).__name__ == "HyperBandForBOHB"
    assert scheduler._time_attr == "epoch" and scheduler._max_t_attr == 6  # no public getters
    for _ in range(3):
        overrides = search.search_alg.suggest(f"t{_}")["overrides"]
        assert set(overrides) == set(space)
        assert all(type(v) in (int, float) for v in overrides.values()), overrides  # ConfigSpace's numpy scalars converted
        assert overrides["model.depth"] in (1, 2) and overrides["data.windows.frames"] in (9, 27)
        assert 1.0e-4 <= overrides["train.lr"] <= 3.0e-3 and 2 <= overrides["train.batch_size"] <= 4
        data_key(overrides)  # JSON-able
    assert search.search_alg.suggest("t3") is None  # the ConcurrencyLimiter: 3 at once


@pytest.mark.parametrize("algorithm, extra", [
    ("optuna", {}), ("hyperopt", {}), ("bohb", {"scheduler": "hyperband"}),
])
def test_every_search_is_seeded_by_tune_seed(tmp_path, algorithm, extra):
    space = {"train.lr": {"loguniform": [1.0e-4, 3.0e-3]}, "model.depth": {"choice": [1, 2, 3, 4]}}

    def first(seed: int) -> list[dict]:
        raw = _raw(tmp_path, search=algorithm, seed=seed, space=space, **extra)
        return [c["overrides"] for c in _suggestions(_search(raw)[2].search_alg, 3)]

    assert first(0) == first(0)
    assert first(0) != first(1)


# ----------------------------------------------------------------------------- several objectives


@pytest.mark.parametrize("sampler, kind", [("nsga2", "NSGAIISampler"), ("tpe", "TPESampler")])
def test_optuna_takes_several_objectives_as_lists(tmp_path, sampler, kind):
    raw = _raw(tmp_path, search="optuna", sampler=sampler, scheduler="fifo",
               metrics={"val_mpjpe": "min", "macs_per_frame": "min"})
    cfg, dims, search = _search(raw)
    assert cfg.tune.metric == "val_mpjpe"  # the first objective: the trials table's best_val_mpjpe column
    optuna_search = search.search_alg.searcher
    assert optuna_search.metric == ["val_mpjpe", "macs_per_frame"] and optuna_search.mode == ["min", "min"]
    study = optuna_search._ot_study
    assert type(study.sampler).__name__ == kind and len(study.directions) == 2
    _suggestions(search.search_alg, 3)
    assert [t.values for t in study.trials] == [[100.0, 1e6], [101.0, 1e6], [102.0, 1e6]]
    assert (search.metric, search.mode) == ("val_mpjpe", "min")


def test_tune_metric_is_shorthand_for_one_objective(tmp_path):
    cfg = config_from_dict(_raw(tmp_path, metric="loss"))
    assert (cfg.tune.metric, cfg.tune.metrics) == ("loss", {})
    cfg, dims, search = _search(_raw(tmp_path, search="optuna", metrics={"loss": "max"}))
    assert search.search_alg.searcher.metric == "loss" and search.search_alg.searcher.mode == "max"
    assert "macs_per_frame" in REPORTED_METRICS and "val_mpjpe" in REPORTED_METRICS


# ----------------------------------------------------------------------------- refusals


@pytest.mark.parametrize("tune, message", [
    ({"search": "smac"}, r"tune.search: got 'smac', expected one of"),
    ({"sampler": "cmaes"}, r"tune.sampler: got 'cmaes', expected one of"),
    ({"search": "hyperopt", "sampler": "nsga2"}, r"tune.sampler: nsga2 is an optuna sampler, but tune.search is hyperopt"),
    ({"search": "optuna", "space": {"model.depth": {"grid": [1, 2]}}},
     r"tune.space.model.depth.grid: search optuna samples, it does not enumerate: use choice"),
    ({"search": "hyperopt", "space": {"model.depth": {"grid": [1, 2]}}}, r"tune.space.model.depth.grid: search hyperopt"),
    ({"search": "bohb", "scheduler": "hyperband", "space": {"model.depth": {"grid": [1, 2]}}},
     r"tune.space.model.depth.grid: search bohb"),
    ({"search": "bohb", "scheduler": "hyperband"}, r"tune.space.model.name.branches: search bohb cannot search branches"),
    ({"search": "bohb"}, r"tune.scheduler: search bohb runs with scheduler hyperband .* got search bohb with scheduler asha"),
    ({"scheduler": "hyperband"}, r"tune.scheduler: .* got search random with scheduler hyperband"),
    ({"search": "hyperopt", "scheduler": "fifo", "metrics": {"val_mpjpe": "min", "macs_per_frame": "min"}},
     r"tune.metrics: search hyperopt optimises one objective, got 2 \(val_mpjpe, macs_per_frame\); use search: optuna"),
    ({"search": "optuna", "metrics": {"val_mpjpe": "min", "macs_per_frame": "min"}},
     r"tune.metrics: scheduler asha compares trials on one metric, got 2 .*use scheduler: fifo"),
    ({"search": "optuna", "metrics": {"val_acc": "max"}},
     r"tune.metrics: no trial reports 'val_acc' \(expected one of val_mpjpe, loss, macs_per_frame, params, "
     r"train_frames_per_s, peak_memory_mb\)"),
    ({"metric": "val_px"}, r"tune.metric: no trial reports 'val_px'"),  # a keypoint model reports val_mpjpe
    ({"metrics": {"val_mpjpe": "lowest"}}, r"tune.metrics.val_mpjpe: expected min or max, got 'lowest'"),
    ({"metric": "loss", "metrics": {"val_mpjpe": "min"}}, r"tune.metric 'loss' is not the first of tune.metrics"),
    ({"search": "optuna", "space": {"train.betas": {"choice": [[0.9, 0.99], [0.9, 0.999]]}}},
     r"tune.space.train.betas: optuna chooses among numbers, strings, booleans and null, got \[0.9, 0.99\]"),
])
def test_searches_that_cannot_run_are_refused_in_one_line(tmp_path, tune, message):
    with pytest.raises(ConfigError, match=message) as e:
        check_space(_raw(tmp_path, **tune))
    assert "\n" not in str(e.value)


def test_make_scheduler_keeps_asha_on_the_reported_epoch(tmp_path):
    cfg = config_from_dict(_raw(tmp_path, scheduler="fifo"))
    assert type(make_scheduler(cfg)).__name__ == "FIFOScheduler"


# ----------------------------------------------------------------------------- resume


def test_a_restored_optuna_search_goes_on_from_the_trials_it_has_seen(tmp_path):
    """What `raylift tune --resume` does to the searcher: `Tuner.restore` unpickles the search
    algorithm as the Tuner stored it (before any trial), and Tune's controller restores its state
    from the experiment directory. The restored study holds the finished trials, and the next
    suggestion is the one the uninterrupted search would have made, not a fresh start's first."""
    import ray.cloudpickle as pickle
    from ray.tune.search import SearchGenerator

    raw = _raw(tmp_path, search="optuna", num_samples=8)
    search = _search(raw)[2]
    stored = pickle.dumps(search.search_alg)  # as tuner.pkl keeps it
    live = SearchGenerator(search.search_alg)
    fresh_first = SearchGenerator(pickle.loads(stored)).searcher.suggest("x")
    seen = _suggestions(live.searcher, 3)
    assert seen[0] == fresh_first
    (tmp_path / "state").mkdir()
    live.save_to_dir(str(tmp_path / "state"), session_str="s")

    restored = SearchGenerator(pickle.loads(stored))
    restored.restore_from_dir(str(tmp_path / "state"))
    study = restored.searcher.searcher._ot_study
    assert [t.number for t in study.trials] == [0, 1, 2] and all(t.state.name == "COMPLETE" for t in study.trials)
    assert restored.searcher.suggest("t3") == live.searcher.suggest("t3") != fresh_first


# ----------------------------------------------------------------------------- shipped config


def test_shipped_cmu_search_config_loads_and_checks():
    cfg = load_config(str(REPO / "configs" / "tune_search_cmu.yaml"))
    assert (cfg.tune.search, cfg.tune.sampler) == ("optuna", "tpe")
    assert cfg.train.select == "val" and cfg.data.source.val_subjects
    raw = yaml.safe_load((REPO / "configs" / "tune_search_cmu.yaml").read_text())
    check_space(raw)


# ----------------------------------------------------------------------------- end to end



@pytest.mark.slow
def test_optuna_searches_a_conditional_space_of_real_trials(tmp_path, ray_tune_cluster):
    """4 one-epoch trials of tiny MixSTE or PoseFormer (the branch picks the model and its windows),
    chosen by seeded TPE on two objectives; the table keeps best_val_mpjpe and each trial's own keys."""
    raw = _raw(tmp_path, search="optuna", num_samples=4, max_concurrent=1, scheduler="fifo",
               metrics={"val_mpjpe": "min", "loss": "min"})
    raw["train"].update(epochs=1, max_windows_per_epoch=64, max_val_windows=64)
    summary = tune_experiment(raw, "search", str(tmp_path / "tune"), progress=lambda s: None)
    table = pd.read_csv(Path(summary["dir"]) / "trials.csv")
    assert len(table) == 4 and table["best_val_mpjpe"].notna().all() and (table["status"] == "DONE").all()
    assert set(table["model.name"]) == {"mixste", "poseformer"}  # seed 0's TPE start-up draws both
    for _, row in table.iterrows():
        mixste = row["model.name"] == "mixste"
        assert (row["model.dim"] == 16) if mixste else math.isnan(row["model.dim"])
        assert (row["model.spatial_dim"] == 8) if not mixste else math.isnan(row["model.spatial_dim"])
        assert row["T"] in ((9, 27) if mixste else (9,))
        assert 1.0e-4 <= row["train.lr"] <= 3.0e-3
    best = load_config(summary["best_config"])
    assert best.model.name == table.iloc[0]["model.name"] and best.tune is None


# ----------------------------------------------------------------------------- raylift bench search


def test_bench_search_reports_the_best_after_k_trials_over_seeds():
    from pipelines.bench.search import best_after, parse_algorithms, plot, summarise, table

    # (finish time, best score): ordered by finish time; a failed trial keeps the best so far.
    assert best_after([(3.0, 120.0), (1.0, 150.0), (2.0, math.nan), (4.0, 130.0)], "min") == [150.0, 150.0, 120.0, 120.0]
    first, second = best_after([(1.0, math.nan), (2.0, 0.5)], "max")
    assert math.isnan(first) and second == 0.5
    summary = summarise({"random": [[150.0, 120.0], [140.0, 140.0]], "optuna": [[150.0, 110.0], [130.0, 100.0]]})
    assert summary["random"]["mean"] == [145.0, 130.0] and summary["optuna"]["sd"][1] == pytest.approx(math.sqrt(50))
    assert "| 2 | 130.00 ± 14.14 | 105.00 ± 7.07 |" in table(summary, "val_mpjpe", markdown=True)
    assert plot(summary, "val_mpjpe", 2)[:8] == b"\x89PNG\r\n\x1a\n"
    assert parse_algorithms("random, optuna") == ["random", "optuna"]
    for bad in ("random,smac", "optuna,optuna", ""):
        with pytest.raises(ValueError, match="--algorithms: expected distinct names among random, optuna, hyperopt, bohb"):
            parse_algorithms(bad)


def test_bench_search_reads_back_finished_searches_resumes_interrupted_ones_and_refuses_others(tmp_path):
    """What `raylift bench search` does with each search's experiment directory before running it."""
    from pipelines.bench.search import search_state
    from pipelines.tune.driver import BASE_CONFIG_FILE, experiment_uri

    raw = tune_demo_raw(tmp_path, search="optuna", seed=1)
    experiment = Path(experiment_uri(str(tmp_path / "tune"), "bench_optuna_s1"))
    assert search_state(str(experiment), raw) == "new"
    experiment.mkdir(parents=True)
    (experiment / BASE_CONFIG_FILE).write_text(yaml.safe_dump(raw, sort_keys=False))  # as tune_experiment saves it
    assert search_state(str(experiment), raw) == "interrupted"
    (experiment / "trials.csv").write_text("trial\n")
    assert search_state(str(experiment), raw) == "finished"
    other = {**raw, "tune": {**raw["tune"], "seed": 2}}
    with pytest.raises(ConfigError, match=rf"{BASE_CONFIG_FILE}: this experiment was tuned with another config"):
        search_state(str(experiment), other)


def test_bench_search_scores_the_mean_pose_as_trials_score_themselves(tmp_path):
    """The bench's reference row: the mean real training pose for every validation frame, by the
    trials' own validation code, equals MPJPE computed here in numpy (flipped copies skipped)."""
    from pipelines.train.baseline import mean_pose_validation
    from preprocessing.keypoints.dataset import prepare_dataset
    from preprocessing.store.parquet import read_split

    raw = tune_demo_raw(tmp_path)
    raw["data"]["source"]["synthetic"].update(frames_per_action=60)
    raw["data"]["source"].update(train_subjects=["S1", "S5"], val_subjects=["S5"], test_subjects=["S9"])
    raw["train"]["select"] = "val"
    value, split = mean_pose_validation(config_from_dict(raw))
    dataset = prepare_dataset(config_from_dict(raw).data, progress=lambda _: None)
    train = read_split(dataset, "train", ["positions_3d", "mask"])
    val = read_split(dataset, split, ["positions_3d", "mask", "flipped"])
    real = train["mask"] > 0.5
    mean = train["positions_3d"][real].astype(np.float64).mean(axis=0)  # (J, 3) over every real frame
    keep = (val["mask"] > 0.5) & (val["flipped"] < 0.5)[:, None]
    expected = 1000.0 * np.linalg.norm(val["positions_3d"][keep] - mean, axis=-1).mean()
    assert split == "val" and value == pytest.approx(expected, rel=1e-5)
