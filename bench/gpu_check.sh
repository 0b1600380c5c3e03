#!/usr/bin/env bash
# One GPU check for a lent NVIDIA machine (an H200 with CuPy, NumPy, PyTorch, JAX and
# pytest, but without array-api-compat, array-api-extra or array-api-strict): install
# the carried wheels, prove that CuPy computes on the GPU (or stop at once, with CUDA's
# error in one line), record the GPU and versions, check DLPack between torch CUDA and
# CuPy, check data-parallel training (a one-rank NCCL communicator, and two ranks
# sharing the GPU through the host-staged MPI path against one process), run the test
# suite on CuPy, then the GPU training-step benchmark and the backend agreement on
# the GPU.
#
#   bash bench/fetch_gpu_wheels.sh           # here, once: fills .whl/ (git-ignored)
#   bash bench/gpu_check.sh [DEST]           # there, with carry: [".whl"]
#
# Everything goes to DEST (default: $OUT, else bench/results/gpu-check): summary.txt
# (one line per phase: exit code and seconds), gpu_check.log (all output), junit.xml
# (the tests, with their times), bench/ (results.json, results.md, train_step.png) and
# agreement/ (agreement.md, agreement.json, rewritten after every row). The device
# tool returns at most 8 files, so keep it to that.
#
# It cannot pass on a broken GPU: the device phase fails (and the script stops) when
# CuPy cannot compute on a GPU, a failing nvidia-smi fails it, the tests run under
# PORTANET_TEST_REQUIRE_BACKEND=1 (a missing backend or device fails, never skips),
# and the interop phase fails where torch has no CUDA.
#
# Each phase runs under `timeout`, within a total of TOTAL_S seconds (default 450,
# under 8 minutes): a phase gets its own limit or what is left, whichever is
# smaller. A failing phase does not stop the next one (except the device phase); the
# script exits 1 at the end if any phase failed or was not run. Exit codes 124/137 in
# the summary mean the phase ran out of time.
#
# A rehearsal without a GPU: PORTANET_TEST_CUPY=emulated runs the same phases on the
# CuPy stand-in of tests/_fake_cupy (refused where a real CuPy is installed), skips
# nvidia-smi and the interop phase, and benchmarks portanet-cupy alone on two small
# networks. It proves that the script and the CuPy code paths run; it says nothing
# about a GPU, and its summary says so.
#
# Knobs (environment): TOTAL_S, TESTS_S (240), INTEROP_S (60), NCCL_S (60),
# STAGED_S (90), BENCH_S (150),
# AGREEMENT_S (90), PYTEST_ARGS (extra pytest options, e.g. "-n 4" with
# pytest-xdist), BENCH_FRAMEWORKS (portanet-cupy,torch), BENCH_CONFIGS (all),
# BENCH_ARGS (extra train_step.py options), AGREEMENT_ARGS (default: --device cuda
# --out DEST/agreement), PYTHON (python3).
set -u
cd "$(dirname "$0")/.." || exit 2
REPO=$PWD
SELF=$REPO/bench/gpu_check.sh
PY=${PYTHON:-python3}
TOTAL_S=${TOTAL_S:-450}
EMULATED=0
[ "${PORTANET_TEST_CUPY:-}" = emulated ] && EMULATED=1
export EMULATED
# JAX on the image would take 75% of the GPU's memory in every process that imports it
# (the tests, the agreement run), leaving CuPy and torch the rest.
export XLA_PYTHON_CLIENT_PREALLOCATE=false
export PYTHONUNBUFFERED=1

log() { printf '%s\n' "$*" >>"$LOG"; }

# phase NAME LIMIT_S COMMAND...: run with a time limit, log, and record the exit code.
phase() {
  local name=$1 want=$2 left limit t0 rc
  shift 2
  left=$((TOTAL_S - ($(date +%s) - START)))
  limit=$((want < left ? want : left))
  if [ "$limit" -lt 10 ]; then
    printf '%-10s rc=%-4s %5ss  not run: the %ss total was spent\n' "$name" "-" 0 "$TOTAL_S" >>"$SUMMARY"
    FAILED=1
    return 0
  fi
  log "" "=== $name (limit ${limit}s): ${*#bash $SELF }"
  t0=$(date +%s)
  timeout -k 10 "$limit" "$@" >>"$LOG" 2>&1
  rc=$?
  printf '%-10s rc=%-4s %5ss  limit %ss%s\n' "$name" "$rc" "$(($(date +%s) - t0))" "$limit" \
    "$([ "$rc" = 124 ] || [ "$rc" = 137 ] && echo '  (timed out)')" >>"$SUMMARY"
  [ "$rc" -eq 0 ] || FAILED=1
  return 0
}

skipped() { printf '%-10s rc=%-4s %5ss  %s\n' "$1" "-" 0 "$2" >>"$SUMMARY"; }

# --- the phases' functions ----------------------------------------------------------
missing_wheels() {
  # Print the carried wheels whose distribution is not installed.
  "$PY" - "$@" <<'PYEOF'
import importlib.metadata as md, os, sys
for path in sys.argv[1:]:
    dist = os.path.basename(path).split("-")[0]
    try:
        md.version(dist)
    except md.PackageNotFoundError:
        print(path)
PYEOF
}

install_wheels() {
  if ! ls .whl/*.whl >/dev/null 2>&1; then
    echo "no wheels in .whl/: run bash bench/fetch_gpu_wheels.sh on the dev machine and" \
      "pass carry: [\".whl\"] to the device run"
    return 0
  fi
  local want
  mapfile -t want < <(missing_wheels .whl/*.whl)
  echo "carried: $(cd .whl && echo *.whl)"
  if [ "${#want[@]}" -eq 0 ]; then
    echo "every carried package is installed already"
    return 0
  fi
  # MPI (mpi4py and the MPICH wheel, whose libmpi and mpiexec are data files) goes to a
  # prefix, /tmp/mpi; the rest to /tmp/site. The main script puts both on the paths.
  local mpi=() rest=() w
  for w in "${want[@]}"; do
    case $(basename "$w") in mpi4py-* | mpich-*) mpi+=("$w") ;; *) rest+=("$w") ;; esac
  done
  if [ "${#rest[@]}" -gt 0 ]; then
    echo "installing into /tmp/site: ${rest[*]}"
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/site "${rest[@]}" || return
  fi
  if [ "${#mpi[@]}" -gt 0 ]; then
    echo "installing into the prefix /tmp/mpi: ${mpi[*]}"
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --prefix /tmp/mpi "${mpi[@]}"
  fi
}

check_imports() {
  # One interpreter for all: each import is reported, the missing ones with their remedy.
  "$PY" - <<'PYEOF'
import importlib, os, sys
image = {"numpy", "cupy", "torch", "pytest"}
rc = 0
for mod in ("numpy", "cupy", "torch", "array_api_compat", "array_api_extra", "array_api_strict",
            "tqdm", "hypothesis", "pytest", "portanet"):
    try:
        m = importlib.import_module(mod)
    except Exception as exc:
        rc = 1
        if mod in image:
            why = "the machine's image should have it"
        elif mod == "portanet":
            why = f"run from the repository root; PYTHONPATH={os.environ.get('PYTHONPATH')}"
        else:
            why = 'fetch its wheel here with bench/fetch_gpu_wheels.sh and pass carry: [".whl"]'
        print(f"import {mod}: MISSING ({type(exc).__name__}: {exc}; {why})")
    else:
        note = " (the CuPy stand-in)" if getattr(m, "__portanet_emulated__", False) else ""
        print(f"import {mod}: ok {getattr(m, '__version__', '')}{note}")
sys.exit(rc)
PYEOF
}

device_check() {
  # nvidia-smi must list a GPU, and CuPy must compute on it; torch must see CUDA.
  local rc=0 out
  if [ "$EMULATED" = 1 ]; then
    echo "nvidia-smi: not asked (a rehearsal on the CuPy stand-in)"
  elif ! command -v nvidia-smi >/dev/null 2>&1; then
    echo "nvidia-smi: not found"
    rc=1
  elif ! out=$(nvidia-smi -L 2>&1) || ! grep -q '^GPU' <<<"$out"; then
    echo "nvidia-smi -L failed or listed no GPU: $(tr '\n' ' ' <<<"$out")"
    rc=1
  else
    echo "$out"
  fi
  "$PY" - <<'PYEOF' || rc=$?
import os, sys
try:
    import portanet.backend as B

    xp = B.get_namespace("cupy")  # raises with CUDA's own error where CuPy has no GPU
    dev = B.resolve_device(xp, "cuda:0")
    total = float(B.to_numpy(xp.sum(xp.ones(1024, dtype=xp.float32, device=dev))))
    if total != 1024.0:
        raise RuntimeError(f"1024 ones summed to {total} on {dev}")
    print(f"cupy: computes on {dev}")
except Exception as exc:
    print(f"CUPY CANNOT COMPUTE ON A GPU: {type(exc).__name__}: {exc}".replace("\n", " "))
    sys.exit(3)
try:
    import torch

    ok = torch.cuda.is_available()
    print(f"torch {torch.__version__}: CUDA {'available' if ok else 'NOT available'}")
except Exception as exc:
    ok = False
    print(f"torch: {type(exc).__name__}: {exc}")
sys.exit(0 if ok or os.environ.get("EMULATED") == "1" else 1)
PYEOF
  return $rc
}

info() {
  local rc=0
  if [ "$EMULATED" = 1 ]; then
    echo "nvidia-smi: not asked (a rehearsal on the CuPy stand-in)"
  else
    nvidia-smi || rc=1
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv || rc=1
  fi
  "$PY" - <<'PYEOF' || rc=1
import platform, sys
print("python", sys.version.split()[0], sys.executable, platform.platform())
for name in ("numpy", "cupy", "torch", "jax", "array_api_compat", "array_api_extra",
             "array_api_strict", "hypothesis", "pytest"):
    try:
        mod = __import__(name)
        print(f"{name} {getattr(mod, '__version__', '?')}")
    except Exception as exc:
        print(f"{name}: not importable ({type(exc).__name__}: {exc})")
import cupy
name = cupy.cuda.runtime.getDeviceProperties(0)["name"]
print("cupy CUDA runtime", cupy.cuda.runtime.runtimeGetVersion(),
      "driver", cupy.cuda.runtime.driverGetVersion(),
      "devices", cupy.cuda.runtime.getDeviceCount(),
      "device 0", name.decode() if isinstance(name, bytes) else name)
import torch
print("torch CUDA", torch.version.cuda, "available", torch.cuda.is_available(),
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
import portanet
for b in portanet.available_backends():
    print("portanet backend", b)
PYEOF
  return $rc
}
# The phases above run as `bash gpu_check.sh --phase NAME`, each under its own limit.
if [ "${1:-}" = "--phase" ]; then
  case ${2:-} in
    install) install_wheels ;;
    imports) check_imports ;;
    device) device_check ;;
    info) info ;;
    *) echo "unknown phase ${2:-}" >&2; exit 2 ;;
  esac
  exit
fi

DEST=${1:-${OUT:-bench/results/gpu-check}}
mkdir -p "$DEST" || exit 2
DEST=$(cd "$DEST" && pwd)
LOG=$DEST/gpu_check.log
SUMMARY=$DEST/summary.txt
START=$(date +%s)
FAILED=0
: >"$LOG"
printf 'gpu_check %s  repo %s  git %s%s\n' "$(date -u +%FT%TZ)" "$REPO" \
  "$(git rev-parse --short HEAD 2>/dev/null || echo '?')" \
  "$([ "$EMULATED" = 1 ] && echo '  REHEARSAL ON THE CUPY STAND-IN: NOT A GPU CHECK')" >"$SUMMARY"

finish() {
  printf 'total %ss of %ss; %s\n' "$(($(date +%s) - START))" "$TOTAL_S" \
    "$([ "$FAILED" = 0 ] && echo 'every phase passed' || echo 'SOME PHASE FAILED')$(
      [ "$EMULATED" = 1 ] && echo ' (a rehearsal on the CuPy stand-in: no GPU was checked)')" \
    >>"$SUMMARY"
  cat "$SUMMARY"
  exit "$FAILED"
}

# --- 1. install what the machine lacks from the carried wheels ---------------------
phase install 60 bash "$SELF" --phase install
MPI_SITE=$(ls -d /tmp/mpi/lib/python3*/site-packages 2>/dev/null | head -n 1)
export PYTHONPATH=/tmp/site${MPI_SITE:+:$MPI_SITE}:$REPO${PYTHONPATH:+:$PYTHONPATH}
export PATH=/tmp/mpi/bin:$(dirname "$(command -v "$PY")"):$PATH  # mpiexec: the wheel's or PY's
export LD_LIBRARY_PATH=/tmp/mpi/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}  # libmpi for mpi4py
if [ "$EMULATED" = 1 ]; then
  real=$("$PY" -c 'import importlib.util as u; s = u.find_spec("cupy"); print(s.origin if s else "")' \
    2>/dev/null)
  case $real in
    "" | "$REPO"/tests/_fake_cupy/*) export PYTHONPATH=$REPO/tests/_fake_cupy:$PYTHONPATH ;;
    *)
      echo "PORTANET_TEST_CUPY=emulated, but a real CuPy is installed ($real): the stand-in" \
        "never shadows it; run without PORTANET_TEST_CUPY" | tee -a "$SUMMARY"
      FAILED=1
      finish
      ;;
  esac
fi
phase imports 60 bash "$SELF" --phase imports
grep 'MISSING' "$LOG" | sed 's/^/  /' >>"$SUMMARY"

# --- 2. CuPy computes on a GPU, or nothing else is worth the machine's minutes -------
phase device 60 bash "$SELF" --phase device
if grep -q '^CUPY CANNOT COMPUTE ON A GPU' "$LOG"; then
  grep -E '^(nvidia-smi|CUPY CANNOT COMPUTE ON A GPU)' "$LOG" | sed 's/^/  /' >>"$SUMMARY"
  FAILED=1
  finish
fi
grep -E '^(nvidia-smi|torch .*NOT available|torch:)' "$LOG" | sed 's/^/  /' >>"$SUMMARY"

# --- 3. the machine and the versions ------------------------------------------------
phase info 60 bash "$SELF" --phase info

# --- 4. DLPack between torch CUDA and CuPy: shared memory, not a host copy ----------
if [ "$EMULATED" = 1 ]; then
  skipped interop "needs a real GPU (torch CUDA tensors): not run in a rehearsal"
else
  phase interop "${INTEROP_S:-60}" "$PY" bench/gpu_interop.py
  grep '^interop:' "$LOG" | sed 's/^/  /' >>"$SUMMARY"
fi

# --- 5. data-parallel training on the GPU: NCCL on one rank, two ranks via the host ---
if ! "$PY" -c "import mpi4py" >/dev/null 2>&1 || ! command -v mpiexec >/dev/null 2>&1; then
  skipped nccl "mpi4py or mpiexec missing: fetch the mpi4py and mpich wheels (fetch_gpu_wheels.sh)"
  skipped staged "mpi4py or mpiexec missing"
  FAILED=1
else
  phase nccl "${NCCL_S:-60}" env OMP_NUM_THREADS=1 "$PY" bench/gpu_distributed.py nccl
  phase staged "${STAGED_S:-90}" env OMP_NUM_THREADS=1 mpiexec -n 2 "$PY" bench/gpu_distributed.py staged
fi
grep -E '^(nccl|staged): ' "$LOG" | sed 's/^/  /' >>"$SUMMARY"

# --- 6. the test suite on CuPy --------------------------------------------------------
PYTEST_EXTRA=(-p no:cacheprovider --durations=25 --junitxml="$DEST/junit.xml")
if "$PY" -c "import pytest_timeout" >/dev/null 2>&1; then
  PYTEST_EXTRA+=(--timeout=120)  # one hung test must not eat the whole phase
fi
# shellcheck disable=SC2086
phase tests "${TESTS_S:-240}" env PORTANET_TEST_BACKEND=cupy PORTANET_TEST_REQUIRE_BACKEND=1 \
  JAX_ENABLE_X64=1 "$PY" -m pytest -q "${PYTEST_EXTRA[@]}" ${PYTEST_ARGS:-} tests
grep -E '(passed|failed|error|no tests ran)' "$LOG" | tail -n 1 | sed 's/^/  pytest: /' >>"$SUMMARY"
grep -E '^ERROR: PORTANET_TEST_REQUIRE_BACKEND' "$LOG" | tail -n 1 | sed 's/^/  /' >>"$SUMMARY"

# --- 7. the GPU training-step benchmark ---------------------------------------------
# Rounds go round-robin over all configs, and the script writes what it has on
# SIGTERM, so a run cut short by its limit still leaves every config measured once.
frameworks=${BENCH_FRAMEWORKS:-portanet-cupy,torch}
configs=${BENCH_CONFIGS:-all}
if [ "$EMULATED" = 1 ]; then  # no torch CUDA; the stand-in's timings are NumPy's
  frameworks=${BENCH_FRAMEWORKS:-portanet-cupy}
  configs=${BENCH_CONFIGS:-tiny,mnist}
fi
# shellcheck disable=SC2086
phase bench "${BENCH_S:-150}" "$PY" bench/train_step.py --device cuda \
  --frameworks "$frameworks" --configs "$configs" --dtypes float32 \
  --rounds 2 --budget 0.5 --out "$DEST/bench" ${BENCH_ARGS:-}

# --- 8. backend agreement on the GPU, written row by row ----------------------------
agreement_args=${AGREEMENT_ARGS:-"--device cuda --write --out $DEST/agreement"}
# shellcheck disable=SC2086
phase agreement "${AGREEMENT_S:-90}" "$PY" bench/agreement.py $agreement_args

# --- the end ------------------------------------------------------------------------
# The device tool brings back at most 8 files: pack the agreement outputs if too many.
if [ "$(find "$DEST" -type f | wc -l)" -gt 8 ] && [ -d "$DEST/agreement" ]; then
  tar -C "$DEST" -czf "$DEST/agreement.tar.gz" agreement && rm -rf "$DEST/agreement"
fi
finish
