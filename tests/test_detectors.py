"""Detector files, written here in each tool's own format from one known COCO-17 track, read back.

The oracle: every reader must return exactly `coco_to_h36m` of the track it was written from, on
every frame where the person was present, with a distractor (a smaller second person, or another
track id) in the file, and linear interpolation on the frames where the person is missing.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from preprocessing.errors import DataError
from preprocessing.skeleton import H36M17
from preprocessing.sources.detectors import (
    FORMATS,
    LAYOUT_TO_COCO,
    detect_format,
    interpolate_missing,
    load_detections,
)
from preprocessing.sources.keypoint_formats import COCO17_NAMES, coco_to_h36m
from preprocessing.sources.safe_npz import write_npz
from tests.helpers import tiny_checkpoint

F, W, H = 12, 640.0, 480.0
MISSING = (4, 5)  # frames where the tracked person is not detected


def _track(seed: int, scale: float, offset: float) -> np.ndarray:
    """(F, 17, 3) COCO keypoints in pixels, with scores in (0.5, 1)."""
    rng = np.random.default_rng(seed)
    xy = offset + scale * rng.random((F, 17, 2))
    return np.concatenate([xy, 0.5 + 0.5 * rng.random((F, 17, 1))], -1)


PERSON = _track(0, 200.0, 100.0)  # the big one: the largest box, track id 7
OTHER = _track(1, 40.0, 10.0)  # a small distractor, track id 3


def _in_layout(coco: np.ndarray, layout: str, seed: int = 2) -> np.ndarray:
    """(F, 17, 3) COCO -> (F, K, 3) in `layout`, the joints COCO lacks filled with noise."""
    joints = {"coco17": 17, "coco_wholebody133": 133, "halpe26": 26, "body25": 25, "blazepose33": 33}[layout]
    out = np.random.default_rng(seed).random((coco.shape[0], joints, 3)) * 5
    out[:, list(LAYOUT_TO_COCO[layout]), :] = coco
    return out


def _frames(layout: str, tracked: bool = True):
    """Per frame: [(keypoints in layout, track id, (x1, y1, x2, y2))], the person missing in
    MISSING. Untracked files (no ids: the largest box of each frame is taken) have nobody there."""
    big, small = _in_layout(PERSON, layout), _in_layout(OTHER, layout)
    frames = []
    for i in range(F):
        people = [(small[i], 3, (10.0, 10.0, 50.0, 50.0))] if tracked or i not in MISSING else []
        if i not in MISSING:
            people.append((big[i], 7, (100.0, 100.0, 300.0, 300.0)))
        frames.append(people)
    return frames


def write_mmpose(tmp: Path, layout: str = "coco17") -> Path:
    info = [{"frame_id": i + 1, "instances": [
        {"keypoints": kp[:, :2].tolist(), "keypoint_scores": kp[:, 2].tolist(), "bbox": [list(box)], "bbox_score": 0.9,
         "track_id": tid} for kp, tid, box in people]} for i, people in enumerate(_frames(layout))]
    path = tmp / f"mmpose_{layout}.json"
    path.write_text(json.dumps({"meta_info": {"dataset_name": "coco"}, "instance_info": info}))
    return path


def write_openpose(tmp: Path) -> Path:
    folder = tmp / "openpose"
    folder.mkdir()
    for i, people in enumerate(_frames("body25", tracked=False)):
        (folder / f"clip_{i:012d}_keypoints.json").write_text(json.dumps({"version": 1.3, "people": [
            {"person_id": [-1], "pose_keypoints_2d": kp.reshape(-1).tolist()} for kp, _, _ in people]}))
    return folder


def write_alphapose(tmp: Path, layout: str = "coco17") -> Path:
    entries = [{"image_id": f"{i}.jpg", "category_id": 1, "keypoints": kp.reshape(-1).tolist(), "score": 2.5,
                "box": [box[0], box[1], box[2] - box[0], box[3] - box[1]], "idx": tid}
               for i, people in enumerate(_frames(layout)) for kp, tid, box in people]
    path = tmp / f"alphapose_{layout}.json"
    path.write_text(json.dumps(entries))
    return path


def write_videopose3d(tmp: Path) -> Path:
    kp = PERSON[:, :, :2].copy()
    kp[list(MISSING)] = np.nan  # VideoPose3D's prepare script leaves undetected frames empty
    path = tmp / "data_2d_custom_myvideos.npz"
    write_npz(path, {"positions_2d": {"clip.mp4": {"custom": [kp.astype(np.float32)]}},
                     "metadata": {"layout_name": "coco", "num_joints": 17,
                                  "keypoints_symmetry": [[1, 3, 5, 7, 9, 11, 13, 15], [2, 4, 6, 8, 10, 12, 14, 16]],
                                  "video_metadata": {"clip.mp4": {"w": int(W), "h": int(H)}}}})
    return path


def write_mediapipe(tmp: Path) -> Path:
    big = _in_layout(PERSON, "blazepose33")
    frames = [[] if i in MISSING else [{"x": x / W, "y": y / H, "z": 0.0, "visibility": s} for x, y, s in big[i]]
              for i in range(F)]
    path = tmp / "mediapipe.json"
    path.write_text(json.dumps({"width": W, "height": H, "frames": frames}))
    return path


def write_csv(tmp: Path) -> Path:
    path = tmp / "keypoints.csv"
    with open(path, "w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["frame", "track_id"] + [f"{j}_{c}" for j in COCO17_NAMES for c in ("x", "y", "score")])
        for i, people in enumerate(_frames("coco17")):
            for kp, tid, _ in people:
                out.writerow([i, tid] + kp.reshape(-1).tolist())
    return path


SAMPLES = {  # format -> (writer, layout, the track id to pick, or None for the largest box)
    "mmpose": (write_mmpose, "coco17", None),
    "mmpose-wholebody": (lambda t: write_mmpose(t, "coco_wholebody133"), "coco_wholebody133", None),
    "openpose": (write_openpose, "body25", None),
    "alphapose": (write_alphapose, "coco17", 7),
    "alphapose-halpe26": (lambda t: write_alphapose(t, "halpe26"), "halpe26", None),
    "videopose3d": (write_videopose3d, "coco17", None),
    "mediapipe": (write_mediapipe, "blazepose33", None),
    "csv": (write_csv, "coco17", 7),
}


def _expected() -> np.ndarray:
    present = PERSON.copy()
    missing = np.zeros(F, bool)
    missing[list(MISSING)] = True
    return coco_to_h36m(interpolate_missing(present, missing))


@pytest.mark.parametrize("sample", sorted(SAMPLES))
def test_every_reader_returns_the_written_track_in_h36m_order(sample, tmp_path):
    writer, layout, track = SAMPLES[sample]
    path = writer(tmp_path)
    fmt = sample.split("-")[0]
    assert detect_format(path) == fmt
    read = load_detections(path, track=track, width=None if fmt in ("videopose3d", "mediapipe") else W,
                           height=None if fmt in ("videopose3d", "mediapipe") else H)
    assert (read.format, read.layout, read.frames, read.interpolated) == (fmt, layout, F, len(MISSING))
    expected = _expected()
    present = [i for i in range(F) if i not in MISSING]
    got = np.concatenate([read.track.keypoints, read.track.scores[..., None]], -1)
    if fmt == "videopose3d":  # no scores in the format: 1 where seen
        expected[..., 2] = np.where(np.isin(np.arange(F), MISSING)[:, None], 0.0, 1.0)
    np.testing.assert_allclose(got[present], expected[present], atol=1e-4)
    # The gap is the straight line between its neighbours, with score 0.
    np.testing.assert_allclose(got[list(MISSING), :, :2], expected[list(MISSING), :, :2], atol=1e-4)
    assert (got[list(MISSING), :, 2] == 0).all()
    assert (read.track.width, read.track.height) == (W, H)


def test_interpolation_fills_gaps_linearly_and_holds_the_ends():
    kp = np.zeros((5, 1, 3))
    kp[:, 0, 0] = [np.nan, 2.0, np.nan, 6.0, np.nan]
    kp[:, 0, 1] = [np.nan, 0.0, np.nan, 0.0, np.nan]
    kp[:, 0, 2] = 1.0
    filled = interpolate_missing(kp, np.isnan(kp[:, 0, 0]))
    assert filled[:, 0, 0].tolist() == [2.0, 2.0, 4.0, 6.0, 6.0]
    assert filled[:, 0, 2].tolist() == [0.0, 1.0, 0.0, 1.0, 0.0]


def test_the_mapping_table_covers_every_layout_with_distinct_joints():
    for layout, index in LAYOUT_TO_COCO.items():
        assert len(index) == 17 and len(set(index)) == 17, layout
    assert len(H36M17.joint_names) == 17 and set(FORMATS) == {"mmpose", "openpose", "alphapose", "videopose3d",
                                                               "mediapipe", "csv"}


def test_bad_detector_files_are_one_line_naming_the_file(tmp_path):
    unknown = tmp_path / "what.json"
    unknown.write_text(json.dumps({"hello": 1}))
    with pytest.raises(DataError, match=rf"{unknown}: cannot tell which detector wrote this file; give --format"):
        load_detections(unknown)
    with pytest.raises(DataError, match=r"unknown keypoint format 'yolo'"):
        load_detections(unknown, fmt="yolo")
    odd = tmp_path / "odd.json"
    odd.write_text(json.dumps([{"image_id": "0.jpg", "keypoints": [1.0, 2.0, 0.9] * 21}]))
    with pytest.raises(DataError, match=rf"{odd}: 21 keypoints per person fit none of this format's layouts"):
        load_detections(odd)
    nobody = tmp_path / "nobody.json"
    nobody.write_text(json.dumps({"instance_info": [{"frame_id": 1, "instances": []}]}))
    with pytest.raises(DataError, match=rf"{nobody}: no person in any frame"):
        load_detections(nobody, width=W, height=H)
    tracked = write_alphapose(tmp_path)
    with pytest.raises(DataError, match=rf"{tracked}: no person with track id 99 \(the file's track ids: 3, 7\)"):
        load_detections(tracked, track=99, width=W, height=H)
    with pytest.raises(DataError, match=rf"{tracked}: image size unknown"):
        load_detections(tracked)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny")


@pytest.mark.parametrize("sample", ["openpose", "mmpose-wholebody", "mediapipe"])
def test_infer_lifts_a_detector_file_found_by_its_content(sample, tmp_path, checkpoint, capsys):
    from pipelines.cli import main
    from pipelines.evaluate.infer import load_inference_output

    writer, layout, _ = SAMPLES[sample]
    size = [] if sample == "mediapipe" else ["--width", str(W), "--height", str(H)]
    out = tmp_path / "lifted.npz"
    assert main(["infer", "--checkpoint", str(checkpoint), "--input", str(writer(tmp_path)), *size,
                 "--output", str(out), "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    fmt = sample.split("-")[0]
    assert f"read {F} frames of {fmt} keypoints ({layout} -> H36M-17" in printed
    assert f"missing in {len(MISSING)} frame(s), interpolated" in printed
    arrays, meta = load_inference_output(out)
    assert arrays["poses_3d"].shape == (F, 17, 3) and np.isfinite(arrays["poses_3d"]).all()
    np.testing.assert_allclose(arrays["keypoints_2d"], _expected()[..., :2], atol=1e-4)
    assert meta["input"]["format"] == fmt and meta["input"]["interpolated_frames"] == len(MISSING)


def test_infer_refuses_an_unknown_format_in_one_line(tmp_path, checkpoint, capsys):
    from pipelines.cli import main

    path = write_csv(tmp_path)
    with pytest.raises(SystemExit) as exit_:
        main(["infer", "--checkpoint", str(checkpoint), "--input", str(path), "--format", "yolo",
              "--output", str(tmp_path / "o.npz")])
    assert exit_.value.code == 2 and "invalid choice: 'yolo'" in capsys.readouterr().err
    assert not (tmp_path / "o.npz").exists()


def test_docs_mapping_table_is_the_code_table():
    from preprocessing.sources.keypoint_formats import COCO17_NAMES

    doc = (Path(__file__).resolve().parents[1] / "docs" / "infer.md").read_text()
    header = next(l for l in doc.splitlines() if l.startswith("| COCO-17 joint |"))
    layouts = [c.strip() for c in header.strip("|").split("|")[1:]]
    assert set(layouts) | {"halpe136"} == set(LAYOUT_TO_COCO)
    for j, name in enumerate(COCO17_NAMES):
        row = next(l for l in doc.splitlines() if l.startswith(f"| {j} {name} |"))
        assert [int(c) for c in row.strip("|").split("|")[1:]] == [LAYOUT_TO_COCO[k][j] for k in layouts]
