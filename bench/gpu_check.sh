#!/usr/bin/env bash
# GPU check of the model and the training engine, with torch alone (Ray and MLflow are not needed;
# DeepSpeed ZeRO-0/2/3 runs if `import deepspeed` works, or if bench/wheels/ holds the wheels that
# bench/gpu_wheels.sh fetches, and is reported skipped otherwise).
#
# For Hi-IR-B/L/XL (b_x2_conv3, l_x3_conv1, xl_x2) at batch 16 (halved until it fits), LQ patch 64, bf16:
#   engine   our `hiir.platform.train.engine` DDP engine (world 1: no wrapper; bf16 autocast, fp32 master
#            weights, grad clipping, AdamW + LambdaLR) driven like `train_loop_per_worker` drives it:
#            forward -> .float() -> L1 -> all_ranks_finite (host sync) -> backward -> step (float(norm))
#            -> loss.item(); the EMA is timed apart. Step time, MFU, peak memory.
#   bare     the same model, autocast bf16 + L1 + backward + clip_grad_norm_ + fused AdamW, no host sync:
#            what the engine costs over plain torch on a GPU.
#   ema      one `hiir.platform.train.ema.EMA.update` (fp32 shadow on the device, one foreach lerp), and its
#            share of a step.
#   eval     validation's path, `hiir.platform.evaluation.evaluate.restore_array` (fp32, on the device) of one LQ
#            image 4 patches wide: whole, then in tiles 2 patches wide overlapping by 1; time, peak memory.
#   sdpa     which SDPA kernels take the model's own attention calls (bf16, additive position bias;
#            q/k 15 wide for B/L) and how fast, as they are and with q/k/v zero-padded to multiples of
#            16: whether padding the heads would let a fused kernel in (it did not pay on CPU).
#   zero     if deepspeed imports: our DeepSpeed engine at ZeRO stage 0, 2 and 3 (bf16), one GPU.
#   compile  `engine.compile: true` (torch.compile of the training forward) on the DDP engine, for the
#            first preset (--compile-presets): the first step (compiling) and the steady step, its MFU
#            and its speed-up over the eager engine. Skipped on the CPU dry run unless --compile.
# MFU = FLOPs of a step (hiir.models.summary.model_flops(model, shape, backward=True), counted on
# the meta device) / step time / the GPU's dense bf16 peak (table below, or --peak-tflops).
# Synthetic data on the device (the Parquet reader needs pyarrow; its cost is measured on CPU in
# bench/train_overhead.py).
#
# Usage, from the repository root (needs python3 with torch; einops and DeepSpeed are taken from the
# environment, else installed from bench/wheels/ into a temporary dir; einops also from a carried
# .venv/lib/python3*/site-packages/einops):
#   bash bench/gpu_wheels.sh                    # here, once: the wheels the lent GPU image lacks
#   bash bench/gpu_check.sh                     # there, carrying bench/wheels; about 3-5 minutes on an H100/H200
#   bash bench/gpu_check.sh --presets b_x2_conv3 --no-zero --no-compile   # the quickest
#   bash bench/gpu_check.sh --cpu-dry-run       # the whole Python path on CPU with a tiny preset
# Results: $OUT/gpu_check.{json,md} (or bench/out/ when $OUT is unset). No GPU: one line
# "no CUDA GPU available: ..." and exit status 2.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x "$REPO/.venv/bin/python" ]] && "$REPO/.venv/bin/python" -c "import torch" 2>/dev/null; then
    PYTHON="$REPO/.venv/bin/python"
  else
    PYTHON="$(command -v python3 || command -v python || true)"
  fi
fi
if [[ -z "$PYTHON" ]]; then
  echo "no CUDA GPU available: no python interpreter found" >&2
  exit 2
fi
if ! "$PYTHON" -c "import torch" 2>/dev/null; then
  echo "no CUDA GPU available: torch is not importable by $PYTHON" >&2
  exit 2
fi
if [[ " $* " != *" --cpu-dry-run "* ]]; then  # fail fast, before anything else is checked
  if ! why="$("$PYTHON" -c "
import os, shutil, torch
if not torch.cuda.is_available():
    print(f'torch {torch.__version__} (built with CUDA {torch.version.cuda}) sees {torch.cuda.device_count()} devices, '
          f'{\"nvidia-smi found\" if shutil.which(\"nvidia-smi\") else \"no nvidia-smi\"}, '
          f'CUDA_VISIBLE_DEVICES={os.environ.get(\"CUDA_VISIBLE_DEVICES\")!r}')
    raise SystemExit(2)
" 2>&1)"; then
    echo "no CUDA GPU available: ${why##*$'\n'}" >&2
    exit 2
  fi
fi

# hiir.models / hiir.platform without installing: a shim dir of symlinks (never the repo root
# itself on sys.path, where platform/ would shadow the standard library).
SHIM="$(mktemp -d "${TMPDIR:-/tmp}/hiir-shim.XXXXXX")"
trap 'rm -rf "$SHIM"' EXIT
mkdir -p "$SHIM/hiir"
ln -s "$REPO/models" "$SHIM/hiir/models"
ln -s "$REPO/platform" "$SHIM/hiir/platform"
ln -s "$REPO/data_prep" "$SHIM/hiir/data_prep"
export PYTHONPATH="$SHIM:$SHIM/site${PYTHONPATH:+:$PYTHONPATH}"
if ! "$PYTHON" -c "import deepspeed, einops" 2>/dev/null && compgen -G "$REPO/bench/wheels/*.whl" >/dev/null; then
  echo "gpu_check: installing $(cd "$REPO/bench/wheels" && echo *.whl) into a temporary dir" >&2
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --disable-pip-version-check \
    --target "$SHIM/site" "$REPO"/bench/wheels/*.whl \
    || echo "gpu_check: bench/wheels/ did not install with $PYTHON (fetched for another Python?);" \
            "whatever is still missing is reported below" >&2
fi
if ! "$PYTHON" -c "import einops" 2>/dev/null; then
  for cand in "${HIIR_EINOPS_DIR:-}" "$REPO"/.venv/lib/python3*/site-packages/einops; do
    if [[ -n "$cand" && -f "$cand/__init__.py" ]]; then ln -s "$cand" "$SHIM/einops"; break; fi
  done
fi
if ! "$PYTHON" -c "import einops" 2>/dev/null; then
  echo "gpu_check: einops is missing; run bench/gpu_wheels.sh and carry bench/wheels, or pip install einops" >&2
  exit 3
fi
OUTDIR="${OUT:-$REPO/bench/out}"
mkdir -p "$OUTDIR"
OUTDIR="$(cd "$OUTDIR" && pwd)"
export HIIR_GPU_CHECK_OUT="$OUTDIR"
# On a CPU dry run DeepSpeed needs its CPU accelerator and a cached JIT dir.
if [[ " $* " == *" --cpu-dry-run "* ]]; then
  export DS_ACCELERATOR="${DS_ACCELERATOR:-cpu}"
  export TORCH_EXTENSIONS_DIR="${TORCH_EXTENSIONS_DIR:-$REPO/.cache/torch_extensions}"
fi
cd "$SHIM"  # nothing of the repo on the implicit '' sys.path entry either
# The check itself is bench/gpu_check.py; this wrapper only finds its Python and puts hiir on its path.

"$PYTHON" "$REPO/bench/gpu_check.py" "$@"
