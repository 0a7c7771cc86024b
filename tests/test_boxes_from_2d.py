"""Crop boxes cut around any 2D file (`data.images.boxes: file`): a detector's boxes on the test
split, ground-truth boxes elsewhere, ground-truth labels everywhere; the file's content in the
dataset id and its name, sha256 and splits in the manifest and the 2D results.

Tiny on purpose: 2 subjects x 1 action x 6 frames, 32 px crops; only the build test starts Ray.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from preprocessing.errors import DataError
from preprocessing.images.crops import keypoint_box, to_full
from preprocessing.images.dataset import ImageJob, image_config_for_id, image_dataset_id, piece_rows
from preprocessing.images.sources import load_image_sequences, write_synthetic_videos
from preprocessing.schema import ConfigError, parse_dataclass
from preprocessing.config import DataConfig
from preprocessing.sources.safe_npz import write_npz
from preprocessing.sources.synthetic import METADATA, ensure_synthetic
from preprocessing.sources.videopose3d import read_positions_2d
from preprocessing.store.writer import hash_files
from tests.helpers import synthetic_data, video_data

NOISE_PX = 4.0


def rows_of(data: DataConfig) -> dict[str, dict]:
    """piece_rows of every sequence (both windows of 6 frames), by subject."""
    return {s.subject: piece_rows(s, 0, 2, ImageJob(data.source.kind, data.images, 0))
            for s in load_image_sequences(data).sequences}


def dataset_id(data: DataConfig) -> str:
    """The id `build_image_dataset` gives `data` (without building it)."""
    return image_dataset_id(data, [f["sha256"] for f in hash_files(load_image_sequences(data).files)])


def edited_2d(tmp: Path, name: str, edit) -> str:
    """A copy of the synthetic detector-like 2D file with `edit(positions_2d)` applied."""
    positions = read_positions_2d(ensure_synthetic(synthetic_data(tmp, noise_px=NOISE_PX).source.synthetic).data_2d)
    edit(positions)
    write_npz(tmp / name, {"positions_2d": positions, "metadata": METADATA})
    return str(tmp / name)


def test_defaults_keep_the_dataset_id_and_content_config(tmp_path):
    plain = synthetic_data(tmp_path)
    assert image_dataset_id(plain, ["abc"]) == "e5c2b1c2bca46d4e"  # the id before box files existed
    assert not {"boxes", "boxes_2d", "boxes_splits"} & set(image_config_for_id(plain)["images"])
    assert image_dataset_id(synthetic_data(tmp_path, boxes="file"), ["abc"]) != image_dataset_id(plain, ["abc"])


def test_file_boxes_change_only_the_test_crops_and_keep_ground_truth_labels(tmp_path):
    gt_data = synthetic_data(tmp_path, noise_px=NOISE_PX)
    gt, det = rows_of(gt_data), rows_of(synthetic_data(tmp_path, noise_px=NOISE_PX, boxes="file"))
    files = ensure_synthetic(gt_data.source.synthetic)
    truth, noisy = read_positions_2d(files.gt_2d), read_positions_2d(files.data_2d)
    for key in ("keypoints", "boxes", "mask", "frame"):  # train (S1): byte-identical
        assert gt["S1"][key].tobytes() == det["S1"][key].tobytes()
    assert gt["S1"]["images"] == det["S1"]["images"]
    test, real = det["S9"], det["S9"]["mask"] > 0  # 6 real frames of 8
    assert (test["boxes"] != gt["S9"]["boxes"]).any(axis=-1)[real].all()
    assert all(a != b for a, b in zip(sum(test["images"], []), sum(gt["S9"]["images"], [])) if a)
    frames = test["frame"][real]
    for v in range(4):
        points = np.asarray(noisy["S9"]["Walking 1"][v])[frames]  # the detector's 2D of view v
        assert np.abs(points - np.asarray(truth["S9"]["Walking 1"][v])[frames]).mean() > 1.0  # it is not the GT
        want = np.stack([keypoint_box(p, 0.15) for p in points])
        np.testing.assert_allclose(test["boxes"][real][:, v], want, rtol=1e-6, atol=1e-3)
        labels = to_full(test["keypoints"][real][:, v], test["boxes"][real][:, v], 32)
        np.testing.assert_allclose(labels, np.asarray(truth["S9"]["Walking 1"][v])[frames], atol=2e-3)


def test_the_dataset_id_follows_the_file_content(tmp_path):
    first = edited_2d(tmp_path, "a.npz", lambda p: None)
    second = edited_2d(tmp_path, "b.npz", lambda p: p["S9"]["Walking 1"][0].__setitem__((0, 0, 0), 500.0))
    same = edited_2d(tmp_path, "c.npz", lambda p: None)
    ids = [dataset_id(synthetic_data(tmp_path, boxes="file", boxes_2d=path)) for path in (first, second, same)]
    assert ids[0] != ids[1] and ids[0] == ids[2]  # the content counts, not the path
    assert ids[0] != dataset_id(synthetic_data(tmp_path, boxes="file", boxes_2d=first, boxes_splits=["train", "test"]))


def test_frame_folders_scale_the_file_boxes_like_the_labels(tmp_path):
    root = tmp_path / "frames"
    write_synthetic_videos(synthetic_data(tmp_path, noise_px=NOISE_PX), str(root), scale=0.1, frames_dir=True)
    noisy_file = ensure_synthetic(synthetic_data(tmp_path, noise_px=NOISE_PX).source.synthetic).data_2d
    data = video_data(tmp_path, "frames", root, noise_px=NOISE_PX, boxes="file", boxes_2d=noisy_file)
    src = load_image_sequences(data)
    assert src.boxes_file == noisy_file and noisy_file in src.files
    seq = src.sequences[1]
    assert seq.split == "test" and src.sequences[0].boxes_2d is None
    rows = piece_rows(seq, 0, 1, ImageJob(data.source.kind, data.images, 0))
    noisy = read_positions_2d(noisy_file)["S9"]["Walking 1"]
    for v, (w, h) in enumerate(seq.image_sizes):
        scale = [100 / w, 100 / h]  # the frames were rendered at 100 x 100 pixels
        want = np.stack([keypoint_box(np.asarray(noisy[v])[k] * scale, 0.15) for k in range(4)])
        np.testing.assert_allclose(rows["boxes"][0, :, v], want, rtol=1e-6, atol=1e-3)
        np.testing.assert_allclose(to_full(rows["keypoints"][0, :, v], rows["boxes"][0, :, v], 32),
                                   seq.keypoints[:4, v] * scale, atol=1e-3)


def test_missing_points_are_left_out_of_the_box_and_the_file_needs_only_the_cropped_splits(tmp_path):
    def edit(p):
        del p["S1"]  # a training subject: cropped around its labels, not needed in the file
        p["S9"]["Walking 1"][2][3, 5:] = np.nan  # a detector missed 12 joints of frame 3, view 2

    path = edited_2d(tmp_path, "partial.npz", edit)
    rows = rows_of(synthetic_data(tmp_path, noise_px=NOISE_PX, boxes="file", boxes_2d=path))
    points = read_positions_2d(path)["S9"]["Walking 1"][2][3, :5]
    np.testing.assert_allclose(rows["S9"]["boxes"][0, 3, 2], keypoint_box(points, 0.15), rtol=1e-6)


def _one_line_error(data: DataConfig, pattern: str) -> None:
    with pytest.raises(DataError, match=pattern) as err:
        load_image_sequences(data)
    assert "\n" not in str(err.value)


def test_bad_box_inputs_name_the_file_or_key(tmp_path):
    _one_line_error(synthetic_data(tmp_path, boxes="file", boxes_2d=str(tmp_path / "nope.npz")),
                    r"data\.images\.boxes_2d: file not found: .*nope\.npz")
    _one_line_error(synthetic_data(tmp_path, boxes="file"), r"data\.source\.synthetic\.noise_px is 0")
    short = edited_2d(tmp_path, "short.npz", lambda p: p["S9"]["Walking 1"].__setitem__(1, p["S9"]["Walking 1"][1][:4]))
    _one_line_error(synthetic_data(tmp_path, boxes="file", boxes_2d=short),
                    r"short\.npz: S9/Walking 1 camera 55011271: frames out of sync: the 2D file has 4 frames, the labels 6")
    empty = edited_2d(tmp_path, "empty.npz", lambda p: p["S9"]["Walking 1"][3].__setitem__(2, np.nan))
    _one_line_error(synthetic_data(tmp_path, boxes="file", boxes_2d=empty),
                    r"empty\.npz: S9/Walking 1 camera 60457274 frame 2: no finite 2D point")
    other = edited_2d(tmp_path, "other.npz", lambda p: p.pop("S9"))
    _one_line_error(synthetic_data(tmp_path, boxes="file", boxes_2d=other), r"other\.npz: S9/Walking 1: no 2D")


def test_box_keys_are_validated_with_the_key_named():
    with pytest.raises(ConfigError, match=r"images\.boxes_2d is 'd\.npz' but images\.boxes is 'gt'"):
        parse_dataclass(DataConfig, {"images": {"boxes_2d": "d.npz"}})
    with pytest.raises(ConfigError, match=r"images\.boxes_splits"):
        parse_dataclass(DataConfig, {"images": {"boxes": "file", "boxes_splits": ["tset"]}})
    with pytest.raises(ConfigError, match=r"images\.boxes"):
        parse_dataclass(DataConfig, {"images": {"boxes": "detector"}})


@pytest.mark.slow
def test_built_datasets_record_their_boxes_and_share_the_training_shards(tmp_path, ray_local):
    from pipelines.evaluate.images2d import box_source_text
    from preprocessing.images.dataset import build_image_dataset
    from preprocessing.images.readers import load_image_split, mean_keypoints

    quiet = lambda _: None  # noqa: E731
    gt = build_image_dataset(synthetic_data(tmp_path, noise_px=NOISE_PX), quiet)
    det = build_image_dataset(synthetic_data(tmp_path, noise_px=NOISE_PX, boxes="file"), quiet)
    assert gt.id != det.id
    record = det.windows["boxes"]
    noisy = ensure_synthetic(synthetic_data(tmp_path, noise_px=NOISE_PX).source.synthetic).data_2d
    assert record == {"file": "data_2d_synthetic_noisy.npz", "sha256": hash_files([noisy])[0]["sha256"], "splits": ["test"]}
    assert gt.windows["boxes"] == "gt"
    shards = {name: {s["split"]: s["sha256"] for s in d.manifest["shards"]} for name, d in (("gt", gt), ("det", det))}
    assert shards["gt"]["train"] == shards["det"]["train"] and shards["gt"]["test"] != shards["det"]["test"]
    assert box_source_text(gt) == "ground-truth 2D boxes (+margin 0.15)"
    assert box_source_text(det) == (f"boxes from data_2d_synthetic_noisy.npz (sha256 {record['sha256'][:12]}..., "
                                    "+margin 0.15) on test; ground-truth 2D boxes (+margin 0.15) on train")
    train = load_image_split(gt, "train")
    real = train["keypoints"][train["mask"] > 0]  # (frames, V, J, 2)
    np.testing.assert_allclose(mean_keypoints(gt, "train"), real.reshape(-1, 17, 2).mean(axis=0), rtol=1e-6)
