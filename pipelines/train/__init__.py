"""`raylift train`: a Ray Train run of one lifter, then evaluation of the chosen checkpoint.

The data flow, driver to workers and back:

    driver.py   config → dataset (prepared or found) → TorchTrainer(worker.train_loop_per_worker)
    worker.py   shard of windows (data.py, Ray Data) → batches → loop.train_step → model
                → validation MPJPE → checkpoints.py (write, keep best + latest) → logs.py
    driver.py   best checkpoint → pipelines.evaluate → results tables

- `loop.py`: the pure training maths (optimiser, schedule, one step, one epoch): no Ray.
- `data.py`: worker-side validation batches read from the dataset's shards.
- `checkpoints.py`: checkpoint names, listing, best/latest choice, local copies of remote ones.
- `logs.py`: `metrics.csv` and TensorBoard scalars, written by rank 0.
"""
