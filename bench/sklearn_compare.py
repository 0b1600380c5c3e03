"""portanet's scikit-learn estimators against scikit-learn's own MLP: fit time and test quality.

Both sides get the same data, split, scaling, hidden sizes, activation, solver,
learning rate, batch size, ``random_state`` and number of epochs (no early
stopping: ``n_iter_no_change=max_iter``, so every fit runs all its epochs). Each
fit runs in its own subprocess (``python bench/sklearn_compare.py --worker SPEC``),
which imports everything, loads the data and then times ``fit`` alone. Rounds
alternate the order of the frameworks, and the tables show medians over rounds;
"speed-up" is the median over rounds of each round's own ratio of fit times (the
two fits of a round run back to back, so a slow spell of a shared machine hits both).

Data sets: scikit-learn's ``load_digits``, ``load_breast_cancer``, ``load_wine``,
a 20,000-row ``make_classification`` with 7 classes, ``load_diabetes`` and a
20,000-row ``make_regression``; 25% held out (stratified for classifiers), inputs
standardized on the training rows, and regression targets too (R^2 is measured
on the standardized test targets, which is the same R^2).

Examples
--------
The measurement in the README (about 15 minutes on 2 cores)::

    python bench/sklearn_compare.py --rounds 3

One data set, quickly::

    python bench/sklearn_compare.py --datasets wine --rounds 1

Output: ``bench/results/<machine-tag>/sklearn/`` (``results.json`` with every
round, ``results.md`` with the table).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
MARKER = "PORTANET_SKLEARN_RESULT "

#: name -> (task, epochs); every fit uses hidden (100,), relu, adam, lr 1e-3, batch 200
DATASETS: dict[str, tuple[str, int]] = {
    "digits": ("classification", 200),
    "breast_cancer": ("classification", 200),
    "wine": ("classification", 200),
    "classification_20k": ("classification", 50),
    "diabetes": ("regression", 200),
    "regression_20k": ("regression", 50),
}
#: framework -> extra estimator parameters (portanet's); "sklearn" is scikit-learn's MLP
FRAMEWORKS: dict[str, dict[str, Any] | None] = {
    "sklearn": None,
    "portanet": {},
    "portanet-float32": {"dtype": "float32"},
}
COMMON = {"hidden_layer_sizes": (100,), "activation": "relu", "solver": "adam",
          "learning_rate_init": 1e-3, "batch_size": 200, "alpha": 1e-4, "random_state": 0}


# ------------------------------------------------------------------ worker ----


def load(name: str) -> tuple[Any, Any, Any, Any]:
    """Train and test arrays of a data set, standardized on the training rows."""
    import numpy as np
    from sklearn import datasets
    from sklearn.model_selection import train_test_split
    from sklearn.preprocessing import StandardScaler

    task = DATASETS[name][0]
    if name == "classification_20k":
        x, y = datasets.make_classification(n_samples=20000, n_features=20, n_informative=10,
                                            n_classes=7, random_state=0)
    elif name == "regression_20k":
        x, y = datasets.make_regression(n_samples=20000, n_features=20, n_informative=10,
                                        noise=10.0, random_state=0)
    else:
        x, y = getattr(datasets, f"load_{name}")(return_X_y=True)
    stratify = y if task == "classification" else None
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.25, random_state=0,
                                              stratify=stratify)
    scaler = StandardScaler().fit(x_tr)
    x_tr, x_te = scaler.transform(x_tr), scaler.transform(x_te)
    if task == "regression":
        mean, std = y_tr.mean(), y_tr.std()
        y_tr, y_te = (y_tr - mean) / std, (y_te - mean) / std
    return np.ascontiguousarray(x_tr), np.ascontiguousarray(x_te), y_tr, y_te


def estimator(framework: str, task: str, epochs: int) -> Any:
    """The estimator of ``framework`` for ``task``, training ``epochs`` epochs exactly."""
    params = {**COMMON, "max_iter": epochs, "n_iter_no_change": epochs}
    extra = FRAMEWORKS[framework]
    if extra is None:
        from sklearn import neural_network as nn
    else:
        from portanet import sklearn as nn

        params.update(extra)
    cls = nn.MLPClassifier if task == "classification" else nn.MLPRegressor
    return cls(**params)


def work(spec: dict[str, Any]) -> dict[str, Any]:
    """Fit one estimator on one data set; its fit time, test score and epochs."""
    from sklearn.exceptions import ConvergenceWarning

    task, epochs = DATASETS[spec["dataset"]]
    x_tr, x_te, y_tr, y_te = load(spec["dataset"])
    model = estimator(spec["framework"], task, epochs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        start = time.perf_counter()
        model.fit(x_tr, y_tr)
        seconds = time.perf_counter() - start
    return {**spec, "fit_s": seconds, "score": float(model.score(x_te, y_te)),
            "epochs": int(model.n_iter_), "final_loss": float(model.loss_)}


def run_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """``work(spec)`` in a fresh subprocess."""
    # This checkout's portanet, whatever else is installed.
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    out = subprocess.run([sys.executable, __file__, "--worker", json.dumps(spec)],
                         capture_output=True, text=True, cwd=REPO, check=False,
                         env={**os.environ, "PYTHONPATH": path})
    for line in out.stdout.splitlines()[::-1]:
        if line.startswith(MARKER):
            return json.loads(line[len(MARKER):])
    raise RuntimeError(f"worker {spec} failed:\n{out.stdout}\n{out.stderr}")


# --------------------------------------------------------------- summary ----


def summarize(runs: list[dict[str, Any]], reference: str = "sklearn") -> list[dict[str, Any]]:
    """One row per (data set, framework): median fit time and score over rounds, and the
    speed-up over ``reference`` as the median of the rounds' own ratios."""
    rows = []
    keys = sorted({(r["dataset"], r["framework"]) for r in runs},
                  key=lambda k: (list(DATASETS).index(k[0]), list(FRAMEWORKS).index(k[1])))
    for dataset, framework in keys:
        mine = {r["round"]: r for r in runs if (r["dataset"], r["framework"]) == (dataset, framework)}
        ref = {r["round"]: r for r in runs if (r["dataset"], r["framework"]) == (dataset, reference)}
        common = sorted(set(mine) & set(ref))
        rows.append({
            "dataset": dataset, "framework": framework, "task": DATASETS[dataset][0],
            "fit_s": statistics.median(r["fit_s"] for r in mine.values()),
            "score": statistics.median(r["score"] for r in mine.values()),
            "epochs": statistics.median(r["epochs"] for r in mine.values()),
            "speedup": statistics.median(ref[i]["fit_s"] / mine[i]["fit_s"] for i in common)
            if common else math.nan,
            "score_diff": statistics.median(r["score"] for r in mine.values())
            - statistics.median(r["score"] for r in ref.values()) if ref else math.nan,
            "spread": max(r["fit_s"] for r in mine.values()) / min(r["fit_s"] for r in mine.values())
            - 1.0,
        })
    return rows


def geometric_means(rows: list[dict[str, Any]]) -> dict[str, float]:
    """The geometric mean speed-up of each framework over the data sets."""
    out = {}
    for framework in FRAMEWORKS:
        ups = [r["speedup"] for r in rows if r["framework"] == framework]
        if ups and all(u > 0 for u in ups):
            out[framework] = math.exp(statistics.fmean(math.log(u) for u in ups))
    return out


def markdown(record: dict[str, Any]) -> str:
    m = record["machine"]
    lines = [f"# portanet.sklearn against scikit-learn's MLP: {m['tag']}", "",
             f"{record['date']}; {m['cpu_model']}, {m['cores']} cores; Python {m['python']}, "
             f"scikit-learn {record['versions'].get('scikit-learn')}, numpy "
             f"{m['versions'].get('numpy')}; OMP_NUM_THREADS={m['env_parent'].get('OMP_NUM_THREADS')}; "
             f"{record['rounds']} alternating rounds; command `{record['command']}`", "",
             "| data set | task | epochs | framework | fit s | speed-up | test score | vs sklearn "
             "| round spread |", "| --- | --- | ---: | --- | ---: | ---: | ---: | ---: | ---: |"]
    for r in record["rows"]:
        score = f"{100 * r['score']:.2f}%" if r["task"] == "classification" else f"{r['score']:.4f}"
        diff = (f"{100 * r['score_diff']:+.2f} pt" if r["task"] == "classification"
                else f"{r['score_diff']:+.4f}")
        lines.append(f"| {r['dataset']} | {r['task']} | {r['epochs']:.0f} | {r['framework']} | "
                     f"{r['fit_s']:.3f} | {r['speedup']:.2f} | {score} | {diff} | "
                     f"{100 * r['spread']:.0f}% |")
    lines += ["", "Geometric mean speed-up over the data sets: " + ", ".join(
        f"{k} {v:.2f}" for k, v in record["geometric_mean_speedup"].items())]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--datasets", default=",".join(DATASETS))
    p.add_argument("--frameworks", default=",".join(FRAMEWORKS))
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    if args.worker:
        print(MARKER + json.dumps(work(json.loads(args.worker))), flush=True)
        return 0
    sys.path.insert(0, str(HERE))
    from train_step import machine_info, package_versions

    machine = machine_info("cpu", dict(os.environ))
    datasets = [d for d in args.datasets.split(",") if d]
    frameworks = [f for f in args.frameworks.split(",") if f]
    runs = []
    for i in range(args.rounds):
        order = frameworks if i % 2 == 0 else frameworks[::-1]
        for dataset in datasets:
            for framework in order:
                runs.append(run_worker({"dataset": dataset, "framework": framework, "round": i}))
                print(json.dumps(runs[-1]), file=sys.stderr, flush=True)
    rows = summarize(runs)
    versions = package_versions()
    try:
        import sklearn

        versions["scikit-learn"] = sklearn.__version__
    except ImportError:
        pass
    record = {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
              "command": " ".join(["python", "bench/sklearn_compare.py", *(argv or sys.argv[1:])]),
              "rounds": args.rounds, "machine": machine, "versions": versions, "common": {
                  k: list(v) if isinstance(v, tuple) else v for k, v in COMMON.items()},
              "rows": rows, "geometric_mean_speedup": geometric_means(rows), "runs": runs}
    out = args.out or REPO / "bench" / "results" / machine["tag"] / "sklearn"
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(record, indent=1))
    (out / "results.md").write_text(markdown(record))
    print(markdown(record))
    return 0


if __name__ == "__main__":
    sys.exit(main())
