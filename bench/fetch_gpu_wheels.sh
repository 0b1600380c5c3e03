#!/usr/bin/env bash
# Download, here, the wheels that the lent GPU machine lacks, into .whl/ at the
# repository root. That machine reaches no package index, so bench/gpu_check.sh
# installs these from the carried folder (run it with carry: [".whl"]).
#
# The machine's python3 is CPython 3.12 on x86-64 Linux: the pip command below
# is the one /work/.library/device/README.md gives for it. --no-deps fetches
# none of a package's needs, so each one that the machine lacks is named here.
# .whl/ is git-ignored (/.whl/ in .gitignore): the wheels are never committed.
#
# Usage: bash bench/fetch_gpu_wheels.sh      (PYTHON=... to choose the pip)
# Versions: the ones the dev environment tests with; override with e.g.
#   HYPOTHESIS_VERSION=6.170.17 bash bench/fetch_gpu_wheels.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
DEST=.whl

# name==version; the GPU machine's image has numpy, cupy, torch and pytest (and, as
# last read, tqdm, hypothesis, attrs and sortedcontainers: gpu_check.sh installs only
# the carried wheels whose distribution is missing there).
WHEELS=(
  "array-api-compat==${ARRAY_API_COMPAT_VERSION:-1.16.0}"
  "array-api-extra==${ARRAY_API_EXTRA_VERSION:-0.11.5}"     # portanet's pad and at
  "array-api-strict==${ARRAY_API_STRICT_VERSION:-2.6.1}"
  "tqdm==${TQDM_VERSION:-4.70.1}"
  "hypothesis==${HYPOTHESIS_VERSION:-6.170.17}"
  "attrs==${ATTRS_VERSION:-26.1.0}"                       # hypothesis needs it
  "sortedcontainers==${SORTEDCONTAINERS_VERSION:-2.4.0}"  # hypothesis needs it
  "mpi4py==${MPI4PY_VERSION:-4.1.2}"                      # the nccl and staged phases
  "mpich==${MPICH_VERSION:-5.0.2}"                        # libmpi and mpiexec (13 MB)
)

mkdir -p "$DEST"
for spec in "${WHEELS[@]}"; do
  name=${spec%%==*}
  # One version of each package only: two in .whl/ stop the whole install there.
  rm -f "$DEST/${name//-/_}"-*.whl "$DEST/$name"-*.whl
  "$PY" -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform manylinux1_x86_64 -d "$DEST" "$spec"
done

echo
echo "Wheels in $DEST/ and what each one requires (skip the 'extra' lines):"
for w in "$DEST"/*.whl; do
  echo "  $(basename "$w")"
  unzip -p "$w" '*.dist-info/METADATA' | grep '^Requires-Dist' | grep -v 'extra ==' \
    | sed 's/^/      /' || true
done
du -sh "$DEST"
