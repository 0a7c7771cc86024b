"""Sources: H36M / generic (VideoPose3D), MPI-INF-3DHP (P-STMO), synthetic, and bad inputs.

Fake input files are written with plain `np.savez` (as VideoPose3D/P-STMO wrote theirs), with 3D
placed in the real Human3.6M capture volume and 2D projected through the real cameras.
"""
from __future__ import annotations

import io
import json
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest

from preprocessing.cameras import (
    BUILTIN_H36M_CAMERAS,
    image_coordinates,
    load_cameras,
    project_to_2d,
    world_to_camera,
)
from preprocessing.config import SourceConfig, SyntheticConfig
from preprocessing.errors import DataError
from preprocessing.sources.safe_npz import read_npz
from preprocessing.skeleton import H36M17, H36M32_KEPT, MPI17, reduce_h36m32
from preprocessing.sources import load_sequences
from preprocessing.sources.synthetic import config_hash

H36M_SUBJECTS = ("S1", "S5", "S6", "S7", "S8", "S9", "S11")
CAMS = load_cameras(BUILTIN_H36M_CAMERAS)


# ----------------------------------------------------------------------------- fake files


def _world(rng, frames, joints=32):
    """Plausible world positions (metres, z up) inside the H36M capture volume."""
    return (rng.uniform(-0.4, 0.4, (frames, joints, 3)) + [0.0, 0.8, 1.0]).astype(np.float32)


def _project(world17, subject, cams=CAMS):
    return [
        project_to_2d(world_to_camera(world17.astype(np.float64), e.orientation, e.translation), i.params).astype(np.float32)
        for i, e in zip(cams.intrinsics, cams.extrinsics[subject])
    ]


def _fake_h36m(tmp_path, extra_2d=0, metadata=None, actions=("Walking 1", "TakingPhoto", "Directions", "Directions 1")):
    """data_3d (32 joints) for the 7 subjects and a 2D file with `extra_2d` extra frames + S2 (2D only)."""
    rng = np.random.default_rng(0)
    pos3d, pos2d = {}, {}
    for subject in H36M_SUBJECTS:
        pos3d[subject], pos2d[subject] = {}, {}
        for k, action in enumerate(actions):
            world = _world(rng, 12 + k)
            pos3d[subject][action] = world
            tail = np.repeat(world[-1:], extra_2d, axis=0)
            pos2d[subject][action] = _project(reduce_h36m32(np.concatenate([world, tail])), subject)
    pos2d["S2"] = {"Walking 1": [np.zeros((5, 17, 2), np.float32)] * 4}  # CPN-like: no 3D for S2
    p3, p2 = tmp_path / "data_3d_h36m.npz", tmp_path / "data_2d_h36m_test.npz"
    np.savez(p3, positions_3d=pos3d)
    meta = {"num_joints": 17, "keypoints_symmetry": [[4, 5, 6, 11, 12, 13], [1, 2, 3, 14, 15, 16]]} if metadata is None else metadata
    np.savez(p2, positions_2d=pos2d, metadata=meta)  # GT-like: no layout_name
    return p3, p2, pos3d, pos2d


def _h36m_source(p3, p2, **kw):
    return SourceConfig(kind="h36m", data_3d=str(p3), data_2d=str(p2), **kw)


# ----------------------------------------------------------------------------- Human3.6M


def test_h36m_loader_split_exclusion_trim_and_conventions(tmp_path):
    p3, p2, pos3d, _ = _fake_h36m(tmp_path, extra_2d=3)
    data = load_sequences(_h36m_source(p3, p2))
    assert data.skeleton is H36M17
    assert data.files == [str(p3.resolve()), str(p2.resolve()), str(BUILTIN_H36M_CAMERAS.resolve())]
    keys = {(s.subject, s.action) for s in data.sequences}
    assert ("S11", "Directions") not in keys and ("S11", "Directions 1") in keys  # exactly that name
    assert ("S9", "Directions") in keys
    assert not any(s.subject == "S2" for s in data.sequences)  # 2D-only subject skipped
    assert len(data.sequences) == (7 * 4 - 1) * 4
    assert {s.subject for s in data.sequences if s.split == "train"} == {"S1", "S5", "S6", "S7", "S8"}
    assert {s.subject for s in data.sequences if s.split == "test"} == {"S9", "S11"}
    assert {s.activity for s in data.sequences} == {"Walking", "Photo", "Directions"}
    for seq in data.sequences:
        world = pos3d[seq.subject][seq.action]
        assert seq.num_frames == world.shape[0]  # 2D trimmed to the 3D length
        assert seq.fps == 50.0 and seq.valid.all() and seq.layout == "h36m"
        ext = CAMS.extrinsics[seq.subject][seq.camera_index]
        cam = world_to_camera(world[:, list(H36M32_KEPT)].astype(np.float64), ext.orientation, ext.translation)
        np.testing.assert_allclose(seq.trajectory, cam[:, 0], atol=1e-5)
        np.testing.assert_allclose(seq.positions_3d, cam - cam[:, :1], atol=1e-5)
        assert not seq.positions_3d[:, 0].any()  # root zeroed
        px = image_coordinates(seq.keypoints_2d.astype(np.float64), *seq.image_size)
        np.testing.assert_allclose(px, project_to_2d(cam, seq.intrinsics), atol=2e-3)
    assert {s.image_size for s in data.sequences if s.camera == "54138969"} == {(1000, 1002)}


def test_h36m_32_to_17_reduction():
    x = np.arange(32 * 3, dtype=np.float32).reshape(1, 32, 3)
    out = reduce_h36m32(x)
    assert out.shape == (1, 17, 3)
    np.testing.assert_array_equal(out[0, :, 0] / 3, [0, 1, 2, 3, 6, 7, 8, 12, 13, 14, 15, 17, 18, 19, 25, 26, 27])


def test_h36m_2d_shorter_than_3d_is_an_error(tmp_path):
    p3, p2, pos3d, pos2d = _fake_h36m(tmp_path)
    pos2d["S7"]["Walking 1"][2] = pos2d["S7"]["Walking 1"][2][:-1]
    np.savez(p2, positions_2d=pos2d)
    with pytest.raises(DataError, match=r"\['S7'\]\['Walking 1'\]\[2\]: has 11 frames, fewer than the 3D's 12"):
        load_sequences(_h36m_source(p3, p2))


def test_h36m_custom_subjects_and_activity_filter(tmp_path):
    p3, p2, _, _ = _fake_h36m(tmp_path)
    data = load_sequences(_h36m_source(p3, p2, train_subjects=["S1"], test_subjects=["S11"], activities=["Photo"]))
    assert {(s.subject, s.action, s.split) for s in data.sequences} == {("S1", "TakingPhoto", "train"), ("S11", "TakingPhoto", "test")}


# ----------------------------------------------------------------------------- generic: cmu-dev


def test_generic_loader_on_cmu_dev(cmu_dev):
    source = SourceConfig(
        kind="generic", data_3d=str(cmu_dev / "data_3d_cmu.npz"), data_2d=str(cmu_dev / "data_2d_cmu_gt.npz"),
        cameras=str(cmu_dev / "cameras.json"), train_subjects=["C01", "C03"], test_subjects=["C05"],
    )
    seqs = load_sequences(source).sequences
    assert {s.subject for s in seqs} == {"C01", "C03", "C05"}
    assert len({(s.subject, s.action) for s in seqs}) == 23
    assert sum(s.num_frames for s in seqs if s.camera_index == 0) == 8027
    assert len(seqs) == 23 * 4
    assert {s.split for s in seqs if s.subject == "C05"} == {"test"}
    # Re-projecting camera-space 3D (+ trajectory) through the intrinsics reproduces the 2D file.
    pos2d = read_npz(source.data_2d, ["positions_2d"])["positions_2d"]
    worst = 0.0
    for s in seqs:
        cam = s.positions_3d.astype(np.float64) + s.trajectory[:, None].astype(np.float64)
        ref = pos2d[s.subject][s.action][s.camera_index][: s.num_frames]
        worst = max(worst, float(np.abs(project_to_2d(cam, s.intrinsics) - ref).max()))
        worst = max(worst, float(np.abs(image_coordinates(s.keypoints_2d.astype(np.float64), *s.image_size) - ref).max()))
    assert worst < 0.05, f"re-projection error {worst:.4f} px"


# ----------------------------------------------------------------------------- MPI-INF-3DHP


def _fake_3dhp(tmp_path):
    rng = np.random.default_rng(5)
    mm = lambda f: (rng.uniform(-600, 600, (f, 17, 3)) + [0, 0, 4000]).astype(np.float32)  # noqa: E731
    train = {
        "S1 Seq1": [{c: {"data_2d": rng.uniform(0, 2048, (10, 17, 2)).astype(np.float32), "data_3d": mm(10)} for c in ("0", "1", "8")}, 25],
        "S3 Seq2": [{"0": {"data_2d": rng.uniform(0, 2048, (7, 17, 2)).astype(np.float32), "data_3d": mm(7)}}, 50],
    }
    valid = np.array([1, 1, 0, 1, 1, 1, 0, 1], dtype=np.float64)
    ts5_3d = mm(8)
    ts5_3d[2] = np.nan  # invalid frames may hold garbage
    test = {
        "TS1": {"data_2d": rng.uniform(0, 2048, (6, 17, 2)).astype(np.float32), "data_3d": mm(6), "valid": np.ones(6)},
        "TS5": {"data_2d": rng.uniform(0, 1080, (8, 17, 2)).astype(np.float32), "data_3d": ts5_3d, "valid": valid},
    }
    p_train, p_test = tmp_path / "data_train_3dhp.npz", tmp_path / "data_test_3dhp.npz"
    np.savez(p_train, data=train)
    np.savez(p_test, data=test)
    return p_train, p_test, train, test


def test_mpi3dhp_conventions(tmp_path):
    p_train, p_test, train, test = _fake_3dhp(tmp_path)
    data = load_sequences(SourceConfig(kind="mpi3dhp", mpi_train=str(p_train), mpi_test=str(p_test)))
    assert data.skeleton is MPI17 and data.files == [str(p_train.resolve()), str(p_test.resolve())]
    by = {(s.subject, s.action, s.camera): s for s in data.sequences}
    assert set(by) == {("S1", "Seq1", "0"), ("S1", "Seq1", "1"), ("S1", "Seq1", "8"), ("S3", "Seq2", "0"),
                       ("TS1", "TS1", "0"), ("TS5", "TS5", "0")}
    s = by[("S1", "Seq1", "8")]
    raw = train["S1 Seq1"][0]["8"]["data_3d"].astype(np.float64)
    assert s.split == "train" and s.fps == 25 and s.image_size == (2048, 2048) and s.camera_index == 2
    np.testing.assert_allclose(s.trajectory, raw[:, 14] / 1000, atol=1e-6)  # mm -> m
    np.testing.assert_allclose(s.positions_3d, (raw - raw[:, 14:15]) / 1000, atol=1e-6)
    assert not s.positions_3d[:, 14].any()  # root 14 zeroed
    np.testing.assert_allclose(s.keypoints_2d, train["S1 Seq1"][0]["8"]["data_2d"] / 2048 * 2 - 1, atol=1e-6)
    assert not s.intrinsics.any() and s.valid.all() and s.layout == "mpi_inf_3dhp"
    assert by[("S3", "Seq2", "0")].fps == 50
    ts1, ts5 = by[("TS1", "TS1", "0")], by[("TS5", "TS5", "0")]
    assert (ts1.split, ts1.image_size, ts1.activity, ts1.fps) == ("test", (2048, 2048), "GreenScreen", 25.0)
    assert (ts5.split, ts5.image_size, ts5.activity, ts5.fps) == ("test", (1920, 1080), "Outdoor", 50.0)
    np.testing.assert_array_equal(ts5.valid, [1, 1, 0, 1, 1, 1, 0, 1])
    np.testing.assert_allclose(ts5.keypoints_2d, test["TS5"]["data_2d"] / 1920 * 2 - [1, 1080 / 1920], atol=1e-6)
    assert np.isfinite(ts5.positions_3d).all()
    # filters
    only = load_sequences(SourceConfig(kind="mpi3dhp", mpi_test=str(p_test), test_subjects=["TS5"]))
    assert [s.subject for s in only.sequences] == ["TS5"]


def test_mpi3dhp_bad_inputs(tmp_path):
    p_train, p_test, train, test = _fake_3dhp(tmp_path)
    with pytest.raises(DataError, match=r"test sequences \['TS7'\] not found"):
        load_sequences(SourceConfig(kind="mpi3dhp", mpi_test=str(p_test), test_subjects=["TS7"]))
    test["TS1"]["valid"] = np.ones(5)
    np.savez(p_test, data=test)
    with pytest.raises(DataError, match=r"\['TS1'\]\['valid'\]: expected 6 flags"):
        load_sequences(SourceConfig(kind="mpi3dhp", mpi_test=str(p_test)))
    train["S1 Seq1"][0]["0"]["data_3d"][4, 3] = np.inf  # a valid training frame
    np.savez(p_train, data=train)
    with pytest.raises(DataError, match=r"\['S1 Seq1'\]\[0\]\['0'\]\['data_3d'\]: contains NaN or inf"):
        load_sequences(SourceConfig(kind="mpi3dhp", mpi_train=str(p_train)))
    np.savez(p_train, data={"S1-Seq1": train["S1 Seq1"]})
    with pytest.raises(DataError, match="is not '<subject> <sequence>'"):
        load_sequences(SourceConfig(kind="mpi3dhp", mpi_train=str(p_train)))


# ----------------------------------------------------------------------------- synthetic


def _synthetic(out_dir, **kw):
    cfg = dict(subjects=["S1", "S9"], actions_per_subject=3, frames_per_action=120, out_dir=str(out_dir))
    cfg.update(kw)
    return SourceConfig(kind="synthetic", synthetic=SyntheticConfig(**cfg))


def test_synthetic_is_deterministic_and_cached(tmp_path):
    a = load_sequences(_synthetic(tmp_path / "a", noise_px=4.0))
    b = load_sequences(_synthetic(tmp_path / "b", noise_px=4.0))
    assert [Path(f).name for f in a.files] == ["data_3d_synthetic.npz", "data_2d_synthetic_noisy.npz", "cameras.json"]
    folder_a, folder_b = Path(a.files[0]).parent, Path(b.files[0]).parent
    names = sorted(p.name for p in folder_a.iterdir())
    assert names == ["cameras.json", "data_2d_synthetic_gt.npz", "data_2d_synthetic_noisy.npz", "data_3d_synthetic.npz"]
    for name in names:
        assert (folder_a / name).read_bytes() == (folder_b / name).read_bytes(), name
    mtimes = {p.name: p.stat().st_mtime_ns for p in folder_a.iterdir()}
    load_sequences(_synthetic(tmp_path / "a", noise_px=4.0))  # second call: reuses the files
    assert mtimes == {p.name: p.stat().st_mtime_ns for p in folder_a.iterdir()}
    assert [p.name for p in (tmp_path / "a").iterdir()] == [folder_a.name]  # no temporary leftovers
    other = _synthetic(tmp_path / "a", seed=1).synthetic
    assert config_hash(other) != config_hash(_synthetic(tmp_path / "a").synthetic)
    assert config_hash(_synthetic(tmp_path / "x").synthetic) == config_hash(_synthetic(tmp_path / "y").synthetic)


def test_synthetic_plausibility_and_noise(tmp_path):
    source = _synthetic(tmp_path, actions_per_subject=15, frames_per_action=150, noise_px=5.0)
    data = load_sequences(source)
    assert len(data.sequences) == 2 * 15 * 4
    assert {s.activity for s in data.sequences} >= {"Walking", "Greeting", "SittingDown", "Directions", "Purchases"}
    assert {s.split for s in data.sequences if s.subject == "S9"} == {"test"}
    gt = read_npz(Path(data.files[0]).parent / "data_2d_synthetic_gt.npz", ["positions_2d"])["positions_2d"]
    errors = []
    for s in data.sequences:
        bones = np.stack([np.linalg.norm(s.positions_3d[:, c] - s.positions_3d[:, p], axis=-1)
                          for c, p in enumerate(H36M17.parents) if p >= 0], axis=1)
        assert (bones.max(0) - bones.min(0)).max() < 1e-3, (s.subject, s.action)  # constant within 1 mm
        assert 0.38 < bones[0, 1] < 0.52 and 0.38 < bones[0, 2] < 0.52  # thigh, shin (H36M-like)
        clean = gt[s.subject][s.action][s.camera_index]
        w, h = s.image_size
        assert (clean >= 0).all() and (clean[..., 0] < w).all() and (clean[..., 1] < h).all(), (s.action, s.camera)
        assert 2.5 < s.trajectory[:, 2].min() and s.trajectory[:, 2].max() < 9  # metres in front of the camera
        errors.append(np.linalg.norm(image_coordinates(s.keypoints_2d.astype(np.float64), w, h) - clean, axis=-1))
    err = np.concatenate([e.ravel() for e in errors])
    assert 4.0 < np.median(err) < 9.0 and err.max() > 20  # ~noise_px jitter plus some outliers
    walk = next(s for s in data.sequences if s.action == "Walking 1" and s.camera_index == 0)
    assert np.linalg.norm(np.diff(walk.trajectory, axis=0), axis=1).mean() * walk.fps > 0.5  # it walks


# ----------------------------------------------------------------------------- bad inputs


class _Payload:
    """Unpickling this calls open(path, 'w'): it creates a file."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def _npz_with_pickle(path, key, payload_bytes):
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "|O", "fortran_order": False, "shape": ()})
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(f"{key}.npy", buf.getvalue() + payload_bytes)


def test_malicious_pickle_is_refused_without_running(tmp_path):
    victim, control = tmp_path / "pwned.txt", tmp_path / "control.txt"
    # The payload is real: NumPy's own loader runs it.
    _npz_with_pickle(tmp_path / "control.npz", "positions_3d", pickle.dumps({"S1": _Payload(control)}, protocol=2))
    np.load(tmp_path / "control.npz", allow_pickle=True)["positions_3d"]
    assert control.exists()
    evil = tmp_path / "evil.npz"
    _npz_with_pickle(evil, "positions_3d", pickle.dumps({"S1": {"Walking": _Payload(victim)}}, protocol=4))
    with pytest.raises(DataError) as err:
        read_npz(evil, ["positions_3d"])
    assert str(evil) in str(err.value) and "positions_3d" in str(err.value) and "io.open" in str(err.value)
    assert not victim.exists()
    # Also through the loader, and for another classic gadget.
    import os

    class System:
        def __reduce__(self):
            return (os.system, (f"touch {victim}",))

    _npz_with_pickle(evil, "positions_3d", pickle.dumps(System()))
    p2 = tmp_path / "d2.npz"
    np.savez(p2, positions_2d={})
    with pytest.raises(DataError, match=r"refusing to unpickle global '(posix|os)\.system'"):
        load_sequences(_h36m_source(evil, p2))
    assert not victim.exists()


def test_plain_data_check_rejects_non_data_objects(tmp_path):
    bad = tmp_path / "set.npz"
    np.savez(bad, positions_3d={"S1": {1, 2}})  # protocol-4 sets need no global: caught afterwards
    with pytest.raises(DataError, match=r"set.npz:positions_3d\['S1'\]: object of type set is not plain data"):
        read_npz(bad, ["positions_3d"])
    np.savez(bad, positions_3d={"S1": 1.5, "S2": SourceConfig()})  # an arbitrary class
    with pytest.raises(DataError, match="refusing to unpickle global 'preprocessing.config.SourceConfig'"):
        read_npz(bad, ["positions_3d"])


def test_missing_and_not_npz_and_missing_key(tmp_path):
    with pytest.raises(DataError, match="file not found: .*nope.npz"):
        read_npz(tmp_path / "nope.npz", ["positions_3d"])
    text = tmp_path / "text.npz"
    text.write_text("hello")
    with pytest.raises(DataError, match=r"text.npz: not an npz \(zip\) file"):
        read_npz(text, ["positions_3d"])
    other = tmp_path / "other.npz"
    np.savez(other, something=np.zeros(3))
    with pytest.raises(DataError, match=r"other.npz: missing key 'positions_3d' \(found: something\)"):
        read_npz(other, ["positions_3d"])
    truncated = tmp_path / "trunc.npz"
    _npz_with_pickle(truncated, "positions_3d", pickle.dumps({"S1": np.zeros(3)})[:-20])
    with pytest.raises(DataError, match="trunc.npz:positions_3d: corrupt pickled data"):
        read_npz(truncated, ["positions_3d"])


def _cmu_like(tmp_path, mutate3d=None, mutate2d=None, cameras=None):
    """Small generic dataset (subjects A, B) with a cameras JSON; mutators break one thing."""
    rng = np.random.default_rng(7)
    raw = json.loads(BUILTIN_H36M_CAMERAS.read_text())
    raw["extrinsics"] = {"A": raw["extrinsics"]["S1"], "B": raw["extrinsics"]["S5"]}
    if cameras:
        cameras(raw)
    cam_path = tmp_path / "cams.json"
    cam_path.write_text(json.dumps(raw))
    good = load_cameras(BUILTIN_H36M_CAMERAS)
    pos3d = {s: {"Walk 1": _world(rng, 9, 17), "Dance 2": _world(rng, 6, 17)} for s in ("A", "B")}
    pos2d = {s: {a: _project(v, {"A": "S1", "B": "S5"}[s], good) for a, v in acts.items()} for s, acts in pos3d.items()}
    if mutate3d:
        mutate3d(pos3d)
    if mutate2d:
        mutate2d(pos2d)
    p3, p2 = tmp_path / "d3.npz", tmp_path / "d2.npz"
    np.savez(p3, positions_3d=pos3d)
    np.savez(p2, positions_2d=pos2d, metadata={"layout_name": "h36m", "num_joints": 17})
    return SourceConfig(kind="generic", data_3d=str(p3), data_2d=str(p2), cameras=str(cam_path),
                        train_subjects=["A"], test_subjects=["B"])


def test_generic_small_dataset_loads(tmp_path):
    data = load_sequences(_cmu_like(tmp_path))
    assert len(data.sequences) == 2 * 2 * 4
    assert {s.activity for s in data.sequences} == {"Walk", "Dance"}


@pytest.mark.parametrize("case, expect", [
    (dict(mutate3d=lambda d: d["A"].update({"Walk 1": np.zeros((9, 20, 3), np.float32)})),
     r"d3.npz:positions_3d\['A'\]\['Walk 1'\]: expected 17 or 32 joints, got 20"),
    (dict(mutate3d=lambda d: d["B"]["Dance 2"].__setitem__((2, 5, 1), np.nan)),
     r"d3.npz:positions_3d\['B'\]\['Dance 2'\]: contains NaN or inf"),
    (dict(mutate2d=lambda d: d["A"]["Walk 1"][3].__setitem__((0, 0, 0), np.inf)),
     r"d2.npz:positions_2d\['A'\]\['Walk 1'\]\[3\]: contains NaN or inf"),
    (dict(mutate2d=lambda d: d["A"]["Dance 2"].__setitem__(1, d["A"]["Dance 2"][1][:4])),
     r"\['A'\]\['Dance 2'\]\[1\]: has 4 frames, fewer than the 3D's 6"),
    (dict(mutate2d=lambda d: d["A"]["Walk 1"].pop()),
     r"\['A'\]\['Walk 1'\]: expected a list of 4 cameras"),
    (dict(mutate2d=lambda d: d["B"].pop("Dance 2")),
     r"d2.npz: action 'Dance 2' of subject 'B' not found"),
    (dict(mutate3d=lambda d: d["A"].update({"Walk 1": d["A"]["Walk 1"] * 1000})),
     r"\['A'\]\['Walk 1'\]: coordinates up to .*millimetres"),
    (dict(mutate3d=lambda d: d.update({"A": [1, 2]})),
     r"d3.npz:positions_3d\['A'\]: expected a dict of actions, got list"),
    (dict(cameras=lambda r: r["extrinsics"].pop("B")),
     r"cams.json: subject 'B' has no cameras"),
])
def test_generic_bad_inputs(tmp_path, case, expect):
    with pytest.raises(DataError, match=expect):
        load_sequences(_cmu_like(tmp_path, **case))


def test_bad_selection_and_metadata(tmp_path):
    source = _cmu_like(tmp_path)
    with pytest.raises(DataError, match=r"d3.npz: activities filter \['Swim'\] matches no action"):
        load_sequences(SourceConfig(**{**source.__dict__, "activities": ["Walk", "Swim"]}))
    with pytest.raises(DataError, match=r"d3.npz: subject 'Z' not found \(subjects in file: \['A', 'B'\]\)"):
        load_sequences(SourceConfig(**{**source.__dict__, "test_subjects": ["Z"]}))
    with pytest.raises(DataError, match=r"subjects \['A'\] are in both the train and the test split"):
        load_sequences(SourceConfig(**{**source.__dict__, "test_subjects": ["A"]}))
    p2 = Path(source.data_2d)
    pos2d = read_npz(p2, ["positions_2d"])["positions_2d"]
    np.savez(p2, positions_2d=pos2d, metadata={"layout_name": "coco", "num_joints": 17})
    with pytest.raises(DataError, match=r"d2.npz:metadata: layout_name is 'coco'"):
        load_sequences(source)
    with pytest.raises(DataError, match=r"synthetic\.npz: subject 'S5' not found"):
        load_sequences(_synthetic(tmp_path / "syn", frames_per_action=20).__class__(
            **{**_synthetic(tmp_path / "syn", frames_per_action=20).__dict__, "train_subjects": ["S5"]}))
