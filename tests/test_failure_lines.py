"""Issue 24, "one line on every failure path": each failure of the CLI, run as a user runs it (a
subprocess), ends in exactly one line on stderr and its exit status (2: bad input, 130: Ctrl-C, 1: a
bug, whose traceback goes to a file the line names), and a successful run's console holds raylift's
own lines only.

The runs that start Ray share one tiny synthetic experiment (1 Ray Train worker, 5k parameters),
built once per module by its successful `raylift train`.
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest
import yaml

from cluster import console
from pipelines.train.checkpoints import disk_full
from pipelines.train.driver import RUN_LOCK
from preprocessing.store import lease
from preprocessing.store.storage import open_location
from tests.helpers import synthetic_cfg, tune_demo_raw

REPO = Path(__file__).resolve().parents[1]
TIMEOUT_S = 240
RAY_LINES = ("Token authentication", "Progress bars disabled", "Failed to send resource request", "Traceback",
             "GetTimeoutError", "RayTrainWorker", "TrainController", "\x1b[")


@dataclass
class Ran:
    returncode: int
    stdout: str
    stderr: str

    def error_lines(self) -> list[str]:
        return self.stderr.splitlines()


def raylift(args: list[str], cwd: Path, on_line: Callable[[str, subprocess.Popen], None] = lambda line, proc: None,
            python: tuple[str, ...] = ("-m", "pipelines.cli"), **env: str) -> Ran:
    """Run `python -m pipelines.cli ARGS` in `cwd` as a user would (this checkout importable, the
    default console, no cluster address, `env` added), as its own process group (a terminal's
    job); `on_line` gets each stdout line as it comes. Nothing of it outlives the call."""
    env = {**{k: v for k, v in os.environ.items() if k not in (console.VERBOSE_ENV, "RAY_ADDRESS")},
           "PYTHONPATH": str(REPO), **env}
    proc = subprocess.Popen([sys.executable, *python, *args], cwd=cwd, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    stderr: list[str] = []
    reader = threading.Thread(target=lambda: stderr.append(proc.stderr.read()))
    reader.start()
    deadline = threading.Timer(TIMEOUT_S, os.killpg, (proc.pid, signal.SIGKILL))
    deadline.start()
    try:
        lines = []
        for line in proc.stdout:
            lines.append(line)
            on_line(line, proc)
        proc.wait()
        reader.join()
    finally:
        deadline.cancel()
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return Ran(proc.returncode, "".join(lines), "".join(stderr))


@dataclass
class Experiment:
    config: Path  # the tiny experiment's YAML
    root: Path  # its data.root, runs and synthetic sources live under here
    dataset: Path  # the dataset its first run built
    first: Ran  # that run: a successful `raylift train` (1 epoch)


@pytest.fixture(scope="module")
def experiment(tmp_path_factory) -> Experiment:
    root = tmp_path_factory.mktemp("experiment")
    cfg = synthetic_cfg(root, epochs=1, num_workers=1, max_failures=0)
    path = root / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    first = raylift(["train", "--config", str(path)], cwd=root)
    datasets = list((root / "datasets").iterdir()) if (root / "datasets").is_dir() else []
    assert first.returncode == 0 and len(datasets) == 1, first.stdout[-2000:] + first.stderr[-3000:]
    return Experiment(path, root, datasets[0], first)


# ----------------------------------------------------------------------------- the cases
# Each case runs the CLI in `tmp` (the test's directory) and returns what it printed, and checks
# what its one line says once the test has checked the status and that there is one line.
Case = Callable[[Path, Experiment], tuple[Ran, Callable[[], None]]]


def config_case(text: str, expect: str) -> Case:
    """`raylift train --config C` on a config file holding `text`, in an empty directory that must
    stay as it is; the line names the file and says `expect`."""

    def run(tmp: Path, experiment: Experiment) -> tuple[Ran, Callable[[], None]]:
        path = tmp / "cfg.yaml"
        path.write_text(text)
        ran = raylift(["train", "--config", str(path)], cwd=tmp)

        def check() -> None:
            assert sorted(p.name for p in tmp.iterdir()) == ["cfg.yaml"], "a refused config wrote something"
            assert str(path) in ran.stderr and expect in ran.stderr, ran.stderr

        return ran, check

    return run


def missing_argument(tmp: Path, experiment: Experiment) -> tuple[Ran, Callable[[], None]]:
    ran = raylift(["train"], cwd=tmp)

    def check() -> None:
        assert "required: --config" in ran.stderr, ran.stderr

    return ran, check


def internal_error(tmp: Path, experiment: Experiment) -> tuple[Ran, Callable[[], None]]:
    """A bug, provoked in the CLI's process by the test: the command's `run` raises RuntimeError."""
    script = textwrap.dedent("""
        import sys
        import pipelines.data.admin as admin

        def broken(args):
            raise RuntimeError("a bug, provoked by the test")

        admin.run = broken
        from pipelines.cli import main
        sys.exit(main(["data", "ls", "--root", "."]))
    """)
    ran = raylift([], cwd=tmp, python=("-c", script), TMPDIR=str(tmp))  # where the traceback goes

    def check() -> None:
        line = ran.stderr.strip()
        assert line.startswith("raylift data: internal error: RuntimeError: a bug, provoked by the test "
                               "(traceback: "), line
        saved = Path(line.rsplit("(traceback: ", 1)[1].rstrip(")"))
        assert saved.parent == tmp / "raylift-logs" and "RuntimeError" in saved.read_text()

    return ran, check


def locked_run_directory(tmp: Path, experiment: Experiment) -> tuple[Ran, Callable[[], None]]:
    """Another live run holds the run directory's lease: refused at once, before Ray starts."""
    config = tmp / "tiny.yaml"
    config.write_text(yaml.safe_dump(synthetic_cfg(tmp).to_dict(), sort_keys=False))
    run_dir = tmp / "runs" / "tiny"
    held = lease.acquire(open_location(str(run_dir)).child(RUN_LOCK), "holder")
    try:
        ran = raylift(["train", "--config", str(config)], cwd=tmp)
    finally:
        held.release()

    def check() -> None:
        assert f"{run_dir / RUN_LOCK} is held by holder" in ran.stderr, ran.stderr
        assert "Ray:" not in ran.stdout and not (tmp / "datasets").exists(), ran.stdout

    return ran, check


def damaged_shard(tmp: Path, experiment: Experiment) -> tuple[Ran, Callable[[], None]]:
    """One byte flipped in a copy of the experiment's first training shard, which a Ray Train
    worker reads through Ray Data."""
    copy = tmp / experiment.dataset.name
    shutil.copytree(experiment.dataset, copy)
    shard = copy / "train" / "part-00000.parquet"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    ran = raylift(["train", "--config", str(experiment.config), "--data", str(copy), "--set", "name=damaged"], cwd=tmp)

    def check() -> None:
        assert f"raylift train: error: {shard}: damaged bytes" in ran.stderr, ran.stderr

    return ran, check


def ctrl_c(tmp: Path, experiment: Experiment) -> tuple[Ran, Callable[[], None]]:
    """SIGINT to the whole process group (what Ctrl-C in a terminal does) after the first epoch."""

    def interrupt_after_first_epoch(line: str, proc: subprocess.Popen) -> None:
        if re.match(r"epoch +1/", line):
            os.killpg(proc.pid, signal.SIGINT)

    ran = raylift(["train", "--config", str(experiment.config), "--set", "name=interrupted",
                   "--set", "train.epochs=100"], cwd=tmp, on_line=interrupt_after_first_epoch)

    def check() -> None:
        assert re.search(r"^epoch +1/100", ran.stdout, re.M) and "epoch 100/100" not in ran.stdout, ran.stdout
        assert ran.stderr == "raylift train: interrupted\n", ran.stderr

    return ran, check


def workers_take_every_cpu(tmp: Path, experiment: Experiment) -> tuple[Ran, Callable[[], None]]:
    """One worker asks for every CPU of this machine's Ray: no Ray Data task could read a window
    beside it, and the run waited forever without a word."""
    config = tmp / "tiny.yaml"
    config.write_text(yaml.safe_dump(synthetic_cfg(tmp, num_workers=1).to_dict(), sort_keys=False))
    cpus = os.cpu_count()
    ran = raylift(["train", "--config", str(config), "--set", f"train.cpus_per_worker={cpus}"], cwd=tmp)

    def check() -> None:
        assert (f"train.num_workers=1 x train.cpus_per_worker={cpus} plus one Ray Data task (0.25 CPU) need "
                f"{cpus + 0.25:g} CPUs, and this machine's Ray has {cpus}") in ran.stderr, ran.stderr
        assert not (tmp / "datasets").exists() and not list((tmp / "runs").glob("*/checkpoint*"))

    return ran, check


def trial_takes_every_cpu(tmp: Path, experiment: Experiment) -> tuple[Ran, Callable[[], None]]:
    """A tune whose one trial cannot be placed on this machine's Ray: the trial's Train run waited
    forever for its worker (150 s at "0.01/2 CPUs" before it was killed, on the old code)."""
    config = tmp / "tune.yaml"
    config.write_text(yaml.safe_dump(tune_demo_raw(tmp), sort_keys=False))
    cpus = os.cpu_count()
    ran = raylift(["tune", "--config", str(config), "--set", f"train.cpus_per_worker={cpus}"], cwd=tmp)

    def check() -> None:
        assert (f"one trial needs {cpus + 0.25 + 0.01:g} CPU: train.num_workers=1 worker(s) of {cpus} CPU, one Ray "
                f"Data task and the trial's driver (0.01 CPU); this machine's Ray has {cpus}") in ran.stderr, ran.stderr
        assert not (tmp / "datasets").exists() and not list((tmp / "tune").glob("*/*.yaml"))

    return ran, check


CASES: dict[str, tuple[Case, int]] = {  # case: (how it runs, its exit status)
    "empty config": (config_case("", "no settings"), 2),
    "config that is a list": (config_case("- name: x\n- train: {}\n", "got a list"), 2),
    "python tag": (config_case("name: x\ntrain: !!python/object/apply:os.system ['true']\n",
                               ", line 2: the tag !!python/object/apply:os.system is not allowed"), 2),
    "unknown key": (config_case("name: x\ntrian: {epochs: 1}\n", "unknown key 'trian'"), 2),
    "missing argument": (missing_argument, 2),
    "internal error": (internal_error, 1),
    "locked run directory": (locked_run_directory, 2),
    "damaged shard": (damaged_shard, 2),
    "Ctrl-C": (ctrl_c, 130),
    "workers take every CPU": (workers_take_every_cpu, 2),
    "a trial takes every CPU": (trial_takes_every_cpu, 2),
}
ON_THE_EXPERIMENT = ("damaged shard", "Ctrl-C")  # Ray runs on the module's experiment


@pytest.mark.parametrize("case", [pytest.param(name, marks=pytest.mark.slow) if name in ON_THE_EXPERIMENT
                                  else name for name in CASES])
def test_each_failure_ends_in_one_line_and_its_status(case, tmp_path, request):
    run, status = CASES[case]
    experiment = request.getfixturevalue("experiment") if case in ON_THE_EXPERIMENT else None
    ran, check = run(tmp_path, experiment)
    lines = ran.error_lines()
    assert (ran.returncode, len(lines)) == (status, 1), (ran.returncode, len(lines), ran.stderr[-5000:],
                                                         ran.stdout[-3000:])  # e.g. did the Ctrl-C case see its epoch line?
    assert lines[0].startswith("raylift "), lines
    check()


@pytest.mark.slow
def test_successful_runs_print_raylifts_lines_only(experiment, tmp_path):
    """Issue 24 defect 6: Ray's own lines (its warnings, such as token authentication's at
    `ray.init`, a controller's traceback, colour codes) stay off a console that is not a terminal,
    for `raylift train` (Ray Train's controller and worker) and `raylift evaluate` (Ray Data in the
    driver)."""
    checkpoint = experiment.root / "runs" / "tiny" / "checkpoint_epoch0001"
    evaluated = raylift(["evaluate", "--checkpoint", str(checkpoint), "--data", str(experiment.dataset)], cwd=tmp_path)
    for ran, expect in ((experiment.first, ("training mixste", "epoch 1/1", "best checkpoint:")),
                        (evaluated, ("frame-wise",))):
        assert ran.returncode == 0 and ran.stderr == "", ran.stderr
        for noise in RAY_LINES:
            assert noise not in ran.stdout, noise
        assert all(text in ran.stdout for text in expect), ran.stdout


def test_a_full_disk_says_what_the_checkpoint_needs_and_what_is_free(tmp_path):
    """Issue 24 defect 7: "2.1 MB free" for a 1.7 MB checkpoint read as if it fitted; the refusal
    counts the room a copy must leave, so its two numbers show why."""
    message = str(disk_full(open_location(str(tmp_path / "checkpoint_epoch0002")), 1_720_000, 2, free=2_100_000))
    assert "it needs 2.7 MB (1.7 MB of files and 1.0 MB to spare) and 2.1 MB are free" in message, message
    assert len(message.splitlines()) == 1
