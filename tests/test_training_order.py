"""The training order: stored rows a seeded uniform permutation of the windows (SplitRows), batches
whose same-sequence neighbours match a uniform permutation's, and the same order after a resume."""
from __future__ import annotations

from itertools import combinations

import numpy as np
import pytest

from pipelines.bench.order import OLD_BUFFER, Variant, close_pairs, measure, uniform_expectation
from pipelines.config import config_from_dict
from pipelines.train.data import buffer_windows, decoded_window_bytes
from preprocessing.keypoints.dataset import SplitRows


def test_stored_rows_are_a_permutation_each_located_once():
    rows = SplitRows(sources=(3, 5, 8), counts=(7, 0, 12), shuffled=True)
    order = rows.order()
    assert sorted(order.tolist()) == list(range(19)) and order.tolist() != list(range(19))
    assert rows.order().tolist() == order.tolist()  # seeded: every shard task draws the same
    seen = []
    for lo, hi in ((0, 4), (4, 11), (11, 19)):  # three row groups
        for source, local, slots in rows.locate(lo, hi, order):
            assert source in (3, 8)
            global_rows = (0 if source == 3 else 7) + local
            assert np.array_equal(order[lo:hi][slots], global_rows)
            seen += global_rows.tolist()
    assert sorted(seen) == list(range(19))
    plain = SplitRows(sources=(0, 1), counts=(3, 2), shuffled=False)
    assert plain.order() is None
    assert [(s, loc.tolist(), sl.tolist()) for s, loc, sl in plain.locate(1, 5, None)] == [
        (0, [1, 2], [0, 1]), (1, [0, 1], [2, 3])]  # sequence order: contiguous runs, as before


def test_close_pairs_and_the_uniform_expectation():
    keys = np.array(["a", "a", "a", "a", "b"])
    starts = np.array([0, 1, 2, 10, 1])
    assert close_pairs(keys, starts, 2) == 3  # (0,1) (0,2) (1,2); 10 is too far, b is alone
    brute = sum(1 for i, j in combinations(range(5), 2) if keys[i] == keys[j] and abs(starts[i] - starts[j]) <= 2)
    assert close_pairs(keys, starts, 2) == brute
    # a batch of the whole split holds every pair: the expectation is the count itself
    assert uniform_expectation(keys, starts, 2, 5) == pytest.approx(3.0)
    assert uniform_expectation(keys, starts, 2, 2) == pytest.approx(3 / 10)


def test_buffer_defaults_to_the_share_up_to_its_memory_cap():
    assert buffer_windows(None, 128, 1000, 5000) == 5000  # the whole share fits
    assert buffer_windows(None, 128, 85_000, 13_200) == (128 << 20) // 85_000
    assert buffer_windows(64, 128, 1000, 5000) == 64  # train.shuffle_buffer wins when set
    manifest = {"columns": {"keypoints_2d": [9, 17, 2], "positions_3d": [1, 17, 3], "mask": [1]}}
    assert decoded_window_bytes(manifest) == 4 * (9 * 34 + 51 + 1)


@pytest.mark.slow
def test_default_order_is_uniform_and_redrawn_on_resume(cmu_dev, tmp_path, ray_local):
    """PoseFormer's cmu-dev recipe (stride-1 windows, batches of 512): the default order's batches
    hold as many same-sequence neighbours as a uniform permutation's (within 10%); the old order
    (sequence rows, 256-window buffer) tens of times more."""
    cfg = config_from_dict({
        "data": {"source": {"kind": "generic", "data_3d": str(cmu_dev / "data_3d_cmu.npz"),
                            "data_2d": str(cmu_dev / "data_2d_cmu_gt.npz"), "cameras": str(cmu_dev / "cameras.json"),
                            "train_subjects": ["C03", "C05"], "test_subjects": ["C01"]},
                 "windows": {"mode": "seq2frame", "frames": 9}, "root": str(tmp_path / "ds")},
        "model": {"name": "poseformer"}, "train": {"batch_size": 512}})
    default = measure(cfg, Variant("default", "shuffled", None), workers=2, max_batches=40, ingest=False)
    assert default["ratio_to_uniform"] == pytest.approx(1.0, abs=0.1)
    assert default["ratio_sd"] < 0.03  # enough pairs counted for the 10% to mean something
    assert default["resume_redraws_same_order"]
    before = measure(cfg, Variant("before", "sequence", OLD_BUFFER), workers=2, max_batches=10, ingest=False)
    assert before["ratio_to_uniform"] > 10
