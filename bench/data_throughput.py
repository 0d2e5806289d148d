"""Data-path throughput. Run: .venv/bin/python bench/data_throughput.py [--quick]

1. Build: images/s of build_dataset on Ray Data vs a plain single-process PIL loop doing the
   same work (load, mod-crop, MATLAB bicubic, sub-images, zstd Parquet shards).
2. Storage: size on disk and load cost of raw uint8 + zstd (chosen) vs PNG bytes.
3. Read: 64x64-LQ patches/s of TrainReader.get_batch (one process), and of Ray Data
   read_parquet + iter_batches on the driver, vs the patches/s one training step of the
   smoke model (hiir.models "tiny_x2", forward + backward, batch 16) consumes.
"""
from __future__ import annotations

import argparse
import io
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("RAY_AUTH_MODE", "disabled")


def photo_folder(root: Path, max_side: int) -> Path:
    """The scikit-image photos at up to `max_side` px (native size is 300-1411 px)."""
    import skimage.data
    from PIL import Image

    from hiir.data_prep import demo
    from hiir.data_prep.degrade import to_uint8
    from hiir.data_prep.imresize import imresize

    root.mkdir(parents=True)
    for name, loader in demo.DEMO_PHOTOS.items():
        img = getattr(skimage.data, loader)()
        img = img[0] if isinstance(img, tuple) else img
        f = max_side / max(img.shape[:2])
        Image.fromarray(to_uint8(imresize(img, f)) if f < 1 else img).save(root / f"{name}.png")
    return root


def bench_build(src: Path, out: Path, kw: dict) -> dict:
    import ray

    from hiir.data_prep import build as b
    from hiir.data_prep.scan import scan_source

    n = len(scan_source(src))
    t = time.perf_counter()
    ray.init(include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False)
    t_init = time.perf_counter() - t
    t = time.perf_counter()
    b.build_dataset(src, out / "ray", "sr", scale=2, progress=False, **kw)
    t_ray = time.perf_counter() - t
    ray.shutdown()
    real = b.run_on_ray
    b.run_on_ray = lambda items, p, progress: [b.process_chunk(i, p) for i in items]  # the plain loop
    t = time.perf_counter()
    b.build_dataset(src, out / "loop", "sr", scale=2, progress=False, **kw)
    t_loop = time.perf_counter() - t
    b.run_on_ray = real
    return {"images": n, "ray_init_s": t_init, "ray_data_img_s": n / t_ray, "plain_loop_img_s": n / t_loop}


def bench_storage(ds: Path) -> dict:
    """Re-encode the built train rows as PNG to compare size and decode cost with raw+zstd."""
    import pyarrow.parquet as pq
    from PIL import Image

    from hiir.data_prep import load_manifest
    from hiir.data_prep.manifest import read_verified

    m = load_manifest(ds)
    tabs = [read_verified(str(ds), s) for s in m.split_shards("train")]
    zstd = sum((ds / s.name).stat().st_size for s in m.split_shards("train"))
    raw = sum(t.column("gt").nbytes + t.column("lq").nbytes for t in tabs)
    t = time.perf_counter()
    for s in m.split_shards("train"):
        pq.read_table(ds / s.name, memory_map=True)
    t_zstd = time.perf_counter() - t
    pngs = []
    for tab in tabs:
        for i in range(tab.num_rows):
            for k, h, w in (("gt", "gt_h", "gt_w"), ("lq", "lq_h", "lq_w")):
                a = np.frombuffer(tab.column(k)[i].as_py(), np.uint8).reshape(tab.column(h)[i].as_py(),
                                                                              tab.column(w)[i].as_py(), 3)
                buf = io.BytesIO()
                Image.fromarray(a).save(buf, format="PNG", compress_level=1)
                pngs.append(buf.getvalue())
    t = time.perf_counter()
    for p in pngs:
        np.asarray(Image.open(io.BytesIO(p)))
    t_png = time.perf_counter() - t
    return {"rows": sum(t.num_rows for t in tabs), "raw_mb": raw / 1e6, "zstd_mb": zstd / 1e6,
            "png_mb": sum(map(len, pngs)) / 1e6, "zstd_load_s": t_zstd, "png_decode_s": t_png}


def bench_read(ds: Path, seconds: float) -> dict:
    from hiir.data_prep import TrainReader

    t = time.perf_counter()
    r = TrainReader(ds, rank=0, world_size=1, batch_size=16, lq_patch=64, seed=0)
    t_open = time.perf_counter() - t
    step, t = 0, time.perf_counter()
    while time.perf_counter() - t < seconds:
        r.get_batch(step)
        step += 1
    return {"reader_open_s": t_open, "reader_patches_s": 16 * step / (time.perf_counter() - t)}


def bench_ray_data_read(ds: Path) -> dict:
    """Ray Data on the driver: read_parquet + iter_batches, decode and crop one 64 px patch per row."""
    import ray

    ray.init(include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    try:
        ds, out = ray.data.read_parquet(sorted(str(p) for p in ds.glob("train-*.parquet"))), {}
        for epoch in (1, 2):
            n, t = 0, time.perf_counter()
            for b in ds.iter_batches(batch_size=16, batch_format="numpy"):
                for lq, h, w in zip(b["lq"], b["lq_h"], b["lq_w"]):
                    np.frombuffer(lq, np.uint8).reshape(h, w, 3)[:64, :64].copy()
                n += len(b["lq"])
            out[f"ray_data_patches_s_epoch{epoch}"] = n / (time.perf_counter() - t)
        return out
    finally:
        ray.shutdown()


def bench_train_step(steps: int) -> dict:
    try:
        import torch

        import hiir.models as models
        net = models.build("tiny_x2")
    except Exception as exc:  # models/ not importable yet
        return {"train_step": f"unavailable: {exc}"}
    torch.set_num_threads(2)
    opt = torch.optim.AdamW(net.parameters(), 1e-4)
    lq, gt = torch.rand(16, 3, 64, 64), torch.rand(16, 3, 128, 128)
    for i in range(steps + 1):
        if i == 1:
            t = time.perf_counter()
        loss = torch.nn.functional.l1_loss(net(lq), gt)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    dt = (time.perf_counter() - t) / steps
    return {"train_step_s": dt, "train_patches_s": 16 / dt}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="smaller photos, shorter timings")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="hiir-bench-data-"))
    try:
        src = photo_folder(work / "photos", 384 if args.quick else 768)
        kw = dict(sub_size=192, step=96, images_per_shard=4)
        res = bench_build(src, work, kw)
        res |= bench_storage(work / "ray")
        res |= bench_read(work / "ray", 2 if args.quick else 5)
        res |= bench_ray_data_read(work / "ray")
        res |= bench_train_step(2 if args.quick else 5)
        for k, v in res.items():
            print(f"{k:>20}: {v:.3f}" if isinstance(v, float) else f"{k:>20}: {v}")
        if "train_patches_s" in res:
            print(f"{'reader / training':>20}: {res['reader_patches_s'] / res['train_patches_s']:.0f}x")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
