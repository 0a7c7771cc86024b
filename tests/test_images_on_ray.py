"""Image models' inference as Ray Data batch inference (for the image-to-2D model): the
2D evaluation (`raylift evaluate` on an image checkpoint, the evaluation after training, stage 1
of `raylift two-stage`) and `raylift predict2d` run the model in Ray Data workers, not in the job
driver, with the same numbers as the model run directly over the split."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.helpers import synthetic_data
from tests.helpers import TINY_MPSTR


@pytest.fixture(scope="module")
def image_run(tmp_path_factory, ray_local):
    """A tiny image dataset and an untrained (seeded) mpstr checkpoint for it."""
    from models.checkpoint import save_checkpoint
    from models.registry import build_model, parse_model_config
    from preprocessing.images.dataset import build_image_dataset

    tmp = tmp_path_factory.mktemp("images_on_ray")
    info = build_image_dataset(synthetic_data(tmp, frames=10, windows_per_shard=2, windows_per_group=1),
                               progress=lambda m: None)
    torch.manual_seed(0)
    model = build_model(parse_model_config(dict(TINY_MPSTR), "model"), frames=4, joints=17).eval()
    meta = {"model": dict(TINY_MPSTR), "frames": 4, "joints": 17, "layout": "h36m", "epoch": 3,
            "dataset_id": info.id, "metrics": {}}
    return info, save_checkpoint(tmp / "ckpt", model.state_dict(), meta), model


def _direct(model, dataset, split: str) -> dict[str, np.ndarray]:
    """The reference: the model run in this process over every row group of the split."""
    from preprocessing.images.readers import iter_image_groups

    parts = []
    for arrays in iter_image_groups(dataset, split):
        with torch.no_grad():
            arrays["pred"] = model(torch.from_numpy(arrays.pop("images"))).numpy()
        arrays.pop("flipped")
        parts.append(arrays)
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def test_2d_evaluation_on_ray_matches_the_model_run_directly(image_run):
    from pipelines.evaluate.batch import Placement
    from pipelines.evaluate.images2d import MEAN_POSE, evaluate_image_checkpoint, score_mean_pose, score_predictions
    from preprocessing.store.storage import open_location

    dataset, ckpt, model = image_run
    test = _direct(model, dataset, "test")
    expected = score_predictions(test, 32)
    train = _direct(model, dataset, "train")
    mean = train["keypoints"][train["mask"] > 0].reshape(-1, 17, 2).mean(axis=0)  # every real frame and view
    mean_pose = score_mean_pose(test, mean, 32)
    lines: list[str] = []
    for source, ship in ((str(ckpt), True), (open_location(str(ckpt)), False)):  # shipped, or read by workers
        result = evaluate_image_checkpoint(source, dataset, Placement(cpus=1), batch_size=2, ship=ship,
                                           progress=lines.append)
        (entry,) = result["models"].values()
        assert entry["epoch"] == 3 and set(entry["results"]) == set(expected)
        for activity, metrics in expected.items():
            for key, value in metrics.items():
                assert entry["results"][activity][key] == pytest.approx(value, rel=1e-4, abs=1e-6), (activity, key)
        assert result["boxes"] == "ground-truth 2D boxes (+margin 0.15)" and result["boxes"] in result["protocol"]
        assert result["mean_pose"]["label"] == MEAN_POSE
        for key, value in mean_pose["overall"].items():
            assert result["mean_pose"]["results"]["overall"][key] == pytest.approx(value, rel=1e-5, abs=1e-6), key
    assert lines.count("2D evaluation: Ray Data batch inference on CPU tasks of 1 CPU(s); crop boxes: "
                       "ground-truth 2D boxes (+margin 0.15)") == 2


def test_predict2d_on_ray_matches_the_model_run_directly(image_run, tmp_path):
    from pipelines.evaluate.batch import Placement
    from pipelines.evaluate.predict2d import collect_full_image, positions_2d, predict_2d_file

    dataset, ckpt, model = image_run
    tables: dict = {}
    for split in ("train", "test"):
        collect_full_image(_direct(model, dataset, split), 32, 4, tables)
    from preprocessing.store.dataset import Dataset

    expected = positions_2d(tables, list(dataset.manifest["cameras"]))
    out = tmp_path / "pred.npz"
    meta = predict_2d_file(str(ckpt), dataset, str(out), Placement(cpus=1), batch_size=3, progress=lambda m: None)
    with np.load(out, allow_pickle=True) as z:
        got = z["positions_2d"].item()
    assert meta["frames"] == 2 * 10 * 4 and set(got) == set(expected)
    assert meta["boxes"] == "ground-truth 2D boxes (+margin 0.15)"
    for subject, actions in expected.items():
        for action, cams in actions.items():
            for want, have in zip(cams, got[subject][action]):
                np.testing.assert_allclose(have, want, rtol=1e-5, atol=1e-3)  # full-image pixels


def test_an_image_checkpoint_of_the_wrong_window_length_is_refused_before_inference(image_run, tmp_path):
    from models.checkpoint import CheckpointError, save_checkpoint
    from models.registry import build_model, parse_model_config
    from pipelines.evaluate.batch import Placement
    from pipelines.evaluate.images2d import evaluate_image_checkpoint

    dataset = image_run[0]
    f8 = build_model(parse_model_config(dict(TINY_MPSTR), "model"), frames=8, joints=17)
    bad = save_checkpoint(tmp_path / "f8", f8.state_dict(),
                          {"model": dict(TINY_MPSTR), "frames": 8, "joints": 17, "layout": "h36m", "epoch": 0})
    for ship in (True, False):
        with pytest.raises(CheckpointError, match=r"f=8 frames, dataset .* has f=4"):
            evaluate_image_checkpoint(str(bad), dataset, Placement(), ship=ship, progress=lambda m: None)


def test_evaluation_after_training_runs_on_the_training_workers_resources(image_run, tmp_path):
    from pipelines.config import config_from_dict
    from pipelines.evaluate.images2d import evaluate_image_best
    from tests.helpers import image_raw

    dataset, ckpt, _ = image_run
    cfg = config_from_dict(image_raw(tmp_path, num_workers=1, cpus_per_worker=0.5))
    lines: list[str] = []
    result = evaluate_image_best(cfg, str(ckpt), dataset, str(tmp_path / "run"), lines.append)
    assert "2D evaluation: Ray Data batch inference on CPU tasks of 0.5 CPU(s); crop boxes: ground-truth 2D boxes (+margin 0.15)" in lines
    assert (tmp_path / "run" / "eval" / "results.md").is_file()
    assert next(iter(result["models"].values()))["results"]["overall"]["images"] == 10 * 4


def test_the_image_stream_keeps_shard_order_and_fits_beside_whole_cpu_workers(image_run):
    """The 2D evaluation's AP ranks detections of equal score in the order the images come, so the
    stream keeps the shards' row order (the mean-pose AP of one checkpoint moved between 0.2707 and
    0.2778 from run to run). Its read and decode tasks ask for less than a CPU, as a trial counts."""
    from preprocessing.images.readers import DECODE_TASK_CPUS, load_image_split, open_image_split
    from preprocessing.store.parquet import READ_TASK_CPUS

    dataset, _, _ = image_run
    ds = open_image_split(dataset, "test", flip=False, labels=True)
    assert ds.context.execution_options.preserve_order
    streamed = np.concatenate([b["frame"] for b in ds.iter_batches(batch_size=None, batch_format="numpy")])
    np.testing.assert_array_equal(streamed, load_image_split(dataset, "test")["frame"])
    assert 0 < READ_TASK_CPUS <= DECODE_TASK_CPUS < 1
