"""`raylift submit [options] -- <raylift command>`: run any raylift command as a Ray job.

The job's runtime environment carries:
- the working directory (the raylift source tree by default), without data, runs, virtualenvs,
  .git, caches and build metadata (`WORKING_DIR_EXCLUDES`); the entrypoint runs inside Ray's copy
  of it, so a *relative* output path (e.g. `train.storage_path: runs`) would land in that copy and
  be lost with it, and a relative input under an excluded folder would be missing. `submit`
  refuses both before uploading anything, naming the key (`check_locations`; the commands declare
  their locations, pipelines/config.py);
- the project's pip requirements from pyproject.toml (`--pip`), except Ray itself, which the
  cluster already runs. `auto` (the default) skips pip for a loopback address, where the cluster
  is this machine and already has raylift's dependencies (a pip runtime env would also need
  PyPI), and installs them for any other address. Clusters launched from `cluster/*.yaml` also
  have everything installed: pass `--pip never` there to skip the per-job install;
- the environment variables named with `--env` (values read from the local environment; only
  the names are ever printed).

The entrypoint is `python -m pipelines.cli <command>`: the raylift CLI itself, run from the
uploaded tree, so it works on clusters where raylift is not pip-installed. The command is parsed
by the real CLI parser (handed over by the CLI as `parser_for`) before anything is uploaded, so typos fail here, not on the cluster.
`--follow` (default) streams the job's logs and exits with its outcome: 0 for SUCCEEDED,
1 for FAILED or STOPPED.
"""
from __future__ import annotations

import argparse
import asyncio
import fnmatch
import ipaddress
import logging
import os
import secrets
import shlex
import socket
import sys
import time
from pathlib import Path
from typing import Callable, Optional
from urllib.parse import urlparse

from preprocessing.schema import ConfigError
from preprocessing.store.dataset import is_dataset_id

DEFAULT_ADDRESS = "http://127.0.0.1:8265"
# gitignore-style, relative to the working directory (Ray's `excludes`).
WORKING_DIR_EXCLUDES = [
    "/data/", "/runs/", "/.raylift/", ".venv/", "venv/", ".git/", "__pycache__/", "*.pyc",
    "*.egg-info/", ".pytest_cache/", "build/", "*.ckpt",
]
# Commands that manage jobs or clusters from the user's machine: meaningless inside a job.
NOT_SUBMITTABLE = ("submit", "jobs", "cluster")
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")
SQLITE = "sqlite:///"  # an MLflow SQLite store's URI: the file's path follows (absolute: a fourth /)


class ClusterError(ConfigError):
    """The Ray cluster cannot be reached or refused the request; the message says which and why."""


def project_root() -> Path:
    """The raylift source tree this CLI runs from (holds pyproject.toml and pipelines/)."""
    return Path(__file__).resolve().parents[1]


def add_address_argument(parser) -> None:
    parser.add_argument(
        "--address", default=None,
        help=f"the cluster's dashboard URL (default: $RAY_ADDRESS, else {DEFAULT_ADDRESS})",
    )


def add_arguments(parser) -> None:
    add_address_argument(parser)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--follow", dest="follow", action="store_true", default=True,
                      help="stream the job's logs and exit with its status (default)")
    mode.add_argument("--no-wait", dest="follow", action="store_false",
                      help="print the job id and return at once")
    parser.add_argument("--env", dest="env_names", action="append", default=[], metavar="NAME",
                        help="pass this local environment variable to the job (repeatable; "
                             "e.g. AWS_ACCESS_KEY_ID); values are never printed")
    parser.add_argument("--pip", choices=("auto", "always", "never"), default="auto",
                        help="install pyproject.toml's dependencies in the job's runtime env: "
                             "auto = only for non-loopback addresses (default)")
    parser.add_argument("--working-dir", default=None,
                        help="directory uploaded as the job's working dir (default: raylift's tree)")
    parser.add_argument("job_command", nargs=argparse.REMAINDER, metavar="COMMAND",
                        help="the raylift command after `--`, e.g. -- train --config configs/demo.yaml")


# ---------------------------------------------------------------------------------------------
# Address and connection (shared with `raylift jobs`)


def resolve_address(address: Optional[str]) -> str:
    """--address, else $RAY_ADDRESS, else the local default; always an http(s) URL."""
    addr = (address or os.environ.get("RAY_ADDRESS") or DEFAULT_ADDRESS).strip().rstrip("/")
    if "://" not in addr:
        addr = f"http://{addr}"
    parsed = urlparse(addr)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise ClusterError(
            f"address {addr!r}: expected the dashboard URL, e.g. {DEFAULT_ADDRESS} "
            "(ray:// client addresses cannot submit jobs)"
        )
    return addr


def is_loopback(address: str) -> bool:
    host = urlparse(address).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def connect(address: str, timeout: float = 5.0):
    """A JobSubmissionClient for `address`, or ClusterError within ~`timeout` s if none answers.

    Ray's client has no connect timeout (a silent address would hang), so a plain TCP connect
    with a timeout comes first.
    """
    parsed = urlparse(address)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        socket.create_connection((parsed.hostname, port), timeout=timeout).close()
    except OSError as e:
        raise ClusterError(
            f"no Ray dashboard reachable at {address} ({e.strerror or e}); start a cluster "
            "(`raylift cluster local up`) or pass --address / set RAY_ADDRESS to its dashboard URL"
        ) from None
    from ray.job_submission import JobSubmissionClient

    # Ray logs every packaging step at INFO and warns about its default excludes, which
    # WORKING_DIR_EXCLUDES lists anyway; errors still show.
    for name in ("ray._private.runtime_env", "ray.dashboard.modules.dashboard_sdk",
                 "ray.dashboard.modules.job.sdk"):
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        return JobSubmissionClient(address)
    except (ConnectionError, RuntimeError) as e:
        raise ClusterError(f"{address} does not answer as a Ray job server: {e}") from None


def follow_logs(client, job_id: str, out=None) -> str:
    """Stream the job's logs to `out` (through the console's `LogFilter`) until it ends; returns
    its terminal status name."""
    from cluster.console import LogFilter

    shown = LogFilter(out or sys.stdout)

    async def tail() -> None:
        async for chunk in client.tail_job_logs(job_id):
            shown.write(chunk)

    try:
        asyncio.run(tail())
    except RuntimeError as e:  # the log socket closed early: fall back to polling the status
        print(f"(log stream interrupted: {e}; waiting for the job to finish)", file=sys.stderr)
    finally:
        shown.close()
    while True:
        status = str(client.get_job_status(job_id).value)
        if status in TERMINAL:
            return status
        time.sleep(0.5)


def report_outcome(client, job_id: str, status: str) -> int:
    """One line for the outcome; exit code 0 for SUCCEEDED, 1 otherwise."""
    if status == "SUCCEEDED":
        print(f"job {job_id} SUCCEEDED")
        return 0
    # Ray's message repeats the log tail that was just streamed: keep its first line.
    message = (client.get_job_info(job_id).message or "").strip().splitlines()
    message = message[0].split(", last available logs")[0] if message else ""
    print(f"job {job_id} {status}" + (f": {message}" if message else ""), file=sys.stderr)
    return 1


# ---------------------------------------------------------------------------------------------
# Runtime environment


def project_requirements(root: Path) -> list[str]:
    """pyproject.toml's [project] dependencies, minus Ray (the cluster's own Ray must stay)."""
    import tomllib

    path = root / "pyproject.toml"
    if not path.is_file():
        raise ClusterError(f"--pip: {path} not found; use --pip never or --working-dir")
    deps = tomllib.loads(path.read_text()).get("project", {}).get("dependencies", [])
    return [d for d in deps if _requirement_name(d) != "ray"]


def _requirement_name(req: str) -> str:
    name = req.strip()
    for stop in "[<>=!~; @":
        name = name.split(stop, 1)[0]
    return name.lower().replace("_", "-")


def build_runtime_env(
    working_dir: Path, pip: bool, env_names: list[str], environ: Optional[dict] = None
) -> dict:
    environ = os.environ if environ is None else environ
    missing = [n for n in env_names if n not in environ]
    if missing:
        raise ClusterError(f"--env {missing[0]}: not set in the local environment")
    runtime_env: dict = {"working_dir": str(working_dir), "excludes": list(WORKING_DIR_EXCLUDES)}
    if pip:
        runtime_env["pip"] = project_requirements(working_dir)
    if env_names:
        runtime_env["env_vars"] = {n: environ[n] for n in env_names}
    return runtime_env


def parse_command(command: list[str], parser_for: Callable[[str], Optional[argparse.ArgumentParser]]
                  ) -> tuple[list[str], argparse.Namespace]:
    """Strip the `--` separator and check the command with the parser `parser_for(name)` gives;
    returns the command and its parsed arguments.

    `parser_for` returns the full parser of `raylift <name>`, or None for an unknown command. The
    CLI passes its own (`pipelines.cli.parser_for`), so `cluster/` never imports the commands.
    """
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        raise ClusterError("no command given: raylift submit [options] -- <command> [args]")
    parser = parser_for(command[0])
    if parser is None:
        raise ClusterError(f"unknown raylift command {command[0]!r} (run `raylift --help` for the list)")
    if command[0] in NOT_SUBMITTABLE:
        raise ClusterError(f"`raylift {command[0]}` runs on your machine, it cannot be a job")
    namespace = parser.parse_args(command)  # exits with usage (status 2) on bad arguments and empty paths
    return command, namespace


def command_locations(namespace: argparse.Namespace, working_dir: Path) -> list[tuple[str, str, str]]:
    """(key, value, role) of every location the parsed command reads ("input"; "dataset": or a
    dataset id; "staged": a source it can do without) or writes ("output"): its path arguments (`location_roles`, declared by the command) and its config's
    locations (`config_locations`, read from the config the job will read: a relative `--config`
    is the uploaded one under `working_dir`)."""
    out = []
    for dest, (flag, role) in (getattr(namespace, "location_roles", None) or {}).items():
        value = getattr(namespace, dest, None)
        for one in value if isinstance(value, list) else [] if value is None else [value]:  # nargs="+" gives a list
            out.append((flag, one, role))
    reader, config = getattr(namespace, "config_locations", None), getattr(namespace, "config", None)
    if reader is not None and config is not None:
        path = Path(config).expanduser()
        path = path if path.is_absolute() else working_dir / path
        if path.is_file():  # else `--config` itself is refused below, or it is a path on the cluster
            out += reader(str(path), namespace.overrides, namespace)
    return out


def excluded(relative: str) -> Optional[str]:
    """The `WORKING_DIR_EXCLUDES` pattern that keeps `relative` (a path under the working dir) out
    of the job's upload, if any (gitignore semantics for the pattern forms used there)."""
    parts = Path(relative).parts
    for pattern in WORKING_DIR_EXCLUDES:
        name = pattern.strip("/")
        if pattern.startswith("/"):
            if parts and fnmatch.fnmatch(parts[0], name):
                return pattern
        elif any(fnmatch.fnmatch(part, name) for part in parts):
            return pattern
    return None


def check_locations(locations: list[tuple[str, str, str]], working_dir: Path) -> None:
    """Refuse, before anything is uploaded, a relative location that a job would resolve inside
    Ray's temporary copy of `working_dir`: an output (written there, then deleted with the job's
    session) or an input that is not uploaded. URIs and absolute paths pass: they mean the same on
    every node (for absolute ones, only if the nodes share them)."""
    for key, value, role in locations:
        # An MLflow store may be an SQLite file: sqlite:///relative.db, or sqlite:////absolute.db.
        path = value.removeprefix(SQLITE) if role == "tracking" else value
        if "://" in path or Path(path).expanduser().is_absolute():
            continue
        if role == "dataset" and is_dataset_id(value):
            continue  # a dataset id, under a datasets root checked as its own location
        how = f"--set {key}=" if not key.startswith("-") and "." in key else f"{key} "
        relative = os.path.normpath(path)
        if role == "tracking":
            raise ClusterError(
                f"{key}={value}: a relative MLflow store resolves inside the job's temporary copy of the "
                f"working directory on the cluster and is lost when the job ends; give a tracking server, "
                f"e.g. {how}http://HOST:5000, or a path every node shares")
        if role == "output":
            raise ClusterError(
                f"{key}={value}: a relative output path resolves inside the job's temporary copy of the "
                f"working directory on the cluster and is lost when the job ends; give a storage URI or a "
                f"path every node shares, e.g. {how}s3://BUCKET/{relative.lstrip('./')}")
        pattern = excluded(relative)
        if relative.startswith("..") or pattern or not (working_dir / relative).exists():
            why = (f"{pattern} is not uploaded with the job" if pattern else
                   "it lies outside the uploaded working directory" if relative.startswith("..") else
                   f"it is not in the uploaded working directory {working_dir}")
            if role == "staged":
                print(f"note: {key}={value} is not uploaded ({why}): the job uses the dataset staged "
                      "under data.root from this config (stage it first: raylift preprocess --config C "
                      "--set data.root=URI)")
                continue
            raise ClusterError(
                f"{key}={value}: a relative input path is read from the job's copy of the working directory, "
                f"and {why}; stage data into the cluster's storage first (docs/clusters.md, \"Stage data "
                f"once\") and pass its URI, or give a path every node can read")


def run(args) -> int:
    command, namespace = parse_command(args.job_command, args.parser_for)
    address = resolve_address(args.address)
    working_dir = Path(args.working_dir).resolve() if args.working_dir else project_root()
    if not working_dir.is_dir():
        raise ClusterError(f"--working-dir {working_dir}: not a directory")
    check_locations(command_locations(namespace, working_dir), working_dir)
    pip = args.pip == "always" or (args.pip == "auto" and not is_loopback(address))
    runtime_env = build_runtime_env(working_dir, pip, args.env_names)

    client = connect(address)
    submission_id = f"raylift-{command[0]}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"
    entrypoint = "python -m pipelines.cli " + shlex.join(command)
    t0 = time.perf_counter()
    try:
        job_id = client.submit_job(
            entrypoint=entrypoint, submission_id=submission_id, runtime_env=runtime_env,
            metadata={"raylift_command": shlex.join(command)},
        )
    except RuntimeError as e:
        raise ClusterError(f"{address} refused the job: {e}") from None
    elapsed = time.perf_counter() - t0
    print(f"submitted job {job_id} to {address} in {elapsed:.1f} s")
    print(f"  command:   raylift {shlex.join(command)}")
    print(f"  pip:       {'pyproject dependencies' if pip else 'none (cluster has them)'}")
    if args.env_names:
        print(f"  env vars:  {', '.join(args.env_names)}")
    print(f"  dashboard: {address}/#/jobs/{job_id}")
    if not args.follow:
        print(f"  follow:    raylift jobs logs {job_id} --follow --address {address}")
        return 0
    sys.stdout.flush()
    try:
        status = follow_logs(client, job_id)
    except KeyboardInterrupt:
        print(f"\nstopped following; the job keeps running (raylift jobs stop {job_id})", file=sys.stderr)
        raise
    return report_outcome(client, job_id, status)
