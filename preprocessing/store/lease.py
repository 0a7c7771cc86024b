"""Exclusive leases on local disk, S3 and GCS: at most one writer per dataset id or run directory.

A lease is one small JSON object, the *owner record* (`Owner`: host, pid, the process's start
time, a run id, when it was taken and until when it holds), stored at a lock location such as
`<root>/.lock-<id>` or `<run>/.lock`.

- Taking it is an exclusive create: `O_CREAT | O_EXCL` on local disk; on S3 a PUT with
  `If-None-Match: *` (a conditional write: the server answers 412 if the object exists; AWS S3 has
  honoured it since 2024, and so do SeaweedFS, MinIO and the local test server, see
  tests/test_lease.py); on GCS an upload with `ifGenerationMatch=0` (google-cloud-storage, which
  reads the same `STORAGE_EMULATOR_HOST` as `storage`; tests/test_gcs.py runs it on an emulator).
- A daemon thread renews it every `ttl / 3` seconds (local: atomic replace after re-reading that it
  is still ours; S3: a PUT with `If-Match: <etag>`, GCS: `ifGenerationMatch=<generation>`, so a
  renewal never overwrites a new owner).
- A held lease whose owner is *provably gone* is taken over: its expiry has passed, or its host is
  this host and its pid is dead (or reused by a younger process). Take-over is compare-and-swap:
  S3 `If-Match` on the stale record's etag (GCS: its generation); locally a replace under an `flock`ed guard file after
  re-reading the record. An owner on another host that is still within its lease is never
  presumed dead.
- `check()` re-reads the record before anything irreversible (publishing a dataset): a process
  that was paused past its lease and lost it stops instead of publishing (verify-after-write).

Limits: on S3 the guarantee rests on the server honouring conditional writes (an S3-compatible
server that ignores `If-None-Match` would let two writers in; `acquire` detects the simplest form
of that by reading the record back). A lease also cannot fence a writer paused for longer than its
TTL between `check()` and its last write; the TTL (default 60 s) bounds that window.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import socket
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from typing import Callable, Iterator, Optional

import pyarrow.fs as pafs

from preprocessing.store import storage
from preprocessing.errors import DataError
from preprocessing.store.storage import Location

DEFAULT_TTL_S = 60.0


class LeaseHeld(DataError):
    """The lease is held by another live owner."""


@dataclass(frozen=True)
class Owner:
    """Who holds a lease (or owns a staging directory), and until when."""

    host: str
    pid: int
    started: float  # the process's start time (seconds since the epoch), guards against pid reuse
    run: str  # a random id of the holding run
    what: str  # e.g. "raylift preprocess"
    acquired: float
    expires: float

    def describe(self) -> str:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.acquired))
        left = self.expires - time.time()
        return (f"{self.what} (host {self.host}, pid {self.pid}, since {when}, lease "
                + (f"valid {left:.0f} s more)" if left > 0 else f"expired {-left:.0f} s ago)"))

    def to_json(self) -> bytes:
        return (json.dumps(asdict(self), sort_keys=True) + "\n").encode()

    @staticmethod
    def parse(raw: bytes) -> Optional["Owner"]:
        """The record in `raw`, or None when it is not one (empty, truncated, foreign)."""
        try:
            d = json.loads(raw.decode())
            return Owner(str(d["host"]), int(d["pid"]), float(d["started"]), str(d["run"]), str(d["what"]),
                         float(d["acquired"]), float(d["expires"]))
        except (ValueError, KeyError, TypeError, UnicodeDecodeError):
            return None


def process_start_time(pid: int) -> Optional[float]:
    """Start time of process `pid` on this host, None when there is no such process."""
    import psutil

    try:
        return psutil.Process(pid).create_time()
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return None
    except psutil.AccessDenied:
        return float("nan")  # exists; start time unknown


def new_owner(what: str, ttl_s: float, run: Optional[str] = None) -> Owner:
    now = time.time()
    return Owner(socket.gethostname(), os.getpid(), process_start_time(os.getpid()) or now,
                 run or uuid.uuid4().hex[:12], what, now, now + ttl_s)


def owner_gone(owner: Optional[Owner], now: Optional[float] = None) -> bool:
    """True when `owner` provably no longer runs: no readable record, its lease expired, or it
    ran on this host and its pid is dead or belongs to a process started later."""
    if owner is None:
        return True
    if owner.expires < (time.time() if now is None else now):
        return True
    if owner.host != socket.gethostname():
        return False  # another machine's live lease: never presumed dead
    started = process_start_time(owner.pid)
    if started is None:
        return True
    if math.isnan(started):
        return False  # a process we may not inspect holds that pid
    return started > owner.started + 1.0  # the pid was reused by a younger process


# ----------------------------------------------------------------------------- backends
def _s3_client():
    """A botocore S3 client from the same AWS_* variables `storage` uses (conditional writes are
    not exposed by pyarrow's filesystem)."""
    import botocore.config
    import botocore.session

    kwargs: dict = {"config": botocore.config.Config(connect_timeout=storage.S3_CONNECT_TIMEOUT_S,
                                                      read_timeout=30, retries={"max_attempts": 3})}
    endpoint = storage.s3_endpoint_from_env()
    if endpoint:
        kwargs["endpoint_url"] = endpoint if "://" in endpoint else f"https://{endpoint}"
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    kwargs["region_name"] = region or ("us-east-1" if endpoint else None)
    return botocore.session.get_session().create_client("s3", **kwargs)


def _gcs_blob(loc: Location):
    """The google-cloud-storage blob of the lock (pyarrow's GCS filesystem has no preconditions).
    With `STORAGE_EMULATOR_HOST` set the client talks to that endpoint without credentials."""
    try:
        from google.cloud import storage as gcs
    except ImportError:
        raise DataError(f"cannot take the lease {loc.uri}: gs:// leases need google-cloud-storage "
                        "(pip install 'raylift[gcs]')") from None
    bucket, key = _bucket_key(loc)
    return _gcs_client(gcs, storage.gcs_endpoint_from_env()).bucket(bucket).blob(key)


_GCS_CLIENTS: dict = {}


def _gcs_client(gcs, endpoint: Optional[str]):
    """One client per endpoint and process (a renewal every ttl/3 s should not build a new one)."""
    if endpoint not in _GCS_CLIENTS:
        _GCS_CLIENTS[endpoint] = gcs.Client()  # the emulator host and credentials come from the environment
    return _GCS_CLIENTS[endpoint]


def _gcs_call(loc: Location, action: str, fn):
    """Run `fn()`; a failed precondition is False, anything else unexpected a DataError naming `loc`."""
    from google.api_core import exceptions as gexc

    try:
        return fn()
    except gexc.PreconditionFailed:
        return False
    except (gexc.GoogleAPIError, OSError) as e:
        raise DataError(f"cannot {action} lock {loc.uri}: {e}") from None


def _backend(loc: Location) -> str:
    """'local', 's3' or 'gcs': the stores with an exclusive create and compare-and-swap."""
    if _is_local(loc):
        return "local"
    if storage.is_s3(loc.uri):
        return "s3"
    if storage.is_gcs(loc.uri):
        return "gcs"
    raise DataError(f"cannot take the lease {loc.uri}: leases need local disk, s3:// or gs:// "
                    "(stores with conditional writes)")


def _bucket_key(loc: Location) -> tuple[str, str]:
    bucket, _, key = loc.path.partition("/")
    return bucket, key


def _is_local(loc: Location) -> bool:
    return isinstance(loc.fs, pafs.LocalFileSystem)


def read_record(loc: Location) -> tuple[Optional[Owner], Optional[str], bool]:
    """(owner, version token, exists) of the lock at `loc`. The token is the S3 etag, or the raw
    bytes' hash locally; a file that exists but is not a record gives (None, token, True)."""
    if _is_local(loc):
        try:
            with open(loc.path, "rb") as f:
                raw = f.read()
        except FileNotFoundError:
            return None, None, False
        except OSError as e:
            raise DataError(f"cannot read lock {loc.uri}: {e}") from None
        return Owner.parse(raw), hashlib.sha256(raw).hexdigest(), True
    if _backend(loc) == "gcs":
        return _gcs_read(loc)
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, key = _bucket_key(loc)
    try:
        resp = _s3_client().get_object(Bucket=bucket, Key=key)
        raw = resp["Body"].read()
    except ClientError as e:
        if e.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
            return None, None, False
        raise DataError(f"cannot read lock {loc.uri}: {e}") from None
    except BotoCoreError as e:
        raise DataError(f"cannot read lock {loc.uri}: {e}") from None
    return Owner.parse(raw), resp["ETag"], True


def _gcs_read(loc: Location) -> tuple[Optional[Owner], Optional[str], bool]:
    from google.api_core import exceptions as gexc

    blob = _gcs_blob(loc)
    try:
        raw = blob.download_as_bytes()
    except gexc.NotFound:
        return None, None, False
    except (gexc.GoogleAPIError, OSError) as e:
        raise DataError(f"cannot read lock {loc.uri}: {e}") from None
    return Owner.parse(raw), str(blob.generation), True


def _gcs_put(loc: Location, data: bytes, generation: int) -> bool:
    """Upload `data` if the object's generation is `generation` (0: if it does not exist)."""
    blob = _gcs_blob(loc)
    return _gcs_call(loc, "write", lambda: blob.upload_from_string(data, if_generation_match=generation) or True)


def _create(loc: Location, data: bytes) -> bool:
    """Exclusive create: True if this call created the lock, False if it already existed."""
    if _is_local(loc):
        os.makedirs(os.path.dirname(loc.path), exist_ok=True)
        tmp = f"{loc.path}.{uuid.uuid4().hex[:8]}.tmp"
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, loc.path)  # atomic and exclusive, and the record is complete when it appears
            return True
        except FileExistsError:
            return False
        finally:
            os.unlink(tmp)
    if _backend(loc) == "gcs":
        return _gcs_put(loc, data, 0)
    return _s3_put(loc, data, IfNoneMatch="*")


def _s3_put(loc: Location, data: bytes, **condition: str) -> bool:
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, key = _bucket_key(loc)
    try:
        _s3_client().put_object(Bucket=bucket, Key=key, Body=data, **condition)
        return True
    except ClientError as e:
        if e.response.get("Error", {}).get("Code") in ("PreconditionFailed", "ConditionalRequestConflict", "412", "409"):
            return False
        raise DataError(f"cannot write lock {loc.uri}: {e}") from None
    except BotoCoreError as e:
        raise DataError(f"cannot write lock {loc.uri}: {e}") from None


@contextlib.contextmanager
def _local_guard(loc: Location) -> Iterator[None]:
    """An flock on `<lock>.guard`: serialises take-overs and renewals of one local lock."""
    import fcntl

    fd = os.open(f"{loc.path}.guard", os.O_CREAT | os.O_RDWR, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _swap(loc: Location, token: Optional[str], data: bytes) -> bool:
    """Replace the lock's record if it is still the version `token`; True on success."""
    if _is_local(loc):
        with _local_guard(loc):
            _, now_token, exists = read_record(loc)
            if not exists or now_token != token:
                return False
            storage.write_local_atomic(loc.path, data)
            return True
    if _backend(loc) == "gcs":
        return bool(token) and _gcs_put(loc, data, int(token))
    return _s3_put(loc, data, IfMatch=token or "")


def _delete(loc: Location) -> None:
    if _is_local(loc):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(loc.path)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(f"{loc.path}.guard")
        return
    _backend(loc)
    storage.delete_tree(loc)


# ----------------------------------------------------------------------------- the lease
class Lease:
    """A held lease; renewed in the background until `release()` (or the `with` block ends)."""

    def __init__(self, loc: Location, owner: Owner, ttl_s: float) -> None:
        self.loc, self.owner, self.ttl_s = loc, owner, ttl_s
        self._stop = threading.Event()
        self._lost: Optional[str] = None
        self._thread = threading.Thread(target=self._renew_loop, name=f"lease {loc.uri}", daemon=True)
        self._thread.start()

    def _renew_loop(self) -> None:
        while not self._stop.wait(self.ttl_s / 3):
            try:
                self.renew()
            except DataError as e:
                self._lost = str(e)
                return

    def renew(self) -> None:
        current, token, _ = read_record(self.loc)
        if current is None or current.run != self.owner.run:
            raise LeaseHeld(f"lost the lease {self.loc.uri}"
                            + (f" to {current.describe()}" if current else " (record removed)"))
        renewed = Owner(**{**asdict(self.owner), "expires": time.time() + self.ttl_s})
        if not _swap(self.loc, token, renewed.to_json()):
            raise LeaseHeld(f"lost the lease {self.loc.uri} while renewing it")
        self.owner = renewed

    def check(self) -> None:
        """Raise LeaseHeld unless the stored record is still this lease's (verify-after-write)."""
        if self._lost:
            raise LeaseHeld(self._lost)
        current, _, _ = read_record(self.loc)
        if current is None or current.run != self.owner.run:
            raise LeaseHeld(f"lost the lease {self.loc.uri}"
                            + (f" to {current.describe()}" if current else " (record removed)"))
        if current.expires < time.time():
            raise LeaseHeld(f"the lease {self.loc.uri} expired at {time.ctime(current.expires)}")

    def release(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        with contextlib.suppress(DataError):
            current, _, _ = read_record(self.loc)
            if current is not None and current.run == self.owner.run:
                _delete(self.loc)

    def __enter__(self) -> "Lease":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def acquire(loc: Location, what: str, ttl_s: float = DEFAULT_TTL_S, run: Optional[str] = None,
            wait_s: float = 0.0, on_wait: Optional[Callable[[str], None]] = None) -> Lease:
    """Take the lease at `loc` for `what`, taking over one whose owner is provably gone; raise
    LeaseHeld naming `loc` and the holder when a live owner has it (after polling up to `wait_s`
    seconds for it to be released or to expire). `on_wait(why)` is called once, with LeaseHeld's
    message, when the first attempt finds the lease held and the call is going to wait."""
    deadline = time.monotonic() + wait_s
    waited = False
    while True:
        try:
            return _try_acquire(loc, what, ttl_s, run)
        except LeaseHeld as e:
            if time.monotonic() >= deadline:
                raise
            if on_wait is not None and not waited:
                on_wait(str(e))
            waited = True
            time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))


def _try_acquire(loc: Location, what: str, ttl_s: float, run: Optional[str]) -> Lease:
    for _ in range(5):
        owner = new_owner(what, ttl_s, run)
        if _create(loc, owner.to_json()):
            stored, _, _ = read_record(loc)
            if stored is None or stored.run != owner.run:  # the server ignored If-None-Match
                raise LeaseHeld(f"{loc.uri}: lost a simultaneous claim (the store did not honour a conditional write)")
            return Lease(loc, owner, ttl_s)
        holder, token, exists = read_record(loc)
        if not exists:
            continue  # released between our create and read: try again
        if not owner_gone(holder):
            raise LeaseHeld(f"{loc.uri} is held by {holder.describe()}")
        if _swap(loc, token, owner.to_json()):
            return Lease(loc, owner, ttl_s)
    raise LeaseHeld(f"{loc.uri}: could not take the lease (it changed hands repeatedly)")
