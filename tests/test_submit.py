"""`raylift submit`, `raylift jobs` and `raylift cluster local` against real local Ray clusters.

The slow tests start a 2-node cluster with the real CLI (`raylift cluster local up`: a head with
dashboard on 127.0.0.1 and a worker on 127.0.0.2, ports chosen free), submit real raylift
commands as Ray jobs through the dashboard's job server, and stop the cluster by its recorded
process groups. Every raylift call is a subprocess of the real CLI, exactly as a user runs it.
"""
from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from cluster.local import group_members
from cluster.submit import WORKING_DIR_EXCLUDES, build_runtime_env, is_loopback, project_requirements, resolve_address

REPO = Path(__file__).resolve().parents[1]


def raylift(*argv: str, cwd: Path, timeout: float = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    return subprocess.run(
        [sys.executable, "-m", "pipelines.cli", *argv], cwd=cwd, capture_output=True, text=True,
        timeout=timeout, env={**base, **(env or {})},
    )


def unused_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -------------------------------------------------------------------------------------------
# Without a cluster


def test_address_resolution_and_loopback(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert resolve_address(None) == "http://127.0.0.1:8265"
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.5:8265")
    assert resolve_address(None) == "http://10.0.0.5:8265"
    assert resolve_address("https://ray.example.com/") == "https://ray.example.com"
    assert is_loopback("http://127.0.0.1:8265") and is_loopback("http://localhost:1")
    assert not is_loopback("http://10.0.0.5:8265") and not is_loopback("https://ray.example.com")
    with pytest.raises(ValueError, match="dashboard URL"):
        resolve_address("ray://10.0.0.5:10001")


def test_runtime_env_excludes_data_and_passes_named_variables_only():
    env = build_runtime_env(REPO, pip=True, env_names=["A_KEY"], environ={"A_KEY": "s3cr3t", "OTHER": "x"})
    assert env["working_dir"] == str(REPO)
    for pattern in ("/data/", "/runs/", ".venv/", ".git/", "__pycache__/", "*.egg-info/"):
        assert pattern in env["excludes"]
    assert env["env_vars"] == {"A_KEY": "s3cr3t"}
    names = [re.split(r"[\[<>=!~; ]", r, maxsplit=1)[0] for r in env["pip"]]
    assert "torch" in names and "ray" not in names
    assert env["pip"] == project_requirements(REPO)
    assert "pip" not in build_runtime_env(REPO, pip=False, env_names=[])
    assert WORKING_DIR_EXCLUDES == env["excludes"]


def test_submit_to_an_address_with_nothing_listening_fails_fast(tmp_path):
    """The address is probed with a bounded TCP connect before Ray's client (which has no connect
    timeout) is made, so a silent address fails in one line instead of hanging."""
    import inspect

    from cluster.submit import connect

    out = raylift("submit", "--address", f"http://127.0.0.1:{unused_port()}", "--",
                  "train", "--config", "missing.yaml", cwd=tmp_path)
    assert out.returncode == 2, out.stderr
    assert "no Ray dashboard reachable at http://127.0.0.1:" in out.stderr
    assert "Traceback" not in out.stderr
    assert 0 < inspect.signature(connect).parameters["timeout"].default <= 10


def test_submit_refuses_bad_commands_before_connecting(tmp_path):
    address = ["--address", f"http://127.0.0.1:{unused_port()}"]
    cases = [
        ([*address, "--", "trian", "--config", "x.yaml"], "unknown raylift command 'trian'"),
        ([*address, "--", "cluster", "local", "up"], "cannot be a job"),
        ([*address, "--env", "RAYLIFT_SURELY_UNSET_VAR", "--", "train", "--config", "x.yaml"],
         "--env RAYLIFT_SURELY_UNSET_VAR: not set"),
        ([*address], "no command given"),
    ]
    for argv, message in cases:
        out = raylift("submit", *argv, cwd=tmp_path)
        assert out.returncode == 2 and message in out.stderr, (argv, out.stderr)
    # Arguments the command itself rejects are caught by its real parser, locally.
    out = raylift("submit", *address, "--", "train", "--config", "x.yaml", "--no-such-flag", cwd=tmp_path)
    assert out.returncode == 2 and "unrecognized arguments: --no-such-flag" in out.stderr


@pytest.mark.slow
def test_cluster_local_down_leaves_no_process_it_started(tmp_path):
    up = raylift("cluster", "local", "up", "--nodes", "2", "--dir", str(tmp_path), cwd=tmp_path, timeout=180)
    assert up.returncode == 0, up.stdout + up.stderr
    state = json.loads((tmp_path / "cluster.json").read_text())
    assert [n["ip"] for n in state["nodes"]] == ["127.0.0.1", "127.0.0.2"]
    pgids = [n["pgid"] for n in state["nodes"]]
    assert all(group_members(g) for g in pgids)
    status = raylift("cluster", "local", "status", "--dir", str(tmp_path), cwd=tmp_path)
    assert status.returncode == 0 and status.stdout.count("alive") == 2
    again = raylift("cluster", "local", "up", "--dir", str(tmp_path), cwd=tmp_path)
    assert again.returncode == 2 and "still running" in again.stderr

    down = raylift("cluster", "local", "down", "--dir", str(tmp_path), cwd=tmp_path, timeout=120)
    assert down.returncode == 0, down.stderr
    assert not any(group_members(g) for g in pgids)
    assert not (tmp_path / "cluster.json").exists()
    gone = raylift("cluster", "local", "status", "--dir", str(tmp_path), cwd=tmp_path)
    assert gone.returncode == 2 and "no local cluster recorded" in gone.stderr


# -------------------------------------------------------------------------------------------
# Against a real 2-node local cluster


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    state_dir = tmp_path_factory.mktemp("cluster")
    up = raylift("cluster", "local", "up", "--nodes", "2", "--cpus-per-node", "2", "--dir", str(state_dir),
                 cwd=state_dir, timeout=180)
    assert up.returncode == 0, up.stdout + up.stderr
    state = json.loads((state_dir / "cluster.json").read_text())
    assert state["dashboard"] in up.stdout
    yield state
    down = raylift("cluster", "local", "down", "--dir", str(state_dir), cwd=state_dir, timeout=120)
    assert down.returncode == 0, down.stderr
    assert not any(group_members(n["pgid"]) for n in state["nodes"])


def tiny_config(tmp_path: Path) -> Path:
    """A synthetic dataset and a one-epoch, 2-worker MixSTE run, all written under tmp_path."""
    cfg = {
        "name": "submit_e2e",
        "data": {
            "source": {
                "kind": "synthetic", "train_subjects": ["S1"], "test_subjects": ["S9"],
                "synthetic": {"subjects": ["S1", "S9"], "actions_per_subject": 1, "frames_per_action": 60,
                              "out_dir": str(tmp_path / "synthetic")},
            },
            "windows": {"mode": "seq2seq", "frames": 9},
            "root": str(tmp_path / "datasets"),
        },
        "model": {"name": "mixste", "dim": 16, "depth": 1, "heads": 2},
        "train": {"epochs": 1, "batch_size": 8, "lr": 1e-3, "num_workers": 2,
                  "storage_path": str(tmp_path / "runs")},
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def submission_seconds(stdout: str) -> float:
    match = re.search(r"submitted job (\S+) to \S+ in ([0-9.]+) s", stdout)
    assert match, stdout
    return float(match.group(2))


@pytest.mark.slow
def test_submitted_preprocess_and_train_succeed_and_write_outputs(cluster, tmp_path):
    config = tiny_config(tmp_path)
    secret = "not-for-the-logs-4c1d"
    env = {"RAYLIFT_TEST_TOKEN": secret}
    pre = raylift("submit", "--address", cluster["dashboard"], "--env", "RAYLIFT_TEST_TOKEN", "--",
                  "preprocess", "--config", str(config), cwd=tmp_path, env=env)
    assert pre.returncode == 0, pre.stdout + pre.stderr
    assert "SUCCEEDED" in pre.stdout and "env vars:  RAYLIFT_TEST_TOKEN" in pre.stdout
    assert secret not in pre.stdout + pre.stderr
    manifests = list((tmp_path / "datasets").glob("*/manifest.json"))
    assert len(manifests) == 1
    assert list(manifests[0].parent.glob("train/part-*.parquet"))
    print(f"preprocess submission: {submission_seconds(pre.stdout):.2f} s")

    train = raylift("submit", "--address", cluster["dashboard"], "--",
                    "train", "--config", str(config), cwd=tmp_path, timeout=600)
    assert train.returncode == 0, train.stdout + train.stderr
    run_dir = tmp_path / "runs" / "submit_e2e"
    assert (run_dir / "metrics.csv").is_file()
    assert (run_dir / "eval" / "results.json").is_file()
    print(f"train submission: {submission_seconds(train.stdout):.2f} s")


@pytest.mark.slow
def test_failing_job_exits_nonzero_with_its_error_and_jobs_lists_it(cluster, tmp_path):
    t0 = time.monotonic()
    out = raylift("submit", "--address", cluster["dashboard"], "--",
                  "train", "--config", "missing.yaml", cwd=tmp_path)
    elapsed = time.monotonic() - t0
    assert out.returncode == 1, out.stdout + out.stderr
    assert "config file not found: missing.yaml" in out.stdout  # the job's own error, streamed
    job_id = re.search(r"submitted job (\S+)", out.stdout).group(1)
    assert f"job {job_id} FAILED" in out.stderr
    print(f"failing job: submission {submission_seconds(out.stdout):.2f} s, round trip {elapsed:.1f} s")

    listed = raylift("jobs", "ls", "--address", cluster["dashboard"], cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    line = next(l for l in listed.stdout.splitlines() if l.startswith(job_id))
    assert "FAILED" in line and "raylift train --config missing.yaml" in line

    logs = raylift("jobs", "logs", job_id, "--address", cluster["dashboard"], cwd=tmp_path)
    assert logs.returncode == 0 and "config file not found" in logs.stdout
    followed = raylift("jobs", "logs", job_id, "--follow", "--address", cluster["dashboard"], cwd=tmp_path)
    assert followed.returncode == 1 and f"job {job_id} FAILED" in followed.stderr

    # --no-wait returns at once; `jobs stop` stops the job; following it then reports STOPPED.
    started = raylift("submit", "--no-wait", "--address", cluster["dashboard"], "--",
                      "train", "--config", "missing.yaml", cwd=tmp_path)
    assert started.returncode == 0, started.stderr
    second = re.search(r"submitted job (\S+)", started.stdout).group(1)
    stop = raylift("jobs", "stop", second, "--address", cluster["dashboard"], cwd=tmp_path)
    assert stop.returncode == 0 and second in stop.stdout
    missing = raylift("jobs", "logs", "raylift-no-such-job", "--address", cluster["dashboard"], cwd=tmp_path)
    assert missing.returncode == 2 and "not found" in missing.stderr
