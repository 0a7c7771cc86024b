"""A watchdog that stops a private Ray instance whose driver died without cleaning up (SIGKILL).

`start(driver_pid)` launches `python -m cluster.watchdog PID` as a separate process. Every
`POLL_S` it records the driver's descendants (raylet, GCS, agents, workers) with their start
times; once the driver is gone it kills, by pid, every recorded process still alive with the same
start time (so a reused pid is never touched), then exits. Ray's own fate-sharing ends the raylet
and GCS with the driver, but its dashboard and runtime-env agents outlived a killed driver by about
a minute without this.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time

POLL_S = 0.5


def start(driver_pid: int) -> subprocess.Popen:
    """Launch the watchdog for `driver_pid` (detached from the driver's signals and terminal)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
    return subprocess.Popen([sys.executable, "-m", "cluster.watchdog", str(driver_pid)], env=env,
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)


def watch(driver_pid: int) -> None:
    import psutil

    try:
        driver = psutil.Process(driver_pid)
    except psutil.NoSuchProcess:
        return
    seen: dict[int, float] = {}  # pid -> start time of every descendant ever seen
    me = os.getpid()
    while driver.is_running() and driver.status() != psutil.STATUS_ZOMBIE:
        try:
            for child in driver.children(recursive=True):
                if child.pid != me:
                    seen.setdefault(child.pid, child.create_time())
        except psutil.NoSuchProcess:
            break
        time.sleep(POLL_S)
    leftovers = []
    for pid, started in seen.items():
        try:
            proc = psutil.Process(pid)
            if proc.create_time() == started:
                proc.kill()
                leftovers.append(proc)
        except psutil.NoSuchProcess:
            continue
    psutil.wait_procs(leftovers, timeout=5)


if __name__ == "__main__":
    watch(int(sys.argv[1]))
