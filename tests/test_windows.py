"""Windowing and flip maths (pure numpy): counts, centring, padding, masks, flips, multi-view."""
from __future__ import annotations

import math

import numpy as np
import pytest


from preprocessing.keypoints.dataset import WindowJob, multi_view_sources, piece_arrays, single_view_sources
from preprocessing.store.writer import plan_shards
from preprocessing.skeleton import H36M17, MPI17
from preprocessing.keypoints.windows import (
    flip_intrinsics,
    flip_keypoints_2d,
    flip_positions_3d,
    frame_indices,
    make_windows,
    seq2frame_starts,
    seq2seq_starts,
    window_mask,
    window_starts,
)
from tests.helpers import make_sequence


@pytest.mark.parametrize("n", [1, 5, 26, 27, 28, 54, 100, 243, 244, 1000, 1383])
@pytest.mark.parametrize("t", [1, 2, 27, 81, 243])
def test_seq2seq_default_is_mixste_centred_chunks(n, t):
    starts = seq2seq_starts(n, t, t)
    chunks = math.ceil(n / t)
    assert len(starts) == chunks
    assert starts[0] == -((chunks * t - n) // 2)
    assert np.all(np.diff(starts) == t)
    mask = window_mask(starts, t, np.ones(n, bool))
    assert mask.sum() == n  # every real frame exactly once (non-overlapping)
    idx = starts[:, None] + np.arange(t)
    real = idx[mask.astype(bool)]
    assert sorted(real.tolist()) == list(range(n))
    # padding split as evenly as possible: left gets the floor, right the rest
    flat = mask.reshape(-1)
    first, last = np.flatnonzero(flat)[[0, -1]]
    assert first == (chunks * t - n) // 2
    assert len(flat) - 1 - last == (chunks * t - n) - (chunks * t - n) // 2


def test_edge_padding_repeats_first_and_last_frames():
    n, t = 10, 4  # 3 chunks, 12 frames, offset 1
    seq = make_sequence(n)
    starts = seq2seq_starts(n, t, t)
    assert starts.tolist() == [-1, 3, 7]
    win = make_windows(seq.keypoints_2d, seq.positions_3d, seq.valid, starts, t, "seq2seq")
    frames = win["keypoints_2d"][:, :, 0, 0]  # joint 0 x = frame index
    assert frames.tolist() == [[0, 0, 1, 2], [3, 4, 5, 6], [7, 8, 9, 9]]
    assert win["mask"].tolist() == [[0, 1, 1, 1], [1, 1, 1, 1], [1, 1, 1, 0]]
    np.testing.assert_array_equal(win["positions_3d"][0, 0], seq.positions_3d[0])
    np.testing.assert_array_equal(win["positions_3d"][2, 3], seq.positions_3d[9])
    assert win["keypoints_2d"].shape == (3, 4, 17, 2) and win["positions_3d"].shape == (3, 4, 17, 3)


@pytest.mark.parametrize("n,t,s", [(100, 27, 9), (243, 243, 81), (1000, 243, 81), (30, 27, 1), (5, 27, 9), (50, 10, 20)])
def test_seq2seq_strided_windows_cover_the_sequence_centred(n, t, s):
    starts = seq2seq_starts(n, t, s)
    count = 1 if n <= t else math.ceil((n - t) / s) + 1
    assert len(starts) == count and np.all(np.diff(starts) == s)
    span = (count - 1) * s + t
    assert starts[0] == -((span - n) // 2)
    if s <= t:  # overlapping (or touching) windows leave no real frame uncovered
        covered = np.unique(np.clip(starts[:, None] + np.arange(t), -1, n)[window_mask(starts, t, np.ones(n, bool)) > 0])
        assert covered.tolist() == list(range(n))


def test_test_split_ignores_stride_and_counts_each_frame_once():
    n, t = 1000, 243
    train = window_starts(n, "seq2seq", t, 81, "train")
    test = window_starts(n, "seq2seq", t, 81, "test")
    assert len(train) > len(test) == math.ceil(n / t)
    assert window_mask(test, t, np.ones(n, bool)).sum() == n
    test_frames = window_starts(n, "seq2frame", 27, 5, "test")
    assert len(test_frames) == n  # seq2frame evaluation scores every frame


@pytest.mark.parametrize("n,t,s", [(10, 3, 1), (50, 27, 1), (50, 27, 4), (3, 243, 1), (1, 1, 1)])
def test_seq2frame_centre_and_edge_padding(n, t, s):
    seq = make_sequence(n)
    starts = seq2frame_starts(n, t, s)
    centres = np.arange(0, n, s)
    assert np.array_equal(starts + t // 2, centres)
    win = make_windows(seq.keypoints_2d, seq.positions_3d, seq.valid, starts, t, "seq2frame")
    assert win["keypoints_2d"].shape == (len(centres), t, 17, 2)
    assert win["positions_3d"].shape == (len(centres), 1, 17, 3) and win["mask"].shape == (len(centres), 1)
    np.testing.assert_array_equal(win["positions_3d"][:, 0], seq.positions_3d[centres])
    expect = np.clip(centres[:, None] - t // 2 + np.arange(t), 0, n - 1)
    np.testing.assert_array_equal(win["keypoints_2d"][:, :, 0, 0], expect)  # edge-padded frame indices
    np.testing.assert_array_equal(win["keypoints_2d"][:, t // 2], seq.keypoints_2d[centres])
    assert np.all(win["mask"] == 1)


def test_seq2frame_rejects_even_receptive_field():
    with pytest.raises(ValueError, match="odd"):
        seq2frame_starts(10, 4, 1)


def test_invalid_frames_get_mask_zero():
    valid = np.ones(30, bool)
    valid[[0, 5, 29]] = False
    seq = make_sequence(30, valid=valid)
    starts = seq2seq_starts(30, 8, 8)  # 4 chunks of 8 = 32, offset 1
    win = make_windows(seq.keypoints_2d, seq.positions_3d, seq.valid, starts, 8, "seq2seq")
    idx = frame_indices(starts, 8, 30)
    raw = starts[:, None] + np.arange(8)
    expect = ((raw >= 0) & (raw < 30) & valid[idx]).astype(np.float32)
    np.testing.assert_array_equal(win["mask"], expect)
    assert win["mask"].sum() == 27
    frame = make_windows(seq.keypoints_2d, seq.positions_3d, seq.valid, seq2frame_starts(30, 3, 1), 3, "seq2frame")
    assert frame["mask"][:, 0].tolist() == valid.astype(np.float32).tolist()


@pytest.mark.parametrize("skeleton", [H36M17, MPI17])
def test_flip_twice_is_identity_and_swaps_sides(skeleton):
    rng = np.random.default_rng(1)
    kp = rng.standard_normal((4, 9, 17, 2)).astype(np.float32)
    pos = rng.standard_normal((4, 9, 17, 3)).astype(np.float32)
    np.testing.assert_array_equal(flip_keypoints_2d(flip_keypoints_2d(kp, skeleton), skeleton), kp)
    np.testing.assert_array_equal(flip_positions_3d(flip_positions_3d(pos, skeleton), skeleton), pos)
    flipped = flip_positions_3d(pos, skeleton)
    for left, right in zip(skeleton.left, skeleton.right):
        np.testing.assert_array_equal(flipped[..., left, 0], -pos[..., right, 0])
        np.testing.assert_array_equal(flipped[..., right, 1:], pos[..., left, 1:])
    centre = [j for j in range(17) if j not in skeleton.left + skeleton.right]
    np.testing.assert_array_equal(flipped[..., centre, 0], -pos[..., centre, 0])
    np.testing.assert_array_equal(flipped[..., centre, 1:], pos[..., centre, 1:])
    assert flip_keypoints_2d(kp, skeleton) is not kp and np.any(flip_keypoints_2d(kp, skeleton) != kp)


def test_flip_uses_each_layouts_own_sides():
    pos = np.zeros((17, 3), np.float32)
    pos[4, 0] = 1.0  # H36M: joint 4 = LHip (swaps with 1 = RHip); MPI: joint 4 = RWrist (swaps with 7)
    assert np.flatnonzero(flip_positions_3d(pos, H36M17)[:, 0]).tolist() == [1]
    assert np.flatnonzero(flip_positions_3d(pos, MPI17)[:, 0]).tolist() == [7]
    # MPI's root (14) is not swapped
    pos = np.zeros((17, 3), np.float32)
    pos[14] = [0.5, 1, 2]
    np.testing.assert_array_equal(flip_positions_3d(pos, MPI17)[14], [-0.5, 1, 2])


def test_flip_intrinsics_mirrors_the_camera_consistently_with_2d():
    """Projecting the mirrored 3D point with the mirrored camera gives the mirrored pixel: w - u."""
    from preprocessing.cameras import project_to_2d

    w = 1000
    intr = np.array([1145.0, 1143.8, 512.5, 515.4, -0.2, 0.24, -0.0028, -0.0016, -0.0008], np.float32)
    mirrored = flip_intrinsics(intr, w)
    np.testing.assert_allclose(mirrored[[0, 1, 3, 4, 5, 6, 8]], intr[[0, 1, 3, 4, 5, 6, 8]])
    assert mirrored[2] == pytest.approx(w - intr[2]) and mirrored[7] == pytest.approx(-intr[7])
    np.testing.assert_allclose(flip_intrinsics(mirrored, w), intr, rtol=1e-6)
    points = np.array([[0.3, -0.2, 4.0], [-0.5, 0.4, 5.0]], np.float64)
    uv = project_to_2d(points, intr.astype(np.float64))
    uv_m = project_to_2d(points * [-1, 1, 1], mirrored.astype(np.float64))
    np.testing.assert_allclose(uv_m[:, 0], w - uv[:, 0], atol=1e-3)
    np.testing.assert_allclose(uv_m[:, 1], uv[:, 1], atol=1e-3)
    # per-view widths broadcast over (V, 9)
    views = np.stack([intr, intr])
    np.testing.assert_allclose(flip_intrinsics(views, np.array([1000.0, 2048.0]))[:, 2], [1000 - 512.5, 2048 - 512.5])


def test_flipped_rows_follow_originals_and_test_has_none(tmp_path):
    seqs = [make_sequence(100, seed=1), make_sequence(60, split="test", subject="S9", seed=2)]
    sources = single_view_sources(seqs)
    job = WindowJob("seq2seq", 27, 27, True, H36M17)
    assert [job.rows_of(s) for s in sources] == [8, 3]
    rows = piece_arrays(sources[0], np.arange(8), job)
    assert rows["flipped"].tolist() == [False] * 4 + [True] * 4
    np.testing.assert_array_equal(rows["keypoints_2d"][4:], flip_keypoints_2d(rows["keypoints_2d"][:4], H36M17))
    np.testing.assert_array_equal(rows["positions_3d"][4:], flip_positions_3d(rows["positions_3d"][:4], H36M17))
    assert rows["start"].tolist() == [-4, 23, 50, 77] * 2
    assert rows["intrinsics"][4, 2] == pytest.approx(1000 - 512.5)
    part = piece_arrays(sources[0], np.arange(3, 6), job)  # a slice across the original/flipped boundary
    np.testing.assert_array_equal(part["keypoints_2d"], rows["keypoints_2d"][3:6])
    test_rows = piece_arrays(sources[1], np.arange(3), job)
    assert not test_rows["flipped"].any() and test_rows["mask"].sum() == 60


def test_plan_shards_row_groups_and_order():
    plans = plan_shards([("train", 5), ("test", 4), ("train", 7)], rows_per_shard=5, rows_per_group=2)
    train = [p for p in plans if p.split == "train"]
    assert [p.path for p in train] == ["train/part-00000.parquet", "train/part-00001.parquet", "train/part-00002.parquet"]
    assert [p.rows for p in train] == [5, 5, 2]
    assert train[0].groups == [[(0, 0, 2)], [(0, 2, 4)], [(0, 4, 5)]]
    assert train[1].groups == [[(2, 0, 2)], [(2, 2, 4)], [(2, 4, 5)]]
    assert train[2].groups == [[(2, 5, 7)]]
    plans = plan_shards([("train", 3), ("train", 3)], rows_per_shard=10, rows_per_group=4)
    assert len(plans) == 1 and plans[0].groups == [[(0, 0, 3), (1, 0, 1)], [(1, 1, 3)]]
    assert plan_shards([("train", 0)], 10, 4) == []


def test_multiview_groups_trim_and_skip():
    seqs = [
        make_sequence(50, camera="c1", camera_index=1, seed=1),
        make_sequence(48, camera="c0", camera_index=0, seed=2, width=1200),
        make_sequence(30, camera="c0", camera_index=0, action="Eating", seed=3),  # no c1: skipped
        make_sequence(40, camera="c0", camera_index=0, split="test", subject="S9", seed=4),
        make_sequence(40, camera="c1", camera_index=1, split="test", subject="S9", seed=5),
    ]
    sources, cameras, skipped = multi_view_sources(seqs)
    assert cameras == ["c0", "c1"] and skipped == ["train/S1/Eating"]
    assert [(s.split, s.subject, s.action, s.camera) for s in sources] == [
        ("train", "S1", "Walking 1", "c0,c1"), ("test", "S9", "Walking 1", "c0,c1")]
    src = sources[0]
    assert src.keypoints_2d.shape == (48, 2, 17, 2) and src.positions_3d.shape == (48, 2, 17, 3)
    np.testing.assert_array_equal(src.keypoints_2d[:, 1], seqs[0].keypoints_2d[:48])
    np.testing.assert_array_equal(src.keypoints_2d[:, 0], seqs[1].keypoints_2d)
    assert src.intrinsics.shape == (2, 9) and src.image_size[:, 0].tolist() == [1200.0, 1000.0]
    job = WindowJob("seq2seq", 27, 27, True, H36M17)
    rows = piece_arrays(src, np.arange(job.rows_of(src)), job)
    assert rows["keypoints_2d"].shape == (4, 27, 2, 17, 2) and rows["intrinsics"].shape == (4, 2, 9)
    np.testing.assert_array_equal(rows["keypoints_2d"][2:], flip_keypoints_2d(rows["keypoints_2d"][:2], H36M17))
    np.testing.assert_allclose(rows["intrinsics"][2, :, 2], [1200 - 512.5, 1000 - 512.5])
    assert rows["mask"].sum() == 2 * 48
    assert rows["sequence_length"].tolist() == [48] * 4 and set(rows["camera"]) == {"c0,c1"}
