"""Copy a Ray job's session logs to the run's storage before the cluster that holds them is gone.

Why: Ray writes every process's log to the session directory of the node it runs on
(`/tmp/ray/session_*/logs`). A KubeRay RayJob deletes its cluster, and with it every node's disk,
`ttlSecondsAfterFinished` (600 s in `cluster/kuberay/`) after the job ends: the tracebacks of a
failed run's workers, the raylet's reasons for killing a worker (out of memory) and the job's
driver log disappear with it. A laptop run keeps its session directory on its own disk.

What: `ship_logs(dest)` runs in the driver while Ray is still up, and copies from every alive node
(`ray.nodes()`) through Ray's public state API (`ray.util.state.list_logs` and `get_log`, which
reach each node's log agent through the dashboard, so nothing here needs a shared filesystem; both
are given the address of the cluster this driver is connected to):

- the logs of this job's worker processes: `worker-<worker id>-<job id>-<pid>.out/.err` and
  `python-core-worker-<worker id>_<pid>.log`. A worker started before the job was known (Ray
  prestarts some) carries the nil job id `ffffffff` in its file names, so the job's workers are
  also found by the worker ids of its tasks (`list_tasks`) and the pids of its actors
  (`list_actors`), which Ray Train workers and Tune trials are;
- the job's driver logs: `job-driver-<submission id>.log` (stdout and stderr of a submitted job's
  entrypoint, written by Ray's job supervisor on the driver's node) and this driver's own
  `python-core-driver-<job id>*.log`;
- each node's `raylet.out`/`raylet.err` and, on the head, `gcs_server.out`/`gcs_server.err`;

each capped to its last `max_bytes_per_file` bytes, written with raylift's storage layer (a local
directory or any object store, `preprocessing.store.storage`) to
`<dest>/logs/<attempt>/<node>/<file>`, with `index.json` (node, file, bytes, truncated) beside the
node folders. `<attempt>` is the job's submission id (a RayJob's retry is a new submission), else
`<session name>-job<job id>`: a resumed run or a retried RayJob adds its logs next to the failed
attempt's instead of overwriting them. `<node>` is the node's IP (with a node id prefix where two
alive nodes share one IP, as local test clusters can).

Shipping is a convenience and must never fail a run nor hold it up: a copy that fails (a
destination that cannot be written, no dashboard) is one line on stderr, a file or node that
cannot be read is counted in the summary line and named in `index.json`, and the whole copy stops
after `timeout_s`, keeping what was copied. Files are read from
the end: `get_log` can tail by lines only, so the last `max_bytes_per_file / ASSUMED_LINE_BYTES`
lines are fetched and the last `max_bytes_per_file` bytes of them kept (`truncated` in the index
says the file had more). The job's own files are copied first, the raylet and GCS logs last.

When (`ship_run_logs`, called in a `finally:` by `raylift train` and `raylift tune`):
`train.ship_logs` is `always`, or `auto` (the default) and this driver runs as a submitted Ray job,
which is where logs die with the cluster. A submitted driver is recognised by what Ray's job
supervisor puts in its environment (`RAY_JOB_CONFIG_JSON_ENV_VAR`, whose metadata holds
`job_submission_id`; ray.init reads it, see `JobSupervisor._get_driver_env_vars` in Ray's
`dashboard/modules/job/job_supervisor.py`); the state API's `JobState.submission_id` is the public
record of the same id and is asked when the environment does not say.
"""
from __future__ import annotations

import json
import os
import re
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Literal, Optional, Union

from preprocessing.store import storage
from preprocessing.store.storage import Location

ShipMode = Literal["auto", "always", "never"]  # train.ship_logs
Destination = Union[str, os.PathLike, Location]  # a local path, a URI, or a storage Location

DEFAULT_MAX_BYTES_PER_FILE = 20 << 20  # the last 20 MiB of each file
DEFAULT_TIMEOUT_S = 120.0  # the whole copy; what was copied by then stays
ASSUMED_LINE_BYTES = 64  # get_log tails by lines: ask for max_bytes / this many lines
STATE_API_TIMEOUT_S = 20  # per state-API request (the server-side deadline)
LIST_LIMIT = 10_000  # tasks / actors of the job asked for, to find its workers
LOGS_DIR = "logs"
INDEX_NAME = "index.json"
# Set by Ray's job supervisor in a submitted driver's environment (JobConfig JSON: runtime_env and
# metadata, whose `job_submission_id` is the submission id); ray.init reads it.
JOB_CONFIG_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"
SUBMISSION_ID_KEY = "job_submission_id"

_WORKER_LOG = re.compile(r"^worker-(?P<wid>[0-9a-f]+)-(?P<job>[0-9a-f]+)-(?P<pid>\d+)\.(out|err)$")
_CORE_WORKER_LOG = re.compile(r"^python-core-worker-(?P<wid>[0-9a-f]+)_(?P<pid>\d+)\.log$")
_NODE_LOGS = ("raylet.out", "raylet.err")
_HEAD_LOGS = ("gcs_server.out", "gcs_server.err")
HEAD_RESOURCE = "node:__internal_head__"  # the resource only the head node has (Ray's docs: resources)


@dataclass
class ShippedFile:
    node: str  # the node's folder under logs/<attempt>/ (its IP)
    node_id: str
    file: str  # the file's name in the node's Ray log directory
    bytes: int  # bytes copied
    truncated: bool  # the file had more than was copied


@dataclass
class ShipSummary:
    dest: str  # <dest>/logs/<attempt>, where the files went
    job_id: Optional[str] = None
    submission_id: Optional[str] = None
    files: list[ShippedFile] = field(default_factory=list)
    nodes: int = 0  # nodes that files were copied from
    errors: list[str] = field(default_factory=list)  # files or nodes that could not be read
    elapsed_s: float = 0.0
    timed_out: bool = False
    failed: Optional[str] = None  # why nothing (more) could be shipped: the line printed to stderr

    @property
    def total_bytes(self) -> int:
        return sum(f.bytes for f in self.files)

    def line(self) -> str:
        """`logs: copied N files (X MB) from K nodes to DEST`, plus what went wrong."""
        text = (f"logs: copied {len(self.files)} files ({self.total_bytes / 1e6:.2f} MB) from {self.nodes} "
                f"node{'s' if self.nodes != 1 else ''} to {self.dest}")
        if self.timed_out:
            text += f" (stopped after {self.elapsed_s:.0f} s, the time limit)"
        if self.errors:
            text += f"; {len(self.errors)} error{'s' if len(self.errors) > 1 else ''} ({self.errors[-1]})"
        return text


# ----------------------------------------------------------------------------- when
def submission_id_from_env(environ: Optional[dict] = None) -> Optional[str]:
    """The submission id Ray's job supervisor gave this driver, None when it was not submitted."""
    raw = (os.environ if environ is None else environ).get(JOB_CONFIG_ENV)
    if not raw:
        return None
    try:
        sid = (json.loads(raw).get("metadata") or {}).get(SUBMISSION_ID_KEY)
    except (ValueError, AttributeError):
        return None
    return str(sid) if sid else None


def is_submitted_job() -> bool:
    """True when this process is the driver of a submitted Ray job (`ray job submit`, a KubeRay
    RayJob, `raylift submit`)."""
    return submission_id_from_env() is not None


def should_ship(mode: ShipMode) -> bool:
    """`always`; `auto` only for a submitted job; never for `never` (or an unknown mode)."""
    return mode == "always" or (mode == "auto" and is_submitted_job())


def ship_run_logs(mode: ShipMode, dest: Destination, progress: Callable[[str], None] = print,
                  **kwargs: Any) -> Optional[ShipSummary]:
    """At the end of a run (call it in a `finally:`): ship this job's logs to `dest` when `mode`
    (train.ship_logs) says so and Ray is still up. Prints one line; never raises."""
    try:
        import ray

        if not should_ship(mode) or not ray.is_initialized():
            return None
        return ship_logs(dest, progress=progress, **kwargs)
    except Exception as e:  # noqa: BLE001 (logs are a convenience: never fail the run for them)
        _warn(f"logs: not copied: {_one_line(e)}")
        return None


# ----------------------------------------------------------------------------- what
def ship_logs(dest: Destination, job_id: Optional[str] = None,
              max_bytes_per_file: int = DEFAULT_MAX_BYTES_PER_FILE, timeout_s: float = DEFAULT_TIMEOUT_S,
              progress: Optional[Callable[[str], None]] = print) -> ShipSummary:
    """Copy the session logs of Ray job `job_id` (default: this driver's job) from every alive node
    to `<dest>/logs/<attempt>/` (see the module docstring). Needs `ray.init` done and the
    dashboard running (the state API). Returns what was copied; prints its one-line summary with
    `progress` (None: silent), or one line on stderr when the copy failed. Never raises."""
    t0 = time.monotonic()
    summary = ShipSummary(dest=_uri_of(dest))
    try:
        import ray

        if not ray.is_initialized():
            raise RuntimeError("Ray is not initialized")
        context = ray.get_runtime_context()
        summary.job_id = job_id or context.get_job_id()
        session = context.get_session_name()
        address = context.gcs_address
    except Exception as e:  # noqa: BLE001
        return _failed(summary, f"cannot reach Ray: {_one_line(e)}", t0)

    stop = threading.Event()
    worker = threading.Thread(
        target=_ship_guarded, name="raylift-logship", daemon=True,
        args=(summary, dest, address, session, max_bytes_per_file, t0 + timeout_s, stop))
    worker.start()
    worker.join(timeout_s)
    if worker.is_alive():  # a hung request: stop after the file in flight, keep what was copied
        stop.set()
        summary.timed_out = True
    summary.elapsed_s = time.monotonic() - t0
    if not summary.files and summary.errors and not summary.failed:  # no node's logs could be read
        summary.failed = f"logs: not copied to {summary.dest}: {summary.errors[-1]}"
    if summary.failed:
        _warn(summary.failed)
    elif progress is not None:
        progress(summary.line())
    return summary


@dataclass(frozen=True)
class _Node:
    node_id: str
    node_ip: str
    is_head_node: bool


def _ship_guarded(summary: ShipSummary, dest: Destination, address: str, session: str,
                  max_bytes: int, deadline: float, stop: threading.Event) -> None:
    try:
        _ship(summary, dest, address, session, max_bytes, deadline, stop)
    except Exception as e:  # noqa: BLE001
        copied = f" after {len(summary.files)} files" if summary.files else ""
        summary.failed = f"logs: not copied to {summary.dest}{copied}: {_one_line(e)}"


def _ship(summary: ShipSummary, dest: Destination, address: str, session: str,
          max_bytes: int, deadline: float, stop: threading.Event) -> None:
    job = summary.job_id
    assert job is not None
    nodes = _alive_nodes()
    ours = {n.node_id for n in nodes}
    summary.submission_id = submission_id_from_env() or _submission_id_from_state(address, job, ours)
    attempt = _safe(summary.submission_id or f"{session}-job{job}")
    out = storage.as_location(dest if isinstance(dest, Location) else os.fspath(dest)).child(LOGS_DIR, attempt)
    summary.dest = out.uri

    ips = [n.node_ip for n in nodes]
    workers, actor_pids = _job_workers(address, job, ours, deadline, summary)
    # What to copy from each node; the job's own files first on every node, then the nodes' raylet
    # and GCS logs: if time runs out, what is left is what matters least.
    todo: list[tuple[int, _Node, str, str]] = []
    for node in sorted(nodes, key=lambda n: (not n.is_head_node, n.node_ip, n.node_id)):
        folder = node.node_ip if ips.count(node.node_ip) == 1 else f"{node.node_ip}-{node.node_id[:8]}"
        try:
            job_names, node_names = _files_of(address, node, job, summary.submission_id, workers, actor_pids,
                                              deadline)
        except Exception as e:  # noqa: BLE001 (a node whose agent does not answer: the others still count)
            summary.errors.append(f"node {node.node_ip}: {_one_line(e)}")
            continue
        todo += [(0, node, folder, name) for name in job_names] + [(1, node, folder, name) for name in node_names]
    lines = max(1, max_bytes // ASSUMED_LINE_BYTES)
    shipped_nodes = set()
    for _, node, folder, name in sorted(todo, key=lambda t: t[0]):
        if stop.is_set() or time.monotonic() >= deadline:
            summary.timed_out = True
            break
        try:
            data, truncated = _fetch_tail(address, node.node_id, name, lines, max_bytes, deadline)
        except Exception as e:  # noqa: BLE001 (a file gone, or the agent timed out: keep going)
            summary.errors.append(f"{node.node_ip}/{name}: {_one_line(e)}")
            continue
        storage.write_bytes(out.child(folder, name), data)  # a failing destination ends the copy
        summary.files.append(ShippedFile(folder, node.node_id, name, len(data), truncated))
        shipped_nodes.add(node.node_id)
        summary.nodes = len(shipped_nodes)
    index = {
        "job_id": job, "submission_id": summary.submission_id, "session": session,
        "written_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "max_bytes_per_file": max_bytes,
        "timed_out": summary.timed_out, "errors": summary.errors,
        "files": [asdict(f) for f in summary.files],
    }
    storage.write_bytes(out.child(INDEX_NAME), (json.dumps(index, indent=1) + "\n").encode())


def _alive_nodes() -> list[_Node]:
    """The connected cluster's alive nodes. `ray.nodes()` asks the GCS this driver is connected to;
    the state API's `list_nodes` would ask the cluster `RAY_ADDRESS` names, which Ray prefers to any
    address given to it (`get_address_for_submission_client`): where several Ray instances share a
    machine, a job's `RAY_ADDRESS` can name another one."""
    import ray

    return [_Node(n["NodeID"], n["NodeManagerAddress"], HEAD_RESOURCE in (n.get("Resources") or {}))
            for n in ray.nodes() if n.get("Alive")]


def _submission_id_from_state(address: str, job: str, ours: set[str]) -> Optional[str]:
    """The job's submission id from the state API (None for a driver started by `ray.init`); only
    from a job whose driver runs on one of this cluster's nodes (see `_alive_nodes`)."""
    from ray.util.state import list_jobs

    try:
        jobs = list_jobs(address=address, filters=[("job_id", "=", job)], timeout=STATE_API_TIMEOUT_S,
                         raise_on_missing_output=False)
    except Exception:  # noqa: BLE001 (the attempt folder then falls back to session and job id)
        return None
    for j in jobs:
        info = getattr(j, "driver_info", None)
        node = info.get("node_id") if isinstance(info, dict) else getattr(info, "node_id", None)
        if getattr(j, "submission_id", None) and node in ours:
            return str(j.submission_id)
    return None


def _job_workers(address: str, job: str, ours: set[str], deadline: float,
                 summary: ShipSummary) -> tuple[set[str], set[tuple[str, int]]]:
    """Worker ids that ran the job's tasks, and (node id, pid) of its actors, on this cluster's
    nodes `ours` (a state API answering for another cluster names none of them)."""
    from ray.util.state import list_actors, list_tasks

    workers: set[str] = set()
    actor_pids: set[tuple[str, int]] = set()
    options = dict(address=address, filters=[("job_id", "=", job)], limit=LIST_LIMIT,
                   raise_on_missing_output=False)
    try:
        for task in list_tasks(timeout=_remaining(deadline), **options):
            if task.worker_id and task.node_id in ours:
                workers.add(task.worker_id)
        for actor in list_actors(timeout=_remaining(deadline), **options):
            if actor.node_id in ours and actor.pid:
                actor_pids.add((actor.node_id, int(actor.pid)))
    except Exception as e:  # noqa: BLE001 (file names still name the job's own workers)
        summary.errors.append(f"the job's tasks and actors: {_one_line(e)}")
    return workers, actor_pids


def _files_of(address: str, node: _Node, job: str, submission_id: Optional[str], workers: set[str],
              actor_pids: set[tuple[str, int]], deadline: float) -> tuple[list[str], list[str]]:
    """The names of the files to copy from `node`: the job's (its driver's and its workers'), and
    the node's own (raylet; GCS on the head)."""
    from ray.util.state import list_logs

    listed = list_logs(address=address, node_id=node.node_id, timeout=_remaining(deadline))
    names = sorted({n for group in listed.values() for n in group if not n.endswith("/")})
    wanted: list[str] = []
    job_wids = set()
    for name in names:
        m = _WORKER_LOG.match(name)
        if m and (m["job"] == job or m["wid"] in workers or (node.node_id, int(m["pid"])) in actor_pids):
            job_wids.add(m["wid"])
    driver = f"job-driver-{submission_id}.log" if submission_id else None
    for name in names:
        m = _WORKER_LOG.match(name) or _CORE_WORKER_LOG.match(name)
        if (name == driver or name.startswith(f"python-core-driver-{job}")
                or (m and (m["wid"] in job_wids or m["wid"] in workers))):
            wanted.append(name)
    own = [n for n in _NODE_LOGS + (_HEAD_LOGS if node.is_head_node else ()) if n in names]
    return wanted, own


def _fetch_tail(address: str, node_id: str, name: str, lines: int, max_bytes: int,
                deadline: float) -> tuple[bytes, bool]:
    """The last `max_bytes` (at most `lines` lines) of a node's log file, and whether it had more."""
    from ray.util.state import get_log

    buf = bytearray()
    cut = False
    for chunk in get_log(address=address, node_id=node_id, filename=name, tail=lines, encoding=None,
                         timeout=_remaining(deadline)):
        buf += chunk
        if len(buf) > 2 * max_bytes:  # bounded memory for a file of long lines
            del buf[:len(buf) - max_bytes]
            cut = True
    if len(buf) > max_bytes:
        del buf[:len(buf) - max_bytes]
        cut = True
    received_lines = buf.count(b"\n") + (1 if buf and not buf.endswith(b"\n") else 0)
    return bytes(buf), cut or received_lines >= lines


# ----------------------------------------------------------------------------- helpers
def _remaining(deadline: float) -> int:
    """Seconds left before `deadline` as a state-API timeout (1 s at least, STATE_API_TIMEOUT_S at most)."""
    return int(max(1, min(STATE_API_TIMEOUT_S, deadline - time.monotonic())))


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)


def _uri_of(dest: Destination) -> str:
    return dest.uri if isinstance(dest, Location) else os.fspath(dest)


def _one_line(e: BaseException, limit: int = 300) -> str:
    """`Type: first line of the message`, at most `limit` characters."""
    lines = str(e).strip().splitlines()
    text = f"{type(e).__name__}: {lines[0] if lines else ''}".rstrip(": ")
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _warn(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _failed(summary: ShipSummary, why: str, t0: float) -> ShipSummary:
    summary.failed = f"logs: not copied to {summary.dest}: {why}"
    summary.elapsed_s = time.monotonic() - t0
    _warn(summary.failed)
    return summary
