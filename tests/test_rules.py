"""Guard the design rules (DESIGN.md) that a test can check.

1. Only ``backend.py`` and the host-side I/O, data and command-line code name a
   concrete array library. Every other module of ``portanet/`` must not import
   numpy, cupy, torch or jax, in any spelling: ``import x``, ``from x import``,
   ``importlib.import_module("x")`` or ``__import__("x")``, at any depth.
2. No hidden host syncs in a training step: on CuPy, ``train_step`` runs under
   ``cupyx.allow_synchronize(False)``.
"""

from __future__ import annotations

import ast
import os
from pathlib import Path

import numpy as np
import pytest

import portanet as pn

PACKAGE = Path(pn.__file__).resolve().parent
MAY_NAME_ARRAY_LIBRARIES = {"backend.py", "_safe_npz.py", "io.py", "datasets.py", "sklearn.py", "cli.py"}
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


@pytest.mark.skipif(
    os.environ.get("PORTANET_TEST_BACKEND", "numpy") != "cupy",
    reason="needs PORTANET_TEST_BACKEND=cupy",
)
def test_train_step_does_not_sync_on_cupy(xp):
    xp_, device = xp  # the fixture skips where cupy or a GPU is missing
    cupy = pytest.importorskip("cupy")
    cupyx = pytest.importorskip("cupyx")
    rng = np.random.default_rng(0)
    net = pn.Sequential(
        [pn.Dense(8, 16, activation="relu"), pn.Dropout(0.2),
         pn.Dense(16, 16, activation="gelu"), pn.Dense(16, 3)],
        backend=xp_, device=device, dtype="float32", seed=0,
    )
    x = cupy.asarray(rng.normal(size=(32, 8)), dtype=cupy.float32)
    y = cupy.asarray(rng.integers(0, 3, size=32))
    loss = pn.CrossEntropy(label_smoothing=0.1)
    opt = pn.Adam(lr=1e-2, clip_norm=1.0)
    net.train_step(x, y, loss, opt)  # the first step creates the optimizer state
    before = net.state_dict()
    with cupyx.allow_synchronize(False):
        for _ in range(3):
            last = net.train_step(x, y, loss, opt)
    assert isinstance(last, cupy.ndarray) and last.shape == ()
    assert np.isfinite(float(last))  # the loss reaches the host here, outside the guard
    after = net.state_dict()
    assert all(not np.array_equal(after[k], before[k]) for k in before)  # it trained
    with cupyx.allow_synchronize(False), pytest.raises(cupyx.DeviceSynchronized):
        float(last)  # the guard is live: a host read inside it is caught
