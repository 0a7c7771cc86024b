"""Datasets on a real GCS emulator (fake-gcs-server on 127.0.0.1): write, read back, verify,
failures. The same scope as tests/test_s3.py, through the same code path users hit for gs:// on
GCP (pyarrow's GcsFileSystem via preprocessing/storage.py), switched to the emulator only by
STORAGE_EMULATOR_HOST."""
from __future__ import annotations

import socket
import time

import numpy as np
import pyarrow.fs as pafs
import pytest

from pipelines.cli import main as cli_main
from preprocessing.errors import DataError
from preprocessing.readers import iter_torch_batches, load_split_arrays, open_split, read_manifest
from preprocessing.shards import build_dataset
from preprocessing.skeleton import H36M17
from preprocessing.storage import open_location
from tests.test_shards import config, sequences, source_files


@pytest.fixture
def gcs_env(gcs_server, monkeypatch):
    for key, value in gcs_server.env().items():
        monkeypatch.setenv(key, value)
    return gcs_server


def gcs_objects(server, prefix: str) -> list[str]:
    fs = open_location(f"gs://{server.bucket}").fs
    infos = fs.get_file_info(pafs.FileSelector(f"{server.bucket}/{prefix}", recursive=True, allow_not_found=True))
    return sorted(i.path for i in infos if i.type == pafs.FileType.File)


def test_gcs_dataset_round_trip_is_identical_to_local(tmp_path, gcs_env, ray_local, capsys):
    seqs, files = sequences(), source_files(tmp_path)
    local = build_dataset(config(tmp_path / "local"), seqs, H36M17, files, progress=lambda m: None)
    root = f"gs://{gcs_env.bucket}/roundtrip"
    remote = build_dataset(config(root), seqs, H36M17, files, progress=lambda m: None)
    assert remote.id == local.id and remote.uri == f"{root}/{local.id}"
    assert remote.manifest["shards"] == local.manifest["shards"]  # byte-identical shards (sha256)
    objects = gcs_objects(gcs_env, "roundtrip")
    assert objects and all(f"roundtrip/{local.id}/" in o for o in objects)  # no staging or lock left
    assert f"{gcs_env.bucket}/roundtrip/{local.id}/manifest.json" in objects
    assert read_manifest(remote.uri)["id"] == local.id

    for split in ("train", "test"):
        a, b = load_split_arrays(local.uri, split), load_split_arrays(remote.uri, split)
        assert a.keys() == b.keys()
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])
    batches = list(iter_torch_batches(open_split(remote.uri, "train"), batch_size=8, shuffle_buffer=16, seed=1))
    assert sum(len(x["mask"]) for x in batches) == remote.manifest["splits"]["train"]["windows"]

    assert build_dataset(config(root), seqs, H36M17, files, progress=lambda m: None).cached

    capsys.readouterr()
    assert cli_main(["data", "ls", "--root", root]) == 0
    assert local.id in capsys.readouterr().out
    assert cli_main(["data", "verify", local.id, "--root", root]) == 0
    fs = open_location(root).fs
    with fs.open_output_stream(f"{gcs_env.bucket}/roundtrip/{local.id}/train/part-00001.parquet") as f:
        f.write(b"not parquet any more")
    capsys.readouterr()
    assert cli_main(["data", "verify", local.id, "--root", root]) == 1
    assert f"{root}/{local.id}/train/part-00001.parquet" in capsys.readouterr().out
    with pytest.raises(DataError, match="part-00001.parquet"):
        load_split_arrays(remote.uri, "train")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_gcs_endpoint_is_a_data_error(tmp_path, gcs_env, monkeypatch, ray_local):
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", f"http://127.0.0.1:{_free_port()}")
    root = f"gs://{gcs_env.bucket}/unreachable"
    t0 = time.monotonic()
    with pytest.raises(DataError, match=f"cannot reach GCS endpoint .* for {root}"):
        build_dataset(config(root), sequences(), H36M17, source_files(tmp_path), progress=lambda m: None)
    assert time.monotonic() - t0 < 30


def test_missing_bucket_is_a_data_error(tmp_path, gcs_env, ray_local):
    root = "gs://no-such-bucket-raylift/datasets"
    with pytest.raises(DataError, match="no-such-bucket-raylift"):
        build_dataset(config(root), sequences(), H36M17, source_files(tmp_path), progress=lambda m: None)
