"""Exclusive publishing: leases on local disk and S3, staging ownership, two concurrent preprocess runs."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import time
from dataclasses import replace
from pathlib import Path

import pytest

from preprocessing.store import lease
from preprocessing.errors import DataError
from preprocessing.store.manifest import verify_dataset
from preprocessing.store.writer import OWNER_NAME, clean_leftovers
from preprocessing.store.storage import open_location

REPO = Path(__file__).resolve().parents[1]


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _write_record(path: Path, owner: lease.Owner) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(owner.to_json())


def _check_lease_rules(lock) -> None:
    """The same rules for every backend: exclusive, live holders refused, gone ones taken over."""
    first = lease.acquire(lock, "first", ttl_s=30)
    with pytest.raises(lease.LeaseHeld, match=rf"{lock.uri} is held by first \(host {socket.gethostname()}, pid {os.getpid()}"):
        lease.acquire(lock, "second", ttl_s=30)
    first.renew()
    first.check()
    first.release()
    second = lease.acquire(lock, "second", ttl_s=30)  # released: free again
    # Another host's fresh record is refused at once (it cannot be proven dead)...
    foreign = replace(second.owner, host="elsewhere", pid=1, run="foreign", ttl=1.0)
    assert lease._swap(lock, lease.read_record(lock).token, foreign.to_json())
    with pytest.raises(lease.LeaseHeld, match="host elsewhere"):
        lease.acquire(lock, "third", ttl_s=30)
    with pytest.raises(lease.LeaseHeld, match="lost the lease"):
        second.check()  # verify-after-write: the former holder notices before publishing
    second.release()  # never deletes another owner's record
    assert lease.read_record(lock).owner.run == "foreign"
    # ...and taken over once this process has watched it go unrenewed for its TTL (1 s here).
    third = lease.acquire(lock, "third", ttl_s=30, wait_s=10)
    assert lease.read_record(lock).owner.run == third.owner.run
    third.release()
    assert not lease.read_record(lock).exists


def test_local_lease_rules(tmp_path):
    _check_lease_rules(open_location(str(tmp_path / "root")).child(".lock-x"))


def test_local_lease_of_a_dead_pid_is_taken_over(tmp_path):
    lock = open_location(str(tmp_path)).child(".lock-x")
    dead = replace(lease.new_owner("killed run", 3600), pid=_dead_pid(), run="dead")
    _write_record(Path(lock.path), dead)
    assert lease.owner_gone(dead)
    with lease.acquire(lock, "next run") as held:
        assert lease.read_record(lock).owner.run == held.owner.run
    # A live pid on this host is not gone, whatever its record's times say.
    assert not lease.owner_gone(replace(dead, pid=os.getpid(), started=lease.process_start_time(os.getpid()),
                                        expires=time.time() - 3600))


def test_s3_lease_rules_use_conditional_writes(s3_server, monkeypatch):
    """SeaweedFS honours If-None-Match: * and If-Match (412 otherwise), so the S3 lease is exclusive."""
    for key, value in s3_server.env().items():
        monkeypatch.setenv(key, value)
    _check_lease_rules(open_location(f"s3://{s3_server.bucket}/leases/{os.getpid()}").child(".lock-x"))


def test_gcs_lease_rules_use_generation_preconditions(gcs_server, monkeypatch):
    """The GCS emulator honours ifGenerationMatch (0: create only; N: replace only generation N),
    so the gs:// lease is exclusive."""
    for key, value in gcs_server.env().items():
        monkeypatch.setenv(key, value)
    _check_lease_rules(open_location(f"gs://{gcs_server.bucket}/leases/{os.getpid()}").child(".lock-x"))


def test_a_lease_on_a_store_without_conditional_writes_is_refused():
    lock = open_location("memory://raylift-lease/root").child(".lock-x")
    with pytest.raises(DataError, match=r"memory://raylift-lease/root/.lock-x.*s3:// or gs://"):
        lease.acquire(lock, "a run")


def test_staging_leftovers_are_removed_unless_their_owner_runs_on_this_host(tmp_path):
    """Cleanup runs under the id's lease, so other staging directories belong to runs that lost or
    released it; only one whose process still runs here is kept. A foreign owner's record times are
    never compared with this host's clock."""
    root = open_location(str(tmp_path))
    live = lease.new_owner("live run", 3600)
    records = {
        "live": live,
        "dead-pid": replace(live, pid=_dead_pid(), run="b"),
        "foreign-past": replace(live, run="c", host="elsewhere", expires=time.time() - 5),
        "foreign-future": replace(live, run="d", host="elsewhere", expires=time.time() + 3600),
    }
    for name, owner in records.items():
        _write_record(tmp_path / f".staging-abc-{name}" / OWNER_NAME, owner)
    (tmp_path / ".staging-abc-norecord").mkdir()
    messages: list[str] = []
    clean_leftovers(root, root.child("abc"), "abc", messages.append)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".staging-abc-live"]
    assert any("keeping" in m and "pid" in m for m in messages)


SKEWED_HOLDER = textwrap.dedent("""
    import socket, sys, time
    sys.path.insert(0, {repo!r})
    real_time = time.time
    time.time = lambda: real_time() + {skew!r}  # this host's clock is {skew!r} s off
    socket.gethostname = lambda: "skewed-host"
    from preprocessing.store import lease
    from preprocessing.store.storage import open_location
    held = lease.acquire(open_location({uri!r}), "skewed holder", ttl_s={ttl!r})
    print("held", flush=True)
    time.sleep(3600)
""")

SKEW_TTL_S = 2.0  # the holder renews every 0.67 s: a pause of 2 s on a loaded machine would be needed to lose it


@pytest.mark.parametrize("skew", [-300.0, 300.0], ids=["holder-behind-5min", "holder-ahead-5min"])
@pytest.mark.parametrize("backend", ["local", "s3", "gcs"])
def test_a_skewed_holder_keeps_its_lease_while_alive_and_loses_it_once_killed(backend, skew, tmp_path, request,
                                                                                monkeypatch):
    """Issue 24 defect 1: a holder on another host whose clock ran 65 s behind had its live lease
    taken over (expiry was judged by the holder's wall clock against the contender's). Now a live
    holder keeps it whatever its clock (the contender waits out several TTLs and is refused), and a
    killed one is taken over by watching its record go unrenewed, on every backend."""
    if backend == "local":
        uri = str(tmp_path / "root")
    else:
        server = request.getfixturevalue(f"{backend}_server")
        for key, value in server.env().items():
            monkeypatch.setenv(key, value)
        scheme = "s3" if backend == "s3" else "gs"
        uri = f"{scheme}://{server.bucket}/skew/{os.getpid()}-{int(skew)}"
    lock = open_location(uri).child(".lock-x")
    script = tmp_path / "holder.py"
    script.write_text(SKEWED_HOLDER.format(repo=str(REPO), skew=skew, uri=lock.uri, ttl=SKEW_TTL_S))
    holder = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(lease.LeaseHeld, match="held by skewed holder \\(host skewed-host"):
            lease.acquire(lock, "contender", ttl_s=SKEW_TTL_S, wait_s=2.5 * SKEW_TTL_S)
        assert lease.read_record(lock).owner.host == "skewed-host"
    finally:
        holder.kill()
        holder.wait()
    messages: list[str] = []
    with lease.acquire(lock, "contender", ttl_s=SKEW_TTL_S, wait_s=30, on_wait=messages.append) as taken:
        assert lease.read_record(lock).owner.run == taken.owner.run
    assert messages and "skewed-host" in messages[0]


RUN_SCRIPT = textwrap.dedent("""
    import sys
    sys.path.insert(0, {repo!r})
    from preprocessing.config import DataConfig, WindowConfig
    from preprocessing.errors import DataError
    from preprocessing.keypoints.dataset import build_dataset
    from preprocessing.store.writer import hash_files
    from preprocessing.skeleton import H36M17
    from tests.helpers import make_sequence
    seqs = [make_sequence(3000, subject=f"S{{i}}", seed=i) for i in range(1, 9)]
    data = DataConfig(windows=WindowConfig(frames=81), root={root!r}, rows_per_shard=8, rows_per_group=4,
                      lease_wait_s=600)
    try:
        info = build_dataset(data, seqs, H36M17, hash_files([{src!r}]), progress=lambda m: print(m, flush=True))
    except DataError as e:
        print(f"error: {{e}}", flush=True)
        sys.exit(2)
    print("cached" if info.cached else "built", info.id, flush=True)
""")


@pytest.mark.slow
def test_two_concurrent_preprocess_runs_publish_one_complete_dataset(tmp_path):
    """Defect 1: the second run starts while the first writes shards; it once deleted the first's
    staging directory and the first published a manifest listing missing shards. Then it was refused
    (issue 23: a train or tune started while a preprocess of the same id runs exited 2); now it
    waits for the lease and finds the published dataset."""
    root = tmp_path / "ds"
    src = tmp_path / "source.bin"
    src.write_bytes(b"source bytes")
    script = tmp_path / "run.py"
    script.write_text(RUN_SCRIPT.format(repo=str(REPO), root=str(root), src=str(src)))
    env = {**os.environ, "RAY_ADDRESS": ""}
    first = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                             text=True, cwd=tmp_path, env=env)
    out_first = []
    for line in first.stdout:
        out_first.append(line)
        if "wrote" in line:
            break
    assert any("wrote" in l for l in out_first), "the first run never started writing shards"
    second = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, cwd=tmp_path, env=env,
                            timeout=300)
    out_first += first.stdout.readlines()
    assert first.wait(timeout=300) == 0, "".join(out_first)
    assert any(l.startswith("built ") for l in out_first)
    # The second run waits for the first (saying whom it waits for), then uses its dataset.
    assert second.returncode == 0, second.stdout
    assert "is held by raylift preprocess of dataset" in second.stdout and f"pid {first.pid}" in second.stdout
    assert "waiting up to 600 s (data.lease_wait_s)" in second.stdout
    assert second.stdout.strip().splitlines()[-1].startswith("cached "), second.stdout
    (dataset,) = [p for p in root.iterdir() if not p.name.startswith(".")]
    manifest = json.loads((dataset / "manifest.json").read_text())
    assert all((dataset / s["path"]).is_file() for s in manifest["shards"])
    assert verify_dataset(open_location(str(dataset))).ok
    assert sorted(p.name for p in root.iterdir()) == [dataset.name]  # no staging, no lock left


def test_an_image_dataset_build_takes_the_lease_and_keeps_a_live_runs_staging(tmp_path):
    """Image datasets publish under the same lease and owner records as keypoint ones: a run that
    finds the id's lease held by a live run is refused before doing any work, and leaves that run's
    staging directory alone (it used to take no lease, and its `_STAGING` marker was no owner
    record, so each run's cleanup could delete the other's staging)."""
    from preprocessing.images.dataset import build_image_dataset, image_dataset_id
    from preprocessing.images.sources import load_image_sequences
    from preprocessing.store.writer import LOCK_PREFIX, hash_files
    from tests.helpers import synthetic_data

    data = synthetic_data(tmp_path)
    src = load_image_sequences(data)
    id_ = image_dataset_id(data, [f["sha256"] for f in hash_files(src.files)])
    root = open_location(data.root)
    other = lease.new_owner(f"raylift preprocess of dataset {id_}", 3600, run="other")
    staging = Path(data.root) / f".staging-{id_}-other000"
    _write_record(staging / OWNER_NAME, other)
    data.lease_wait_s = 0
    with lease.acquire(root.child(f"{LOCK_PREFIX}{id_}"), f"raylift preprocess of dataset {id_}"):
        with pytest.raises(lease.LeaseHeld, match=rf"\.lock-{id_} is held by raylift preprocess.*data.lease_wait_s=0"):
            build_image_dataset(data, progress=lambda m: None)
    assert (staging / OWNER_NAME).read_bytes() == other.to_json()
    assert sorted(p.name for p in Path(data.root).iterdir()) == [staging.name]  # nothing else written


def test_a_build_waits_for_the_lease_with_a_message_then_builds_or_times_out(tmp_path):
    """Issue 23 defect 5: a train or tune started while a preprocess of the same dataset id holds
    its lease waits for it (bounded by data.lease_wait_s, saying so) instead of exiting 2."""
    import threading

    from preprocessing.images.dataset import build_image_dataset, image_dataset_id
    from preprocessing.images.sources import load_image_sequences
    from preprocessing.store.writer import LOCK_PREFIX, hash_files
    from tests.helpers import synthetic_data

    data = synthetic_data(tmp_path)
    src = load_image_sequences(data)
    id_ = image_dataset_id(data, [f["sha256"] for f in hash_files(src.files)])
    lock = open_location(data.root).child(f"{LOCK_PREFIX}{id_}")
    data.lease_wait_s = 1.5
    with lease.acquire(lock, f"raylift preprocess of dataset {id_}"):
        messages: list[str] = []
        t0 = time.monotonic()
        with pytest.raises(lease.LeaseHeld, match=r"still held after waiting 1\.5 s \(data\.lease_wait_s\)"):
            build_image_dataset(data, progress=messages.append)
        assert time.monotonic() - t0 >= 1.5
        assert any("waiting up to 1.5 s (data.lease_wait_s)" in m and f"pid {os.getpid()}" in m for m in messages)
    data.lease_wait_s = 120
    held = lease.acquire(lock, f"raylift preprocess of dataset {id_}")
    messages = []
    threading.Timer(2.0, held.release).start()
    info = build_image_dataset(data, progress=messages.append)
    assert any("waiting up to 120 s" in m for m in messages) and not info.cached
    assert (Path(data.root) / id_ / "manifest.json").is_file()


def test_a_lease_in_a_directory_that_cannot_be_written_is_one_data_error(tmp_path):
    """Issue 24 defect 4: a read-only `train.storage_path` ended in a 24-line OSError traceback
    raised while taking the run lock. Root may write anywhere, so the unwritable directory here is
    one under a regular file (the same OSError path as a read-only one)."""
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file")
    lock = open_location(str(blocker / "run")).child(".lock")
    with pytest.raises(DataError, match=rf"cannot take the lease {blocker}/run/\.lock: .*must be a writable directory"):
        lease.acquire(lock, "raylift train of run x")
    assert sorted(p.name for p in tmp_path.iterdir()) == [blocker.name]
