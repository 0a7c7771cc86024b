"""raylift's version: the one place it is written.

It lives on the ground floor because checkpoints (`models/`) and dataset manifests
(`preprocessing/`) record it, and `pyproject.toml` reads it from here.
"""

__version__ = "0.1.0"


def source_commit() -> str:
    """The git commit of the raylift tree this process runs from, with `+dirty` when tracked files
    were changed, or "unknown" outside a git checkout (a Ray job's uploaded package, a wheel).
    Recorded beside results so a figure names the code that made it."""
    import os
    import subprocess

    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return commit + ("+dirty" if dirty else "") if commit else "unknown"
