"""The `raylift` command line.

Each command lives in its own module exposing `add_arguments(parser)` and `run(args) -> int`.
Modules are imported only when their command runs (Ray and torch are slow to import), so
`raylift --help` stays instant. User errors (bad config, bad input files, bad checkpoints) print
one clear line to stderr and exit with status 2; anything else is a bug and keeps its traceback.
"""
from __future__ import annotations

import argparse
import importlib
import sys

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
    "bench": ("pipelines.bench.benchmarks", "benchmarks: data, model, train, suite, order, images, fidelity"),
    "submit": ("cluster.submit", "submit a raylift command as a Ray job"),
    "jobs": ("cluster.jobs", "list, follow and stop Ray jobs"),
    "cluster": ("cluster.local", "start/stop a multi-node Ray cluster on 127.0.0.1"),
}


VERBOSE_HELP = "also show Ray's own log lines (by default they only go to Ray's log files)"


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
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
    # Before anything imports Ray: its log filter is read at import (cluster/console.py).
    from cluster.console import configure, wants_verbose

    configure(wants_verbose(argv))
    command = _command_of(argv)
    parser = build_parser(command)
    args = parser.parse_args(argv)
    module = importlib.import_module(COMMANDS[args.command][0])
    from pipelines.config import user_error_types

    errors = user_error_types()
    try:
        return int(module.run(args) or 0)
    except errors as e:
        print(f"raylift {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"raylift {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
