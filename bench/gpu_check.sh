#!/usr/bin/env bash
# One GPU check for a lent NVIDIA machine (an H200 with CuPy, NumPy, PyTorch and
# pytest, but without array-api-compat or array-api-strict): install the carried
# wheels, record the GPU and versions, run the test suite on CuPy, then the GPU
# training-step benchmark and, if present, bench/agreement.py.
#
#   bash bench/fetch_gpu_wheels.sh           # here, once: fills .whl/ (git-ignored)
#   bash bench/gpu_check.sh [DEST]           # there, with carry: [".whl"]
#
# Everything goes to DEST (default: $OUT, else bench/results/gpu-check): summary.txt
# (one line per phase: exit code and seconds), gpu_check.log (all output) and
# bench/ (results.json, results.md, train_step.png). The device tool returns at
# most 8 files, so keep it to that.
#
# Each phase runs under `timeout`, within a total of TOTAL_S seconds (default 450,
# under 8 minutes): a phase gets its own limit or what is left, whichever is
# smaller. A failing phase does not stop the next one; the script exits 1 at the
# end if any phase failed or was not run. Exit codes 124/137 in the summary mean
# the phase ran out of time.
#
# Knobs (environment): TOTAL_S, TESTS_S (240), BENCH_S (150), AGREEMENT_S (45),
# BENCH_FRAMEWORKS (portanet-cupy,torch), BENCH_ARGS (extra train_step.py options),
# AGREEMENT_ARGS (options for bench/agreement.py; default: --device cuda / --out
# when its --help lists them), PYTHON (python3).
set -u
cd "$(dirname "$0")/.." || exit 2
REPO=$PWD
SELF=$REPO/bench/gpu_check.sh
PY=${PYTHON:-python3}
TOTAL_S=${TOTAL_S:-450}

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
  echo "installing into /tmp/site: ${want[*]}"
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site "${want[@]}"
}

check_imports() {
  local rc=0 mod
  for mod in numpy cupy torch array_api_compat array_api_strict tqdm hypothesis pytest portanet; do
    if "$PY" -c "import $mod" >/dev/null 2>&1; then
      echo "import $mod: ok"
    else
      case $mod in
        numpy | cupy | torch | pytest) echo "import $mod: MISSING (the machine's image should have it)" ;;
        portanet) echo "import $mod: MISSING (run from the repository root; PYTHONPATH=$PYTHONPATH)" ;;
        *) echo "import $mod: MISSING (fetch its wheel here with bench/fetch_gpu_wheels.sh and pass carry: [\".whl\"])" ;;
      esac
      rc=1
    fi
  done
  return $rc
}


info() {
  nvidia-smi
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
  "$PY" - <<'PYEOF'
import platform, sys
print("python", sys.version.split()[0], sys.executable, platform.platform())
for name in ("numpy", "cupy", "torch", "jax", "array_api_compat", "array_api_strict",
             "hypothesis", "pytest"):
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
}
# The phases above run as `bash gpu_check.sh --phase NAME`, each under its own limit.
if [ "${1:-}" = "--phase" ]; then
  case ${2:-} in
    install) install_wheels ;;
    imports) check_imports ;;
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
printf 'gpu_check %s  repo %s  git %s\n' "$(date -u +%FT%TZ)" "$REPO" \
  "$(git rev-parse --short HEAD 2>/dev/null || echo '?')" >"$SUMMARY"

# --- 1. install what the machine lacks from the carried wheels ---------------------
phase install 60 bash "$SELF" --phase install
export PYTHONPATH=/tmp/site:$REPO${PYTHONPATH:+:$PYTHONPATH}
phase imports 60 bash "$SELF" --phase imports
grep 'MISSING' "$LOG" | sed 's/^/  /' >>"$SUMMARY"

# --- 2. the machine and the versions ------------------------------------------------
phase info 60 bash "$SELF" --phase info

# --- 3. the test suite on CuPy ------------------------------------------------------
PYTEST_EXTRA=()
if "$PY" -c "import pytest_timeout" >/dev/null 2>&1; then
  PYTEST_EXTRA=(--timeout=120)  # one hung test must not eat the whole phase
fi
phase tests "${TESTS_S:-240}" env PORTANET_TEST_BACKEND=cupy JAX_ENABLE_X64=1 \
  "$PY" -m pytest -q -p no:cacheprovider "${PYTEST_EXTRA[@]}" tests
tail -n 3 "$LOG" | sed 's/^/  pytest: /' >>"$SUMMARY"

# --- 4. the GPU training-step benchmark ---------------------------------------------
# Rounds go round-robin over all configs, and the script writes what it has on
# SIGTERM, so a run cut short by its limit still leaves every config measured once.
# shellcheck disable=SC2086
phase bench "${BENCH_S:-150}" "$PY" bench/train_step.py --device cuda \
  --frameworks "${BENCH_FRAMEWORKS:-portanet-cupy,torch}" --configs all --dtypes float32 \
  --rounds 2 --budget 0.5 --out "$DEST/bench" ${BENCH_ARGS:-}

# --- 5. backend agreement, if that script exists ------------------------------------
if [ -f bench/agreement.py ]; then
  if [ -z "${AGREEMENT_ARGS+x}" ]; then
    help=$(timeout 60 "$PY" bench/agreement.py --help 2>&1 || true)
    AGREEMENT_ARGS=""
    case $help in *--device*) AGREEMENT_ARGS="$AGREEMENT_ARGS --device cuda" ;; esac
    case $help in *--out*) AGREEMENT_ARGS="$AGREEMENT_ARGS --out $DEST/agreement" ;; esac
  fi
  # shellcheck disable=SC2086
  phase agreement "${AGREEMENT_S:-45}" "$PY" bench/agreement.py $AGREEMENT_ARGS
else
  printf '%-10s rc=%-4s %5ss  bench/agreement.py not present\n' agreement - 0 >>"$SUMMARY"
fi

# --- the end ------------------------------------------------------------------------
# The device tool brings back at most 8 files: pack the agreement outputs if too many.
if [ "$(find "$DEST" -type f | wc -l)" -gt 8 ] && [ -d "$DEST/agreement" ]; then
  tar -C "$DEST" -czf "$DEST/agreement.tar.gz" agreement && rm -rf "$DEST/agreement"
fi
printf 'total %ss of %ss; %s\n' "$(($(date +%s) - START))" "$TOTAL_S" \
  "$([ "$FAILED" = 0 ] && echo 'every phase passed' || echo 'SOME PHASE FAILED')" >>"$SUMMARY"
cat "$SUMMARY"
exit "$FAILED"
