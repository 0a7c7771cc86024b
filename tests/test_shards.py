"""Parquet shards on local disk: build with Ray Data, read back, determinism, cache, verify, failures."""
from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from pipelines.cli import main as cli_main
from preprocessing.config import DataConfig, SourceConfig, WindowConfig
from preprocessing.errors import DataError
from preprocessing.store.manifest import list_datasets, verify_dataset
from preprocessing.keypoints.readers import iter_torch_batches, load_split_arrays, open_split
from preprocessing.store.dataset import Dataset
from preprocessing.store.parquet import RowGroup, batch_rows, plan_read_tasks
from preprocessing.keypoints.dataset import build_dataset, compute_id, prepare_dataset
from preprocessing.store.writer import hash_files
from preprocessing.skeleton import H36M17
from preprocessing.store.storage import open_location
from preprocessing.keypoints.windows import flip_intrinsics, flip_keypoints_2d, flip_positions_3d
from tests.helpers import make_sequence
from tests.helpers import sequences, shard_config, source_files

REPO = Path(__file__).resolve().parents[1]


def by_key(seqs):
    return {(s.subject, s.action, s.camera): s for s in seqs}


def test_build_read_back_matches_source(tmp_path, ray_local):
    seqs = sequences()
    files = source_files(tmp_path)
    info = build_dataset(shard_config(tmp_path / "ds"), seqs, H36M17, files, progress=lambda m: None)
    root = tmp_path / "ds"
    assert info.uri == str(root / info.id) and not info.cached
    assert sorted(p.name for p in root.iterdir()) == [info.id]  # staging removed
    m = Dataset.open(info.uri).manifest
    assert m == info.manifest and m["id"] == info.id
    # train: S1 ceil(53/16)=4 windows x 2 cameras, S5 2 + 2 -> 12 windows, x2 flipped = 24 rows
    assert m["splits"]["train"]["windows"] == 24 and m["splits"]["train"]["flipped"] == 12
    assert m["splits"]["test"]["windows"] == 6 and m["splits"]["test"]["flipped"] == 0
    assert m["splits"]["train"]["subjects"] == {"S1": 16, "S5": 8}
    assert m["splits"]["test"]["masked_frames"] == 2 * 42
    assert [s["path"] for s in m["shards"]] == [
        "train/part-00000.parquet", "train/part-00001.parquet", "train/part-00002.parquet",
        "train/part-00003.parquet", "test/part-00000.parquet"]
    assert [s["rows"] for s in m["shards"]] == [7, 7, 7, 3, 6]
    for shard in m["shards"]:
        data = (root / info.id / shard["path"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == shard["sha256"] and len(data) == shard["bytes"]

    # plain pyarrow: fixed-shape tensor columns with their shapes, row groups of rows_per_group
    pf = pq.ParquetFile(root / info.id / "train/part-00000.parquet")
    assert [pf.metadata.row_group(i).num_rows for i in range(pf.num_row_groups)] == [3, 3, 1]
    schema = pf.schema_arrow
    assert schema.field("keypoints_2d").type.shape == [16, 17, 2]
    assert schema.field("positions_3d").type.shape == [16, 17, 3]
    assert schema.field("mask").type.shape == [16] and schema.field("intrinsics").type.shape == [9]
    assert pf.metadata.row_group(0).column(0).compression == "ZSTD"

    src = by_key(seqs)
    for split in ("train", "test"):
        a = load_split_arrays(info, split)
        n = len(a["start"])
        assert a["keypoints_2d"].shape == (n, 16, 17, 2) and a["keypoints_2d"].dtype == np.float32
        real_frames: dict = {}
        for i in range(n):
            seq = src[(a["subject"][i], a["action"][i], a["camera"][i])]
            assert a["sequence_length"][i] == seq.num_frames and a["activity"][i] == seq.activity
            frames = np.arange(a["start"][i], a["start"][i] + 16)
            idx = np.clip(frames, 0, seq.num_frames - 1)
            kp, pos, intr = seq.keypoints_2d[idx], seq.positions_3d[idx], seq.intrinsics
            traj = seq.trajectory[idx]
            if a["flipped"][i]:
                kp, pos = flip_keypoints_2d(kp, H36M17), flip_positions_3d(pos, H36M17)
                intr = flip_intrinsics(intr, seq.image_size[0])
                traj = traj * np.array([-1, 1, 1], np.float32)
            np.testing.assert_array_equal(a["keypoints_2d"][i], kp)
            np.testing.assert_array_equal(a["positions_3d"][i], pos)
            np.testing.assert_array_equal(a["trajectory"][i], traj)
            np.testing.assert_allclose(a["intrinsics"][i], intr, rtol=1e-6)
            np.testing.assert_array_equal(a["image_size"][i], seq.image_size)
            inside = (frames >= 0) & (frames < seq.num_frames)
            np.testing.assert_array_equal(a["mask"][i], (inside & seq.valid[idx]).astype(np.float32))
            if not a["flipped"][i]:
                for f in frames[a["mask"][i] > 0]:
                    key = (seq.subject, seq.action, seq.camera, int(f))
                    real_frames[key] = real_frames.get(key, 0) + 1
        if split == "test":  # each valid frame exactly once
            expected = {(s.subject, s.action, s.camera, f) for s in seqs if s.split == "test" for f in np.flatnonzero(s.valid)}
            assert set(real_frames) == expected and set(real_frames.values()) == {1}
        else:
            assert a["flipped"].sum() == n // 2

    # Ray Data: the training iterator yields every window once, as torch tensors
    arrays = load_split_arrays(info, "train")
    ds = open_split(info, "train")
    batches = list(iter_torch_batches(ds, batch_size=5, shuffle_buffer=8, seed=0))
    assert set(batches[0]) == {"keypoints_2d", "positions_3d", "mask", "trajectory", "intrinsics", "image_size",
                               "flipped"}
    assert tuple(batches[0]["keypoints_2d"].shape[1:]) == (16, 17, 2)
    got = np.concatenate([b["keypoints_2d"].numpy() for b in batches])
    assert got.shape == arrays["keypoints_2d"].shape
    order = lambda x: np.argsort(x.reshape(len(x), -1)[:, :8].sum(1) + x.reshape(len(x), -1)[:, -1])  # noqa: E731
    np.testing.assert_array_equal(got[order(got)], arrays["keypoints_2d"][order(arrays["keypoints_2d"])])
    assert sum(int(b["flipped"].sum()) for b in batches) == 12


def pieces_of(sizes: list[int]) -> list[dict]:
    """Column dicts of consecutive row ids (read-only, like Arrow-backed views)."""
    out, start = [], 0
    for n in sizes:
        ids = np.arange(start, start + n)
        piece = {"keypoints_2d": np.repeat(ids.astype(np.float32), 6).reshape(n, 3, 1, 2), "flipped": ids % 2 == 1}
        for v in piece.values():
            v.flags.writeable = False
        out.append(piece)
        start += n
    return out


def ids_of(batches) -> list[np.ndarray]:
    return [b["keypoints_2d"][:, 0, 0, 0].astype(int) for b in batches]


def test_batch_rows_order_shuffle_seed_and_drop_last():
    sizes = [5, 0, 7, 1, 11]  # 24 rows; batches span pieces
    plain = list(batch_rows(iter(pieces_of(sizes)), 5))
    assert [len(x) for x in ids_of(plain)] == [5, 5, 5, 5, 4]
    np.testing.assert_array_equal(np.concatenate(ids_of(plain)), np.arange(24))
    assert all(b["keypoints_2d"].flags.writeable and b["keypoints_2d"].flags.c_contiguous for b in plain)
    np.testing.assert_array_equal(plain[1]["flipped"], np.arange(5, 10) % 2 == 1)
    assert [len(x) for x in ids_of(batch_rows(iter(pieces_of(sizes)), 5, drop_last=True))] == [5, 5, 5, 5]

    def shuffled(seed, buffer=8):
        return ids_of(batch_rows(iter(pieces_of(sizes)), 5, buffer, np.random.default_rng(seed)))

    a, b, c = shuffled(0), shuffled(0), shuffled(1)
    assert sorted(np.concatenate(a).tolist()) == list(range(24))  # every row exactly once
    assert all(np.array_equal(x, y) for x, y in zip(a, b))  # same seed, same batches
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))
    assert not np.array_equal(np.concatenate(a), np.arange(24))
    assert max(np.concatenate(shuffled(2, buffer=4))[:5]) < 5 + 7 + 1  # a local shuffle: early batches from early rows
    whole = shuffled(3, buffer=1000)  # buffer larger than the data: one global shuffle
    assert sorted(np.concatenate(whole).tolist()) == list(range(24))


def test_plan_read_tasks_keeps_order_and_sizes():
    groups = [RowGroup(f"u{f}", f"p{f}", i, 10, 40) for f in range(3) for i in range(4)]  # 12 x 40 bytes
    tasks = plan_read_tasks(groups, parallelism=8, task_bytes=160, block_bytes=80)
    assert len(tasks) == 3
    flat = [(path, i) for task in tasks for _, path, idx in task for i in idx]
    assert flat == [(g.path, g.index) for g in groups]
    assert all(len(idx) <= 2 for task in tasks for _, _, idx in task)
    assert len(plan_read_tasks(groups, parallelism=2, task_bytes=1, block_bytes=1)) == 2
    assert plan_read_tasks([], 4, 1, 1) == []


def test_training_iterator_columns_and_seeded_shuffle(tmp_path, ray_local):
    info = build_dataset(shard_config(tmp_path / "ds"), sequences(), H36M17, source_files(tmp_path), progress=lambda m: None)
    ds = open_split(info, "train")
    assert sorted(ds.schema().names) == sorted(["keypoints_2d", "positions_3d", "mask", "trajectory", "intrinsics",
                                                "image_size", "flipped"])
    everything = open_split(info, "train", columns=["subject", "keypoints_2d"]).take_all()
    assert {r["subject"] for r in everything} == {"S1", "S5"}

    def run(seed, **kw):
        return [b for b in iter_torch_batches(open_split(info, "train"), batch_size=4, shuffle_buffer=9, seed=seed, **kw)]

    a, b, c = run(7), run(7), run(8)
    assert all(torch_equal(x, y) for x, y in zip(a, b)) and len(a) == len(b)
    assert not all(torch_equal(x, y) for x, y in zip(a, c))
    expected = load_split_arrays(info, "train")["positions_3d"]
    got = np.concatenate([x["positions_3d"].numpy() for x in a])
    assert got.shape == expected.shape and np.isclose(got.astype(np.float64).sum(), expected.astype(np.float64).sum())
    assert all(len(x["mask"]) == 4 for x in run(7, drop_last=True))
    a[0]["keypoints_2d"] += 1  # batches own their memory: writable without touching Ray's objects
    assert torch_equal(run(7)[0], b[0])


def torch_equal(x: dict, y: dict) -> bool:
    return x.keys() == y.keys() and all(bool((x[k] == y[k]).all()) for k in x)


def test_same_inputs_give_identical_shards_and_cache_hits(tmp_path, ray_local):
    seqs, files = sequences(), source_files(tmp_path)
    a = build_dataset(shard_config(tmp_path / "a"), seqs, H36M17, files, progress=lambda m: None)
    b = build_dataset(shard_config(tmp_path / "b"), seqs, H36M17, files, progress=lambda m: None)
    assert a.id == b.id
    assert a.manifest["shards"] == b.manifest["shards"]
    for shard in a.manifest["shards"]:
        assert (Path(a.uri) / shard["path"]).read_bytes() == (Path(b.uri) / shard["path"]).read_bytes()
    mtime = (Path(a.uri) / "manifest.json").stat().st_mtime_ns
    messages = []
    again = build_dataset(shard_config(tmp_path / "a"), seqs, H36M17, files, progress=messages.append)
    assert again.cached and again.id == a.id and "cache hit" in messages[-1]
    assert (Path(a.uri) / "manifest.json").stat().st_mtime_ns == mtime


def test_dataset_id_depends_on_content_not_location(tmp_path):
    files = source_files(tmp_path)
    base = shard_config(tmp_path / "x")
    same = shard_config(tmp_path / "elsewhere")
    same.source = SourceConfig(kind="synthetic")
    same.source.synthetic.out_dir = "/somewhere/else"
    hashes = [f["sha256"] for f in files]
    assert compute_id(base, hashes) == compute_id(same, hashes)
    assert compute_id(shard_config(tmp_path, frames=27), hashes) != compute_id(base, hashes)
    assert compute_id(shard_config(tmp_path, stride=8), hashes) != compute_id(base, hashes)
    assert compute_id(shard_config(tmp_path, stride=16), hashes) == compute_id(base, hashes)  # = default stride
    (tmp_path / "other").mkdir()
    other = [f["sha256"] for f in source_files(tmp_path / "other", b"changed")]
    assert compute_id(base, other) != compute_id(base, hashes)
    bigger = shard_config(tmp_path)
    bigger.rows_per_shard = 8
    assert compute_id(bigger, hashes) != compute_id(base, hashes)


def test_multiview_and_seq2frame_datasets(tmp_path, ray_local):
    seqs, files = sequences(), source_files(tmp_path)
    mv = build_dataset(shard_config(tmp_path / "mv", multiview=True), seqs, H36M17, files, progress=lambda m: None)
    a = load_split_arrays(mv, "train")
    assert a["keypoints_2d"].shape[1:] == (16, 2, 17, 2) and a["positions_3d"].shape[1:] == (16, 2, 17, 3)
    assert a["intrinsics"].shape[1:] == (2, 9) and set(a["camera"]) == {"c0,c1"}
    s5 = [i for i in range(len(a["start"])) if a["subject"][i] == "S5" and not a["flipped"][i]]
    assert set(a["sequence_length"][s5]) == {30}  # trimmed to the shorter camera
    np.testing.assert_array_equal(a["keypoints_2d"][s5[0], :, 1], sequences()[3].keypoints_2d[np.clip(np.arange(a["start"][s5[0]], a["start"][s5[0]] + 16), 0, 29)])
    assert mv.manifest["columns"]["keypoints_2d"] == [16, 2, 17, 2]

    sf = build_dataset(shard_config(tmp_path / "sf", mode="seq2frame", frames=9, stride=4), seqs, H36M17, files, progress=lambda m: None)
    t = load_split_arrays(sf, "test")
    assert t["positions_3d"].shape == (90, 1, 17, 3) and t["mask"].shape == (90, 1)  # stride 1 in test
    assert t["mask"].sum() == 84
    tr = load_split_arrays(sf, "train")
    assert len(tr["start"]) == 2 * (2 * 14 + 8 + 8)  # centres 0,4,... : ceil(53/4)=14, ceil(30/4)=ceil(31/4)=8
    first = by_key(seqs)[("S1", "Walking 1", "c0")]
    row = np.flatnonzero((tr["subject"] == "S1") & (tr["camera"] == "c0") & (tr["start"] == -4) & ~tr["flipped"])
    assert len(row) == 1  # the window centred on frame 0: rows are stored shuffled (row_order)
    np.testing.assert_array_equal(tr["positions_3d"][row[0], 0], first.positions_3d[0])
    np.testing.assert_array_equal(tr["trajectory"][row[0], 0], first.trajectory[0])


def test_verify_names_corrupted_and_missing_shards(tmp_path, ray_local, capsys):
    info = build_dataset(shard_config(tmp_path / "ds"), sequences(), H36M17, source_files(tmp_path), progress=lambda m: None)
    loc = open_location(info.uri)
    assert verify_dataset(loc).ok
    assert cli_main(["data", "verify", info.id, "--root", str(tmp_path / "ds")]) == 0
    bad = Path(info.uri) / "train/part-00001.parquet"
    data = bytearray(bad.read_bytes())
    data[len(data) // 2] ^= 0xFF
    bad.write_bytes(bytes(data))
    (Path(info.uri) / "test/part-00000.parquet").unlink()
    report = verify_dataset(loc)
    assert len(report.problems) == 2
    assert any(str(bad) in p and "sha256" in p for p in report.problems)
    assert any("test/part-00000.parquet: missing" in p for p in report.problems)
    capsys.readouterr()
    assert cli_main(["data", "verify", info.id, "--root", str(tmp_path / "ds")]) == 1
    out = capsys.readouterr().out
    assert "train/part-00001.parquet" in out and "missing" in out and "FAILED" in out


def test_not_parquet_shard_is_a_data_error_naming_the_file(tmp_path, ray_local):
    info = build_dataset(shard_config(tmp_path / "ds"), sequences(), H36M17, source_files(tmp_path), progress=lambda m: None)
    bad = Path(info.uri) / "train/part-00002.parquet"
    bad.write_text("this is not parquet\n")
    with pytest.raises(DataError, match="part-00002.parquet"):
        load_split_arrays(info, "train")
    with pytest.raises(DataError, match="part-00002.parquet"):
        open_split(info, "train")
    with pytest.raises(DataError, match="no dataset"):
        Dataset.open(str(tmp_path / "ds" / "nonexistent"))
    with pytest.raises(DataError, match="no 'validation' split"):
        load_split_arrays(info, "validation")


def test_empty_selection_publishes_nothing(tmp_path, ray_local):
    with pytest.raises(DataError, match="no windows"):
        build_dataset(shard_config(tmp_path / "ds"), [], H36M17, source_files(tmp_path), progress=lambda m: None)
    only_one_camera = [s for s in sequences() if s.camera == "c0"][:1]
    only_one_camera.append(make_sequence(20, camera="c1", camera_index=1, action="Other"))
    with pytest.raises(DataError, match="no windows"):  # multi-view: no group has every camera
        build_dataset(shard_config(tmp_path / "ds", multiview=True), only_one_camera, H36M17, source_files(tmp_path), progress=lambda m: None)
    assert not (tmp_path / "ds").exists() or list((tmp_path / "ds").iterdir()) == []


def test_unwritable_destination_is_a_data_error(tmp_path, ray_local, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    for root in (blocker, blocker / "datasets"):
        with pytest.raises(DataError, match=str(blocker)):
            build_dataset(shard_config(root), sequences(), H36M17, source_files(tmp_path), progress=lambda m: None)
    assert blocker.read_text() == "x"
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(f"data:\n  root: {blocker / 'datasets'}\n  source: {{kind: synthetic, synthetic: {{out_dir: {tmp_path / 'syn'}, "
                   "subjects: [S1, S9], actions_per_subject: 1, frames_per_action: 60}}\n  windows: {frames: 27}\n")
    capsys.readouterr()
    assert cli_main(["preprocess", "--config", str(cfg)]) == 2
    assert str(blocker) in capsys.readouterr().err


KILL_SCRIPT = textwrap.dedent("""
    import sys
    sys.path.insert(0, {repo!r})
    import numpy as np
    import ray
    from preprocessing.config import DataConfig, WindowConfig
    from preprocessing.keypoints.dataset import build_dataset
    from preprocessing.store.writer import hash_files
    from preprocessing.skeleton import H36M17
    from tests.helpers import make_sequence
    ray.init(address="local", num_cpus=1, include_dashboard=False, log_to_driver=False)
    seqs = [make_sequence(4000, subject=f"S{{i}}", seed=i) for i in range(1, 9)]
    data = DataConfig(windows=WindowConfig(frames=81), root={root!r}, rows_per_shard=8, rows_per_group=4)
    build_dataset(data, seqs, H36M17, hash_files([{src!r}]), progress=lambda m: print(m, flush=True))
""")


def test_killed_run_leaves_no_dataset_and_next_run_cleans_up(tmp_path, ray_local, capsys):
    root = tmp_path / "ds"
    src = tmp_path / "source.bin"
    src.write_bytes(b"source bytes")
    script = tmp_path / "run.py"
    script.write_text(KILL_SCRIPT.format(repo=str(REPO), root=str(root), src=str(src)))
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            text=True, start_new_session=True, cwd=tmp_path)
    try:
        deadline = time.monotonic() + 120
        for line in proc.stdout:
            if "wrote" in line or time.monotonic() > deadline:
                break
        assert "wrote" in line, "the build never started writing shards"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the driver and the Ray processes it started
        proc.wait(timeout=30)
    staging = [p.name for p in root.iterdir() if not p.name.startswith(".lock-")]  # the dead run's lease stays
    assert len(staging) == 1 and staging[0].startswith(".staging-")
    assert not list(root.rglob("manifest.json"))
    assert list_datasets(open_location(str(root))) == []
    capsys.readouterr()
    assert cli_main(["data", "ls", "--root", str(root)]) == 0
    assert "no datasets" in capsys.readouterr().out

    seqs = [make_sequence(4000, subject=f"S{i}", seed=i) for i in range(1, 9)]
    data = DataConfig(windows=WindowConfig(frames=81), root=str(root), rows_per_shard=8, rows_per_group=4)
    messages: list[str] = []
    info = build_dataset(data, seqs, H36M17, hash_files([str(src)]), progress=messages.append)
    assert any("leftover staging" in m for m in messages)
    assert [p.name for p in root.iterdir()] == [info.id]
    assert verify_dataset(open_location(info.uri)).ok


@pytest.mark.slow
def test_cmu_dev_end_to_end(tmp_path, cmu_dev, ray_local):
    from preprocessing.sources import load_sequences

    data = DataConfig(
        source=SourceConfig(kind="generic", data_3d=str(cmu_dev / "data_3d_cmu.npz"),
                            data_2d=str(cmu_dev / "data_2d_cmu_gt.npz"), cameras=str(cmu_dev / "cameras.json"),
                            train_subjects=["C01", "C03"], test_subjects=["C05"]),
        windows=WindowConfig(frames=81), root=str(tmp_path / "ds"), rows_per_shard=64, rows_per_group=16,
    )
    info = prepare_dataset(data, progress=lambda m: None)
    src = load_sequences(data.source)
    test = [s for s in src.sequences if s.split == "test"]
    a = load_split_arrays(info, "test")
    assert a["mask"].sum() == sum(int(s.valid.sum()) for s in test)
    seqs = by_key(src.sequences)
    for i in range(len(a["start"])):
        seq = seqs[(a["subject"][i], a["action"][i], a["camera"][i])]
        idx = np.clip(np.arange(a["start"][i], a["start"][i] + 81), 0, seq.num_frames - 1)
        np.testing.assert_array_equal(a["keypoints_2d"][i], seq.keypoints_2d[idx])
        np.testing.assert_array_equal(a["positions_3d"][i], seq.positions_3d[idx])
    assert set(a["subject"]) == {"C05"}
    assert set(Dataset.open(info.uri).manifest["splits"]["train"]["subjects"]) == {"C01", "C03"}
    assert [f["sha256"] for f in info.manifest["source"]["files"]] == [f["sha256"] for f in hash_files(src.files)]
    again = prepare_dataset(data, progress=lambda m: None)
    assert again.cached and again.id == info.id


@pytest.mark.slow
def test_preprocess_cli_synthetic(tmp_path):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(textwrap.dedent(f"""
        data:
          source: {{kind: synthetic, synthetic: {{out_dir: {tmp_path / 'syn'}, subjects: [S1, S9], actions_per_subject: 2, frames_per_action: 120}}}}
          windows: {{frames: 27}}
          root: {tmp_path / 'ds'}
    """))
    env = {**os.environ, "RAY_ADDRESS": ""}
    run = subprocess.run([sys.executable, "-m", "pipelines.cli", "preprocess", "--config", str(cfg), "--set", "data.rows_per_shard=20"],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    ids = [p.name for p in (tmp_path / "ds").iterdir()]
    assert len(ids) == 1
    assert f"dataset   {ids[0]}" in run.stdout and "train     " in run.stdout and "bytes/window" in run.stdout
    manifest = json.loads((tmp_path / "ds" / ids[0] / "manifest.json").read_text())
    # 2 actions x 4 cameras x ceil(120/27)=5 windows, flipped: 80 train rows -> 4 shards of 20
    assert manifest["splits"]["train"]["windows"] == 80 and len([s for s in manifest["shards"] if s["split"] == "train"]) == 4
    ls = subprocess.run([sys.executable, "-m", "pipelines.cli", "data", "ls", "--config", str(cfg)], cwd=REPO,
                        capture_output=True, text=True, timeout=60)
    assert ls.returncode == 0 and ids[0] in ls.stdout and "synthetic" in ls.stdout
    show = subprocess.run([sys.executable, "-m", "pipelines.cli", "data", "show", ids[0], "--root", str(tmp_path / "ds")],
                          cwd=REPO, capture_output=True, text=True, timeout=60)
    assert show.returncode == 0 and "subjects   S1 80" in show.stdout
