"""Datasets on real object-store servers on 127.0.0.1, one test per behaviour and backend: S3
(SeaweedFS) and GCS (fake-gcs-server), through the code path users hit on the clouds (pyarrow's
S3FileSystem / GcsFileSystem via preprocessing/store/storage.py), switched to the local servers
only by their endpoint variables. Write, read back, verify, failures."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pyarrow.fs as pafs
import pytest

from pipelines.cli import main as cli_main
from preprocessing.errors import DataError
from preprocessing.keypoints.dataset import build_dataset
from preprocessing.keypoints.readers import iter_torch_batches, load_split_arrays, open_split
from preprocessing.skeleton import H36M17
from preprocessing.store import storage
from preprocessing.store.dataset import Dataset
from tests.helpers import sequences, shard_config, source_files

REPO = Path(__file__).resolve().parents[1]
# backend -> (URI scheme, the server fixture, the variable that points clients at the server, what the error says)
BACKENDS = {"s3": ("s3", "s3_server", "AWS_ENDPOINT_URL", "S3"), "gs": ("gs", "gcs_server", "STORAGE_EMULATOR_HOST", "GCS")}


@pytest.fixture(params=sorted(BACKENDS))
def store(request, monkeypatch):
    """(URI scheme, running server) with the environment pointing clients at the server."""
    scheme, fixture, _, _ = BACKENDS[request.param]
    server = request.getfixturevalue(fixture)
    for key, value in server.env().items():
        monkeypatch.setenv(key, value)
    return scheme, server


def objects(scheme: str, server, prefix: str) -> list[str]:
    fs = storage.open_location(f"{scheme}://{server.bucket}").fs
    infos = fs.get_file_info(pafs.FileSelector(f"{server.bucket}/{prefix}", recursive=True, allow_not_found=True))
    return sorted(i.path for i in infos if i.type == pafs.FileType.File)


def test_dataset_round_trip_is_identical_to_local(tmp_path, store, ray_local, capsys):
    scheme, server = store
    seqs, files = sequences(), source_files(tmp_path)
    local = build_dataset(shard_config(tmp_path / "local"), seqs, H36M17, files, progress=lambda m: None)
    root = f"{scheme}://{server.bucket}/roundtrip"
    remote = build_dataset(shard_config(root), seqs, H36M17, files, progress=lambda m: None)
    assert remote.id == local.id and remote.uri == f"{root}/{local.id}"
    assert remote.manifest["shards"] == local.manifest["shards"]  # byte-identical shards (sha256)
    listed = objects(scheme, server, "roundtrip")
    assert listed and all(f"roundtrip/{local.id}/" in o for o in listed)  # no staging or lock left behind
    assert f"{server.bucket}/roundtrip/{local.id}/manifest.json" in listed
    assert Dataset.open(remote.uri).id == local.id

    for split in ("train", "test"):
        a, b = load_split_arrays(local, split), load_split_arrays(remote, split)
        assert a.keys() == b.keys()
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])
    batches = list(iter_torch_batches(open_split(remote, "train"), batch_size=8, shuffle_buffer=16, seed=1))
    assert sum(len(x["mask"]) for x in batches) == remote.manifest["splits"]["train"]["windows"]
    assert np.isclose(sum(float(x["positions_3d"].double().sum()) for x in batches),
                      float(load_split_arrays(local, "train")["positions_3d"].astype(np.float64).sum()))
    assert build_dataset(shard_config(root), seqs, H36M17, files, progress=lambda m: None).cached

    capsys.readouterr()
    assert cli_main(["data", "ls", "--root", root]) == 0
    assert local.id in capsys.readouterr().out
    assert cli_main(["data", "verify", local.id, "--root", root]) == 0
    with storage.open_location(root).fs.open_output_stream(f"{server.bucket}/roundtrip/{local.id}/train/part-00001.parquet") as f:
        f.write(b"not parquet any more")
    capsys.readouterr()
    assert cli_main(["data", "verify", local.id, "--root", root]) == 1
    out = capsys.readouterr().out
    assert f"{root}/{local.id}/train/part-00001.parquet" in out
    with pytest.raises(DataError, match="part-00001.parquet"):
        load_split_arrays(remote, "train")
    assert not any(v in out for k, v in server.env().items() if "SECRET" in k)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_endpoint_fails_fast_naming_the_destination(tmp_path, store, monkeypatch, ray_local):
    """A dead endpoint is caught by the reachability check (a connect with a bounded timeout)
    before any write, not by the storage client's retries."""
    scheme, server = store
    _, _, variable, kind = BACKENDS[scheme]
    monkeypatch.setenv(variable, f"http://127.0.0.1:{_free_port()}")
    root = f"{scheme}://{server.bucket}/unreachable"
    with pytest.raises(DataError, match=f"cannot reach {kind} endpoint .* for {root}") as err:
        build_dataset(shard_config(root), sequences(), H36M17, source_files(tmp_path), progress=lambda m: None)
    assert 0 < storage.ENDPOINT_CHECK_TIMEOUT_S <= 10
    assert not any(v and v in str(err.value) for k, v in server.env().items() if "SECRET" in k)


def test_missing_bucket_is_a_data_error(tmp_path, store, ray_local):
    scheme, _ = store
    root = f"{scheme}://no-such-bucket-raylift/datasets"
    with pytest.raises(DataError, match="no-such-bucket-raylift"):
        build_dataset(shard_config(root), sequences(), H36M17, source_files(tmp_path), progress=lambda m: None)


@pytest.mark.slow
def test_cmu_dev_preprocess_cli_to_s3(tmp_path, s3_server, monkeypatch, cmu_dev):
    for key, value in s3_server.env().items():
        monkeypatch.setenv(key, value)
    root = f"s3://{s3_server.bucket}/cmu"
    cfg = tmp_path / "cmu.yaml"
    cfg.write_text(textwrap.dedent(f"""
        data:
          source:
            kind: generic
            data_3d: {cmu_dev / 'data_3d_cmu.npz'}
            data_2d: {cmu_dev / 'data_2d_cmu_gt.npz'}
            cameras: {cmu_dev / 'cameras.json'}
            train_subjects: [C01, C03]
            test_subjects: [C05]
          windows: {{frames: 243}}
          root: {root}
    """))
    env = {**os.environ, "RAY_ADDRESS": ""}
    run = subprocess.run([sys.executable, "-m", "pipelines.cli", "preprocess", "--config", str(cfg)],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert s3_server.secret_key not in run.stdout + run.stderr
    (dataset_id,) = {o.split("/")[2] for o in objects("s3", s3_server, "cmu")}
    from pipelines.config import load_config
    from preprocessing.sources import load_sequences

    src = load_sequences(load_config(str(cfg)).data.source)
    test = {(s.subject, s.action, s.camera): s for s in src.sequences if s.split == "test"}
    a = load_split_arrays(Dataset.open(f"{root}/{dataset_id}"), "test")
    assert a["mask"].sum() == sum(s.num_frames for s in test.values())
    for i in range(len(a["start"])):
        seq = test[(a["subject"][i], a["action"][i], a["camera"][i])]
        idx = np.clip(np.arange(a["start"][i], a["start"][i] + 243), 0, seq.num_frames - 1)
        np.testing.assert_array_equal(a["keypoints_2d"][i], seq.keypoints_2d[idx])
        np.testing.assert_array_equal(a["positions_3d"][i], seq.positions_3d[idx])


def test_local_copy_of_one_object_store_file_and_of_a_prefix(store):
    """`storage.local_copy`: one file (a video a Ray worker decodes) arrives under its own name;
    a prefix (a checkpoint) as a directory of its files; both are removed afterwards."""
    import os

    scheme, server = store
    root = storage.open_location(f"{scheme}://{server.bucket}/copies")
    storage.write_bytes(root.child("clip.mp4"), b"video bytes")
    storage.write_bytes(root.child("ckpt/model.pt"), b"weights")
    with storage.local_copy(root.child("clip.mp4")) as path:
        assert os.path.basename(path) == "clip.mp4" and open(path, "rb").read() == b"video bytes"
    with storage.local_copy(root.child("ckpt")) as folder:
        assert open(os.path.join(folder, "model.pt"), "rb").read() == b"weights"
    assert not os.path.exists(path) and not os.path.exists(folder)
