"""Guard the design rules (DESIGN.md) that a test can check.

1. Only ``backend.py`` and the host-side I/O, data and command-line code name a
   concrete array library. Every other module of ``portanet/`` must not import
   numpy, cupy, torch or jax, in any spelling: ``import x``, ``from x import``,
   ``importlib.import_module("x")`` or ``__import__("x")``, at any depth.
2. No hidden host syncs in a training step: on CuPy (real, or the stand-in of
   ``tests/_fake_cupy``), ``train_step`` runs under ``cupyx.allow_synchronize(False)``
   for every optimizer, clipping and loss, and for the image layers.
"""

from __future__ import annotations

import ast
import importlib
import warnings
from pathlib import Path

import numpy as np
import pytest
from _util import BACKEND, EMULATED_CUPY, make_targets

import portanet as pn

PACKAGE = Path(pn.__file__).resolve().parent
MAY_NAME_ARRAY_LIBRARIES = {"backend.py", "distributed.py", "_safe_npz.py", "io.py", "datasets.py",
                            "sklearn.py", "cli.py"}
ARRAY_LIBRARIES = {"numpy", "cupy", "cupyx", "torch", "jax", "jaxlib"}


def _library(module: str) -> str:
    """The library a module belongs to; ``array_api_compat.X`` wraps, so it counts as ``X``."""
    parts = module.split(".")
    if parts[0] == "array_api_compat" and len(parts) > 1:
        return parts[1]
    return parts[0]


def _is_import_call(func: ast.expr) -> bool:
    """``importlib.import_module``, a bare ``import_module``, or ``__import__``."""
    if isinstance(func, ast.Attribute):
        return func.attr == "import_module"
    return isinstance(func, ast.Name) and func.id in ("import_module", "__import__")


def array_library_imports(source: str, filename: str = "<string>") -> list[str]:
    """Every import of an array library in ``source``, as ``"line N: module"``."""
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
            if node.module == "array_api_compat":  # from array_api_compat import numpy
                names += [f"array_api_compat.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Call) and _is_import_call(node.func) and node.args:
            arg = node.args[0]
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                names = [arg.value]
        found += [f"line {node.lineno}: {n}" for n in names if _library(n) in ARRAY_LIBRARIES]
    return found


def _modules() -> list[Path]:
    """Every module of the package except those that may name array libraries."""
    return sorted(p for p in PACKAGE.rglob("*.py")
                  if not (p.parent == PACKAGE and p.name in MAY_NAME_ARRAY_LIBRARIES))


@pytest.mark.reads_source
@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_module_does_not_import_array_libraries(path):
    found = array_library_imports(path.read_text(encoding="utf-8"), str(path))
    assert not found, (
        f"portanet/{path.relative_to(PACKAGE)} imports an array library ({'; '.join(found)}): "
        "take xp from the network or from array_namespace(x), and move host code to backend.py"
    )


def test_the_math_modules_are_checked():
    names = {str(p.relative_to(PACKAGE)) for p in _modules()}
    assert {"activations.py", "losses.py", "layers/dense.py", "layers/conv.py", "optim.py",
            "_fast_optim.py", "network.py", "testing.py"} <= names


@pytest.mark.parametrize(
    "source",
    [
        "import numpy as np",
        "import numpy.linalg",
        "import torch, math",
        "from jax import numpy as jnp",
        "from jax.numpy import zeros",
        "import cupyx",
        "from array_api_compat import numpy as np",
        "import array_api_compat.torch",
        "def f():\n    import cupy\n    return cupy",
        "import importlib\nxp = importlib.import_module('torch')",
        "from importlib import import_module\nxp = import_module('jax.numpy')",
        "xp = __import__('numpy')",
        "import importlib\nxp = importlib.import_module('array_api_compat.cupy')",
        "try:\n    import numpy\nexcept ImportError:\n    pass",
    ],
)
def test_the_checker_finds_imports(source):
    assert array_library_imports(source), source


@pytest.mark.parametrize(
    "source",
    [
        "from array_api_compat import array_namespace",
        "import array_api_compat",
        "from . import backend",
        "from .backend import to_numpy",
        "import numpyro_like_name_is_not_numpy as n",
        '"""Mentions numpy and torch in prose."""',
        "x = 'numpy'",
        "import importlib\nname = 'torch'\nxp = importlib.import_module(name)",  # not a literal
    ],
)
def test_the_checker_allows_the_rest(source):
    assert not array_library_imports(source), source


# ------------------------------------------------------------ host syncs ----

ON_CUPY = pytest.mark.skipif(BACKEND != "cupy", reason="needs PORTANET_TEST_BACKEND=cupy")
OPTIMIZERS = {
    "sgd": lambda clip: pn.SGD(lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3, **clip),
    "adam": lambda clip: pn.Adam(lr=1e-2, weight_decay=1e-3, amsgrad=True, **clip),
    "adamw": lambda clip: pn.AdamW(lr=1e-2, weight_decay=0.05, **clip),
}
# A small clip, so that the clipped branch is the one taken.
CLIPPING = {"clip_norm": {"clip_norm": 0.01}, "clip_value": {"clip_value": 1e-3},
            "both": {"clip_norm": 0.01, "clip_value": 1e-3}}


def _cupy():
    cupy = importlib.import_module("cupy")  # the fixture has loaded it (or skipped)
    return cupy, importlib.import_module("cupyx")


def _no_sync_steps(net, x, y, loss, opt, steps: int = 3):
    """``steps`` training steps, the first included, with any host sync an error."""
    cupy, cupyx = _cupy()
    before = net.state_dict()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # allow_synchronize is deprecated
        with cupyx.allow_synchronize(False):
            for _ in range(steps):
                last = net.train_step(x, y, loss, opt)
    assert isinstance(last, cupy.ndarray) and last.shape == ()
    assert np.isfinite(float(last))  # the loss reaches the host here, outside the guard
    after = net.state_dict()
    assert all(not np.array_equal(after[k], before[k]) for k in before)  # it trained
    return last


def _sync_cases() -> list:
    """Every optimizer x clipping x loss on cupy; elsewhere one skipped case, not 45."""
    if BACKEND != "cupy":
        return [pytest.param(None, None, None, id="cupy-only",
                             marks=pytest.mark.skip(reason="needs PORTANET_TEST_BACKEND=cupy"))]
    return [pytest.param(o, c, loss, id=f"{o}-{c}-{loss}")
            for o in OPTIMIZERS for c in CLIPPING for loss in pn.losses.names()]


@pytest.mark.parametrize("opt_name, clip, loss_name", _sync_cases())
def test_train_step_does_not_sync_on_cupy(xp, opt_name, clip, loss_name):
    """Every optimizer, with each clipping, on every loss: no host read in a step."""
    xp_, device = xp  # the fixture skips (or fails) where cupy or a GPU is missing
    cupy, cupyx = _cupy()
    rng = np.random.default_rng(0)
    net = pn.Sequential(
        [pn.Dense(8, 16, activation="relu"), pn.Dropout(0.2),
         pn.Dense(16, 16, activation="gelu"), pn.Dense(16, 3)],
        backend=xp_, device=device, dtype="float32", seed=0,
    )
    loss = pn.losses.get(loss_name)
    target = "cross_entropy_labels" if loss.accepts_labels else loss_name
    x = cupy.asarray(rng.normal(size=(32, 8)), dtype=cupy.float32)
    y = cupy.asarray(make_targets(target, rng, 32, 3))
    last = _no_sync_steps(net, x, y, loss, OPTIMIZERS[opt_name](CLIPPING[clip]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        with cupyx.allow_synchronize(False), pytest.raises(cupyx.DeviceSynchronized):
            float(last)  # the guard is live: a host read inside it is caught


@ON_CUPY
def test_image_train_step_does_not_sync_on_cupy(xp):
    """Convolution, pooling, normalization and a residual block, with labels as probabilities
    and a host batch (moved to the device in the step: a copy in, never a read back)."""
    xp_, device = xp
    rng = np.random.default_rng(1)
    net = pn.Sequential(
        [pn.Conv2D(1, 4, 3, padding=1), pn.BatchNorm(4), pn.ReLU(),
         pn.Residual([pn.Conv2D(4, 4, 3, padding="same"), pn.ReLU()]),
         pn.MaxPool2D(2), pn.Conv2D(4, 6, 3, stride=2, padding=1, dilation=1), pn.AvgPool2D(2),
         pn.Flatten(), pn.LayerNorm(6), pn.Dense(6, 3)],
        backend=xp_, device=device, dtype="float32", seed=0, input_shape=(1, 8, 8),
    )
    x = rng.normal(size=(16, 1, 8, 8)).astype(np.float32)
    y = make_targets("cross_entropy", rng, 16, 3)
    _no_sync_steps(net, x, y, pn.CrossEntropy(label_smoothing=0.1),
                   pn.AdamW(1e-2, clip_norm=0.01, clip_value=1e-3))


@ON_CUPY
def test_sample_weights_on_the_device_are_not_read_in_a_step(xp):
    """Weights already on the GPU are checked for their shape only (their values would
    need a sync); host weights are read, and their errors raised."""
    xp_, device = xp
    cupy, cupyx = _cupy()
    rng = np.random.default_rng(2)
    net = pn.Sequential([pn.Dense(8, 3)], backend=xp_, device=device, dtype="float32", seed=0)
    x = cupy.asarray(rng.normal(size=(32, 8)), dtype=cupy.float32)
    y = cupy.asarray(rng.normal(size=(32, 3)), dtype=cupy.float32)
    w = cupy.asarray(rng.uniform(0.5, 2.0, 32), dtype=cupy.float32)
    opt = pn.SGD(0.1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # allow_synchronize is deprecated
        with cupyx.allow_synchronize(False):
            for _ in range(2):
                net.train_step(x, y, "mse", opt, sample_weight=w)
    assert opt.step_count == 2
    with pytest.raises(ValueError, match="sample_weight must be >= 0"):
        net.train_step(x, y, "mse", opt, sample_weight=-w.get())


@pytest.mark.skipif(not EMULATED_CUPY, reason="checks the CuPy stand-in (PORTANET_TEST_CUPY=emulated)")
def test_the_stand_in_declares_what_cupy_syncs_on(xp):
    """The stand-in raises where real CuPy does: a host read, a boolean mask, a
    data-dependent shape, and array-api-compat's clip and sign (which portanet avoids)."""
    xp_, device = xp
    cupy, cupyx = _cupy()
    a = xp_.asarray(np.array([-2.0, 0.5, 3.0], dtype=np.float32), device=device)
    reads = [lambda: float(a[0]), lambda: bool(a[0] > 0), lambda: int(a[1]), a.get,
             a[0].item, a.tolist, lambda: repr(a), lambda: f"{a[0]:.2f}",
             lambda: a[a > 0], lambda: a.__setitem__(a > 0, 0.0), lambda: cupy.nonzero(a),
             lambda: xp_.clip(a, min=-1.0, max=1.0), lambda: xp_.sign(a)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        with cupyx.allow_synchronize(False):
            for read in reads:
                with pytest.raises(cupyx.DeviceSynchronized):
                    read()
            kept = xp_.minimum(xp_.maximum(a, -1.0), 1.0)  # elementwise: no sync
    np.testing.assert_array_equal(kept.get(), [-1.0, 0.5, 1.0])
    with pytest.raises(TypeError, match="Implicit conversion"):
        np.asarray(a)
    with pytest.raises(TypeError, match="Unsupported type"):
        a + np.ones(3, dtype=np.float32)  # a host array in a device operation
    with pytest.raises(ValueError, match="non-scalar numpy.ndarray"):
        a[:2] = np.zeros(2, dtype=np.float32)  # CuPy fills basic slices from scalars only
    with pytest.raises(TypeError, match="CPU arrays cannot be directly imported"):
        cupy.from_dlpack(np.ones(3))
    total = xp_.sum(a)
    assert isinstance(total, cupy.ndarray) and total.shape == ()  # a reduction is 0-d
    assert device == cupy.cuda.Device(0) and device != 0 and device != "cuda:0"
    with pytest.raises(TypeError, match="unhashable"):
        hash(device)
