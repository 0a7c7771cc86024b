"""raylift preprocessing, the ground floor: from files on disk to Parquet windows.

    source files (sources.py: h36m, generic VideoPose3D, mpi3dhp, synthetic)
    → sequences (sequences.py; cameras.py, skeleton.py, keypoint_formats.py)
    → windows (windows.py: seq2seq / seq2frame, flip, multi-view)
    → shards + manifest (shards.py, manifest.py, storage.py: local or object store)
    → worker batches (readers.py: Ray Data)

Also here, because every floor above uses them: `schema.py` (dataclass configs from YAML, validated
with the key's name in every error), `version.py`, `errors.py` (`DataError`), and `safe_npz.py`
(the field's pickled npz files, loaded without running code).
"""
