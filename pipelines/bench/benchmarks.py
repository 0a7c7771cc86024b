"""`raylift bench {data,model,train,suite,order,images,relations,infer,fidelity,search}`: benchmarks that report figures, never pass/fail on time.

Each benchmark lives in its own module (`pipelines.bench.<name>`) with `add_arguments`/`run`.
"""
from __future__ import annotations

import argparse
import importlib

BENCHMARKS = {
    "data": ("pipelines.bench.data", "preprocessing and read-back throughput (windows/s, bytes/window)"),
    "model": ("pipelines.bench.model", "forward+backward step time of each model at a small batch"),
    "train": ("pipelines.bench.train", "training frames/s, peak memory and TFLOP/s for one model"),
    "suite": ("pipelines.bench.suite", "the GPU table: every model next to the authors' code, eager/compiled, bf16/fp32"),
    "order": ("pipelines.bench.order", "training order: same-sequence neighbours per batch against a uniform "
                                       "permutation, and ingest windows/s"),
    "images": ("pipelines.bench.images", "person crops: images decoded and cropped per second per core, bytes per image"),
    "relations": ("pipelines.bench.relations", "MPSTR's relations module against the same parameters masked and the "
                                               "no-relations baseline, over seeds (mean ± sd)"),
    "infer": ("pipelines.bench.infer", "CPU inference of one checkpoint in PyTorch, TorchScript and ONNX Runtime: "
                                       "offline frames/s and streaming latency"),
    "fidelity": ("pipelines.bench.fidelity", "train raylift and the authors' script on one recipe; MPJPE side by side"),
    "search": ("pipelines.bench.search", "tune searches (random, optuna, ...) at one trial budget: best validation "
                                         "metric after k trials, mean ± sd over seeds"),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="bench", metavar="BENCHMARK", required=True)
    for name, (module, help_text) in BENCHMARKS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        importlib.import_module(module).add_arguments(p)


def run(args: argparse.Namespace) -> int:
    return importlib.import_module(BENCHMARKS[args.bench][0]).run(args)
