"""Image sources, crops, renderer, image shards and their reader.

Tiny on purpose: 2 subjects x 1 action x 6-12 frames, 32 px crops, videos at 1/10 of the camera
resolution. Only the shard build test starts Ray.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from preprocessing.config import DataConfig, ImagesConfig, SourceConfig
from preprocessing.images.crops import check_box, flip_crops, keypoint_box, to_crop, to_full
from preprocessing.errors import DataError
from preprocessing.images.dataset import ImageJob, image_dataset_id, piece_rows, rows_table
from preprocessing.images.sources import load_image_sequences, write_synthetic_videos
from preprocessing.images.render import BONE_COLOURS, Background, Occluder, PixelGrid, draw_skeleton, render_frame
from preprocessing.schema import ConfigError, parse_dataclass
from preprocessing.skeleton import H36M17
from tests.helpers import synthetic_data, video_data


def job_of(data: DataConfig) -> ImageJob:
    return ImageJob(data.source.kind, data.images, 0)


# ----------------------------------------------------------------------------- crops and config


def test_crop_box_is_square_and_labels_map_back():
    kp = np.array([[100.0, 50.0], [140.0, 250.0], [120.0, 150.0]])
    box = keypoint_box(kp, margin=0.25)
    assert box[2] - box[0] == pytest.approx(box[3] - box[1]) == pytest.approx(200 * 1.5)
    crop = to_crop(kp, box, 64)
    assert crop.min() >= 0 and crop.max() <= 64
    np.testing.assert_allclose(to_full(crop, box, 64), kp, atol=1e-9)


def test_crop_box_outside_the_image_names_the_frame():
    box = keypoint_box(np.array([[1200.0, 40.0], [1300.0, 90.0]]), 0.1)
    with pytest.raises(DataError, match=r"S1/Walking camera 1 frame 7: crop box .* outside the 1000x1000 image"):
        check_box(box, 1000, 1000, "S1/Walking camera 1 frame 7")


def test_flip_mirrors_image_and_swaps_left_right():
    rng = np.random.default_rng(0)
    images = rng.random((2, 3, 16, 16)).astype(np.float32)  # (views, 3, H, W)
    kp = rng.uniform(0, 16, (2, 17, 2))
    perm = H36M17.flip_permutation()
    fi, fk = flip_crops(images, kp, 16, perm)
    np.testing.assert_array_equal(fi[..., 0], images[..., 15])
    # the left hip (4) of the mirrored crop is the mirrored right hip (1)
    np.testing.assert_allclose(fk[:, 4], np.stack([16 - kp[:, 1, 0], kp[:, 1, 1]], -1))
    back_i, back_k = flip_crops(fi, fk, 16, perm)
    np.testing.assert_array_equal(back_i, images)
    np.testing.assert_allclose(back_k, kp)


def test_images_config_is_validated_with_the_key_named():
    with pytest.raises(ConfigError, match="images.size"):
        parse_dataclass(DataConfig, {"images": {"size": 8}})
    with pytest.raises(ConfigError, match="images.format"):
        parse_dataclass(DataConfig, {"images": {"format": "gif"}})
    with pytest.raises(ConfigError, match="needs source.videos"):
        parse_dataclass(DataConfig, {"source": {"kind": "h36m_video", "data_3d": "a", "data_2d": "b"}})
    with pytest.raises(ConfigError, match="images.occluder_prob.*1.5"):
        parse_dataclass(DataConfig, {"images": {"occluder_prob": 1.5}})
    with pytest.raises(ConfigError, match="images.occluder_size"):
        parse_dataclass(DataConfig, {"images": {"occluder_size": 0.0}})


# ----------------------------------------------------------------------------- renderer


def test_near_limb_occludes_far_limb_whatever_the_drawing_order():
    """Two crossing bones: where they overlap, the pixel has the near bone's colour."""
    intr = np.array([100.0, 100.0, 32.0, 32.0, 0, 0, 0, 0, 0])
    grid = PixelGrid(0.0, 0.0, 1.0, 64, 64)
    joints = np.zeros((17, 3))
    joints[:, 2] = 10.0  # everything far away (and tiny) by default
    joints[:, 0] = 3.0
    # bone 2 (r_hip 1 -> r_knee 2) horizontal at depth 2; bone 13 (l_elbow 12 -> l_wrist 13) vertical at depth 4
    joints[1], joints[2] = [-0.5, 0.0, 2.0], [0.5, 0.0, 2.0]
    joints[12], joints[13] = [0.0, -1.0, 4.0], [0.0, 1.0, 4.0]
    for near_first in (False, True):
        j = joints.copy()
        if near_first:  # swap the depths: now the vertical bone is near
            j[[1, 2], 2], j[[12, 13], 2] = 4.0, 2.0
            j[[1, 2], 0] *= 2
            j[[12, 13], 1] *= 0.5
        image = draw_skeleton(np.zeros((64, 64, 3), np.float32), j, intr, grid)
        near = 13 if near_first else 2
        centre = image[32, 32]
        colour = centre / np.linalg.norm(centre)
        expected = BONE_COLOURS[near] / np.linalg.norm(BONE_COLOURS[near])
        assert colour @ expected > 0.999, (near_first, centre)
    assert len({tuple(c) for c in BONE_COLOURS.round(3)}) == 17  # a distinct colour per limb


def test_backgrounds_differ_between_sequences_and_over_time():
    grid = PixelGrid(100.0, 100.0, 0.5, 32, 32)
    a, b = Background.random(1), Background.random(2)
    assert np.abs(a.render(grid, 0) - b.render(grid, 0)).mean() > 5
    assert np.abs(a.render(grid, 0) - a.render(grid, 20)).mean() > 1
    assert a.render(grid, 3).std() > 5  # textured, not flat


def test_occluders_cover_the_person_seeded_per_image_and_agree_between_crop_and_frame():
    intr = np.array([1000.0, 1000.0, 500.0, 500.0, 0, 0, 0, 0, 0])
    rng = np.random.default_rng(0)
    joints = np.stack([rng.uniform(-0.3, 0.3, 17), np.linspace(-0.9, 0.9, 17), np.full(17, 5.0)], 1)  # (17, 3)
    keypoints = joints[:, :2] / joints[:, 2:] * 1000.0 + 500.0  # (17, 2) full-image pixels
    background = Background.random(3)
    crop = PixelGrid(400.0, 300.0, 0.25, 50, 100)  # the person's box at 1/4 scale
    plain = render_frame(joints, intr, crop, background, 0, seed=7)
    assert np.array_equal(plain, render_frame(joints, intr, crop, background, 0, seed=7, occluder_prob=0.0))
    occluded = [render_frame(joints, intr, crop, background, k, seed=7, occluder_prob=1.0) for k in range(8)]
    changed = [np.any(o != render_frame(joints, intr, crop, background, k, seed=7), axis=-1) for k, o in enumerate(occluded)]
    assert all(c.mean() > 0.01 for c in changed)  # every image has one, over the person's box
    assert len({c.tobytes() for c in changed}) == 8  # a different occluder in every frame
    assert np.array_equal(occluded[2], render_frame(joints, intr, crop, background, 2, seed=7, occluder_prob=1.0))
    hit = [render_frame(joints, intr, crop, background, k, seed=7, occluder_prob=0.3) for k in range(40)]
    share = np.mean([np.any(h != render_frame(joints, intr, crop, background, k, seed=7)) for k, h in enumerate(hit)])
    assert 0.1 < share < 0.5  # about occluder_prob of the images
    # Defined in full-image pixels: the whole frame shows the occluder where the crop does.
    occ = Occluder.random(np.random.default_rng(5), keypoints, 0.25)
    full = occ.draw(np.zeros((1000, 1000, 3), np.float32), PixelGrid(0.0, 0.0, 1.0, 1000, 1000))
    small = occ.draw(np.zeros((100, 50, 3), np.float32), PixelGrid(398.5, 298.5, 0.25, 50, 100))
    # crop pixel (r, c) has its centre at full-image (400.5 + 4c, 300.5 + 4r): full pixel (300 + 4r, 400 + 4c)
    np.testing.assert_allclose(small, full[300:700:4, 400:600:4], atol=1e-3)
    assert small.any(-1).sum() > 50


def test_occluders_enter_the_dataset_id_only_when_used(tmp_path):
    files = ["abc"]
    plain = synthetic_data(tmp_path)
    assert image_dataset_id(plain, files) == image_dataset_id(synthetic_data(tmp_path, occluder_size=0.5), files)
    assert image_dataset_id(plain, files) != image_dataset_id(synthetic_data(tmp_path, occluder_prob=0.5), files)


# ----------------------------------------------------------------------------- sources


def test_synthetic_crops_carry_labels_and_boxes(tmp_path):
    data = synthetic_data(tmp_path)
    src = load_image_sequences(data)
    assert src.cameras == ["54138969", "55011271", "58860488", "60457274"]
    seq = src.sequences[0]
    rows = piece_rows(seq, 0, 2, job_of(data))  # 6 frames -> windows of 4: the second is padded
    assert rows["keypoints"].shape == (2, 4, 4, 17, 2)
    np.testing.assert_array_equal(rows["mask"], [[1, 1, 1, 1], [1, 1, 0, 0]])
    assert rows["images"][1][2 * 4:] == [b""] * 8  # padded frames store no image
    full = to_full(rows["keypoints"][0], rows["boxes"][0], 32)  # (4, V, 17, 2)
    np.testing.assert_allclose(full, seq.keypoints[:4], atol=1e-3)
    side = rows["boxes"][..., 2] - rows["boxes"][..., 0]
    np.testing.assert_allclose(side, rows["boxes"][..., 3] - rows["boxes"][..., 1], rtol=1e-5)


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("videos")
    root = tmp / "h36m"
    paths = write_synthetic_videos(synthetic_data(tmp), str(root), scale=0.1)
    return tmp, root, paths


def test_video_source_decodes_real_mp4_files(videos, tmp_path):
    tmp, root, paths = videos
    assert Path(paths[0]).relative_to(root).as_posix() == "S1/Videos/Walking 1.54138969.mp4"
    data = video_data(tmp, "h36m_video", root)
    src = load_image_sequences(data)
    assert [s.subject for s in src.sequences] == ["S1", "S9"]
    rows = piece_rows(src.sequences[0], 0, 1, job_of(data))
    # boxes are in decoded-video pixels (100x100 for 1000x1000 cameras): labels were rescaled
    full = to_full(rows["keypoints"][0], rows["boxes"][0], 32)
    np.testing.assert_allclose(full[..., 0], src.sequences[0].keypoints[:4, ..., 0] * 0.1, atol=1e-3)
    assert rows["boxes"][..., 2].max() < 150


def test_missing_camera_is_an_error_or_reported(videos, tmp_path):
    tmp, root, _ = videos
    copy = tmp_path / "h36m"
    shutil.copytree(root, copy)
    missing = copy / "S9" / "Videos" / "Walking 1.58860488.mp4"
    missing.unlink()
    with pytest.raises(DataError, match=r"Walking 1\.58860488\.mp4: missing camera 58860488 of S9/Walking 1"):
        load_image_sequences(video_data(tmp, "h36m_video", copy))
    src = load_image_sequences(video_data(tmp, "h36m_video", copy, on_missing="skip"))
    assert [s.subject for s in src.sequences] == ["S1"]
    assert len(src.skipped) == 1 and "missing camera 58860488 of S9/Walking 1" in src.skipped[0]


def test_undecodable_and_short_videos_name_the_file_and_frame(videos, tmp_path):
    tmp, root, _ = videos
    copy = tmp_path / "h36m"
    shutil.copytree(root, copy)
    bad = copy / "S1" / "Videos" / "Walking 1.55011271.mp4"
    bad.write_bytes(b"\x00not a video" * 100)
    with pytest.raises(DataError, match=r"Walking 1\.55011271\.mp4: cannot open video"):
        load_image_sequences(video_data(tmp, "h36m_video", copy))
    from preprocessing.images.render import write_video

    short = [np.zeros((100, 100, 3), np.uint8)] * 3  # 3 frames; the labels have 6
    write_video(bad, short, 50.0)
    with pytest.raises(DataError, match=r"Walking 1\.55011271\.mp4: frames out of sync: the video has 3 frames, .*frame 3 is missing"):
        load_image_sequences(video_data(tmp, "h36m_video", copy))


def test_a_window_late_in_a_video_is_decoded_by_seeking_with_the_same_pixels(tmp_path):
    """Shard tasks seek to the keyframe before their first frame (a Human3.6M take has thousands
    of frames) and index frames by timestamp: the pixels equal a sequential decode from frame 0."""
    import av

    from preprocessing.images.sources import decode_from, video_frames
    from preprocessing.images.render import write_video

    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 255, (32, 32, 3), dtype=np.uint8) for _ in range(300)]  # keyframes at 0 and later
    path = str(write_video(tmp_path / "long.mp4", frames, 50.0))
    with av.open(path) as c:
        keyframes = [k for k, p in enumerate(c.demux(c.streams.video[0])) if p.is_keyframe]
        c.seek(0)
        sequential = [f.to_ndarray(format="rgb24") for f in c.decode(c.streams.video[0])]
    assert len(sequential) == 300 and len(keyframes) > 1, keyframes
    with av.open(path) as c:
        first, _ = next(decode_from(c, c.streams.video[0], 290))
    assert 0 < first <= 290  # it seeked: decoding started at a later keyframe, not at frame 0
    for start, stop in ((290, 300), (keyframes[1] - 1, keyframes[1] + 2), (0, 3), (5, 9)):
        got = list(video_frames(path, start, stop))
        assert len(got) == stop - start and all((g == w).all() for g, w in zip(got, sequential[start:stop]))
    with pytest.raises(DataError, match=r"long\.mp4: frames out of sync: the video ends after 300 frames"):
        list(video_frames(path, 295, 302))


def test_frame_folders_out_of_sync_name_the_frame(tmp_path):
    root = tmp_path / "frames"
    write_synthetic_videos(synthetic_data(tmp_path), str(root), scale=0.1, frames_dir=True)
    data = video_data(tmp_path, "frames", root)
    rows = piece_rows(load_image_sequences(data).sequences[0], 0, 1, job_of(data))
    assert len(rows["images"][0]) == 16
    (root / "S1" / "Walking 1.60457274" / "000002.png").unlink()
    with pytest.raises(DataError, match=r"Walking 1\.60457274: frames out of sync: frame 2 is missing"):
        load_image_sequences(data)


def test_corrupt_image_in_a_shard_names_the_frame(tmp_path):
    from preprocessing.images.readers import decode_rows

    data = synthetic_data(tmp_path)
    seq = load_image_sequences(data).sequences[0]
    rows = piece_rows(seq, 0, 1, job_of(data))
    perm = H36M17.flip_permutation()
    ok = decode_rows(rows_table([rows]), 32, 4, False, 0, perm, "shard.parquet")
    assert ok["images"].shape == (1, 4, 4, 3, 32, 32) and 0 <= ok["images"].min() and ok["images"].max() <= 1
    rows["images"][0][2 * 4 + 1] = rows["images"][0][2 * 4 + 1][:40]  # truncate frame 2, view 1
    with pytest.raises(DataError, match=r"shard.parquet: S1/Walking 1 camera 55011271 frame 2: corrupt image"):
        decode_rows(rows_table([rows]), 32, 4, False, 0, perm, "shard.parquet")


# ----------------------------------------------------------------------------- shards (Ray)


@pytest.mark.slow
def test_image_shards_reproducible_cached_readable_and_failures_publish_nothing(tmp_path, ray_local):
    from preprocessing.images.readers import load_image_split, open_image_split
    from preprocessing.images.dataset import build_image_dataset
    from preprocessing.store.dataset import Dataset

    data = synthetic_data(tmp_path, frames=10, windows_per_shard=2, windows_per_group=1)
    quiet = lambda _: None  # noqa: E731
    first = build_image_dataset(data, quiet)
    data.root = str(tmp_path / "elsewhere")
    second = build_image_dataset(data, quiet)
    assert first.id == second.id and not second.cached
    assert [s["sha256"] for s in first.manifest["shards"]] == [s["sha256"] for s in second.manifest["shards"]]
    assert build_image_dataset(data, quiet).cached
    m = Dataset.open(first.uri).manifest
    assert m["images"] == 2 * 10 * 4 and m["splits"]["train"]["windows"] == 3  # ceil(10 / 4)
    assert m["bytes_per_image"] > 0

    batches = list(open_image_split(first, "train", seed=3).iter_torch_batches(batch_size=2))
    assert tuple(batches[0]["images"].shape) == (2, 4, 4, 3, 32, 32)
    assert tuple(batches[0]["keypoints"].shape) == (2, 4, 4, 17, 2)
    assert tuple(batches[0]["boxes"].shape) == (2, 4, 4, 4)
    plain = load_image_split(first, "train")
    draws = [load_image_split(first, "train", flip=True, seed=s) for s in range(4)]
    flipped = next(d for d in draws if d["flipped"].any())  # P(no flip in 4 x 3 windows) = 2^-12
    f = flipped["flipped"]
    np.testing.assert_allclose(flipped["images"][f], plain["images"][f][..., ::-1])

    # a corrupt frame file is found in a Ray task: nothing is published, no staging is left
    root = tmp_path / "frames"
    write_synthetic_videos(synthetic_data(tmp_path), str(root), scale=0.1, frames_dir=True)
    bad = video_data(tmp_path, "frames", root)
    bad.root = str(tmp_path / "bad")
    (root / "S9" / "Walking 1.54138969" / "000003.png").write_bytes(b"garbage")
    with pytest.raises(DataError, match=r"000003\.png: cannot decode frame 3"):
        build_image_dataset(bad, quiet)
    assert list((tmp_path / "bad").iterdir()) == []


def test_any_videopose3d_dataset_renders_through_its_cameras(cmu_dev, tmp_path):
    """cmu-dev (real CMU motion, its own cameras JSON) through the synthetic_images renderer."""
    source = SourceConfig(kind="synthetic_images", data_3d=str(cmu_dev / "data_3d_cmu.npz"),
                          data_2d=str(cmu_dev / "data_2d_cmu_gt.npz"), cameras=str(cmu_dev / "cameras.json"),
                          train_subjects=["C03"], test_subjects=["C01"])
    data = DataConfig(source=source, images=ImagesConfig(size=32, frames=2))
    src = load_image_sequences(data)
    seq = src.sequences[0]
    rows = piece_rows(seq, 0, 1, job_of(data))
    np.testing.assert_allclose(to_full(rows["keypoints"][0], rows["boxes"][0], 32), seq.keypoints[:2], atol=1e-2)
    from preprocessing.images.crops import decode_image

    image = decode_image(rows["images"][0][0], 32, "cmu")
    assert image.std() > 10  # a person on a textured background, not an empty frame
