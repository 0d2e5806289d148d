#!/usr/bin/env bash
# Fetch, here, the wheels that bench/gpu_check.sh installs on a GPU machine that cannot reach PyPI,
# so that its DeepSpeed ZeRO-0/2/3 cases run there instead of being reported skipped.
#
# The lent H200 image (Python 3.12) already has torch, einops, numpy, msgpack, ninja, packaging,
# psutil, py-cpuinfo, tqdm and safetensors; what DeepSpeed still needs is fetched, at the versions
# this project's .venv pins, so the GPU runs the same DeepSpeed the tests run:
#   deepspeed (an sdist on PyPI: built here into a pure-Python wheel), hjson, pydantic,
#   pydantic-core (compiled: fetched for the target Python), annotated-types, typing-inspection,
#   typing-extensions.
#
# Usage, from the repository root:
#   bash bench/gpu_wheels.sh                       # for Python 3.12 (the H200 image)
#   bash bench/gpu_wheels.sh --python-version 3.11 # e.g. to try the install path here
# Then, on the device: carry ["bench/wheels"], command `bash bench/gpu_check.sh`.
# bench/wheels/ is git-ignored (about 5 MB).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYVER=3.12
[[ "${1:-}" == "--python-version" && -n "${2:-}" ]] && PYVER="$2"
PIP=("$REPO/.venv/bin/python" -m pip)
if ! "${PIP[@]}" --version >/dev/null 2>&1; then
  echo "gpu_wheels: $REPO/.venv is missing; run 'make test' or 'make demo' once first" >&2
  exit 2
fi
DEST="$REPO/bench/wheels"
STAGE="$(mktemp -d "${TMPDIR:-/tmp}/hiir-wheels.XXXXXX")"
trap 'rm -rf "$STAGE"' EXIT

pinned() {  # the .venv's version of a distribution, so the GPU runs what the tests ran
  "$REPO/.venv/bin/python" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$1"
}

spec=()
for dist in hjson pydantic pydantic-core annotated-types typing-inspection typing-extensions; do
  spec+=("$dist==$(pinned "$dist")")
done
echo "gpu_wheels: fetching ${spec[*]} for CPython $PYVER (manylinux x86-64)"
"${PIP[@]}" download -q --no-deps --only-binary=:all: --python-version "$PYVER" --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 -d "$STAGE" "${spec[@]}"

ds="deepspeed==$(pinned deepspeed)"
echo "gpu_wheels: building $ds (no ops prebuilt: the engine needs none with torch's AdamW)"
DS_BUILD_OPS=0 "${PIP[@]}" wheel -q --no-deps --no-build-isolation -w "$STAGE" "$ds"

rm -rf "$DEST"
mkdir -p "$DEST"
mv "$STAGE"/*.whl "$DEST"/
ls -1 "$DEST"
du -sh "$DEST"
