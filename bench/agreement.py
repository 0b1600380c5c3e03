"""Backend agreement: the reference training run on every installed backend, against NumPy.

For every installed backend, device and dtype this trains the network of
:func:`portanet.testing.train_reference_run` (the run ``tests/test_agreement.py``
checks) and reports the norm-relative difference from the NumPy run of its
per-step losses and of its worst final parameter array. array-api-strict runs on
``CPU_DEVICE``, ``device1`` and (float32 only) ``no_float64``; torch and JAX on the
CPU and on every GPU they see; CuPy only where a GPU exists. JAX gets x64.

The table goes to stdout; with ``--write`` also to ``agreement.md`` and
``agreement.json`` in ``--out`` (``bench/results``, whose files are tracked: they are
rewritten only when asked). Written, they are rewritten after every row, so that a run
cut short (``timeout``) leaves the rows it finished::

    python bench/agreement.py [--steps 100] [--seed 0] [--device cuda] [--write [--out DIR]]

``--device cuda`` runs only the configurations on a GPU (CuPy, torch ``cuda:N``,
JAX GPUs), against the NumPy reference, as ``bench/gpu_check.sh`` does.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

try:
    import portanet
except ImportError:  # run from a checkout that is not installed
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import portanet
from portanet.backend import available_backends
from portanet.testing import AGREEMENT_RTOL, compare_runs, train_reference_run

DTYPES = ("float64", "float32")


def configurations(gpu_only: bool = False) -> list[tuple[str, str, Any, tuple[str, ...]]]:
    """``(backend, device label, device, dtypes)`` for every installed backend and device
    (only those on a GPU with ``gpu_only``)."""
    if gpu_only:
        return [c for c in configurations() if c[1].startswith(("cuda", "gpu"))]
    out = []
    for info in available_backends():
        if not info.installed:
            continue
        name = info.name
        if name == "numpy":
            out.append((name, "cpu", None, DTYPES))
        elif name == "array_api_strict":
            import array_api_strict as strict

            strict.set_array_api_strict_flags(api_version="2024.12")
            for dev in ("CPU_DEVICE", "device1"):
                out.append((name, dev, strict.Device(dev), DTYPES))
            out.append((name, "no_float64", strict.Device("no_float64"), ("float32",)))
        elif name == "torch":
            import torch

            out.append((name, "cpu", torch.device("cpu"), DTYPES))
            for i in range(torch.cuda.device_count()):
                out.append((name, f"cuda:{i}", torch.device(f"cuda:{i}"), DTYPES))
        elif name == "jax":
            import jax

            jax.config.update("jax_enable_x64", True)
            for dev in jax.devices():
                out.append((name, f"{dev.platform}:{dev.id}", dev, DTYPES))
            if jax.default_backend() != "cpu":
                for dev in jax.devices("cpu"):
                    out.append((name, f"cpu:{dev.id}", dev, DTYPES))
        elif name == "cupy" and info.gpu:
            for dev in info.devices:
                out.append((name, dev, dev, DTYPES))
    return out


def versions() -> dict[str, str]:
    found = {"python": platform.python_version(), "portanet": portanet.__version__}
    for module in ("numpy", "array_api_compat", "array_api_strict", "torch", "jax", "jaxlib",
                   "cupy"):
        try:
            found[module] = str(importlib.import_module(module).__version__)
        except Exception:  # not installed, or no GPU for cupy
            found[module] = "not installed"
    return found


def run_all(steps: int, seed: int, gpu_only: bool = False,
            on_row: Callable[[list[dict[str, Any]]], None] | None = None) -> list[dict[str, Any]]:
    """Every configuration's row; ``on_row(rows)`` after each one (to write as it goes)."""
    references = {dt: train_reference_run("numpy", None, dt, steps=steps, seed=seed)
                  for dt in DTYPES}
    rows: list[dict[str, Any]] = []
    for backend, label, device, dtypes in configurations(gpu_only):
        for dtype in dtypes:
            row: dict[str, Any] = {"backend": backend, "device": label, "dtype": dtype,
                                   "tolerance": AGREEMENT_RTOL[dtype]}
            start = time.perf_counter()
            try:
                run = train_reference_run(backend, device, dtype, steps=steps, seed=seed)
            except Exception as exc:  # report it in the table rather than stop
                row.update(error=f"{type(exc).__name__}: {exc}", ok=False)
            else:
                diffs = compare_runs(run, references[dtype])
                row.update(losses=diffs["losses"], weights=diffs["weights"],
                           final_loss=run["losses"][-1],
                           ok=max(diffs.values()) <= AGREEMENT_RTOL[dtype])
            row["seconds"] = round(time.perf_counter() - start, 2)
            rows.append(row)
            print(f"  {backend:17s} {label:11s} {dtype}: "
                  + (row.get("error") or f"losses {row['losses']:.2e}, weights {row['weights']:.2e}"),
                  file=sys.stderr)
            if on_row is not None:
                on_row(rows)
    return rows


def markdown(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    v = meta["versions"]
    lines = [
        "# Backend agreement",
        "",
        f"{meta['date']}. `portanet.testing.train_reference_run`, {meta['steps']} Adam steps "
        f"(seed {meta['seed']}), on each backend against NumPy. Columns: norm-relative "
        "difference of the per-step losses, and of the worst final parameter array.",
        "",
        "Versions: " + ", ".join(f"{k} {val}" for k, val in v.items()) + ".",
        f"Machine: {meta['machine']}.",
        "",
        "| backend | device | dtype | losses | weights | tolerance | agrees | seconds |",
        "| --- | --- | --- | ---: | ---: | ---: | --- | ---: |",
    ]
    for r in rows:
        if "error" in r:
            cells = ["error", "", f"{r['tolerance']:.0e}", "no: " + r["error"][:80]]
        else:
            cells = [f"{r['losses']:.2e}", f"{r['weights']:.2e}", f"{r['tolerance']:.0e}",
                     "yes" if r["ok"] else "**no**"]
        lines.append("| " + " | ".join([r["backend"], r["device"], r["dtype"], *cells,
                                          f"{r['seconds']:.2f}"]) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--write", action="store_true",
                        help="also write agreement.md and agreement.json into --out")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results",
                        help="where --write writes (default: bench/results)")
    parser.add_argument("--device", choices=("all", "cuda"), default="all",
                        help="cuda: only the configurations on a GPU (default: all)")
    args = parser.parse_args(argv)

    meta = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "steps": args.steps,
        "seed": args.seed,
        "versions": versions(),
        "machine": f"{platform.platform()}, {os.cpu_count()} CPUs",
        "complete": False,  # true once every configuration has its row
    }
    if args.write:
        args.out.mkdir(parents=True, exist_ok=True)

    def write(rows: list[dict[str, Any]]) -> str:
        table = markdown(rows, meta)
        if not meta["complete"]:
            table += "\n(incomplete: the run was still going, or was stopped, after these rows)\n"
        if args.write:
            (args.out / "agreement.md").write_text(table)
            (args.out / "agreement.json").write_text(json.dumps({**meta, "rows": rows}, indent=2)
                                                     + "\n")
        return table

    write([])
    rows = run_all(args.steps, args.seed, gpu_only=args.device == "cuda", on_row=write)
    meta["complete"] = True
    print(write(rows))
    if not rows:
        print(f"no configuration to run (--device {args.device})", file=sys.stderr)
        return 1
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
