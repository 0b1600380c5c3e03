"""The structure the code keeps: one registry per kind, one activation-layer type, short
functions, imports that run one way, a layer protocol with shapes and buffers."""

from __future__ import annotations

import ast
import inspect
import io
import tokenize
from pathlib import Path

import numpy as np
import pytest
from _util import assert_on, host, put

import portanet as pn
from portanet import activations as A
from portanet.cli import build_parser
from portanet.registry import Registry

PACKAGE = Path(pn.__file__).resolve().parent


# --------------------------------------------------------------- registries ----


def test_registry_builds_by_name_and_config_and_lists_known_names():
    shapes = Registry("shape")
    shapes.register("square", lambda side=1.0: ("square", side), aliases=("box",))
    assert shapes.create("square") == ("square", 1.0)
    assert shapes.create({"name": "box", "side": 2.0}) == ("square", 2.0)
    assert shapes.names() == ["square"] and "box" in shapes and "circle" not in shapes
    with pytest.raises(ValueError, match=r"unknown shape 'circle'; known shapes are square"):
        shapes.create("circle")
    with pytest.raises(ValueError, match=r"bad parameters for shape 'square'"):
        shapes.create({"name": "square", "radius": 1})
    with pytest.raises(ValueError, match=r"shape 'square' is already registered"):
        shapes.register("square", lambda: None)
    shapes.register("square", lambda: "new", replace=True)
    assert shapes.create("square") == "new"


def test_case_insensitive_registry():
    assert pn.optim.OPTIMIZERS["Adam"] is pn.Adam and pn.optim.OPTIMIZERS["ADAMW"] is pn.AdamW
    assert isinstance(pn.optim.get("SGD", lr=0.5), pn.SGD)


@pytest.fixture
def cube():
    """``cube`` registered as an activation for the duration of one test."""
    act = pn.activations.register("cube", lambda x: x * x * x, lambda x: 3.0 * x * x)
    yield act
    del A.REGISTRY._factories["cube"]


def test_registered_activation_works_by_name_everywhere(cube, xp, tmp_path):
    xs, device = xp
    assert isinstance(cube, pn.Activation) and cube.name == "cube"
    assert A.get("cube") is cube and "cube" in A.names()
    net = pn.Sequential([pn.Dense(3, 4, activation="cube"), pn.ActivationLayer("cube"),
                         pn.Dense(4, 2)], backend=xs, device=device, seed=0)
    x = np.linspace(-1, 1, 6).reshape(2, 3)
    w, b = net.state_dict()["0.weight"], net.state_dict()["0.bias"]
    z = (x.astype(np.float32) @ w + b) ** 9  # cube, then cube again
    w2, b2 = net.state_dict()["2.weight"], net.state_dict()["2.bias"]
    np.testing.assert_allclose(host(net.predict(x)), z @ w2 + b2, rtol=1e-4)
    net.train_step(x, [[0.0, 1.0], [1.0, 0.0]], "mse", pn.Adam(1e-2))
    path = tmp_path / "cube.npz"
    net.save(path)
    back = pn.load(path, backend=xs, device=device)
    assert back.layers[0].activation is cube and back.layers[1].activation is cube
    np.testing.assert_array_equal(host(back.predict(x)), host(net.predict(x)))
    assert "cube" in _choices("train", "--activation")


def test_unregistered_activation_cannot_be_saved(tmp_path):
    square = pn.Activation(lambda x: x * x, lambda x: 2.0 * x, name="square")
    net = pn.Sequential([pn.Dense(2, 2, activation=square)], seed=0)
    with pytest.raises(ValueError, match=r"cannot be saved: unknown activation .*'square'.*register"):
        net.save(tmp_path / "m.npz")
    assert not list(tmp_path.iterdir())


def _choices(command: str, flag: str) -> list[str]:
    sub = next(a for a in build_parser()._actions if a.dest == "command").choices[command]
    return list(next(a for a in sub._actions if flag in a.option_strings).choices)


def test_cli_choices_are_the_registries():
    assert _choices("train", "--activation") == A.names()
    assert _choices("train", "--optimizer") == pn.optim.OPTIMIZERS.names()


@pytest.mark.parametrize("module", [A, pn.losses, pn.initializers, pn.optim, pn.layers,
                                    pn.metrics])
def test_each_kind_has_one_registry(module):
    registries = [v for v in vars(module).values() if isinstance(v, Registry)]
    expected = 2 if module is pn.optim else 1  # optimizers and schedules
    assert len(registries) == expected


def test_registries_rebuild_what_they_describe():
    assert pn.losses.get({"name": "huber", "delta": 0.5}).delta == 0.5
    assert pn.losses.get("cross_entropy").takes_logits
    init = pn.initializers.get({"name": "normal", "mean": 1.0, "std": 0.5})
    assert abs(init(np.random.default_rng(0), (4000,), 1, 1).mean() - 1.0) < 0.05
    assert pn.metrics.get("acc", pn.MSE()).from_logits is False
    assert pn.metrics.get("accuracy", pn.CrossEntropy()).from_logits is True
    layer = pn.layers.from_config(pn.Dense(3, 2, activation=pn.LeakyReLU(0.2), bias=False).config())
    assert (layer.in_features, layer.out_features, layer.use_bias) == (3, 2, False)
    assert layer.activation.negative_slope == 0.2
    cosine = pn.optim.get_schedule({"name": "cosine", "total_steps": 10, "initial_lr": 0.5})
    assert cosine(0) == pytest.approx(0.5) and cosine(10) == pytest.approx(0.0)


# ------------------------------------------------- one activation-layer type ----


def test_one_activation_layer_type_for_every_spelling():
    made = [pn.Identity(), pn.ReLU(), pn.LeakyReLU(0.1), pn.ELU(0.5), pn.Sigmoid(), pn.Tanh(),
            pn.GELU(), pn.SiLU(), pn.Softplus(), pn.Softmax()]
    assert {type(layer) for layer in made} == {pn.ActivationLayer}
    names = [layer.activation.name for layer in made]
    assert names == ["identity", "relu", "leaky_relu", "elu", "sigmoid", "tanh", "gelu", "silu",
                     "softplus", "softmax"]
    assert made[2].activation.negative_slope == 0.1 and made[3].activation.alpha == 0.5
    assert repr(made[2]) == "ActivationLayer('leaky_relu', negative_slope=0.1)"


def _public_classes() -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ClassDef) and not node.name.startswith("_"):
                found.setdefault(node.name, []).append(path.name)
    return found


@pytest.mark.reads_source
def test_no_public_class_name_is_defined_twice():
    twice = {name: where for name, where in _public_classes().items() if len(where) > 1}
    assert not twice, twice


# -------------------------------------------------------------- short functions ----


def _code_lines(source: str) -> set[int]:
    """Lines with code: not blank, not comments, not docstrings."""
    lines = set()
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type not in (tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT,
                            tokenize.DEDENT, tokenize.ENDMARKER):
            lines.update(range(tok.start[0], tok.end[0] + 1))
    for node in ast.walk(ast.parse(source)):
        body = getattr(node, "body", None)
        if (isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef)) and body
                and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
                and isinstance(body[0].value.value, str)):
            lines -= set(range(body[0].lineno, body[0].end_lineno + 1))
    return lines


def long_functions(source: str, limit: int) -> list[str]:
    code = _code_lines(source)
    return [f"{node.name} ({n} lines)" for node in ast.walk(ast.parse(source))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and (n := sum(1 for line in range(node.lineno, node.end_lineno + 1) if line in code))
            > limit]


def test_the_length_counter_counts_code_only():
    body = "\n".join(f"    x{i} = {i}" for i in range(5))
    source = f'def f():\n    """Doc\n    string."""\n    # comment\n\n{body}\n'
    assert long_functions(source, 6) == []  # def line + 5 statements, docstring not counted
    assert long_functions(source, 5) == ["f (6 lines)"]


@pytest.mark.reads_source
@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")),
                         ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_function_is_longer_than_50_code_lines(path):
    assert long_functions(path.read_text(encoding="utf-8"), 50) == []


# ------------------------------------------------------------ one-way imports ----

#: Each module may import only modules before it in this list (DESIGN.md's module map).
ORDER = ["_version", "registry", "backend", "distributed", "activations", "initializers", "losses",
         "_fast_optim", "layers", "network", "optim", "metrics", "callbacks", "training",
         "testing", "_safe_npz", "io", "datasets", "sklearn", "demo", "cli", "__main__", "__init__"]
#: Methods of Sequential that may reach a later module: documented one-line delegates.
DELEGATES = {"train_step": "training", "fit": "training", "evaluate": "training", "save": "io"}


def _module_of(path: Path) -> str:
    """``layers`` for portanet/layers/conv.py, ``io`` for portanet/io.py."""
    return path.relative_to(PACKAGE).parts[0].removesuffix(".py")


def _portanet_imports(tree: ast.AST, depth: int = 0) -> list[tuple[str, ast.AST]]:
    """Runtime imports of portanet modules (those under ``if TYPE_CHECKING:`` are type hints),
    and ``_lower("name")``, network.py's lazy reach to a module below it. ``depth`` is 1 in
    a subpackage, whose own relative imports (level 1) stay inside it: reported as "."."""
    hints = {id(n) for block in ast.walk(tree) if isinstance(block, ast.If)
             and getattr(block.test, "id", None) == "TYPE_CHECKING" for n in ast.walk(block)}
    found = []
    for node in ast.walk(tree):
        if id(node) in hints:
            continue
        if isinstance(node, ast.ImportFrom) and node.level == depth + 1:
            names = [node.module] if node.module else [a.name for a in node.names]
            # ``from . import name``: a module, or a name of the package itself
            found += [(n.split(".")[0] if n.split(".")[0] in ORDER else "__init__", node)
                      for n in names]
        elif isinstance(node, ast.ImportFrom) and 0 < node.level <= depth:
            found.append((".", node))
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("portanet."):
            found.append((node.module.split(".")[1], node))
        elif (isinstance(node, ast.Call) and getattr(node.func, "id", None) == "_lower"
              and node.args and isinstance(node.args[0], ast.Constant)):
            found.append((node.args[0].value, node))
    return found


@pytest.mark.reads_source
def test_imports_run_one_way():
    modules = {_module_of(p) for p in PACKAGE.rglob("*.py")}
    assert modules <= set(ORDER), f"place {sorted(modules - set(ORDER))} in ORDER"
    bad = []
    for path in sorted(PACKAGE.rglob("*.py")):
        me = _module_of(path)
        tree = ast.parse(path.read_text(encoding="utf-8"))
        delegate_nodes = {id(n) for f in ast.walk(tree) if isinstance(f, ast.FunctionDef)
                          and me == "network" and f.name in DELEGATES for n in ast.walk(f)}
        depth = len(path.relative_to(PACKAGE).parts) - 1
        for target, node in _portanet_imports(tree, depth):
            if target == "." or ORDER.index(target) < ORDER.index(me):
                continue
            if id(node) in delegate_nodes:
                continue
            bad.append(f"{path.relative_to(PACKAGE)}:{node.lineno} imports {target}")
    assert not bad, bad


def test_the_import_checker_sees_lazy_and_delegated_imports():
    tree = ast.parse("def f():\n    from .io import save\n    return _lower('cli')\n")
    assert [t for t, _ in _portanet_imports(tree)] == ["io", "cli"]
    inside = ast.parse("from ..backend import size\nfrom .base import Layer\n")
    assert [t for t, _ in _portanet_imports(inside, depth=1)] == ["backend", "."]
    hinted = ast.parse("if TYPE_CHECKING:\n    from .cli import main\n")
    assert _portanet_imports(hinted) == []


@pytest.mark.reads_source
def test_delegates_are_one_call():
    for name, module in DELEGATES.items():
        method = getattr(pn.Sequential, name)
        tree = ast.parse(inspect.cleandoc("\n" + inspect.getsource(method)))
        body = tree.body[0].body[1:]  # after the docstring
        assert len(body) == 1, name
        call = body[0].value
        reach = call.func.value  # _lower("training").fit(...)
        assert reach.func.id == "_lower" and reach.args[0].value == module, name
        assert call.func.attr == name and method.__doc__ and module in method.__doc__, name


def test_fit_documents_every_keyword_where_users_look():
    from portanet.training import fit

    method = inspect.signature(pn.Sequential.fit).parameters
    function = inspect.signature(fit).parameters
    assert [p for p in method if p != "self"] == [p for p in function if p != "net"]
    for name, p in function.items():
        if name not in ("net", "x", "y"):
            assert p.default == method[name].default, name
            assert f"``{name}``" in pn.Sequential.fit.__doc__ and name in fit.__doc__, name


# ---------------------------------------------------------------- layer shapes ----


def test_output_shapes_and_summary():
    net = pn.Sequential([pn.Dense(8, 16, activation="relu"), pn.Dropout(0.1), pn.Dense(16, 3)],
                        seed=0)
    assert net.input_shape == (8,) and net.output_shape == (3,)
    assert pn.Dense(8, 16).output_shape((8,)) == (16,)
    assert pn.ReLU().output_shape((1, 28, 28)) == (1, 28, 28)
    text = net.summary()
    assert "(n, 16)" in text and "(n, 3)" in text and "input shape: (n, 8)" in text
    assert "144" in text and "51" in text and "total parameters: 195" in text


def test_dense_given_images_names_itself():
    with pytest.raises(ValueError, match=r"Dense\(64, 10\) \(layer 0\) expects 64 features per "
                                         r"sample.*\(1, 8, 8\).*Flatten"):
        pn.Sequential([pn.Dense(64, 10)], input_shape=(1, 8, 8))


def test_input_shape_is_checked_and_found_past_shape_keeping_layers():
    assert pn.Sequential([pn.Dropout(0.5), pn.ReLU(), pn.Dense(5, 2)]).input_shape == (5,)
    with pytest.raises(ValueError, match="give input_shape="):
        pn.Sequential([pn.ReLU()])
    with pytest.raises(ValueError, match="input_shape must be a tuple of positive ints"):
        pn.Sequential([pn.Dense(2, 2)], input_shape=(0,))


# ------------------------------------------------------------------ buffers ----


class RunningMean(pn.Layer):
    """A test layer with one buffer: ``y = x``; in training, ``mean <- 0.5 mean + 0.5 mean(x)``."""

    keeps_shape = True

    def __init__(self, features: int):
        super().__init__()
        self.features = features

    def buffer_shapes(self):
        return {"running_mean": (self.features,)}

    def build(self, ctx):
        super().build(ctx)
        self.buffers = {"running_mean": self.on_device(np.zeros(self.features))}

    def forward(self, x, training=False):
        if training:
            xp = self.ctx.xp
            self.buffers["running_mean"] = (0.5 * self.buffers["running_mean"]
                                            + 0.5 * xp.mean(x, axis=0))
        return x

    def backward(self, grad_out, need_input_grad=True):
        return grad_out if need_input_grad else None

    def config(self):
        return {"type": "RunningMean", "features": self.features}


@pytest.fixture
def running_mean_layer():
    pn.layers.REGISTRY.register("RunningMean", RunningMean)
    yield RunningMean
    del pn.layers.REGISTRY._factories["RunningMean"]


def _buffered_net(xs=None, device=None, seed=0):
    return pn.Sequential([pn.Dense(3, 4, activation="tanh"), RunningMean(4), pn.Dense(4, 2)],
                         backend=xs, device=device, seed=seed)


def test_buffers_are_state_but_never_trained(xp, running_mean_layer, tmp_path):
    xs, device = xp
    net = _buffered_net(xs, device)
    assert list(net.buffers()) == ["1.running_mean"]
    assert "1.running_mean" not in net.parameters()
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(6, 3)), rng.normal(size=(6, 2))
    opt = pn.Adam(1e-2)
    net.train_step(x, y, "mse", opt)
    assert all("1.running_mean" not in arrays for arrays in opt.state.values())
    mean = host(net.buffers()["1.running_mean"])
    assert np.abs(mean).sum() > 0
    state = net.state_dict()
    assert list(state) == [*net.parameters(), "1.running_mean"]
    np.testing.assert_array_equal(state["1.running_mean"], mean)

    path = tmp_path / "m.npz"
    net.save(path, optimizer=opt)
    assert pn.io.read_metadata(path)["buffers"] == {"1.running_mean": [4]}
    back = pn.load(path, backend=xs, device=device)
    assert_on(xs, device, back.buffers()["1.running_mean"], "float32", (4,))
    np.testing.assert_array_equal(host(back.buffers()["1.running_mean"]), mean)

    fresh = _buffered_net(xs, device, seed=1)
    fresh.load_state_dict(state)
    np.testing.assert_array_equal(host(fresh.buffers()["1.running_mean"]), mean)
    bad = dict(state)
    bad["1.running_mean"] = np.zeros(5)
    with pytest.raises(ValueError, match=r"1.running_mean has shape \(5,\), expected \(4,\)"):
        fresh.load_state_dict(bad)


def test_to_moves_buffers(xp, running_mean_layer):
    xs, device = xp
    net = _buffered_net()
    net.train_step(np.ones((2, 3)), np.zeros((2, 2)), "mse", pn.SGD(0.1))
    before = net.state_dict()["1.running_mean"]
    net.to(xs, device)
    assert_on(xs, device, net.buffers()["1.running_mean"], "float32", (4,))
    np.testing.assert_array_equal(host(net.buffers()["1.running_mean"]), before)


def test_checkpoint_buffers_are_checked_against_the_architecture(running_mean_layer, tmp_path):
    net = _buffered_net()
    net.save(tmp_path / "m.npz")
    from test_io import _rewrite

    def wrong(meta):
        meta["buffers"]["1.running_mean"] = [7]

    bad = _rewrite(tmp_path / "m.npz", tmp_path / "bad.npz", wrong,
                   {"buffer/1.running_mean": np.zeros(7, "f4")})
    with pytest.raises(pn.CheckpointError, match="buffers do not match the architecture"):
        pn.load(bad)


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
def test_divergence_rollback_restores_buffers(running_mean_layer):
    net = _buffered_net()
    x, y = np.ones((4, 3)), np.zeros((4, 2))
    net.fit(x, y, loss="mse", optimizer=pn.SGD(0.01), epochs=1, batch_size=None, verbose=0)
    kept = net.state_dict()
    with pytest.raises(pn.TrainingDivergedError):  # the forward pass moved the buffer first
        net.fit(x * 3.0, y + 1e30, loss="mse", optimizer=pn.SGD(0.01), epochs=1, batch_size=None,
                verbose=0)
    for name, value in net.state_dict().items():
        np.testing.assert_array_equal(value, kept[name], err_msg=name)


def test_a_layer_must_build_what_it_declares():
    class Liar(pn.Layer):
        keeps_shape = True

        def param_shapes(self):
            return {"w": (2,)}

        def build(self, ctx):
            super().build(ctx)
            self.params = {"w": self.on_device(np.zeros(3))}

    with pytest.raises(RuntimeError, match=r"built params \{'w': \(3,\)\}, but declares"):
        pn.Sequential([pn.Dense(2, 2), Liar()])


# --------------------------------------------------------- schedules as lr ----


def _schedule_run(make_optimizer, callbacks=()):
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(40, 3)), rng.integers(0, 2, size=40)
    net = pn.Sequential([pn.Dense(3, 8, activation="tanh"), pn.Dense(8, 2)], seed=0)
    opt = make_optimizer()
    lrs = []

    class Record(pn.Callback):
        def on_batch_end(self, step, logs):
            lrs.append(self.optimizer.lr)

    # Record first: it sees the lr that the step just used (a scheduler then sets the next)
    net.fit(x, y, loss="cross_entropy", optimizer=opt, epochs=3, batch_size=10, verbose=0,
            callbacks=[Record(), *callbacks])
    return net.state_dict(), lrs, opt


def test_schedule_as_lr_equals_the_scheduler_callback():
    cos = lambda **kw: pn.CosineAnnealing(total_steps=12, warmup_steps=3, **kw)  # noqa: E731
    by_lr, lrs, opt = _schedule_run(lambda: pn.Adam(lr=cos(initial_lr=0.05)))
    by_callback, lrs_cb, _ = _schedule_run(lambda: pn.Adam(lr=0.05),
                                           [pn.LearningRateScheduler(cos())])
    # The lr used by step t is schedule(t); the recorded value is the one the step used.
    assert lrs == [pytest.approx(cos(initial_lr=0.05)(t)) for t in range(12)]
    assert lrs == lrs_cb
    for name in by_lr:
        np.testing.assert_array_equal(by_lr[name], by_callback[name])
    assert opt.step_count == 12


def test_a_function_of_the_step_count_is_an_lr():
    _, lrs, opt = _schedule_run(lambda: pn.SGD(lr=lambda t: 0.1 / (1 + t)))
    assert lrs == [pytest.approx(0.1 / (1 + t)) for t in range(12)]
    with pytest.raises(ValueError, match="cannot be saved"):
        opt.config()
    opt = pn.SGD(lr=lambda t: 0.1 - t)
    opt.step({"w": np.ones(1)}, {"w": np.ones(1)})
    with pytest.raises(ValueError, match=r"schedule gave -0.9 at step 1"):
        opt.step({"w": np.ones(1)}, {"w": np.ones(1)})
    with pytest.raises(ValueError, match="has no initial_lr"):
        pn.Adam(lr=pn.CosineAnnealing(10))


def test_scheduled_optimizer_resumes_exactly(tmp_path):
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(40, 3)), rng.integers(0, 2, size=40)

    def make():
        return pn.Sequential([pn.Dense(3, 8, activation="tanh"), pn.Dense(8, 2)], seed=0)

    def adam():
        return pn.Adam(lr=pn.StepLR(5, gamma=0.5, initial_lr=0.05))

    straight = make()
    straight.fit(x, y, loss="cross_entropy", optimizer=adam(), epochs=4, batch_size=10, verbose=0)
    half, opt = make(), adam()
    half.fit(x, y, loss="cross_entropy", optimizer=opt, epochs=2, batch_size=10, verbose=0)
    half.save(tmp_path / "m.npz", optimizer=opt)
    back, back_opt = pn.load(tmp_path / "m.npz", return_optimizer=True)
    assert isinstance(back_opt.schedule, pn.StepLR) and back_opt.lr == opt.lr
    back.fit(x, y, loss="cross_entropy", optimizer=back_opt, epochs=4, batch_size=10, verbose=0,
             initial_epoch=2)
    for name, value in straight.state_dict().items():
        np.testing.assert_array_equal(back.state_dict()[name], value, err_msg=name)


def test_scheduler_callbacks_refuse_a_scheduled_optimizer():
    opt = pn.Adam(lr=pn.ExponentialLR(0.9, initial_lr=0.01))
    net = pn.Sequential([pn.Dense(2, 1)], seed=0)
    for cb in (pn.LearningRateScheduler(pn.StepLR(1)), pn.ReduceLROnPlateau("loss")):
        with pytest.raises(ValueError, match="schedule"):
            net.fit(np.ones((2, 2)), np.ones((2, 1)), loss="mse", optimizer=opt, verbose=0,
                    callbacks=[cb])


# ------------------------------------------------ derivatives from the output ----


@pytest.mark.parametrize("act,df", [(A.sigmoid, lambda y: y * (1 - y)),
                                    (A.tanh, lambda y: 1 - y * y)])
def test_sigmoid_and_tanh_backward_use_the_output(xp, act, df):
    xs, device = xp
    y = put(xs, device, [[0.1, 0.5, 0.9]], "float32")
    g = put(xs, device, [[1.0, 2.0, 3.0]], "float32")
    # x is not needed: the derivative is written in terms of y = f(x)
    got = act.backward(None, y, g)
    np.testing.assert_allclose(host(got), host(g) * df(host(y)), rtol=1e-6)


# ------------------------------------------------------- one way onto a device ----


def test_to_array_casts_on_the_host_by_one_table(xp):
    from portanet.backend import HOST_DTYPES, has_float64, size, to_array

    xs, device = xp
    assert set(HOST_DTYPES) >= {"float32", "float64", "int64"}
    a = to_array([[1, 2], [3, 4]], xs, device, "float32")
    assert_on(xs, device, a, "float32", (2, 2))
    labels = to_array(np.array([3, 1]), xs, device, xs.int64)
    assert_on(xs, device, labels, "int64", (2,))
    doubles = to_array(np.ones(3), xs, device)
    assert doubles.dtype == (xs.float64 if has_float64(xs, device) else xs.float32)
    assert size(a) == 4 and size(xs.zeros((0, 5), device=device)) == 0
    with pytest.raises(ValueError, match="unsupported dtype"):
        to_array([1], xs, device, "complex64")


# ------------------------------------------------- checkpoints from before ----

DATA = Path(__file__).resolve().parent / "data"


@pytest.mark.parametrize("name", ["mlp_adam_f32", "mlp_sgd_f64", "mlp_adamw_f32"])
def test_checkpoints_written_before_the_restructuring_still_load(name):
    """tests/data/v1_*.npz were written by portanet at 8b64b6c (format_version 1), with the
    predictions it gave, before and after one more training step."""
    expected = np.load(DATA / "v1_expected.npz")
    net, opt = pn.load(DATA / f"v1_{name}.npz", backend="numpy", return_optimizer=True)
    assert pn.io.read_metadata(DATA / f"v1_{name}.npz")["format_version"] == 1
    x = expected["x"]
    np.testing.assert_array_equal(host(net.predict(x)), expected[f"{name}/predict"])
    loss = "mse" if name == "mlp_sgd_f64" else "cross_entropy"
    y = expected["y"]
    target = np.eye(3)[y] if loss == "mse" else y
    net.train_step(x, target, loss, opt)
    np.testing.assert_array_equal(host(net.predict(x)), expected[f"{name}/after_step"])
