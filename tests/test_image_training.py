"""Convolutional networks end to end: training, checkpoints, ``to()``, ``summary()``,
divergence rollback of BatchNorm's buffers, image data sets and ``portanet train --model cnn``."""

from __future__ import annotations

import re

import numpy as np
import pytest
from _util import assert_on, host

import portanet as pn
from portanet.cli import main

sklearn = pytest.importorskip("sklearn")


def small_cnn(backend=None, device=None, seed=0, dtype="float32"):
    return pn.Sequential([
        pn.Conv2D(1, 4, 3, padding=1, bias=False), pn.BatchNorm(4), pn.ReLU(),
        pn.Residual([pn.Conv2D(4, 4, 3, padding="same"), pn.ReLU()]), pn.MaxPool2D(2),
        pn.Flatten(), pn.Dropout(0.2), pn.Dense(64, 10),
    ], backend=backend, device=device, dtype=dtype, seed=seed, input_shape=(1, 8, 8))


@pytest.fixture(scope="module")
def digits():
    x, y = pn.datasets.digits(images=True)
    return x[:512], y[:512]


def test_digits_and_mnist_as_images():
    x, y = pn.datasets.digits(images=True)
    flat, labels = pn.datasets.digits()
    assert x.shape == (1797, 1, 8, 8) and x.dtype == np.float32
    np.testing.assert_array_equal(x.reshape(1797, 64), flat)
    np.testing.assert_array_equal(y, labels)


def test_mnist_images_come_from_the_idx_shape(tmp_path):
    import gzip

    from test_datasets import _idx, _Server, _sha

    rng = np.random.default_rng(0)
    arrays = {"train_images": rng.integers(0, 256, (3, 28, 28)), "train_labels": np.arange(3),
              "test_images": rng.integers(0, 256, (2, 28, 28)), "test_labels": np.arange(2)}
    files = {pn.datasets.MNIST_FILES[k]: gzip.compress(_idx(a), mtime=0) for k, a in arrays.items()}
    server = _Server()
    server.files = files
    try:
        (x, _), (xt, _) = pn.datasets.mnist(tmp_path, mirror=server.url, checksums=_sha(files),
                                            images=True)
    finally:
        server.close()
    assert x.shape == (3, 1, 28, 28) and xt.shape == (2, 1, 28, 28)
    np.testing.assert_array_equal(x[:, 0], arrays["train_images"].astype(np.float32)
                                  / np.float32(255))


def test_summary_shows_image_shapes():
    text = small_cnn().summary()
    assert "(n, 4, 8, 8)" in text and "(n, 4, 4, 4)" in text and "(n, 64)" in text
    assert "input shape: (n, 1, 8, 8)" in text
    # Conv2D 36, BatchNorm 8, Residual (conv 148), Dense 650
    assert re.search(r"Residual\(.*\)\s+\(n, 4, 8, 8\)\s+148", text)
    assert "total parameters: 842" in text


def test_cnn_learns_digits(digits):
    x, y = digits
    net = small_cnn()
    history = net.fit(x, y, loss="cross_entropy", optimizer=pn.Adam(1e-2), epochs=8,
                      batch_size=32, metrics=["accuracy"], verbose=0)
    assert history.history["accuracy"][-1] > 0.85  # 0.896 on numpy
    assert history.history["loss"][-1] < history.history["loss"][0] / 5


def test_checkpoint_round_trip_and_bitwise_resume(digits, tmp_path):
    x, y = digits

    def fit(net, opt, epochs, initial=0):
        net.fit(x, y, loss="cross_entropy", optimizer=opt, epochs=epochs, batch_size=64,
                verbose=0, initial_epoch=initial)

    straight, opt = small_cnn(), pn.AdamW(3e-3)
    fit(straight, opt, 4)
    half, half_opt = small_cnn(), pn.AdamW(3e-3)
    fit(half, half_opt, 2)
    half.save(tmp_path / "cnn.npz", optimizer=half_opt)
    meta = pn.io.read_metadata(tmp_path / "cnn.npz")
    assert meta["buffers"] == {"1.running_mean": [4], "1.running_var": [4]}
    assert "3.layers.0.weight" in meta["parameters"]
    back, back_opt = pn.load(tmp_path / "cnn.npz", return_optimizer=True)
    assert back.config() == half.config() and back.epoch == 2
    fit(back, back_opt, 4, initial=2)
    for name, value in straight.state_dict().items():
        np.testing.assert_array_equal(back.state_dict()[name], value, err_msg=name)


def test_to_moves_a_cnn_with_its_buffers(xp, digits):
    xs, device = xp
    x, y = digits
    net, opt = small_cnn(), pn.Adam(1e-2)
    net.fit(x, y, loss="cross_entropy", optimizer=opt, epochs=1, batch_size=64, verbose=0)
    expected = host(net.predict(x[:16]))
    net.to(xs, device)
    for arrays in (net.parameters(), net.buffers()):
        for a in arrays.values():
            assert_on(xs, device, a, "float32")
    np.testing.assert_allclose(host(net.predict(x[:16])), expected, rtol=1e-4, atol=1e-5)
    net.fit(x, y, loss="cross_entropy", optimizer=opt, epochs=1, batch_size=64, verbose=0)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_divergence_rollback_restores_batchnorm_statistics(digits):
    x, y = digits
    net = small_cnn()
    net.fit(x, y, loss="cross_entropy", optimizer=pn.SGD(0.01), epochs=1, batch_size=64,
            verbose=0)
    kept = net.state_dict()
    bad = x.copy()
    bad[:, 0, 3, 3] = np.nan  # the first forward pass writes NaN into the running statistics
    with pytest.raises(pn.TrainingDivergedError, match="loss is nan at epoch 1, step 1"):
        net.fit(bad, y, loss="cross_entropy", optimizer=pn.SGD(0.01), epochs=1,
                batch_size=64, verbose=0, shuffle=False)
    for name, value in net.state_dict().items():
        np.testing.assert_array_equal(value, kept[name], err_msg=name)


def test_eval_mode_uses_the_running_statistics(digits):
    x, y = digits
    net = small_cnn()
    net.fit(x, y, loss="cross_entropy", optimizer=pn.Adam(1e-2), epochs=1, verbose=0)
    one = host(net.predict(x[:1]))  # a batch of one: only running statistics can normalize it
    many = host(net.predict(x[:50]))[:1]
    np.testing.assert_allclose(one, many, rtol=1e-5, atol=1e-6)
    stats = {k: v.copy() for k, v in net.state_dict().items() if "running" in k}
    net.evaluate(x, y, loss="cross_entropy")
    for k, v in stats.items():  # evaluation never moves them
        np.testing.assert_array_equal(net.state_dict()[k], v)


def test_cli_trains_and_evaluates_a_cnn(capsys, tmp_path):
    model = tmp_path / "cnn.npz"
    assert main(["train", "--dataset", "digits", "--model", "cnn", "--epochs", "3",
                 "--verbose", "0", "--save", str(model)]) == 0
    out = capsys.readouterr().out
    assert "digits (1437 train of which 10% validate, 360 test), cnn" in out
    accuracy = float(re.search(r"test accuracy: ([\d.]+)", out).group(1))
    assert accuracy > 0.9
    net = pn.load(model)
    assert net.input_shape == (1, 8, 8) and any(isinstance(la, pn.Conv2D) for la in net.layers)
    assert main(["evaluate", str(model), "--dataset", "digits"]) == 0
    again = float(re.search(r"test accuracy: ([\d.]+)", capsys.readouterr().out).group(1))
    assert again == accuracy


def test_cli_cnn_needs_an_image_dataset(capsys):
    assert main(["train", "--dataset", "xor", "--model", "cnn"]) == 2
    assert "--model cnn needs images; dataset 'xor' has none" in capsys.readouterr().err
