"""Train from a prepared dataset without its sources, and evaluation as Ray
Data batch inference equal to the in-driver evaluation of pipelines/evaluate/protocols.py (item 1)."""
from __future__ import annotations

import math
import shutil

import pytest

from preprocessing.schema import ConfigError
from tests.helpers import synthetic_cfg


@pytest.fixture(scope="module")
def trained(tmp_path_factory, ray_local):
    """Prepare a tiny synthetic dataset, delete its source files, train 1 epoch from its URI."""
    from pipelines.train.driver import run_training
    from preprocessing.keypoints.dataset import prepare_dataset

    tmp = tmp_path_factory.mktemp("from_uri")
    info = prepare_dataset(synthetic_cfg(tmp).data, progress=lambda m: None)
    shutil.rmtree(tmp / "synthetic")  # the raw sources are gone: only the Parquet windows remain
    cfg = synthetic_cfg(tmp, epochs=1, evaluate=True)
    cfg.data.dataset = info.uri
    cfg.data.source.synthetic.frames_per_action = 999  # would be another dataset if it were prepared
    lines: list[str] = []
    out = run_training(cfg, progress=lines.append)
    return tmp, info, cfg, out, lines


@pytest.mark.slow
def test_train_from_a_dataset_uri_needs_no_source_files(trained):
    tmp, info, cfg, out, lines = trained
    assert not (tmp / "synthetic").exists()
    assert out.dataset.uri == info.uri and out.best_checkpoint is not None
    assert [p.name for p in (tmp / "datasets").iterdir() if not p.name.startswith(".")] == [info.id]
    assert out.evaluation is not None and (tmp / "runs" / "tiny" / "eval" / "results.md").is_file()
    assert any("Ray Data batch inference on CPU tasks" in line for line in lines)


@pytest.mark.slow
def test_dataset_by_id_and_mismatched_windows(trained):
    from pipelines.train.driver import prepared_dataset
    from preprocessing.errors import DataError

    tmp, info, cfg, _, _ = trained
    cfg.data.dataset = info.id  # an id is looked up under data.root
    assert prepared_dataset(cfg).uri == info.uri
    cfg.data.windows.frames = 27
    with pytest.raises(ConfigError, match=r"holds seq2seq windows of T=9 .* data.windows asks for seq2seq T=27"):
        prepared_dataset(cfg)
    cfg.data.dataset = str(tmp / "nowhere")
    with pytest.raises(DataError, match="no dataset at"):
        prepared_dataset(cfg)


def _flatten(summary, prefix=""):
    if isinstance(summary, dict):
        for k, v in summary.items():
            yield from _flatten(v, f"{prefix}/{k}")
    elif isinstance(summary, (int, float)):
        yield prefix, float(summary)


@pytest.mark.slow
@pytest.mark.parametrize("flip", [True, False])
def test_ray_data_evaluation_equals_in_driver_evaluation(trained, flip):
    from models.checkpoint import load_model
    from pipelines.evaluate.batch import Placement, evaluate_on_ray
    from pipelines.evaluate.scoring import evaluate_model

    _, info, cfg, out, _ = trained
    model, _ = load_model(out.best_checkpoint)
    today = evaluate_model(model, info, flip=flip, batch_size=32, device="cpu", baseline=True)
    ray_data = evaluate_on_ray(out.best_checkpoint, info, Placement(cpus=1), flip=flip, batch_size=32,
                               progress=lambda m: None)
    assert {k: v for k, v in ray_data.items() if k != "results"} == {k: v for k, v in today.items() if k != "results"}
    a, b = dict(_flatten(ray_data["results"])), dict(_flatten(today["results"]))
    assert a.keys() == b.keys() and len(a) > 20
    # Same windows, same model, same scoring code; float32 forward passes over differently sized
    # batches may differ in the last bits, hence 1e-4 mm.
    assert all(math.isclose(a[k], b[k], rel_tol=0, abs_tol=1e-4) or (math.isnan(a[k]) and math.isnan(b[k])) for k in a)


def _assert_same_results(a_result: dict, b_result: dict) -> None:
    a, b = dict(_flatten(a_result["results"])), dict(_flatten(b_result["results"]))
    assert a.keys() == b.keys() and len(a) > 20
    assert all(math.isclose(a[k], b[k], rel_tol=0, abs_tol=1e-4) or (math.isnan(a[k]) and math.isnan(b[k])) for k in a)


@pytest.mark.slow
def test_evaluate_command_runs_on_ray_data_with_todays_numbers(trained, capsys):
    """`raylift evaluate --checkpoint D --data ID` : Ray Data batch inference
    (CPU tasks here), the checkpoint shipped from the driver; equal to the in-process protocol."""
    import json

    from models.checkpoint import load_model
    from pipelines.cli import main
    from pipelines.evaluate.scoring import evaluate_model

    tmp, info, _, out, _ = trained
    model, _ = load_model(out.best_checkpoint)
    today = evaluate_model(model, info, flip=True, batch_size=32, device="cpu", baseline=True)
    assert main(["evaluate", "--checkpoint", out.best_checkpoint, "--data", info.id, "--root", str(tmp / "datasets"),
                 "--device", "cpu", "--batch-size", "32", "--out", str(tmp / "cli-eval")]) == 0
    assert "Ray Data batch inference on CPU tasks" in capsys.readouterr().out
    via_ray = json.loads((tmp / "cli-eval" / "results.json").read_text())
    assert via_ray["frames"] == today["frames"] and via_ray["protocol"] == today["protocol"]
    _assert_same_results(via_ray, today)
    # A malformed --resources is refused before anything runs.
    assert main(["evaluate", "--checkpoint", out.best_checkpoint, "--resources", "gpu_like",
                 "--out", str(tmp / "bad-eval")]) == 2
    assert "--resources: expected NAME=AMOUNT" in capsys.readouterr().err and not (tmp / "bad-eval").exists()


@pytest.mark.slow
def test_infer_on_a_dataset_sequence_runs_on_ray_data_with_todays_poses(trained, capsys):
    """`raylift infer --dataset C --subject S --action A` lifts through Ray Data (CPU tasks here)
    and gives the poses of the in-process `lift_sequence` (a single --input file stays in-process)."""
    import numpy as np
    import yaml

    from models.checkpoint import load_model
    from pipelines.cli import main
    from pipelines.evaluate.infer import dataset_source, find_sequence, lift_sequence, load_inference_output
    from preprocessing.skeleton import H36M17
    from preprocessing.sources import load_sequences

    tmp, _, cfg, out, _ = trained
    exp = tmp / "exp.yaml"  # the synthetic sources are regenerated (byte-identical) from the config
    exp.write_text(yaml.safe_dump(cfg.to_dict()))
    sequences = load_sequences(dataset_source(str(exp), "S9", "gt")).sequences
    seq = find_sequence(sequences, "S9", next(s.action for s in sequences if s.subject == "S9"), "0")
    model, meta = load_model(out.best_checkpoint)
    today = lift_sequence(model, seq.keypoints_2d, int(meta["frames"]), H36M17, flip=True, batch_size=5)
    assert main(["infer", "--checkpoint", out.best_checkpoint, "--dataset", str(exp), "--subject", "S9",
                 "--action", seq.action, "--camera", "0", "--device", "cpu", "--batch-size", "5",
                 "--output", str(tmp / "seq.npz")]) == 0
    arrays, metadata = load_inference_output(tmp / "seq.npz")
    assert metadata["device"].startswith("Ray Data CPU tasks")
    assert arrays["poses_3d"].shape == (seq.num_frames, 17, 3)
    np.testing.assert_allclose(arrays["poses_3d"], today, rtol=0, atol=1e-6)


def test_cli_placement():
    from pipelines.evaluate.batch import Placement, placement_for_cli
    from preprocessing.errors import DataError

    assert placement_for_cli("cpu") == Placement() and not Placement().accelerated
    assert placement_for_cli("cuda", actors=2) == Placement(gpus=1.0, actors=2)
    assert placement_for_cli("cpu", {"gpu_like": 1.0}).accelerated  # custom resources: actors, CPU torch
    with pytest.raises(DataError, match="--device: expected one of auto, cpu, cuda .* got 'cuda:1'"):
        placement_for_cli("cuda:1")
    with pytest.raises(DataError, match="--actors must be >= 1, got 0"):
        placement_for_cli("cuda", actors=0)
