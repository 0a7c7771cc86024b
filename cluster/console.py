"""What a user reads: raylift's own lines on the console, Ray's own logs in files.

By default the console shows what raylift prints (preprocessing progress, per-epoch lines with an
ETA, the tables, and one line when a command fails). Ray keeps writing its complete logs under each
node's session directory (`/tmp/ray/session_latest/logs`); none of them reach the console.
`--verbose` (`RAYLIFT_VERBOSE=1`) shows them as well. The switches are Ray's documented ones, set
at their source:

- what Ray's worker processes print (tasks, actors, Ray Train's controller and workers: their
  log lines, tracebacks, colour codes) is not forwarded to the driver (`ray.init(log_to_driver=
  False)`, cluster/session.py); it stays in the workers' log files. The few lines a worker prints
  for the user (Ray Train's rank 0: the start line and the per-epoch lines) travel to the driver
  through a `Relay`;
- in the driver, the console handlers of Ray's loggers (`ray`, `ray.data`, `ray.train`) pass
  CRITICAL records only (`quiet_ray`); Ray's session-file handlers keep every record;
- Ray Data's progress bars are off (`DataContext.enable_progress_bars`; the datasets a driver
  creates carry its context to the actors that execute them);
- no ANSI colour codes when stdout is not a terminal (`RAY_COLOR_PREFIX=0`, for the worker lines
  Ray forwards with `--verbose`).

`SKIP` lists the lines Ray writes into a submitted job's log on its own (the job manager's), and
the lines an older or verbose job's log holds; `LogFilter` drops them from `raylift submit` and
`raylift jobs logs`.
"""
from __future__ import annotations

import logging
import os
import re
import sys
import threading
import warnings
from typing import Any, Callable

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
    """Mark this process (and the Ray processes it starts) verbose or not, and take colour codes
    off a stdout that is not a terminal (a file, a pipe, a job's log). Call before anything
    imports `ray`."""
    if not sys.stdout.isatty():
        os.environ.setdefault("RAY_COLOR_PREFIX", "0")
    if verbose_console:
        os.environ[VERBOSE_ENV] = "1"
        return
    os.environ.pop(VERBOSE_ENV, None)
    warnings.filterwarnings("ignore", category=DeprecationWarning)


def is_ray_noise(line: str) -> bool:
    """Whether a followed job's log shown on the default console drops this line of Ray's."""
    return re.search(SKIP_REGEX, line) is not None


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


def quiet_ray() -> None:
    """After `import ray`: Ray Data's progress bars off, and the console handlers of Ray's loggers
    in this process at CRITICAL, unless verbose. Ray's session log files keep every record (their
    `SessionFileHandler`s are left as they are). Call again after `ray.init`, which re-installs the
    `ray` logger at INFO."""
    if verbose():
        return
    import ray.data

    ray.data.DataContext.get_current().enable_progress_bars = False
    for name in ("ray", "ray._private.worker"):
        logging.getLogger(name).setLevel(logging.WARNING)
    for name in ("ray", "ray.data", "ray.train"):
        for handler in logging.getLogger(name).handlers:
            if type(handler).__name__ != "SessionFileHandler":
                handler.setLevel(logging.CRITICAL)


class Relay:
    """raylift's own lines from Ray workers to this driver's console, in order.

    Unless verbose, Ray forwards nothing its workers print (see the module docstring), so a worker
    sends a line meant for the user (`say`) through a Ray queue (`ray.util.queue.Queue`, an actor
    that holds no CPU) and a thread of the driver hands it to `show`. The queue pickles with the
    loop config; a worker calls `Relay.say(queue, line)`."""

    POLL_S = 0.5

    def __init__(self, show: Callable[[str], None]) -> None:
        from ray.util.queue import Queue

        self.queue = Queue(actor_options={"num_cpus": 0})
        self._show = show
        self._closing = threading.Event()
        self._thread = threading.Thread(target=self._pump, name="raylift-relay", daemon=True)
        self._thread.start()

    @staticmethod
    def say(queue: Any, line: str) -> None:
        """In a worker: send `line` to the driver's console."""
        queue.put(line)

    def _pump(self) -> None:
        from ray.exceptions import RayError
        from ray.util.queue import Empty

        while True:
            closing = self._closing.is_set()
            try:
                line = self.queue.get_nowait() if closing else self.queue.get(timeout=self.POLL_S)
            except Empty:
                if closing:
                    return
                continue
            except RayError:  # the queue's actor is gone (Ray stopped): nothing more can come
                return
            self._show(line)

    def close(self) -> None:
        """Show the lines queued by now (not those of workers still running after a Ctrl-C), then
        end the thread and the queue's actor."""
        self._closing.set()
        self._thread.join()
        self.queue.shutdown()
