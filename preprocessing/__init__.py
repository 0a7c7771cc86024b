"""raylift preprocessing, the ground floor: from files on disk to Parquet windows and back.

    source files (sources/: h36m, generic VideoPose3D, mpi3dhp, synthetic; user 2D files)
    → sequences (sequences.py; cameras.py, skeleton.py)
    → windows (keypoints/windows.py: seq2seq / seq2frame, flip, multi-view)
      or person crops (images/: render, crops)
    → shards + manifest (keypoints/dataset.py, images/dataset.py through store/writer.py;
      store/: storage, lease, manifest)
    → worker batches (keypoints/readers.py, images/readers.py over store/parquet.py; Ray Data)

Floors inside the package (a module imports its own floor or a lower one): the ground
(`errors.py`, `version.py`, `schema.py`: dataclass configs from YAML, validated with the key's
name in every error; `config.py`: the `data:` section) < the conventions (`skeleton.py`,
`cameras.py`, `sequences.py`) < `sources/` and `store/` < `keypoints/` and `images/`.
"""
