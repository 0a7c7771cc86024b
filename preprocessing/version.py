"""raylift's version: the one place it is written.

It lives on the ground floor because checkpoints (`models/`) and dataset manifests
(`preprocessing/`) record it, and `pyproject.toml` reads it from here.
"""

__version__ = "0.1.0"
