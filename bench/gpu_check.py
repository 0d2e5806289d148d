"""GPU check of the model and the training engine, with torch alone; run through `bash bench/gpu_check.sh`,
which finds a Python with torch, fails fast without a GPU, puts `hiir` on the path through a shim of
symlinks and installs what bench/wheels/ holds. Its header says what each case measures and how to run it.

Results: `$HIIR_GPU_CHECK_OUT/gpu_check.{json,md}` (the wrapper sets it to $OUT, or bench/out/).
Exit status 1 when every preset failed, else 0.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import platform as _stdlib_platform  # must be the standard library's, not the repo's platform/
import resource
import shutil
import socket
import sys
import time
import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from hiir.data_prep.files import write_atomic
from hiir.models import build
from hiir.models.summary import model_flops
from hiir.platform.config import load_config
from hiir.platform.evaluation.evaluate import restore_array
from hiir.platform.train.ema import EMA
from hiir.platform.train.engine import all_ranks_finite, make_engine

# dense bf16 peak, TFLOP/s (no sparsity), by a substring of torch.cuda.get_device_name()
PEAK_BF16 = [("GH200", 989), ("H200", 989), ("H100 PCIe", 756), ("H100", 989), ("H800", 989), ("B200", 2250),
             ("A100", 312), ("A800", 312), ("L40S", 362), ("L40", 181), ("L4", 121), ("A10G", 70), ("A10", 125),
             ("RTX 4090", 165), ("RTX 3090", 71), ("A6000", 155)]
SDPA_BACKENDS = ("FLASH_ATTENTION", "EFFICIENT_ATTENTION", "CUDNN_ATTENTION", "MATH")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
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
                    help="time engine.compile (default: on a GPU; off on the CPU dry run, where compiling takes "
                         "minutes)")
    ap.add_argument("--compile-presets", default=None, help="comma-separated (default: the first preset)")
    return ap.parse_args(argv)


@dataclass
class Bench:
    """What every case shares: the device, the sizes and step counts, the GPU's peak and the time budget."""

    device: torch.device
    batch0: int
    patch: int
    warmup: int
    steps: int
    peak: float | None
    budget_s: float
    t0: float

    def over_budget(self) -> bool:
        return time.time() - self.t0 > self.budget_s

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()

    def reset_mem(self) -> None:
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()

    def peak_mem_gib(self) -> float:
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated() / 2**30
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # process peak RSS (KiB -> GiB)

    def timed_steps(self, step_fn, n_warm: int, n: int) -> float:
        for _ in range(n_warm):
            step_fn()
        self.sync()
        t = time.perf_counter()
        for _ in range(n):
            step_fn()
        self.sync()
        return (time.perf_counter() - t) / n

    def mfu(self, flops: float, seconds: float) -> float | None:
        """Model FLOPs utilisation: None where the GPU's peak is unknown (and on the CPU dry run)."""
        return None if self.peak is None else flops / seconds / (self.peak * 1e12)


def is_oom(exc: BaseException) -> bool:
    return isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc).lower()


def error_text(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"


def train_config(b: Bench, preset: str, batch: int, kind: str, stage: int = 0, compile: bool = False):
    return load_config({"model": {"preset": preset}, "data": {"batch_size": batch, "lq_patch": b.patch},
                        "optim": {"lr": 2e-4, "max_steps": 1000, "warmup_steps": 10},
                        "engine": {"kind": kind, "zero_stage": stage, "precision": "bf16", "compile": compile},
                        "scaling": {"num_workers": 1, "use_gpu": b.device.type == "cuda"}})


def flops_per_step(b: Bench, model_cfg, batch: int) -> float:
    """Forward + backward FLOPs of a step, counted on the meta device."""
    with torch.device("meta"):
        meta = build(model_cfg)
    return model_flops(meta, (1, model_cfg.in_channels, b.patch, b.patch), backward=True) * batch


def batch_data(b: Bench, model_cfg, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator(device=b.device).manual_seed(0)
    s = model_cfg.scale
    lq = torch.rand(batch, model_cfg.in_channels, b.patch, b.patch, device=b.device, generator=g)
    gt = torch.rand(batch, model_cfg.in_channels, b.patch * s, b.patch * s, device=b.device, generator=g)
    return lq, gt


# ---------------------------------------------------------------- cases


def engine_case(b: Bench, preset: str, batch: int, kind: str, stage: int = 0, compile: bool = False):
    """Our engine driven like the worker drives it (EMA timed apart). With `compile`, the first step
    (which compiles) is timed on its own as `first_step_s`."""
    cfg = train_config(b, preset, batch, kind, stage, compile)
    mcfg = cfg.resolved_model
    torch.manual_seed(0)
    b.reset_mem()
    model = build(mcfg).to(b.device)
    engine = make_engine(cfg, model, b.device, 0)
    lq, gt = batch_data(b, mcfg, batch)

    def step():
        out = engine.forward(lq).float()
        loss = F.l1_loss(out, gt)
        if all_ranks_finite(loss):
            engine.backward(loss)
            engine.step()
        loss.item()

    first = b.timed_steps(step, 0, 1) if compile else None
    t = b.timed_steps(step, b.warmup, b.steps)
    return {"step_s": t, "peak_mem_gib": b.peak_mem_gib(), "first_step_s": first}, engine, mcfg


def bare_case(b: Bench, preset: str, batch: int) -> dict[str, float]:
    """The same model, autocast bf16 + L1 + backward + clip + fused AdamW, no host sync."""
    mcfg = train_config(b, preset, batch, "ddp").resolved_model
    torch.manual_seed(0)
    b.reset_mem()
    model = build(mcfg).to(b.device)
    fused = {"fused": True} if b.device.type == "cuda" else {}
    opt = torch.optim.AdamW(model.parameters(), lr=2e-4, betas=(0.9, 0.99), **fused)
    lq, gt = batch_data(b, mcfg, batch)
    amp = torch.autocast(b.device.type, dtype=torch.bfloat16)

    def step():
        with amp:
            out = model(lq)
        loss = F.l1_loss(out.float(), gt)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    return {"step_s": b.timed_steps(step, b.warmup, b.steps), "peak_mem_gib": b.peak_mem_gib()}


def ema_case(b: Bench, engine, n: int = 5) -> dict[str, float]:
    ema = EMA(engine.module, 0.999, keep=True)
    return {"ema_update_s": b.timed_steps(lambda: ema.update(engine.module), 1, n)}


def eval_case(b: Bench, engine) -> dict[str, float]:
    """Validation's path (fp32, on the device) on one LQ image 4 patches wide: whole, then in tiles."""
    model = engine.module.eval()
    m = model.pad_multiple
    g = torch.Generator().manual_seed(0)
    lq = torch.randint(0, 256, (4 * m, 4 * m, model.config.in_channels), generator=g, dtype=torch.uint8).numpy()
    res = {"eval_lq_side": 4 * m}
    for name, kw in (("whole", {}), ("tiled", {"tile": 2 * m, "overlap": m})):
        b.reset_mem()
        res[f"eval_{name}_s"] = b.timed_steps(lambda: restore_array(model, lq, **kw), 1, 3)
        res[f"eval_{name}_peak_gib"] = b.peak_mem_gib()
    model.train()
    return res


def sdpa_case(b: Bench, model, mcfg) -> list[dict]:
    """Time each SDPA backend on the first L1 and L2 calls' shapes of one forward (recorded by
    wrapping F.scaled_dot_product_attention for that forward only), as they are and zero-padded to x16."""
    seen, orig = {}, F.scaled_dot_product_attention

    def record(q, k, v, attn_mask=None, scale=None, **kw):
        key = (tuple(q.shape), tuple(v.shape), None if attn_mask is None else tuple(attn_mask.shape))
        seen.setdefault(key, scale)
        return orig(q, k, v, attn_mask=attn_mask, scale=scale, **kw)

    lq = torch.rand(1, mcfg.in_channels, b.patch, b.patch, device=b.device)
    F.scaled_dot_product_attention = record
    try:
        with torch.no_grad(), torch.autocast(b.device.type, dtype=torch.bfloat16):
            model(lq)
    finally:
        F.scaled_dot_product_attention = orig

    def pad(t: torch.Tensor, m: int) -> torch.Tensor:
        return F.pad(t, (0, -t.shape[-1] % m))

    out = []
    for (qs, vs, ms), scale in list(seen.items())[:2]:
        g = torch.Generator(device=b.device).manual_seed(0)

        def rand(shape):
            return torch.randn(shape, device=b.device, dtype=torch.bfloat16, generator=g)

        q, k, v = rand(qs), rand(qs), rand(vs)
        mask = None if ms is None else rand(ms)
        dq = qs[-1] ** -0.5 if scale is None else scale
        for layout, args in (("as is", (q, k, v)), ("padded x16", (pad(q, 16), pad(k, 16), pad(v, 16)))):
            row = {"q": list(qs), "v": list(vs), "layout": layout}
            for backend in SDPA_BACKENDS:
                try:
                    with sdpa_kernel(getattr(SDPBackend, backend)):
                        row[backend] = b.timed_steps(lambda: F.scaled_dot_product_attention(
                            *args, attn_mask=mask, scale=dq), 1, 5)
                except (RuntimeError, AttributeError) as exc:
                    row[backend] = f"refused: {str(exc).splitlines()[0][:80]}"
            out.append(row)
    return out


def with_batch(b: Bench, fn, preset: str):
    """fn(batch) at batch0, halved on OOM until it fits."""
    batch = b.batch0
    while True:
        try:
            return batch, fn(batch)
        except Exception as exc:  # noqa: BLE001 (an OOM shows as several exception types; others re-raise)
            if not is_oom(exc) or batch == 1:
                raise
            print(f"  {preset}: batch {batch} does not fit, trying {batch // 2}", flush=True)
            batch //= 2
            gc.collect()
            if b.device.type == "cuda":
                torch.cuda.empty_cache()


# ---------------------------------------------------------------- the runs


def preset_rows(b: Bench, presets: list[str], notes: list[str]) -> list[dict]:
    """Per preset: the engine (DDP, world 1), the EMA, validation's path, SDPA backends, the bare loop."""
    rows = []
    for preset in presets:
        if b.over_budget():
            notes.append(f"{preset}: skipped (time budget {b.budget_s:.0f} s spent)")
            continue
        row = {"preset": preset}
        try:
            batch, (eng, engine, mcfg) = with_batch(b, lambda n: engine_case(b, preset, n, "ddp"), preset)
            row.update(batch=batch, params_m=round(sum(p.numel() for p in engine.module.parameters()) / 1e6, 3),
                       engine_step_s=eng["step_s"], engine_peak_mem_gib=eng["peak_mem_gib"])
            row.update(ema_case(b, engine))
            row.update(eval_case(b, engine))
            row["sdpa"] = sdpa_case(b, engine.module.eval(), mcfg)
            engine.module.train()
            del engine
            bare = bare_case(b, preset, batch)
            row.update(bare_step_s=bare["step_s"], bare_peak_mem_gib=bare["peak_mem_gib"])
            flops = flops_per_step(b, mcfg, batch)
            row.update(tflop_per_step=flops / 1e12,
                       engine_mfu=b.mfu(flops, row["engine_step_s"]), bare_mfu=b.mfu(flops, row["bare_step_s"]),
                       engine_images_per_s=batch / row["engine_step_s"],
                       bare_over_engine=row["bare_step_s"] / row["engine_step_s"],
                       ema_over_step=row["ema_update_s"] / row["engine_step_s"])
        except Exception as exc:  # noqa: BLE001 (one preset's failure is its row's error; the others still run)
            row["error"] = error_text(exc)
        rows.append(row)
        print("  " + json.dumps(row), flush=True)
        b.reset_mem()
    return rows


def compile_rows(b: Bench, presets: list[str], rows: list[dict]) -> list[dict]:
    """`engine.compile: true` on the DDP engine: the first (compiling) step, the steady step, the speed-up."""
    out = []
    for preset in presets:
        crow = {"preset": preset}
        eager = next((r for r in rows if r["preset"] == preset and "error" not in r), None)
        if b.over_budget():
            crow["error"] = f"skipped (time budget {b.budget_s:.0f} s spent)"
        else:
            try:
                batch = eager["batch"] if eager else b.batch0
                eng, engine, mcfg = engine_case(b, preset, batch, "ddp", compile=True)
                del engine
                flops = flops_per_step(b, mcfg, batch)
                crow.update(batch=batch, first_step_s=eng["first_step_s"], step_s=eng["step_s"],
                            peak_mem_gib=eng["peak_mem_gib"], mfu=b.mfu(flops, eng["step_s"]),
                            speedup=eager["engine_step_s"] / eng["step_s"] if eager else None)
            except Exception as exc:  # noqa: BLE001 (a compile failure is this row's error, not the check's)
                crow["error"] = error_text(exc)
        out.append(crow)
        print("  compile " + json.dumps(crow), flush=True)
        b.reset_mem()
    return out


def zero_rows(b: Bench, presets: list[str], rows: list[dict]) -> tuple[str, list[dict]]:
    """Our DeepSpeed engine at ZeRO stage 0, 2 and 3 (bf16), one device, if deepspeed imports."""
    try:
        import deepspeed  # optional: the lent GPU image may lack it (bench/gpu_wheels.sh fetches it)
    except Exception as exc:  # noqa: BLE001 (a broken install fails in many ways; each is a skip, said why)
        return f"skipped: deepspeed is not importable ({type(exc).__name__}: {exc})", []
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", LOCAL_WORLD_SIZE="1",
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    try:
        deepspeed.init_distributed("nccl" if b.device.type == "cuda" else "gloo")
    except Exception as exc:  # noqa: BLE001 (no process group: the ZeRO cases are skipped, said why)
        return f"skipped: deepspeed.init_distributed failed ({type(exc).__name__}: {exc})", []
    out = []
    fitted = {r["preset"]: r.get("batch", b.batch0) for r in rows}
    for preset in presets:
        for stage in (0, 2, 3):
            zrow = {"preset": preset, "zero_stage": stage}
            if b.over_budget():
                zrow["error"] = f"skipped (time budget {b.budget_s:.0f} s spent)"
                out.append(zrow)
                continue
            try:
                batch = fitted.get(preset, b.batch0)
                eng, engine, mcfg = engine_case(b, preset, batch, "deepspeed", stage)
                del engine
                flops = flops_per_step(b, mcfg, batch)
                zrow.update(batch=batch, step_s=eng["step_s"], peak_mem_gib=eng["peak_mem_gib"],
                            mfu=b.mfu(flops, eng["step_s"]))
            except Exception as exc:  # noqa: BLE001 (one stage's failure is its row's error; the others still run)
                zrow["error"] = error_text(exc)
            out.append(zrow)
            print("  " + json.dumps(zrow), flush=True)
            b.reset_mem()
    torch.distributed.destroy_process_group()
    return f"deepspeed {deepspeed.__version__}", out


# ---------------------------------------------------------------- the report


def _f(v, fmt: str) -> str:
    return "-" if v is None else format(v, fmt)


def markdown(result: dict, gpu_name: str, b: Bench) -> list[str]:
    rows, compiled, zeroed = result["rows"], result["compile_rows"], result["zero_rows"]
    md = [f"# GPU check: {gpu_name}", "",
          f"torch {torch.__version__}, CUDA {torch.version.cuda}, bf16 peak {b.peak or 'unknown'} TFLOP/s; "
          f"LQ patch {b.patch}, {b.warmup} warm-up + {b.steps} timed steps; {result['time']}, {result['wall_s']} s.",
          "",
          "| preset | params M | batch | engine step s | MFU | img/s | peak GiB | bare step s | bare MFU "
          "| bare/engine | EMA update s | EMA/step |",
          "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            md.append(f"| {r['preset']} | error: {r['error']} |||||||||||")
            continue
        md.append(f"| {r['preset']} | {r['params_m']} | {r['batch']} | {r['engine_step_s']:.4f} | "
                  f"{_f(r['engine_mfu'], '.1%')} | {r['engine_images_per_s']:.1f} | {r['engine_peak_mem_gib']:.2f} | "
                  f"{r['bare_step_s']:.4f} | {_f(r['bare_mfu'], '.1%')} | {r['bare_over_engine']:.3f} | "
                  f"{r['ema_update_s']:.4f} | {r['ema_over_step']:.1%} |")
    md += ["", "Validation's path (fp32): one LQ image, whole and tiled (tile 2 patches, overlap 1).", "",
           "| preset | LQ side | whole s | whole peak GiB | tiled s | tiled peak GiB |", "|---|---|---|---|---|---|"]
    md += [f"| {r['preset']} | {r['eval_lq_side']} | {r['eval_whole_s']:.3f} | {r['eval_whole_peak_gib']:.2f} | "
           f"{r['eval_tiled_s']:.3f} | {r['eval_tiled_peak_gib']:.2f} |" for r in rows if "eval_whole_s" in r]
    md += ["", "SDPA backends on the model's own attention shapes (bf16, forward, s per call; 'refused' = kernel "
           "declined the inputs).", "", "| preset | q | v | layout | flash | mem-efficient | cuDNN | math |",
           "|---|---|---|---|---|---|---|---|"]
    md += [f"| {r['preset']} | {a['q']} | {a['v']} | {a['layout']} | "
           + " | ".join(_f(a[k], '.2e') if isinstance(a[k], float) else 'refused' for k in SDPA_BACKENDS) + " |"
           for r in rows for a in r.get("sdpa", [])]
    md += ["", f"engine.compile (torch.compile of the training forward, DDP engine, bf16): {result['compile']}", ""]
    if compiled:
        md += ["| preset | batch | first step s (compiling) | step s | MFU | eager step / this step | peak GiB |",
               "|---|---|---|---|---|---|---|"]
        for r in compiled:
            if "error" in r:
                md.append(f"| {r['preset']} | error: {r['error']} ||||||")
            else:
                md.append(f"| {r['preset']} | {r['batch']} | {r['first_step_s']:.1f} | {r['step_s']:.4f} | "
                          f"{_f(r['mfu'], '.1%')} | {_f(r['speedup'], '.2f')} | {r['peak_mem_gib']:.2f} |")
    md += ["", f"ZeRO (DeepSpeed, bf16, one device): {result['zero']}", ""]
    if zeroed:
        md += ["| preset | stage | batch | step s | MFU | peak GiB |", "|---|---|---|---|---|---|"]
        for r in zeroed:
            if "error" in r:
                md.append(f"| {r['preset']} | {r['zero_stage']} | error: {r['error']} ||||")
            else:
                md.append(f"| {r['preset']} | {r['zero_stage']} | {r['batch']} | "
                          f"{r['step_s']:.4f} | {_f(r['mfu'], '.1%')} | {r['peak_mem_gib']:.2f} |")
    return md + [f"- {n}" for n in result["notes"]]


def main(argv: list[str] | None = None) -> int:
    warnings.filterwarnings("ignore", category=FutureWarning)
    assert hasattr(_stdlib_platform, "python_version"), "the repo's platform/ shadows the standard library"
    args = parse_args(argv)
    dry = args.cpu_dry_run
    presets = (args.presets or ("tiny_x2" if dry else "b_x2_conv3,l_x3_conv1,xl_x2")).split(",")
    do_compile = args.compile if args.compile is not None else not dry
    out_dir = os.environ.get("HIIR_GPU_CHECK_OUT", "bench/out")
    t0 = time.time()
    if not dry and not torch.cuda.is_available():
        smi = "nvidia-smi found" if shutil.which("nvidia-smi") else "no nvidia-smi"
        print(f"no CUDA GPU available: torch {torch.__version__} (built with CUDA {torch.version.cuda}) sees "
              f"{torch.cuda.device_count()} devices, {smi}, "
              f"CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r}", file=sys.stderr)
        return 2
    if dry:
        device = torch.device("cpu")
        gpu_name, peak = f"CPU dry run ({os.cpu_count()} cores, {_stdlib_platform.processor() or 'cpu'})", None
    else:
        device = torch.device("cuda:0")
        gpu_name = torch.cuda.get_device_name(0)
        peak = next((v for k, v in PEAK_BF16 if k in gpu_name), None)
    b = Bench(device=device, batch0=args.batch or (2 if dry else 16), patch=args.patch or (16 if dry else 64),
              warmup=args.warmup if args.warmup is not None else (1 if dry else 3),
              steps=args.steps or (2 if dry else 10), peak=args.peak_tflops or peak, budget_s=args.budget_s, t0=t0)
    print(f"device: {gpu_name}; torch {torch.__version__}, CUDA {torch.version.cuda}; bf16 peak "
          f"{b.peak if b.peak else 'unknown'} TFLOP/s; presets {presets}, batch {b.batch0}, LQ patch {b.patch}",
          flush=True)

    notes: list[str] = []
    rows = preset_rows(b, presets, notes)
    compiled = compile_rows(b, (args.compile_presets or presets[0]).split(","), rows) if do_compile else []
    compile_status = ("on" if do_compile else
                      "skipped: CPU dry run (--compile runs it)" if dry else "skipped: --no-compile")
    zero_status, zeroed = ("skipped: --no-zero", []) if args.no_zero else zero_rows(b, presets, rows)
    print(f"ZeRO: {zero_status}", flush=True)

    result = {"device": gpu_name, "cpu_dry_run": dry, "torch": torch.__version__, "cuda": torch.version.cuda,
              "bf16_peak_tflops": b.peak, "batch_requested": b.batch0, "lq_patch": b.patch, "warmup": b.warmup,
              "steps": b.steps,
              "flops_source": "hiir.models.summary.model_flops(backward=True)",
              "rows": rows, "zero": zero_status, "zero_rows": zeroed, "notes": notes,
              "compile": compile_status, "compile_rows": compiled,
              "wall_s": round(time.time() - t0, 1), "time": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
    md = markdown(result, gpu_name, b)
    write_atomic(os.path.join(out_dir, "gpu_check.json"), json.dumps(result, indent=1))
    write_atomic(os.path.join(out_dir, "gpu_check.md"), "\n".join(md) + "\n")
    print("\n".join(md))
    print(f"written: {out_dir}/gpu_check.json, {out_dir}/gpu_check.md")
    bad = [r for r in rows if "error" in r]
    return 1 if bad and len(bad) == len(rows) else 0


if __name__ == "__main__":
    sys.exit(main())
