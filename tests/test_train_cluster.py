"""Training on a real 2-node Ray cluster on this machine: one worker per node (gloo DDP), shared
checkpoint storage, a worker killed mid-run (training resumes from the last checkpoint and
finishes with the same epochs), and a restart of the same command continuing a finished run."""
from __future__ import annotations

import os
import signal
from pathlib import Path
import threading
import time

import pytest

from models.checkpoint import CheckpointError, load_model, load_train_state
from pipelines.train.checkpoints import checkpoint_name, latest, list_checkpoints, ray_registered
from pipelines.train.logs import read_csv
from tests.helpers import synthetic_cfg

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def two_nodes():
    """Head node + a second node on 127.0.0.2, each with one `slot` so each takes one worker."""
    import ray
    from ray.cluster_utils import Cluster

    if ray.is_initialized():
        ray.shutdown()
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 2, "resources": {"slot": 1}, "include_dashboard": False})
    cluster.add_node(num_cpus=2, resources={"slot": 1}, node_ip_address="127.0.0.2")
    ray.init(address=cluster.address, log_to_driver=False, configure_logging=False)
    assert len([n for n in ray.nodes() if n["Alive"]]) == 2
    yield cluster
    ray.shutdown()
    cluster.shutdown()


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, two_nodes):
    from preprocessing.keypoints.dataset import prepare_dataset

    root = tmp_path_factory.mktemp("data")
    cfg = experiment(root, root / "runs", "unused")
    return root, prepare_dataset(cfg.data, progress=lambda _: None)


def experiment(root, storage, name: str, **train):
    """The tiny experiment on two single-slot workers that may fail twice."""
    return synthetic_cfg(root, name=name, frames_per_action=150, storage=storage, **{
        "epochs": 4, "num_workers": 2, "cpus_per_worker": 1, "resources_per_worker": {"slot": 1},
        "max_failures": 2, **train})


def _processes() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, command line) of every process, from /proc."""
    out = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        ppid = int(stat[stat.rindex(")") + 2:].split()[1])
        out[int(entry.name)] = (ppid, cmdline)
    return out


def train_workers() -> list[int]:
    """pids of this test's Ray Train workers: descendants of this process (the cluster's nodes)."""
    procs = _processes()
    mine, frontier = set(), {os.getpid()}
    while frontier:
        frontier = {pid for pid, (ppid, _) in procs.items() if ppid in frontier} - mine
        mine |= frontier
    return sorted(pid for pid in mine if "RayTrainWorker" in procs[pid][1])


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return state[state.rindex(")") + 2] != "Z"


def assert_intact(run_dir) -> None:
    """Every checkpoint left in the run directory is complete and loads; no staging leftovers."""
    names = os.listdir(run_dir)
    assert not [n for n in names if ".staging-" in n or ".old-" in n], names  # save_checkpoint's temporaries
    for c in list_checkpoints(str(run_dir)):
        model, meta = load_model(c.uri, expect_model="mixste", expect_frames=9)
        assert meta["epoch"] == c.epoch and load_train_state(c.uri)["epoch"] == c.epoch
    assert len([n for n in names if n.startswith("checkpoint_epoch")]) == len(list_checkpoints(str(run_dir)))


def test_two_nodes_one_worker_each_survive_a_killed_worker(two_nodes, dataset, tmp_path):
    from pipelines.train.driver import run_training

    root, data = dataset
    storage = tmp_path / "shared"  # one directory both nodes write to
    cfg = experiment(root, storage, "faulty", epochs=4)
    run_dir = storage / "faulty"
    outcome: dict = {}

    def fit() -> None:
        try:
            outcome["result"] = run_training(cfg, dataset=data, progress=lambda _: None)
        except BaseException as e:  # surfaced by the assertion below
            outcome["error"] = e

    started = time.monotonic()
    thread = threading.Thread(target=fit)
    thread.start()
    # Kill once Ray has registered epoch 2's checkpoint (written and recorded in its snapshot).
    def registered() -> set:
        try:
            return ray_registered(str(run_dir)) or set()
        except CheckpointError:  # the snapshot is being rewritten right now
            return set()

    while thread.is_alive() and checkpoint_name(2) not in registered():
        time.sleep(0.05)
    assert thread.is_alive(), outcome.get("error")
    rows_before = load_train_state(str(run_dir / checkpoint_name(2)))["history"]
    victims = train_workers()
    assert len(victims) == 2
    os.kill(victims[-1], signal.SIGKILL)
    thread.join(timeout=240)
    elapsed = time.monotonic() - started
    assert not thread.is_alive(), "training did not finish after the worker was killed"
    assert "error" not in outcome, outcome.get("error")
    assert not alive(victims[-1])

    history = outcome["result"].history
    assert [h["epoch"] for h in history] == [1, 2, 3, 4]  # every epoch once, none lost
    assert all(h["workers"] == 2 and h["nodes"] == 2 for h in history)  # one worker per node
    # Epochs 1-2 were restored from the checkpoint, not recomputed from scratch.
    assert [h["epoch_time_s"] for h in history[:2]] == [h["epoch_time_s"] for h in rows_before]
    assert [r["epoch"] for r in read_csv(str(run_dir))] == [1, 2, 3, 4]
    assert latest(list_checkpoints(str(run_dir))).epoch == 4
    assert_intact(run_dir)
    print(f"\nfault-recovery run: {elapsed:.1f} s")


def test_rerunning_the_same_command_continues_a_finished_run(two_nodes, dataset, tmp_path):
    from pipelines.train.driver import run_training

    root, data = dataset
    storage = tmp_path / "shared"
    # With a cap of 40 training windows per epoch: each worker stops after 20 (2 batches of 16).
    first = run_training(experiment(root, storage, "again", epochs=2, max_windows_per_epoch=40), dataset=data,
                         progress=lambda _: None)
    assert [h["epoch"] for h in first.history] == [1, 2] and all(h["windows"] == 64 for h in first.history)
    lines: list[str] = []
    second = run_training(experiment(root, storage, "again", epochs=4, max_windows_per_epoch=40), dataset=data,
                          progress=lines.append)
    assert any("resuming from" in line and checkpoint_name(2) in line for line in lines)
    assert [h["epoch"] for h in second.history] == [1, 2, 3, 4]
    assert second.history[:2] == first.history
    assert_intact(storage / "again")


@pytest.mark.parametrize("scheme,server_fixture", [("s3", "s3_server"), ("gs", "gcs_server")])
def test_checkpoints_logs_and_results_on_object_storage(two_nodes, dataset, monkeypatch, request, scheme,
                                                       server_fixture):
    """storage_path on a real S3 server (SeaweedFS) or GCS emulator (fake-gcs-server) on 127.0.0.1:
    both nodes' workers write there through the pickled filesystem, which carries the endpoint."""
    from pipelines.train.driver import run_training
    from preprocessing.store import storage
    from preprocessing.store.storage import local_copy

    server = request.getfixturevalue(server_fixture)
    root, data = dataset
    for key, value in server.env().items():
        monkeypatch.setenv(key, value)  # read by the driver; workers get the pickled filesystem
    out = run_training(experiment(root, f"{scheme}://{server.bucket}/runs", f"on{scheme}", epochs=2), dataset=data,
                       evaluate_after=True, progress=lambda _: None)
    assert out.run_uri == f"{scheme}://{server.bucket}/runs/on{scheme}"
    assert [r["epoch"] for r in read_csv(out.run_uri)] == [1, 2]
    assert latest(list_checkpoints(out.run_uri)).epoch == 2 and out.best_checkpoint.startswith(f"{scheme}://")
    with local_copy(out.best_checkpoint) as d:
        load_model(d, expect_model="mixste", expect_frames=9)
    run = storage.open_location(out.run_uri)
    for name in ("training_curves.png", "config.yaml", "eval/results.md", "metrics.csv"):
        assert storage.is_file(run.child(name)), name
    assert any(p.startswith("tensorboard/") for p in storage.list_files(run))
