"""The `raylift` command line.

Each command lives in its own module exposing `add_arguments(parser)` and `run(args) -> int`.
Modules are imported only when their command runs (Ray and torch are slow to import), so
`raylift --help` stays instant.

Every failure ends in one line on stderr: a user error (a bad argument, config, input file or
checkpoint; also one raised inside a Ray worker, Ray Train worker or Ray Data task) exits with
status 2; Ctrl-C with 130; anything else is a bug and exits with 1, its traceback written to a file
under `<temp dir>/raylift-logs/` that the line names (and printed too with `--verbose`).
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import NoReturn

# command -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "preprocess": ("pipelines.data.preprocess", "build Parquet windows from a dataset (Ray Data)"),
    "data": ("pipelines.data.admin", "list, verify and show preprocessed datasets"),
    "train": ("pipelines.train.driver", "train a lifter with Ray Train, then evaluate it"),
    "evaluate": ("pipelines.evaluate.command", "evaluate a checkpoint with the field's protocols"),
    "predict2d": ("pipelines.evaluate.predict2d", "predict 2D for every frame of an image dataset (VideoPose3D 2D file)"),
    "two-stage": ("pipelines.twostage.driver", "images -> 2D model -> predicted 2D -> lifter -> 3D, one config"),
    "tune": ("pipelines.tune.driver", "search frame counts, depths and more with Ray Tune"),
    "infer": ("pipelines.evaluate.infer", "lift 2D keypoint sequences to 3D with a checkpoint"),
    "viz": ("pipelines.viz.commands", "render skeleton animations, training curves and result plots"),
    "models": ("pipelines.models.tools", "model summaries and official checkpoint import"),
    "export": ("pipelines.models.export", "a lifter checkpoint as ONNX or TorchScript, checked against PyTorch"),
    "bench": ("pipelines.bench.benchmarks", "benchmarks: data, model, train, suite, order, images, relations, infer, fidelity, search"),
    "submit": ("cluster.submit", "submit a raylift command as a Ray job"),
    "jobs": ("cluster.jobs", "list, follow and stop Ray jobs"),
    "cluster": ("cluster.local", "start/stop a multi-node Ray cluster on 127.0.0.1"),
}


VERBOSE_HELP = "also show Ray's own log lines (by default they only go to Ray's log files)"
TRACEBACK_DIR = "raylift-logs"  # under the temp directory: the tracebacks of internal errors


class Parser(argparse.ArgumentParser):
    """argparse with a usage error in one line (what is wrong, and where the usage is), status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    parser = Parser(
        prog="raylift",
        description="3D human pose lifting on Ray: data, models, training, tuning, clusters.",
    )
    from preprocessing.version import __version__

    parser.add_argument("--version", action="version", version=f"raylift {__version__}")
    parser.add_argument("--verbose", action="store_true", help=VERBOSE_HELP)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        # Also after the command; SUPPRESS keeps a top-level `raylift --verbose CMD` set.
        p.add_argument("--verbose", action="store_true", default=argparse.SUPPRESS, help=VERBOSE_HELP)
        if name == command:
            importlib.import_module(module).add_arguments(p)
            p.set_defaults(parser_for=parser_for)  # `submit` checks the command it sends with it
        else:
            # Accept anything until this command is chosen; the real parser is built then.
            p.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    return parser


def parser_for(command: str) -> argparse.ArgumentParser | None:
    """The full parser of `raylift <command>`, or None when there is no such command."""
    return build_parser(command) if command in COMMANDS else None


def _command_of(argv: list[str]) -> str | None:
    for token in argv:
        if token in COMMANDS:
            return token
        if not token.startswith("-"):
            return None
    return None


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # Before anything imports Ray: the Ray processes this one starts inherit the console settings.
    from cluster.console import configure, wants_verbose

    configure(wants_verbose(argv))
    command = _command_of(argv)
    parser = build_parser(command)
    args = parser.parse_args(argv)
    module = importlib.import_module(COMMANDS[args.command][0])
    try:
        return int(module.run(args) or 0)
    except KeyboardInterrupt:
        print(f"raylift {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        return report_failure(args.command, e)


def report_failure(command: str, error: Exception) -> int:
    """Print the one line a failed command ends with and return its exit status: 2 for a user error
    found in `error` or what it wraps, else 1 (a bug) with the traceback saved to a file the line
    names; `--verbose` prints the traceback as well."""
    from cluster.console import verbose
    from pipelines.config import user_error_in

    user = user_error_in(error)
    if user is not None:
        print(f"raylift {command}: error: {user}", file=sys.stderr)
        return 2
    text = "".join(traceback.format_exception(error))
    if verbose():
        print(text, end="", file=sys.stderr)
    saved = save_traceback(command, text)
    what = (str(error).strip().splitlines() or [""])[0]
    print(f"raylift {command}: internal error: {type(error).__name__}: {what} ({saved})", file=sys.stderr)
    return 1


def save_traceback(command: str, text: str) -> str:
    """Write an internal error's traceback to `<temp dir>/raylift-logs/<command>-<time>-<pid>.txt`;
    returns what the error line says about it (the path, or why it could not be written)."""
    name = f"{command}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.txt"
    path = Path(tempfile.gettempdir()) / TRACEBACK_DIR / name
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    except OSError as e:
        return f"traceback not saved: {e}"
    return f"traceback: {path}"


if __name__ == "__main__":
    sys.exit(main())
