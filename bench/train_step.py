"""Time the full training step (forward, loss, backward, update) of portanet against PyTorch.

portanet runs on each installed backend; the references are PyTorch eager with the
same network, loss and optimizer, and ``torch.compile`` where it works. The network
is Dense layers with leaky ReLU (slope 0.1) between them and none on the last, the
loss MSE on random targets, the optimizer Adam (lr 1e-3).

Each measurement runs in a fresh subprocess (``bench/_worker.py``) that prints one
JSON line. Rounds alternate the frameworks (one subprocess per framework per
round, in a rotated order) and the figures are medians over rounds, because one
process's timing of torch can differ a lot from the next one's. In every worker
the step's GEMMs alone are timed too, on the same backend and in the same loop:
``ceiling = GEMM time / step time`` says how close the step is to its matmuls.

Examples
--------
The CPU subset that ``nox -s bench`` runs (a few minutes on 2 cores)::

    python bench/train_step.py --quick

The full CPU measurement::

    python bench/train_step.py --configs all --dtypes float32,float64 --sweep mnist --rounds 3

On a CUDA GPU::

    python bench/train_step.py --device cuda --frameworks portanet-cupy,torch --configs all

Output goes to ``bench/results/<machine-tag>/`` (``--quick``: its ``quick/``
subfolder): ``results.json`` (every raw figure and the machine), ``results.md``
(tables) and ``train_step.png`` (step time against network size).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import importlib.metadata
import importlib.util
import json
import os
import platform
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
WORKER = HERE / "_worker.py"
MARKER = "PORTANET_BENCH_RESULT "  # the prefix of the worker's result line (_worker.MARKER)


@dataclass(frozen=True)
class Config:
    """A network (layer widths, input first) and its default batch size."""

    name: str
    sizes: tuple[int, ...]
    batch: int

    @property
    def n_weights(self) -> int:
        return sum(a * b for a, b in zip(self.sizes[:-1], self.sizes[1:]))

    @property
    def label(self) -> str:
        return "-".join(str(s) for s in self.sizes)


CONFIGS = {
    c.name: c
    for c in (
        Config("tiny", (2, 100, 1), 100),  # the notebook's AND network
        Config("mnist", (784, 256, 10), 128),
        Config("wide", (784, 1024, 1024, 10), 256),
        Config("huge", (1024, 4096, 4096, 1024), 512),
    )
}

#: framework -> (module that must be importable, devices it runs on); also the table order
FRAMEWORKS: dict[str, tuple[str, tuple[str, ...]]] = {
    "torch": ("torch", ("cpu", "cuda")),
    "torch-compile": ("torch", ("cpu", "cuda")),
    "portanet-numpy": ("numpy", ("cpu",)),
    "portanet-torch": ("torch", ("cpu", "cuda")),
    "portanet-jax": ("jax", ("cpu", "cuda")),
    "portanet-cupy": ("cupy", ("cuda",)),
    "portanet-array_api_strict": ("array_api_strict", ("cpu",)),
}
#: array-api-strict validates every call and is slow by design: only the tiny network
STRICT_CONFIGS = ("tiny",)
THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
OPENBLAS_TUNING_VARS = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
RECORD_ENV = THREAD_VARS + OPENBLAS_TUNING_VARS + (
    "JAX_PLATFORMS", "JAX_ENABLE_X64", "XLA_FLAGS", "XLA_PYTHON_CLIENT_PREALLOCATE",
    "CUPY_TF32", "NVIDIA_TF32_OVERRIDE", "CUDA_VISIBLE_DEVICES", "PYTHONPATH",
)
QUICK = {"configs": "tiny,mnist", "dtypes": "float32", "rounds": 1, "warmup": 3,
         "budget": 0.3, "min_steps": 10, "sweep": "mnist", "sweep_batches": "32,128,512"}
DEFAULT_SWEEP_BATCHES = "16,32,64,128,256,512,1024,2048"
#: a row whose slowest round median exceeds its fastest by this factor is flagged
NOISY_SPREAD = 1.5
COLORS = {"torch": "#d62728", "torch-compile": "#ff9896", "portanet-numpy": "#1f77b4",
          "portanet-torch": "#9467bd", "portanet-jax": "#2ca02c", "portanet-cupy": "#17becf",
          "portanet-array_api_strict": "#7f7f7f"}


# ---------------------------------------------------------------- machine ----


def slug(text: str) -> str:
    """``"AMD EPYC 9B14 96-Core Processor"`` -> ``"amd-epyc-9b14-96-core-processor"``."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "unknown"


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (or :func:`platform.processor`)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_cores() -> int:
    """CPUs this process may run on (the affinity mask, else ``os.cpu_count``)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def memory_total_bytes() -> int | None:
    """Total RAM in bytes from /proc/meminfo (None where there is none)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def gpu_info() -> list[dict[str, str]]:
    """Name, driver and memory of each NVIDIA GPU, from ``nvidia-smi`` (empty without one)."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return []
    try:
        out = subprocess.run(
            [smi, "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=30,
        )
    except (OSError, subprocess.SubprocessError):
        return []
    gpus = []
    for line in out.stdout.strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 3:
            gpus.append({"name": parts[0], "driver": parts[1], "memory": parts[2]})
    return gpus


def machine_tag(device: str) -> str:
    """``cpu-<cpu model>-<N>c`` or ``gpu-<gpu name>``."""
    if device == "cuda":
        gpus = gpu_info()
        return f"gpu-{slug(gpus[0]['name']) if gpus else 'unknown'}"
    return f"cpu-{slug(cpu_model())}-{cpu_cores()}c"


def package_versions() -> dict[str, str | None]:
    """Versions of the array libraries, read from their metadata (nothing is imported)."""
    names = ("numpy", "torch", "jax", "jaxlib", "cupy", "cupy-cuda12x", "cupy-cuda13x",
             "array-api-compat", "array-api-strict", "threadpoolctl", "matplotlib")
    versions: dict[str, str | None] = {}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            if not name.startswith("cupy"):
                versions[name] = None
    try:
        text = (REPO / "portanet" / "_version.py").read_text()
        versions["portanet"] = re.search(r"['\"]([^'\"]+)['\"]", text).group(1)
    except (OSError, AttributeError):
        versions["portanet"] = None
    return versions


def git_revision() -> str | None:
    """``HEAD``'s commit, with ``+dirty`` if tracked files differ from it."""
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True,
                             text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=REPO, capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return (rev + ("+dirty" if dirty.strip() else "")) or None


def machine_info(device: str, worker_env: dict[str, str]) -> dict[str, Any]:
    """What the JSON records about the machine.

    Parameters
    ----------
    device : {"cpu", "cuda"}
        Where the frameworks run (it picks the machine tag).
    worker_env : dict
        The workers' environment, whose thread and OpenBLAS variables are recorded.

    Returns
    -------
    dict
        Tag, CPU model, cores, memory, GPUs, OS, Python, package versions, git
        revision, environment variables and the load average.
    """
    return {
        "tag": machine_tag(device),
        "cpu_model": cpu_model(),
        "cores": cpu_cores(),
        "logical_cpus": os.cpu_count(),
        "memory_bytes": memory_total_bytes(),
        "gpus": gpu_info(),
        "os": platform.platform(),
        "python": sys.version.split()[0],
        "python_executable": sys.executable,
        "versions": package_versions(),
        "git": git_revision(),
        "env_parent": {k: os.environ.get(k) for k in RECORD_ENV if k != "PYTHONPATH"},
        "env_workers": {k: worker_env.get(k) for k in RECORD_ENV if k != "PYTHONPATH"},
        "loadavg_start": _loadavg(),
    }


def _loadavg() -> list[float] | None:
    """The 1, 5 and 15-minute load averages: a busy machine makes timings unreliable."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


# -------------------------------------------------------------- arguments ----


def _csv(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse and check the command line; fill the defaults (``--quick``'s where given).

    Parameters
    ----------
    argv : list of str, optional
        The arguments (default: ``sys.argv[1:]``).

    Returns
    -------
    argparse.Namespace
        With ``configs``, ``dtypes`` and ``sweep_batches`` as lists, and
        ``frameworks`` a list or None (every installed one).
    """
    p = argparse.ArgumentParser(
        prog="bench/train_step.py",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Configs: " + "; ".join(f"{c.name} = {c.label}, batch {c.batch}"
                                       for c in CONFIGS.values())
        + ".\nFrameworks: " + ", ".join(FRAMEWORKS) + ".",
    )
    p.add_argument("--frameworks", help="comma-separated frameworks (default: every installed "
                   "one that runs on --device; portanet-array_api_strict only on tiny)")
    p.add_argument("--configs", help="comma-separated config names, or 'all' (default: all)")
    p.add_argument("--sweep", metavar="CONFIG",
                   help="also sweep the batch size on this config (first dtype of --dtypes)")
    p.add_argument("--sweep-batches", help=f"batch sizes of the sweep (default {DEFAULT_SWEEP_BATCHES})")
    p.add_argument("--dtypes", help="comma-separated float32,float64 (default float32)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                   help="where every framework runs (default cpu)")
    p.add_argument("--steps", type=int,
                   help="timed steps per measurement (default: as many as --budget allows, "
                        "between --min-steps and --max-steps)")
    p.add_argument("--warmup", type=int, help="untimed steps before timing (default 5)")
    p.add_argument("--budget", type=float,
                   help="seconds of timed steps (plus their GEMM ceiling) per measurement "
                        "when --steps is not given (default 2.0)")
    p.add_argument("--min-steps", type=int, help="fewest timed steps with --budget (default 10)")
    p.add_argument("--max-steps", type=int, default=2000,
                   help="most timed steps with --budget (default 2000)")
    p.add_argument("--rounds", type=int, help="rounds of one subprocess per framework; "
                   "figures are medians over rounds (default 3)")
    p.add_argument("--threads", type=int, default=cpu_cores(),
                   help=f"OMP/OpenBLAS/MKL threads and torch.set_num_threads in every worker "
                        f"(default: the cores this process may use, {cpu_cores()})")
    p.add_argument("--unset-openblas-coretype", action="store_true",
                   help="unset OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE in the workers, so that "
                        "OpenBLAS picks its kernel for this CPU (recorded in the JSON)")
    p.add_argument("--compile-timeout", type=int, default=300,
                   help="seconds torch.compile may take on its first step before "
                        "torch-compile is skipped (default 300)")
    p.add_argument("--worker-timeout", type=int, default=1200,
                   help="seconds one worker subprocess may run (default 1200)")
    p.add_argument("--seed", type=int, default=0, help="seed of weights and data (default 0)")
    p.add_argument("--out", type=Path, help="output folder (default bench/results/<machine-tag>/, "
                   "and its quick/ subfolder with --quick)")
    p.add_argument("--quick", action="store_true",
                   help="the CPU subset for nox -s bench: tiny,mnist, float32, 1 round, short "
                        "measurements, a 2-point sweep on mnist (explicit options still win)")
    p.add_argument("--dry-run", action="store_true", help="print the plan and exit")
    args = p.parse_args(argv)

    explicit = {k for k, v in vars(args).items() if v is not None}
    defaults = {"configs": "all", "dtypes": "float32", "rounds": 3, "warmup": 5, "budget": 2.0,
                "min_steps": 10, "sweep_batches": DEFAULT_SWEEP_BATCHES}
    if args.quick:
        defaults.update(QUICK)
    for key, value in defaults.items():
        if key not in explicit:
            setattr(args, key, value)

    args.configs = list(CONFIGS) if args.configs == "all" else _csv(args.configs)
    for name in args.configs + ([args.sweep] if args.sweep else []):
        if name not in CONFIGS:
            p.error(f"unknown config {name!r}; known: {', '.join(CONFIGS)}, all")
    args.dtypes = _csv(args.dtypes)
    for d in args.dtypes:
        if d not in ("float32", "float64"):
            p.error(f"unknown dtype {d!r}; use float32 and/or float64")
    try:
        args.sweep_batches = [int(b) for b in _csv(args.sweep_batches)]
    except ValueError:
        p.error(f"--sweep-batches must be integers, got {args.sweep_batches!r}")
    if args.frameworks is not None:
        args.frameworks = _csv(args.frameworks)
        for fw in args.frameworks:
            if fw not in FRAMEWORKS:
                p.error(f"unknown framework {fw!r}; known: {', '.join(FRAMEWORKS)}")
    for name in ("rounds", "warmup", "min_steps", "max_steps", "threads"):
        if getattr(args, name) < (0 if name == "warmup" else 1):
            p.error(f"--{name.replace('_', '-')} must be positive")
    if args.steps is not None and args.steps < 1:
        p.error("--steps must be positive")
    return args


# ------------------------------------------------------------------ plan ----


def choose_frameworks(args: argparse.Namespace) -> tuple[list[str], list[str]]:
    """The frameworks to run, and a note for each one left out."""
    asked = args.frameworks if args.frameworks is not None else list(FRAMEWORKS)
    chosen, notes = [], []
    for fw in asked:
        module, devices = FRAMEWORKS[fw]
        if args.device not in devices:
            if args.frameworks is not None:  # only mention what the user asked for
                notes.append(f"{fw}: skipped, it does not run on {args.device}")
            continue
        if importlib.util.find_spec(module) is None:
            notes.append(f"{fw}: skipped, {module} is not installed")
            continue
        chosen.append(fw)
    if "portanet-array_api_strict" in chosen and set(args.configs) - set(STRICT_CONFIGS):
        notes.append("portanet-array_api_strict runs only on " + ", ".join(STRICT_CONFIGS)
                     + ": it checks every call against the standard and is slow by design")
    return [fw for fw in FRAMEWORKS if fw in chosen], notes


def plan_jobs(args: argparse.Namespace) -> list[tuple[str, int, str]]:
    """``(config, batch, dtype)`` of every measurement, the sweep's after the configs'."""
    jobs = [(c, CONFIGS[c].batch, d) for c in args.configs for d in args.dtypes]
    if args.sweep:
        for b in args.sweep_batches:
            key = (args.sweep, b, args.dtypes[0])
            if key not in jobs:
                jobs.append(key)
    return jobs


def worker_env(args: argparse.Namespace) -> dict[str, str]:
    """The environment of every worker: this one's, plus thread counts and the checkout.

    Every BLAS and OpenMP pool gets ``--threads`` threads, so that no framework
    runs with more threads than another. ``OPENBLAS_CORETYPE`` and
    ``OPENBLAS_L2_SIZE`` are kept unless ``--unset-openblas-coretype``.
    """
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    for var in THREAD_VARS:
        env[var] = str(args.threads)
    if args.unset_openblas_coretype:
        for var in OPENBLAS_TUNING_VARS:
            env.pop(var, None)
    if args.device == "cpu":
        env["JAX_PLATFORMS"] = "cpu"  # no probing for accelerators
    # JAX would otherwise take 75% of the GPU at start-up, hiding its real peak.
    env["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"
    return env


# ------------------------------------------------------------------- run ----


class Terminated(Exception):
    """SIGTERM (e.g. from ``timeout``): stop measuring, write what we have."""


def _on_sigterm(signum: int, frame: Any) -> None:
    """Turn SIGTERM into :class:`Terminated`, so that ``finally`` writes the results."""
    raise Terminated()


def run_worker(spec: dict[str, Any], env: dict[str, str], timeout: int) -> dict[str, Any]:
    """Run one worker subprocess and return its JSON record (or an error record)."""
    base = {k: spec[k] for k in ("framework", "config", "batch", "dtype", "device", "round")}
    t0 = time.perf_counter()
    child = subprocess.Popen(
        [sys.executable, str(WORKER), json.dumps(spec)], cwd=REPO, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = child.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        child.kill()
        child.communicate()
        return {**base, "status": "timeout",
                "note": f"worker ran past --worker-timeout {timeout} s and was killed"}
    finally:
        if child.poll() is None:  # interrupted: do not leave it running
            child.kill()
            child.communicate()
    lines = [ln for ln in out.splitlines() if ln.startswith(MARKER)]
    if not lines:
        tail = "\n".join((err or out).strip().splitlines()[-15:])
        return {**base, "status": "error",
                "note": f"worker exited with code {child.returncode} without a result",
                "stderr_tail": tail, "wall_s": time.perf_counter() - t0}
    result = json.loads(lines[-1][len(MARKER):])
    result["wall_s"] = time.perf_counter() - t0
    if result.get("status") != "ok" and err:
        result["stderr_tail"] = "\n".join(err.strip().splitlines()[-15:])
    return result


def rotate(items: list[str], k: int) -> list[str]:
    """``items`` rotated left by ``k``: round ``k`` starts with another framework."""
    k %= max(len(items), 1)
    return items[k:] + items[:k]


def measure_all(args: argparse.Namespace, frameworks: list[str], jobs: list[tuple[str, int, str]],
                env: dict[str, str], record: dict[str, Any], save: Any) -> None:
    """Run every round of every job, frameworks alternated; append each record and save as we go.

    Rounds are the outer loop: a run cut short (by ``timeout``, say) still has every
    job measured at least once, and each job's rounds lie apart in time, so a burst
    of load elsewhere on the machine spoils one round of it, not all of them.
    """
    total = sum(1 for c, _, _ in jobs for fw in frameworks if _applies(fw, c)) * args.rounds
    done = 0
    given_up: set[tuple[str, int, str, str]] = set()
    for r in range(args.rounds):
        for config, batch, dtype in jobs:
            cfg = CONFIGS[config]
            for fw in rotate([f for f in frameworks if _applies(f, config)], r):
                done += 1
                if (config, batch, dtype, fw) in given_up:
                    continue
                spec = {
                    "framework": fw, "config": config, "sizes": list(cfg.sizes), "batch": batch,
                    "dtype": dtype, "device": args.device, "round": r, "seed": args.seed,
                    "threads": args.threads, "steps": args.steps, "warmup": args.warmup,
                    "budget_s": args.budget, "min_steps": args.min_steps,
                    "max_steps": args.max_steps, "compile_timeout": args.compile_timeout,
                    "record_env": list(RECORD_ENV),
                }
                wenv = dict(env)
                # JAX computes in float64 only with x64 on; keep float32 runs at its default.
                wenv["JAX_ENABLE_X64"] = "1" if dtype == "float64" else "0"
                load = _loadavg()
                res = run_worker(spec, wenv, args.worker_timeout)
                res["loadavg_before"] = load
                record["runs"].append(res)
                _progress(done, total, res)
                if res.get("status") != "ok":
                    # A compile that failed (or a backend that errored) fails the same way
                    # in the next round: do not spend the time again.
                    given_up.add((config, batch, dtype, fw))
                save()


def _applies(fw: str, config: str) -> bool:
    return fw != "portanet-array_api_strict" or config in STRICT_CONFIGS


def _progress(done: int, total: int, res: dict[str, Any]) -> None:
    head = (f"[{done}/{total}] {res['config']} b{res['batch']} {res['dtype']} "
            f"{res['framework']} round {res['round']}:")
    if res.get("status") == "ok":
        print(f"{head} {res['step_ms']['median']:.3f} ms/step, ceiling {res['ceiling']:.2f}, "
              f"{res['steps']} steps, {res['wall_s']:.1f} s", file=sys.stderr, flush=True)
    else:
        print(f"{head} {res.get('status')}: {res.get('note', '')}", file=sys.stderr, flush=True)


# -------------------------------------------------------------- summarize ----


def aggregate(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (config, batch, dtype, framework): medians over the rounds that worked."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in runs:
        if r.get("status") == "ok":
            groups.setdefault((r["config"], r["batch"], r["dtype"], r["framework"]), []).append(r)
    rows = []
    for (config, batch, dtype, fw), rs in groups.items():
        cfg = CONFIGS[config]
        median_ms = statistics.median(r["step_ms"]["median"] for r in rs)
        gemm_ms = statistics.median(r["gemm_ms"]["median"] for r in rs)
        pooled = sorted(v for r in rs for v in r["step_samples_ms"])
        flops = 6 * batch * cfg.n_weights
        gpu = [r["memory"].get("gpu_peak_bytes") for r in rs if r["memory"].get("gpu_peak_bytes")]
        rows.append({
            "config": config, "sizes": list(cfg.sizes), "batch": batch, "dtype": dtype,
            "framework": fw, "n_weights": cfg.n_weights, "flops_per_step": flops,
            "rounds": len(rs), "steps": [r["steps"] for r in rs],
            "median_ms": median_ms,
            "round_medians_ms": [r["step_ms"]["median"] for r in rs],
            "round_spread": (max(r["step_ms"]["median"] for r in rs)
                             / min(r["step_ms"]["median"] for r in rs)),
            "p10_ms": _pct(pooled, 10), "p90_ms": _pct(pooled, 90),
            "gemm_ms": gemm_ms,
            # Each round's ceiling comes from one process (steps and GEMMs in one loop), so
            # the median of those is steadier than a ratio of medians taken across rounds.
            "ceiling": statistics.median(r["gemm_ms"]["median"] / r["step_ms"]["median"]
                                         for r in rs),
            "round_ms": {r["round"]: r["step_ms"]["median"] for r in rs},
            "samples_per_s": batch / (median_ms / 1e3),
            "gflops": flops / (median_ms / 1e3) / 1e9,
            "peak_rss_bytes": max(r["memory"]["peak_rss_bytes"] for r in rs),
            "training_rss_bytes": statistics.median(r["memory"]["training_rss_bytes"] for r in rs),
            "gpu_peak_bytes": max(gpu) if gpu else None,
            "gemm_first_layer_dx": rs[0]["info"].get("gemm_first_layer_dx"),
            "warmup": rs[0]["warmup"],
            "loss_after_warmup": [r["loss_after_warmup"] for r in rs],
            "final_loss": [r["final_loss"] for r in rs],
            "notes": sorted({n for r in rs for n in r.get("notes", [])}),
        })
    torch_rows = {(r["config"], r["batch"], r["dtype"]): r for r in rows if r["framework"] == "torch"}
    for row in rows:
        ref = torch_rows.get((row["config"], row["batch"], row["dtype"]))
        row["vs_torch"] = None if ref is None else paired_ratio(ref["round_ms"], row["round_ms"])
    order = list(FRAMEWORKS)
    rows.sort(key=lambda r: (list(CONFIGS).index(r["config"]), r["dtype"], r["batch"],
                             order.index(r["framework"])))
    return rows


def paired_ratio(ref_ms: dict[int, float], ms: dict[int, float]) -> float:
    """Median over rounds of ``ref / this``, pairing the two runs of the same round.

    A round runs the frameworks back to back, so a slow spell of a shared machine
    (which lasts minutes) tends to slow both sides of one round's ratio; the ratio
    of two medians taken over different rounds would not cancel it. Without a
    common round it falls back to the ratio of the medians.
    """
    common = sorted(set(ref_ms) & set(ms))
    if not common:
        return statistics.median(ref_ms.values()) / statistics.median(ms.values())
    return statistics.median(ref_ms[k] / ms[k] for k in common)


def _pct(sorted_values: list[float], q: float) -> float:
    pos = (len(sorted_values) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def _fmt_ms(ms: float) -> str:
    return f"{ms:.3g}" if ms < 100 else f"{ms:.0f}"


def _fmt_num(x: float) -> str:
    if x >= 1e6:
        return f"{x / 1e6:.3g}M"
    if x >= 1e3:
        return f"{x / 1e3:.3g}k"
    return f"{x:.3g}"


def _mib(b: float | None) -> str:
    return "-" if b is None else f"{b / 2**20:.0f}"


def _blas_summary(record: dict[str, Any]) -> str:
    for run in record["runs"]:
        if run.get("framework") == "portanet-numpy" and run.get("blas"):
            libs = [lib for lib in run["blas"] if lib.get("user_api") == "blas"] or run["blas"]
            lib = libs[0]
            return (f"{lib.get('internal_api', lib.get('name', '?'))} {lib.get('version', '')} "
                    f"kernel {lib.get('architecture', '?')}, {lib.get('num_threads', '?')} threads")
    return "not recorded (no portanet-numpy run)"


def loss_agreement(rows: list[dict[str, Any]]) -> str:
    """A sentence on whether every framework reached the same loss after warm-up.

    Every framework starts from the same seeded weights and data and runs the same
    number of warm-up steps, so the loss then must agree to rounding: a check that
    all of them train the same network the same way.
    """
    losses = {r["framework"]: r["loss_after_warmup"][0] for r in rows}
    ref = losses.get("torch", next(iter(losses.values())))
    worst = max(abs(v - ref) / max(abs(ref), 1e-30) for v in losses.values())
    tol = 1e-3 if rows[0]["dtype"] == "float32" else 1e-9
    head = f"Loss after {rows[0]['warmup']} warm-up steps: {ref:.6g}"
    if worst <= tol:
        return f"{head}; every framework agrees to {worst:.1e} (relative)."
    odd = ", ".join(f"{fw} {v:.6g}" for fw, v in losses.items())
    return f"**{head}, but the frameworks disagree by {worst:.1e} (relative)**: {odd}."


def _first_dx_note(record: dict[str, Any]) -> str:
    """Say so if this portanet still computed the first layer's input gradient."""
    flags = {r["info"].get("gemm_first_layer_dx") for r in record["runs"]
             if r.get("status") == "ok" and r["framework"].startswith("portanet-")}
    return (" (not in this run: its portanet computed it, and its GEMM set includes it)"
            if True in flags else "")


def _torch_blas_summary(record: dict[str, Any]) -> str:
    for run in record["runs"]:
        build = run.get("info", {}).get("torch_build") if run.get("status") == "ok" else None
        if build:
            keep = [ln for ln in build if ln.startswith(("BLAS_INFO", "CPU capability"))]
            mkl = next((ln for ln in build if "Math Kernel Library" in ln), None)
            if mkl:
                keep.append(mkl.split(" for ")[0].replace("Intel(R) oneAPI ", ""))
            return ", ".join(keep) or "not recorded"
    return "not recorded (no torch run)"


def write_markdown(record: dict[str, Any], rows: list[dict[str, Any]], path: Path) -> None:
    m = record["machine"]
    v = m["versions"]
    device = record["settings"]["device"]
    where = (", ".join(g["name"] for g in m["gpus"]) or "GPU") if device == "cuda" else \
        f"{m['cpu_model']}, {m['cores']} cores"
    env = m["env_workers"]
    lines = [
        f"# portanet training step: {m['tag']}",
        "",
        f"{record['date']} on {where}; {_mib(m['memory_bytes'])} MiB RAM; {m['os']}; "
        f"Python {m['python']}.",
        "",
        "Versions: " + ", ".join(f"{k} {val}" for k, val in v.items() if val) + ".",
        f"NumPy's BLAS: {_blas_summary(record)}. torch's: {_torch_blas_summary(record)}. "
        "Worker environment: "
        + ", ".join(f"{k}={env.get(k)}" for k in THREAD_VARS + OPENBLAS_TUNING_VARS) + ".",
        f"Load average (1, 5, 15 min) at start {m.get('loadavg_start')}, "
        f"at end {m.get('loadavg_end')}. Git: {m.get('git')}.",
        "",
        f"Command: `{record['command']}`",
        "",
    ]
    load = m.get("loadavg_start")
    if device == "cpu" and load and load[0] >= 1.0:
        lines += [f"**The machine was busy when this run started (1-minute load {load[0]} on "
                  f"{m['cores']} cores): these timings are unreliable.**", ""]
    lines += [
        "Each figure is the median step time of one fresh process per framework (timed steps "
        "after warm-up), then the median over rounds that alternate the frameworks. A step is "
        "forward, MSE loss, backward and the Adam update (lr 1e-3), with inputs already on the "
        "device; portanet's is `net.train_step(x, y, \"mse\", opt)`, torch's is "
        "`zero_grad(set_to_none=True)`, forward, `MSELoss`, `backward()`, `Adam.step()` "
        f"(foreach default, torch.set_num_threads({record['settings']['threads']})). "
        "torch-compile compiles the model and loss (`torch.compile(dynamic=False)`); backward "
        "and Adam stay eager.",
        "",
        "- **GFLOP/s** = 6 × batch × weights / step time: the usual convention, which counts "
        "the first layer's input gradient that neither framework computes, and not the bias "
        "and elementwise work.",
        "- **ceiling** = GEMM time / step time. GEMM time is the step's matmuls alone (forward "
        "`x @ W`, weight gradient `x.T @ dz`, input gradient `dz @ W.T`, per layer), timed on "
        "the same backend, in the same process and loop as the steps. Each framework's set holds "
        "the GEMMs it computes: autograd skips the first layer's input gradient, and so does "
        f"portanet's train_step{_first_dx_note(record)}. 1.0 means the step costs no more than "
        "its matmuls.",
        "- **vs torch** = torch eager step time / this step time (above 1: faster than torch), "
        "the median over rounds of the ratio within each round (the frameworks of a round run "
        "back to back, so a slow spell of the machine tends to hit both sides of one ratio). "
        "**ceiling** likewise is the median of each round's ratio.",
        "- **peak MiB**: " + ("GPU pool peak (CuPy pool total_bytes, "
                              "torch.cuda.max_memory_allocated) after warm-up."
                              if device == "cuda" else
                              "peak RSS of the worker after warm-up (Δ: above the RSS "
                              "after imports)."),
        "- p10–p90 pools the timed steps of every round.",
        "",
    ]
    main_keys = [(c, CONFIGS[c].batch, d) for c in record["settings"]["configs"]
                 for d in record["settings"]["dtypes"]]
    for config, batch, dtype in main_keys:
        sub = [r for r in rows if (r["config"], r["batch"], r["dtype"]) == (config, batch, dtype)]
        cfg = CONFIGS[config]
        lines += [f"## {config}: {cfg.label}, batch {batch}, {dtype} "
                  f"({cfg.n_weights:,} weights, {6 * batch * cfg.n_weights / 1e9:.3g} GFLOP/step)",
                  ""]
        if not sub:
            lines += ["No framework completed this configuration.", ""]
            continue
        lines += ["| framework | median ms | p10–p90 ms | samples/s | GFLOP/s | peak MiB (Δ) "
                  "| vs torch | ceiling | steps × rounds |",
                  "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for r in sub:
            mem = (_mib(r["gpu_peak_bytes"]) if device == "cuda" else
                   f"{_mib(r['peak_rss_bytes'])} (+{_mib(r['training_rss_bytes'])})")
            vs = "-" if r["vs_torch"] is None else f"{r['vs_torch']:.2f}"
            noisy = " †" if r["round_spread"] > NOISY_SPREAD else ""
            lines.append(
                f"| {r['framework']}{noisy} | {_fmt_ms(r['median_ms'])} | {_fmt_ms(r['p10_ms'])}–"
                f"{_fmt_ms(r['p90_ms'])} | {_fmt_num(r['samples_per_s'])} | {r['gflops']:.3g} "
                f"| {mem} | {vs} | {r['ceiling']:.2f} | {statistics.median(r['steps']):.0f} × "
                f"{r['rounds']} |")
        if any(r["round_spread"] > NOISY_SPREAD for r in sub):
            lines += ["", f"† its rounds' medians differ by more than {NOISY_SPREAD}×: "
                      "noisy, measure again on a quiet machine."]
        lines += ["", loss_agreement(sub), ""]
    sweep = record["settings"].get("sweep")
    if sweep:
        dtype = record["settings"]["dtypes"][0]
        cfg = CONFIGS[sweep]
        batches = record["settings"]["sweep_batches"]
        fws = [fw for fw in FRAMEWORKS if any(r["framework"] == fw and r["config"] == sweep
                                              for r in rows)]
        cell = {(r["batch"], r["framework"]): r for r in rows
                if r["config"] == sweep and r["dtype"] == dtype}
        lines += [f"## Batch-size sweep: {sweep} ({cfg.label}), {dtype}", "",
                  "Median ms per step (ceiling in brackets):", "",
                  "| batch | " + " | ".join(fws) + " |",
                  "| ---: | " + " | ".join("---:" for _ in fws) + " |"]
        for b in batches:
            cells = [f"{_fmt_ms(cell[b, fw]['median_ms'])} ({cell[b, fw]['ceiling']:.2f})"
                     if (b, fw) in cell else "-" for fw in fws]
            lines.append(f"| {b} | " + " | ".join(cells) + " |")
        lines += ["", "Samples per second:", "",
                  "| batch | " + " | ".join(fws) + " |",
                  "| ---: | " + " | ".join("---:" for _ in fws) + " |"]
        for b in batches:
            cells = [_fmt_num(cell[b, fw]["samples_per_s"]) if (b, fw) in cell else "-"
                     for fw in fws]
            lines.append(f"| {b} | " + " | ".join(cells) + " |")
        lines.append("")
    problems = record["notes"] + [
        f"{s['framework']} ({s['config']}, batch {s['batch']}, {s['dtype']}): {s['note']}"
        for s in record["skipped"]
    ] + [
        f"{r['framework']} ({r['config']}, batch {r['batch']}, {r['dtype']}, round {r['round']}): "
        f"{r.get('status')}: {r.get('note', '')}"
        for r in record["runs"] if r.get("status") != "ok"
    ] + [f"{r['framework']} ({r['config']}, batch {r['batch']}, {r['dtype']}): {n}"
         for r in rows for n in r["notes"]]
    if problems:
        lines += ["## Skipped and failed", ""] + [f"- {p}" for p in problems] + [""]
    path.write_text("\n".join(lines))


def write_plot(record: dict[str, Any], rows: list[dict[str, Any]], path: Path) -> str | None:
    """Step time against network size (and against batch for the sweep), log-log,
    each framework's GEMM ceiling dashed. Returns a note if no plot was made."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed: no plot"
    settings = record["settings"]
    panels = [("dtype", d) for d in settings["dtypes"]]
    if settings.get("sweep"):
        panels.append(("sweep", settings["sweep"]))
    fig, axes = plt.subplots(1, len(panels), figsize=(6.2 * len(panels), 4.8), squeeze=False)
    for ax, (kind, what) in zip(axes[0], panels):
        if kind == "dtype":
            keys = {(c, CONFIGS[c].batch) for c in settings["configs"]}
            sub = [r for r in rows if r["dtype"] == what and (r["config"], r["batch"]) in keys]
            xkey = "n_weights"
            ax.set_xlabel("weights in the network (log)")
            ax.set_title(f"training step, {what} ({settings['device']})")
        else:
            dtype = settings["dtypes"][0]
            sub = [r for r in rows if r["config"] == what and r["dtype"] == dtype
                   and r["batch"] in settings["sweep_batches"]]
            xkey = "batch"
            ax.set_xlabel("batch size (log)")
            ax.set_title(f"batch sweep: {what} {CONFIGS[what].label}, {dtype}")
        for fw in FRAMEWORKS:
            pts = sorted((r[xkey], r["median_ms"], r["gemm_ms"]) for r in sub
                         if r["framework"] == fw)
            if not pts:
                continue
            xs, ys, gs = zip(*pts)
            color = COLORS.get(fw)
            ax.plot(xs, ys, "o-", color=color, label=fw, lw=1.6, ms=4)
            ax.plot(xs, gs, "--", color=color, lw=1.0, alpha=0.8)
        if kind == "dtype":
            for c in settings["configs"]:
                ax.axvline(CONFIGS[c].n_weights, color="0.85", lw=0.8, zorder=0)
                ax.annotate(c, (CONFIGS[c].n_weights, 0.02), xycoords=("data", "axes fraction"),
                            rotation=90, fontsize=8, color="0.4", ha="right", va="bottom")
        ax.set_xscale("log")
        ax.set_yscale("log")
        if kind == "sweep":
            from matplotlib.ticker import FixedLocator, NullLocator, ScalarFormatter

            ax.xaxis.set_major_locator(FixedLocator(sorted(settings["sweep_batches"])))
            ax.xaxis.set_minor_locator(NullLocator())
            ax.xaxis.set_major_formatter(ScalarFormatter())
        from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

        ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.yaxis.set_minor_formatter(NullFormatter())
        ax.set_ylabel("median ms per step (log)")
        ax.grid(True, which="both", alpha=0.25)
    seen: dict[str, Any] = {}
    for ax in axes[0]:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            seen.setdefault(label, handle)
    if seen:
        from matplotlib.lines import Line2D

        seen["GEMM ceiling (dashed, same colour)"] = Line2D([], [], color="k", ls="--", lw=1.0)
        fig.legend(list(seen.values()), list(seen), fontsize=8, loc="lower center",
                   ncol=min(4, len(seen)), frameon=False)
    fig.suptitle(f"portanet vs PyTorch: {record['machine']['tag']}", fontsize=11)
    fig.tight_layout(rect=(0, 0.1 if seen else 0, 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return None


# ------------------------------------------------------------------ main ----


_NUMBER_LIST = re.compile(r"\[\s*(-?[0-9][-0-9.eE+]*(?:,\s*-?[0-9][-0-9.eE+]*)*)\s*\]")


def dump_json(record: dict[str, Any]) -> str:
    """Indented JSON, with lists of numbers (the per-step samples) kept on one line."""
    text = json.dumps(record, indent=1)
    return _NUMBER_LIST.sub(lambda m: "[" + ", ".join(v.strip() for v in m.group(1).split(","))
                            + "]", text)



def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and write ``results.json``, ``results.md`` and ``train_step.png``.

    Returns
    -------
    int
        0 when every measurement ran (skips, such as a failed ``torch.compile``, are
        fine), 1 when a worker failed, 2 when nothing could run, 130 when interrupted.
    """
    args = parse_args(argv)
    frameworks, notes = choose_frameworks(args)
    env = worker_env(args)
    jobs = plan_jobs(args)
    machine = machine_info(args.device, env)
    out = args.out or (REPO / "bench" / "results" / machine["tag"] / ("quick" if args.quick else ""))
    if args.device == "cuda" and not machine["gpus"]:
        notes.append("no GPU listed by nvidia-smi: the CUDA workers will fail")
    if args.dry_run:
        print(f"machine {machine['tag']}, out {out}")
        print(f"frameworks: {', '.join(frameworks)}")
        for n in notes:
            print(f"note: {n}")
        for job in jobs:
            fws = [fw for fw in frameworks if _applies(fw, job[0])]
            print(f"{job[0]} batch {job[1]} {job[2]}: {args.rounds} round(s) of {', '.join(fws)}")
        return 0
    if not frameworks:
        print("no framework to run: " + "; ".join(notes), file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    settings["frameworks"] = frameworks
    record: dict[str, Any] = {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": shlex.join([sys.executable, *sys.argv]),
        "machine": machine, "settings": settings, "notes": notes,
        "skipped": [], "runs": [], "rows": [],
    }
    json_path = out / "results.json"

    def save() -> None:
        tmp = json_path.with_suffix(".json.tmp")
        tmp.write_text(dump_json(record))
        tmp.replace(json_path)

    print(f"portanet bench: {machine['tag']}, {len(jobs)} job(s) x {args.rounds} round(s) of "
          f"{', '.join(frameworks)}; writing {out}", file=sys.stderr, flush=True)
    for n in notes:
        print(f"note: {n}", file=sys.stderr)
    signal.signal(signal.SIGTERM, _on_sigterm)
    code = 0
    t0 = time.perf_counter()
    try:
        measure_all(args, frameworks, jobs, env, record, save)
    except (KeyboardInterrupt, Terminated):
        record["notes"].append("interrupted: the results are partial")
        print("interrupted: writing the partial results", file=sys.stderr)
        code = 130
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        machine["loadavg_end"] = _loadavg()
        record["elapsed_s"] = time.perf_counter() - t0
        blas = next((r["blas"] for r in record["runs"] if r.get("framework") == "portanet-numpy"
                     and r.get("blas")), None)
        machine["numpy_blas"] = blas
        record["rows"] = aggregate(record["runs"])
        save()
        write_markdown(record, record["rows"], out / "results.md")
        note = write_plot(record, record["rows"], out / "train_step.png")
        if note:
            record["notes"].append(note)
            save()
    failed = [r for r in record["runs"] if r.get("status") == "error"]
    print((out / "results.md").read_text())
    print(f"wrote {json_path}, results.md, train_step.png in {record['elapsed_s']:.0f} s",
          file=sys.stderr)
    if failed and code == 0:
        code = 1
    return code


if __name__ == "__main__":
    sys.exit(main())
