"""On-the-fly degradation throughput. Run: .venv/bin/python bench/online_throughput.py [--quick]

Patches/s of TrainReader.get_batch (one process, batch 16 of 64 px LQ patches, flips/rot90) on the
demo photos (15 scikit-image photos at <= 256 px, 96 px sub-images every 48 px):
  - pre-built: a denoise (sigma 25) dataset, LQ stored in the shards (the issue-4 path);
  - online: HR-only shards, LQ made per image in the reader: noise sigma in [15, 75]; JPEG quality
    in [10, 90] (Pillow); noise then JPEG; x4 MATLAB bicubic; a 2-task mixture (noise | JPEG);
against the patches/s the smoke model of the degradation studies (`tiny_unet`, forward + backward +
AdamW, batch 16 of 64 px, 2 threads) consumes. Target: the reader >= 10x the consumption.
"""
from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from hiir.data_prep import build_dataset
from hiir.data_prep.demo import DEMO_STEP, DEMO_SUB, export_photos
from hiir.data_prep.online import make_train_reader

NOISE, JPEG = {"kind": "noise", "sigma": [15, 75]}, {"kind": "jpeg", "quality": [10, 90]}


def rate(reader, seconds: float) -> float:
    reader.get_batch(0)
    step, t = 1, time.perf_counter()
    while time.perf_counter() - t < seconds:
        reader.get_batch(step)
        step += 1
    return 16 * (step - 1) / (time.perf_counter() - t)


def train_rate(steps: int) -> float:
    import torch

    import hiir.models as models

    torch.set_num_threads(2)
    net = models.build("tiny_unet")
    opt = torch.optim.AdamW(net.parameters(), 1e-4)
    x, y = torch.rand(16, 3, 64, 64), torch.rand(16, 3, 64, 64)
    for i in range(steps + 1):
        if i == 1:
            t = time.perf_counter()
        torch.nn.functional.l1_loss(net(x), y).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return 16 * steps / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="1 s per measurement instead of 4")
    args = ap.parse_args()
    sec = 1.0 if args.quick else 4.0
    work = Path(tempfile.mkdtemp(prefix="hiir-bench-online-"))
    try:
        photos = export_photos(work / "photos")
        kw = dict(sub_size=DEMO_SUB, step=DEMO_STEP, images_per_shard=8, local=True, progress=False)
        build_dataset(photos, work / "prebuilt", "denoise", sigma=25, **kw)
        build_dataset(photos, work / "hr", "online", **kw)
        common = dict(rank=0, world_size=1, batch_size=16, lq_patch=64, seed=0)
        hr = str(work / "hr")
        rows = {
            "pre-built denoise (LQ in shards)": make_train_reader(str(work / "prebuilt"), **common),
            "online noise [15,75]": make_train_reader(hr, degrade=[NOISE], **common),
            "online JPEG [10,90]": make_train_reader(hr, degrade=[JPEG], **common),
            "online noise then JPEG": make_train_reader(hr, degrade=[NOISE, JPEG], **common),
            "online x4 bicubic (MATLAB), 24 px LQ from 96 px GT": make_train_reader(
                hr, degrade=[{"kind": "bicubic", "scale": 4}], **{**common, "lq_patch": 24}),
            "mixture: noise | JPEG, weights 1:1": make_train_reader("mixture", mixture=[
                {"task": "denoise", "dataset": hr, "weight": 1, "degrade": [NOISE]},
                {"task": "jpeg", "dataset": hr, "weight": 1, "degrade": [JPEG]}], **common),
        }
        res = {name: rate(r, sec) for name, r in rows.items()}
        consume = train_rate(2 if args.quick else 4)
        print(f"{'reader':<48} {'patches/s':>10} {'x smoke model':>14}")
        for name, v in res.items():
            print(f"{name:<48} {v:>10.0f} {v / consume:>13.0f}x")
        print(f"{'tiny_unet fwd+bwd+AdamW, batch 16 x 64 px':<48} {consume:>10.1f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
