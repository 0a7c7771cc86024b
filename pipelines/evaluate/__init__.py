"""`raylift evaluate` and `raylift infer`: from a checkpoint to numbers and 3D poses.

    windows (shards or a 2D file) → prediction.py (model, test-time flip) → windows.py (stitch
    per-window outputs back into whole sequences) → metrics.py (MPJPE, P-MPJPE, N-MPJPE, MPJVE,
    PCK/AUC) → protocols.py (per-activity tables, action-wise and frame-wise averages)

- `protocols.py`: the `evaluate` command and the evaluation protocols and their tables.
- `metrics.py`: pure numpy metric functions, unit-tested on hand-computed cases.
- `prediction.py`: batched model forward passes with flip averaging.
- `windows.py`: how a whole sequence is cut into inference windows and stitched back.
- `infer.py`: the `infer` command: a 2D keypoint file (COCO-17 or H36M-17) lifted to 3D.
"""
