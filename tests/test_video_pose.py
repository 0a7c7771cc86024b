"""Video -> 2D -> 3D with ONNX models the test writes itself (nothing is downloaded).

The video: a white square moving over a black frame, encoded by PyAV. The pose model has
RTMPose's interface (crops (N, 3, H, W) in, SimCC `simcc_x` (N, 17, 2W) and `simcc_y` (N, 17, 2H)
out) and puts every joint where the crop is brightest; the detector has MMDeploy's end-to-end
interface and boxes the bright pixels. So the 2D keypoints must follow the square's centre: that
checks the decoding, the crops' affine warps and their inverse, and the SimCC decoding.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from preprocessing.errors import DataError
from preprocessing.images.render import write_video
from preprocessing.sources.video_pose import PersonDetector, PoseModel, video_to_detections
from tests.helpers import tiny_checkpoint

W, H, SIDE, F = 128, 96, 16, 20
BLANK = (8, 9, 10)  # frames with no square: the detector finds nobody there
CROP_W, CROP_H = 48, 64  # the pose model's input (RTMPose's is 192 x 256)
DET = 64  # the detector's square input


def square_centre(i: int) -> tuple[float, float]:
    return 20.0 + 4.0 * i, 30.0 + 2.0 * i


def make_video(path, blank=()) -> None:
    frames = []
    for i in range(F):
        img = np.zeros((H, W, 3), np.uint8)
        if i not in blank:
            cx, cy = square_centre(i)
            img[int(cy - SIDE / 2):int(cy + SIDE / 2), int(cx - SIDE / 2):int(cx + SIDE / 2)] = 255
        frames.append(img)
    write_video(path, frames, fps=25, crf=0)


class BrightestPose(torch.nn.Module):
    """RTMPose's interface; every joint at the centroid of the crop's brightness, as SimCC peaks."""

    def forward(self, x):  # (N, 3, H, W), ImageNet-normalised
        light = torch.relu(x.mean(1) + 2.0)  # (N, H, W); black is about -2
        light = light * (light > light.amax((1, 2), keepdim=True) * 0.5)
        total = light.sum((1, 2)) + 1e-6
        cx = (light.sum(1) * torch.arange(x.shape[3])).sum(1) / total  # centroid, crop pixels
        cy = (light.sum(2) * torch.arange(x.shape[2])).sum(1) / total
        bx = torch.arange(2 * x.shape[3]).float() / 2  # SimCC bins, split ratio 2
        by = torch.arange(2 * x.shape[2]).float() / 2
        sx = torch.exp(-((bx[None] - cx[:, None] - 0.5) ** 2))  # peak at centroid (+0.5: pixel centres)
        sy = torch.exp(-((by[None] - cy[:, None] - 0.5) ** 2))
        return sx[:, None].expand(-1, 17, -1), sy[:, None].expand(-1, 17, -1)


class BrightBox(torch.nn.Module):
    """MMDeploy's end-to-end detector interface: one box around the bright pixels, score 1 if any."""

    def forward(self, x):  # (1, 3, S, S)
        mask = x.mean(1)[0] > 0.0  # white is about +2, black and the letterbox grey below 0
        xs = torch.arange(x.shape[3]).float()
        ys = torch.arange(x.shape[2]).float()
        cols, rows = mask.any(0), mask.any(1)
        x1 = torch.where(cols, xs, torch.tensor(1e4)).min()
        x2 = torch.where(cols, xs, torch.tensor(-1.0)).max() + 1
        y1 = torch.where(rows, ys, torch.tensor(1e4)).min()
        y2 = torch.where(rows, ys, torch.tensor(-1.0)).max() + 1
        score = mask.any().float()
        return torch.stack([x1, y1, x2, y2, score])[None, None], torch.zeros(1, 1, dtype=torch.int64)


def _export(module, shape, path, outputs):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (torch.zeros(shape),), str(path), dynamo=False, opset_version=17,
                          input_names=["input"], output_names=outputs,
                          dynamic_axes={"input": {0: "batch"}} if shape[0] != 1 else None)
    return str(path)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("onnx")
    pose = _export(BrightestPose(), (2, 3, CROP_H, CROP_W), d / "rtmpose-tiny.onnx", ["simcc_x", "simcc_y"])
    det = _export(BrightBox(), (1, 3, DET, DET), d / "det-tiny.onnx", ["dets", "labels"])
    return pose, det


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny")


def _centres(det) -> np.ndarray:
    return np.array([f[0].keypoints[0, :2] if f else [np.nan, np.nan] for f in det.frames])


def test_whole_frame_crops_follow_the_square(tmp_path, models):
    video = tmp_path / "clip.mp4"
    make_video(video)
    det = video_to_detections(video, PoseModel(models[0]))
    assert len(det.frames) == F and det.layout == "coco17" and (det.width, det.height) == (W, H)
    expected = np.array([square_centre(i) for i in range(F)])
    # A whole-frame crop shrinks the frame 2.5x: one crop pixel is 2.5 frame pixels.
    np.testing.assert_allclose(_centres(det), expected, atol=2.5)


def test_detector_boxes_give_tight_crops_and_empty_frames_are_missing(tmp_path, models):
    video = tmp_path / "clip.mp4"
    make_video(video, blank=BLANK)
    det = video_to_detections(video, PoseModel(models[0]), PersonDetector(models[1]))
    assert [len(f) for f in det.frames] == [0 if i in BLANK else 1 for i in range(F)]
    seen = [i for i in range(F) if i not in BLANK]
    expected = np.array([square_centre(i) for i in seen])
    np.testing.assert_allclose(_centres(det)[seen], expected, atol=1.5)


def test_infer_lifts_a_video_and_refuses_bad_ones_in_one_line(tmp_path, models, capsys, checkpoint):
    from pipelines.cli import main
    from pipelines.evaluate.infer import load_inference_output
    video = tmp_path / "clip.mp4"
    make_video(video, blank=BLANK)
    out = tmp_path / "lifted.npz"
    assert main(["infer", "--checkpoint", str(checkpoint), "--video", str(video), "--pose-model", models[0],
                 "--det-model", models[1], "--output", str(out), "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert f"2D: {F} frames of {video} through rtmpose-tiny.onnx (coco17)" in printed
    assert f"missing in {len(BLANK)} frame(s), interpolated" in printed
    arrays, meta = load_inference_output(out)
    assert arrays["poses_3d"].shape == (F, 17, 3) and meta["input"]["interpolated_frames"] == len(BLANK)
    np.testing.assert_allclose(arrays["keypoints_2d"][0, 0], square_centre(0), atol=1.5)

    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"not a video" * 100)
    for extra, message in [(["--video", str(junk), "--pose-model", models[0]], f"{junk}: PyAV cannot decode this video"),
                           (["--video", str(video)], "--video needs --pose-model"),
                           (["--video", str(video), "--pose-model", str(video)], f"{video}: not an ONNX model")]:
        rc = main(["infer", "--checkpoint", str(checkpoint), *extra, "--output", str(tmp_path / "bad.npz")])
        err = capsys.readouterr().err
        assert rc == 2 and err.count("\n") == 1 and message in err, err
        assert not (tmp_path / "bad.npz").exists()


def test_a_video_with_nobody_is_one_error(tmp_path, models):
    video = tmp_path / "empty.mp4"
    make_video(video, blank=range(F))
    with pytest.raises(DataError, match=rf"{video}: the detector found no person in any frame"):
        video_to_detections(video, PoseModel(models[0]), PersonDetector(models[1]))


@pytest.mark.parametrize("suffix", [".gif", ".mp4"])
def test_viz_draws_the_2d_skeleton_over_the_video_beside_the_3d(suffix, tmp_path, models, checkpoint):
    """The overlay: the video's own frames (the white square) under the skeleton, beside the 3D."""
    import av
    from PIL import Image

    from pipelines.cli import main
    video = tmp_path / "clip.mp4"
    make_video(video)
    lifted = tmp_path / "lifted.npz"
    assert main(["infer", "--checkpoint", str(checkpoint), "--video", str(video), "--pose-model", models[0],
                 "--output", str(lifted), "--device", "cpu"]) == 0
    out = tmp_path / f"overlay{suffix}"
    assert main(["viz", "anim", "--input", str(lifted), "--video", str(video), "--output", str(out)]) == 0
    if suffix == ".gif":
        with Image.open(out) as im:
            frames = []
            for i in range(im.n_frames):
                im.seek(i)
                frames.append(np.asarray(im.convert("RGB")))
    else:
        with av.open(str(out)) as container:
            frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(frames) == F
    # Left half: the 2D panel over the video (black frame, white square); right: the 3D panel (white).
    first, last = frames[0], frames[-1]
    half = first.shape[1] // 2
    assert (first[:, :half] < 30).all(-1).mean() > 0.3  # the video's black background is drawn
    assert not np.array_equal(first[:, :half], last[:, :half])  # and it moves with the video
    assert (first[:, half:] > 225).all(-1).mean() > 0.5  # the 3D panel has its white background
    Image.fromarray(first).save(tmp_path / "overlay_frame.png")


@pytest.mark.slow
def test_several_videos_run_as_ray_data_batch_inference(tmp_path, models, capsys, checkpoint):
    import ray

    from pipelines.cli import main
    from pipelines.evaluate.infer import load_inference_output
    make_video(tmp_path / "a.mp4")
    make_video(tmp_path / "b.mp4", blank=BLANK)
    out = tmp_path / "lifted"
    try:
        assert main(["infer", "--checkpoint", str(checkpoint), "--video", str(tmp_path / "a.mp4"), str(tmp_path / "b.mp4"),
                     "--pose-model", models[0], "--det-model", models[1], "--output", str(out), "--device", "cpu"]) == 0
    finally:
        ray.shutdown()
    printed = capsys.readouterr().out
    assert "2D: 2 videos through rtmpose-tiny.onnx" in printed and "(Ray Data CPU tasks" in printed
    assert f"b.mp4: {F} frames (coco17); the person was missing in {len(BLANK)} frame(s)" in printed
    for name, missing in (("a", 0), ("b", len(BLANK))):
        arrays, meta = load_inference_output(out / f"{name}.npz")
        assert arrays["poses_3d"].shape == (F, 17, 3) and meta["input"]["interpolated_frames"] == missing
        assert meta["fps"] == 25.0
        np.testing.assert_allclose(arrays["keypoints_2d"][:, 0], [square_centre(i) for i in range(F)], atol=1.5)
