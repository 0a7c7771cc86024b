"""`raylift preprocess` and `raylift data`: datasets as commands.

- `preprocess.py`: source files → sequences → windows → Parquet shards + manifest, through
  `preprocessing.keypoints.dataset.prepare_dataset` (Ray Data); prints a per-split summary.
- `admin.py`: list the datasets under a root, show one manifest, re-hash every shard (`verify`).
"""
