"""raylift pipelines: the `raylift` command line, one sub-package per command.

The top floor. Data flows through the commands in this order:

    source files ─ preprocess (`data/`) ─▶ sequences ─▶ windows ─▶ Parquet shards + manifest
    shards ─ train (`train/`) ─▶ worker batches ─▶ model ─▶ checkpoints ─▶ metrics (`evaluate/`)
    train × search space ─ tune (`tune/`) ─▶ trials table, best config

- `cli.py`: the `raylift` entry point; imports a command's module only when it runs.
- `config.py`: the experiment config (`data`, `model`, `train`, `eval`), validated on load.
- `data/`: `raylift preprocess` and `raylift data` (build, list, show, verify datasets).
- `train/`: `raylift train`: the Ray Train driver, the per-worker loop, checkpoints, logs.
- `evaluate/`: `raylift evaluate` and `raylift infer`: protocols, metrics, prediction.
- `tune/`: `raylift tune`: search spaces and the Ray Tune driver.
- `bench/`: `raylift bench`: data, model and training throughput.
- `viz/`: `raylift viz`: animations, training curves, result plots.
- `models/`: `raylift models`: summaries and official checkpoint import.
- `twostage/`: `raylift two-stage`: images → 2D (`mpstr`) → predicted 2D file → a lifter → 3D.

Where Ray runs (session, local cluster, job submission) is `cluster/`; the pieces below it are
`models/` and `preprocessing/`.
"""

from preprocessing.version import __version__

__all__ = ["__version__"]
