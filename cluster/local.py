"""`raylift cluster local up|down|status`: a real multi-node Ray cluster on this machine.

One head (GCS + dashboard + job server) and N-1 worker nodes, each a separate `ray start --block`
process with its own node IP (127.0.0.1 for the head, 127.0.0.2, 127.0.0.3, ... for the workers:
Ray Train ranks nodes by IP, so distinct addresses make it a genuine multi-node cluster) and its
own CPU count. Every port is picked free at start-up, so the cluster never collides with other
Ray instances on the machine (`ray start`'s defaults 6379/8265/10001/52365 would).

Each node runs in its own process group (its raylet, GCS, dashboard and worker processes inherit
it). The pids and group ids go to `<dir>/cluster.json`; `down` signals exactly those groups and
nothing else, never `ray stop` (which kills every Ray process on the machine). All processes get
the same explicit `RAY_AUTH_MODE` (default `disabled`, or the caller's value), because a head and
a worker that disagree on token authentication cannot talk to each other.

The cluster is isolated from other Ray instances on the machine: each node has its own temp
(session) directory under one `raylift-cluster-*` folder in the system temp dir (`down` removes
it), and every process it starts, job drivers included, gets this cluster's GCS address as
`RAY_ADDRESS`.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from preprocessing.schema import ConfigError

STATE_FILE = "cluster.json"
DEFAULT_DIR = ".raylift"


class LocalClusterError(ConfigError):
    """The local cluster could not be started, found or stopped; the message says why."""


def add_arguments(parser) -> None:
    where = parser.add_subparsers(dest="where", metavar="WHERE", required=True)
    local = where.add_parser("local", help="a multi-node Ray cluster on 127.0.0.x (this machine)")
    actions = local.add_subparsers(dest="action", metavar="ACTION", required=True)

    up = actions.add_parser("up", help="start a head and N-1 worker nodes")
    up.add_argument("--nodes", type=int, default=2, help="number of nodes, head included (default 2)")
    up.add_argument("--cpus-per-node", type=int, default=1, help="CPUs each node offers (default 1)")
    up.add_argument("--gpus-per-node", type=int, default=0, help="GPUs each node offers (default 0)")
    up.add_argument("--dir", default=DEFAULT_DIR, help=f"state and log directory (default {DEFAULT_DIR})")
    up.add_argument("--timeout", type=float, default=90.0, help="seconds to wait for all nodes")

    down = actions.add_parser("down", help="stop the processes `up` started (and only those)")
    down.add_argument("--dir", default=DEFAULT_DIR, help=f"state directory (default {DEFAULT_DIR})")

    status = actions.add_parser("status", help="address, dashboard and node liveness")
    status.add_argument("--dir", default=DEFAULT_DIR, help=f"state directory (default {DEFAULT_DIR})")


def run(args) -> int:
    if args.action == "up":
        state = start_cluster(
            nodes=args.nodes, cpus_per_node=args.cpus_per_node, gpus_per_node=args.gpus_per_node,
            state_dir=Path(args.dir), timeout=args.timeout,
        )
        print(f"Ray cluster up: {len(state['nodes'])} node(s)")
        print(f"  address:   {state['address']}")
        print(f"  dashboard: {state['dashboard']}")
        print(f"  submit:    RAY_ADDRESS={state['dashboard']} raylift submit -- <command>")
        print(f"  stop:      raylift cluster local down --dir {args.dir}")
        return 0
    if args.action == "down":
        stopped = stop_cluster(Path(args.dir))
        print(f"stopped {stopped} node process group(s)")
        return 0
    state = read_state(Path(args.dir))
    print(f"address:   {state['address']}")
    print(f"dashboard: {state['dashboard']}")
    for node in state["nodes"]:
        alive = "alive" if group_alive(node["pgid"]) else "dead"
        print(f"  {node['role']:6s} {node['ip']:12s} pid {node['pid']:>7d}  {alive}  log {node['log']}")
        print(f"         session logs {node['temp_dir']}/session_latest/logs")
    return 0


# ---------------------------------------------------------------------------------------------
# Processes


def free_port() -> int:
    """A TCP port nothing listens on right now (the kernel's choice)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def group_members(pgid: int) -> list[int]:
    """Pids of live (non-zombie) processes in process group `pgid`, read from /proc."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # Fields after the parenthesised command name: state ppid pgrp ...
        fields = stat[stat.rfind(")") + 2:].split()
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(entry.name))
    return members


def group_alive(pgid: int) -> bool:
    return bool(group_members(pgid))


def _node_env(auth_mode: str, address: str) -> dict[str, str]:
    env = dict(os.environ)
    env["RAY_AUTH_MODE"] = auth_mode
    # This cluster's GCS, explicitly, for every process the nodes start (job drivers included:
    # Ray's job supervisor resolves RAY_ADDRESS=auto in the head's own temp dir, never another
    # instance's), instead of whatever RAY_ADDRESS the caller's shell had.
    env["RAY_ADDRESS"] = address
    # Job entrypoints run `python ...` from the raylet's PATH: make it this interpreter's.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    return env


def _spawn(cmd: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen:
    with open(log, "wb") as out:
        return subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
            start_new_session=True,  # its own process group: `down` signals exactly this node
        )


def _node_ports() -> list[str]:
    return [
        "--node-manager-port", str(free_port()),
        "--object-manager-port", str(free_port()),
        "--dashboard-agent-listen-port", str(free_port()),
        "--dashboard-agent-grpc-port", str(free_port()),
        "--runtime-env-agent-port", str(free_port()),
        "--metrics-export-port", str(free_port()),
    ]


def _alive_nodes(dashboard: str) -> int:
    """Number of ALIVE nodes the head reports through Ray's public state API (0 while it is not
    answering). The state client adds the auth token itself under RAY_AUTH_MODE=token."""
    from ray.util.state import list_nodes
    from ray.util.state.exception import RayStateApiException

    try:
        nodes = list_nodes(address=dashboard, filters=[("state", "=", "ALIVE")], timeout=3,
                           raise_on_missing_output=False)
    except (RayStateApiException, ConnectionError, OSError, ValueError):
        return 0
    return len(nodes)


def start_cluster(
    nodes: int, cpus_per_node: int, state_dir: Path, gpus_per_node: int = 0, timeout: float = 90.0
) -> dict:
    """Start the head and workers, wait until the dashboard sees every node, write the state file.

    On any failure the processes started so far are stopped again, so nothing is left behind.
    """
    if nodes < 1:
        raise LocalClusterError(f"--nodes must be >= 1, got {nodes}")
    if cpus_per_node < 1:
        raise LocalClusterError(f"--cpus-per-node must be >= 1, got {cpus_per_node}")
    state_dir.mkdir(parents=True, exist_ok=True)
    state_path = state_dir / STATE_FILE
    if state_path.exists():
        old = json.loads(state_path.read_text())
        if any(group_alive(n["pgid"]) for n in old["nodes"]):
            raise LocalClusterError(
                f"{state_path}: a cluster started from this directory is still running "
                f"(dashboard {old['dashboard']}); run `raylift cluster local down --dir {state_dir}` first"
            )
    ray_bin = str(Path(sys.executable).parent / "ray")
    auth_mode = os.environ.get("RAY_AUTH_MODE", "disabled")
    gcs_port, dash_port = free_port(), free_port()
    address = f"127.0.0.1:{gcs_port}"
    dashboard = f"http://127.0.0.1:{dash_port}"
    env = _node_env(auth_mode, address)
    # Each node its own temp (session) directory: nodes sharing one would share the session's
    # unpacked job packages (a second node re-extracted one while the driver imported from it) and
    # its `ray_current_cluster` file, which resolves the job driver's RAY_ADDRESS=auto. Short, under
    # the system temp dir: Ray's unix sockets live there and their paths are limited to 107 bytes.
    temp_root = Path(tempfile.mkdtemp(prefix="raylift-cluster-"))
    common = ["--block", "--disable-usage-stats", "--num-cpus", str(cpus_per_node),
              "--num-gpus", str(gpus_per_node)]
    started: list[dict] = []
    state = {"address": address, "dashboard": dashboard, "auth_mode": auth_mode,
             "state_dir": str(state_dir.resolve()), "temp_root": str(temp_root), "nodes": started}
    try:
        head_log = (state_dir / "node-0-head.log").resolve()
        head = _spawn(
            [ray_bin, "start", "--head", "--port", str(gcs_port), "--node-ip-address", "127.0.0.1",
             "--include-dashboard", "true", "--dashboard-host", "127.0.0.1",
             "--dashboard-port", str(dash_port), "--ray-client-server-port", str(free_port()),
             "--temp-dir", str(temp_root / "n0"), *_node_ports(), *common],
            head_log, env,
        )
        started.append({"role": "head", "ip": "127.0.0.1", "pid": head.pid, "pgid": head.pid,
                        "log": str(head_log), "temp_dir": str(temp_root / "n0")})
        state_path.write_text(json.dumps(state, indent=2))
        watched = [(head, head_log)]
        _wait(lambda: _alive_nodes(dashboard) >= 1, timeout, "the head node", watched)
        for i in range(1, nodes):
            ip = f"127.0.0.{i + 1}"
            log = (state_dir / f"node-{i}-worker.log").resolve()
            p = _spawn([ray_bin, "start", "--address", address, "--node-ip-address", ip,
                        "--min-worker-port", "0", "--max-worker-port", "0",
                        "--temp-dir", str(temp_root / f"n{i}"), *_node_ports(), *common], log, env)
            watched.append((p, log))
            started.append({"role": "worker", "ip": ip, "pid": p.pid, "pgid": p.pid, "log": str(log),
                            "temp_dir": str(temp_root / f"n{i}")})
            state_path.write_text(json.dumps(state, indent=2))
        _wait(lambda: _alive_nodes(dashboard) >= nodes, timeout, f"all {nodes} nodes", watched)
    except BaseException:
        _stop_nodes(started)
        shutil.rmtree(temp_root, ignore_errors=True)
        state_path.unlink(missing_ok=True)
        raise
    return state


def _wait(ready, timeout: float, what: str, watched: list[tuple[subprocess.Popen, Path]]) -> None:
    """Poll `ready()` until true; fail early (with the log's tail) if a watched node exits."""
    deadline = time.monotonic() + timeout
    while not ready():
        for proc, log in watched:
            if proc.poll() is not None:
                tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
                raise LocalClusterError(
                    f"waiting for {what}: `ray start` exited with status {proc.returncode}; "
                    f"log {log}:\n{tail}"
                )
        if time.monotonic() > deadline:
            raise LocalClusterError(f"{what} not up after {timeout:.0f} s; see {watched[0][1]}")
        time.sleep(0.5)


def _stop_nodes(nodes: list[dict], grace: float = 15.0) -> int:
    """Stop each recorded node: SIGTERM its `ray start --block` leader, then SIGKILL its group.

    The leader shuts its raylet/GCS/dashboard down in order on SIGTERM (signalling the whole
    group at once leaves the GCS and raylet hanging); whatever is still in the group after
    `grace` seconds is killed. Workers go first so the head does not log them as failures.
    """
    for group in ([n for n in nodes if n["role"] != "head"], [n for n in nodes if n["role"] == "head"]):
        for node in group:
            try:
                os.kill(node["pid"], signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and any(group_alive(n["pgid"]) for n in group):
            time.sleep(0.2)
        for node in group:
            if group_alive(node["pgid"]):
                try:
                    os.killpg(node["pgid"], signal.SIGKILL)
                except ProcessLookupError:
                    pass
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any(group_alive(n["pgid"]) for n in nodes):
        time.sleep(0.1)
    return len(nodes)


def read_state(state_dir: Path) -> dict:
    path = state_dir / STATE_FILE
    if not path.is_file():
        raise LocalClusterError(f"no local cluster recorded in {state_dir} ({path} not found)")
    return json.loads(path.read_text())


def stop_cluster(state_dir: Path) -> int:
    """Stop the process groups recorded in `<state_dir>/cluster.json`; returns how many."""
    state = read_state(state_dir)
    n = _stop_nodes(state["nodes"])
    if state.get("temp_root"):
        shutil.rmtree(state["temp_root"], ignore_errors=True)
    (state_dir / STATE_FILE).unlink(missing_ok=True)
    return n
