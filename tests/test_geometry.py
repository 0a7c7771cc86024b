"""Camera geometry: projection (hand-computed), quaternions, world<->camera, normalisation, JSON."""
from __future__ import annotations

import json

import numpy as np
import pytest

from preprocessing.cameras import (
    BUILTIN_H36M_CAMERAS,
    camera_to_world,
    image_coordinates,
    load_cameras,
    normalize_screen_coordinates,
    project_to_2d,
    qinverse,
    qrot,
    quaternion_to_matrix,
    world_to_camera,
)
from preprocessing.errors import DataError

K = np.array([1000.0, 1100.0, 500.0, 400.0, 0.1, 0.01, 0.001, 0.001, 0.003])  # fx fy cx cy k1 k2 k3 p1 p2


def test_projection_matches_hand_computation_with_distortion():
    # X = (0.2, -0.1, 2.0): x = 0.1, y = -0.05, r2 = 0.01 + 0.0025 = 0.0125
    # radial = 1 + 0.1*0.0125 + 0.01*0.0125^2 + 0.001*0.0125^3 = 1.001251564453125
    # tan = 0.001*0.1 + 0.003*(-0.05) = -0.00005  ->  radial + tan = 1.001201564453125
    # x' = 0.1*1.001201564453125 + 0.001*0.0125 = 0.1001326564453125
    # y' = -0.05*1.001201564453125 + 0.003*0.0125 = -0.05002257822265625
    # u = 1000*x' + 500 = 600.1326564453125 ; v = 1100*y' + 400 = 344.975163955078125
    uv = project_to_2d(np.array([0.2, -0.1, 2.0]), K)
    np.testing.assert_allclose(uv, [600.1326564453125, 344.975163955078125], rtol=0, atol=1e-9)


def test_projection_clamps_normalised_coordinates_and_broadcasts():
    # x/z = 3 is clamped to 1 (VideoPose3D), so it projects like x/z = 1.
    far = project_to_2d(np.array([6.0, 0.0, 2.0]), K)
    edge = project_to_2d(np.array([2.0, 0.0, 2.0]), K)
    np.testing.assert_allclose(far, edge)
    # (B, J, 3) points with (B, 1, 9) intrinsics == per-batch projection.
    pts = np.random.default_rng(0).uniform([-1, -1, 3], [1, 1, 6], (2, 5, 3))
    ks = np.stack([K, K * [1.1, 0.9, 1, 1, 0, 0, 0, 0, 0]])[:, None, :]
    batched = project_to_2d(pts, ks)
    np.testing.assert_allclose(batched[1], project_to_2d(pts[1], ks[1, 0]))
    assert batched.shape == (2, 5, 2)


def test_quaternions_rotate_like_matrices():
    rng = np.random.default_rng(1)
    q = rng.normal(size=4)
    q /= np.linalg.norm(q)
    v = rng.normal(size=(10, 3))
    np.testing.assert_allclose(qrot(np.broadcast_to(q, (10, 4)), v), v @ quaternion_to_matrix(q).T, atol=1e-12)
    np.testing.assert_allclose(qrot(qinverse(q), qrot(q, v)), v, atol=1e-12)
    # 90 degrees about z (camera->world) maps camera x to world y, so world y is camera x.
    qz = np.array([np.cos(np.pi / 4), 0, 0, np.sin(np.pi / 4)])
    np.testing.assert_allclose(world_to_camera(np.array([0.0, 1.0, 0.0]), qz, np.zeros(3)), [1, 0, 0], atol=1e-12)
    np.testing.assert_allclose(world_to_camera(np.array([1.0, 2.0, 3.0]), np.array([1.0, 0, 0, 0]), np.array([1.0, 1, 1])), [0, 1, 2])


def test_world_camera_round_trip_with_real_h36m_camera():
    cams = load_cameras(BUILTIN_H36M_CAMERAS)
    ext = cams.extrinsics["S1"][0]
    np.testing.assert_allclose(ext.translation, [1.8411070556640625, 4.95528466796875, 1.5634454345703125])
    world = np.random.default_rng(2).uniform(-1, 1, (50, 17, 3)) + [0, 0, 1]
    cam = world_to_camera(world, ext.orientation, ext.translation)
    # qrot form of docs/field_notes.md: world_to_camera(X) = qrot(q^-1, X - t)
    np.testing.assert_allclose(cam, qrot(np.broadcast_to(qinverse(ext.orientation), (50, 17, 4)), world - ext.translation), atol=1e-12)
    np.testing.assert_allclose(camera_to_world(cam, ext.orientation, ext.translation), world, atol=1e-12)
    assert (cam[..., 2] > 3).all()  # the capture volume is in front of the camera, metres away


def test_normalisation_and_inverse():
    px = np.array([[0.0, 0.0], [1000.0, 1002.0], [500.0, 501.0]])
    norm = normalize_screen_coordinates(px, 1000, 1002)
    np.testing.assert_allclose(norm, [[-1, -1.002], [1, 1.002], [0, 0]])
    np.testing.assert_allclose(image_coordinates(norm, 1000, 1002), px)
    x = np.random.default_rng(3).uniform(0, 2048, (4, 17, 2))
    np.testing.assert_allclose(image_coordinates(normalize_screen_coordinates(x, 1920, 1080), 1920, 1080), x)


def test_builtin_cameras_intrinsics_vector():
    cams = load_cameras(BUILTIN_H36M_CAMERAS)
    assert [c.id for c in cams.intrinsics] == ["54138969", "55011271", "58860488", "60457274"]
    assert [(c.res_w, c.res_h) for c in cams.intrinsics] == [(1000, 1002), (1000, 1000), (1000, 1000), (1000, 1002)]
    np.testing.assert_allclose(cams.intrinsics[0].params[:4], [1145.0494384765625, 1143.7811279296875, 512.54150390625, 515.4514770507812])
    np.testing.assert_allclose(cams.intrinsics[0].params[7:], [-0.0009756988729350269, -0.00142447161488235])
    assert sorted(cams.extrinsics) == ["S1", "S11", "S5", "S6", "S7", "S8", "S9"]


def _camera_json(tmp_path, mutate):
    raw = json.loads(BUILTIN_H36M_CAMERAS.read_text())
    mutate(raw)
    path = tmp_path / "cams.json"
    path.write_text(json.dumps(raw))
    return path


@pytest.mark.parametrize("mutate, message", [
    (lambda r: r.pop("intrinsics"), "missing key 'intrinsics'"),
    (lambda r: r.pop("extrinsics"), "missing key 'extrinsics'"),
    (lambda r: r["intrinsics"][1].pop("focal_length"), "intrinsics[1]: missing key 'focal_length'"),
    (lambda r: r["intrinsics"][2].update(res_w=0), "intrinsics[2].res_w"),
    (lambda r: r["intrinsics"][0].update(center=[1.0]), "intrinsics[0].center"),
    (lambda r: r["extrinsics"]["S5"].pop(), "extrinsics['S5']: expected a list of 4 cameras, got 3"),
    (lambda r: r["extrinsics"]["S9"][0].update(orientation=[1, 1, 0, 0]), "extrinsics['S9'][0].orientation"),
    (lambda r: r["extrinsics"]["S9"][1].update(translation=[0, float("nan"), 0]), "extrinsics['S9'][1].translation"),
    (lambda r: r.update(fps=-5), "'fps'"),
])
def test_bad_camera_json_names_file_and_key(tmp_path, mutate, message):
    path = _camera_json(tmp_path, mutate)
    with pytest.raises(DataError) as err:
        load_cameras(path)
    assert str(path) in str(err.value) and message in str(err.value)


def test_camera_json_missing_or_not_json(tmp_path):
    with pytest.raises(DataError, match="cameras file not found"):
        load_cameras(tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(DataError, match="not valid JSON"):
        load_cameras(bad)
