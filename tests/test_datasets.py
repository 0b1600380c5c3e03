"""Datasets: values and shapes, determinism, preprocessing math, and MNIST
against a local HTTP server (nothing here touches the internet)."""

from __future__ import annotations

import gzip
import hashlib
import http.server
import os
import sys
import threading

import numpy as np
import pytest

from portanet import datasets as D

# -------------------------------------------------------------- logic gates --

TRUTH = {"and": [0, 0, 0, 1], "or": [0, 1, 1, 1], "xor": [0, 1, 1, 0]}


@pytest.mark.parametrize("kind", TRUTH)
def test_truth_tables(kind):
    x, y = D.logic_gate(kind)
    assert x.dtype == y.dtype == np.float32
    np.testing.assert_array_equal(x, [[0, 0], [0, 1], [1, 0], [1, 1]])
    np.testing.assert_array_equal(y, np.array(TRUTH[kind], dtype=np.float32).reshape(4, 1))


@pytest.mark.parametrize("kind", TRUTH)
def test_random_gate_rows_follow_the_notebook(kind):
    x, y = D.logic_gate(kind, n=100, seed=0)
    bits = np.random.default_rng(0).integers(2, size=(100, 2))  # the notebook's draw
    np.testing.assert_array_equal(x, bits.astype(np.float32))
    table = dict(zip([(0, 0), (0, 1), (1, 0), (1, 1)], TRUTH[kind], strict=True))
    assert x.shape == (100, 2) and y.shape == (100, 1) and y.dtype == np.float32
    np.testing.assert_array_equal(y[:, 0], [table[(a, b)] for a, b in bits.tolist()])
    np.testing.assert_array_equal(D.logic_gate(kind, n=100, seed=0)[0], x)
    assert not np.array_equal(D.logic_gate(kind, n=100, seed=1)[0], x)


def test_logic_gate_errors():
    with pytest.raises(ValueError, match="'nand'"):
        D.logic_gate("nand")
    with pytest.raises(ValueError, match="n must be a positive int"):
        D.logic_gate("and", n=0)


# ------------------------------------------------------------------ spirals --


def test_spirals_shapes_labels_and_radii():
    x, y = D.spirals(50, classes=4, noise=0.3, seed=2)
    assert x.shape == (200, 2) and x.dtype == np.float32
    assert y.shape == (200,) and y.dtype == np.int64
    np.testing.assert_array_equal(y, np.repeat(np.arange(4), 50))
    # Noise moves points along circles: every arm has radii linspace(0, 1, n).
    radii = np.hypot(x[:, 0], x[:, 1]).reshape(4, 50)
    np.testing.assert_allclose(radii, np.tile(np.linspace(0, 1, 50), (4, 1)), atol=1e-6)


def test_spirals_without_noise_follow_the_formula():
    x, _ = D.spirals(20, classes=3, noise=0.0)
    for j in range(3):
        r = np.linspace(0, 1, 20)
        t = np.linspace(4 * j, 4 * (j + 1), 20)
        expected = np.stack([r * np.sin(t), r * np.cos(t)], axis=1)
        np.testing.assert_allclose(x[20 * j : 20 * (j + 1)], expected, atol=1e-6)


def test_spirals_determinism():
    a, b, c = D.spirals(30, seed=5), D.spirals(30, seed=5), D.spirals(30, seed=6)
    np.testing.assert_array_equal(a[0], b[0])
    assert not np.allclose(a[0], c[0])
    with pytest.raises(ValueError, match="noise"):
        D.spirals(10, noise=-1.0)


# ------------------------------------------------------------------- digits --


def test_digits():
    pytest.importorskip("sklearn")
    x, y = D.digits()
    assert x.shape == (1797, 64) and x.dtype == np.float32
    assert y.shape == (1797,) and y.dtype == np.int64
    assert x.min() == 0.0 and x.max() == 1.0
    np.testing.assert_array_equal(x * 16, np.round(x * 16))  # 0..16 grey levels / 16
    np.testing.assert_array_equal(np.unique(y), np.arange(10))


def test_digits_without_sklearn_names_the_extra(monkeypatch):
    # None in sys.modules makes "import sklearn..." raise ImportError.
    for name in [m for m in sys.modules if m == "sklearn" or m.startswith("sklearn.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "sklearn", None)
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    with pytest.raises(ImportError, match=r'pip install "portanet\[datasets\]"'):
        D.digits()


# ---------------------------------------------------------- preprocessing --


def test_train_test_split_sizes_and_pairing():
    x = np.arange(50).reshape(25, 2)
    y = x[:, 0] * 10
    x_tr, x_te, y_tr, y_te = D.train_test_split(x, y, test_size=0.2, seed=0)
    assert x_tr.shape == (20, 2) and x_te.shape == (5, 2)
    assert y_tr.shape == (20,) and y_te.shape == (5,)
    np.testing.assert_array_equal(y_tr, x_tr[:, 0] * 10)  # rows stay paired
    np.testing.assert_array_equal(y_te, x_te[:, 0] * 10)
    np.testing.assert_array_equal(np.sort(np.concatenate([x_tr, x_te])[:, 0]), x[:, 0])
    assert not np.array_equal(x_tr[:, 0], np.sort(x_tr[:, 0]))  # shuffled
    assert D.train_test_split(x, y, test_size=0.1)[1].shape == (3, 2)  # ceil(2.5)
    assert D.train_test_split(x, y, test_size=7)[1].shape == (7, 2)


def test_train_test_split_determinism():
    x, y = np.arange(40.0).reshape(20, 2), np.arange(20)
    a = D.train_test_split(x, y, seed=3)
    b = D.train_test_split(x, y, seed=3)
    c = D.train_test_split(x, y, seed=4)
    for u, v in zip(a, b, strict=True):
        np.testing.assert_array_equal(u, v)
    assert not np.array_equal(a[1], c[1])


def test_train_test_split_stratified():
    y = np.repeat([0, 1, 2], [60, 30, 10])
    x = np.arange(100.0)[:, None]
    x_tr, x_te, y_tr, y_te = D.train_test_split(x, y, test_size=0.2, stratify=True, seed=1)
    np.testing.assert_array_equal(np.bincount(y_te), [12, 6, 2])
    np.testing.assert_array_equal(np.bincount(y_tr), [48, 24, 8])
    np.testing.assert_array_equal(y[x_te[:, 0].astype(int)], y_te)
    # 7 test rows of classes 2/3/5: quotas 1.4/2.1/3.5 floor to 1/2/3, and the
    # seventh row goes to the largest remainder (class 2).
    y = np.repeat([0, 1, 2], [2, 3, 5])
    _, _, _, y_te = D.train_test_split(np.zeros((10, 1)), y[:, None], test_size=7, stratify=True)
    np.testing.assert_array_equal(np.bincount(y_te[:, 0], minlength=3), [1, 2, 4])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"test_size": 0.0}, r"\(0, 1\)"),
        ({"test_size": 1.5}, r"\(0, 1\)"),
        ({"test_size": 10}, "at least one row"),
        ({"test_size": "0.2"}, "must be a number"),
    ],
)
def test_train_test_split_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        D.train_test_split(np.zeros((10, 2)), np.zeros(10), **kwargs)


def test_train_test_split_length_mismatch():
    with pytest.raises(ValueError, match="x has 10 rows but y has 9"):
        D.train_test_split(np.zeros((10, 2)), np.zeros(9))


def test_standardize_math():
    rng = np.random.default_rng(0)
    train = rng.normal(3.0, 2.0, size=(40, 3)).astype(np.float32)
    train[:, 2] = 5.0  # a constant column
    test = rng.normal(size=(6, 3)).astype(np.float32)
    s_train, s_test = D.standardize(train, test)
    assert s_train.dtype == s_test.dtype == np.float32
    np.testing.assert_allclose(s_train[:, :2].mean(axis=0), 0.0, atol=1e-6)
    np.testing.assert_allclose(s_train[:, :2].std(axis=0), 1.0, atol=1e-6)
    np.testing.assert_array_equal(s_train[:, 2], 0.0)  # std 0 -> divided by 1, no NaN
    mean = train.astype(np.float64).mean(axis=0)
    std = train.astype(np.float64).std(axis=0)
    std[2] = 1.0
    np.testing.assert_allclose(s_test, (test - mean) / std, rtol=1e-6)  # train statistics
    np.testing.assert_array_equal(D.standardize(train), s_train)
    assert D.standardize(np.arange(6).reshape(3, 2)).dtype == np.float32
    with pytest.raises(ValueError, match="x_test"):
        D.standardize(train, test[:, :2])


# -------------------------------------------------------------------- MNIST --


def _idx(array: np.ndarray) -> bytes:
    """An IDX file (uint8 data) of ``array``."""
    header = bytes([0, 0, 0x08, array.ndim]) + np.array(array.shape, ">u4").tobytes()
    return header + array.astype(np.uint8).tobytes()


@pytest.fixture
def fake_mnist():
    """Small MNIST-like arrays and their gzip IDX files, by file name."""
    rng = np.random.default_rng(0)
    arrays = {
        "train_images": rng.integers(0, 256, size=(6, 28, 28), dtype=np.uint8),
        "train_labels": rng.integers(0, 10, size=6, dtype=np.uint8),
        "test_images": rng.integers(0, 256, size=(4, 28, 28), dtype=np.uint8),
        "test_labels": rng.integers(0, 10, size=4, dtype=np.uint8),
    }
    arrays["train_images"][0, 0, 0], arrays["train_images"][0, 0, 1] = 0, 255
    files = {D.MNIST_FILES[role]: gzip.compress(_idx(a), mtime=0) for role, a in arrays.items()}
    return arrays, files


def _sha(files):
    return {name: hashlib.sha256(data).hexdigest() for name, data in files.items()}


class _Server:
    """An HTTP server on 127.0.0.1 serving ``files`` (a dict that tests may change)."""

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.requests: list[str] = []
        self.release = threading.Event()
        self.stall = False
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                server.requests.append(self.path)
                if server.stall:
                    server.release.wait(5)
                    return
                data = server.files.get(self.path.rsplit("/", 1)[-1])
                if data is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/mnist/"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def close(self):
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


@pytest.fixture
def server(fake_mnist):
    s = _Server()
    s.files = dict(fake_mnist[1])
    yield s
    s.close()


def test_mnist_download_parse_and_cache(server, fake_mnist, tmp_path):
    arrays, files = fake_mnist
    cache = tmp_path / "cache"
    (x_tr, y_tr), (x_te, y_te) = D.mnist(cache, mirror=server.url, checksums=_sha(files))
    assert sorted(server.requests) == sorted(f"/mnist/{n}" for n in files)
    assert x_tr.shape == (6, 784) and x_te.shape == (4, 784)
    assert x_tr.dtype == x_te.dtype == np.float32
    assert y_tr.dtype == y_te.dtype == np.int64
    np.testing.assert_array_equal(x_tr, arrays["train_images"].reshape(6, 784) / np.float32(255))
    np.testing.assert_array_equal(x_te, arrays["test_images"].reshape(4, 784) / np.float32(255))
    np.testing.assert_array_equal(y_tr, arrays["train_labels"])
    np.testing.assert_array_equal(y_te, arrays["test_labels"])
    assert x_tr.min() == 0.0 and x_tr.max() == 1.0
    assert sorted(os.listdir(cache)) == sorted(files)  # no temporary files left

    # A second call uses the cache: no request at all.
    again = D.mnist(cache, mirror=server.url, checksums=_sha(files))
    assert len(server.requests) == 4
    np.testing.assert_array_equal(again[0][0], x_tr)


def test_mnist_honours_the_cache_env_variable(server, fake_mnist, tmp_path, monkeypatch):
    monkeypatch.setenv("PORTANET_CACHE_DIR", str(tmp_path / "env-cache"))
    assert D.default_cache_dir() == tmp_path / "env-cache"
    D.mnist(mirror=server.url, checksums=_sha(fake_mnist[1]))
    assert sorted(os.listdir(tmp_path / "env-cache")) == sorted(fake_mnist[1])


def test_mnist_bad_checksum_deletes_and_raises(server, fake_mnist, tmp_path):
    files = fake_mnist[1]
    name = D.MNIST_FILES["train_labels"]
    good = _sha(files)
    server.files[name] = files[name][:-3] + b"xyz"
    bad_hash = hashlib.sha256(server.files[name]).hexdigest()
    with pytest.raises(D.ChecksumError) as info:
        D.mnist(tmp_path, mirror=server.url, checksums=good)
    message = str(info.value)
    assert name in message and good[name] in message and bad_hash in message
    assert isinstance(info.value, ValueError)
    assert name not in os.listdir(tmp_path)
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".part")]


def test_mnist_replaces_a_corrupted_cached_file(server, fake_mnist, tmp_path):
    files = fake_mnist[1]
    name = D.MNIST_FILES["test_images"]
    for n, data in files.items():
        (tmp_path / n).write_bytes(data)
    (tmp_path / name).write_bytes(b"rotten")
    (_, _), (x_te, _) = D.mnist(tmp_path, mirror=server.url, checksums=_sha(files))
    assert server.requests == [f"/mnist/{name}"]  # only the bad one was fetched again
    assert (tmp_path / name).read_bytes() == files[name]
    np.testing.assert_array_equal(x_te * 255, fake_mnist[0]["test_images"].reshape(4, 784))


def _malformed(fake_mnist):
    arrays = fake_mnist[0]
    good_labels = _idx(arrays["train_labels"])
    return {
        "truncated-data": gzip.compress(good_labels[:-2]),
        "bad-magic": gzip.compress(b"\x01\x02" + good_labels[2:]),
        "header-cut": gzip.compress(good_labels[:6]),
        "not-gzip": good_labels,
        "gzip-cut": gzip.compress(good_labels)[:-10],
        "count-mismatch": gzip.compress(_idx(arrays["train_labels"][:5])),
        "label-out-of-range": gzip.compress(_idx(np.full(6, 12, np.uint8))),
        "wrong-ndim": gzip.compress(_idx(arrays["train_labels"].reshape(2, 3))),
    }


@pytest.mark.parametrize(
    "variant, message",
    [
        ("truncated-data", "need 6 bytes of data, the file has 4"),
        ("bad-magic", "magic number"),
        ("header-cut", "cut short"),
        ("not-gzip", "not a valid gzip file"),
        ("gzip-cut", "not a valid gzip file"),
        ("count-mismatch", "6 images but 5 labels"),
        ("label-out-of-range", "0..9"),
        ("wrong-ndim", "1-d uint8"),
    ],
)
def test_mnist_malformed_idx(server, fake_mnist, tmp_path, variant, message):
    name = D.MNIST_FILES["train_labels"]
    server.files[name] = _malformed(fake_mnist)[variant]
    with pytest.raises(ValueError, match=message):
        D.mnist(tmp_path, mirror=server.url, checksums=_sha(server.files))


def test_mnist_http_error_names_the_url(server, fake_mnist, tmp_path):
    del server.files[D.MNIST_FILES["test_labels"]]
    with pytest.raises(OSError, match="t10k-labels-idx1-ubyte.gz.*404"):
        D.mnist(tmp_path, mirror=server.url, checksums=_sha(fake_mnist[1]))
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".part")]


def test_mnist_timeout(server, fake_mnist, tmp_path):
    server.stall = True
    with pytest.raises(OSError, match="timed out"):
        D.mnist(tmp_path, mirror=server.url, checksums=_sha(fake_mnist[1]), timeout=0.3)
    assert os.listdir(tmp_path) == []


def test_mnist_checksum_table_must_be_complete(tmp_path):
    with pytest.raises(ValueError, match="t10k-images-idx3-ubyte.gz"):
        D.mnist(tmp_path, mirror="http://127.0.0.1:9/", checksums={
            "train-images-idx3-ubyte.gz": "0" * 64, "train-labels-idx1-ubyte.gz": "0" * 64,
            "t10k-labels-idx1-ubyte.gz": "0" * 64})


def test_official_checksums_are_listed():
    assert set(D.MNIST_SHA256) == set(D.MNIST_FILES.values())
    assert D.MNIST_SHA256["train-images-idx3-ubyte.gz"].startswith("440fcabf73cc546f")
    assert all(len(h) == 64 and int(h, 16) >= 0 for h in D.MNIST_SHA256.values())


def test_read_idx_other_types(tmp_path):
    a = np.arange(-6, 6, dtype=">i4").reshape(3, 4)
    path = tmp_path / "ints.idx"
    path.write_bytes(bytes([0, 0, 0x0C, 2]) + np.array([3, 4], ">u4").tobytes() + a.tobytes())
    out = D.read_idx(path)
    assert out.dtype == np.int32 and out.dtype.isnative
    np.testing.assert_array_equal(out, np.arange(-6, 6).reshape(3, 4))
