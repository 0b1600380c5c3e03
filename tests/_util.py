"""Small helpers shared by the tests (the fixtures live in conftest.py)."""

from __future__ import annotations

import contextlib
import json
import os
import signal

import numpy as np
import pytest
from hypothesis import strategies as st

import portanet as pn
from portanet import activations as A
from portanet.backend import backend_name

#: The session's backend (``PORTANET_TEST_BACKEND``), as the ``xp`` fixture reads it.
BACKEND = os.environ.get("PORTANET_TEST_BACKEND", "numpy")
#: ``PORTANET_TEST_REQUIRE_BACKEND=1``: what the session's backend needs fails instead of skipping.
REQUIRE_BACKEND = os.environ.get("PORTANET_TEST_REQUIRE_BACKEND", "") not in ("", "0")
#: ``PORTANET_TEST_CUPY=emulated``: the cupy backend is the stand-in of ``tests/_fake_cupy``.
EMULATED_CUPY = os.environ.get("PORTANET_TEST_CUPY", "") == "emulated"


def skip_or_fail(reason: str) -> None:
    """Skip for ``reason``, or fail under ``PORTANET_TEST_REQUIRE_BACKEND=1``.

    For what the session's backend and device need: a machine that should have
    them (``bench/gpu_check.sh``) must not pass by skipping.
    """
    if REQUIRE_BACKEND:
        pytest.fail(f"PORTANET_TEST_REQUIRE_BACKEND=1: {reason}", pytrace=False)
    pytest.skip(reason)


def require_session_backend() -> None:
    """Skip (or fail, as :func:`skip_or_fail`) unless the session's backend loads here:
    for tests that run it in a subprocess rather than through the ``xp`` fixture."""
    from portanet.backend import get_namespace

    try:
        get_namespace(BACKEND)
    except (ImportError, RuntimeError) as exc:  # not installed; CuPy without a GPU
        skip_or_fail(str(exc))


def needs_real_cuda(what: str) -> None:
    """For a test that needs a real GPU (torch CUDA tensors, device pointers, DLPack
    between libraries): skip under the CuPy stand-in, else :func:`skip_or_fail`."""
    if EMULATED_CUPY:
        pytest.skip(f"needs real CUDA ({what}); the CuPy stand-in has no GPU")
    skip_or_fail(f"needs real CUDA ({what})")


#: Every built-in activation, by name, as the gradient tests draw them.
ACTIVATIONS = {
    "identity": lambda: A.identity,
    "relu": lambda: A.relu,
    "leaky_relu": lambda: A.LeakyReLU(0.1),  # the notebook's slope
    "elu": lambda: A.ELU(0.7),  # alpha != 1: f' jumps at 0 too
    "sigmoid": lambda: A.sigmoid,
    "tanh": lambda: A.tanh,
    "gelu": lambda: A.gelu,
    "silu": lambda: A.silu,
    "softplus": lambda: A.softplus,
    "softmax": lambda: A.softmax,
}


def host(a):
    """A float64 host copy of any array."""
    return pn.to_numpy(a).astype(np.float64)


def put(xp, device, a, dtype: str):
    """Move a host array to the backend as ``dtype`` (cast on the host first)."""
    return xp.asarray(np.asarray(a, dtype=dtype), device=device)


def assert_on(xp, device, a, dtype: str | None = None, shape=None):
    """Assert that ``a`` is an array of ``xp`` on ``device`` (and of ``dtype``, ``shape``)."""
    from array_api_compat import array_namespace
    from array_api_compat import device as device_of

    assert backend_name(array_namespace(a)) == backend_name(xp)
    assert device_of(a) == device, f"array on {device_of(a)}, expected {device}"
    if dtype is not None:
        assert a.dtype == getattr(xp, dtype), f"dtype {a.dtype}, expected {dtype}"
    if shape is not None:
        assert tuple(a.shape) == tuple(shape)


def randomize(net, rng, scale: float = 1.0) -> None:
    """Random weights (std scale/sqrt(fan_in)) and nonzero random biases, drawn on the host."""
    state = {}
    for name, p in net.state_dict().items():
        std = scale / np.sqrt(p.shape[0]) if p.ndim == 2 else 0.5
        state[name] = rng.normal(0.0, std, size=p.shape)
    net.load_state_dict(state)


def make_targets(loss_name: str, rng, n: int, k: int) -> np.ndarray:
    """Targets that suit the named loss: labels, probabilities, or real values."""
    if loss_name.startswith("cross_entropy") and "labels" in loss_name:
        return rng.integers(0, k, size=n)
    if loss_name.startswith("cross_entropy"):
        return rng.dirichlet(np.ones(k), size=n)
    if loss_name == "bce_with_logits":
        return rng.uniform(0.0, 1.0, size=(n, k))
    return rng.normal(0.0, 1.0, size=(n, k))


@st.composite
def network_specs(draw, activations: list[str], losses: list[str]) -> dict:
    """A random network: depth 1-5, widths 1-64, batch 1-33, activations, loss, dropout."""
    depth = draw(st.integers(1, 5))
    widths = draw(st.lists(st.integers(1, 64), min_size=depth + 1, max_size=depth + 1))
    return {
        "widths": widths,
        "activations": draw(st.lists(st.sampled_from(activations),
                                     min_size=depth, max_size=depth)),
        "bias": draw(st.lists(st.booleans(), min_size=depth, max_size=depth)),
        "dropout": draw(st.lists(st.sampled_from([0.0, 0.0, 0.25, 0.5]),
                                 min_size=depth - 1, max_size=depth - 1)),
        "batch": draw(st.integers(1, 33)),
        "loss": draw(st.sampled_from(losses)),
        "seed": draw(st.integers(0, 2**32 - 1)),
    }


def layers_from_spec(spec: dict, activation) -> list:
    """The layers of a :func:`network_specs` draw; ``activation(name)`` makes each unit."""
    layers = []
    w = spec["widths"]
    for i, name in enumerate(spec["activations"]):
        if i > 0 and spec["dropout"][i - 1]:
            layers.append(pn.Dropout(spec["dropout"][i - 1]))
        layers.append(pn.Dense(w[i], w[i + 1], activation=activation(name), bias=spec["bias"][i]))
    return layers


@contextlib.contextmanager
def sigint_handler(handler=signal.default_int_handler):
    """``handler`` (default: Python's own Ctrl-C handler) for SIGINT for the duration,
    whatever this process inherited (``nohup`` and background jobs start with SIGINT
    ignored, which fit respects). A ``KeyboardInterrupt`` that escapes the body fails
    the test (pytest would otherwise stop the whole run as if a user had pressed Ctrl-C)."""
    outer = signal.signal(signal.SIGINT, handler)
    try:
        yield
    except KeyboardInterrupt as exc:
        raise AssertionError("a Ctrl-C (SIGINT) escaped the code under test") from exc
    finally:
        signal.signal(signal.SIGINT, outer)


class WorstReport:
    """The worst difference seen per test function, written as JSON at the end of a module
    to the file named by the environment variable ``env`` (figures for the README)."""

    def __init__(self, env: str):
        self.env, self.worst = env, {}

    def record(self, *diffs: float) -> None:
        test = os.environ.get("PYTEST_CURRENT_TEST", "?").split("::")[-1].split("[")[0].split(" ")[0]
        self.worst[test] = max(self.worst.get(test, 0.0), *diffs)

    def write(self) -> None:
        path = os.environ.get(self.env)
        if path:
            with open(path, "w") as f:
                json.dump(dict(sorted(self.worst.items())), f, indent=1)


def record_need_input_grad(monkeypatch, layer_class) -> list:
    """The ``need_input_grad`` of every call of ``layer_class.backward`` from now on."""
    asked: list = []
    backward = layer_class.backward

    def recording(self, grad_out, need_input_grad=True):
        asked.append(need_input_grad)
        return backward(self, grad_out, need_input_grad)

    monkeypatch.setattr(layer_class, "backward", recording)
    return asked
