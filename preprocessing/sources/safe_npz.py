"""Read (and deterministically write) the field's npz files without trusting their pickles.

VideoPose3D and P-STMO store nested dicts as pickled 0-d object arrays inside `.npz` zips, so the
usual `np.load(..., allow_pickle=True)` would run whatever a malicious file's pickle asks for
(docs/field_notes.md). `read_npz` parses each `.npy` member itself: plain arrays go through NumPy with
pickles disallowed; object arrays are unpickled by `RestrictedUnpickler`, which resolves only the
few NumPy globals needed to rebuild arrays, dtypes and scalars. Every other global (`os.system`,
`builtins.eval`, any class) is refused *before* it can be called, with a `DataError` naming the
file, the key and the refused global. The rebuilt object is then checked to contain only dicts,
lists, tuples, str, numbers, bool, None and arrays.

`write_npz` is the writer the synthetic generator uses: fixed zip timestamps and member order, so
the same content always gives byte-identical files (np.savez stamps the current time).
"""
from __future__ import annotations

import io
import os
import pickle
import zipfile
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np

from preprocessing.errors import DataError


def _codecs_encode_latin1(obj: str, encoding: str = "utf-8") -> bytes:
    """`_codecs.encode` as Python-2-era array pickles use it (latin1 bytes only; no other codec)."""
    if not isinstance(obj, str) or encoding.lower().replace("-", "") not in ("latin1", "iso88591"):
        raise pickle.UnpicklingError(f"_codecs.encode({type(obj).__name__}, {encoding!r}) is not allowed")
    return obj.encode("latin1")


def _numpy_globals() -> dict[tuple[str, str], Any]:
    """The globals an array/dtype/scalar pickle needs, under NumPy 1.x and 2.x module names."""
    try:
        from numpy._core import multiarray, numeric  # NumPy >= 2
    except ImportError:  # NumPy 1.x
        from numpy.core import multiarray, numeric

    allowed: dict[tuple[str, str], Any] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): _codecs_encode_latin1,
    }
    for module in ("numpy.core", "numpy._core"):
        allowed[(f"{module}.multiarray", "_reconstruct")] = multiarray._reconstruct
        allowed[(f"{module}.multiarray", "scalar")] = multiarray.scalar
        allowed[(f"{module}.numeric", "_frombuffer")] = numeric._frombuffer
    return allowed


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that resolves only NumPy's array-rebuilding globals.

    `find_class` is the single point where a pickle can reach code; refusing there means a refused
    global is never imported nor called.
    """

    def __init__(self, file: Any, where: str) -> None:
        super().__init__(file)
        self._where = where
        self._allowed = _numpy_globals()

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise DataError(
                f"{self._where}: refusing to unpickle global '{module}.{name}' (only plain data and "
                "NumPy arrays are allowed; the file may be malicious)"
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        raise DataError(f"{self._where}: refusing pickle persistent id {pid!r}")


_SCALARS = (str, int, float, bool, complex, type(None), np.generic)


def check_plain(obj: Any, where: str) -> None:
    """Raise DataError unless `obj` is built from dict/list/tuple/str/numbers/bool/None/arrays."""
    stack = [(obj, where)]
    while stack:
        value, path = stack.pop()
        if isinstance(value, np.ndarray):
            if value.dtype.hasobject and value.shape == ():
                stack.append((value.item(), path))
            elif value.dtype.hasobject:
                stack.extend((v, f"{path}[{i}]") for i, v in enumerate(value.reshape(-1)))
        elif isinstance(value, dict):
            for k, v in value.items():
                if not isinstance(k, _SCALARS):
                    raise DataError(f"{path}: dict key of type {type(k).__name__} is not plain data")
                stack.append((v, f"{path}[{k!r}]"))
        elif isinstance(value, (list, tuple)):
            stack.extend((v, f"{path}[{i}]") for i, v in enumerate(value))
        elif not isinstance(value, _SCALARS):
            raise DataError(f"{path}: object of type {type(value).__name__} is not plain data")


def _read_member(zf: zipfile.ZipFile, member: str, where: str) -> Any:
    """One `.npy` member: an array, or the Python object held by a 0-d object array."""
    with zf.open(member) as data:
        try:
            version = np.lib.format.read_magic(data)
            if version == (1, 0):
                shape, _, dtype = np.lib.format.read_array_header_1_0(data)
            else:
                shape, _, dtype = np.lib.format.read_array_header_2_0(data)
        except ValueError as e:
            raise DataError(f"{where}: not a valid .npy member ({e})") from None
        if dtype.hasobject:
            try:
                array = RestrictedUnpickler(data, where).load()
            except DataError:
                raise
            except Exception as e:  # any malformed pickle: UnpicklingError, EOFError, TypeError...
                raise DataError(f"{where}: corrupt pickled data ({type(e).__name__}: {e})") from None
    if not dtype.hasobject:
        with zf.open(member) as data:
            try:
                return np.lib.format.read_array(data, allow_pickle=False)
            except ValueError as e:
                raise DataError(f"{where}: cannot read array ({e})") from None
    if not isinstance(array, np.ndarray) or tuple(array.shape) != tuple(shape):
        raise DataError(f"{where}: pickled payload is not the {shape} object array its header declares")
    check_plain(array, where)
    return array.item() if array.shape == () else array


def read_npz(path: str | os.PathLike, required: Iterable[str], optional: Iterable[str] = ()) -> dict[str, Any]:
    """Read keys of an npz file safely. Missing file, non-npz file, missing key -> DataError.

    Returns {key: value} for every required key and each optional key present; 0-d object arrays
    are unwrapped into the dict/list they hold.
    """
    p = Path(path)
    if not p.is_file():
        raise DataError(f"file not found: {p}")
    try:
        zf = zipfile.ZipFile(p)
    except (zipfile.BadZipFile, OSError) as e:
        raise DataError(f"{p}: not an npz (zip) file ({e})") from None
    with zf:
        members = {Path(n).stem: n for n in zf.namelist() if n.endswith(".npy")}
        out: dict[str, Any] = {}
        for key in required:
            if key not in members:
                raise DataError(f"{p}: missing key '{key}' (found: {', '.join(sorted(members)) or 'none'})")
            out[key] = _read_member(zf, members[key], f"{p}:{key}")
        for key in optional:
            if key in members:
                out[key] = _read_member(zf, members[key], f"{p}:{key}")
    return out


def _npy_bytes(value: Any) -> bytes:
    buf = io.BytesIO()
    if isinstance(value, np.ndarray) and not value.dtype.hasobject:
        np.lib.format.write_array(buf, value, allow_pickle=False)
    else:
        holder = np.empty((), dtype=object)
        holder[()] = value
        np.lib.format.write_array(buf, holder, allow_pickle=True)
    return buf.getvalue()


def write_npz(path: str | os.PathLike, arrays: Mapping[str, Any]) -> None:
    """Write an uncompressed npz whose bytes depend only on `arrays` (fixed timestamps and order).

    Non-array values (nested dicts/lists, as VideoPose3D stores them) become pickled 0-d object
    arrays, readable by `read_npz` and by `np.load(..., allow_pickle=True)`.
    """
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for key, value in arrays.items():
            info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            zf.writestr(info, _npy_bytes(value))
