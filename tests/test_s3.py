"""Datasets on a real S3 server (SeaweedFS on 127.0.0.1): write, read back, verify, failures."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

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

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def s3_env(s3_server, monkeypatch):
    for key, value in s3_server.env().items():
        monkeypatch.setenv(key, value)
    return s3_server


def s3_objects(server, prefix: str) -> list[str]:
    fs = open_location(f"s3://{server.bucket}").fs
    infos = fs.get_file_info(pafs.FileSelector(f"{server.bucket}/{prefix}", recursive=True, allow_not_found=True))
    return sorted(i.path for i in infos if i.type == pafs.FileType.File)


def test_s3_dataset_round_trip_is_identical_to_local(tmp_path, s3_env, ray_local, capsys):
    seqs, files = sequences(), source_files(tmp_path)
    local = build_dataset(config(tmp_path / "local"), seqs, H36M17, files, progress=lambda m: None)
    root = f"s3://{s3_env.bucket}/roundtrip"
    remote = build_dataset(config(root), seqs, H36M17, files, progress=lambda m: None)
    assert remote.id == local.id and remote.uri == f"{root}/{local.id}"
    assert remote.manifest["shards"] == local.manifest["shards"]  # byte-identical shards (sha256)
    objects = s3_objects(s3_env, "roundtrip")
    assert all(f"roundtrip/{local.id}/" in o for o in objects)  # no staging left behind
    assert f"{s3_env.bucket}/roundtrip/{local.id}/manifest.json" in objects
    assert read_manifest(remote.uri)["id"] == local.id

    for split in ("train", "test"):
        a, b = load_split_arrays(local.uri, split), load_split_arrays(remote.uri, split)
        assert a.keys() == b.keys()
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])
    batches = list(iter_torch_batches(open_split(remote.uri, "train"), batch_size=8, shuffle_buffer=16, seed=1))
    assert sum(len(x["mask"]) for x in batches) == remote.manifest["splits"]["train"]["windows"]
    assert np.isclose(sum(float(x["positions_3d"].double().sum()) for x in batches),
                      float(load_split_arrays(local.uri, "train")["positions_3d"].astype(np.float64).sum()))

    again = build_dataset(config(root), seqs, H36M17, files, progress=lambda m: None)
    assert again.cached

    capsys.readouterr()
    assert cli_main(["data", "ls", "--root", root]) == 0
    assert local.id in capsys.readouterr().out
    assert cli_main(["data", "verify", local.id, "--root", root]) == 0
    fs = open_location(root).fs
    with fs.open_output_stream(f"{s3_env.bucket}/roundtrip/{local.id}/train/part-00001.parquet") as f:
        f.write(b"not parquet any more")
    capsys.readouterr()
    assert cli_main(["data", "verify", local.id, "--root", root]) == 1
    out = capsys.readouterr().out
    assert f"{root}/{local.id}/train/part-00001.parquet" in out
    with pytest.raises(DataError, match="part-00001.parquet"):
        load_split_arrays(remote.uri, "train")
    assert s3_env.secret_key not in out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_s3_endpoint_is_a_data_error(tmp_path, s3_env, monkeypatch, ray_local):
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{_free_port()}")
    root = f"s3://{s3_env.bucket}/unreachable"
    t0 = time.monotonic()
    with pytest.raises(DataError, match=root) as err:
        build_dataset(config(root), sequences(), H36M17, source_files(tmp_path), progress=lambda m: None)
    assert time.monotonic() - t0 < 30
    assert s3_env.secret_key not in str(err.value)


def test_missing_bucket_is_a_data_error(tmp_path, s3_env, ray_local):
    root = "s3://no-such-bucket-raylift/datasets"
    with pytest.raises(DataError, match="no-such-bucket-raylift"):
        build_dataset(config(root), sequences(), H36M17, source_files(tmp_path), progress=lambda m: None)


@pytest.mark.slow
def test_cmu_dev_preprocess_cli_to_s3(tmp_path, s3_env, cmu_dev):
    root = f"s3://{s3_env.bucket}/cmu"
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
    assert s3_env.secret_key not in run.stdout + run.stderr
    (dataset_id,) = {o.split("/")[2] for o in s3_objects(s3_env, "cmu")}
    from preprocessing.sources import load_sequences
    from pipelines.config import load_config

    src = load_sequences(load_config(str(cfg)).data.source)
    test = {(s.subject, s.action, s.camera): s for s in src.sequences if s.split == "test"}
    a = load_split_arrays(f"{root}/{dataset_id}", "test")
    assert a["mask"].sum() == sum(s.num_frames for s in test.values())
    for i in range(len(a["start"])):
        seq = test[(a["subject"][i], a["action"][i], a["camera"][i])]
        idx = np.clip(np.arange(a["start"][i], a["start"][i] + 243), 0, seq.num_frames - 1)
        np.testing.assert_array_equal(a["keypoints_2d"][i], seq.keypoints_2d[idx])
        np.testing.assert_array_equal(a["positions_3d"][i], seq.positions_3d[idx])
