"""A private Ray instance started by raylift (`cluster.session.init_ray`) is stopped on signals:
no raylet, GCS, dashboard agent or runtime-env agent outlives the signalled driver by more than a
few seconds. Before the fix a SIGKILLed driver left the agents running for about a minute."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import psutil
import pytest


REPO = Path(__file__).resolve().parents[1]
SCRIPT = textwrap.dedent("""
    import json, sys, time
    sys.path.insert(0, {repo!r})
    import psutil
    from cluster.session import init_ray
    init_ray(num_cpus=1, include_dashboard=False, log_to_driver=False)
    deadline = time.monotonic() + 60
    names = set()
    while time.monotonic() < deadline and not {{"raylet", "agent"}} <= names:  # agents start after the raylet
        procs = psutil.Process().children(recursive=True)
        names = {{"raylet" if "raylet" in " ".join(p.cmdline()) else "agent" if "agent" in " ".join(p.cmdline()) else "other"
                 for p in procs}}
        time.sleep(0.5)
    print(json.dumps([p.pid for p in psutil.Process().children(recursive=True)]), flush=True)
    time.sleep(600)
""")


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM, signal.SIGHUP, signal.SIGINT],
                         ids=["KILL", "TERM", "HUP", "INT"])
def test_signalled_driver_leaves_no_ray_processes(tmp_path, sig):
    script = tmp_path / "driver.py"
    script.write_text(SCRIPT.format(repo=str(REPO)))
    env = {**os.environ, "RAY_ADDRESS": ""}
    log = tmp_path / "driver.err"
    with open(log, "w") as err:
        # The driver starts with the signal at its default action, whatever this runner inherited:
        # under `nohup` SIGHUP arrives ignored, and init_ray rightly leaves an ignored signal alone.
        proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=err,
                                text=True, env=env, start_new_session=True,
                                preexec_fn=lambda: signal.signal(sig, signal.SIG_DFL) if sig != signal.SIGKILL else None)
    try:
        first = proc.stdout.readline()
        assert first.startswith("["), f"the driver did not start Ray: {log.read_text()[-2000:]}"
        pids = json.loads(first)
        ray_procs = [p for p in map(psutil.Process, pids) if "cluster.watchdog" not in " ".join(p.cmdline())]
        cmdlines = " ".join(" ".join(p.cmdline()) for p in ray_procs)
        assert "raylet" in cmdlines and "agent" in cmdlines, cmdlines
        proc.send_signal(sig)
        assert proc.wait(timeout=60) != 0
        _, alive = psutil.wait_procs(ray_procs, timeout=5)  # stopped with the driver, not ~a minute later
        assert not alive, [" ".join(p.cmdline())[:120] for p in alive]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        for pid in pids if "pids" in locals() else []:
            try:
                psutil.Process(pid).kill()  # only the processes this test's driver started
            except psutil.NoSuchProcess:
                pass
