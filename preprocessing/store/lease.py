"""Exclusive leases on local disk, S3 and GCS: at most one writer per dataset id or run directory.

A lease is one small JSON object, the *owner record* (`Owner`: host, pid, the process's start
time, a run id, its TTL and a renewal count), stored at a lock location such as `<root>/.lock-<id>`
or `<run>/.lock`.

- Taking it is an exclusive create: `O_CREAT | O_EXCL` on local disk; on S3 a PUT with
  `If-None-Match: *` (a conditional write: the server answers 412 if the object exists; AWS S3 has
  honoured it since 2024, and so do SeaweedFS, MinIO and the local test server, see
  tests/test_lease.py); on GCS an upload with `ifGenerationMatch=0` (google-cloud-storage, which
  reads the same `STORAGE_EMULATOR_HOST` as `storage`; tests/test_lease.py runs it on an emulator).
- A daemon thread renews it every `ttl / 3` seconds (local: atomic replace after re-reading that it
  is still ours; S3: a PUT with `If-Match: <etag>`, GCS: `ifGenerationMatch=<generation>`, so a
  renewal never overwrites a new owner). Each renewal changes the record (its `renewals` count), so
  its version token (local: the bytes' hash; S3: the etag; GCS: the generation) changes too.

**No clock is compared with another host's.** A held lease is taken over only when its owner is
*provably gone*:

- its host is this host and its pid is dead (or reused by a younger process): immediately;
- otherwise, when the contender has seen the *same version* of the record, unchanged, for a full
  TTL of the record on its own monotonic clock: a live owner renews three times in that span.

The wall-clock fields of the record (`acquired`, `expires`) are the holder's and are only shown
to people. Whether a contender *waits* to watch a lease (rather than refusing at once) follows the
record's age by the store's timestamps: local mtime against this host's clock, S3 `Last-Modified`
against the same response's `Date` (both the server's), GCS `updated` against this host's clock. A
record older than its TTL is watched for a TTL whatever `wait_s` is; a skewed clock there can only
make a contender watch a live lease (and then refuse) or refuse a dead one (which the next attempt
takes over), never take a live one.

Take-over is compare-and-swap: S3 `If-Match` on the watched version's etag (GCS: its generation);
locally a replace under an `flock`ed guard file after re-reading the record. `check()` re-reads the
record before anything irreversible (publishing a dataset): a process that has not renewed its lease
within a TTL (paused, or its store unreachable) or that lost it stops instead of publishing.

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
from dataclasses import asdict, dataclass, replace
from typing import Callable, Iterator, NamedTuple, Optional

import pyarrow.fs as pafs

from preprocessing.store import storage
from preprocessing.errors import DataError
from preprocessing.store.storage import Location

DEFAULT_TTL_S = 60.0


class LeaseHeld(DataError):
    """The lease is held by another live owner."""


@dataclass(frozen=True)
class Owner:
    """Who holds a lease (or owns a staging directory). The times are the holder's wall clock,
    for people to read: no other host compares them with its own (module doc)."""

    host: str
    pid: int
    started: float  # the process's start time (seconds since the epoch), guards against pid reuse
    run: str  # a random id of the holding run
    what: str  # e.g. "raylift preprocess"
    acquired: float
    expires: float
    ttl: float  # seconds without a renewal after which a watching contender may take over
    renewals: int = 0  # bumped by every renewal, so every renewal is a new version of the record

    def describe(self, age_s: Optional[float] = None) -> str:
        """E.g. `raylift train of run x (host h, pid 7, renewed 12 s ago)`; the age is the
        store's (`Record.age_s`), left out when unknown."""
        when = f", renewed {age_s:.0f} s ago" if age_s is not None else ""
        return f"{self.what} (host {self.host}, pid {self.pid}{when})"

    def to_json(self) -> bytes:
        return (json.dumps(asdict(self), sort_keys=True) + "\n").encode()

    @staticmethod
    def parse(raw: bytes) -> Optional["Owner"]:
        """The record in `raw`, or None when it is not one (empty, truncated, foreign). A record
        written before `ttl` was stored reads its TTL from its own times."""
        try:
            d = json.loads(raw.decode())
            acquired, expires = float(d["acquired"]), float(d["expires"])
            return Owner(str(d["host"]), int(d["pid"]), float(d["started"]), str(d["run"]), str(d["what"]),
                         acquired, expires, float(d.get("ttl", expires - acquired)), int(d.get("renewals", 0)))
        except (ValueError, KeyError, TypeError, UnicodeDecodeError):
            return None


class Record(NamedTuple):
    """What a read of a lock location found."""

    owner: Optional[Owner]  # None: no lock, or a file that is not an owner record
    token: Optional[str]  # the version (local: sha256 of the bytes; S3: etag; GCS: generation)
    exists: bool
    age_s: Optional[float] = None  # since the last write, by the store's timestamps (module doc)


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
                 run or uuid.uuid4().hex[:12], what, now, now + ttl_s, ttl_s)


def owner_gone(owner: Optional[Owner]) -> bool:
    """True when this host can prove `owner` no longer runs: there is no readable record, or it
    ran on this host and its pid is dead or belongs to a process started later. An owner on
    another host is never presumed dead here, whatever its record's times say (their clock is not
    ours); `acquire` takes over from it only after watching its lease go unrenewed."""
    if owner is None:
        return True
    if owner.host != socket.gethostname():
        return False
    started = process_start_time(owner.pid)
    if started is None:
        return True
    if math.isnan(started):
        return False  # a process we may not inspect holds that pid
    return started > owner.started + 1.0  # the pid was reused by a younger process


def alive_here(owner: Optional[Owner]) -> bool:
    """True when `owner` ran on this host and its process still runs (the same pid, not reused)."""
    return owner is not None and owner.host == socket.gethostname() and not owner_gone(owner)


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


def read_record(loc: Location) -> Record:
    """The lock at `loc`: its owner, version token, whether it exists and its age by the store's
    timestamps. A file that exists but is not a record gives `Record(None, token, True, age)`."""
    if _is_local(loc):
        try:
            with open(loc.path, "rb") as f:
                raw = f.read()
                age = time.time() - os.fstat(f.fileno()).st_mtime
        except FileNotFoundError:
            return Record(None, None, False)
        except OSError as e:
            raise DataError(f"cannot read lock {loc.uri}: {e}") from None
        return Record(Owner.parse(raw), hashlib.sha256(raw).hexdigest(), True, age)
    if _backend(loc) == "gcs":
        return _gcs_read(loc)
    from botocore.exceptions import BotoCoreError, ClientError
    from email.utils import parsedate_to_datetime

    bucket, key = _bucket_key(loc)
    try:
        resp = _s3_client().get_object(Bucket=bucket, Key=key)
        raw = resp["Body"].read()
    except ClientError as e:
        if e.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
            return Record(None, None, False)
        raise DataError(f"cannot read lock {loc.uri}: {e}") from None
    except BotoCoreError as e:
        raise DataError(f"cannot read lock {loc.uri}: {e}") from None
    server_now = resp.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("date")
    age = ((parsedate_to_datetime(server_now) - resp["LastModified"]).total_seconds()
           if server_now and resp.get("LastModified") else None)
    return Record(Owner.parse(raw), resp["ETag"], True, age)


def _gcs_read(loc: Location) -> Record:
    """The blob's metadata (generation, `updated`), then its bytes at exactly that generation."""
    from google.api_core import exceptions as gexc

    blob = _gcs_blob(loc)
    try:
        blob.reload()
        raw = blob.download_as_bytes(if_generation_match=blob.generation)
    except (gexc.NotFound, gexc.PreconditionFailed):  # gone, or replaced between the two calls
        return Record(None, None, False) if not blob.exists() else _gcs_read(loc)
    except (gexc.GoogleAPIError, OSError) as e:
        raise DataError(f"cannot read lock {loc.uri}: {e}") from None
    age = time.time() - blob.updated.timestamp() if blob.updated else None
    return Record(Owner.parse(raw), str(blob.generation), True, age)


def _gcs_put(loc: Location, data: bytes, generation: int) -> bool:
    """Upload `data` if the object's generation is `generation` (0: if it does not exist)."""
    blob = _gcs_blob(loc)
    return _gcs_call(loc, "write", lambda: blob.upload_from_string(data, if_generation_match=generation) or True)


def _create(loc: Location, data: bytes) -> bool:
    """Exclusive create: True if this call created the lock, False if it already existed."""
    if _is_local(loc):
        tmp = f"{loc.path}.{uuid.uuid4().hex[:8]}.tmp"
        try:
            os.makedirs(os.path.dirname(loc.path), exist_ok=True)
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        except OSError as e:  # e.g. a read-only or full storage path: the user's to fix
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise DataError(f"cannot take the lease {loc.uri}: {e.strerror or e} "
                            f"({os.path.dirname(loc.path)} must be a writable directory)") from None
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
            now = read_record(loc)
            if not now.exists or now.token != token:
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
        self._renewed_at = time.monotonic()  # this process's clock: when the store last took our record
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

    def _still_ours(self) -> Record:
        current = read_record(self.loc)
        if current.owner is None or current.owner.run != self.owner.run:
            raise LeaseHeld(f"lost the lease {self.loc.uri}"
                            + (f" to {current.owner.describe(current.age_s)}" if current.owner else " (record removed)"))
        return current

    def renew(self) -> None:
        current = self._still_ours()
        now = time.time()
        renewed = replace(self.owner, expires=now + self.ttl_s, renewals=self.owner.renewals + 1)
        if not _swap(self.loc, current.token, renewed.to_json()):
            raise LeaseHeld(f"lost the lease {self.loc.uri} while renewing it")
        self.owner, self._renewed_at = renewed, time.monotonic()

    def check(self) -> None:
        """Raise LeaseHeld unless the stored record is still this lease's and was renewed within
        a TTL by this process's monotonic clock (verify-after-write): after a longer gap a
        contender may have watched it go unrenewed and be about to take it over."""
        if self._lost:
            raise LeaseHeld(self._lost)
        self._still_ours()
        gap = time.monotonic() - self._renewed_at
        if gap > self.ttl_s:
            raise LeaseHeld(f"the lease {self.loc.uri} was not renewed for {gap:.0f} s "
                            f"(its TTL is {self.ttl_s:g} s): another run may take it over")

    def release(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        with contextlib.suppress(DataError):
            current = read_record(self.loc)
            if current.owner is not None and current.owner.run == self.owner.run:
                _delete(self.loc)

    def __enter__(self) -> "Lease":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


class _Watch:
    """How long this process has seen one version of a lock unchanged, by its monotonic clock."""

    def __init__(self) -> None:
        self.token: Optional[str] = None
        self.since = 0.0

    def unchanged_for(self, token: Optional[str]) -> float:
        now = time.monotonic()
        if token != self.token:
            self.token, self.since = token, now
        return now - self.since


def acquire(loc: Location, what: str, ttl_s: float = DEFAULT_TTL_S, run: Optional[str] = None,
            wait_s: float = 0.0, on_wait: Optional[Callable[[str], None]] = None) -> Lease:
    """Take the lease at `loc` for `what`. A held lease is taken over when its owner is provably
    gone (module doc): at once for a dead pid on this host; after watching the record stay
    unchanged for its TTL otherwise. A record older than its TTL by the store's clock is watched
    that long whatever `wait_s` is; a fresh one raises LeaseHeld, naming `loc` and the holder,
    after polling up to `wait_s` seconds for it to be released or to go stale. `on_wait(why)` is
    called once, with the reason, when the call is going to wait."""
    deadline = time.monotonic() + wait_s
    watch = _Watch()
    said = False
    while True:
        taken, held_by, watching = _try_acquire(loc, what, ttl_s, run, watch)
        if taken is not None:
            return taken
        if not watching and time.monotonic() >= deadline:
            raise LeaseHeld(held_by)
        if on_wait is not None and not said:
            on_wait(held_by + (": it looks abandoned; taking it over if it stays unrenewed for its TTL"
                               if watching else ""))
            said = True
        pause = min(1.0, ttl_s / 10) if watching else min(1.0, max(0.0, deadline - time.monotonic()))
        time.sleep(pause)


def _try_acquire(loc: Location, what: str, ttl_s: float, run: Optional[str],
                 watch: _Watch) -> tuple[Optional[Lease], str, bool]:
    """One attempt: (the lease, "", False) when taken; else (None, why it is held, whether the
    record is stale enough to keep watching it)."""
    for _ in range(5):
        owner = new_owner(what, ttl_s, run)
        if _create(loc, owner.to_json()):
            stored = read_record(loc)
            if stored.owner is None or stored.owner.run != owner.run:  # the server ignored If-None-Match
                raise LeaseHeld(f"{loc.uri}: lost a simultaneous claim (the store did not honour a conditional write)")
            return Lease(loc, owner, ttl_s), "", False
        found = read_record(loc)
        if not found.exists:
            continue  # released between our create and read: try again
        holder = found.owner
        if owner_gone(holder) or watch.unchanged_for(found.token) >= holder.ttl:
            if _swap(loc, found.token, owner.to_json()):
                return Lease(loc, owner, ttl_s), "", False
            continue  # renewed or taken meanwhile: look again
        stale = found.age_s is not None and found.age_s > holder.ttl
        return None, f"{loc.uri} is held by {holder.describe(found.age_s)}", stale
    raise LeaseHeld(f"{loc.uri}: could not take the lease (it changed hands repeatedly)")
