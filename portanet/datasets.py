"""Small datasets for examples and tests, returned as host NumPy arrays.

Everything here runs on the host: arrays go to a network's device only when
they are fed to it (``Sequential.as_input``), once per batch.

- :func:`logic_gate`: the AND / OR / XOR truth tables of the notebook.
- :func:`spirals`: the classic CS231n spiral, a non-linear toy problem.
- :func:`digits`: scikit-learn's bundled 8x8 digits (needs ``portanet[datasets]``).
- :func:`mnist`: the MNIST IDX files, downloaded once, checked by SHA-256 and cached.
- :func:`train_test_split` and :func:`standardize`: the two preprocessing steps
  the examples need.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import os
import secrets
import urllib.error
import urllib.request
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "DEFAULT_MIRROR",
    "MNIST_FILES",
    "MNIST_SHA256",
    "ChecksumError",
    "default_cache_dir",
    "digits",
    "logic_gate",
    "mnist",
    "read_idx",
    "spirals",
    "standardize",
    "train_test_split",
]

#: Where :func:`mnist` downloads from (torchvision's mirror of Yann LeCun's files).
DEFAULT_MIRROR = "https://ossci-datasets.s3.amazonaws.com/mnist/"

#: The four MNIST files, by role.
MNIST_FILES: dict[str, str] = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}

#: SHA-256 of the official MNIST gzip files.
MNIST_SHA256: dict[str, str] = {
    "train-images-idx3-ubyte.gz":
        "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
    "train-labels-idx1-ubyte.gz":
        "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
    "t10k-images-idx3-ubyte.gz":
        "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
    "t10k-labels-idx1-ubyte.gz":
        "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
}

_CHUNK = 1 << 16


class ChecksumError(ValueError):
    """A downloaded file does not have the SHA-256 it should have."""


# ------------------------------------------------------------ toy data ----

_GATES = {
    "and": np.logical_and,
    "or": np.logical_or,
    "xor": np.logical_xor,
}


def logic_gate(kind: str, n: int | None = None, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Inputs and outputs of a two-input logic gate.

    Parameters
    ----------
    kind : {"and", "or", "xor"}
        The gate.
    n : int, optional
        None gives the 4-row truth table, in the order 00, 01, 10, 11. An int
        gives ``n`` random rows drawn as the notebook did
        (``rng.integers(2, size=(n, 2))``).
    seed : int
        Seeds ``numpy.random.default_rng`` for the random rows.

    Returns
    -------
    x : ndarray of float32, shape (4, 2) or (n, 2)
        Inputs, 0.0 or 1.0.
    y : ndarray of float32, shape (4, 1) or (n, 1)
        The gate applied to the two columns of ``x``.
    """
    gate = _GATES.get(kind.lower() if isinstance(kind, str) else kind)
    if gate is None:
        raise ValueError(f"logic_gate: kind must be 'and', 'or' or 'xor', got {kind!r}")
    if n is None:
        bits = np.array([[0, 0], [0, 1], [1, 0], [1, 1]])
    else:
        _check_positive_int("logic_gate: n", n)
        bits = np.random.default_rng(seed).integers(2, size=(n, 2))
    y = gate(bits[:, 0], bits[:, 1]).reshape(-1, 1)
    return bits.astype(np.float32), y.astype(np.float32)


def spirals(
    n: int, classes: int = 3, noise: float = 0.2, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """The CS231n spiral: ``classes`` arms of ``n`` points each, in the plane.

    Arm ``j`` has radii ``linspace(0, 1, n)`` and angles
    ``linspace(4 j, 4 (j + 1), n) + noise * N(0, 1)``; a point is
    ``(r sin t, r cos t)``. The noise moves points along the circle only, so
    every point keeps its radius.

    Parameters
    ----------
    n : int
        Points per class (the result has ``n * classes`` rows).
    classes : int
        Number of arms (and labels ``0 .. classes - 1``).
    noise : float
        Standard deviation of the angle noise, in radians.
    seed : int
        Seeds ``numpy.random.default_rng``.

    Returns
    -------
    x : ndarray of float32, shape (n * classes, 2)
    y : ndarray of int64, shape (n * classes,)
        The arm of each point; rows are grouped by class.
    """
    _check_positive_int("spirals: n", n)
    _check_positive_int("spirals: classes", classes)
    if isinstance(noise, bool) or not isinstance(noise, (int, float)) or not noise >= 0:
        raise ValueError(f"spirals: noise must be a number >= 0, got {noise!r}")
    rng = np.random.default_rng(seed)
    xs, ys = [], []
    for j in range(classes):
        r = np.linspace(0.0, 1.0, n)
        t = np.linspace(4.0 * j, 4.0 * (j + 1), n) + rng.standard_normal(n) * float(noise)
        xs.append(np.stack([r * np.sin(t), r * np.cos(t)], axis=1))
        ys.append(np.full(n, j, dtype=np.int64))
    return np.concatenate(xs).astype(np.float32), np.concatenate(ys)


def digits(images: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's bundled 8x8 handwritten digits (1,797 images, no download).

    Parameters
    ----------
    images : bool
        Return ``x`` as images ``(1797, 1, 8, 8)`` (one channel, for ``Conv2D``)
        rather than vectors ``(1797, 64)``.

    Returns
    -------
    x : ndarray of float32, shape (1797, 64), or (1797, 1, 8, 8) with ``images``
        Pixels scaled from 0..16 to [0, 1].
    y : ndarray of int64, shape (1797,)
        Digits 0..9.

    Raises
    ------
    ImportError
        If scikit-learn is missing; install it with ``pip install "portanet[datasets]"``.
    """
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:
        raise ImportError(
            'digits() needs scikit-learn; install it with pip install "portanet[datasets]"'
        ) from exc
    bunch = load_digits()
    x = np.asarray(bunch.data, dtype=np.float32) / np.float32(16.0)
    if images:
        x = x.reshape(-1, 1, 8, 8)
    return x, np.asarray(bunch.target, dtype=np.int64)


# ---------------------------------------------------------------- MNIST ----


def default_cache_dir() -> Path:
    """``PORTANET_CACHE_DIR`` if set, else ``~/.cache/portanet``."""
    env = os.environ.get("PORTANET_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "portanet"


def mnist(
    cache_dir: str | os.PathLike[str] | None = None,
    mirror: str = DEFAULT_MIRROR,
    *,
    checksums: Mapping[str, str] | None = None,
    timeout: float = 30.0,
    images: bool = False,
) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """MNIST: 60,000 training and 10,000 test images of handwritten digits.

    The four gzip files are downloaded once into ``cache_dir`` and verified by
    SHA-256. A file already in the cache with the right hash is not downloaded
    again; one with the wrong hash is downloaded again. Each download goes to a
    temporary file in the cache directory and is renamed into place only after
    its hash checks out, so an interrupted download never looks cached.

    Parameters
    ----------
    cache_dir : str or PathLike, optional
        Where the files are kept. Default: :func:`default_cache_dir`
        (``PORTANET_CACHE_DIR``, else ``~/.cache/portanet``).
    mirror : str
        Base URL; each file is fetched from ``mirror + "/" + file name``.
    checksums : mapping, optional
        File name to expected SHA-256 hex digest, for the four names in
        :data:`MNIST_FILES`. Default: :data:`MNIST_SHA256`, the official files.
    timeout : float
        Seconds to wait on the connection and on each read.
    images : bool
        Return ``x`` as images ``(n, 1, 28, 28)`` (one channel, for ``Conv2D``)
        rather than vectors ``(n, 784)``.

    Returns
    -------
    (x_train, y_train), (x_test, y_test)
        ``x`` float32 of shape ``(n, 784)`` (or ``(n, 1, 28, 28)``) in [0, 1]
        (pixel / 255), ``y`` int64.

    Raises
    ------
    ChecksumError
        A downloaded file has the wrong SHA-256. It is deleted; the message
        names the file and both hashes.
    ValueError
        A file is not a valid gzip IDX file, or images and labels disagree.
    OSError
        The download failed (HTTP error, no connection, timeout).
    """
    table = dict(MNIST_SHA256 if checksums is None else checksums)
    missing = [name for name in MNIST_FILES.values() if name not in table]
    if missing:
        raise ValueError(f"mnist: checksums has no SHA-256 for {missing}")
    folder = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    made = _make_folders(folder)
    try:
        paths = {role: _fetch(folder, name, mirror, table[name], timeout)
                 for role, name in MNIST_FILES.items()}
    except OSError as exc:
        for created in reversed(made):  # leave nothing behind that this call made and left empty
            with contextlib.suppress(OSError):
                created.rmdir()
        names = ", ".join(MNIST_FILES.values())
        raise OSError(f"{exc}. Without a connection, put the four files ({names}) into "
                      f"{folder} by hand (or point PORTANET_CACHE_DIR at a folder that "
                      "holds them)") from exc
    arrays = {role: read_idx(path) for role, path in paths.items()}
    train = _images_and_labels(arrays["train_images"], arrays["train_labels"], "train", images)
    test = _images_and_labels(arrays["test_images"], arrays["test_labels"], "t10k", images)
    return train, test


def _make_folders(folder: Path) -> list[Path]:
    """Create ``folder`` and its missing parents; return those created, outermost first."""
    missing = [p for p in (folder, *folder.parents) if not p.exists()][::-1]
    folder.mkdir(parents=True, exist_ok=True)
    return missing


def _images_and_labels(
    images: np.ndarray, labels: np.ndarray, which: str, as_images: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    if images.ndim != 3 or images.dtype != np.uint8:
        raise ValueError(
            f"mnist: {which} images must be a 3-d uint8 IDX array, "
            f"got {images.ndim}-d {images.dtype}"
        )
    if labels.ndim != 1 or labels.dtype != np.uint8:
        raise ValueError(
            f"mnist: {which} labels must be a 1-d uint8 IDX array, "
            f"got {labels.ndim}-d {labels.dtype}"
        )
    if images.shape[0] != labels.shape[0]:
        raise ValueError(
            f"mnist: {which} has {images.shape[0]} images but {labels.shape[0]} labels"
        )
    if labels.size and labels.max() > 9:
        raise ValueError(f"mnist: {which} labels must be digits 0..9, found {labels.max()}")
    shape = (images.shape[0], 1, *images.shape[1:]) if as_images else (images.shape[0], -1)
    x = images.reshape(shape).astype(np.float32) / np.float32(255.0)
    return x, labels.astype(np.int64)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _fetch(folder: Path, name: str, mirror: str, expected: str, timeout: float) -> Path:
    """Return ``folder / name``, downloading it unless a good copy is cached."""
    expected = expected.lower()
    path = folder / name
    if path.is_file() and _sha256(path) == expected:
        return path
    url = mirror.rstrip("/") + "/" + name
    # A unique temporary name in the same directory, so os.replace is atomic.
    tmp = folder / f".{name}.{secrets.token_hex(6)}.part"
    digest = hashlib.sha256()
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, open(tmp, "xb") as out:
            for chunk in iter(lambda: response.read(_CHUNK), b""):
                digest.update(chunk)
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
    except urllib.error.HTTPError as exc:
        tmp.unlink(missing_ok=True)
        raise OSError(f"mnist: downloading {url} failed: HTTP {exc.code} {exc.reason}") from exc
    except (urllib.error.URLError, OSError) as exc:
        tmp.unlink(missing_ok=True)
        reason = getattr(exc, "reason", None) or exc
        raise OSError(f"mnist: downloading {url} failed: {reason}") from exc
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    got = digest.hexdigest()
    if got != expected:
        tmp.unlink(missing_ok=True)
        path.unlink(missing_ok=True)  # a stale bad copy must not linger either
        raise ChecksumError(
            f"mnist: {name} downloaded from {url} has SHA-256 {got}, expected {expected}; "
            "the file was deleted"
        )
    os.replace(tmp, path)
    return path


# IDX type codes (http://yann.lecun.com/exdb/mnist/): all big-endian.
_IDX_DTYPES: dict[int, np.dtype[Any]] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an IDX file (gzip-compressed if its name ends in ``.gz``).

    The header is two zero bytes, a type code, the number of dimensions, and
    each dimension as a big-endian uint32; the data follows, big-endian.

    Returns
    -------
    ndarray
        In native byte order, with the dimensions from the header.

    Raises
    ------
    ValueError
        The file is not valid gzip, has a bad magic number or type code, or its
        size does not match its dimensions. The message names the file.
    """
    path = Path(path)
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                data = f.read()
        else:
            data = path.read_bytes()
    except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
        raise ValueError(f"{path.name} is not a valid gzip file: {exc}") from exc
    if len(data) < 4:
        raise ValueError(f"{path.name} is not an IDX file: {len(data)} bytes, no header")
    if data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise ValueError(
            f"{path.name} is not an IDX file: magic number {data[:4].hex()}, "
            "expected 0000 followed by a type code (08 for uint8) and a dimension count"
        )
    dtype, ndim = _IDX_DTYPES[data[2]], data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(f"{path.name}: IDX header for {ndim} dimensions is cut short")
    shape = tuple(int(d) for d in np.frombuffer(data, ">u4", ndim, 4))
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(data) - header != expected:
        raise ValueError(
            f"{path.name}: IDX dimensions {shape} need {expected} bytes of data, "
            f"the file has {len(data) - header}"
        )
    a = np.frombuffer(data, dtype, offset=header).reshape(shape)
    return a.astype(dtype.newbyteorder("="))


# -------------------------------------------------------- preprocessing ----


def train_test_split(
    x: Any,
    y: Any,
    test_size: float | int = 0.2,
    seed: int = 0,
    stratify: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Shuffle rows and split them into a training and a test set.

    Parameters
    ----------
    x, y : array_like
        Same number of rows.
    test_size : float or int
        A fraction in (0, 1) of the rows (rounded up, as scikit-learn does), or
        a number of rows. Both sets must end up non-empty.
    seed : int
        Seeds ``numpy.random.default_rng``.
    stratify : bool
        Keep the class proportions of ``y`` (class labels, shape ``(n,)`` or
        ``(n, 1)``) in both sets. Each class gives the test set its share of
        the test rows; leftover rows go to the classes with the largest
        remainders, so the test set has exactly the requested size.

    Returns
    -------
    x_train, x_test, y_train, y_test : ndarray
        In scikit-learn's order; rows of ``x`` and ``y`` stay paired.
    """
    x, y = np.asarray(x), np.asarray(y)
    if x.ndim == 0 or y.ndim == 0:
        raise ValueError("train_test_split: x and y must have at least one dimension")
    n = x.shape[0]
    if y.shape[0] != n:
        raise ValueError(f"train_test_split: x has {n} rows but y has {y.shape[0]}")
    n_test = _test_count(test_size, n)
    rng = np.random.default_rng(seed)
    if not stratify:
        order = rng.permutation(n)
        test, train = order[:n_test], order[n_test:]
    else:
        test, train = _stratified(y, n_test, rng)
    return x[train], x[test], y[train], y[test]


def _test_count(test_size: float | int, n: int) -> int:
    if isinstance(test_size, bool) or not isinstance(test_size, (int, float)):
        raise ValueError(f"train_test_split: test_size must be a number, got {test_size!r}")
    if isinstance(test_size, float):
        if not 0.0 < test_size < 1.0:
            raise ValueError(
                f"train_test_split: a fractional test_size must be in (0, 1), got {test_size!r}"
            )
        count = int(np.ceil(test_size * n))
    else:
        count = test_size
    if not 1 <= count <= n - 1:
        raise ValueError(
            f"train_test_split: test_size={test_size!r} of {n} rows gives {count} test rows; "
            f"both sets need at least one row"
        )
    return count


def _stratified(
    y: np.ndarray, n_test: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise ValueError(
            f"train_test_split: stratify needs class labels of shape (n,) or (n, 1), "
            f"got y of shape {y.shape}"
        )
    classes, inverse, counts = np.unique(y, return_inverse=True, return_counts=True)
    quota = counts * n_test / y.shape[0]
    take = np.floor(quota).astype(np.int64)
    # Largest remainders get the rows that flooring left over (stable: ties by class).
    short = n_test - int(take.sum())
    take[np.argsort(-(quota - take), kind="stable")[:short]] += 1
    test_parts, train_parts = [], []
    for k in range(classes.shape[0]):
        members = rng.permutation(np.flatnonzero(inverse == k))
        test_parts.append(members[: take[k]])
        train_parts.append(members[take[k] :])
    test = rng.permutation(np.concatenate(test_parts))
    train = rng.permutation(np.concatenate(train_parts))
    return test, train


def standardize(
    x_train: Any, x_test: Any = None
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Scale columns to mean 0 and standard deviation 1, with statistics of ``x_train``.

    ``x_test`` (if given) is scaled with the training mean and standard
    deviation, so nothing about the test set leaks into the scaling. A column
    with standard deviation 0 is divided by 1 instead (it becomes zeros).

    Parameters
    ----------
    x_train : array_like, shape (n, features)
    x_test : array_like, shape (m, features), optional

    Returns
    -------
    ndarray or (ndarray, ndarray)
        ``x_train`` scaled, or ``(x_train, x_test)`` scaled when ``x_test`` is
        given. A floating input keeps its dtype; other inputs become float32.
        The statistics are computed in float64.
    """
    a = np.asarray(x_train)
    if a.ndim != 2 or a.shape[0] == 0:
        raise ValueError(f"standardize: x_train must have shape (n, features), got {a.shape}")
    out_dtype = a.dtype if a.dtype.kind == "f" else np.dtype(np.float32)
    a64 = a.astype(np.float64)
    mean = a64.mean(axis=0)
    std = a64.std(axis=0)
    std[std == 0.0] = 1.0
    train = ((a64 - mean) / std).astype(out_dtype)
    if x_test is None:
        return train
    b = np.asarray(x_test)
    if b.ndim != 2 or b.shape[1] != a.shape[1]:
        raise ValueError(
            f"standardize: x_test must have shape (m, {a.shape[1]}) like x_train, got {b.shape}"
        )
    out_test_dtype = b.dtype if b.dtype.kind == "f" else np.dtype(np.float32)
    return train, ((b.astype(np.float64) - mean) / std).astype(out_test_dtype)


def _check_positive_int(what: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{what} must be a positive int, got {value!r}")
