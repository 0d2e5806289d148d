"""What logging a run's weights as an MLflow model adds to the end of a trial.

A trial's end (`hiir.platform.train.fit._finish_mlflow_run`) runs once per trial process, so each
measurement is a fresh child process, as a Tune trial is: it opens the run (a trial's params and metrics,
already in a SQLite store), exports a demo-size model with the workers' own export code, then times the
end of the run, one of:

  model   what runs do now: replay the spool, log the models-from-code pyfunc (signature, pinned
          requirements, the safetensors weights and model.json as artifacts), link it to the run, end the run
  files   what runs did before: log the same two files as plain run artifacts under model/, end the run

The children alternate (files, model, files, ...) so load drift hits both; medians are printed, and the
difference is what logging a model adds per trial. Imports are not counted: a trial has them loaded.

    .venv/bin/python bench/model_logging.py                   # 0.4M (the demo's largest), 5 pairs, ~1 minute
    .venv/bin/python bench/model_logging.py --size 0.05M --pairs 3
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time

CHILD = """
import json, sys, time
from pathlib import Path
from hiir.models import build, solve
from hiir.platform import tracking
from hiir.platform.config import load_config
from hiir.platform.train.ema import EMA
from hiir.platform.train.fit import _finish_mlflow_run
from hiir.platform.train.worker import _write_rank0_files

workdir, size, kind, i = Path(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4])
uri = tracking.default_tracking_uri(workdir)
store = tracking.Store(uri)
exp = store.experiment("bench-model-logging", workdir)
name = f"{kind}-{i}"
run_id, _ = store.find_or_create_run(exp, name, {})
store.log_params(run_id, {f"param.{k}": k for k in range(150)})  # a trial logs ~150 params
now = int(time.time() * 1000)
for step in range(0, 2001, 100):  # and loss, lr, throughput, system metrics every window; val at the end
    store.log_metrics(run_id, {"loss": 1 / (step + 1), "lr": 1e-3, "images_per_s": 100.0,
                               **{f"system/m{k}": float(k) for k in range(12)}}, step, now + step)
store.log_metrics(run_id, {"val_psnr": 33.5, "val_mse": 4e-4, **{f"val/demo_sr_x2/{m}": 0.5 for m in
                           ("psnr", "ssim", "psnr_y", "ssim_y")}}, 2000, now + 2001)
model = build(solve("tiny", size, scale=2).config).eval()
export = workdir / "runs" / name
export.mkdir(parents=True)
cfg = load_config({"name": name, "model": {"preset": "tiny_x2"}})
_write_rank0_files(export, cfg, model.config, model, EMA(model, 0.0, keep=False), step=2000)
started = time.perf_counter()
if kind == "model":
    _finish_mlflow_run(uri, run_id, workdir, export, step=2000)
else:
    for file in ("model.safetensors", "model.json"):
        store.log_artifact(run_id, export / file, "model")
    store.close(run_id, "FINISHED")
print(json.dumps({"seconds": time.perf_counter() - started, "params": model.num_params()}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="0.4M", help="a size of the tiny family (the demo's: 0.05M to 0.4M)")
    parser.add_argument("--pairs", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-c", "import sys; from hiir.platform import tracking; "
                        "tracking.Store(tracking.default_tracking_uri(sys.argv[1]))", tmp], check=True,
                       capture_output=True)  # the store's schema, once, outside the timings
        times: dict[str, list[float]] = {"files": [], "model": []}
        params = 0
        for i in range(args.pairs):
            for kind in ("files", "model"):
                started = time.perf_counter()
                out = subprocess.run([sys.executable, "-c", CHILD, tmp, args.size, kind, str(i)], check=True,
                                     capture_output=True, text=True)
                result = json.loads(out.stdout.strip().splitlines()[-1])
                times[kind].append(result["seconds"])
                params = result["params"]
                print(f"{kind:<6} {result['seconds']:.2f} s  (child {time.perf_counter() - started:.0f} s)",
                      flush=True)
    files, model = statistics.median(times["files"]), statistics.median(times["model"])
    print(f"\ntiny {args.size} ({params:,} params), median of {args.pairs}: end of run with plain files "
          f"{files:.2f} s, with the MLflow model {model:.2f} s: logging the model adds {model - files:.2f} s")


if __name__ == "__main__":
    main()
