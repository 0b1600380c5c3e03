"""portanet.sklearn: scikit-learn's estimator checks, agreement with scikit-learn's own MLP,
meta-estimators, pickling, labels, multi-output, sample weights, partial_fit, warm_start,
array-API dispatch and bad input.

The estimators run on the session's backend (``PORTANET_TEST_BACKEND``); conftest.py sets
``SCIPY_ARRAY_API=1`` before scipy is imported, as array-API dispatch needs.
"""

from __future__ import annotations

import io
import os
import pickle
import subprocess
import sys
import warnings

import numpy as np
import pytest

pytest.importorskip("sklearn")

import sklearn  # noqa: E402
from sklearn import neural_network as sk  # noqa: E402
from sklearn.base import clone  # noqa: E402
from sklearn.calibration import CalibratedClassifierCV  # noqa: E402
from sklearn.datasets import make_classification  # noqa: E402
from sklearn.exceptions import ConvergenceWarning, NotFittedError  # noqa: E402
from sklearn.model_selection import GridSearchCV, cross_val_score  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402
from sklearn.utils._param_validation import InvalidParameterError  # noqa: E402
from sklearn.utils.estimator_checks import parametrize_with_checks  # noqa: E402

import portanet as pn  # noqa: E402
from portanet.sklearn import MLPClassifier, MLPRegressor  # noqa: E402

BACKEND = os.environ.get("PORTANET_TEST_BACKEND", "numpy")
if BACKEND == "cupy":
    pytest.importorskip("cupy")
try:  # the session's backend; skip cleanly where it is not installed
    pn.get_namespace(BACKEND)
except (ImportError, RuntimeError) as exc:
    pytest.skip(f"backend {BACKEND!r} is unavailable: {exc}", allow_module_level=True)

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")


def _data(n=120, classes=3, seed=0):
    x, y = make_classification(n_samples=n, n_features=6, n_informative=4, n_classes=classes,
                               random_state=seed)
    return StandardScaler().fit_transform(x), y


def _clf(**kw):
    return MLPClassifier(**{"backend": BACKEND, "random_state": 0, "max_iter": 30, **kw})


def _reg(**kw):
    return MLPRegressor(**{"backend": BACKEND, "random_state": 0, "max_iter": 30, **kw})


# ------------------------------------------------------ scikit-learn's checks ----


@parametrize_with_checks([MLPClassifier(backend=BACKEND), MLPRegressor(backend=BACKEND)])
def test_sklearn_estimator_checks(estimator, check):
    """Every check of ``check_estimator``, defaults included; none is expected to fail."""
    check(estimator)


# ------------------------------------------------------ scikit-learn's own MLP ----


@pytest.mark.parametrize("kind,params", [
    ("multiclass", {}),
    ("binary", {"activation": "tanh", "batch_size": 16}),
    ("multiclass", {"solver": "sgd", "learning_rate_init": 0.05, "activation": "logistic"}),
    ("multiclass", {"early_stopping": True, "validation_fraction": 0.2, "alpha": 0.1}),
    ("multilabel", {"alpha": 1.0}),
    ("regression", {"alpha": 0.5, "batch_size": 32}),
    ("multioutput", {"learning_rate_init": 0.01}),
])
def test_training_follows_scikit_learns_mlp(kind, params):
    """Same random_state: the same initial weights, batches, L2 penalty, loss curve and
    predictions as sklearn.neural_network (up to rounding and Adam's epsilon form)."""
    x, y = _data(classes=2 if kind == "binary" else 3)
    if kind == "multilabel":
        y = np.stack([y == 0, y != 1, x[:, 0] > 0], axis=1).astype(int)
    if kind in ("regression", "multioutput"):
        y = x @ np.linspace(-1, 1, 6) + np.sin(x[:, 0])
        if kind == "multioutput":
            y = np.stack([y, x[:, 1] ** 2, -y], axis=1)
    regression = kind in ("regression", "multioutput")
    params = {"random_state": 0, "max_iter": 25, "hidden_layer_sizes": (16, 8), **params}
    ours = (MLPRegressor if regression else MLPClassifier)(backend=BACKEND, dtype="float64",
                                                          **params).fit(x, y)
    theirs = (sk.MLPRegressor if regression else sk.MLPClassifier)(**params).fit(x, y)
    np.testing.assert_allclose(ours.loss_curve_, theirs.loss_curve_, rtol=1e-6)
    assert ours.n_iter_ == theirs.n_iter_ and ours.t_ == theirs.t_
    assert ours.out_activation_ == theirs.out_activation_ and ours.n_outputs_ == theirs.n_outputs_
    if params.get("early_stopping"):
        np.testing.assert_allclose(ours.validation_scores_, theirs.validation_scores_)
        assert ours.best_validation_score_ == theirs.best_validation_score_
    for a, b in zip(ours.coefs_ + ours.intercepts_, theirs.coefs_ + theirs.intercepts_):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-9)
    method = "predict" if regression else "predict_proba"
    np.testing.assert_allclose(getattr(ours, method)(x), getattr(theirs, method)(x), rtol=1e-6,
                               atol=1e-9)
    np.testing.assert_array_equal(ours.predict(x).shape, theirs.predict(x).shape)


def test_binary_proba_has_two_columns_from_one_logistic_output():
    x, y = _data(classes=2)
    clf = _clf().fit(x, y)
    assert clf.net_.output_shape == (1,) and clf.out_activation_ == "logistic"
    proba = clf.predict_proba(x)
    assert proba.shape == (len(x), 2)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    np.testing.assert_array_equal(clf.predict(x), clf.classes_[(proba[:, 1] > 0.5).astype(int)])
    np.testing.assert_allclose(clf.predict_log_proba(x), np.log(proba))


# ------------------------------------------------------------- meta-estimators ----


def test_pipeline_grid_search_with_two_jobs_and_cross_validation():
    x, y = _data(n=150)
    pipe = make_pipeline(StandardScaler(), _clf(max_iter=150, learning_rate_init=0.01))
    search = GridSearchCV(pipe, {"mlpclassifier__alpha": [1e-4, 1e-1],
                                 "mlpclassifier__hidden_layer_sizes": [(8,), (16,)]},
                          cv=3, n_jobs=2).fit(x, y)
    assert set(search.best_params_) == {"mlpclassifier__alpha",
                                        "mlpclassifier__hidden_layer_sizes"}
    assert search.best_score_ > 0.6
    assert isinstance(search.best_estimator_[-1].net_, pn.Sequential)
    scores = cross_val_score(_reg(max_iter=40), x, x[:, 0] - x[:, 1], cv=3)
    assert scores.shape == (3,) and np.all(scores > 0.5)


def test_calibrated_classifier():
    x, y = _data(n=150)
    calibrated = CalibratedClassifierCV(_clf(max_iter=40), cv=3).fit(x, y)
    proba = calibrated.predict_proba(x)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    assert calibrated.score(x, y) > 0.7


# -------------------------------------------------------------------- pickling ----


@pytest.mark.parametrize("make", [_clf, _reg])
def test_pickle_round_trip_fitted_and_unfitted(make):
    x, y = _data()
    target = y if make is _clf else x[:, 0]
    unfitted = pickle.loads(pickle.dumps(make(alpha=0.3)))
    assert unfitted.get_params() == make(alpha=0.3).get_params()
    fitted = make().fit(x, target)
    data = pickle.dumps(fitted)
    modules = set()

    class Recorder(pickle.Unpickler):
        def find_class(self, module, name):
            modules.add(module.split(".")[0])
            return super().find_class(module, name)

    back = Recorder(io.BytesIO(data)).load()
    assert modules <= {"portanet", "numpy", "sklearn", "builtins", "copyreg"}, modules
    assert isinstance(back.net_, pn.Sequential) and back.net_.backend == fitted.net_.backend
    method = "predict_proba" if make is _clf else "predict"
    np.testing.assert_array_equal(getattr(back, method)(x), getattr(fitted, method)(x))
    assert back.loss_curve_ == fitted.loss_curve_
    # The optimizer state travels too: one more epoch gives the same weights on both.
    fitted.partial_fit(x, target)
    back.partial_fit(x, target)
    np.testing.assert_allclose(back.coefs_[0], fitted.coefs_[0], rtol=1e-12)


def test_net_is_a_sequential_that_saves(tmp_path):
    x, y = _data()
    clf = _clf().fit(x, y)
    clf.net_.save(tmp_path / "mlp.npz")
    net = pn.load(tmp_path / "mlp.npz", backend="numpy")
    proba = pn.to_numpy(pn.activations.softmax(net.predict(x)))
    np.testing.assert_allclose(proba, clf.predict_proba(x), rtol=1e-6)
    for i, w in enumerate(clf.coefs_):
        np.testing.assert_array_equal(w, pn.to_numpy(clf.net_.parameters()[f"{i}.weight"]))


# ------------------------------------------------------- labels and targets ----


def test_string_labels_and_their_order():
    x, y = _data()
    names = np.array(["setosa", "versicolor", "virginica"], dtype=object)[y]
    clf = _clf(max_iter=60).fit(x, names)
    np.testing.assert_array_equal(clf.classes_, ["setosa", "versicolor", "virginica"])
    pred = clf.predict(x)
    by_index = _clf(max_iter=60).fit(x, y).predict(x)  # the same training, labels renamed
    np.testing.assert_array_equal(pred, clf.classes_[by_index])
    best = clf.predict_proba(x).argmax(axis=1)
    np.testing.assert_array_equal(pred, clf.classes_[best])
    binary = _clf().fit(x, np.where(y == 0, "no", "yes"))
    assert set(binary.predict(x)) <= {"no", "yes"}


def test_multi_output_regression():
    x, _ = _data()
    y = np.stack([x[:, 0] + x[:, 1], x[:, 2] - x[:, 3]], axis=1)
    reg = _reg(max_iter=200, learning_rate_init=0.01).fit(x, y)
    assert reg.predict(x).shape == (len(x), 2) and reg.n_outputs_ == 2
    assert reg.score(x, y) > 0.9
    single = _reg().fit(x, y[:, 0])
    assert single.predict(x).shape == (len(x),)


# ------------------------------------------------------------ sample weights ----


@pytest.mark.parametrize("make", [_clf, _reg])
def test_integer_weights_equal_repeated_rows(make):
    """Full batches: a weight of k is the row k times (and the L2 penalty is divided by
    the weight sum, as the repeated rows' count); ignoring the weights would differ."""
    x, y = _data(n=40)
    target = y if make is _clf else x[:, 0] * x[:, 1]
    w = np.random.default_rng(0).integers(0, 4, size=40)
    rows = np.repeat(np.arange(40), w)
    params = {"alpha": 0.5, "shuffle": False, "dtype": "float64"}
    weighted = make(**params).fit(x, target, sample_weight=w)
    repeated = make(**params).fit(x[rows], target[rows])
    ignored = make(**params).fit(x, target)
    method = "predict_proba" if make is _clf else "predict"
    np.testing.assert_allclose(weighted.loss_curve_, repeated.loss_curve_, rtol=1e-10)
    np.testing.assert_allclose(getattr(weighted, method)(x), getattr(repeated, method)(x),
                               rtol=1e-9, atol=1e-12)
    assert not np.allclose(getattr(ignored, method)(x), getattr(weighted, method)(x))


@pytest.mark.parametrize("bad,match", [
    (np.ones(10), r"sample_weight must have shape \(120,\)"),
    (-np.ones(120), "sample_weight must be >= 0"),
    (np.zeros(120), "all weights are zero"),
])
def test_bad_sample_weights_name_the_argument(bad, match):
    x, y = _data()
    with pytest.raises(ValueError, match=match):
        _reg().fit(x, x[:, 0], sample_weight=bad)


# ---------------------------------------------------- partial_fit and warm_start ----


def test_partial_fit_follows_scikit_learn():
    x, y = _data()
    ours, theirs = _clf(dtype="float64"), sk.MLPClassifier(random_state=0)
    with pytest.raises(ValueError, match="classes must be passed on the first call"):
        ours.partial_fit(x, y)
    for i in range(3):
        part = slice(40 * i, 40 * (i + 1))
        ours.partial_fit(x[part], y[part], classes=[0, 1, 2])
        theirs.partial_fit(x[part], y[part], classes=[0, 1, 2])
    assert ours.n_iter_ == 1 and ours.t_ == 120
    np.testing.assert_allclose(ours.loss_curve_, theirs.loss_curve_, rtol=1e-6)
    with pytest.raises(ValueError, match="`y` has classes not in `self.classes_`"):
        ours.partial_fit(x, y + 5)
    with pytest.raises(ValueError, match="partial_fit does not support early_stopping"):
        _clf(early_stopping=True).partial_fit(x, y, classes=[0, 1, 2])


def test_warm_start_continues_and_a_cold_fit_starts_over():
    x, y = _data()
    warm = _clf(warm_start=True, max_iter=10).fit(x, y)
    first = list(warm.loss_curve_)
    warm.fit(x, y)
    assert warm.loss_curve_[:10] == first and len(warm.loss_curve_) == 20
    assert warm.loss_curve_[10] < first[0]  # it went on from the trained weights
    cold = _clf(max_iter=10).fit(x, y)
    cold.fit(x, y)
    assert cold.loss_curve_ == first  # the same start, the same curve
    with pytest.raises(ValueError, match="warm_start can only be used where `y` has the same"):
        warm.fit(x[y < 2], y[y < 2])


# ------------------------------------------------------------------ the rest ----


def test_early_stopping_keeps_the_best_epoch():
    x, y = _data(n=200)
    clf = _clf(early_stopping=True, max_iter=60, n_iter_no_change=3).fit(x, y)
    assert clf.best_loss_ is None and len(clf.validation_scores_) == clf.n_iter_
    assert clf.best_validation_score_ == max(clf.validation_scores_)
    assert clf.n_iter_ < 60  # it stopped


def test_verbose_prints_the_loss(capsys):
    x, y = _data()
    _clf(max_iter=2, verbose=True).fit(x, y)
    assert "Iteration 1, loss = " in capsys.readouterr().out


def test_feature_names_in():
    pd = pytest.importorskip("pandas")
    x, y = _data()
    frame = pd.DataFrame(x, columns=[f"f{i}" for i in range(6)])
    clf = _clf().fit(frame, y)
    np.testing.assert_array_equal(clf.feature_names_in_, frame.columns)
    assert clf.n_features_in_ == 6
    with pytest.warns(UserWarning, match="feature names"):
        clf.predict(x)


# ------------------------------------------------------------ array-API dispatch ----


def _strict(device_name="CPU_DEVICE"):
    strict = pytest.importorskip("array_api_strict")
    return strict, strict.Device(device_name)


@pytest.mark.parametrize("library", ["torch", "array_api_strict"])
def test_dispatch_trains_on_the_input_namespace(library):
    if library == "torch":
        xp = pytest.importorskip("torch")
        put = lambda a: xp.asarray(a)  # noqa: E731
        device = xp.device("cpu")
    else:
        xp, device = _strict("device1")  # not the default device: it must be followed
        put = lambda a: xp.asarray(a, device=device)  # noqa: E731
    x, y = _data()
    reference = MLPClassifier(random_state=0, max_iter=20, backend="numpy").fit(x, y)
    with sklearn.config_context(array_api_dispatch=True):
        clf = MLPClassifier(random_state=0, max_iter=20).fit(put(x), put(y))
        assert clf.net_.backend == library and clf.net_.device == device
        proba, pred = clf.predict_proba(put(x)), clf.predict(put(x))
        assert type(proba) is type(put(x)) and type(pred) is type(put(x))
        assert pn.backend.device_name(clf.net_.xp, proba.device) == str(getattr(
            device, "_device", device))
        score = clf.score(put(x), put(y))
        with pytest.raises(ValueError, match=r"MLPClassifier.predict\(\) must use the same "
                                             r"namespace"):
            clf.predict(x)  # NumPy, after fitting on another namespace
    np.testing.assert_allclose(pn.to_numpy(proba), reference.predict_proba(x), rtol=1e-9)
    np.testing.assert_array_equal(pn.to_numpy(pred), reference.predict(x))
    assert score == pytest.approx(reference.score(x, y))
    np.testing.assert_array_equal(clf.predict(x), reference.predict(x))  # no dispatch: NumPy


def test_dispatch_moves_y_and_weights_to_the_namespace_of_x():
    torch = pytest.importorskip("torch")
    x, _ = _data()
    y = x[:, 0] - x[:, 2]
    with sklearn.config_context(array_api_dispatch=True):
        reg = _reg().fit(torch.asarray(x), y, sample_weight=np.ones(len(x)))
        pred = reg.predict(torch.asarray(x))
    assert isinstance(pred, torch.Tensor) and reg.net_.backend == "torch"
    np.testing.assert_allclose(pred.numpy(), _reg(backend="numpy").fit(x, y).predict(x),
                               rtol=1e-9)


def test_without_dispatch_numpy_comes_out_of_any_backend():
    x, y = _data()
    clf = _clf().fit(x, y)
    assert clf.net_.backend == BACKEND
    assert isinstance(clf.predict_proba(x), np.ndarray) and isinstance(clf.predict(x), np.ndarray)


# ----------------------------------------------------------------- bad input ----


def test_bad_input_raises_what_scikit_learn_expects():
    x, y = _data()
    with pytest.raises(NotFittedError):
        _clf().predict(x)
    bad = x.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="Input X contains NaN"):
        _clf().fit(bad, y)
    bad[0, 0] = np.inf
    with pytest.raises(ValueError, match="Input X contains infinity"):
        _reg().fit(bad, x[:, 0])
    clf = _clf().fit(x, y)
    with pytest.raises(ValueError, match="X has 5 features, but MLPClassifier is expecting 6"):
        clf.predict(x[:, :5])
    with pytest.raises(ValueError, match=r"y has only one class, np.int64\(1\)|y has only one "
                                         "class, 1"):
        _clf().fit(x, np.ones(len(x), dtype=int))
    with pytest.raises(ValueError, match="Unknown label type"):
        _clf().fit(x, x[:, 0])


@pytest.mark.parametrize("params,name", [
    ({"alpha": -1.0}, "alpha"), ({"solver": "lbfgs"}, "solver"), ({"max_iter": 0}, "max_iter"),
    ({"activation": "bogus"}, "activation"), ({"batch_size": 0}, "batch_size"),
    ({"validation_fraction": 1.0}, "validation_fraction"), ({"dtype": "int8"}, "dtype"),
    ({"backend": "tensorflow"}, "backend"), ({"learning_rate_init": 0.0}, "learning_rate_init"),
])
def test_invalid_hyperparameters_are_rejected_in_fit_by_name(params, name):
    x, y = _data()
    clf = _clf(**params)  # constructing never fails, as scikit-learn wants
    with pytest.raises(InvalidParameterError, match=f"The '{name}' parameter of MLPClassifier"):
        clf.fit(x, y)
    with pytest.raises(ValueError, match="hidden_layer_sizes"):
        _reg(hidden_layer_sizes=(4, 0)).fit(x, x[:, 0])


def test_clone_keeps_parameters_and_drops_the_fit():
    x, y = _data()
    clf = _clf(alpha=0.01, device=None).fit(x, y)
    copy = clone(clf)
    assert copy.get_params() == clf.get_params() and not hasattr(copy, "net_")
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        with pytest.raises(ConvergenceWarning):
            copy.fit(x, y)


def test_dtype_follows_the_data_and_the_device():
    x, y = _data()
    assert _clf().fit(x, y).net_.dtype_name == "float64"
    assert _clf().fit(x.astype(np.float32), y).net_.dtype_name == "float32"
    assert _clf(dtype="float32").fit(x, y).predict_proba(x).dtype == np.float32
    pytest.importorskip("array_api_strict")
    no64 = MLPClassifier(backend="array_api_strict", device="no_float64", max_iter=3).fit(x, y)
    assert no64.net_.dtype_name == "float32"  # float64 data on a device without float64


def test_no_hidden_layer_is_a_linear_model():
    x, y = _data()
    clf = _clf(hidden_layer_sizes=()).fit(x, y)
    assert clf.n_layers_ == 2 and [w.shape for w in clf.coefs_] == [(6, 3)]
    theirs = sk.MLPClassifier(hidden_layer_sizes=(), random_state=0, max_iter=30).fit(x, y)
    np.testing.assert_allclose(clf.predict_proba(x), theirs.predict_proba(x), rtol=1e-6)


def test_without_scikit_learn_the_import_names_the_extra():
    code = ("import sys; sys.modules['sklearn'] = None\n"
            "try:\n    import portanet.sklearn\nexcept ImportError as exc:\n    print(exc)\n"
            "import portanet; portanet.Sequential([portanet.Dense(2, 1)])")  # the rest imports
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert 'needs scikit-learn >= 1.6: pip install "portanet[sklearn]"' in out.stdout
