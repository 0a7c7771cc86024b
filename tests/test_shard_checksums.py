"""Damaged shard bytes are refused by every reader (training stream, validation, evaluation) and end
`raylift train` with one line naming the shard, never trained on silently."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml

from pipelines.cli import main as cli_main
from pipelines.train.data import iter_val_batches
from preprocessing.errors import DataError
from preprocessing.keypoints.readers import iter_torch_batches, load_split_arrays, open_split
from tests.helpers import synthetic_cfg


def _silently_damage(shard: Path) -> None:
    """Flip 5 bytes inside a data page so that plain Parquet decoding still succeeds but tensor
    values change (the silent case of the issue); fails the test if no such place is found."""
    original = shard.read_bytes()
    clean = pq.read_table(shard)
    for offset in range(len(original) // 4, len(original) // 2, 97):
        damaged = bytearray(original)
        for i in range(5):
            damaged[offset + i] ^= 0x5A
        shard.write_bytes(bytes(damaged))
        try:
            table = pq.read_table(shard)
        except Exception:
            continue
        if not table.equals(clean):
            return
    shard.write_bytes(original)
    pytest.fail(f"no silent 5-byte corruption found in {shard}")


def test_damaged_shard_is_refused_by_every_reader_and_by_train(tmp_path, ray_local, capsys):
    cfg = synthetic_cfg(tmp_path, epochs=1)
    cfg_file = tmp_path / "cfg.yaml"
    cfg_file.write_text(yaml.safe_dump(cfg.to_dict()))
    from preprocessing.keypoints.dataset import prepare_dataset

    dataset = prepare_dataset(cfg.data, progress=lambda m: None)
    before = load_split_arrays(dataset, "train")
    train_shard = Path(dataset.uri) / "train" / "part-00000.parquet"
    test_shard = Path(dataset.uri) / "test" / "part-00000.parquet"
    _silently_damage(train_shard)
    _silently_damage(test_shard)
    assert not np.array_equal(pq.read_table(train_shard).column("positions_3d").combine_chunks().to_numpy_ndarray(),
                              before["positions_3d"][:pq.read_metadata(train_shard).num_rows])

    # Whole shards are hashed; streaming readers check each page they decode against its CRC-32.
    with pytest.raises(DataError, match=rf"{train_shard}: sha256 .* differs from the manifest's .*raylift data verify"):
        load_split_arrays(dataset, "train")
    damaged = r"damaged bytes \(a page checksum differs.*raylift data verify"
    with pytest.raises(DataError, match=rf"{train_shard}: {damaged}"):
        list(iter_torch_batches(open_split(dataset, "train"), 8))
    with pytest.raises(DataError, match=rf"{test_shard}: {damaged}"):
        list(iter_val_batches(dataset, "test", 8))

    capsys.readouterr()
    assert cli_main(["train", "--config", str(cfg_file)]) == 2
    err = capsys.readouterr().err
    (line,) = [ln for ln in err.splitlines() if ln.startswith("raylift train: error:")]
    assert "Traceback" not in err and str(train_shard) in line and line.endswith("and rebuild it")
