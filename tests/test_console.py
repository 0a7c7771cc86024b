"""The default console shows raylift's lines; Ray's own go to its log files unless --verbose.

The unit tests use lines a demo run printed before this filter existed (Ray 2.60). The slow test
runs a one-epoch demo in a subprocess, as a user would, and reads its whole output.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from cluster import console

REPO = Path(__file__).resolve().parents[1]

RAY_LINES = [
    "Reporting training result 1: TrainingReport(checkpoint=None, metrics={'epoch': 1.0, 'loss': 0.56}) from rank 1",
    "[2026-11-29 22:39:14,659 E 14805 14891] core_worker.cc:2465: Actor with class name: 'PreemptionWatcher' and "
    "ID: '711aef09' has constructor arguments in the object store and max_restarts > 0.",
    "/x/ray/data/_internal/execution/interfaces/execution_options.py:436: RayDeprecationWarning: exclude_resources",
    "Starting execution of Dataset train_0356_0. Full logs are in /tmp/ray/session_x/logs/ray-data",
    "Execution plan of Dataset train_0356_0: InputDataBuffer[Input] -> TaskPoolMapOperator[ReadParquetShards]",
    "✔️  Dataset train_0356EWbW3bpqiAlSkoBT8J_0 execution finished in 10.95 seconds",
    "Progress bars disabled. To enable, set `ray.data.DataContext.get_current().enable_progress_bars = True`.",
    # Issue 23 defect 8: printed after every training (raylift's read-back of the finished run).
    "A run snapshot was found in storage folder at: '/tmp/x/runs/demo'",
    "If you meant to start a brand new training job without any information about previous checkpoints "
    "found in this directory, please configure a new, unique `RunConfig(name)` or delete the existing "
    "folder at '/tmp/x/runs/demo'.",
    "2026-12-06 13:40:00,000\tINFO job_manager.py:581 -- Runtime env is setting up.",
]
RAYLIFT_LINES = [
    "training mixste (35,971 parameters, T=27) on 2 worker(s), 1 node(s) on cpu: starting",
    "epoch 1/7  loss 0.56467  val MPJPE  159.44 mm  lr 0.002  112 windows/s  epoch 35.1s  ETA 0:03:31",
    "| Directions | 64.1 | 45.2 |",
]


@pytest.fixture
def clean_env(monkeypatch):
    """No console variables set; whatever `configure` sets is undone afterwards."""
    for key in (console.VERBOSE_ENV, "RAY_COLOR_PREFIX"):
        monkeypatch.setenv(key, "recorded")  # so that monkeypatch restores the original at teardown
        monkeypatch.delenv(key)


def test_ray_noise_is_dropped_and_raylift_lines_are_kept(clean_env):
    console.configure(False)
    assert all(console.is_ray_noise(line) for line in RAY_LINES)
    assert not any(console.is_ray_noise(line) for line in RAYLIFT_LINES)


def _console_shows(name: str, level: int, message: str) -> bool:
    """Whether a record logged in this process reaches one of the console handlers on its way up
    the logger tree (Ray's session-file handlers excluded), as `logging` decides it."""
    import logging

    logger = logging.getLogger(name)
    if not logger.isEnabledFor(level):
        return False
    record = logger.makeRecord(name, level, __file__, 0, message, None, None)
    node = logger
    while node is not None:
        for handler in node.handlers:
            if type(handler).__name__ != "SessionFileHandler" and level >= handler.level and handler.filter(record):
                return True
        if not node.propagate:
            break
        node = node.parent
    return False


def test_driver_lines_of_ray_are_dropped_after_ray_init(clean_env):
    """Ray Train's local mode (`num_workers: 0`) runs the loop in the driver, whose `ray` logger
    `ray.init` re-installs at INFO: none of Ray's lines, warnings included, reach the default
    console there (issue 24: Ray's INFO and WARNING lines only with --verbose), while Ray's
    session log files keep them."""
    import logging

    import ray

    from cluster.session import init_ray, stop_private_ray

    if ray.is_initialized():
        ray.shutdown()
    console.configure(False)
    init_ray(num_cpus=1, include_dashboard=False)
    try:
        hidden = [("ray._private.worker", logging.INFO, "Started a local Ray instance."),
                  ("ray.train.v2._internal.execution.train_fn_utils", logging.INFO, "Reported metrics: {'epoch': 1.0}"),
                  ("ray.train.v2.api.config", logging.INFO, "Running in local mode. The training function will run"),
                  ("ray.data", logging.WARNING, "Progress bars disabled. To enable, set ...")]
        for name, level, message in hidden:
            assert not _console_shows(name, level, message), message
        assert not _console_shows("ray.data", logging.WARNING, "a real Ray Data warning")
        assert any(type(h).__name__ == "SessionFileHandler" for h in logging.getLogger("ray.data").handlers)
    finally:
        stop_private_ray()


def test_no_colour_codes_off_a_terminal(clean_env):
    """Issue 23 defect 8: `(RayTrainWorker pid=...)` prefixes in ANSI cyan reached files and pipes
    (by default no worker line is forwarded at all; with --verbose they are, without colour)."""
    console.configure(True)  # pytest's stdout is not a terminal
    assert os.environ["RAY_COLOR_PREFIX"] == "0"


class _Stream:
    def __init__(self, tty: bool) -> None:
        self.text, self.tty = "", tty

    def write(self, s: str) -> None:
        self.text += s

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return self.tty


def test_a_followed_jobs_log_keeps_raylift_lines_whole_drops_ray_noise_and_colour_off_a_terminal(clean_env):
    console.configure(False)
    cyan = "\x1b[36m(RayTrainWorker pid=1)\x1b[0m "
    log = "\n".join([RAY_LINES[-1], RAYLIFT_LINES[0], cyan + RAYLIFT_LINES[1], RAY_LINES[-3], RAYLIFT_LINES[2]])
    for tty in (False, True):
        out = _Stream(tty)
        shown = console.LogFilter(out)
        for i in range(0, len(log), 7):  # chunks cut mid-line, as the log socket sends them
            shown.write(log[i:i + 7])
        shown.close()
        lines = out.text.splitlines()
        assert lines[0] == RAYLIFT_LINES[0] and lines[-1] == RAYLIFT_LINES[2] and len(lines) == 3, lines
        assert ("\x1b[" in out.text) == tty


def test_verbose_turns_the_filters_off(clean_env):
    assert console.wants_verbose(["train", "--config", "c.yaml", "--verbose"])
    assert console.wants_verbose(["--verbose", "train"])
    assert not console.wants_verbose(["submit", "--", "train", "--verbose"])  # the remote command's flag
    console.configure(True)
    assert console.verbose()


def test_cli_accepts_verbose_before_and_after_the_command():
    from pipelines.cli import build_parser

    assert build_parser("train").parse_args(["--verbose", "train", "--config", "c"]).verbose is True
    assert build_parser("train").parse_args(["train", "--config", "c", "--verbose"]).verbose is True
    assert build_parser("train").parse_args(["train", "--config", "c"]).verbose is False


@pytest.mark.slow
def test_demo_console_is_raylifts_own(tmp_path):
    # conftest's RAY_DEDUP_LOGS=0 stays: the default console must filter even then.
    env = {k: v for k, v in os.environ.items()
           if k not in (console.VERBOSE_ENV, "RAY_DEDUP_LOGS_SKIP_REGEX", "RAY_ADDRESS")}
    env["PYTHONPATH"] = str(REPO)
    out = subprocess.run(
        [sys.executable, "-m", "pipelines.cli", "train", "--config", "configs/demo.yaml",
         "--set", "train.epochs=1", "--set", "data.source.synthetic.frames_per_action=150",  # a quarter: the
         # console is the demo's, in a quarter of the time
         "--set", f"train.storage_path={tmp_path / 'runs'}",
         "--set", f"data.root={tmp_path / 'datasets'}", "--set", f"data.source.synthetic.out_dir={tmp_path / 'src'}"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
    )
    text = out.stdout + out.stderr
    assert out.returncode == 0, text[-3000:]
    assert "epoch 1/1" in text and "ETA" in text and "MPJPE" in text
    for noise in ("Reporting training result", "PreemptionWatcher", "DeprecationWarning",
                  "Starting execution of Dataset", "tqdm is not installed", "Running Dataset",
                  "A run snapshot was found", "delete the existing folder", "\x1b[", "(RayTrainWorker pid="):
        assert noise not in text, noise
    run = tmp_path / "runs" / "demo"
    for name in ("config.yaml", "metrics.csv", "training_curves.png"):
        assert oct((run / name).stat().st_mode & 0o777) == oct(0o666 & ~_umask()), name


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask
