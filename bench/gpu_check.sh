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

"$PYTHON" - "$@" <<'PYEOF'
import argparse
import gc
import json
import os
import platform as _stdlib_platform  # must be the standard library's, not the repo's platform/
import socket
import sys
import time
import warnings

import torch
import torch.nn.functional as F

warnings.filterwarnings("ignore", category=FutureWarning)
assert hasattr(_stdlib_platform, "python_version"), "the repo's platform/ shadows the standard library"

# dense bf16 peak, TFLOP/s (no sparsity), by a substring of torch.cuda.get_device_name()
PEAK_BF16 = [("GH200", 989), ("H200", 989), ("H100 PCIe", 756), ("H100", 989), ("H800", 989), ("B200", 2250),
             ("A100", 312), ("A800", 312), ("L40S", 362), ("L40", 181), ("L4", 121), ("A10G", 70), ("A10", 125),
             ("RTX 4090", 165), ("RTX 3090", 71), ("A6000", 155)]

ap = argparse.ArgumentParser(prog="bench/gpu_check.sh")
ap.add_argument("--presets", default=None, help="comma-separated (default b_x2_conv3,l_x3_conv1,xl_x2)")
ap.add_argument("--batch", type=int, default=None, help="per step (default 16; halved until it fits)")
ap.add_argument("--patch", type=int, default=None, help="LQ patch side (default 64)")
ap.add_argument("--warmup", type=int, default=None)
ap.add_argument("--steps", type=int, default=None, help="timed steps per case")
ap.add_argument("--no-zero", action="store_true", help="skip the DeepSpeed ZeRO cases")
ap.add_argument("--peak-tflops", type=float, default=None, help="override the bf16 peak table")
ap.add_argument("--budget-s", type=float, default=330.0, help="start no new case after this many seconds")
ap.add_argument("--cpu-dry-run", action="store_true", help="run every code path on CPU with a tiny preset")
ap.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                help="time engine.compile (default: on a GPU; off on the CPU dry run, where compiling takes minutes)")
ap.add_argument("--compile-presets", default=None, help="comma-separated (default: the first preset)")
args = ap.parse_args()

dry = args.cpu_dry_run
presets = (args.presets or ("tiny_x2" if dry else "b_x2_conv3,l_x3_conv1,xl_x2")).split(",")
batch0 = args.batch or (2 if dry else 16)
patch = args.patch or (16 if dry else 64)
warmup = args.warmup if args.warmup is not None else (1 if dry else 3)
steps = args.steps or (2 if dry else 10)
do_compile = args.compile if args.compile is not None else not dry
compile_presets = (args.compile_presets or presets[0]).split(",")
out_dir = os.environ.get("HIIR_GPU_CHECK_OUT", "bench/out")
T0 = time.time()

if not dry and not torch.cuda.is_available():
    import shutil
    smi = "nvidia-smi found" if shutil.which("nvidia-smi") else "no nvidia-smi"
    print(f"no CUDA GPU available: torch {torch.__version__} (built with CUDA {torch.version.cuda}) sees "
          f"{torch.cuda.device_count()} devices, {smi}, CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r}",
          file=sys.stderr)
    sys.exit(2)

from hiir.models import build
from hiir.platform.config import load_config
from hiir.platform.train.ema import EMA
from hiir.platform.train.engine import all_ranks_finite, make_engine
from hiir.platform.evaluation.evaluate import restore_array

try:
    from hiir.models.summary import model_flops
    import inspect
    HAVE_FLOPS = "backward" in inspect.signature(model_flops).parameters
except ImportError:
    HAVE_FLOPS = False

device = torch.device("cpu") if dry else torch.device("cuda:0")
if dry:
    gpu_name, peak = f"CPU dry run ({os.cpu_count()} cores, {_stdlib_platform.processor() or 'cpu'})", None
else:
    gpu_name = torch.cuda.get_device_name(0)
    peak = next((v for k, v in PEAK_BF16 if k in gpu_name), None)
if args.peak_tflops:
    peak = args.peak_tflops
print(f"device: {gpu_name}; torch {torch.__version__}, CUDA {torch.version.cuda}; bf16 peak "
      f"{peak if peak else 'unknown'} TFLOP/s; presets {presets}, batch {batch0}, LQ patch {patch}", flush=True)


def sync():
    if device.type == "cuda":
        torch.cuda.synchronize()


def reset_mem():
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def peak_mem_gib():
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**30
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # process peak RSS (KiB -> GiB)


def is_oom(exc):
    return isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc).lower()


def train_config(preset, batch, kind, stage=0, compile=False):
    return load_config({"model": {"preset": preset}, "data": {"batch_size": batch, "lq_patch": patch},
                        "optim": {"lr": 2e-4, "max_steps": 1000, "warmup_steps": 10},
                        "engine": {"kind": kind, "zero_stage": stage, "precision": "bf16", "compile": compile},
                        "scaling": {"num_workers": 1, "use_gpu": device.type == "cuda"}})


def flops_per_step(model_cfg, batch):
    if not HAVE_FLOPS:
        return None
    with torch.device("meta"):
        meta = build(model_cfg)
    return model_flops(meta, (1, model_cfg.in_channels, patch, patch), backward=True) * batch


def batch_data(model_cfg, batch):
    g = torch.Generator(device=device).manual_seed(0)
    s = model_cfg.scale
    lq = torch.rand(batch, model_cfg.in_channels, patch, patch, device=device, generator=g)
    gt = torch.rand(batch, model_cfg.in_channels, patch * s, patch * s, device=device, generator=g)
    return lq, gt


def timed_steps(step_fn, n_warm, n):
    for _ in range(n_warm):
        step_fn()
    sync()
    t = time.perf_counter()
    for _ in range(n):
        step_fn()
    sync()
    return (time.perf_counter() - t) / n


def engine_case(preset, batch, kind, stage=0, compile=False):
    """Our engine driven like the worker drives it (EMA timed apart). With `compile`, the first step
    (which compiles) is timed on its own as `first_step_s`."""
    cfg = train_config(preset, batch, kind, stage, compile)
    mcfg = cfg.model_config()
    torch.manual_seed(0)
    reset_mem()
    model = build(mcfg).to(device)
    engine = make_engine(cfg, model, device, 0)
    lq, gt = batch_data(mcfg, batch)

    def step():
        out = engine.forward(lq).float()
        loss = F.l1_loss(out, gt)
        if all_ranks_finite(loss):
            engine.backward(loss)
            engine.step()
        loss.item()

    first = timed_steps(step, 0, 1) if compile else None
    t = timed_steps(step, warmup, steps)
    res = {"step_s": t, "peak_mem_gib": peak_mem_gib(), "first_step_s": first}
    return res, engine, mcfg


def bare_case(preset, batch):
    mcfg = train_config(preset, batch, "ddp").model_config()
    torch.manual_seed(0)
    reset_mem()
    model = build(mcfg).to(device)
    fused = {"fused": True} if device.type == "cuda" else {}
    opt = torch.optim.AdamW(model.parameters(), lr=2e-4, betas=(0.9, 0.99), **fused)
    lq, gt = batch_data(mcfg, batch)
    amp = torch.autocast(device.type, dtype=torch.bfloat16)

    def step():
        with amp:
            out = model(lq)
        loss = F.l1_loss(out.float(), gt)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    t = timed_steps(step, warmup, steps)
    res = {"step_s": t, "peak_mem_gib": peak_mem_gib()}
    del model, opt
    return res


def ema_case(engine, n=5):
    ema = EMA(engine.module, 0.999, keep=True)
    return {"ema_update_s": timed_steps(lambda: ema.update(engine.module), 1, n)}


def eval_case(engine):
    model = engine.module.eval()
    m = model.pad_multiple
    g = torch.Generator().manual_seed(0)
    lq = torch.randint(0, 256, (4 * m, 4 * m, model.config.in_channels), generator=g, dtype=torch.uint8).numpy()
    res = {"eval_lq_side": 4 * m}
    for name, kw in (("whole", {}), ("tiled", {"tile": 2 * m, "overlap": m})):
        reset_mem()
        res[f"eval_{name}_s"] = timed_steps(lambda: restore_array(model, lq, **kw), 1, 3)
        res[f"eval_{name}_peak_gib"] = peak_mem_gib()
    model.train()
    return res


def sdpa_case(model, mcfg):
    """Time each SDPA backend on the first L1 and L2 calls' shapes of one forward (recorded by
    wrapping F.scaled_dot_product_attention for that forward only)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    seen, orig = {}, F.scaled_dot_product_attention

    def record(q, k, v, attn_mask=None, scale=None, **kw):
        key = (tuple(q.shape), tuple(v.shape), None if attn_mask is None else tuple(attn_mask.shape))
        seen.setdefault(key, scale)
        return orig(q, k, v, attn_mask=attn_mask, scale=scale, **kw)

    lq = torch.rand(1, mcfg.in_channels, patch, patch, device=device)
    F.scaled_dot_product_attention = record
    try:
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16):
            model(lq)
    finally:
        F.scaled_dot_product_attention = orig
    out = []
    for (qs, vs, ms), scale in list(seen.items())[:2]:
        g = torch.Generator(device=device).manual_seed(0)
        mk = lambda shape: torch.randn(shape, device=device, dtype=torch.bfloat16, generator=g)  # noqa: E731
        q, k, v = mk(qs), mk(qs), mk(vs)
        mask = None if ms is None else mk(ms)
        pad = lambda t, m: F.pad(t, (0, -t.shape[-1] % m))  # noqa: E731
        dq = qs[-1] ** -0.5 if scale is None else scale
        for layout, args in (("as is", (q, k, v)), ("padded x16", (pad(q, 16), pad(k, 16), pad(v, 16)))):
            row = {"q": list(qs), "v": list(vs), "layout": layout}
            for backend in ("FLASH_ATTENTION", "EFFICIENT_ATTENTION", "CUDNN_ATTENTION", "MATH"):
                try:
                    with sdpa_kernel(getattr(SDPBackend, backend)):
                        row[backend] = timed_steps(lambda: F.scaled_dot_product_attention(
                            *args, attn_mask=mask, scale=dq), 1, 5)
                except (RuntimeError, AttributeError) as exc:
                    row[backend] = f"refused: {str(exc).splitlines()[0][:80]}"
            out.append(row)
    return out


def with_batch(fn, preset):
    """fn(batch) at batch0, halved on OOM until it fits."""
    batch = batch0
    while True:
        try:
            return batch, fn(batch)
        except Exception as exc:  # noqa: BLE001
            if not is_oom(exc) or batch == 1:
                raise
            print(f"  {preset}: batch {batch} does not fit, trying {batch // 2}", flush=True)
            batch //= 2
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()


def mfu(flops, seconds):
    return None if (flops is None or peak is None) else flops / seconds / (peak * 1e12)


rows, zero_rows, notes = [], [], []
for preset in presets:
    if time.time() - T0 > args.budget_s:
        notes.append(f"{preset}: skipped (time budget {args.budget_s:.0f} s spent)")
        continue
    row = {"preset": preset}
    try:
        batch, (eng, engine, mcfg) = with_batch(lambda b: engine_case(preset, b, "ddp"), preset)
        row.update(batch=batch, params_m=round(sum(p.numel() for p in engine.module.parameters()) / 1e6, 3),
                   engine_step_s=eng["step_s"], engine_peak_mem_gib=eng["peak_mem_gib"])
        row.update(ema_case(engine))
        row.update(eval_case(engine))
        row["sdpa"] = sdpa_case(engine.module.eval(), mcfg)
        engine.module.train()
        del engine
        bare = bare_case(preset, batch)
        row.update(bare_step_s=bare["step_s"], bare_peak_mem_gib=bare["peak_mem_gib"])
        flops = flops_per_step(mcfg, batch)
        row.update(tflop_per_step=None if flops is None else flops / 1e12,
                   engine_mfu=mfu(flops, row["engine_step_s"]), bare_mfu=mfu(flops, row["bare_step_s"]),
                   engine_images_per_s=batch / row["engine_step_s"],
                   bare_over_engine=row["bare_step_s"] / row["engine_step_s"],
                   ema_over_step=row["ema_update_s"] / row["engine_step_s"])
    except Exception as exc:  # noqa: BLE001
        row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"
    rows.append(row)
    print("  " + json.dumps(row), flush=True)
    reset_mem()

# ---------------------------------------------------------------- torch.compile (engine.compile)
compile_rows = []
for preset in (compile_presets if do_compile else []):
    crow = {"preset": preset}
    eager = next((r for r in rows if r["preset"] == preset and "error" not in r), None)
    if time.time() - T0 > args.budget_s:
        crow["error"] = f"skipped (time budget {args.budget_s:.0f} s spent)"
    else:
        try:
            batch = eager["batch"] if eager else batch0
            eng, engine, mcfg = engine_case(preset, batch, "ddp", compile=True)
            del engine
            flops = flops_per_step(mcfg, batch)
            crow.update(batch=batch, first_step_s=eng["first_step_s"], step_s=eng["step_s"],
                        peak_mem_gib=eng["peak_mem_gib"], mfu=mfu(flops, eng["step_s"]),
                        speedup=eager["engine_step_s"] / eng["step_s"] if eager else None)
        except Exception as exc:  # noqa: BLE001
            crow["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"
    compile_rows.append(crow)
    print("  compile " + json.dumps(crow), flush=True)
    reset_mem()
compile_status = ("on" if do_compile else
                  "skipped: CPU dry run (--compile runs it)" if dry else "skipped: --no-compile")

# ---------------------------------------------------------------- DeepSpeed ZeRO (optional)
zero_status = "skipped: --no-zero"
if not args.no_zero:
    try:
        import deepspeed  # noqa: F401
    except Exception as exc:  # noqa: BLE001
        zero_status = f"skipped: deepspeed is not importable ({type(exc).__name__}: {exc})"
    else:
        zero_status = f"deepspeed {deepspeed.__version__}"
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", LOCAL_WORLD_SIZE="1",
                          MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        try:
            deepspeed.init_distributed("nccl" if device.type == "cuda" else "gloo")
        except Exception as exc:  # noqa: BLE001
            zero_status = f"skipped: deepspeed.init_distributed failed ({type(exc).__name__}: {exc})"
        else:
            fitted = {r["preset"]: r.get("batch", batch0) for r in rows}
            for preset in presets:
                for stage in (0, 2, 3):
                    zrow = {"preset": preset, "zero_stage": stage}
                    if time.time() - T0 > args.budget_s:
                        zrow["error"] = f"skipped (time budget {args.budget_s:.0f} s spent)"
                        zero_rows.append(zrow)
                        continue
                    try:
                        batch = fitted.get(preset, batch0)
                        eng, engine, mcfg = engine_case(preset, batch, "deepspeed", stage)
                        del engine
                        flops = flops_per_step(mcfg, batch)
                        zrow.update(batch=batch, step_s=eng["step_s"], peak_mem_gib=eng["peak_mem_gib"],
                                    mfu=mfu(flops, eng["step_s"]))
                    except Exception as exc:  # noqa: BLE001
                        zrow["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"
                    zero_rows.append(zrow)
                    print("  " + json.dumps(zrow), flush=True)
                    reset_mem()
            torch.distributed.destroy_process_group()
print(f"ZeRO: {zero_status}", flush=True)

# ---------------------------------------------------------------- write
result = {"device": gpu_name, "cpu_dry_run": dry, "torch": torch.__version__, "cuda": torch.version.cuda,
          "bf16_peak_tflops": peak, "batch_requested": batch0, "lq_patch": patch, "warmup": warmup, "steps": steps,
          "flops_source": "hiir.models.summary.model_flops(backward=True)" if HAVE_FLOPS else "unavailable",
          "rows": rows, "zero": zero_status, "zero_rows": zero_rows, "notes": notes,
          "compile": compile_status, "compile_rows": compile_rows,
          "wall_s": round(time.time() - T0, 1), "time": time.strftime("%Y-%m-%d %H:%M:%S %Z")}


def f(v, fmt):
    return "-" if v is None else format(v, fmt)


md = [f"# GPU check: {gpu_name}", "",
      f"torch {torch.__version__}, CUDA {torch.version.cuda}, bf16 peak {peak or 'unknown'} TFLOP/s; LQ patch {patch}, "
      f"{warmup} warm-up + {steps} timed steps; {result['time']}, {result['wall_s']} s.", "",
      "| preset | params M | batch | engine step s | MFU | img/s | peak GiB | bare step s | bare MFU | bare/engine | "
      "EMA update s | EMA/step |",
      "|---|---|---|---|---|---|---|---|---|---|---|---|"]
for r in rows:
    if "error" in r:
        md.append(f"| {r['preset']} | error: {r['error']} |||||||||||")
        continue
    md.append(f"| {r['preset']} | {r['params_m']} | {r['batch']} | {r['engine_step_s']:.4f} | {f(r['engine_mfu'], '.1%')} | "
              f"{r['engine_images_per_s']:.1f} | {r['engine_peak_mem_gib']:.2f} | {r['bare_step_s']:.4f} | "
              f"{f(r['bare_mfu'], '.1%')} | {r['bare_over_engine']:.3f} | {r['ema_update_s']:.4f} | "
              f"{r['ema_over_step']:.1%} |")
md += ["", "Validation's path (fp32): one LQ image, whole and tiled (tile 2 patches, overlap 1).", "",
       "| preset | LQ side | whole s | whole peak GiB | tiled s | tiled peak GiB |", "|---|---|---|---|---|---|"]
md += [f"| {r['preset']} | {r['eval_lq_side']} | {r['eval_whole_s']:.3f} | {r['eval_whole_peak_gib']:.2f} | "
       f"{r['eval_tiled_s']:.3f} | {r['eval_tiled_peak_gib']:.2f} |" for r in rows if "eval_whole_s" in r]
md += ["", "SDPA backends on the model's own attention shapes (bf16, forward, s per call; 'refused' = kernel "
       "declined the inputs).", "", "| preset | q | v | layout | flash | mem-efficient | cuDNN | math |",
       "|---|---|---|---|---|---|---|---|"]
md += [f"| {r['preset']} | {a['q']} | {a['v']} | {a['layout']} | "
       + " | ".join(f(a[b], '.2e') if isinstance(a[b], float) else 'refused'
                    for b in ("FLASH_ATTENTION", "EFFICIENT_ATTENTION", "CUDNN_ATTENTION", "MATH")) + " |"
       for r in rows for a in r.get("sdpa", [])]
md += ["", f"engine.compile (torch.compile of the training forward, DDP engine, bf16): {compile_status}", ""]
if compile_rows:
    md += ["| preset | batch | first step s (compiling) | step s | MFU | eager step / this step | peak GiB |",
           "|---|---|---|---|---|---|---|"]
    for r in compile_rows:
        if "error" in r:
            md.append(f"| {r['preset']} | error: {r['error']} ||||||")
        else:
            md.append(f"| {r['preset']} | {r['batch']} | {r['first_step_s']:.1f} | {r['step_s']:.4f} | "
                      f"{f(r['mfu'], '.1%')} | {f(r['speedup'], '.2f')} | {r['peak_mem_gib']:.2f} |")
md += ["", f"ZeRO (DeepSpeed, bf16, one device): {zero_status}", ""]
if zero_rows:
    md += ["| preset | stage | batch | step s | MFU | peak GiB |", "|---|---|---|---|---|---|"]
    for r in zero_rows:
        if "error" in r:
            md.append(f"| {r['preset']} | {r['zero_stage']} | error: {r['error']} ||||")
        else:
            md.append(f"| {r['preset']} | {r['zero_stage']} | {r['batch']} | "
                      f"{r['step_s']:.4f} | {f(r['mfu'], '.1%')} | {r['peak_mem_gib']:.2f} |")
md += [f"- {n}" for n in notes]
os.makedirs(out_dir, exist_ok=True)
with open(os.path.join(out_dir, "gpu_check.json"), "w") as fh:
    json.dump(result, fh, indent=1)
with open(os.path.join(out_dir, "gpu_check.md"), "w") as fh:
    fh.write("\n".join(md) + "\n")
print("\n".join(md))
print(f"written: {out_dir}/gpu_check.json, {out_dir}/gpu_check.md")
bad = [r for r in rows if "error" in r]
sys.exit(1 if bad and len(bad) == len(rows) else 0)
PYEOF
