"""What a user reads: raylift's own lines on the console, Ray's own logs in files.

By default the console shows what raylift prints (preprocessing progress, per-epoch lines with an
ETA, the tables). Ray keeps writing its complete logs under each node's session directory
(`/tmp/ray/session_latest/logs`); only their echo on the driver's console is filtered. `--verbose`
(`RAYLIFT_VERBOSE=1`) turns every filter off.

The filters use Ray's documented switches, which must be in place before `ray` is imported (its log
deduplicator reads them at import) and before a local Ray instance starts (its workers inherit the
environment):

- `RAY_DEDUP_LOGS_SKIP_REGEX` ("Log deduplication", Ray's logging guide): lines forwarded from
  workers that match are not printed (Ray applies it only with `RAY_DEDUP_LOGS=1`, its default,
  which the default console therefore sets). `SKIP` lists the lines Ray prints on every run: Ray Train's
  "Reporting training result" dictionaries, Ray Data's per-epoch execution notices, the
  `PreemptionWatcher` core_worker error (Ray issue 53727; harmless, printed at every Train start)
  and deprecation warnings;
- `PYTHONWARNINGS=ignore::DeprecationWarning` for this process and the local Ray workers;
- Ray Data's progress bars off (`DataContext.enable_progress_bars`; the datasets a driver creates
  carry its context to the actors that execute them), INFO logging of the driver's `ray` loggers
  off (`quiet_ray`).
"""
from __future__ import annotations

import logging
import os
import re
import sys
import warnings

VERBOSE_ENV = "RAYLIFT_VERBOSE"

SKIP = (
    r"Reporting training result",
    r"PreemptionWatcher",
    r"DeprecationWarning",
    r"Starting execution of Dataset",
    r"Execution plan of Dataset",
    r"Dataset \S+ execution finished in",
    r"A new progress UI is available",
    r"Registered dataset logger for dataset",
    r"Progress bars disabled\. To enable",
    r"Token authentication is enabled for this Ray cluster",
    r"Reported metrics: \{",
    r"Running in local mode\. The training function",
    # Ray Train, whenever raylift reads a finished run back (Result.from_path) or resumes one:
    # it tells the user to delete the run folder, which is wrong advice for a good run.
    r"A run snapshot was found in storage folder",
    r"This snapshot contains a list of checkpoints",
    r"If you meant to start a brand new training job",
    r"please configure a new, unique `RunConfig\(name\)`",
    r"existing folder at '",
    # The job manager, at the top of every submitted job's log.
    r"Runtime env is setting up\.",
)
SKIP_REGEX = "|".join(f"(?:{s})" for s in SKIP)
LOG_DIR_HINT = "/tmp/ray/session_latest/logs"


def wants_verbose(argv: list[str]) -> bool:
    """`--verbose` among raylift's own options (not in the command `raylift submit` sends after
    `--`), or RAYLIFT_VERBOSE=1 in the environment."""
    own = argv[: argv.index("--")] if "--" in argv else argv
    return "--verbose" in own or os.environ.get(VERBOSE_ENV) == "1"


def verbose() -> bool:
    return os.environ.get(VERBOSE_ENV) == "1"


def configure(verbose_console: bool) -> None:
    """Set the console filters (or, verbose, mark them off) for this process and the Ray processes
    it starts. Call before anything imports `ray`.

    Whatever the verbosity, no ANSI colour codes when stdout is not a terminal (a file, a pipe, a
    job's log): `RAY_COLOR_PREFIX=0` for the worker prefixes Ray forwards. By default the
    `(RayTrainWorker pid=...)` prefix is off too (`RAY_DISABLE_WORKER_LOG_PREFIX`): raylift's
    per-epoch lines come from the rank-0 worker and read as raylift's own."""
    if not sys.stdout.isatty():
        os.environ.setdefault("RAY_COLOR_PREFIX", "0")
    if verbose_console:
        os.environ[VERBOSE_ENV] = "1"
        return
    os.environ.pop(VERBOSE_ENV, None)
    os.environ.setdefault("RAY_DISABLE_WORKER_LOG_PREFIX", "1")
    os.environ["RAY_DEDUP_LOGS"] = "1"  # Ray applies the skip filter only while deduplicating
    os.environ.setdefault("RAY_DEDUP_LOGS_SKIP_REGEX", SKIP_REGEX)
    os.environ.setdefault("PYTHONWARNINGS", "ignore::DeprecationWarning")
    warnings.filterwarnings("ignore", category=DeprecationWarning)


def is_ray_noise(line: str) -> bool:
    """Whether the default console drops this forwarded Ray line (what `SKIP_REGEX` does in Ray)."""
    return re.search(os.environ.get("RAY_DEDUP_LOGS_SKIP_REGEX", SKIP_REGEX), line) is not None


ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")


class LogFilter:
    """What a followed job's log stream (`raylift submit`, `raylift jobs logs`) shows: chunks in,
    whole lines out; Ray's `SKIP` lines dropped unless verbose; ANSI codes stripped unless `out`
    is a terminal. The job driver ran with the default console already; this catches what Ray
    writes into a job's log outside it (the job manager's lines)."""

    def __init__(self, out) -> None:
        self.out = out
        self.color = hasattr(out, "isatty") and out.isatty()
        self.pending = ""

    def write(self, chunk: str) -> None:
        lines = (self.pending + chunk).split("\n")
        self.pending = lines.pop()
        for line in lines:
            self._emit(line + "\n")
        self.out.flush()

    def close(self) -> None:
        if self.pending:
            self._emit(self.pending)
            self.pending = ""
        self.out.flush()

    def _emit(self, line: str) -> None:
        if not verbose() and is_ray_noise(line):
            return
        self.out.write(line if self.color else ANSI.sub("", line))


class _DropRayNoise(logging.Filter):
    """Drops, on the driver's console handlers, the `SKIP` lines Ray logs in this process (its
    workers' lines are filtered by Ray's deduplicator). Ray Train in local mode runs the training
    loop here, so its per-report lines would otherwise reach the console."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not is_ray_noise(record.getMessage())


def quiet_ray() -> None:
    """After `import ray`: Ray Data's progress bars and the driver's Ray INFO lines off, unless
    verbose. Ray's session log files keep every level. Call again after `ray.init`, which
    re-installs the `ray` logger at INFO."""
    if verbose():
        return
    import ray.data

    ray.data.DataContext.get_current().enable_progress_bars = False
    for name in ("ray", "ray._private.worker"):
        logging.getLogger(name).setLevel(logging.WARNING)
    for name in ("ray", "ray.data", "ray.train"):
        for handler in logging.getLogger(name).handlers:
            if type(handler).__name__ == "SessionFileHandler":  # keep the session's log file complete
                continue
            if name == "ray.data":
                handler.setLevel(logging.WARNING)
            if not any(isinstance(f, _DropRayNoise) for f in handler.filters):
                handler.addFilter(_DropRayNoise())
