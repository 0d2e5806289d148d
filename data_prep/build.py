"""Stage 2 + the driver: `build_dataset` runs read -> degrade -> write on Ray Data.

The driver scans the source and groups images into chunks, one chunk per output shard.
Ray Data maps each chunk to a task that loads, degrades, cuts and writes its shard
(atomically) and returns only metadata; the driver then writes manifest.json last.
The same call scales out on a cluster: it joins RAY_ADDRESS when that is set (`ray_session`).
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pyarrow.fs as pafs

from hiir.data_prep.degrade import SYNTHETIC, TASKS, degrade_image, mod_crop
from hiir.data_prep.errors import DatasetError
from hiir.data_prep.files import TMP_PREFIX, filesystem
from hiir.data_prep.manifest import (
    MANIFEST,
    SCHEMA_VERSION,
    SHARD_NAME,
    Manifest,
    ShardInfo,
    SkippedImage,
    dataset_state,
    write_manifest,
)
from hiir.data_prep.online import validate_pipeline
from hiir.data_prep.scan import MAX_PIXELS, SourceImage, load_image, scan_source
from hiir.data_prep.shards import image_rows, write_shard

log = logging.getLogger("hiir.data")

SYNTHETIC_MODELS = {
    "derain": "rain streaks: sparse drops smeared by a near-vertical motion kernel, added",
    "dehaze": "atmospheric scattering I = J t + A (1 - t), t = exp(-beta d), synthetic depth d",
    "deblur": "linear motion blur, 7-15 px, random angle",
    "lowlight": "gamma 1.2-1.8, scaled by 0.15-0.35, sensor noise sigma 1-4",
}


def degradation_params(task: str, scale, sigma, quality, lq_source, pipeline=None) -> tuple[int, dict]:
    """(scale, degradation dict) of a task, checking that the task got the values it needs."""
    if task not in TASKS:
        raise DatasetError(f"task must be one of {', '.join(TASKS)}, got {task!r}")
    if (task == "paired") != (lq_source is not None):
        raise DatasetError("an LQ folder (--lq) is required for task paired and only for it")
    if task == "sr":
        if scale not in (2, 3, 4):
            raise DatasetError(f"task sr needs scale 2, 3 or 4, got {scale!r}")
        return scale, {"kind": "bicubic_matlab", "scale": scale, "antialiasing": True}
    if task == "denoise":
        if sigma is None or not 0 < sigma <= 255:
            raise DatasetError(f"task denoise needs a noise sigma in (0, 255] (8-bit levels), got {sigma!r}")
        return 1, {"kind": "gaussian_noise", "sigma": sigma, "range": "0-255", "seeded_by": "seed+image name"}
    if task == "jpeg":
        if quality is None or not 1 <= quality <= 100:
            raise DatasetError(f"task jpeg needs a quality in 1..100, got {quality!r}")
        return 1, {"kind": "jpeg_pillow", "quality": quality}
    if task in SYNTHETIC:
        return 1, {"kind": f"synthetic_{task}", "synthetic_stand_in": True, "model": SYNTHETIC_MODELS[task],
                   "seeded_by": "seed+image name"}
    if task == "online":  # HR-only: the reader degrades on the fly (hiir.data_prep.online)
        return 1, {"kind": "online", "online": True, "pipeline": validate_pipeline(pipeline, "pipeline (--degrade)")}
    return scale or 1, {"kind": "given", "lq_source": str(lq_source)}


def prepare_out_dir(out_dir: str, overwrite: bool) -> None:
    """Refuse an existing dataset, leftover or non-empty folder unless `overwrite`; then clear
    our files (manifest first, so a crash mid-way leaves a leftover, never a stale dataset)."""
    state = dataset_state(out_dir)
    fs, root = filesystem(out_dir)
    what = {"dataset": "already holds a dataset",
            "leftover": "holds the leftover of an interrupted build (shards, no manifest.json)",
            "other": "is not empty"}.get(state)
    if what and not overwrite:
        raise DatasetError(f"output directory {root} {what}; pass overwrite (--overwrite) to replace it")
    if state in ("dataset", "leftover"):
        if state == "dataset":
            fs.delete_file(f"{root}/{MANIFEST}")
        for f in fs.get_file_info(pafs.FileSelector(root)):
            name = f.path.rsplit("/", 1)[-1]
            if SHARD_NAME.match(name) or name.startswith(TMP_PREFIX):
                fs.delete_file(f.path)
    fs.create_dir(root, recursive=True)


def process_image(img: SourceImage, p: dict):
    """(pyarrow Table of rows, None) or (None, skip reason); DatasetError when the build must stop."""
    try:
        gt = mod_crop(load_image(img.path, p["max_pixels"]), p["scale"])
        lq = load_image(img.lq_path, p["max_pixels"]) if img.lq_path else None
    except DatasetError as exc:
        if p["strict"]:
            raise
        return None, str(exc)
    if img.split == "train" and min(gt.shape[:2]) < p["sub_size"]:
        return None, (f"image {img.path} is {gt.shape[1]}x{gt.shape[0]}, "
                      f"smaller than the {p['sub_size']} px sub-image size")
    if lq is None and p["task"] == "online":
        lq = np.zeros((0, 0, gt.shape[2]), np.uint8)  # GT only: no LQ bytes stored
    elif lq is None:
        lq = degrade_image(gt, p["task"], scale=p["scale"], sigma=p["sigma"], quality=p["quality"], seed=p["seed"],
                           name=img.name)
    elif lq.shape[:2] != (gt.shape[0] // p["scale"], gt.shape[1] // p["scale"]):
        raise DatasetError(f"paired images disagree in size: GT {img.path} is {gt.shape[1]}x{gt.shape[0]} "
                           f"(mod-cropped to x{p['scale']}) but LQ {img.lq_path} is {lq.shape[1]}x{lq.shape[0]}")
    return image_rows(gt, lq, name=img.name, source=Path(img.path).name, split=img.split, scale=p["scale"],
                      sub_size=p["sub_size"], step=p["step"]), None


def process_chunk(item: dict, p: dict) -> dict:
    """Ray Data task: one chunk of images -> one shard file; returns metadata, or the error text."""
    tables, skipped = [], []
    try:
        for d in json.loads(item["images"]):
            table, reason = process_image(SourceImage(**d), p)
            if reason:
                skipped.append({"path": d["path"], "reason": reason})
            else:
                tables.append(table)
        name = f"{item['split']}-{item['index']:05d}.parquet"
        rows, sha = write_shard(tables, p["out_dir"], name) if tables else (0, "")
    except DatasetError as exc:
        return {"shard": "", "split": item["split"], "rows": 0, "sha256": "", "skipped": "[]", "error": str(exc)}
    return {"shard": name if tables else "", "split": item["split"], "rows": rows, "sha256": sha,
            "skipped": json.dumps(skipped), "error": ""}


def chunk_images(images: list[SourceImage], images_per_shard: int) -> list[dict]:
    """Ray Data items: per split, consecutive groups of `images_per_shard` images."""
    items = []
    for split in ("train", "val"):
        group = [asdict(i) for i in images if i.split == split]
        for k in range(0, len(group), images_per_shard):
            items.append({"split": split, "index": k // images_per_shard,
                          "images": json.dumps(group[k : k + images_per_shard])})
    return items


@contextlib.contextmanager
def ray_session() -> Iterator[None]:
    """Reuse a running Ray, or start one for the block and stop it after: the cluster at RAY_ADDRESS when
    it is set, else always a new embedded instance (`address="local"`), never the cluster that a past
    `ray start` left named in /tmp/ray (it may be dead, and a live one is not ours to fill)."""
    import ray  # only when a build runs: the CLI imports this module, and `hiir --help` must not load Ray

    if ray.is_initialized():
        yield
        return
    ray.init(address=os.environ.get("RAY_ADDRESS") or "local", include_dashboard=False,
             logging_level=logging.WARNING, log_to_driver=False)
    try:
        yield
    finally:
        ray.shutdown()


def run_on_ray(items: list[dict], params: dict, progress: bool) -> list[dict]:
    """Map `process_chunk` over the items with Ray Data, in `ray_session`."""
    import ray  # as in ray_session

    with ray_session():
        return _map_chunks(ray, items, params, progress)


def _map_chunks(ray, items: list[dict], params: dict, progress: bool) -> list[dict]:
    ctx = ray.data.DataContext.get_current()
    old_bars = ctx.enable_progress_bars
    ctx.enable_progress_bars = progress
    data_log = logging.getLogger("ray.data")
    old_level = data_log.level
    if not progress:
        data_log.setLevel(logging.WARNING)
    try:
        ds = ray.data.from_items(items, override_num_blocks=len(items))
        return ds.map(process_chunk, fn_kwargs={"p": params}).take_all()
    finally:
        ctx.enable_progress_bars = old_bars
        data_log.setLevel(old_level)


def build_dataset(source, out_dir, task: str, *, scale: int | None = None, sigma: float | None = None,
                  quality: int | None = None, lq_source=None, split: str = "train", val_fraction: float = 0.1,
                  val_names=None, sub_size: int = 480, step: int = 240, images_per_shard: int = 8, seed: int = 0,
                  strict: bool = False, overwrite: bool = False, progress: bool = True,
                  max_pixels: int = MAX_PIXELS, pipeline=None, local: bool = False) -> Manifest:
    """Build a dataset directory (Parquet shards + manifest.json) from an image folder.

    task: sr (scale 2/3/4, MATLAB bicubic), denoise (sigma in 8-bit levels, seeded per image),
    jpeg (Pillow quality) or paired (LQ images from `lq_source`, matched by file stem).
    split: train (sub_size sub-images every `step` px), val (whole mod-cropped images) or both
    (val = `val_names`, else a seeded `val_fraction` of the images). Unreadable images are
    skipped and listed in the manifest, or fail the build with strict=True.
    task online: GT-only train shards; `pipeline` (optional) is recorded as the default on-the-fly
    degradation. derain/dehaze/deblur/lowlight: synthetic stand-ins, labelled so in the manifest.
    local=True maps the chunks in this process instead of Ray Data (tiny builds such as the demo's).
    """
    scale, degradation = degradation_params(task, scale, sigma, quality, lq_source, pipeline)
    if task == "online" and split != "train":
        raise DatasetError("task online builds a train split only; evaluate on fixed val sets built per level "
                           "(e.g. --task denoise --sigma 25 --split val)")
    if sub_size % scale or step % scale or step <= 0:
        raise DatasetError(f"sub_size {sub_size} and step {step} must be positive multiples of the scale {scale}")
    images = scan_source(source, split, lq_source=lq_source, val_fraction=val_fraction, val_names=val_names, seed=seed)
    prepare_out_dir(str(out_dir), overwrite)
    params = {"task": task, "scale": scale, "sigma": sigma, "quality": quality, "seed": seed, "strict": strict,
              "sub_size": sub_size, "step": step, "max_pixels": max_pixels, "out_dir": str(out_dir)}
    items = chunk_images(images, images_per_shard)
    results = [process_chunk(i, params) for i in items] if local else run_on_ray(items, params, progress)
    results = sorted(results, key=lambda r: r["shard"])
    errors = [r["error"] for r in results if r["error"]]
    if errors:
        prepare_out_dir(str(out_dir), overwrite=True)  # remove this build's shards: no half dataset stays behind
        raise DatasetError(errors[0])
    skipped = [SkippedImage(**s) for r in results for s in json.loads(r["skipped"])]
    for s in skipped:  # one plain line each (the reason names the file), then the count
        log.warning("skipped: %s", s.reason)
    if skipped:
        log.warning("%d of %d images skipped; manifest.json lists them under `skipped`", len(skipped), len(images))
    shards = [ShardInfo(r["shard"], r["split"], r["rows"], r["sha256"]) for r in results if r["shard"]]
    for sp in {i.split for i in images}:
        if not any(s.split == sp for s in shards):
            prepare_out_dir(str(out_dir), overwrite=True)
            raise DatasetError(f"no usable {sp} image in {source} "
                               f"({len(skipped)} skipped; first: {skipped[0].reason if skipped else '-'})")
    manifest = Manifest(SCHEMA_VERSION, task, scale, degradation, seed, os.path.abspath(source),
                        os.path.abspath(lq_source) if lq_source is not None else None, sub_size, step,
                        shards=shards, skipped=skipped)
    write_manifest(str(out_dir), manifest)
    return manifest
