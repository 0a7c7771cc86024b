"""One storage layer for every URI pyarrow or fsspec knows (preprocessing/store/storage.py).

Local paths and `file://` URIs, `memory://` (an fsspec-only filesystem: pyarrow has no native one),
`s3://` on the local SeaweedFS server and `gs://` on the local GCS emulator (fake-gcs-server) go
through the same functions; the layer has no code per scheme beyond the S3 and GCS endpoint
settings. Unknown schemes and missing optional packages are DataErrors
naming the URI.
"""
from __future__ import annotations

import hashlib
import pickle
import uuid

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from preprocessing.store import storage
from preprocessing.errors import DataError


@pytest.fixture
def s3_env(s3_server, monkeypatch):
    for key, value in s3_server.env().items():
        monkeypatch.setenv(key, value)
    return s3_server


@pytest.fixture
def gcs_env(gcs_server, monkeypatch):
    for key, value in gcs_server.env().items():
        monkeypatch.setenv(key, value)
    return gcs_server


@pytest.fixture(params=["path", "file", "memory", "s3", "gs"])
def root(request, tmp_path) -> str:
    """A fresh, empty directory URI of each kind."""
    if request.param == "path":
        return str(tmp_path / "root")
    if request.param == "file":
        return f"file://{tmp_path}/root"
    if request.param == "memory":
        return f"memory://raylift-test-{uuid.uuid4().hex}/root"
    if request.param == "gs":
        gcs = request.getfixturevalue("gcs_env")
        return f"gs://{gcs.bucket}/storage-{uuid.uuid4().hex}"
    server = request.getfixturevalue("s3_env")
    return f"s3://{server.bucket}/storage-{uuid.uuid4().hex}"


def test_every_operation_works_on_every_kind_of_uri(root):
    loc = storage.open_location(root + "/")
    assert not loc.uri.endswith("/")
    storage.make_dirs(loc)
    data = b"raylift " * 1000
    storage.write_bytes(loc.child("a", "one.bin"), data)
    storage.write_bytes(loc.child("a", "b", "two.bin"), b"2")
    assert storage.exists(loc.child("a")) and storage.is_file(loc.child("a", "one.bin"))
    assert storage.read_bytes(loc.child("a", "one.bin")) == data
    assert storage.sha256_of(loc.child("a", "one.bin")) == hashlib.sha256(data).hexdigest()
    assert storage.list_files(loc) == ["a/b/two.bin", "a/one.bin"]
    assert [i.base_name for i in storage.list_dir(loc.child("a"))] == ["b", "one.bin"]

    # Parquet through the location's filesystem, as readers and Ray Data use it.
    with loc.fs.open_output_stream(loc.child("t.parquet").path) as f:
        pq.write_table(pa.table({"x": [1, 2, 3]}), f)
    assert pq.ParquetFile(loc.fs.open_input_file(loc.child("t.parquet").path)).read()["x"].to_pylist() == [1, 2, 3]

    storage.move_tree(loc.child("a"), loc.child("moved"))
    assert storage.list_files(loc) == ["moved/b/two.bin", "moved/one.bin", "t.parquet"]
    storage.delete_tree(loc.child("moved"))
    assert not storage.exists(loc.child("moved"))
    with pytest.raises(DataError, match="not found.*nothing.bin"):
        storage.read_bytes(loc.child("nothing.bin"))


def test_file_uri_is_the_local_path(tmp_path):
    a, b = storage.open_location(f"file://{tmp_path}/x"), storage.open_location(str(tmp_path / "x"))
    assert a.uri == b.uri == str(tmp_path / "x") and a.path == b.path
    assert storage.is_local(f"file://{tmp_path}") and storage.is_local("runs") and not storage.is_local("s3://b/p")


def test_locations_pickle_for_ray_tasks():
    loc = storage.open_location(f"memory://raylift-pickle-{uuid.uuid4().hex}/d")
    storage.write_bytes(loc.child("f"), b"x")
    copy = pickle.loads(pickle.dumps(loc))
    assert copy.uri == loc.uri and storage.read_bytes(copy.child("f")) == b"x"  # same process, same store


def test_gs_uses_pyarrows_gcs_filesystem_with_the_emulator_endpoint(gcs_env):
    """gs:// is pyarrow's own GcsFileSystem; STORAGE_EMULATOR_HOST is the only switch to the
    emulator, and the filesystem (endpoint included) pickles to Ray workers."""
    loc = storage.open_location(f"gs://{gcs_env.bucket}/datasets/")
    assert isinstance(loc.fs, pafs.GcsFileSystem) and loc.path == f"{gcs_env.bucket}/datasets"
    assert loc.uri == f"gs://{gcs_env.bucket}/datasets" and loc.child("x").uri == f"gs://{gcs_env.bucket}/datasets/x"
    storage.write_bytes(loc.child("f"), b"gcs")
    copy = pickle.loads(pickle.dumps(loc))
    assert storage.read_bytes(copy.child("f")) == b"gcs"


def test_a_bad_gcs_endpoint_is_a_data_error_naming_the_variable(monkeypatch):
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", "http://")
    with pytest.raises(DataError, match="STORAGE_EMULATOR_HOST"):
        storage.open_location("gs://bucket/p")


@pytest.mark.parametrize("uri, expected", [
    ("nosuchscheme://bucket/x", r"unsupported location .nosuchscheme://bucket/x"),
    ("s3://", "no bucket"),
    ("", "empty"),
])
def test_bad_uris_are_data_errors_naming_them(uri, expected):
    with pytest.raises(DataError, match=expected):
        storage.open_location(uri)


def test_a_missing_optional_filesystem_package_says_which_extra():
    """`az://` is adlfs's spelling (pyarrow's native Azure filesystem knows `abfs://`): without
    adlfs the error names the URI and the extra that installs it."""
    import importlib.util

    if importlib.util.find_spec("adlfs") is not None:
        pytest.skip("adlfs is installed here, so az:// opens")
    with pytest.raises(DataError, match=r"az://container/p.*pip install 'raylift\[azure\]'"):
        storage.open_location("az://container/p")
