"""Where datasets and runs live: any URI pyarrow or fsspec can open, behind one small API.

Everything goes through `pyarrow.fs`, the filesystem layer Ray Data and Ray Train read and write
with, so a `Location` can be handed to Ray tasks (it pickles) and to Ray unchanged:

- a local path or `file://` URI: `LocalFileSystem`;
- `s3://`: pyarrow's S3FileSystem, configured from the environment (below);
- `gs://`: pyarrow's GcsFileSystem with the default Google credentials, or anonymous against the
  endpoint in `STORAGE_EMULATOR_HOST` (below);
- any other scheme pyarrow has a native filesystem for (`abfs://`, `hdfs://`, ...):
  `pyarrow.fs.FileSystem.from_uri` (not exercised by the tests: no such server runs there);
- every other scheme fsspec knows (`memory://`, `az://` with adlfs, `sftp://`, ...): the fsspec
  filesystem wrapped in `pyarrow.fs.PyFileSystem(FSSpecHandler(...))`. A scheme whose package is
  missing is a DataError naming the URI and what to install (`raylift[azure]` for `az://`).

S3 settings come from the usual AWS environment variables, read once in the process that opens the
location and carried inside the pickled filesystem to Ray workers (which may have been started
before the variables were set): `AWS_ENDPOINT_URL_S3` / `AWS_ENDPOINT_URL` (e.g.
`http://127.0.0.1:8333`), `AWS_REGION` / `AWS_DEFAULT_REGION`, `AWS_ACCESS_KEY_ID`,
`AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`. Without explicit keys the AWS SDK's default chain
(profiles, instance roles) applies. GCS follows Google's client libraries: `STORAGE_EMULATOR_HOST`
(e.g. `http://127.0.0.1:4443`, the variable google-cloud-storage and gcsfs read too) points gs:// at
an emulator or another endpoint, without credentials; unset, the VM's service account or
`GOOGLE_APPLICATION_CREDENTIALS` applies. Other stores use their SDK's default credentials. Credentials
are never put in configs, manifests or messages. Every failure to reach or write a destination
becomes a `DataError` naming the URI.
"""
from __future__ import annotations

import contextlib
import datetime
import hashlib
import os
import posixpath
import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Union
from urllib.parse import ParseResult, urlparse

import pyarrow as pa
import pyarrow.fs as pafs

from preprocessing.errors import DataError

S3_CONNECT_TIMEOUT_S = 5.0
ENDPOINT_CHECK_TIMEOUT_S = 3.0  # a custom endpoint that does not answer in this long fails fast, named
S3_REQUEST_TIMEOUT_S = 120.0
GCS_RETRY_LIMIT_S = 30.0  # pyarrow's GCS client retries transient errors for this long, then fails


def scheme_of(uri: str) -> str:
    """The URI's scheme in lower case ('' for a plain local path)."""
    return uri.split("://", 1)[0].lower() if "://" in uri else ""


def is_local(uri: str) -> bool:
    """A local path or a `file://` URI."""
    return scheme_of(uri) in ("", "file")


def is_s3(uri: str) -> bool:
    return scheme_of(uri) == "s3"


def is_gcs(uri: str) -> bool:
    return scheme_of(uri) == "gs"


def join(uri: str, *parts: str) -> str:
    """Join path parts onto a local path or an s3:// URI with '/'."""
    out = uri.rstrip("/")
    for part in parts:
        out = f"{out}/{part.strip('/')}"
    return out


def s3_endpoint_from_env() -> str | None:
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


def _s3_filesystem(uri: str) -> pafs.S3FileSystem:
    endpoint = s3_endpoint_from_env()
    kwargs: dict = {
        "connect_timeout": S3_CONNECT_TIMEOUT_S,
        "request_timeout": S3_REQUEST_TIMEOUT_S,
        "retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=3),
    }
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if endpoint:
        parsed = urlparse(endpoint if "://" in endpoint else f"https://{endpoint}")
        if not parsed.hostname:
            raise DataError(f"AWS_ENDPOINT_URL={endpoint!r} is not a URL (expected e.g. http://127.0.0.1:8333)")
        kwargs["scheme"] = parsed.scheme
        kwargs["endpoint_override"] = parsed.netloc
        region = region or "us-east-1"  # custom endpoints rarely care; avoids a region lookup
    if region:
        kwargs["region"] = region
    key, secret = os.environ.get("AWS_ACCESS_KEY_ID"), os.environ.get("AWS_SECRET_ACCESS_KEY")
    if key and secret:
        kwargs.update(access_key=key, secret_key=secret)
        if os.environ.get("AWS_SESSION_TOKEN"):
            kwargs["session_token"] = os.environ["AWS_SESSION_TOKEN"]
    try:
        return pafs.S3FileSystem(**kwargs)
    except (OSError, ValueError, pa.ArrowException) as e:
        raise DataError(f"cannot open S3 destination {uri}: {e}") from None


def gcs_endpoint_from_env() -> str | None:
    """`STORAGE_EMULATOR_HOST`, the endpoint override Google's storage clients share."""
    return os.environ.get("STORAGE_EMULATOR_HOST") or None


def _parse_endpoint(variable: str, endpoint: str, example: str) -> "ParseResult":
    parsed = urlparse(endpoint if "://" in endpoint else f"https://{endpoint}")
    if not parsed.hostname:
        raise DataError(f"{variable}={endpoint!r} is not a URL (expected e.g. {example})")
    return parsed


def _gcs_filesystem(uri: str) -> pafs.GcsFileSystem:
    kwargs: dict = {"retry_time_limit": datetime.timedelta(seconds=GCS_RETRY_LIMIT_S)}
    endpoint = gcs_endpoint_from_env()
    if endpoint:
        parsed = _parse_endpoint("STORAGE_EMULATOR_HOST", endpoint, "http://127.0.0.1:4443")
        kwargs.update(anonymous=True, scheme=parsed.scheme, endpoint_override=parsed.netloc)
    try:
        return pafs.GcsFileSystem(**kwargs)
    except (OSError, ValueError, pa.ArrowException) as e:
        raise DataError(f"cannot open GCS destination {uri}: {e}") from None


def check_s3_endpoint(uri: str) -> None:
    """Fail fast (`ENDPOINT_CHECK_TIMEOUT_S`) with a DataError naming `uri` when a custom S3
    endpoint does not answer."""
    _check_reachable("S3", s3_endpoint_from_env(), uri)


def check_endpoint(uri: str) -> None:
    """Fail fast (`ENDPOINT_CHECK_TIMEOUT_S`) with a DataError naming `uri` when the custom S3 or
    GCS endpoint that `uri` would use does not answer (no-op for other URIs and for the clouds' own
    endpoints), instead of waiting out the client's retries."""
    if is_s3(uri):
        _check_reachable("S3", s3_endpoint_from_env(), uri)
    elif is_gcs(uri):
        _check_reachable("GCS", gcs_endpoint_from_env(), uri)


def _check_reachable(kind: str, endpoint: str | None, uri: str) -> None:
    if not endpoint:
        return
    parsed = urlparse(endpoint if "://" in endpoint else f"https://{endpoint}")
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        socket.create_connection((parsed.hostname, port), timeout=ENDPOINT_CHECK_TIMEOUT_S).close()
    except OSError as e:
        raise DataError(f"cannot reach {kind} endpoint {endpoint} for {uri}: {e}") from None


@dataclass(frozen=True)
class Location:
    """A directory-like location: a pyarrow filesystem plus the path of `uri` inside it."""

    uri: str  # as given, normalised: absolute local path or s3://bucket/prefix (no trailing '/')
    fs: pafs.FileSystem
    path: str  # path inside `fs` (local: absolute path; S3: bucket/prefix)

    def child(self, *parts: str) -> "Location":
        return Location(join(self.uri, *parts), self.fs, join(self.path, *parts))

    @property
    def name(self) -> str:
        return posixpath.basename(self.path.rstrip("/"))


def open_location(uri: str) -> Location:
    """Resolve `uri` (a local path, relative or absolute, or any URI pyarrow or fsspec can open)
    to a Location."""
    if not uri:
        raise DataError("empty dataset location (expected a local path or a URI such as s3://bucket/prefix)")
    scheme = scheme_of(uri)
    if scheme in ("", "file"):
        path = uri[len("file://"):] if scheme == "file" else uri
        path = os.path.abspath(os.path.expanduser(path))
        return Location(path, pafs.LocalFileSystem(), path)
    rest = uri.split("://", 1)[1].strip("/")
    if not rest:
        raise DataError(f"location {uri!r} has no bucket or path (expected {scheme}://bucket/prefix)")
    if scheme == "s3":
        return Location(f"s3://{rest}", _s3_filesystem(uri), rest)
    if scheme == "gs":
        return Location(f"gs://{rest}", _gcs_filesystem(uri), rest)
    fs, path = _filesystem(uri, scheme)
    return Location(f"{scheme}://{rest}", fs, path.rstrip("/"))


def _filesystem(uri: str, scheme: str) -> tuple[pafs.FileSystem, str]:
    """pyarrow's native filesystem for `uri` where it has one, else fsspec's, wrapped for pyarrow."""
    try:
        return pafs.FileSystem.from_uri(uri)
    except pa.ArrowInvalid as e:
        if "Unrecognized filesystem type" not in str(e):
            raise DataError(f"cannot open {uri}: {e}") from None
    except (OSError, pa.ArrowException) as e:
        raise DataError(f"cannot open {uri}: {e}") from None
    import fsspec

    try:
        fs, path = fsspec.core.url_to_fs(uri)
    except ImportError as e:
        hint = "pip install 'raylift[azure]'" if scheme in ("az", "adl") else "install the fsspec package for it"
        raise DataError(f"cannot open {uri}: the {scheme}:// filesystem needs a package that is not "
                        f"installed ({e}); {hint}") from None
    except ValueError as e:
        raise DataError(f"unsupported location {uri!r}: {e} (expected a local path or a URI that "
                        "pyarrow or fsspec supports, e.g. s3://bucket/prefix)") from None
    except OSError as e:
        raise DataError(f"cannot open {uri}: {e}") from None
    return pafs.PyFileSystem(pafs.FSSpecHandler(fs)), path


def _fail(action: str, loc: Location, e: Exception) -> DataError:
    return DataError(f"cannot {action} {loc.uri}: {e}")


def file_info(loc: Location) -> pafs.FileInfo:
    try:
        return loc.fs.get_file_info(loc.path)
    except (OSError, pa.ArrowException) as e:
        raise _fail("access", loc, e) from None


def exists(loc: Location) -> bool:
    return file_info(loc).type != pafs.FileType.NotFound


def is_file(loc: Location) -> bool:
    return file_info(loc).type == pafs.FileType.File


def list_dir(loc: Location) -> list[pafs.FileInfo]:
    """Direct children of a directory (empty when it does not exist), sorted by name.

    In an object store a directory is a key prefix, and pyarrow's GCS filesystem lists only objects
    (marker objects `prefix/` included) when not recursive, so a prefix without a marker, such as a
    dataset published by copying its objects, would be missing. Object stores are therefore listed
    recursively and every first path component below `loc` is a child."""
    recursive = not isinstance(loc.fs, pafs.LocalFileSystem)
    try:
        infos = loc.fs.get_file_info(pafs.FileSelector(loc.path, allow_not_found=True, recursive=recursive))
    except (OSError, pa.ArrowException) as e:
        raise _fail("list", loc, e) from None
    if recursive:
        prefix = loc.path.rstrip("/") + "/"
        children: dict[str, pafs.FileInfo] = {}
        for info in infos:
            rel = info.path[len(prefix):] if info.path.startswith(prefix) else info.base_name
            name, _, deeper = rel.partition("/")
            if deeper or info.type == pafs.FileType.Directory:
                children[name] = pafs.FileInfo(prefix + name, pafs.FileType.Directory)
            else:
                children.setdefault(name, info)
        infos = list(children.values())
    return sorted(infos, key=lambda i: i.base_name)


def list_files(loc: Location) -> list[str]:
    """Relative paths ('train/part-00000.parquet') of every file below a directory, sorted."""
    try:
        infos = loc.fs.get_file_info(pafs.FileSelector(loc.path, allow_not_found=True, recursive=True))
    except (OSError, pa.ArrowException) as e:
        raise _fail("list", loc, e) from None
    prefix = loc.path.rstrip("/") + "/"
    return sorted(i.path[len(prefix):] for i in infos if i.type == pafs.FileType.File)


def read_bytes(loc: Location) -> bytes:
    try:
        with loc.fs.open_input_stream(loc.path) as f:
            return f.read()
    except FileNotFoundError:
        raise DataError(f"file not found: {loc.uri}") from None
    except (OSError, pa.ArrowException) as e:
        raise _fail("read", loc, e) from None


def iter_chunks(loc: Location, chunk_size: int = 8 << 20) -> Iterator[bytes]:
    try:
        with loc.fs.open_input_stream(loc.path) as f:
            while True:
                chunk = f.read(chunk_size)
                if not chunk:
                    return
                yield chunk
    except FileNotFoundError:
        raise DataError(f"file not found: {loc.uri}") from None
    except (OSError, pa.ArrowException) as e:
        raise _fail("read", loc, e) from None


def sha256_of(loc: Location) -> str:
    h = hashlib.sha256()
    for chunk in iter_chunks(loc):
        h.update(chunk)
    return h.hexdigest()


def make_dirs(loc: Location) -> None:
    try:
        loc.fs.create_dir(loc.path, recursive=True)
    except (OSError, pa.ArrowException) as e:
        raise _fail("create directory", loc, e) from None


def write_bytes(loc: Location, data: bytes | pa.Buffer) -> None:
    """Write a whole file. Local files go through a temporary name and an atomic rename, so a
    reader never sees half a file; S3 objects appear atomically when the upload completes."""
    try:
        if isinstance(loc.fs, pafs.LocalFileSystem):
            with atomic_local_file(loc.path) as tmp:
                tmp.write_bytes(memoryview(data))
        else:
            with loc.fs.open_output_stream(loc.path) as f:
                f.write(data)
    except (OSError, pa.ArrowException) as e:
        raise _fail("write", loc, e) from None


def delete_tree(loc: Location) -> None:
    """Remove a directory and everything below it (no error if it does not exist)."""
    try:
        info = loc.fs.get_file_info(loc.path)
        if info.type == pafs.FileType.Directory:
            _delete_dir(loc.fs, loc.path)
        elif info.type == pafs.FileType.File:
            loc.fs.delete_file(loc.path)
    except (OSError, pa.ArrowException) as e:
        raise _fail("delete", loc, e) from None


def _delete_dir(fs: pafs.FileSystem, path: str) -> None:
    """`fs.delete_dir`, also for an object-store "directory" that is only a prefix: pyarrow's GCS
    filesystem deletes the objects below it, then fails with FileNotFoundError on the missing
    `prefix/` marker object. That is success once nothing is left."""
    try:
        fs.delete_dir(path)
    except FileNotFoundError:
        if fs.get_file_info(path).type != pafs.FileType.NotFound:
            raise


def move_tree(src: Location, dst: Location) -> None:
    """Move directory `src` to `dst` (which must not exist). Local: one atomic rename. S3 has no
    rename: each object is copied server-side, then the source prefix is deleted."""
    try:
        if isinstance(src.fs, pafs.LocalFileSystem):
            os.rename(src.path, dst.path)
            return
        for rel in list_files(src):
            src.fs.copy_file(join(src.path, rel), join(dst.path, rel))
        _delete_dir(src.fs, src.path)
    except (OSError, pa.ArrowException) as e:
        raise DataError(f"cannot move {src.uri} to {dst.uri}: {e}") from None


def new_file_mode() -> int:
    """The mode `open()` gives a new file under this process's umask (0644 under umask 022).
    Reading the umask means setting it: it is restored at once."""
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


@contextlib.contextmanager
def atomic_local_file(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling of local `path` to write; it replaces `path` only on success.

    Readers never see a half-written result file, and a failed write leaves nothing behind. The
    file gets the mode any new file gets (0644 under umask 022), not mkstemp's private 0600, so a
    team sharing a run directory can read it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, new_file_mode())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_local_atomic(path: str | os.PathLike, data: bytes | str) -> Path:
    """Write `data` (text as UTF-8) to local `path` atomically."""
    with atomic_local_file(path) as tmp:
        tmp.write_bytes(data.encode() if isinstance(data, str) else data)
    return Path(path)


def as_location(where: Union[str, Location]) -> Location:
    """`where` as a Location: a URI is opened, a Location is returned as it is."""
    return where if isinstance(where, Location) else open_location(where)


@contextlib.contextmanager
def local_copy(where: Union[str, Location]) -> Iterator[str]:
    """A local path of `where`, a directory (a checkpoint) or one file (a video): the path itself
    when local; a temporary download from an object store (a directory holding the files under the
    prefix, or the one file under its own name), removed afterwards. DataError when an
    object-store prefix holds no file."""
    loc = as_location(where)
    if isinstance(loc.fs, pafs.LocalFileSystem):
        yield loc.path
        return
    if is_file(loc):
        with tempfile.TemporaryDirectory(prefix="raylift-copy-") as tmp:
            dest = os.path.join(tmp, loc.name)
            with open(dest, "wb") as f:
                f.write(read_bytes(loc))
            yield dest
        return
    files = list_files(loc)
    if not files:
        raise DataError(f"{loc.uri}: nothing there (no files under that prefix)")
    with tempfile.TemporaryDirectory(prefix="raylift-copy-") as tmp:
        for rel in files:
            dest = os.path.join(tmp, rel)
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            with open(dest, "wb") as f:
                f.write(read_bytes(loc.child(rel)))
        yield tmp
