"""Safe ``.npz`` files: an atomic write and a validated read, never pickle.

This module knows nothing of portanet: it writes a mapping of names to NumPy
arrays as an uncompressed ``.npz`` archive and reads one back, checking
everything on the way in. ``numpy.load`` can open the files it writes.

- :func:`write_atomic` writes to a temporary file in the target's folder,
  flushes and fsyncs it, renames it over the target and fsyncs the folder: a
  crash leaves either the old file or the new one, never a broken one.
- :func:`read` refuses anything that is not exactly an archive of ``.npy``
  members holding plain numbers: pickled (object) arrays, duplicate members,
  sizes a member cannot have (a zip bomb), ``.npy`` data shorter or longer
  than its header says, and damaged zip data (CRC-32). Every problem with the
  content raises :class:`NpzError`; :class:`NotNpzError` when the file is not
  an npz archive at all.
"""

from __future__ import annotations

import io
import os
import secrets
import struct
import zipfile
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import numpy.lib.format as npy_format

__all__ = ["NotNpzError", "NpzError", "read", "read_bytes", "to_bytes", "write_atomic"]

#: A deflated member cannot expand more than ~1032:1; a larger claim is damage.
MAX_DEFLATE_RATIO = 1100
#: Slack, in bytes, on top of a member's largest plausible size.
SIZE_SLACK = 1 << 20

# Everything that parsing damaged zip / npy bytes can raise. Parsing runs on
# bytes already in memory, so an OSError here is about content, not the disk.
_PARSE_ERRORS = (
    zipfile.BadZipFile,
    zipfile.LargeZipFile,
    zlib.error,
    struct.error,
    UnicodeError,
    ValueError,
    KeyError,
    IndexError,
    TypeError,
    AttributeError,
    OSError,
    EOFError,
    NotImplementedError,  # a flipped compression-method field
    RuntimeError,  # a flipped "encrypted" flag
    OverflowError,
    MemoryError,  # a damaged header that asks for an absurd size
)


class NpzError(ValueError):
    """The bytes are not a valid, safe npz archive (truncated, corrupted, pickled, ...)."""


class NotNpzError(NpzError):
    """The bytes are not an npz (zip) archive at all."""


# ---------------------------------------------------------------- write ----


def write_atomic(path: str | os.PathLike[str], arrays: Mapping[str, np.ndarray]) -> None:
    """Write ``arrays`` (name -> array) to ``path`` as an uncompressed ``.npz``, atomically.

    The name is the member's name without ``.npy``. The folder must exist;
    ``path`` is written exactly as given (no suffix is added).
    """
    path = Path(path)
    directory = path.absolute().parent
    tmp = _create_temp(directory, path.name)
    try:
        with open(tmp, "wb") as f:
            _write_npz(f, arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_directory(directory)


def to_bytes(arrays: Mapping[str, np.ndarray]) -> bytes:
    """The ``.npz`` archive that :func:`write_atomic` would write, as bytes."""
    buffer = io.BytesIO()
    _write_npz(buffer, arrays)
    return buffer.getvalue()


def _create_temp(directory: Path, name: str) -> Path:
    """Create a new empty file next to the target. The kernel applies the umask to
    mode 0o666, so the file gets the permissions a plain ``open`` would give."""
    for _ in range(100):
        tmp = directory / f".{name}.{secrets.token_hex(6)}.tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
        os.close(fd)
        return tmp
    raise FileExistsError(f"could not create a temporary file in {directory}")


def _write_npz(f: Any, arrays: Mapping[str, np.ndarray]) -> None:
    """``numpy.savez`` to an open file, uncompressed and with pickling off."""
    with zipfile.ZipFile(f, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for key, a in arrays.items():
            with zf.open(key + ".npy", "w", force_zip64=True) as member:
                npy_format.write_array(member, np.ascontiguousarray(a), allow_pickle=False)


def _fsync_directory(directory: Path) -> None:
    """Make the rename durable. Not every platform can open a directory (Windows)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# ----------------------------------------------------------------- read ----


def read(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """Read and validate the npz file at ``path``: name -> native, writeable array.

    ``FileNotFoundError`` (and other OS errors) pass through; problems with the
    content raise :class:`NpzError`.
    """
    return read_bytes(Path(path).read_bytes())


def read_bytes(data: bytes) -> dict[str, np.ndarray]:
    """Validate and parse the bytes of an npz archive (see :func:`read`)."""
    try:
        members = _unzip(data)
        return {key: _parse_npy(key, raw) for key, raw in members.items()}
    except NpzError:
        raise
    except _PARSE_ERRORS as exc:
        raise NpzError(f"truncated or corrupted: {type(exc).__name__}: {exc}") from exc


def _unzip(data: bytes) -> dict[str, bytes]:
    if not data:
        raise NotNpzError("the file is empty")
    if not data.startswith(b"PK"):
        raise NotNpzError(f"not a zip/npz archive (it starts with {data[:8]!r})")
    members: dict[str, bytes] = {}
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        for info in zf.infolist():
            if not info.filename.endswith(".npy") or info.is_dir():
                raise NpzError(f"unexpected archive member {info.filename!r}")
            key = info.filename[: -len(".npy")]
            if key in members:
                raise NpzError(f"archive member {info.filename!r} appears twice")
            # A stored member cannot outgrow the file, nor can deflate expand more
            # than ~1032:1; a larger claim is damage (or a zip bomb), not data.
            ratio = 1 if info.compress_type == zipfile.ZIP_STORED else MAX_DEFLATE_RATIO
            if info.file_size > ratio * len(data) + SIZE_SLACK:
                raise NpzError(f"archive member {info.filename!r} claims an absurd size "
                               f"({info.file_size} bytes in a file of {len(data)})")
            members[key] = zf.read(info)  # verifies the member's CRC-32
    return members


def _parse_npy(key: str, raw: bytes) -> np.ndarray:
    """One ``.npy`` member, refusing object (pickled) arrays; returns a writeable copy."""
    fp = io.BytesIO(raw)
    version = npy_format.read_magic(fp)
    if version == (1, 0):
        shape, fortran, dtype = npy_format.read_array_header_1_0(fp)
    elif version == (2, 0):
        shape, fortran, dtype = npy_format.read_array_header_2_0(fp)
    else:
        raise NpzError(f"entry {key!r}: unsupported .npy version {version}")
    if dtype.hasobject:
        raise NpzError(
            f"entry {key!r} holds Python objects (a pickle); these files never do, "
            "and loading pickles could run arbitrary code"
        )
    if dtype.kind not in "biuf" or dtype.fields is not None:
        raise NpzError(f"entry {key!r} has dtype {dtype}, expected numbers")
    count = 1
    for s in shape:
        count *= int(s)
    offset = fp.tell()
    if len(raw) - offset != count * dtype.itemsize:
        raise NpzError(
            f"entry {key!r}: shape {shape} of {dtype} needs {count * dtype.itemsize} bytes of "
            f"data, found {len(raw) - offset}"
        )
    a = np.frombuffer(raw, dtype=dtype, count=count, offset=offset)
    a = a.reshape(shape, order="F" if fortran else "C")
    return np.array(a, dtype=dtype.newbyteorder("="), order="C")  # native, writeable
