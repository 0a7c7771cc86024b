"""Connecting to Ray, or starting a private local instance whose processes know its address.

Ray Train's detached `PlacementGroupCleaner` (and anything else using Ray's state API inside the
cluster) finds the cluster by auto-detection when `RAY_ADDRESS` is unset. With more than one Ray
instance on a machine it fails ("Found multiple active Ray instances"), so the placement group of
a Train run that ended ungracefully (a Tune trial stopped by ASHA) is never released and later
trials wait forever for its CPUs. A private instance is therefore started on a chosen GCS port with
`RAY_ADDRESS` set in the environment its processes inherit; the caller's own environment is
restored afterwards, so a later `ray.init` in this process is not pointed at a dead cluster.

A private instance belongs to this process and is stopped on every way out: a normal return, an
exception, `sys.exit`, SIGINT, SIGTERM and SIGHUP (the last two become `SystemExit(128 + signal)`
in the main thread, so `finally` blocks (leases, staging directories) still run). Stopping calls
`ray.shutdown()`, then waits up to `STOP_WAIT_S` for every Ray process this one started (raylet,
GCS, dashboard and runtime-env agents, workers) to end and kills, by pid, any that do not. A SIGKILL
cannot be caught: then a watchdog process (`cluster.watchdog`) kills, by pid, the Ray processes the
dead driver had started (Ray's own fate-sharing ends only the raylet and GCS; its agents outlived a
killed driver by about a minute).
"""
from __future__ import annotations

import atexit
import os
import signal
import socket
import threading
from typing import Any, Optional

STOP_WAIT_S = 10.0
_private: dict[str, Any] = {"started": False, "pid": None, "watchdog": None}


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def init_ray(address: Optional[str] = None, **kwargs: Any) -> None:
    """Connect to `address` (or `RAY_ADDRESS`), else start a private local Ray instance. Unless
    verbose, nothing Ray's workers print is forwarded to this console (`log_to_driver=False`: it
    stays in their log files; cluster/console.py), and the driver's own Ray log records reach the
    console only at CRITICAL, from before `ray.init` on (`quiet_ray_data`)."""
    import logging

    import ray
    from ray.util import get_node_ip_address

    from cluster.console import verbose

    if not verbose():
        kwargs.setdefault("logging_level", logging.WARNING)
        kwargs.setdefault("log_to_driver", False)
    quiet_ray_data()  # before ray.init, which warns on the console (token authentication, ...)

    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, **kwargs)
        quiet_ray_data()
        return
    port = _free_port()
    pinned = {"RAY_GCS_SERVER_PORT": str(port), "RAY_ADDRESS": f"{get_node_ip_address()}:{port}"}
    saved = {key: os.environ.get(key) for key in pinned}
    os.environ.update(pinned)
    try:
        ray.init(address="local", **kwargs)  # "local": never attach to another process's cluster
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    quiet_ray_data()  # ray.init re-installs its logger at INFO
    _own_private_instance()


def _ray_descendants() -> list:
    """The Ray processes this process started (its descendants that run Ray code)."""
    import psutil

    out = []
    for child in psutil.Process().children(recursive=True):
        try:
            cmd = " ".join(child.cmdline())
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
        if "ray" in cmd or child.name().startswith(("ray", "gcs_server", "raylet")):
            out.append(child)
    return out


def private_instance() -> bool:
    """Whether the Ray this process uses is the private local instance it started: its resources
    are all there will be (no autoscaler adds a node)."""
    import ray

    return bool(_private["started"]) and _private["pid"] == os.getpid() and ray.is_initialized()


def stop_private_ray() -> None:
    """Stop the private instance this process started (no-op otherwise) and leave no Ray process
    behind: `ray.shutdown()`, then kill by pid what is still alive after `STOP_WAIT_S`."""
    import psutil
    import ray

    if not _private["started"] or _private["pid"] != os.getpid():
        return
    _private["started"] = False
    children = [p for p in _ray_descendants() if p.pid != _private["watchdog"].pid]
    try:
        ray.shutdown()
    finally:
        _, alive = psutil.wait_procs(children, timeout=STOP_WAIT_S)
        for proc in alive:
            try:
                proc.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(alive, timeout=5)
        _private["watchdog"].kill()  # nothing left for it to do
        _private["watchdog"].wait(timeout=5)


def _exit_on_signal(signum: int, frame: Any) -> None:
    signal.signal(signum, _stop_and_die)  # a second signal while unwinding: stop Ray and go
    raise SystemExit(128 + signum)


def _stop_and_die(signum: int, frame: Any) -> None:
    stop_private_ray()
    os._exit(128 + signum)


def _own_private_instance() -> None:
    """Register the private instance's stop on exit and on SIGTERM/SIGHUP (SIGINT already raises
    KeyboardInterrupt). Handlers can only be set from the main thread; elsewhere atexit remains."""
    if _private["started"]:
        return
    from cluster import watchdog

    _private.update(started=True, pid=os.getpid(), watchdog=watchdog.start(os.getpid()))
    atexit.register(stop_private_ray)
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGHUP):
            if signal.getsignal(sig) in (signal.SIG_DFL, None):
                signal.signal(sig, _exit_on_signal)


def quiet_ray_data() -> None:
    """Keep Ray's own lines off the default console (raylift prints its own progress); see
    `cluster.console`. `init_ray` calls it before and after `ray.init`; call it also where this
    process uses a Ray it did not start, or runs Ray Data before starting one."""
    from cluster.console import quiet_ray

    quiet_ray()
