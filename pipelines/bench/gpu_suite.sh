#!/usr/bin/env bash
# The GPU figures in one device call: the raylift-vs-authors table, a profile, and a short Ray Train run.
#
# On the GPU machine (CUDA torch, no Ray, no package index), from the repository root, with the
# devicekit carried as .devicekit/ and the authors' checkouts as .official/<model>/ (ignored paths):
#   bash pipelines/bench/gpu_suite.sh
# writes to $OUT: bench.jsonl, bench.md, suite.log, profile_mixste243.txt, train.log, metrics.csv,
# summary.md (7 files: the device tool returns at most 8).
# CPU proof with tiny sizes: TINY=1 OUT=/tmp/suite PYTHON=.venv/bin/python bash pipelines/bench/gpu_suite.sh
# Knobs: BUDGET (seconds the table may start new measurements, default 360), COMPILE_MODES
# (default "default"; e.g. "default,reduce-overhead"), OFFICIAL (default .official).
set -uo pipefail
: "${OUT:?set OUT to the results folder}"
mkdir -p "$OUT"
TINY=${TINY:-0}
OFFICIAL=${OFFICIAL:-.official}
BUDGET=${BUDGET:-360}
COMPILE_MODES=${COMPILE_MODES:-default}
PY=${PYTHON:-python3}
WORK=${WORK:-/tmp/raylift_suite}
if [ -d .devicekit ] && ! "$PY" -c "import ray" 2>/dev/null; then
  bash .devicekit/install.sh || exit 1
  export PYTHONPATH=/tmp/site:$PWD
fi
export PYTHONPATH=${PYTHONPATH:-$PWD} PYTHONUNBUFFERED=1 RAY_DATA_DISABLE_PROGRESS_BARS=1
for m in mixste poseformer crossformer fusionformer; do
  [ -d "$OFFICIAL/$m/common" ] || { echo "missing $OFFICIAL/$m/common (the authors' $m checkout)"; exit 2; }
done

if [ "$TINY" = 1 ]; then
  suite=(--tiny --threads 1)
  prof=(--threads 1 --frames 9 --batch 2 --set model.dim=16 --set model.depth=1 --set model.heads=2)
  train=(--set train.use_gpu=false --set data.windows.frames=9 --set model.dim=16 --set model.depth=1
         --set model.heads=2 --set data.source.synthetic.frames_per_action=100 --set train.epochs=2
         --set train.cpus_per_worker=1 --set train.batch_size=2 --set train.max_windows_per_epoch=64
         --set train.max_val_windows=32)
  frames=9 batch=2
else
  suite=()
  prof=(--frames 243 --batch 16)
  train=()
  frames=243 batch=16
fi

echo "== table (budget ${BUDGET}s)"
"$PY" -m pipelines.cli bench suite --official-root "$OFFICIAL" --out "$OUT" --budget-s "$BUDGET" \
  --compile-modes "$COMPILE_MODES" "${suite[@]}" 2>&1 | tee "$OUT/suite.log"

echo "== profile of raylift MixSTE (2 steps, eager)"
"$PY" -m pipelines.cli bench train --model mixste "${prof[@]}" --steps 1 --warmup 1 \
  --profile "$OUT/profile_mixste243.txt" 2>&1 | tail -5

echo "== Ray Train: configs/bench_mixste243_gpu.yaml, 1 worker"
rm -rf "$WORK"
"$PY" -m pipelines.cli train --config configs/bench_mixste243_gpu.yaml "${train[@]}" \
  --set train.storage_path="$WORK/runs" --set data.root="$WORK/datasets" \
  --set data.source.synthetic.out_dir="$WORK/synthetic" 2>&1 | tee "$OUT/train.log"
cp "$WORK/runs/bench_mixste243_gpu/metrics.csv" "$OUT/metrics.csv" 2>/dev/null || echo "no metrics.csv from the Ray Train run"

echo "== summary"
"$PY" -m pipelines.cli bench suite --official-root "$OFFICIAL" --out "$OUT" --summarize "$OUT/metrics.csv" \
  --train-frames "$frames" --train-batch "$batch"
