"""`raylift bench fidelity --official-dir DIR --model mixste|poseformer --config C`: train raylift
and the authors' own training script with the same recipe and data, and print them side by side.

The authors' side runs their script unmodified (MixSTE `run.py`, PoseFormer `run_poseformer.py`)
in a subprocess, in a work directory `<out>/official/` whose `data/` links to the config's
VideoPose3D-format files. Run-time shims (no official file is edited):
- `common.h36m_dataset.Human36mDataset` is replaced by `VideoPose3DDataset` below, modelled on
  VideoPose3D's `common/custom_dataset.py`: the config's 17-joint `data_3d` and cameras JSON, the
  H36M 17-joint skeleton. The scripts are run with `-d h36m` because MixSTE's loss weights exist
  only for that name (with `-d custom` its `w_mpjpe` is undefined).
- `torch.Tensor.cuda` returns the tensor itself (MixSTE builds `torch.tensor(w).cuda()`
  unconditionally); every other `.cuda()` in both scripts is behind `torch.cuda.is_available()`.
- `torch.utils.tensorboard` gets a no-op `SummaryWriter` when tensorboard is not installed (both
  scripts import it at the top; `--nolog` keeps it unused).
- `torch.load` of a checkpoint the script itself wrote in the work directory passes
  `weights_only=False` (their checkpoints hold a numpy RandomState, refused by torch >= 2.6's
  weights-only default when the script reloads `best_epoch.bin` for the final evaluation).
- the import stubs of `pipelines/bench/official.py` (`local_attention` for MixSTE).
- Python's, NumPy's and torch's generators are seeded with the run's seed before the script
  starts (`--seeds`): the scripts seed nothing themselves, so unseeded runs of them differ.

Recipe mapping (config → authors' flags): subjects `-str/-ste`, T `-f` (and `-s` = T for MixSTE, so
one step is `train.batch_size` windows), `-b` = batch_size·T (MixSTE) or batch_size frames
(PoseFormer), `-e` epochs, `-lr`, `-lrd` = `train.lr_decay`, `-cs/-dep` the MixSTE width and
depth. Fixed by the scripts and matched by the config: AdamW with weight decay 0.1, 8 heads,
drop-path 0.1, flipped copies of every training window, test-time flip, the best epoch chosen on
the test subjects. PoseFormer's script hard-codes spatial dim 32 and depth 4.

`--seeds 0 1 2` runs both sides once per seed (raylift with `train.seed` set to it), each into
`<out>/<name>/seed<s>/`. `--receipt FILE` then writes the reproduction receipt, a small Markdown
file kept beside the config: the recipe, both protocols, one row per seed run so far (this call's
and earlier ones' of the same recipe under `<out>`), mean ± sample standard deviation, the commit
and the machine.

Both sides are scored by their own code: raylift's protocol (each real frame once, action-wise
mean) and the authors' (MixSTE: windows from frame 0 with the last one flush with the end;
PoseFormer: VideoPose3D's seq2frame; frame-weighted within an action, then action-wise mean).
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any, Optional

from preprocessing.schema import ConfigError
from pipelines.config import add_location_argument

SCRIPTS = {"mixste": "run.py", "poseformer": "run_poseformer.py"}
_ACTION_RE = re.compile(r"^----(.+)----$")
_P1_RE = re.compile(r"^Protocol #1 Error \(MPJPE\): ([0-9.eE+-]+) mm")
_P2_RE = re.compile(r"^Protocol #2 Error \(P-MPJPE\): ([0-9.eE+-]+) mm")
_EPOCH_RE = re.compile(r"^\[(\d+)\] time ([0-9.]+) lr ")


@dataclass
class SideResult:
    """One implementation's outcome on the shared recipe."""

    name: str
    mpjpe: float  # mm, action-wise mean
    p_mpjpe: float  # mm, action-wise mean
    wall_s: float  # whole run: data preparation, training, evaluation
    epochs: int
    protocol: str


# ----------------------------------------------------------------------------- recipe
def official_arguments(cfg: Any, model: str, checkpoint_dir: str, keypoints: str) -> list[str]:
    """The authors' command-line flags for the recipe of raylift config `cfg`."""
    src, win, tc, m = cfg.data.source, cfg.data.windows, cfg.train, cfg.model
    if m.name != model:
        raise ConfigError(f"--model {model} but the config's model.name is {m.name!r}")
    if src.kind not in ("generic", "h36m") or not src.train_subjects or not src.test_subjects:
        raise ConfigError("data.source must be generic (or h36m) with train_subjects and test_subjects "
                          f"listed, got kind={src.kind!r}")
    if not win.flip or not cfg.eval.flip:
        raise ConfigError("the authors' scripts always flip (training copies and test time): "
                          "set data.windows.flip and eval.flip to true")
    if tc.optimizer != "adamw" or tc.weight_decay != 0.1:
        raise ConfigError("the authors' scripts use AdamW with weight decay 0.1: set train.optimizer=adamw "
                          f"and train.weight_decay=0.1 (got {tc.optimizer}, {tc.weight_decay})")
    if m.heads != 8 or m.drop_path_rate != 0.1:
        raise ConfigError(f"the authors' scripts fix 8 heads and drop-path 0.1 (got {m.heads}, {m.drop_path_rate})")
    args = ["-d", "h36m", "-k", keypoints, "-str", ",".join(src.train_subjects),
            "-ste", ",".join(src.test_subjects), "-f", str(win.frames), "-e", str(tc.epochs),
            "-lr", repr(tc.lr), "-lrd", repr(tc.lr_decay), "-c", checkpoint_dir,
            "--checkpoint-frequency", "100000"]  # PoseFormer has no -cf short form
    if model == "mixste":
        if win.mode != "seq2seq" or win.effective_stride != win.frames:
            raise ConfigError("MixSTE's script trains on non-overlapping seq2seq windows: set "
                              "data.windows.mode=seq2seq without a stride")
        args += ["-s", str(win.frames), "-b", str(tc.batch_size * win.frames), "-cs", str(m.dim),
                 "-dep", str(m.depth), "--nolog"]
    elif model == "poseformer":
        if win.mode != "seq2frame" or win.effective_stride != 1:
            raise ConfigError("PoseFormer's script trains on every frame (seq2frame, stride 1)")
        if m.spatial_dim != 32 or m.depth != 4:
            raise ConfigError(f"run_poseformer.py hard-codes spatial dim 32 and depth 4 (got {m.spatial_dim}, {m.depth})")
        args += ["-s", "1", "-b", str(tc.batch_size)]
    else:
        raise ConfigError(f"--model must be one of {sorted(SCRIPTS)}, got {model!r}")
    return args


# ----------------------------------------------------------------------------- authors' log
def parse_official_log(text: str) -> dict[str, Any]:
    """Per-action MPJPE/P-MPJPE of the final evaluation and the per-epoch minutes, from the
    authors' stdout. The action-wise means are recomputed unrounded (the script prints 0.1 mm)."""
    actions: dict[str, dict[str, float]] = {}
    epochs: list[float] = []
    current: Optional[str] = None
    for line in text.splitlines():
        line = line.strip()
        if (m := _EPOCH_RE.match(line)):
            epochs.append(float(m.group(2)))
        elif (m := _ACTION_RE.match(line)):
            current = m.group(1)
        elif current and (m := _P1_RE.match(line)):
            actions.setdefault(current, {})["mpjpe"] = float(m.group(1))
        elif current and (m := _P2_RE.match(line)):
            actions.setdefault(current, {})["p_mpjpe"] = float(m.group(1))
    complete = {a: v for a, v in actions.items() if "mpjpe" in v and "p_mpjpe" in v}
    if not complete:
        raise ConfigError("the authors' script printed no per-action 'Protocol #1/#2' lines: see its log")
    return {
        "actions": complete,
        "mpjpe": sum(v["mpjpe"] for v in complete.values()) / len(complete),
        "p_mpjpe": sum(v["p_mpjpe"] for v in complete.values()) / len(complete),
        "epoch_minutes": epochs,
    }


# ----------------------------------------------------------------------------- run both
def _link(target: str, link: str) -> None:
    if os.path.lexists(link):
        os.remove(link)
    os.symlink(os.path.abspath(target), link)


def run_official(cfg: Any, model: str, official_dir: str, out_dir: str, seed: int, progress=print) -> SideResult:
    """Run the authors' script on the config's data and recipe, its generators seeded with `seed`;
    its log goes to `<out>/official.log`."""
    script = os.path.join(os.path.abspath(official_dir), SCRIPTS[model])
    if not os.path.isfile(script):
        raise ConfigError(f"--official-dir {official_dir}: {SCRIPTS[model]} not found (expected the authors' "
                          f"{model} repository)")
    src = cfg.data.source
    work = os.path.join(os.path.abspath(out_dir), "official")
    os.makedirs(os.path.join(work, "data"), exist_ok=True)
    keypoints = "raylift"
    _link(src.data_3d, os.path.join(work, "data", "data_3d_h36m.npz"))
    _link(src.data_2d, os.path.join(work, "data", f"data_2d_h36m_{keypoints}.npz"))
    args = official_arguments(cfg, model, os.path.join(work, "checkpoint"), keypoints)
    here = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([here, os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    # The script runs in `work`, so every path it is handed is absolute.
    cmd = [sys.executable, "-m", "pipelines.bench.fidelity", os.path.abspath(official_dir), script,
           os.path.abspath(src.cameras), str(seed), "--", *args]
    progress(f"authors' code (seed {seed}): " + " ".join(cmd[cmd.index("--") + 1:]))
    log_path = os.path.join(os.path.abspath(out_dir), "official.log")
    start = time.perf_counter()
    with open(log_path, "w") as log:
        rc = subprocess.run(cmd, cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT).returncode
    wall = time.perf_counter() - start
    with open(log_path) as f:
        text = f.read()
    if rc != 0:
        last = (text.strip().splitlines() or ["(no output)"])[-1]
        raise ConfigError(f"the authors' script exited with status {rc}; its last line: {last} (all of it: {log_path})")
    parsed = parse_official_log(text)
    protocol = ("MixSTE run.py: windows from frame 0, last window flush with the end (overlap counted twice)"
                if model == "mixste" else "VideoPose3D seq2frame: every frame, receptive field T")
    return SideResult("authors' code", parsed["mpjpe"], parsed["p_mpjpe"], wall, len(parsed["epoch_minutes"]),
                      protocol + "; test-time flip; best epoch on the test subjects; action-wise mean; fp32; "
                      "a uniform permutation of the training windows every epoch")


def run_raylift(cfg: Any, out_dir: str, progress=print) -> SideResult:
    """raylift train (Ray Train, then evaluation of the best checkpoint) on the same recipe."""
    from pipelines.train.driver import run_training

    start = time.perf_counter()
    outcome = run_training(cfg, storage_path=os.path.join(os.path.abspath(out_dir), "raylift"), progress=progress)
    wall = time.perf_counter() - start
    if outcome.evaluation is None:
        raise ConfigError("raylift produced no evaluation (is train.evaluate false?)")
    ev = outcome.evaluation
    mean, spec = ev["results"]["model"]["group_mean"], ev["protocol_spec"]
    return SideResult("raylift", float(mean["mpjpe"]), float(mean["p_mpjpe"]), wall, len(outcome.history),
                      f"{ev['protocol']}; {spec['checkpoint']}; action-wise mean; {spec['precision']}; "
                      f"{spec['training order']}")


def comparison_table(sides: list[SideResult], reference: str = "authors' code") -> str:
    """Markdown table of the sides, with each one's MPJPE relative to the reference side."""
    from pipelines.viz.tables import render_table

    ref = next((s for s in sides if s.name == reference), None)
    rows = [[s.name, f"{s.mpjpe:.2f}", f"{s.p_mpjpe:.2f}",
             f"{(s.mpjpe / ref.mpjpe - 1) * 100:+.1f}%" if ref is not None and ref.mpjpe > 0 else "n/a",
             f"{s.wall_s:.0f}", s.epochs, s.protocol] for s in sides]
    return render_table(["implementation", "MPJPE (mm)", "P-MPJPE (mm)", "vs authors (MPJPE)", "wall-clock (s)",
                         "epochs", "protocol"], rows, markdown=True)


# ----------------------------------------------------------------------------- CLI
def add_arguments(parser: argparse.ArgumentParser) -> None:
    from pipelines.config import add_config_arguments

    add_config_arguments(parser)
    add_location_argument(parser, "--official-dir", role="input", required=True, help="a checkout of the authors' repository")
    parser.add_argument("--model", required=True, choices=sorted(SCRIPTS))
    add_location_argument(parser, "--out", role="output", default="runs/fidelity", help="work directory for both runs and the table")
    parser.add_argument("--skip-raylift", action="store_true", help="run only the authors' code")
    parser.add_argument("--skip-official", action="store_true", help="run only raylift")
    parser.add_argument("--seeds", type=int, nargs="*", metavar="S",
                        help="run both sides once per seed (default: the config's train.seed); with no seed, "
                             "run nothing and (re)write --receipt from the seeds already run under --out")
    add_location_argument(parser, "--receipt", role="output", metavar="FILE",
                          help="write the reproduction receipt (every seed run under --out for this recipe), "
                               "e.g. configs/<name>.receipt.md")


def recipe_line(cfg: Any) -> str:
    """The shared recipe in one line: what both sides were asked to train."""
    src = cfg.data.source
    return (f"{cfg.model.name} {json.dumps(cfg.model.__dict__)}, T={cfg.data.windows.frames}, "
            f"train {','.join(src.train_subjects)} / test {','.join(src.test_subjects)}, "
            f"{cfg.train.epochs} epochs, {cfg.train.batch_size} windows/step, AdamW lr {cfg.train.lr} "
            f"wd {cfg.train.weight_decay} ×{cfg.train.lr_decay}/epoch, 2D {src.data_2d}")


def run_seed(cfg: Any, args: argparse.Namespace, seed: int, out: str) -> dict[str, Any]:
    """Both sides (unless skipped) with one seed, into `<out>/seed<seed>/`; returns the record
    written there as fidelity.json."""
    from preprocessing.version import source_commit

    where = os.path.join(out, f"seed{seed}")
    os.makedirs(where, exist_ok=True)
    cfg = copy.deepcopy(cfg)
    cfg.train.seed = seed
    sides = []
    if not args.skip_official:
        sides.append(run_official(cfg, args.model, args.official_dir, where, seed))
    if not args.skip_raylift:
        sides.append(run_raylift(cfg, where))
    record = {"seed": seed, "recipe": recipe_line(cfg), "sides": [s.__dict__ for s in sides],
              "commit": source_commit(), "finished": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
              "machine": f"{os.cpu_count()} CPU cores, torch {__import__('torch').__version__}"}
    table = comparison_table(sides)
    print(f"seed {seed}:\n{table}")
    with open(os.path.join(where, "fidelity.md"), "w") as f:
        f.write(table + "\n\nrecipe: " + record["recipe"] + "\n")
    with open(os.path.join(where, "fidelity.json"), "w") as f:
        json.dump(record, f, indent=1)
    return record


def seed_records(out: str, recipe: str) -> list[dict[str, Any]]:
    """Every seed's record under `out` whose recipe is `recipe` (runs of an edited config are not
    mixed in), by seed."""
    records = []
    for entry in sorted(os.listdir(out)) if os.path.isdir(out) else []:
        path = os.path.join(out, entry, "fidelity.json")
        if re.fullmatch(r"seed\d+", entry) and os.path.isfile(path):
            with open(path) as f:
                record = json.load(f)
            if record.get("recipe") == recipe:
                records.append(record)
    return sorted(records, key=lambda r: r["seed"])


def _mean_spread(values: list[float]) -> str:
    """`mean ± sample sd`, or the one value with n = 1 said."""
    import numpy as np

    if len(values) == 1:
        return f"{values[0]:.2f} (one seed)"
    return f"{np.mean(values):.2f} ± {np.std(values, ddof=1):.2f}"


def receipt_markdown(config_path: str, records: list[dict[str, Any]]) -> str:
    """The reproduction receipt: recipe, protocols, one row per seed, mean ± sd, provenance."""
    from pipelines.viz.tables import render_table

    if not records:
        raise ConfigError("no seed has finished for this recipe yet: nothing to write in the receipt")
    names = [s["name"] for s in records[0]["sides"]]
    by_side = {n: [next(s for s in r["sides"] if s["name"] == n) for r in records] for n in names}
    header = ["seed"] + [f"{n}: MPJPE / P-MPJPE (mm)" for n in names] + [f"{n}: wall-clock (s)" for n in names]
    rows = [[str(r["seed"])] + [f"{by_side[n][i]['mpjpe']:.2f} / {by_side[n][i]['p_mpjpe']:.2f}" for n in names]
            + [f"{by_side[n][i]['wall_s']:.0f}" for n in names] for i, r in enumerate(records)]
    rows.append([f"mean ± sd (n={len(records)})"]
                + [f"{_mean_spread([s['mpjpe'] for s in by_side[n]])} / {_mean_spread([s['p_mpjpe'] for s in by_side[n]])}"
                   for n in names] + ["" for _ in names])
    lines = [f"# Reproduction receipt: `{os.path.basename(config_path)}`", "",
             f"Written by `raylift bench fidelity --config {config_path} --seeds ... --receipt ...`. "
             "Each seed trains both implementations from scratch on the same data and recipe; each is "
             "scored by its own code's protocol.", "",
             render_table(header, rows, markdown=True), ""]
    if "authors' code" in by_side and "raylift" in by_side:
        diffs = [(r["mpjpe"] / a["mpjpe"] - 1) * 100 for a, r in zip(by_side["authors' code"], by_side["raylift"])]
        lines += [f"raylift vs the authors' code, MPJPE: {_mean_spread(diffs)} % "
                  "(per seed: " + ", ".join(f"{d:+.1f}%" for d in diffs) + ").", ""]
    lines += ["Wall-clock: each whole run (data preparation, Ray's start, training, evaluation), comparable "
              "only between runs on an equally loaded machine.", ""]
    lines += ["## Recipe", "", records[0]["recipe"], "", "## Protocols", ""]
    for n in names:  # one line per side, or per seed where the protocols name the seed
        seen = list(dict.fromkeys(s["protocol"] for s in by_side[n]))
        lines += ([f"- {n}: {seen[0]}"] if len(seen) == 1 else
                  [f"- {n}, seed {r['seed']}: {s['protocol']}" for r, s in zip(records, by_side[n])])
    lines += ["", "## Provenance", ""]
    lines += [f"- seed {r['seed']}: commit {r['commit']}, finished {r['finished']}, {r['machine']}" for r in records]
    return "\n".join(lines) + "\n"


def run(args: argparse.Namespace) -> int:
    from pipelines.config import load_config
    from preprocessing.store import storage

    cfg = load_config(args.config, args.overrides)
    out = os.path.join(args.out, f"{cfg.name}")
    os.makedirs(out, exist_ok=True)
    official_arguments(cfg, args.model, "checkpoint", "raylift")  # refuse a recipe the script cannot run, first
    if args.seeds == [] and not args.receipt:
        raise ConfigError("--seeds without a seed runs nothing: give seeds, or --receipt FILE to write the receipt")
    for seed in args.seeds if args.seeds is not None else [cfg.train.seed]:
        run_seed(cfg, args, seed, out)
    if args.receipt:
        text = receipt_markdown(args.config, seed_records(out, recipe_line(cfg)))
        storage.write_bytes(storage.open_location(args.receipt), text.encode())
        print(text)
        print(f"receipt: {args.receipt}")
    return 0


# ----------------------------------------------------------------------------- subprocess side
def _videopose3d_dataset(cameras_json: str) -> type:
    """A `MocapDataset` for a 17-joint VideoPose3D `data_3d` and a cameras JSON, built from the
    authors' own classes (imported from their `common/`), like VideoPose3D's custom_dataset.py."""
    import copy

    import numpy as np
    from common.camera import normalize_screen_coordinates
    from common.h36m_dataset import h36m_skeleton
    from common.mocap_dataset import MocapDataset

    with open(cameras_json) as f:
        cams = json.load(f)

    class VideoPose3DDataset(MocapDataset):
        def __init__(self, path, remove_static_joints=True):
            super().__init__(fps=50, skeleton=copy.deepcopy(h36m_skeleton))
            self._data = {}
            self.remove_joints([4, 5, 9, 10, 11, 16, 20, 21, 22, 23, 24, 28, 29, 30, 31])
            self._skeleton._parents[11] = 8
            self._skeleton._parents[14] = 8
            self._cameras = {}
            for subject, extrinsics in cams["extrinsics"].items():
                self._cameras[subject] = []
                for intr, extr in zip(cams["intrinsics"], extrinsics):
                    cam = {**copy.deepcopy(intr), **copy.deepcopy(extr)}
                    for k, v in cam.items():
                        if k not in ("id", "res_w", "res_h"):
                            cam[k] = np.array(v, dtype="float32")
                    cam["center"] = normalize_screen_coordinates(cam["center"], w=cam["res_w"], h=cam["res_h"]).astype("float32")
                    cam["focal_length"] = cam["focal_length"] / cam["res_w"] * 2
                    cam["translation"] = cam["translation"] / 1000  # mm to metres
                    cam["intrinsic"] = np.concatenate((cam["focal_length"], cam["center"],
                                                       cam["radial_distortion"], cam["tangential_distortion"]))
                    self._cameras[subject].append(cam)
            data = np.load(path, allow_pickle=True)["positions_3d"].item()
            for subject, actions in data.items():
                self._data[subject] = {a: {"positions": p, "cameras": self._cameras[subject]} for a, p in actions.items()}

        def supports_semi_supervised(self):
            return True

    return VideoPose3DDataset


def _run_script(official_dir: str, script: str, cameras_json: str, seed: str, argv: list[str]) -> None:
    """In the subprocess: install the shims listed in the module docstring and run the script."""
    import random
    import runpy
    import types

    import numpy as np
    import torch

    from models.timm_loader import import_timm
    from pipelines.bench.official import register_stubs

    root = os.path.abspath(official_dir)
    sys.path.insert(0, root)
    register_stubs()
    import_timm()  # the scripts import timm, which needs this next to a CPU-only torch
    torch.Tensor.cuda = lambda self, *a, **k: self  # CPU: MixSTE calls .cuda() unconditionally
    work, load = os.getcwd(), torch.load

    def load_own_checkpoint(f, *a, **k):
        # The scripts save a numpy RandomState in their checkpoints, which torch >= 2.6's
        # weights-only default refuses; files the script wrote in this work directory are trusted.
        if isinstance(f, (str, os.PathLike)) and os.path.abspath(f).startswith(work + os.sep):
            k.setdefault("weights_only", False)
        return load(f, *a, **k)

    torch.load = load_own_checkpoint
    try:
        import torch.utils.tensorboard  # noqa: F401
    except ImportError:
        tb = types.ModuleType("torch.utils.tensorboard")
        tb.SummaryWriter = type("SummaryWriter", (), {"__init__": lambda self, *a, **k: None,
                                                      "__getattr__": lambda self, n: (lambda *a, **k: None)})
        sys.modules["torch.utils.tensorboard"] = tb
    import common.h36m_dataset as h36m

    h36m.Human36mDataset = _videopose3d_dataset(cameras_json)
    random.seed(int(seed))
    np.random.seed(int(seed))
    torch.manual_seed(int(seed))
    sys.argv = [script, *argv]
    runpy.run_path(script, run_name="__main__")


if __name__ == "__main__":
    # python -m pipelines.bench.fidelity OFFICIAL_DIR SCRIPT CAMERAS_JSON SEED -- SCRIPT_ARGS...
    sep = sys.argv.index("--")
    _run_script(*sys.argv[1:5], sys.argv[sep + 1:])
