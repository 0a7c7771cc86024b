"""The two-stage system, training side: the image model through `raylift train`, its 2D evaluation, predicted
2D files for the lifters, `raylift two-stage`, and `raylift models import --from mpstr`.

Fast tests use no Ray; the end-to-end test (slow) runs images -> 2D -> predicted 2D -> lifter -> 3D
on tiny synthetic images in the driver process (`num_workers: 0`).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from pipelines.config import config_from_dict
from preprocessing.errors import DataError
from preprocessing.schema import ConfigError
from preprocessing.skeleton import H36M17
from tests.helpers import TINY_MPSTR, image_raw


# ----------------------------------------------------------------------------- config checks


def test_image_model_and_keypoint_source_refused_both_ways(tmp_path):
    raw = image_raw(tmp_path)
    raw["data"]["source"]["kind"] = "synthetic"
    with pytest.raises(ConfigError, match="mpstr.*takes images.*data.source.kind is 'synthetic'"):
        config_from_dict(raw)
    lifter = {"data": {"source": {"kind": "synthetic_images"}, "windows": {"mode": "seq2frame", "frames": 9}},
              "model": {"name": "poseformer"}}
    with pytest.raises(ConfigError, match="poseformer.*takes 2D keypoints.*synthetic_images"):
        config_from_dict(lifter)


def test_image_windows_follow_data_images(tmp_path):
    raw = image_raw(tmp_path)
    raw["data"]["images"]["frames"] = 6
    cfg = config_from_dict(raw)
    assert (cfg.data.windows.frames, cfg.data.windows.multiview, cfg.data.windows.mode) == (6, True, "seq2seq")


def test_prepared_dataset_of_the_wrong_kind_is_refused(tmp_path):
    from pipelines.train.driver import check_input_kind
    from preprocessing.store.dataset import Dataset
    from preprocessing.store.storage import open_location

    cfg = config_from_dict(image_raw(tmp_path))
    where = open_location("data/datasets/abc")
    with pytest.raises(ConfigError, match="holds 2D keypoint windows, but model 'mpstr' takes images"):
        check_input_kind(cfg, Dataset(where, {"id": "abc", "kind": "keypoints"}))
    check_input_kind(cfg, Dataset(where, {"id": "abc", "kind": "images"}))


# ----------------------------------------------------------------------------- batches and scores


def test_training_batch_flips_are_seeded_and_mirror_labels():
    from pipelines.train.images import training_batch

    rng = np.random.default_rng(0)
    batch = {"images": rng.random((6, 2, 4, 3, 8, 8), dtype=np.float32),
             "keypoints": rng.random((6, 2, 4, 17, 2), dtype=np.float32) * 8,
             "mask": np.ones((6, 2), dtype=np.float32)}
    perm = H36M17.flip_permutation()
    a = training_batch(batch, True, np.random.default_rng(5), 8, perm, torch.device("cpu"))
    b = training_batch(batch, True, np.random.default_rng(5), 8, perm, torch.device("cpu"))
    c = training_batch(batch, True, np.random.default_rng(6), 8, perm, torch.device("cpu"))
    assert torch.equal(a["flipped"], b["flipped"]) and not torch.equal(a["flipped"], c["flipped"])
    assert 0 < int(a["flipped"].sum()) < 6
    i = int(np.flatnonzero(a["flipped"].numpy())[0])
    np.testing.assert_array_equal(a["images"][i].numpy(), batch["images"][i][..., ::-1])
    np.testing.assert_allclose(a["keypoints_2d"][i, ..., 0].numpy(), 8 - batch["keypoints"][i][..., perm, 0])
    j = int(np.flatnonzero(~a["flipped"].numpy())[0])
    np.testing.assert_array_equal(a["images"][j].numpy(), batch["images"][j])
    off = training_batch(batch, False, None, 8, perm, torch.device("cpu"))
    assert not off["flipped"].any() and set(off) == {"images", "keypoints_2d", "mask", "flipped"}


class _Offset(torch.nn.Module):
    """Predicts the ground truth plus (1, 0) crop pixels: needs the targets, given at construction."""

    def __init__(self, target: np.ndarray) -> None:
        super().__init__()
        self.target = torch.from_numpy(target)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.target[: x.shape[0]] + torch.tensor([1.0, 0.0])


def test_validation_2d_error_is_in_full_image_pixels_over_real_frames():
    from pipelines.train.images import validation_sums_2d

    kp = np.random.default_rng(1).random((2, 3, 4, 17, 2)).astype(np.float32) * 32
    boxes = np.tile(np.array([10.0, 20.0, 74.0, 84.0], dtype=np.float32), (2, 3, 4, 1))  # side 64 = 2 x crop
    mask = np.array([[1, 1, 0], [1, 0, 0]], dtype=np.float32)
    groups = [{"images": np.zeros((2, 3, 4, 3, 32, 32), np.float32), "keypoints": kp, "boxes": boxes, "mask": mask}]
    total, count = validation_sums_2d(_Offset(kp), groups, 32, 8, torch.device("cpu"))
    assert count == 3 * 4  # 3 real frames x 4 views
    assert total / count == pytest.approx(2.0)  # 1 crop pixel = 2 image pixels


def test_image_validation_reads_the_split_train_select_names(tmp_path, ray_local):
    """`train.select: val` measures the per-epoch 2D error on the validation subjects, so the
    chosen checkpoint never saw the test split; `test` measures it on the test split."""
    from models.registry import build_model
    from pipelines.train.driver import validation_split
    from pipelines.train.images import validation_sums_2d
    from pipelines.train.tasks import task_for
    from preprocessing.images.dataset import build_image_dataset
    from preprocessing.images.readers import iter_image_groups

    raw = image_raw(tmp_path, select="val")
    raw["data"]["source"]["synthetic"]["subjects"] = ["S1", "S8", "S9"]
    raw["data"]["source"]["val_subjects"] = ["S8"]
    cfg = config_from_dict(raw)
    dataset = build_image_dataset(cfg.data, progress=lambda _: None)
    torch.manual_seed(0)
    model = build_model(cfg.model, frames=cfg.data.images.frames, joints=17).eval()
    cpu = torch.device("cpu")
    expected = {split: validation_sums_2d(model, iter_image_groups(dataset, split), 32, 4, cpu)
                for split in ("val", "test")}
    assert expected["val"] != expected["test"]
    for select, split in (("val", "val"), ("test", "test")):
        cfg.train.select = select
        assert validation_split(cfg, dataset) == split
        task = task_for(cfg, dataset, split, progress=lambda _: None)
        with torch.no_grad():
            assert task.validation_sums(model, 0, 1, cpu) == pytest.approx(expected[split]), select


def test_epoch_line_names_pixels_for_image_models():
    from pipelines.train.loop import epoch_line

    row = {"epoch": 1, "loss": 1.0, "val_mpjpe": 3.5, "val_px": 3.5, "lr": 1e-3, "windows_per_s": 5, "epoch_time_s": 1}
    assert "val 2D error    3.50 px" in epoch_line(row, 2, 1.0)
    del row["val_px"]
    assert "val MPJPE    3.50 mm" in epoch_line(row, 2, 1.0)


def test_predicted_frames_are_complete_or_the_gap_is_named():
    from pipelines.evaluate.predict2d import collect_full_image, positions_2d

    w, f, v = 2, 3, 2
    pred = np.zeros((w, f, v, 17, 2))
    pred[..., 0] = 16.0  # crop centre
    arrays = {"pred": pred, "boxes": np.tile([0.0, 0.0, 64.0, 64.0], (w, f, v, 1)),
              "mask": np.array([[1, 1, 1], [1, 1, 0]], np.float32), "frame": np.array([[0, 1, 2], [3, 4, 4]]),
              "subject": np.array(["S1", "S1"], object), "action": np.array(["Walk", "Walk"], object)}
    tables: dict = {}
    collect_full_image(arrays, 32, v, tables)
    pos = positions_2d(tables, ["54138969", "55011271"])
    assert len(pos["S1"]["Walk"]) == 2 and pos["S1"]["Walk"][0].shape == (5, 17, 2)
    np.testing.assert_allclose(pos["S1"]["Walk"][1][..., 0], 32.0)  # 16 crop px x (64 / 32)
    del tables[("S1", "Walk")][2]
    with pytest.raises(DataError, match="S1/Walk: no prediction for frame 2"):
        positions_2d(tables, ["54138969", "55011271"])


def test_table_i_shows_both_models():
    from pipelines.evaluate.images2d import format_table_i

    m = {"PCK@0.05": 0.5, "pixel_error": 3.0, "MSE": 9.0, "AP": 0.4, "AP50": 0.9, "AP75": 0.3, "AR": 0.5, "images": 8}
    text = format_table_i({"baseline": m, "full": {**m, "pixel_error": 2.0}})
    assert "PCK@0.05 %" in text and "baseline" in text and "full" in text and " 2.00 " in text


# ----------------------------------------------------------------------------- official import


def test_models_import_from_mpstr_reproduces_the_authors_outputs(parity_dir, tmp_path, capsys):
    from models.checkpoint import load_model
    from pipelines.cli import main

    if not (parity_dir / "mpstr2d.io.npz").is_file():
        pytest.skip(f"mpstr2d fixtures not found in {parity_dir}")
    with np.load(parity_dir / "mpstr2d.io.npz", allow_pickle=False) as z:
        x, y = z["input"], z["output"]
        backbone = json.loads(str(z["config"]))["model"]["backbone"]
    (tmp_path / "backbone.json").write_text(json.dumps(backbone))
    argv = ["models", "import", "--from", "mpstr", str(parity_dir / "mpstr2d.ckpt.bin"), "--backbone",
            str(tmp_path / "backbone.json"), "--out", str(tmp_path / "ckpt")]
    assert main(argv) == 0
    assert "epoch 7, variant official" in capsys.readouterr().out
    model, meta = load_model(tmp_path / "ckpt")
    assert meta["model"]["variant"] == "official" and meta["imported_from"]["format"] == "mpstr"
    with torch.no_grad():  # the fixture's input is the authors' normalised crops; raylift's model normalises
        out = model.eval()(torch.from_numpy(x) * model.input_std + model.input_mean)
    assert np.abs(out.numpy() - y).max() < 1e-5
    (tmp_path / "bad.json").write_text("[1, 2]")
    assert main([*argv[:-4], "--backbone", str(tmp_path / "bad.json"), "--out", str(tmp_path / "c2")]) == 2
    assert "bad.json: expected a YAML mapping" in capsys.readouterr().err


# ----------------------------------------------------------------------------- end to end


@pytest.mark.slow
def test_two_stage_end_to_end_on_synthetic_images(tmp_path, ray_local, capsys):
    """images -> mpstr (and its baseline) -> Table I -> predicted 2D file -> PoseFormer -> 3D table."""
    from pipelines.cli import main
    from pipelines.twostage.driver import TwoStageConfig, StagesConfig, run_two_stage
    from preprocessing.config import SourceConfig
    from preprocessing.sources.videopose3d import load_generic
    from preprocessing.sources.synthetic import ensure_synthetic

    images = image_raw(tmp_path, epochs=2, lr=1e-3, weight_decay=0.05, select="last")
    lifter = {"data": {"windows": {"mode": "seq2frame", "frames": 3, "stride": 1}, "root": str(tmp_path / "datasets")},
              "model": {"name": "poseformer", "spatial_dim": 8, "depth": 1, "heads": 2, "drop_path_rate": 0.0},
              "train": {"epochs": 1, "batch_size": 64, "lr": 1e-3, "num_workers": 0}, "eval": {"batch_size": 256}}
    two = TwoStageConfig(name="ts", storage_path=str(tmp_path / "runs"),
                         stages=StagesConfig(images=images, lifter=lifter, compare_baseline=True))
    result = run_two_stage(two, progress=lambda s: None)

    stage1 = result["stage1"]["models"]
    assert len(stage1) == 2 and any("baseline" in k for k in stage1) and any("full" in k for k in stage1)
    for entry in stage1.values():
        overall = entry["results"]["overall"]
        assert overall["images"] == 12 * 4 and np.isfinite(overall["pixel_error"]) and 0 <= overall["PCK@0.05"] <= 1
        # train.select: last scores the last epoch, never the epoch best on the test subject
        assert entry["checkpoint"].rstrip("/").endswith("checkpoint_epoch0002"), entry["checkpoint"]
    rows = {r["input"].split(" ")[0]: r for r in result["stage2"]}
    assert set(rows) == {"predicted", "ground-truth", "(none:"}  # the mean-pose row beside the lifters
    assert rows["(none:"]["lifter"].startswith("mean pose") and result["stage2"][-1] is rows["(none:"]
    for r in rows.values():
        assert np.isfinite(r["mpjpe"]) and np.isfinite(r["p_mpjpe"]) and r["frames"] > 0

    # The predicted file is a VideoPose3D 2D file the generic source reads, every frame of every camera.
    pred = tmp_path / "runs" / "ts" / "predicted_2d.npz"
    syn = ensure_synthetic(config_from_dict(images).data.source.synthetic)
    seqs = load_generic(SourceConfig(kind="generic", data_3d=syn.data_3d, data_2d=str(pred), cameras=syn.cameras,
                                     train_subjects=["S1"], test_subjects=["S9"]))[0]
    assert len(seqs) == 2 * 4 and all(s.num_frames == 12 for s in seqs)
    with np.load(pred, allow_pickle=True) as z:
        meta = z["metadata"].item()
    assert meta["keypoints_symmetry"] == [list(H36M17.left), list(H36M17.right)]
    assert len(meta["res"]) == 4 and meta["res"][0]["w"] > 0
    assert (tmp_path / "runs" / "ts" / "two_stage.md").read_text().count("|") > 10

    # `raylift evaluate` on an image checkpoint: the per-activity 2D table and Table I.
    full, base = (stage1[k]["checkpoint"] for k in sorted(stage1, key=lambda k: "baseline" in k))
    capsys.readouterr()
    assert main(["evaluate", "--checkpoint", full, "--compare", base, "--out", str(tmp_path / "ev")]) == 0
    out = capsys.readouterr().out
    assert "Table I" in out and "PCK@0.05" in out and "overall" in out and "protocol: 2D" in out
    assert (tmp_path / "ev" / "results.md").is_file()


def test_tune_config_searches_the_papers_frame_counts_and_relation_depth():
    from pipelines.tune.driver import check_space, data_variants
    from preprocessing.schema import load_yaml

    raw = load_yaml(str(Path(__file__).resolve().parents[1] / "configs" / "tune_mpstr.yaml"))
    cfg, dims = check_space(raw)  # every combination is a valid config
    assert cfg.tune.metric == "val_px"
    variants = data_variants(dims)  # one image dataset per frame count
    assert sorted(v["data.images.frames"] for v in variants) == [8, 32, 128]
    assert {d.key for d in dims} == {"data.images.frames", "model.relation_depth"}


def test_untrained_mpstr_predicts_the_crop_centre():
    """Pixel regression starts at the crop centre (head bias), not at (0, 0): a few hundred steps of
    Adam at lr 1e-3 could not move a bias from 0 to the ~16-112 px a crop's keypoints sit at."""
    from models.mpstr import MPSTRConfig
    from models.registry import build_model

    net = build_model(MPSTRConfig(**{**TINY_MPSTR, "depths": (1, 1), "num_heads": (2, 4)}), frames=2)
    torch.nn.init.zeros_(net.head.proj.weight)
    with torch.no_grad():
        out = net(torch.rand(1, 2, 4, 3, 32, 32))
    assert torch.allclose(out, torch.full_like(out, 16.0))
