"""Shipping a job's Ray session logs to the run directory (cluster/logship.py), against a real
2-node Ray cluster on this machine: head + a node on 127.0.0.2 with its own temp dir (so its logs
live in its own session directory and can only come through its own log agent), with the dashboard
(the state API serves the logs)."""
from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import sys
import tempfile
import textwrap
import time
import uuid
from pathlib import Path

import pytest
import yaml

from cluster import logship
from preprocessing.errors import DataError

REPO = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def _agents_answer(node_ids: list[str], address: str, within_s: float = 60.0) -> None:
    """Wait until every node's log agent has registered with the dashboard (list_logs answers)."""
    from ray.util.state import list_logs

    deadline = time.monotonic() + within_s
    for node_id in node_ids:
        while True:
            try:
                if list_logs(address=address, node_id=node_id, timeout=5):
                    break
            except Exception:
                if time.monotonic() > deadline:
                    raise
            time.sleep(0.5)


@pytest.fixture(scope="module")
def cluster():
    """Head (2 CPUs, resource `head_slot`) + node on 127.0.0.2 (2 CPUs, `node2`), with the dashboard."""
    import ray
    from ray.cluster_utils import Cluster

    if ray.is_initialized():
        ray.shutdown()
    saved = os.environ.pop("RAY_ADDRESS", None)  # the state API would follow it to another cluster
    # Each node its own temp dir (short: Ray's socket paths live below): node 2's logs can then only
    # come through its own log agent, and no other Ray instance on this machine shares the folders.
    head_tmp = tempfile.mkdtemp(prefix="rl-h-", dir="/tmp")
    node2_tmp = tempfile.mkdtemp(prefix="rl-n2-", dir="/tmp")
    t0 = time.monotonic()
    c = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 2, "resources": {"head_slot": 1}, "include_dashboard": True,
        "dashboard_port": _free_port(), "temp_dir": head_tmp})
    node2 = c.add_node(num_cpus=2, resources={"node2": 1}, node_ip_address="127.0.0.2", temp_dir=node2_tmp)
    ray.init(address=c.address, log_to_driver=False, configure_logging=False)
    head_id = c.head_node.node_id
    _agents_answer([head_id, node2.node_id], ray.get_runtime_context().gcs_address)
    print(f"cluster up in {time.monotonic() - t0:.1f} s")
    try:
        yield {"cluster": c, "head_id": head_id, "node2_id": node2.node_id,
               "node2_logs": Path(node2.get_logs_dir_path()), "head_logs": Path(c.head_node.get_logs_dir_path()),
               "dashboard": f"http://{c.head_node.address_info['webui_url']}"}
    finally:
        ray.shutdown()
        c.shutdown()
        shutil.rmtree(node2_tmp, ignore_errors=True)
        shutil.rmtree(head_tmp, ignore_errors=True)
        if saved is not None:
            os.environ["RAY_ADDRESS"] = saved


@pytest.fixture(scope="module")
def marked(cluster):
    """Tasks and an actor pinned to each node print a marker; node 2's actor also prints 3000
    filler lines before its marker (a file worth truncating). Returns the markers."""
    import ray

    markers = {"head": f"MARK-head-{uuid.uuid4().hex[:8]}", "node2": f"MARK-node2-{uuid.uuid4().hex[:8]}",
               "node2_actor": f"MARK-node2-actor-{uuid.uuid4().hex[:8]}"}

    @ray.remote(num_cpus=0.5)
    def say(text: str) -> str:
        print(text, flush=True)
        return ray.get_runtime_context().get_node_id()

    @ray.remote(num_cpus=0.5)
    class Talker:
        def say(self, text: str, filler: int = 0) -> str:
            for i in range(filler):
                print(f"filler line {i:05d} " + "x" * 40)
            print(text, flush=True)
            return ray.get_runtime_context().get_node_id()

    ran = ray.get([say.options(resources={"head_slot": 0.1}).remote(markers["head"]),
                   say.options(resources={"node2": 0.1}).remote(markers["node2"])])
    assert ran == [cluster["head_id"], cluster["node2_id"]]
    actor = Talker.options(resources={"node2": 0.1}).remote()
    assert ray.get(actor.say.remote(markers["node2_actor"], filler=3000)) == cluster["node2_id"]
    time.sleep(1.0)  # stdout is flushed, but give the file system a moment on a busy machine
    yield markers
    ray.kill(actor)


def _index(logs_root: Path) -> tuple[Path, dict]:
    """The one attempt folder under `<dest>/logs/` and its index.json."""
    attempts = [p for p in logs_root.iterdir() if p.is_dir()]
    assert len(attempts) == 1, attempts
    return attempts[0], json.loads((attempts[0] / logship.INDEX_NAME).read_text())


def test_ship_logs_copies_the_jobs_worker_logs_from_every_node(cluster, marked, tmp_path, capsys):
    import ray

    run = tmp_path / "runs" / "exp"
    t0 = time.monotonic()
    summary = logship.ship_logs(str(run))
    elapsed = time.monotonic() - t0
    out = capsys.readouterr()
    assert summary.failed is None and not summary.timed_out, summary
    attempt, index = _index(run / "logs")
    job = ray.get_runtime_context().get_job_id()
    assert index["job_id"] == job and attempt.name.endswith(f"-job{job}")
    assert out.out.strip() == f"logs: copied {len(summary.files)} files ({summary.total_bytes / 1e6:.2f} MB) " \
                              f"from 2 nodes to {attempt}"
    by_node = {}
    for entry in index["files"]:
        by_node.setdefault(entry["node_id"], []).append(entry)
        copied = attempt / entry["node"] / entry["file"]
        assert copied.stat().st_size == entry["bytes"]
    assert set(by_node) == {cluster["head_id"], cluster["node2_id"]}
    folders = {entries[0]["node"] for entries in by_node.values()}
    assert "127.0.0.2" in folders and len(folders) == 2

    def texts(node_id: str, prefix: str) -> str:
        return "\n".join((attempt / e["node"] / e["file"]).read_text(errors="replace")
                         for e in by_node[node_id] if e["file"].startswith(prefix))

    # The job's worker logs, each from its own node (node 2's session dir is not the head's).
    assert marked["node2"] in texts(cluster["node2_id"], "worker-")
    assert marked["node2_actor"] in texts(cluster["node2_id"], "worker-")
    assert marked["head"] in texts(cluster["head_id"], "worker-")
    assert marked["node2"] not in texts(cluster["head_id"], "worker-")
    names = {nid: {e["file"] for e in entries} for nid, entries in by_node.items()}
    for nid in names:
        assert {"raylet.out", "raylet.err"} <= names[nid]
        assert any(n.startswith("python-core-worker-") for n in names[nid])
    assert {"gcs_server.out", "gcs_server.err"} <= names[cluster["head_id"]]
    assert not any(n.startswith("gcs_server") for n in names[cluster["node2_id"]])
    assert any(n.startswith(f"python-core-driver-{job}") for n in names[cluster["head_id"]])
    # Only this job's workers: every worker log copied from node 2 is one the node holds.
    for name in names[cluster["node2_id"]]:
        assert (cluster["node2_logs"] / name).is_file()
    print(f"shipped {len(summary.files)} files, {summary.total_bytes / 1e6:.2f} MB from 2 nodes in {elapsed:.2f} s")


def test_ship_logs_keeps_the_last_max_bytes_of_each_file(cluster, marked, tmp_path, capsys):
    run = tmp_path / "run"
    summary = logship.ship_logs(run, max_bytes_per_file=2000)
    assert summary.failed is None, summary
    attempt, index = _index(run / "logs")
    assert index["max_bytes_per_file"] == 2000
    assert all(e["bytes"] <= 2000 for e in index["files"])
    entry = next(e for e in index["files"] if e["node_id"] == cluster["node2_id"] and e["file"].startswith("worker-")
                 and marked["node2_actor"] in (attempt / e["node"] / e["file"]).read_text(errors="replace"))
    copied = (attempt / entry["node"] / entry["file"]).read_bytes()
    original = (cluster["node2_logs"] / entry["file"]).read_bytes()
    assert entry["truncated"] and len(original) > 2000 and 1000 < len(copied) <= 2000
    assert original.endswith(copied)  # the tail, byte for byte (nothing printed since)
    raylet = next(e for e in index["files"] if e["node_id"] == cluster["head_id"] and e["file"] == "raylet.out")
    assert raylet["truncated"] and raylet["bytes"] <= 2000


def test_a_failing_destination_prints_one_line_and_does_not_raise(cluster, marked, tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    summary = logship.ship_logs(str(blocker / "run"))
    out = capsys.readouterr()
    assert summary.failed and not summary.files
    assert out.out == ""
    lines = out.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"logs: not copied to {blocker / 'run'}/logs/"), out.err


def test_ship_logs_is_bounded_in_time(cluster, marked, tmp_path, capsys, monkeypatch):
    """A log agent that hangs: the copy stops at the time limit and keeps what it copied."""
    import ray.util.state

    real = ray.util.state.get_log
    calls = []

    def slow_get_log(**kwargs):
        calls.append(kwargs["filename"])
        if len(calls) > 2:
            time.sleep(30)
        yield from real(**kwargs)

    monkeypatch.setattr(ray.util.state, "get_log", slow_get_log)
    t0 = time.monotonic()
    summary = logship.ship_logs(tmp_path / "run", timeout_s=8)
    assert time.monotonic() - t0 < 12
    assert summary.timed_out and len(summary.files) == 2
    assert "stopped after" in capsys.readouterr().out


def test_modes_and_submission_id_from_the_job_supervisors_environment(monkeypatch):
    monkeypatch.delenv(logship.JOB_CONFIG_ENV, raising=False)
    assert not logship.is_submitted_job()
    assert [logship.should_ship(m) for m in ("auto", "always", "never")] == [False, True, False]
    monkeypatch.setenv(logship.JOB_CONFIG_ENV, json.dumps(
        {"runtime_env": {}, "metadata": {"job_submission_id": "raysubmit_abc", "job_name": "raysubmit_abc"}}))
    assert logship.submission_id_from_env() == "raysubmit_abc"
    assert [logship.should_ship(m) for m in ("auto", "always", "never")] == [True, True, False]
    monkeypatch.setenv(logship.JOB_CONFIG_ENV, "{not json")
    assert logship.submission_id_from_env() is None


def tiny_raw(tmp_path: Path, name: str, **train) -> dict:
    """A tiny synthetic MixSTE experiment, everything under tmp_path."""
    return {
        "name": name,
        "data": {"source": {"kind": "synthetic", "train_subjects": ["S1"], "test_subjects": ["S9"],
                            "synthetic": {"subjects": ["S1", "S9"], "out_dir": str(tmp_path / "synthetic")}},
                 "windows": {"mode": "seq2seq", "frames": 9}, "root": str(tmp_path / "datasets")},
        "model": {"name": "mixste", "dim": 16, "depth": 1, "heads": 2},
        "train": {"epochs": 1, "num_workers": 0, "storage_path": str(tmp_path / "runs"), **train},
    }


def test_tune_ships_into_the_experiment_directory_as_the_base_config_says(cluster, marked, tmp_path, capsys):
    """`raylift tune`'s `finally:` helper: the base config's train.ship_logs, into
    `<tune.storage_path>/<name>/logs/`; a config that does not parse ships nothing and raises nothing."""
    from pipelines.tune.driver import ship_experiment_logs

    ship_experiment_logs(tiny_raw(tmp_path, "base", ship_logs="never"), "exp", str(tmp_path / "tune"))
    assert not (tmp_path / "tune").exists()
    ship_experiment_logs(tiny_raw(tmp_path, "base", ship_logs="always"), "exp", str(tmp_path / "tune"))
    attempt, index = _index(tmp_path / "tune" / "exp" / "logs")
    assert {e["node_id"] for e in index["files"]} == {cluster["head_id"], cluster["node2_id"]}
    assert capsys.readouterr().out.strip().endswith(f"from 2 nodes to {attempt}")
    ship_experiment_logs({"model": {"name": "no-such-model"}}, "bad", str(tmp_path / "tune"))
    assert not (tmp_path / "tune" / "bad").exists()


def test_train_command_ships_logs_when_the_run_fails(cluster, marked, tmp_path, capsys, monkeypatch):
    """`raylift train` with train.ship_logs=always ships in its `finally:` after a failure that
    happens once Ray is up; `never` and `auto` (not a submitted job) do not."""
    from pipelines.train import driver

    monkeypatch.delenv(logship.JOB_CONFIG_ENV, raising=False)
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(tiny_raw(tmp_path, "ship_e2e")))
    run_dir = tmp_path / "runs" / "ship_e2e"

    def train(mode: str) -> None:
        args = argparse.Namespace(config=str(config), overrides=[f"train.ship_logs={mode}"],
                                  data=str(tmp_path / "no-such-dataset"))
        with pytest.raises(DataError, match="no-such-dataset"):  # raised after Ray is up
            driver.run(args)

    for mode in ("never", "auto"):
        train(mode)
        assert not (run_dir / "logs").exists()
    capsys.readouterr()
    train("always")
    attempt, index = _index(run_dir / "logs")
    assert {e["node_id"] for e in index["files"]} == {cluster["head_id"], cluster["node2_id"]}
    assert capsys.readouterr().out.strip().endswith(f"from 2 nodes to {attempt}")


def test_a_submitted_job_ships_its_driver_log_by_default(cluster, tmp_path):
    """A real submitted job (`ray job submit`'s API): `auto` ships, into a folder named by the
    submission id, the job's driver log (its stdout up to then) and its workers' logs."""
    from ray.job_submission import JobStatus, JobSubmissionClient

    dest = tmp_path / "run"
    script = tmp_path / "job.py"
    script.write_text(textwrap.dedent(f"""
        import os
        import ray
        from cluster.logship import ship_run_logs

        # The job supervisor sets RAY_ADDRESS from "auto", which here can be any Ray instance on
        # this machine (RAY_NOTES), and the state API follows RAY_ADDRESS: name this cluster.
        os.environ["RAY_ADDRESS"] = {cluster["cluster"].address!r}
        ray.init(log_to_driver=False)
        @ray.remote(resources={{"node2": 0.1}})
        def hello():
            print("JOB-WORKER-MARK", flush=True)
        ray.get(hello.remote())
        print("JOB-DRIVER-MARK", flush=True)
        ship_run_logs("auto", {str(dest)!r})
    """))
    client = JobSubmissionClient(cluster["dashboard"])
    t0 = time.monotonic()
    sid = client.submit_job(entrypoint=f"{sys.executable} {script}",
                            runtime_env={"env_vars": {"PYTHONPATH": str(REPO)}})
    while client.get_job_status(sid) not in {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED}:
        assert time.monotonic() - t0 < 120, client.get_job_logs(sid)
        time.sleep(0.5)
    logs = client.get_job_logs(sid)
    assert client.get_job_status(sid) == JobStatus.SUCCEEDED, logs
    assert "logs: copied" in logs, logs
    attempt, index = _index(dest / "logs")
    assert attempt.name == sid and index["submission_id"] == sid
    by_name = {(e["node_id"], e["file"]): attempt / e["node"] / e["file"] for e in index["files"]}
    driver_log = by_name[(cluster["head_id"], f"job-driver-{sid}.log")]
    assert "JOB-DRIVER-MARK" in driver_log.read_text()
    worker_text = "".join(p.read_text(errors="replace") for (nid, name), p in by_name.items()
                          if nid == cluster["node2_id"] and name.startswith("worker-"))
    assert "JOB-WORKER-MARK" in worker_text
    print(f"submitted job round trip {time.monotonic() - t0:.1f} s")
