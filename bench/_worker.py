"""One training-step measurement in a fresh process; prints one JSON line.

``bench/train_step.py`` starts this file once per (framework, network, batch,
dtype, round) as ``python bench/_worker.py SPEC_JSON`` and reads back the last
stdout line that starts with :data:`MARKER`. A fresh process per measurement
keeps one framework's thread pools, allocator caches and JIT caches away from
the next one's.

The worker

1. builds the network (Dense layers with leaky ReLU 0.1 between them, none on
   the last), the MSE loss and Adam (lr 1e-3), with the seeded weights of
   ``portanet.Sequential(seed=...)`` in every framework, and puts random
   inputs and targets on the device once;
2. runs ``warmup`` steps, then reads the peak memory (so that the GEMM arrays
   of step 3 do not count);
3. times ``steps`` training steps, each one on its own, and between them, in
   the same loop so that both see the same machine load, the GEMMs of one step
   alone (the GEMM ceiling).

On the CPU a step is timed with ``time.perf_counter_ns`` (NumPy and torch run
eagerly; JAX is waited for with ``block_until_ready``). On a GPU each step is
timed with CUDA events and the stream is synchronized after it, so steps
never overlap. No step calls ``float(loss)``.
"""

from __future__ import annotations

import inspect
import json
import math
import os
import platform
import re
import resource
import signal
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any

MARKER = "PORTANET_BENCH_RESULT "
NEGATIVE_SLOPE = 0.1
LEARNING_RATE = 1e-3


class CompileTimeout(Exception):
    """Raised by SIGALRM when ``torch.compile`` runs past its time limit."""


# --------------------------------------------------------------- helpers ----


def _percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile ``q`` in [0, 100] of ``values``."""
    s = sorted(values)
    if len(s) == 1:
        return s[0]
    pos = (len(s) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def summarize(ms: list[float]) -> dict[str, float]:
    """Median, p10, p90, mean and min of a list of times in milliseconds."""
    return {
        "median": statistics.median(ms),
        "p10": _percentile(ms, 10),
        "p90": _percentile(ms, 90),
        "mean": statistics.fmean(ms),
        "min": min(ms),
    }


def peak_rss_bytes() -> int:
    """Peak resident set size of this process (``ru_maxrss`` is KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def blas_info() -> list[dict[str, Any]]:
    """The BLAS/OpenMP libraries loaded in this process (threadpoolctl), or numpy's build info."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        import numpy as np

        try:
            blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        except Exception as exc:  # old numpy: no mode="dicts"
            return [{"source": "numpy.show_config", "error": str(exc)}]
        return [{"source": "numpy.show_config (threadpoolctl not installed)", **blas}]
    keep = ("user_api", "internal_api", "prefix", "version", "num_threads",
            "threading_layer", "architecture")
    return [{k: lib.get(k) for k in keep if lib.get(k) is not None} for lib in threadpool_info()]


def host_data(sizes: list[int], batch: int, seed: int) -> tuple[Any, Any]:
    """Random float64 inputs and MSE targets on the host (cast per framework later)."""
    import numpy as np

    rng = np.random.default_rng(seed + 1)
    return (rng.standard_normal((batch, sizes[0])), rng.standard_normal((batch, sizes[-1])))


def gemm_host_arrays(sizes: list[int], batch: int, seed: int) -> list[tuple[Any, Any]]:
    """Per layer, a random input ``x`` (batch, in) and upstream gradient ``dz`` (batch, out)."""
    import numpy as np

    rng = np.random.default_rng(seed + 2)
    return [(rng.standard_normal((batch, a)), rng.standard_normal((batch, b)))
            for a, b in zip(sizes[:-1], sizes[1:])]


def portanet_network(sizes: list[int], backend: str, device: Any, dtype: str, seed: int) -> Any:
    """``Dense`` layers with leaky ReLU (slope 0.1) between them, seeded."""
    import portanet as pn

    pairs = list(zip(sizes[:-1], sizes[1:]))
    layers = [
        pn.Dense(a, b, activation=pn.LeakyReLU(NEGATIVE_SLOPE) if i < len(pairs) - 1 else None)
        for i, (a, b) in enumerate(pairs)
    ]
    return pn.Sequential(layers, backend=backend, device=device, dtype=dtype, seed=seed)


# ------------------------------------------------------------ frameworks ----


class Bench:
    """What the timing loop needs from one framework.

    Attributes
    ----------
    step : callable
        One training step; returns what must be waited for (or None).
    gemms : callable
        The GEMMs of one step alone; returns what must be waited for.
    sync : callable
        Waits for the device work behind the object that ``step``/``gemms`` returned.
    event_timer : callable or None
        ``event_timer(fn) -> (gpu_ms, out)`` with CUDA events on GPUs, else None.
    memory : callable
        Peak memory figures, as a dict.
    info : dict
        Notes and versions for the JSON record.
    """

    def __init__(self) -> None:
        self.step: Callable[[], Any] = lambda: None
        self.gemms: Callable[[], Any] = lambda: None
        self.sync: Callable[[Any], None] = lambda out: None
        self.event_timer: Callable[[Callable[[], Any]], tuple[float, Any]] | None = None
        self.memory: Callable[[], dict[str, Any]] = lambda: {}
        self.info: dict[str, Any] = {}
        self.final_loss: Callable[[], float] = lambda: float("nan")


def _torch_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def torch_build_info() -> list[str]:
    """The lines of ``torch.__config__.show()`` that say which BLAS and CPU kernels torch uses.

    threadpoolctl does not see torch's statically linked MKL; on AMD CPUs MKL's
    choice of kernels can differ a lot from OpenBLAS's, so record it.
    """
    import torch

    keys = ("Math Kernel Library", "MKL-DNN", "OpenMP", "CPU capability", "BLAS_INFO", "CUDA Runtime",
            "CuDNN")
    out = []
    for line in torch.__config__.show().splitlines():
        line = line.strip(" -")
        if any(k in line for k in keys):
            # BLAS_INFO sits in a long "Build settings" line: keep only that item.
            m = re.search(r"BLAS_INFO=[^,]*", line) if "Build settings" in line else None
            out.append(m.group(0) if m else line)
    return out


def _cuda_event_timer_torch() -> Callable[[Callable[[], Any]], tuple[float, Any]]:
    import torch

    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)

    def timer(fn: Callable[[], Any]) -> tuple[float, Any]:
        start.record()
        out = fn()
        end.record()
        end.synchronize()  # the stream is idle again before the next step
        return start.elapsed_time(end), out

    return timer


def _cuda_event_timer_cupy() -> Callable[[Callable[[], Any]], tuple[float, Any]]:
    import cupy

    start, end = cupy.cuda.Event(), cupy.cuda.Event()

    def timer(fn: Callable[[], Any]) -> tuple[float, Any]:
        start.record()
        out = fn()
        end.record()
        end.synchronize()
        return cupy.cuda.get_elapsed_time(start, end), out

    return timer


def portanet_computes_first_dx() -> bool:
    """Whether portanet's train_step computes the first layer's dL/dx: it skips it where
    ``Layer.backward`` takes ``need_input_grad`` (older versions computed it)."""
    import portanet as pn

    return "need_input_grad" not in inspect.signature(pn.Dense.backward).parameters


def portanet_gemms(net: Any, sizes: list[int], batch: int, seed: int) -> Callable[[], list[Any]]:
    """The GEMMs of one portanet training step alone, on inputs made once on ``net``'s device.

    They are portanet's Dense forward and backward products, in its own expressions
    and layouts (W is (in, out)), leaving out what train_step leaves out.
    """
    from portanet.backend import to_array

    weights = [layer.params["weight"] for layer in net.layers]
    gemm_in = [(to_array(a, net.xp, net.device, net.dtype), to_array(d, net.xp, net.device, net.dtype))
               for a, d in gemm_host_arrays(sizes, batch, seed)]
    first_dx = portanet_computes_first_dx()

    def gemms() -> list[Any]:
        outs = []
        for i, (w, (a, dz)) in enumerate(zip(weights, gemm_in)):
            outs.append(a @ w)
            outs.append(a.T @ dz)
            if i > 0 or first_dx:
                outs.append(dz @ w.T)
        return outs

    return gemms


def setup_portanet(spec: dict[str, Any]) -> Bench:
    """portanet on one backend: ``net.train_step(x, y, "mse", Adam(lr=1e-3))``."""
    import portanet as pn
    from portanet.backend import to_array

    backend = spec["framework"].split("-", 1)[1]
    sizes, batch, dtype, seed = spec["sizes"], spec["batch"], spec["dtype"], spec["seed"]
    if backend == "torch":
        _torch_threads(spec["threads"])
    device = spec["device"]
    net = portanet_network(sizes, backend, device, dtype, seed)
    xp = net.xp
    opt = pn.Adam(lr=LEARNING_RATE)
    xh, yh = host_data(sizes, batch, seed)
    # Device arrays made once: train_step still checks and converts them (a
    # no-op for arrays already of the network's namespace, device and dtype),
    # which is part of the measured step.
    x = to_array(xh, xp, net.device, net.dtype, what="x")
    y = to_array(yh, xp, net.device, net.dtype, what="y")
    state: dict[str, Any] = {}

    def step() -> Any:
        state["loss"] = net.train_step(x, y, "mse", opt)
        return state["loss"]

    first_dx = portanet_computes_first_dx()
    gemms = portanet_gemms(net, sizes, batch, seed)

    b = Bench()
    b.step, b.gemms = step, gemms
    b.info = {
        "backend": net.backend,
        "device_str": str(net.device),
        "n_params": net.num_parameters(),
        "gemm_ops": "per layer: x @ W, x.T @ dz, dz @ W.T (the first layer's dz @ W.T "
                    + ("included: this portanet computes it)" if first_dx else
                       "left out: train_step does not compute it)"),
        "gemm_first_layer_dx": first_dx,
    }
    if backend == "jax":
        import jax

        def sync(out: Any) -> None:
            # JAX dispatches asynchronously, even on the CPU: wait for the
            # updated parameters and optimizer state too, not just the loss.
            extra = list(net.parameters().values())
            extra += [a for slot in opt.state.values() for a in slot.values()]
            jax.block_until_ready([out, extra] if out is not None else extra)

        b.sync = sync
        b.info["jax_devices"] = [str(d) for d in jax.devices()]
        b.info["jax_x64"] = bool(jax.config.read("jax_enable_x64"))
        if device == "cuda":
            b.memory = lambda: _jax_gpu_memory(net.device)
    elif backend == "cupy":
        import cupy

        b.sync = lambda out: cupy.cuda.get_current_stream().synchronize()
        b.event_timer = _cuda_event_timer_cupy()
        pool = cupy.get_default_memory_pool()
        b.memory = lambda: {"gpu_kind": "cupy default memory pool total_bytes (never shrinks: "
                                        "its peak reservation)",
                            "gpu_peak_bytes": int(pool.total_bytes()),
                            "gpu_used_bytes": int(pool.used_bytes())}
        b.info["cupy_version"] = cupy.__version__
        name = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)["name"]
        b.info["gpu_name"] = name.decode() if isinstance(name, bytes) else str(name)
    elif backend == "torch" and device == "cuda":
        import torch

        torch.cuda.reset_peak_memory_stats()
        b.sync = lambda out: torch.cuda.synchronize()
        b.event_timer = _cuda_event_timer_torch()
        b.memory = _torch_gpu_memory
    if backend == "torch":
        import torch

        b.info["torch_threads"] = torch.get_num_threads()
        b.info["float32_matmul_precision"] = torch.get_float32_matmul_precision()
        b.info["torch_build"] = torch_build_info()
    b.final_loss = lambda: float(pn.to_numpy(state["loss"]))
    return b


def _torch_gpu_memory() -> dict[str, Any]:
    import torch

    return {"gpu_kind": "torch.cuda.max_memory_allocated",
            "gpu_peak_bytes": int(torch.cuda.max_memory_allocated()),
            "gpu_reserved_peak_bytes": int(torch.cuda.max_memory_reserved())}


def _jax_gpu_memory(device: Any) -> dict[str, Any]:
    try:
        stats = device.memory_stats() or {}
    except Exception:
        stats = {}
    return {"gpu_kind": "jax device.memory_stats peak_bytes_in_use",
            "gpu_peak_bytes": stats.get("peak_bytes_in_use")}


def setup_torch(spec: dict[str, Any], compiled: bool) -> Bench:
    """The PyTorch reference: ``nn.Linear`` + ``nn.LeakyReLU(0.1)``, ``MSELoss``, ``Adam``."""
    import torch
    from torch import nn

    sizes, batch, dtype, seed = spec["sizes"], spec["batch"], spec["dtype"], spec["seed"]
    _torch_threads(spec["threads"])
    device = torch.device(spec["device"])
    tdtype = getattr(torch, dtype)
    pairs = list(zip(sizes[:-1], sizes[1:]))
    mods: list[nn.Module] = []
    for i, (a, b_) in enumerate(pairs):
        mods.append(nn.Linear(a, b_))
        if i < len(pairs) - 1:
            mods.append(nn.LeakyReLU(NEGATIVE_SLOPE))
    model = nn.Sequential(*mods).to(device=device, dtype=tdtype)
    linears = [m for m in model if isinstance(m, nn.Linear)]
    # The same seeded weights as portanet's (W is (in, out) there, (out, in) here),
    # copied from the NumPy arrays without state_dict's extra host copies, so
    # that they do not raise the peak RSS that this process reports.
    ref = portanet_network(sizes, "numpy", None, dtype, seed)
    with torch.no_grad():
        for lin, layer in zip(linears, ref.layers):
            lin.weight.copy_(torch.from_numpy(layer.params["weight"]).T)
            lin.bias.copy_(torch.from_numpy(layer.params["bias"]))
    del ref
    loss_fn = nn.MSELoss()
    opt = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE)  # default foreach behaviour
    xh, yh = host_data(sizes, batch, seed)
    x = torch.from_numpy(xh).to(device=device, dtype=tdtype)
    y = torch.from_numpy(yh).to(device=device, dtype=tdtype)

    def forward_loss(xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        return loss_fn(model(xb), yb)

    fwd = torch.compile(forward_loss, dynamic=False) if compiled else forward_loss
    state: dict[str, Any] = {}

    def step() -> Any:
        opt.zero_grad(set_to_none=True)
        loss = fwd(x, y)
        loss.backward()
        opt.step()
        state["loss"] = loss
        return None

    weights = [lin.weight.detach() for lin in linears]
    gemm_in = [(torch.from_numpy(a).to(device=device, dtype=tdtype),
                torch.from_numpy(d).to(device=device, dtype=tdtype))
               for a, d in gemm_host_arrays(sizes, batch, seed)]

    def gemms() -> Any:
        # torch's own layouts (W is (out, in)). The input does not require a
        # gradient, so autograd skips the first layer's dL/dx: so does this.
        outs = []
        with torch.no_grad():
            for i, (w, (a, dz)) in enumerate(zip(weights, gemm_in)):
                outs.append(a @ w.T)
                outs.append(dz.T @ a)
                if i > 0:
                    outs.append(dz @ w)
        return outs

    b = Bench()
    b.step, b.gemms = step, gemms
    b.info = {
        "n_params": sum(p.numel() for p in model.parameters()),
        "torch_threads": torch.get_num_threads(),
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "adam_foreach": opt.defaults.get("foreach"),
        "compiled": compiled,
        "torch_build": torch_build_info(),
        "gemm_ops": "per layer: x @ W.T, dz.T @ x, dz @ W (first layer's dL/dx skipped, as "
                    "autograd skips it)",
        "gemm_first_layer_dx": False,
    }
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        b.sync = lambda out: torch.cuda.synchronize()
        b.event_timer = _cuda_event_timer_torch()
        b.memory = _torch_gpu_memory
        b.info["gpu_name"] = torch.cuda.get_device_name(device)
    b.final_loss = lambda: float(state["loss"].detach().cpu())
    return b


# ------------------------------------------------------------- measuring ----


def import_framework(framework: str) -> None:
    """Import what ``framework`` runs on, so that the RSS read next is the base after imports."""
    import array_api_compat  # noqa: F401
    import numpy  # noqa: F401

    import portanet  # noqa: F401

    backend = framework.split("-", 1)[1] if framework.startswith("portanet-") else "torch"
    if backend in ("numpy", "torch", "cupy"):
        __import__(backend)
        __import__(f"array_api_compat.{backend}")
    elif backend == "jax":
        import jax.numpy  # noqa: F401
    else:
        __import__(backend)


def timed(b: Bench, fn: Callable[[], Any]) -> tuple[float, float | None]:
    """Run ``fn`` once, wait for it; return (wall ms, CUDA-event ms or None)."""
    if b.event_timer is not None:
        t0 = time.perf_counter_ns()
        gpu_ms, out = b.event_timer(fn)
        b.sync(out)
        return (time.perf_counter_ns() - t0) / 1e6, gpu_ms
    t0 = time.perf_counter_ns()
    out = fn()
    b.sync(out)
    return (time.perf_counter_ns() - t0) / 1e6, None


def measure(spec: dict[str, Any]) -> dict[str, Any]:
    """Build, warm up and time one framework on one network; return the JSON record."""
    framework = spec["framework"]
    t_start = time.perf_counter()
    import_framework(framework)
    import_s = time.perf_counter() - t_start
    rss_after_imports = peak_rss_bytes()
    if framework.startswith("portanet-"):
        b = setup_portanet(spec)
    elif framework in ("torch", "torch-compile"):
        b = setup_torch(spec, compiled=framework == "torch-compile")
    else:
        raise ValueError(f"unknown framework {framework!r}")
    build_s = time.perf_counter() - t_start - import_s

    # Warm-up. The first step of torch-compile compiles; give it a time limit.
    warm_ms: list[float] = []
    first_step_s = None
    for i in range(max(spec["warmup"], 1)):
        if i == 0 and framework == "torch-compile" and spec.get("compile_timeout"):
            def on_alarm(signum: int, frame: Any) -> None:
                raise CompileTimeout()

            signal.signal(signal.SIGALRM, on_alarm)
            signal.alarm(int(spec["compile_timeout"]))
            try:
                wall, _ = timed(b, b.step)
            finally:
                signal.alarm(0)
        else:
            wall, _ = timed(b, b.step)
        if i == 0:
            first_step_s = wall / 1e3
        warm_ms.append(wall)
    loss_after_warmup = b.final_loss()
    memory = {"peak_rss_bytes": peak_rss_bytes(), "rss_after_imports_bytes": rss_after_imports,
              **b.memory()}
    memory["training_rss_bytes"] = memory["peak_rss_bytes"] - rss_after_imports

    # Steps: fixed, or as many as fit the time budget (step + GEMMs per iteration).
    gemm_warm = [timed(b, b.gemms)[0] for _ in range(2)]
    steps = spec["steps"]
    if steps is None:
        later = warm_ms[1:] or warm_ms  # the first step pays for allocation and compiling
        per_iter = statistics.median(later[len(later) // 2:]) + min(gemm_warm)
        steps = int(spec["budget_s"] * 1e3 / max(per_iter, 1e-6))
        steps = max(spec["min_steps"], min(spec["max_steps"], steps))

    step_wall, step_gpu, gemm_wall, gemm_gpu = [], [], [], []
    t_timed = time.perf_counter()
    for _ in range(steps):
        w, g = timed(b, b.step)
        step_wall.append(w)
        step_gpu.append(g)
        w, g = timed(b, b.gemms)
        gemm_wall.append(w)
        gemm_gpu.append(g)
    timed_s = time.perf_counter() - t_timed
    final_loss = b.final_loss()

    events = b.event_timer is not None
    step_ms = [round(float(v), 5) for v in (step_gpu if events else step_wall)]
    gemm_ms = [round(float(v), 5) for v in (gemm_gpu if events else gemm_wall)]
    step_summary, gemm_summary = summarize(step_ms), summarize(gemm_ms)
    sizes, batch = spec["sizes"], spec["batch"]
    n_weights = sum(a * c for a, c in zip(sizes[:-1], sizes[1:]))
    flops = 6 * batch * n_weights
    median_s = step_summary["median"] / 1e3
    notes = []
    if not math.isfinite(final_loss):
        notes.append(f"loss is not finite after training ({final_loss})")
    return {
        "status": "ok",
        **{k: spec[k] for k in ("framework", "config", "sizes", "batch", "dtype", "device",
                                "round", "seed", "threads")},
        "n_weights": n_weights,
        "flops_per_step": flops,
        "warmup": len(warm_ms),
        "steps": steps,
        "timer": ("cuda-events around each step, stream synchronized after it" if events else
                  "time.perf_counter_ns around each step"
                  + (", jax.block_until_ready on loss, parameters and Adam state"
                     if framework == "portanet-jax" else "")),
        "step_ms": step_summary,
        "step_samples_ms": step_ms,
        "step_wall_ms": summarize(step_wall) if events else None,
        "gemm_ms": gemm_summary,
        "gemm_samples_ms": gemm_ms,
        "ceiling": gemm_summary["median"] / step_summary["median"],
        "samples_per_s": batch / median_s,
        "gflops": flops / median_s / 1e9,
        "memory": memory,
        "loss_after_warmup": loss_after_warmup,
        "final_loss": final_loss,
        "import_s": import_s,
        "build_s": build_s,
        "first_step_s": first_step_s,
        "warmup_ms": warm_ms,
        "timed_s": timed_s,
        "total_s": time.perf_counter() - t_start,
        "info": b.info,
        "blas": blas_info(),
        "env": {k: os.environ.get(k) for k in spec.get("record_env", [])},
        "python": platform.python_version(),
        "notes": notes,
    }


def main(argv: list[str] | None = None) -> int:
    """Run the measurement described by the JSON spec in ``argv[0]``; print one JSON line."""
    argv = sys.argv[1:] if argv is None else argv
    spec = json.loads(argv[0])
    try:
        result = measure(spec)
    except CompileTimeout:
        result = {"status": "skipped",
                  "note": f"torch.compile did not finish within {spec.get('compile_timeout')} s"}
    except Exception as exc:
        tb = traceback.format_exc(limit=6)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        compiled = spec["framework"] == "torch-compile"
        result = {"status": "skipped" if compiled else "error",
                  "note": ("torch.compile failed: " if compiled else "")
                  + f"{type(exc).__name__}: {first[:300]}",
                  "traceback": tb[-4000:]}
    for key in ("framework", "config", "batch", "dtype", "device", "round"):
        result.setdefault(key, spec.get(key))
    sys.stdout.flush()
    print(MARKER + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
