"""Global per-epoch shuffling of the training split (pipelines/train/data.py `epoch_shares`,
preprocessing/keypoints/readers.py `open_split(groups=...)`): seeded, resumable, a partition of the split
in every epoch, and read back in the drawn order."""
from __future__ import annotations

import numpy as np
import pytest

from pipelines.train.data import epoch_shares
from preprocessing.errors import DataError
from preprocessing.keypoints.readers import load_split_arrays, open_split, split_row_groups
from preprocessing.keypoints.dataset import build_dataset
from preprocessing.skeleton import H36M17
from tests.helpers import sequences, shard_config, source_files


def test_epoch_shares_partition_the_split_seeded_per_epoch():
    rows = [256] * 37 + [100]
    seen_orders = set()
    for epoch in range(1, 6):
        shares, per_worker = epoch_shares(rows, seed=3, epoch=epoch, world=2)
        flat = shares[0] + shares[1]
        assert sorted(flat) == list(range(len(rows)))  # every row group exactly once
        assert per_worker == min(sum(rows[i] for i in s) for s in shares)
        assert abs(len(shares[0]) - len(shares[1])) <= 1
        # the same (seed, epoch) gives the same order on every worker and after a restart
        assert epoch_shares(rows, seed=3, epoch=epoch, world=2) == (shares, per_worker)
        seen_orders.add(tuple(flat))
    assert len(seen_orders) == 5  # a new order every epoch
    assert epoch_shares(rows, seed=4, epoch=1, world=2) != epoch_shares(rows, seed=3, epoch=1, world=2)
    # manifest order (sorted by subject, action, camera) is not what the reader gets
    assert epoch_shares(rows, 3, 1, 1)[0][0] != list(range(len(rows)))
    with pytest.raises(DataError, match="2 row group\\(s\\), fewer than the 4 workers"):
        epoch_shares([5, 5], seed=0, epoch=1, world=4)


@pytest.mark.slow
def test_open_split_reads_the_drawn_row_groups_in_order(tmp_path, ray_local):
    info = build_dataset(shard_config(tmp_path / "ds"), sequences(), H36M17, source_files(tmp_path), progress=lambda m: None)
    rows = split_row_groups(info, "train")
    everything = load_split_arrays(info, "train", columns=["positions_3d"])["positions_3d"]
    assert sum(rows) == len(everything) and len(rows) > 4
    bounds = np.concatenate([[0], np.cumsum(rows)])
    shares, per_worker = epoch_shares(rows, seed=0, epoch=2, world=2)
    got = []
    for share in shares:
        block = [r["positions_3d"] for r in open_split(info, "train", groups=share).iter_rows()]
        expected = np.concatenate([everything[bounds[i]:bounds[i + 1]] for i in share])
        assert np.array_equal(np.stack(block), expected)  # the drawn groups, in the drawn order
        assert len(block) >= per_worker
        got.append(np.stack(block))
    assert np.isclose(np.concatenate(got).astype(np.float64).sum(), everything.astype(np.float64).sum())
    with pytest.raises(DataError, match="out of range"):
        open_split(info, "train", groups=[len(rows)])
