"""scikit-learn estimators on portanet: :class:`MLPClassifier` and :class:`MLPRegressor`.

They take scikit-learn's ``MLPClassifier`` / ``MLPRegressor`` parameters where these
mean the same thing, follow the same algorithm (its initialization, mini-batches,
shuffles, L2 penalty, stopping rules, early stopping and output activations), and
compute through a portanet :class:`~portanet.Sequential` on any backend::

    from portanet.sklearn import MLPClassifier
    clf = MLPClassifier(hidden_layer_sizes=(100,), max_iter=200, random_state=0).fit(X, y)
    clf.predict_proba(X_test)             # NumPy in, NumPy out
    clf.net_.save("mlp.npz")              # the fitted network is a Sequential

``backend=``, ``device=`` and ``dtype=`` choose where the network computes when
scikit-learn's array-API dispatch is off: NumPy arrays in and out. With
``sklearn.set_config(array_api_dispatch=True)`` (which needs ``SCIPY_ARRAY_API=1``
set before scipy is imported), inputs of another namespace (torch, array-api-strict,
CuPy) train on that namespace and device, and predictions come back in it.

This module is host-side glue: it may use NumPy for labels, indices and the weight
initialization. The arithmetic of training runs in :mod:`portanet.training`'s
``loss_and_gradients`` and portanet's optimizers, on the device.
"""

from __future__ import annotations

import contextlib
import math
import numbers
import warnings
from types import ModuleType
from typing import Any

try:
    import sklearn  # noqa: F401
except ImportError as exc:  # the one optional dependency of this module
    raise ImportError('portanet.sklearn needs scikit-learn >= 1.6: pip install "portanet[sklearn]"'
                      ) from exc

import array_api_compat.numpy  # noqa: F401  (NumPy's namespace: here, not in the first fit)
import numpy as np
import scipy.sparse as sp
from array_api_compat import array_namespace, is_array_api_obj
from array_api_compat import device as device_of
from sklearn import get_config
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import accuracy_score, r2_score
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import LabelBinarizer
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import (
    Interval,
    InvalidParameterError,
    Options,
    StrOptions,
)
from sklearn.utils.multiclass import (
    _check_partial_fit_first_call,
    check_classification_targets,
    type_of_target,
    unique_labels,
)
from sklearn.utils.validation import check_is_fitted, column_or_1d, validate_data
from threadpoolctl import ThreadpoolController

from . import activations as A
from . import io as pio
from . import losses as L
from . import optim as O
from .backend import (
    BACKENDS,
    backend_name,
    device_name,
    get_namespace,
    has_float64,
    resolve_device,
    resolve_dtype,
    to_array,
    to_numpy,
)
from .layers import Dense
from .network import Sequential
from .training import loss_and_gradients, sample_weights, take_rows

__all__ = ["MLPClassifier", "MLPRegressor"]

Array = Any

#: scikit-learn's names of the hidden activations, and portanet's for them.
SKLEARN_ACTIVATIONS = {"identity": "identity", "logistic": "sigmoid", "tanh": "tanh",
                       "relu": "relu"}


class _OutputSum(L.Loss):
    """``scale`` times ``inner`` summed (not averaged) over the outputs of a sample.

    scikit-learn's MLP losses are sums over the outputs and means over samples:
    ``0.5 * sum_j (p_j - t_j)^2`` for regression (``scale`` 0.5 on MSE) and the
    binary log-loss summed over labels for multilabel classification. So the
    gradient is ``(p - t) / n`` whatever the number of outputs, as scikit-learn's.
    """

    def __init__(self, inner: L.Loss, scale: float = 1.0):
        self.inner, self.scale = inner, float(scale)
        self.accepts_labels, self.takes_logits = inner.accepts_labels, inner.takes_logits
        super().__init__(self._f, self._df, name=f"{inner.name}_summed_over_outputs",
                         per_sample=self._rows)

    def _factor(self, pred: Array) -> float:
        return self.scale * float(pred.shape[-1])

    def _f(self, pred: Array, target: Array) -> Array:
        return self.inner.f(pred, target) * self._factor(pred)

    def _df(self, pred: Array, target: Array) -> Array:
        return self.inner.df(pred, target) * self._factor(pred)

    def _rows(self, pred: Array, target: Array) -> Array:
        return self.inner.per_sample(pred, target) * self._factor(pred)

    def value_and_grad(self, pred: Array, target: Array,
                       sample_weight: Array | None = None) -> tuple[Array, Array]:
        value, grad = self.inner.value_and_grad(pred, target, sample_weight)
        factor = self._factor(pred)
        return value * factor, grad * factor

    def check_target(self, pred_shape: tuple[int, ...], target: Array) -> None:
        self.inner.check_target(pred_shape, target)


# --------------------------------------------------------------- the base ----


class _BaseMLP(BaseEstimator):
    """What the classifier and the regressor share: parameters, fitting, pickling.

    Subclasses say how targets become the network's targets (``_targets``), which
    loss and output activation they train (``_loss``), and how a score is taken
    for early stopping (``_validation_score``).
    """

    _parameter_constraints: dict = {
        "hidden_layer_sizes": ["array-like", Interval(numbers.Integral, 1, None, closed="left")],
        "activation": [str],
        "solver": [StrOptions({"adam", "sgd", "adamw"})],
        "alpha": [Interval(numbers.Real, 0, None, closed="left")],
        "batch_size": [StrOptions({"auto"}), Interval(numbers.Integral, 1, None, closed="left")],
        "learning_rate": [StrOptions({"constant", "invscaling", "adaptive"})],
        "learning_rate_init": [Interval(numbers.Real, 0, None, closed="neither")],
        "power_t": [Interval(numbers.Real, 0, None, closed="left")],
        "max_iter": [Interval(numbers.Integral, 1, None, closed="left")],
        "shuffle": ["boolean"],
        "random_state": ["random_state"],
        "tol": [Interval(numbers.Real, 0, None, closed="left")],
        "verbose": ["verbose"],
        "warm_start": ["boolean"],
        "momentum": [Interval(numbers.Real, 0, 1, closed="left")],
        "nesterovs_momentum": ["boolean"],
        "early_stopping": ["boolean"],
        "validation_fraction": [Interval(numbers.Real, 0, 1, closed="left")],
        "beta_1": [Interval(numbers.Real, 0, 1, closed="left")],
        "beta_2": [Interval(numbers.Real, 0, 1, closed="left")],
        "epsilon": [Interval(numbers.Real, 0, None, closed="neither")],
        "n_iter_no_change": [Interval(numbers.Integral, 1, None, closed="left"),
                             Options(numbers.Real, {np.inf})],
        "backend": [StrOptions(set(BACKENDS)), ModuleType, None],
        "device": "no_validation",
        "dtype": [StrOptions({"float32", "float64"}), None],
    }

    def __init__(
        self, hidden_layer_sizes: Any = (100,), activation: str = "relu", *,
        solver: str = "adam", alpha: float = 0.0001, batch_size: int | str = "auto",
        learning_rate: str = "constant", learning_rate_init: float = 0.001,
        power_t: float = 0.5, max_iter: int = 200, shuffle: bool = True,
        random_state: Any = None, tol: float = 1e-4, verbose: bool = False,
        warm_start: bool = False, momentum: float = 0.9, nesterovs_momentum: bool = True,
        early_stopping: bool = False, validation_fraction: float = 0.1, beta_1: float = 0.9,
        beta_2: float = 0.999, epsilon: float = 1e-8, n_iter_no_change: int = 10,
        backend: str | ModuleType | None = None, device: Any = None, dtype: str | None = None,
    ):
        self.hidden_layer_sizes = hidden_layer_sizes
        self.activation = activation
        self.solver = solver
        self.alpha = alpha
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.learning_rate_init = learning_rate_init
        self.power_t = power_t
        self.max_iter = max_iter
        self.shuffle = shuffle
        self.random_state = random_state
        self.tol = tol
        self.verbose = verbose
        self.warm_start = warm_start
        self.momentum = momentum
        self.nesterovs_momentum = nesterovs_momentum
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.beta_1 = beta_1
        self.beta_2 = beta_2
        self.epsilon = epsilon
        self.n_iter_no_change = n_iter_no_change
        self.backend = backend
        self.device = device
        self.dtype = dtype

    # ----------------------------------------------------------- checking --
    def _check_params(self) -> list[int]:
        """scikit-learn's parameter validation, and the hidden activation by name;
        returns the hidden layer sizes as a list."""
        self._validate_params()
        known = sorted(set(SKLEARN_ACTIVATIONS) | (set(A.names()) - {"softmax"}))
        if self.activation not in known:
            raise InvalidParameterError(
                f"The 'activation' parameter of {type(self).__name__} must be a str among "
                f"{known}. Got {self.activation!r} instead."
            )
        sizes = self.hidden_layer_sizes
        sizes = list(sizes) if hasattr(sizes, "__iter__") else [sizes]
        if any(isinstance(s, bool) or not isinstance(s, numbers.Integral) or s < 1 for s in sizes):
            raise ValueError(f"hidden_layer_sizes must be positive ints, got {sizes}")
        return [int(s) for s in sizes]

    def _validate_x(self, X: Any, y: Any, reset: bool) -> tuple[Any, Any]:
        """scikit-learn's input checks (NaN, infinity, shapes, feature count and names);
        sparse input becomes dense."""
        X, y = validate_data(self, X, y, accept_sparse=["csr", "csc"], multi_output=True,
                             dtype=_float_dtypes(X), reset=reset,
                             y_numeric=not isinstance(self, ClassifierMixin))
        if sp.issparse(X):
            X = X.toarray()
        if y.ndim == 2 and y.shape[1] == 1:
            y = column_or_1d(y, warn=True)
        return X, y

    # --------------------------------------------------------- placement --
    def _placement(self, X: Any) -> tuple[Any, Any, str]:
        """The namespace, device and dtype to train a new network on: ``X``'s own under
        array-API dispatch (unless it is NumPy), else the estimator's ``backend``."""
        if _dispatching() and _foreign_array(X):
            xp = array_namespace(X)
            device = device_of(X)
        else:
            xp = get_namespace(self.backend)
            device = resolve_device(xp, self.device)
        dtype = self.dtype or ("float32" if X.dtype == _namespace_dtype(X, "float32")
                               else "float64")
        if dtype == "float64" and self.dtype is None and not _can_float64(xp, device):
            dtype = "float32"  # a device without float64 (MPS, strict's no_float64, JAX's x32)
        return xp, device, dtype

    def _check_same_namespace(self, X: Any, method: str) -> None:
        """Under array-API dispatch, ``X`` must come from the namespace and device that
        ``fit`` was given (scikit-learn's rule for array-API estimators)."""
        if not _dispatching():
            return
        got = _input_placement(X)
        if got != self._fit_input:
            raise ValueError(
                f"Inputs passed to {type(self).__name__}.{method}() must use the same "
                f"namespace and the same device as those passed to fit(): fit() was given "
                f"{self._fit_input[0]} arrays on {self._fit_input[1]!r}, {method}() got "
                f"{got[0]} arrays on {got[1]!r}"
            )

    # --------------------------------------------------------- the network --
    def _build(self, sizes: list[int], placement: tuple[Any, Any, str],
               rs: np.random.RandomState) -> Sequential:
        """The network, initialized as scikit-learn initializes its MLP: weights and
        biases uniform in ``+-sqrt(f / (fan_in + fan_out))``, ``f`` 2 for the logistic
        activation and 6 otherwise, drawn layer by layer from ``rs``."""
        xp, device, dtype = placement
        act = SKLEARN_ACTIVATIONS.get(self.activation, self.activation)
        layers = [Dense(a, b, activation=act if i < len(sizes) - 2 else None, init="zeros")
                  for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:]))]
        net = Sequential(layers, backend=xp, device=device, dtype=dtype, seed=0)
        factor = 2.0 if self.activation == "logistic" else 6.0
        state = {}
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
            bound = math.sqrt(factor / (a + b))
            state[f"{i}.weight"] = rs.uniform(-bound, bound, (a, b))
            state[f"{i}.bias"] = rs.uniform(-bound, bound, b)
        net.load_state_dict(state)
        return net

    def _make_optimizer(self) -> O.Optimizer:
        lr = float(self.learning_rate_init)
        if self.solver == "sgd":
            return O.SGD(lr, momentum=float(self.momentum),
                         nesterov=bool(self.nesterovs_momentum) and self.momentum > 0)
        # scikit-learn's Adam adds epsilon to sqrt(v) before the bias correction: eps_hat
        adam = {"betas": (float(self.beta_1), float(self.beta_2)), "eps": float(self.epsilon),
                "eps_hat": True}
        if self.solver == "adamw":
            return O.AdamW(lr, weight_decay=float(self.alpha), **adam)
        return O.Adam(lr, **adam)

    # ---------------------------------------------------------- fitting --
    def fit(self, X: Any, y: Any, sample_weight: Any = None) -> _BaseMLP:
        """Fit the network to data ``X`` and targets ``y``.

        Parameters
        ----------
        X : array-like or sparse matrix of shape (n_samples, n_features)
            The input data (sparse input is made dense).
        y : array-like of shape (n_samples,) or (n_samples, n_outputs)
            Class labels (any labels, strings included) or real targets.
        sample_weight : array-like of shape (n_samples,), optional
            Weights: the loss is the weighted mean over samples, and the L2 penalty
            is divided by the batch's weight sum (so a weight of 2 equals the row twice).

        Returns
        -------
        self
        """
        return self._fit(X, y, sample_weight, incremental=False)

    def _fit(self, X: Any, y: Any, sample_weight: Any, incremental: bool) -> _BaseMLP:
        hidden = self._check_params()
        if incremental and self.early_stopping:
            raise ValueError("partial_fit does not support early_stopping=True")
        first = not hasattr(self, "net_") or (not self.warm_start and not incremental)
        if not first:
            self._check_same_namespace(X, "partial_fit" if incremental else "fit")
        X, y = self._validate_x(X, y, reset=first)
        rs = check_random_state(self.random_state)
        target, n_outputs = self._targets(y, first, incremental, sample_weight)
        if first:
            net = self._build([X.shape[1], *hidden, n_outputs], self._placement(X), rs)
        else:
            net = self.net_
        loss = self._loss(n_outputs)
        x = net.as_input(X)
        data = (x, net.as_target(target, x.shape[0], loss),
                sample_weights(net, sample_weight, x.shape[0], loss))
        if first:
            self._initialize(net, n_outputs, len(hidden), X)
        if not incremental or not hasattr(self, "_optimizer"):
            self._optimizer = self._make_optimizer()
            net.optimizer = self._optimizer
        with _blas_threads_for(net, self._batch_size(x.shape[0], warn=False)):
            self._fit_stochastic(data, loss, rs, incremental)
        self._check_finite_weights()
        return self

    def _initialize(self, net: Sequential, n_outputs: int, n_hidden: int, X: Any) -> None:
        """The fitted state of a first fit (scikit-learn's ``_initialize``)."""
        self.net_ = net
        self._fit_input = _input_placement(X) if _dispatching() else ("numpy", "cpu")
        self.n_iter_, self.t_ = 0, 0
        self.n_outputs_ = n_outputs
        self.n_layers_ = n_hidden + 2
        self.out_activation_ = self._out_activation()
        self.loss_curve_: list[float] = []
        self._no_improvement_count = 0
        self._best_state: dict[str, np.ndarray] | None = None
        if self.early_stopping:
            self.validation_scores_: list[float] | None = []
            self.best_validation_score_: float | None = -np.inf
            self.best_loss_: float | None = None
        else:
            self.best_loss_ = np.inf
            self.validation_scores_ = None
            self.best_validation_score_ = None

    def _fit_stochastic(self, data: tuple[Array, Array, Array | None], loss: L.Loss,
                        rs: np.random.RandomState, incremental: bool) -> None:
        """scikit-learn's epochs: shuffle, mini-batches, the loss curve, and stopping
        when the loss (or the validation score) stalls for ``n_iter_no_change`` epochs."""
        train, validation = self._split(data, rs)
        n = train[0].shape[0]
        order = np.arange(n)
        batch = self._batch_size(n)
        try:
            self.n_iter_ = 0
            for _ in range(self.max_iter):
                if self.shuffle:  # sklearn.utils.shuffle(order, random_state=rs), without
                    perm = np.arange(n)  # its checks: the same draw, the same order
                    rs.shuffle(perm)
                    order = order[perm]
                self.loss_ = self._epoch(train, loss, order if self.shuffle else None, batch)
                self.n_iter_ += 1
                self.t_ += n
                self.loss_curve_.append(self.loss_)
                if self.verbose:
                    print(f"Iteration {self.n_iter_}, loss = {self.loss_:.8f}")
                self._update_no_improvement_count(validation)
                self._schedule_learning_rate()
                if self._no_improvement_count > self.n_iter_no_change:
                    if self._stop_or_slow_down():
                        break
                    self._no_improvement_count = 0
                if incremental:
                    break
                if self.n_iter_ == self.max_iter:
                    warnings.warn(f"Stochastic Optimizer: Maximum iterations ({self.max_iter}) "
                                  "reached and the optimization hasn't converged yet.",
                                  ConvergenceWarning, stacklevel=4)
        except KeyboardInterrupt:
            warnings.warn("Training interrupted by user.", stacklevel=4)
        if self.early_stopping and self._best_state is not None:
            self.net_.load_state_dict(self._best_state)

    def _split(self, data: tuple[Array, Array, Array | None], rs: np.random.RandomState):
        """Training data, and the validation data of early stopping (or None): the split
        that ``train_test_split`` makes with ``rs``, stratified where scikit-learn's MLP
        stratifies (a classifier with one output: a binary problem)."""
        if not self.early_stopping:
            return data, None
        x, y, w = data
        n = x.shape[0]
        stratify = self._stratify_labels(y)
        fit_idx, val_idx = train_test_split(np.arange(n), random_state=rs,
                                            test_size=self.validation_fraction, stratify=stratify)
        if val_idx.shape[0] < 2:
            raise ValueError("The validation set is too small. Increase 'validation_fraction' "
                             "or the size of your dataset.")
        net = self.net_
        picks = [to_array(i, net.xp, net.device, "int64") for i in (fit_idx, val_idx)]
        return [take_rows(net.xp, data, p, 0, p.shape[0]) for p in picks]

    def _batch_size(self, n: int, warn: bool = True) -> int:
        """Rows per step for ``n`` rows: ``"auto"`` is ``min(200, n)``; more than ``n`` is
        clipped to ``n`` (with scikit-learn's warning)."""
        if self.batch_size == "auto":
            return min(200, n)
        if warn and self.batch_size > n:
            warnings.warn("Got `batch_size` less than 1 or larger than sample size. It is "
                          "going to be clipped", stacklevel=5)
        return max(1, min(int(self.batch_size), n))

    def _epoch(self, data: tuple[Array, Array, Array | None], loss: L.Loss,
               order: np.ndarray | None, batch: int) -> float:
        """One pass over the data in mini-batches; returns the epoch's loss (with the L2
        penalty, as scikit-learn reports it). The loss reaches the host once."""
        net = self.net_
        n = data[0].shape[0]
        index = None if order is None else to_array(order, net.xp, net.device, "int64")
        total = None
        for lo in range(0, n, batch):
            hi = min(lo + batch, n)
            bx, by, bw = take_rows(net.xp, data, index, lo, hi)
            value, _ = loss_and_gradients(net, bx, by, loss, bw)
            step = self._penalized_update(value, bw, hi - lo)
            total = step if total is None else total + step
        return float(to_numpy(total)) / n

    def _penalized_update(self, value: Array, weights: Array | None, rows: int) -> Array:
        """Add scikit-learn's L2 gradient ``alpha W / s`` (``s`` the batch's rows or weight
        sum) to each weight's gradient and take the optimizer step; returns the batch's
        reported loss ``(loss + alpha ||W||^2 / (2 s))`` times its rows, on the device."""
        net = self.net_
        params, grads = net.parameters(), net.gradients()
        scale = self._report_scale()
        reported = value if scale == 1.0 else value * scale
        if self.alpha and self.solver != "adamw":
            xp = net.xp
            s = float(rows) if weights is None else xp.sum(weights)
            squares = None
            for i in range(self.n_layers_ - 1):
                w = params[f"{i}.weight"]
                g = grads[f"{i}.weight"]
                g += (self.alpha / s) * w  # in place where writeable; rebinds on JAX
                grads[f"{i}.weight"] = g
                flat = xp.reshape(w, (-1,))
                sq = xp.vecdot(flat, flat)
                squares = sq if squares is None else squares + sq
            reported = reported + (0.5 * self.alpha) * squares / s
        self._optimizer.step(params, grads)
        return reported * float(rows)

    def _report_scale(self) -> float:
        """What the loss value is multiplied by to report it as scikit-learn does."""
        return 1.0

    def _update_no_improvement_count(self, validation: Any) -> None:
        """scikit-learn's rule: an epoch that does not improve the best training loss (or
        validation score) by ``tol`` counts; early stopping keeps the best weights."""
        if validation is None:
            if self.loss_curve_[-1] > self.best_loss_ - self.tol:
                self._no_improvement_count += 1
            else:
                self._no_improvement_count = 0
            self.best_loss_ = min(self.best_loss_, self.loss_curve_[-1])
            return
        score = self._validation_score(*validation)
        self.validation_scores_.append(score)
        if self.verbose:
            print(f"Validation score: {score:f}")
        if score < self.best_validation_score_ + self.tol:
            self._no_improvement_count += 1
        else:
            self._no_improvement_count = 0
        if score > self.best_validation_score_:
            self.best_validation_score_ = score
            self._best_state = self.net_.state_dict()

    def _schedule_learning_rate(self) -> None:
        """``learning_rate="invscaling"`` (SGD): ``lr = lr_init / (t + 1)^power_t`` after
        each epoch, with ``t`` the samples seen, as scikit-learn."""
        if self.solver == "sgd" and self.learning_rate == "invscaling":
            self._optimizer.lr = float(self.learning_rate_init) / (self.t_ + 1) ** self.power_t

    def _stop_or_slow_down(self) -> bool:
        """Whether to stop after ``n_iter_no_change`` epochs without progress; with SGD and
        ``learning_rate="adaptive"``, divide the learning rate by 5 instead (until 1e-6)."""
        what = "Validation score" if self.early_stopping else "Training loss"
        msg = (f"{what} did not improve more than tol={self.tol:f} for "
               f"{self.n_iter_no_change} consecutive epochs.")
        adaptive = self.solver == "sgd" and self.learning_rate == "adaptive"
        if adaptive and self._optimizer.lr > 1e-6:
            self._optimizer.lr /= 5.0
            if self.verbose:
                print(f"{msg} Setting learning rate to {self._optimizer.lr:f}")
            return False
        if self.verbose:
            print(f"{msg}{' Learning rate too small.' if adaptive else ''} Stopping.")
        return True

    def _check_finite_weights(self) -> None:
        xp = self.net_.xp
        if not all(bool(xp.all(xp.isfinite(p))) for p in self.net_.parameters().values()):
            raise ValueError("Solver produced non-finite parameter weights. The input data may "
                             "contain large values and need to be preprocessed.")

    # ------------------------------------------------------- predicting --
    def _scores(self, X: Any, method: str) -> tuple[Array, bool]:
        """The network's outputs (logits) for ``X``, and whether to hand results back in
        ``X``'s namespace (array-API dispatch with non-NumPy input) rather than NumPy."""
        check_is_fitted(self)
        X = validate_data(self, X, accept_sparse=["csr", "csc"], dtype=_float_dtypes(X),
                          reset=False)
        if sp.issparse(X):
            X = X.toarray()
        self._check_same_namespace(X, method)
        return self.net_.predict(X), _dispatching() and _foreign_array(X)

    # --------------------------------------------------- fitted attributes --
    @property
    def coefs_(self) -> list[np.ndarray]:
        """The weight matrix of each layer, ``(fan_in, fan_out)``: NumPy copies."""
        params = self.net_.parameters()
        return [to_numpy(params[f"{i}.weight"]) for i in range(self.n_layers_ - 1)]

    @property
    def intercepts_(self) -> list[np.ndarray]:
        """The bias vector of each layer: NumPy copies."""
        params = self.net_.parameters()
        return [to_numpy(params[f"{i}.bias"]) for i in range(self.n_layers_ - 1)]

    # ---------------------------------------------------------- pickling --
    def __getstate__(self) -> dict[str, Any]:
        """The network and optimizer as portanet checkpoint bytes (arrays and JSON), with
        the names of their backend and device: a pickle holds no live device objects."""
        state = dict(super().__getstate__())
        net = state.pop("net_", None)
        optimizer = state.pop("_optimizer", None)
        if net is not None:
            state["_net_checkpoint"] = pio.dumps(net, optimizer)
            state["_net_placement"] = (net.backend, device_name(net.xp, net.device))
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        state = dict(state)
        data = state.pop("_net_checkpoint", None)
        placement = state.pop("_net_placement", None)
        super().__setstate__(state)
        if data is not None:
            self.net_, self._optimizer = _load_network(data, *placement)

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = True
        tags.array_api_support = True
        return tags


def _load_network(data: bytes, backend: str, device: str) -> tuple[Sequential, O.Optimizer]:
    """The pickled network on the backend and device it was on; on NumPy (with a warning)
    where that backend or device is missing here."""
    try:
        return pio.loads(data, backend=backend, device=device, return_optimizer=True)
    except (ImportError, RuntimeError, ValueError) as exc:
        warnings.warn(f"the estimator was pickled on backend {backend!r}, device {device!r}, "
                      f"which is not available here ({exc}); its network is loaded on NumPy",
                      stacklevel=3)
        return pio.loads(data, backend="numpy", return_optimizer=True)


#: Below this many multiply-adds in a training step's forward matrix products, a NumPy
#: network trains with one BLAS thread: more threads only wait for each other on such
#: small products (and slow down badly when the other cores are busy).
SMALL_STEP_MACS = 1 << 24


def _blas_threads_for(net: Sequential, batch: int) -> Any:
    """One BLAS thread while a small NumPy network trains (threadpoolctl, which
    scikit-learn installs); a context that changes nothing otherwise."""
    weights = [p for name, p in net.parameters().items() if name.endswith(".weight")]
    macs = batch * sum(math.prod(w.shape) for w in weights)
    if net.backend != "numpy" or macs >= SMALL_STEP_MACS:
        return contextlib.nullcontext()
    if not _THREADPOOLS:  # finding the loaded BLAS libraries takes a millisecond: once
        _THREADPOOLS.append(ThreadpoolController())
    return _THREADPOOLS[0].limit(limits=1, user_api="blas")


_THREADPOOLS: list[Any] = []


def _dispatching() -> bool:
    return bool(get_config().get("array_api_dispatch", False))


def _input_placement(X: Any) -> tuple[str, str]:
    """``(backend name, device name)`` of an input array (lists and NumPy: NumPy's)."""
    if not _foreign_array(X):
        return ("numpy", "cpu")
    xp = array_namespace(X)
    return backend_name(xp), device_name(xp, device_of(X))


def _can_float64(xp: Any, device: Any) -> bool:
    """Whether a network of ``xp`` on ``device`` can compute in float64."""
    try:
        resolve_dtype(xp, "float64", device)
    except ValueError:
        return False
    return True


def _foreign_array(X: Any) -> bool:
    """Whether ``X`` is an array of a namespace other than NumPy (torch, strict, CuPy, ...)."""
    return is_array_api_obj(X) and not isinstance(X, (np.ndarray, np.generic))


def _float_dtypes(X: Any) -> tuple[Any, ...]:
    """The floating dtypes that input validation keeps (it casts anything else to the
    first): float64 and float32 of ``X``'s namespace under array-API dispatch."""
    if not _dispatching() or not _foreign_array(X):
        return (np.float64, np.float32)
    xp = array_namespace(X)
    return (xp.float64, xp.float32) if has_float64(xp, device_of(X)) else (xp.float32,)


def _namespace_dtype(X: Any, name: str) -> Any:
    """The dtype called ``name`` in ``X``'s namespace."""
    return getattr(array_namespace(X), name)


# ---------------------------------------------------------- the classifier ----


class MLPClassifier(ClassifierMixin, _BaseMLP):
    """A multi-layer perceptron classifier: scikit-learn's ``MLPClassifier`` on portanet.

    The parameters are scikit-learn's (see ``sklearn.neural_network.MLPClassifier``)
    where they mean the same thing, and the training is its algorithm, so the two give
    equal results up to rounding for the same ``random_state``. Multiclass problems
    train a softmax output with the cross-entropy, binary ones one logistic output
    (``predict_proba`` has two columns), multilabel ones a logistic output per label.

    Parameters
    ----------
    hidden_layer_sizes : array-like of int, default=(100,)
        Units of each hidden layer.
    activation : str, default="relu"
        Hidden activation: ``"relu"``, ``"tanh"``, ``"logistic"``, ``"identity"``, or any
        portanet activation name (``"leaky_relu"``, ``"gelu"``, ``"elu"``, ``"silu"``, ...).
    solver : {"adam", "sgd", "adamw"}, default="adam"
        The optimizer (``"lbfgs"`` is not offered). ``"adamw"`` is AdamW with ``alpha``
        as its decoupled weight decay (every parameter, as ``torch.optim.AdamW``).
    alpha : float, default=1e-4
        L2 penalty as scikit-learn applies it: ``alpha ||W||^2 / 2`` over the batch's
        rows (or weight sum) added to the loss, on the weights but not the biases.
    batch_size : int or "auto", default="auto"
        Rows per step; ``"auto"`` is ``min(200, n_samples)``.
    learning_rate : {"constant", "invscaling", "adaptive"}, default="constant"
        The schedule of ``solver="sgd"``, as scikit-learn's.
    learning_rate_init : float, default=1e-3
    power_t : float, default=0.5
        The exponent of ``"invscaling"``.
    max_iter : int, default=200
        Epochs at most.
    shuffle : bool, default=True
        Shuffle the rows every epoch.
    random_state : int, RandomState or None
        Draws the initial weights, the early-stopping split and the shuffles.
    tol : float, default=1e-4
    verbose : bool, default=False
        Print the loss of each epoch.
    warm_start : bool, default=False
        Continue from the fitted network on the next ``fit``.
    momentum : float, default=0.9
    nesterovs_momentum : bool, default=True
        SGD's momentum (``torch.optim.SGD``'s rule: scikit-learn's for a constant rate).
    early_stopping : bool, default=False
        Hold out ``validation_fraction`` of the data (stratified), stop when its
        accuracy stalls, and keep the best epoch's weights.
    validation_fraction : float, default=0.1
    beta_1, beta_2, epsilon : float
        Adam's (and AdamW's) hyperparameters.
    n_iter_no_change : int, default=10
        Epochs without an improvement of ``tol`` before stopping.
    backend : str or namespace module, optional
        Where the network computes when array-API dispatch is off (NumPy in and out):
        ``"numpy"`` (the default, :func:`portanet.get_backend`), ``"torch"``,
        ``"cupy"``, ``"jax"``, ``"array_api_strict"``.
    device : optional
        A device of ``backend``: ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ...
    dtype : {"float32", "float64"} or None, default=None
        The network's dtype; None follows ``X`` (float32 data trains in float32, other
        data in float64, as scikit-learn computes).

    Attributes
    ----------
    classes_ : ndarray
        The class labels (any labels, strings included).
    net_ : Sequential
        The fitted network (its last layer gives logits): ``net_.save(path)`` saves it.
    loss_, loss_curve_, best_loss_, validation_scores_, best_validation_score_
        As scikit-learn's: the loss includes the L2 penalty.
    n_iter_, t_, n_features_in_, feature_names_in_, n_outputs_, n_layers_, out_activation_
        As scikit-learn's.
    coefs_, intercepts_ : list of ndarray
        NumPy copies of the weights and biases.
    """

    def partial_fit(self, X: Any, y: Any, sample_weight: Any = None,
                    classes: Any = None) -> MLPClassifier:
        """One epoch over ``(X, y)``; ``classes`` (every label there will be) is required on
        the first call.

        Returns
        -------
        self
        """
        if _check_partial_fit_first_call(self, classes):
            self._label_binarizer = LabelBinarizer()
            if type_of_target(y).startswith("multilabel"):
                self._label_binarizer.fit(y)
            else:
                self._label_binarizer.fit(classes)
        return self._fit(X, y, sample_weight, incremental=True)

    def _targets(self, y: Any, first: bool, incremental: bool,
                 sample_weight: Any) -> tuple[np.ndarray, int]:
        """The network's targets for labels ``y`` and its number of outputs; sets
        ``classes_``. Targets are 0/1 columns, as scikit-learn's: one-hot rows for a
        multiclass problem (the cross-entropy then builds no one-hot rows each step), one
        column for a binary one, one per label for a multilabel one."""
        y = to_numpy(y)
        check_classification_targets(y)
        if not incremental and (not self.warm_start or not hasattr(self, "classes_")):
            binarizer = LabelBinarizer().fit(y)
            self._check_two_classes(binarizer, y, sample_weight)
            self._label_binarizer, self.classes_ = binarizer, binarizer.classes_
        else:
            self._check_known_classes(y)
        onehot = self._label_binarizer.transform(y).astype(np.float64)
        return onehot, onehot.shape[1]

    def _check_two_classes(self, binarizer: LabelBinarizer, y: np.ndarray,
                           sample_weight: Any) -> None:
        if binarizer.y_type_.startswith("multilabel"):
            return
        if len(binarizer.classes_) < 2:
            raise ValueError(f"y has only one class, {binarizer.classes_[0]!r}: "
                             f"{type(self).__name__} needs samples of at least 2 classes")
        if sample_weight is not None:
            w = to_numpy(sample_weight)
            if w.shape == y.shape[:1] and np.any(w > 0) and np.unique(y[w > 0]).shape[0] < 2:
                raise ValueError("sample_weight leaves samples of only one class (the others "
                                 f"weigh 0): {type(self).__name__} needs at least 2 classes")

    def _check_known_classes(self, y: np.ndarray) -> None:
        """scikit-learn's checks of labels against ``classes_`` when training goes on."""
        classes = unique_labels(y)
        if self.warm_start:
            if set(classes) != set(self.classes_):
                raise ValueError("warm_start can only be used where `y` has the same classes as "
                                 f"in the previous call to fit. Previously got {self.classes_}, "
                                 f"`y` has {classes}")
        elif len(np.setdiff1d(classes, self.classes_)):
            raise ValueError(f"`y` has classes not in `self.classes_`. `self.classes_` has "
                             f"{self.classes_}. 'y' has {classes}.")

    def _loss(self, n_outputs: int) -> L.Loss:
        kind = self._label_binarizer.y_type_
        if kind == "multiclass":
            return L.CrossEntropy()
        return _OutputSum(L.BCEWithLogits()) if n_outputs > 1 else L.BCEWithLogits()

    def _out_activation(self) -> str:
        return "softmax" if self._label_binarizer.y_type_ == "multiclass" else "logistic"

    def _stratify_labels(self, y: Array) -> np.ndarray | None:
        # As scikit-learn: stratified for one output (a binary problem) only.
        return to_numpy(y) if self.n_outputs_ == 1 else None

    def _validation_score(self, x: Array, y: Array, w: Array | None) -> float:
        """Accuracy on the held-out rows (weighted), as scikit-learn's early stopping."""
        pred = self._labels_from_scores(self.net_.forward_checked(x), in_namespace=False)
        truth = self._labels_from_scores(y, in_namespace=False, targets=True)
        return float(accuracy_score(truth, pred, sample_weight=None if w is None
                                    else to_numpy(w)))

    def _labels_from_scores(self, z: Array, in_namespace: bool, targets: bool = False) -> Any:
        """Labels from logits ``z`` (or from network targets): ``classes_`` at the argmax,
        or thresholded at 0 (0.5 for targets) for binary and multilabel problems."""
        xp = array_namespace(z)
        kind = self._label_binarizer.y_type_
        if kind == "multilabel-indicator":
            hits = xp.astype(z > (0.5 if targets else 0.0), xp.int64)
            return hits if in_namespace else to_numpy(hits)
        if kind == "multiclass":
            idx = xp.argmax(z, axis=1)  # of logits, or of one-hot targets
        else:
            idx = xp.astype(z[:, 0] > (0.5 if targets else 0.0), xp.int64)
        if in_namespace and self.classes_.dtype.kind in "biuf":
            classes = to_array(self.classes_, xp, device_of(z))
            return xp.take(classes, xp.astype(idx, xp.int64), axis=0)
        return self.classes_[to_numpy(idx)]

    def predict(self, X: Any) -> Any:
        """The predicted class of each row of ``X`` (labels from ``classes_``)."""
        z, in_namespace = self._scores(X, "predict")
        return self._labels_from_scores(z, in_namespace)

    def predict_proba(self, X: Any) -> Any:
        """Class probabilities, shape ``(n_samples, n_classes)`` in the order of ``classes_``."""
        z, in_namespace = self._scores(X, "predict_proba")
        proba = self._proba(z)
        return proba if in_namespace else to_numpy(proba)

    def predict_log_proba(self, X: Any) -> Any:
        """The logarithm of :meth:`predict_proba`."""
        z, in_namespace = self._scores(X, "predict_log_proba")
        log_proba = array_namespace(z).log(self._proba(z))
        return log_proba if in_namespace else to_numpy(log_proba)

    def _proba(self, z: Array) -> Array:
        xp = array_namespace(z)
        if self._label_binarizer.y_type_ == "multiclass":
            return A.softmax(z)
        p = A.sigmoid(z)
        if self.n_outputs_ > 1:
            return p
        return xp.concat([1.0 - p, p], axis=1)

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_label = True
        return tags


# ----------------------------------------------------------- the regressor ----


class MLPRegressor(RegressorMixin, _BaseMLP):
    """A multi-layer perceptron regressor: scikit-learn's ``MLPRegressor`` on portanet.

    It trains the half squared error (summed over outputs, averaged over samples)
    with an identity output, for one target or several (multi-output regression).
    The parameters and attributes are those of :class:`MLPClassifier` (early stopping
    scores the held-out rows with R^2; there is no ``classes_``). scikit-learn's
    ``loss="poisson"`` is not offered.
    """

    def partial_fit(self, X: Any, y: Any, sample_weight: Any = None) -> MLPRegressor:
        """One epoch over ``(X, y)``.

        Returns
        -------
        self
        """
        return self._fit(X, y, sample_weight, incremental=True)

    def _targets(self, y: Any, first: bool, incremental: bool,
                 sample_weight: Any) -> tuple[Array, int]:
        """Targets as an ``(n, outputs)`` array, in their own namespace."""
        xp = array_namespace(y)
        y2 = xp.reshape(y, (y.shape[0], -1)) if y.ndim == 1 else y
        if not first and y2.shape[1] != self.n_outputs_:
            raise ValueError(f"y has {y2.shape[1]} outputs, but {type(self).__name__} was "
                             f"fitted with {self.n_outputs_}")
        return y2, y2.shape[1]

    def _loss(self, n_outputs: int) -> L.Loss:
        return _OutputSum(L.MSE(), 0.5)

    def _report_scale(self) -> float:
        return 1.0 / self.n_outputs_  # scikit-learn reports the mean over outputs

    def _out_activation(self) -> str:
        return "identity"

    def _stratify_labels(self, y: Array) -> None:
        return None

    def _validation_score(self, x: Array, y: Array, w: Array | None) -> float:
        """R^2 on the held-out rows (weighted), as scikit-learn's early stopping."""
        pred = to_numpy(self.net_.forward_checked(x))
        if not np.isfinite(pred).all():
            return np.nan
        return float(r2_score(to_numpy(y), pred, sample_weight=None if w is None
                              else to_numpy(w)))

    def predict(self, X: Any) -> Any:
        """Predicted targets: shape ``(n_samples,)`` for one output, else
        ``(n_samples, n_outputs)``."""
        z, in_namespace = self._scores(X, "predict")
        if self.n_outputs_ == 1:
            z = array_namespace(z).reshape(z, (-1,))
        return z if in_namespace else to_numpy(z)

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        return tags
