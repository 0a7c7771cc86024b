"""`raylift viz`: skeleton animations (GIF frame counts, panels), training curves and result plots."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest
from PIL import Image

from pipelines.cli import main
from pipelines.evaluate.infer import write_outputs
from pipelines.evaluate.metrics import mpjpe_frames, p_mpjpe_frames, summarise
from pipelines.viz.render import DPI
from preprocessing.skeleton import H36M17


def walking_poses(n: int) -> np.ndarray:
    """(n, 17, 3) a rough standing skeleton swinging its limbs, camera space metres, root at 0."""
    base = np.array([
        [0, 0, 0], [-0.13, 0, 0], [-0.13, 0.45, 0], [-0.13, 0.9, 0], [0.13, 0, 0], [0.13, 0.45, 0],
        [0.13, 0.9, 0], [0, -0.25, 0], [0, -0.5, 0], [0, -0.6, -0.05], [0, -0.7, 0], [0.17, -0.45, 0],
        [0.2, -0.2, 0], [0.22, 0.05, 0], [-0.17, -0.45, 0], [-0.2, -0.2, 0], [-0.22, 0.05, 0],
    ], dtype=np.float32)
    swing = np.sin(np.linspace(0, 4 * np.pi, n, dtype=np.float32))[:, None]
    poses = np.repeat(base[None], n, axis=0)
    for j, s in ((2, 1), (3, 1), (5, -1), (6, -1), (12, -1), (13, -1), (15, 1), (16, 1)):
        poses[:, j, 2] += 0.25 * s * swing[:, 0]
    return poses


def infer_output(path, n: int, gt: bool) -> str:
    poses = walking_poses(n)
    kp = poses[..., :2] * 300 + np.array([640, 360], dtype=np.float32)
    arrays = {"poses_3d": poses, "keypoints_2d": kp}
    meta = {"layout": "h36m", "fps": 50.0, "num_frames": n}
    if gt:
        arrays["gt_3d"] = poses * 1.05
        arrays["valid"] = np.ones(n, dtype=bool)
    write_outputs(str(path), arrays, meta)
    return str(path)


@pytest.mark.parametrize("gt, panels", [(True, 3), (False, 2)])
def test_anim_gif_has_expected_frames_and_panels(tmp_path, capsys, gt, panels):
    src = infer_output(tmp_path / "res.npz", 120, gt)
    gif = tmp_path / "anim.gif"
    assert main(["viz", "anim", "--input", src, "--output", str(gif), "--max-frames", "40", "--stride", "2"]) == 0
    printed = capsys.readouterr().out
    with Image.open(gif) as im:
        assert im.n_frames == 40
        assert im.size[0] == panels * 3 * DPI  # one 3-inch panel per input 2D / prediction / GT
        assert im.info["duration"] == 40  # 50 fps / stride 2 = 25 fps
    rate = float(re.search(r"\(([\d.]+) frames/s\)", printed).group(1))
    print(f"GIF rendering: {rate:.1f} frames/s with {panels} panels")
    assert not list(tmp_path.glob(".anim*"))


def test_anim_json_input_and_gt_from_other_file(tmp_path):
    src = infer_output(tmp_path / "res.json", 15, gt=False)
    other = infer_output(tmp_path / "other.npz", 15, gt=True)
    gif = tmp_path / "a.gif"
    assert main(["viz", "anim", "--input", src, "--gt", other, "--output", str(gif), "--fps", "10"]) == 0
    with Image.open(gif) as im:
        assert im.n_frames == 15 and im.size[0] == 3 * 3 * DPI and im.info["duration"] == 100


def test_anim_mp4_is_written_with_pyav(tmp_path):
    import av

    src = infer_output(tmp_path / "res.npz", 10, gt=False)
    out = tmp_path / "a.mp4"
    assert main(["viz", "anim", "--input", src, "--output", str(out)]) == 0
    with av.open(str(out)) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(frames) == 10 and frames[0].shape[0] % 2 == 0 and frames[0].shape[1] % 2 == 0


@pytest.mark.parametrize(
    "argv, message",
    [
        (["anim", "--input", "{d}/none.npz", "--output", "{d}/a.gif"], "not found"),
        (["anim", "--input", "{src}", "--output", "{d}/a.png"], "expected .gif or .mp4"),
        (["anim", "--input", "{src}", "--output", "{d}/a.gif", "--stride", "0"], "--stride"),
        (["curves", "--run", "{d}/norun"], "not found"),
        (["results", "--results", "{d}/none.json"], "not found"),
        (["results", "--results", "{d}/res.npz"], "not valid JSON"),
    ],
)
def test_viz_bad_input_exit_2(tmp_path, capsys, argv, message):
    src = infer_output(tmp_path / "res.npz", 5, gt=False)
    rc = main(["viz"] + [a.format(d=tmp_path, src=src) for a in argv])
    err = capsys.readouterr().err
    assert rc == 2 and message in err and err.startswith("raylift viz: error:")
    assert not (tmp_path / "a.gif").exists()


def test_curves_png_from_run_metrics_csv(tmp_path, capsys):
    from pipelines.train.logs import csv_text

    run = tmp_path / "run"
    run.mkdir()
    history = [{"epoch": e, "loss": 1 / (e + 1), "val_mpjpe": 200.0 - 10 * e, "lr": 4e-5 * 0.99**e,
                "windows_per_s": 50.0, "epoch_time_s": 3.0} for e in range(1, 9)]
    (run / "metrics.csv").write_text(csv_text(history))
    assert main(["viz", "curves", "--run", str(run)]) == 0
    assert "8 epochs" in capsys.readouterr().out
    with Image.open(run / "curves.png") as im:
        assert im.format == "PNG" and im.size == (1000, 400)
    (run / "metrics.csv").write_text("epoch,phase\n1,warmup\n")
    assert main(["viz", "curves", "--run", str(run), "--output", str(tmp_path / "c.png")]) == 2
    assert "metrics.csv" in capsys.readouterr().err and not (tmp_path / "c.png").exists()
    (run / "metrics.csv").unlink()
    assert main(["viz", "curves", "--run", str(run)]) == 2
    assert "no epochs logged" in capsys.readouterr().err


def test_results_png_per_activity_bars(tmp_path, capsys):
    rng = np.random.default_rng(0)
    gt = rng.normal(size=(60, 17, 3))
    pred = gt + rng.normal(scale=0.05, size=gt.shape)
    groups = np.repeat(["Walking", "Eating", "Sitting"], 20)

    def summary(p):
        return summarise({"mpjpe": (mpjpe_frames(p, gt), groups, None), "p_mpjpe": (p_mpjpe_frames(p, gt), groups, None)})

    # The shape `raylift evaluate` writes (pipelines/evaluate/protocols.py: evaluate_arrays).
    doc = {"dataset": "d", "layout": "h36m", "protocol": "seq2seq, every real frame once", "metrics": ["mpjpe", "p_mpjpe"],
           "group_by": "activity", "group_mean_label": "action-wise", "frames": 60,
           "results": {"model": summary(pred), "baseline": summary(np.zeros_like(gt))}}
    path = tmp_path / "results.json"
    path.write_text(json.dumps(doc))
    assert main(["viz", "results", "--results", str(path)]) == 0
    with Image.open(tmp_path / "results.png") as im:
        assert im.format == "PNG" and im.size[1] == 640  # one panel per metric
    path.write_text(json.dumps({"model": "mixste"}))
    assert main(["viz", "results", "--results", str(path)]) == 2
    assert "no 'results'" in capsys.readouterr().err


def test_bone_colours_follow_skeleton_sides():
    from pipelines.viz.render import SIDE_COLOURS, bone_colours

    colours = dict(zip(H36M17.bones(), bone_colours(H36M17)))
    assert colours[(0, 4)] == colours[(11, 12)] == SIDE_COLOURS["left"]
    assert colours[(0, 1)] == colours[(14, 15)] == SIDE_COLOURS["right"]
    assert colours[(0, 7)] == colours[(9, 10)] == SIDE_COLOURS["centre"]


def test_video_overlay_puts_full_resolution_keypoints_on_a_smaller_video(tmp_path):
    """The 2D was measured in a 400 x 300 image; the video is a 200 x 150 copy of it. The skeleton
    (every joint on the bright square's centre but one, a short bone) must be drawn on the square."""
    from pipelines.viz.render import Panel, SkeletonAnimator

    square_at = np.array([300.0, 60.0])  # full-resolution pixels, top right
    frame = np.zeros((150, 200, 3), np.uint8)
    cx, cy = (square_at / 2).astype(int)
    frame[cy - 10:cy + 10, cx - 10:cx + 10] = 255
    poses = np.tile(square_at, (1, 17, 1)).astype(np.float32)
    poses[0, 1] += [12.0, 0.0]  # one visible bone (pelvis -> right hip, red) across the square
    panel = Panel("input 2D", poses, "2d", background=lambda i: frame, frame_size=(400.0, 300.0))
    image = SkeletonAnimator([panel], H36M17).render(0).astype(int)
    white = np.argwhere((image > 230).all(-1))
    red = np.argwhere((image[..., 0] > 150) & (image[..., 1] < 90) & (image[..., 2] < 90))
    assert len(white) and len(red)
    # the bone's pixels lie inside the square's box in the rendered panel
    lo, hi = white.min(0), white.max(0)
    assert ((red >= lo - 2) & (red <= hi + 2)).all(1).mean() > 0.9
