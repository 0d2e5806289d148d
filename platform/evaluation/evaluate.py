"""Whole-image evaluation with BasicSR's conventions, shared by training, `hiir eval` and `hiir restore`.

crop_border and the headline PSNR follow `metrics.sr_convention`: SR (scale > 1) crops the scale and
headlines Y-channel PSNR (the papers' tables), restoration at scale 1 crops nothing and headlines RGB.
Both channels are always logged.

Inference runs in fp32 on whatever device the model is on (a GPU where training ran on one); the metrics
are computed on the host in float64. `baseline_scores` scores the trivial restoration (bicubic for SR,
the degraded input otherwise) the same way, so every report can show the bar a model must clear.
"""
from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn
from tqdm import tqdm

from hiir.data_prep import imresize, iter_val, load_manifest
from hiir.models import HiIRConfig, build, checkpoint_filter_fn
from hiir.models.inference import self_ensemble as ensemble
from hiir.models.inference import tiled_forward
from hiir.platform.errors import HiirError
from hiir.platform.evaluation.metrics import shave_y_metrics, sr_convention, to_uint8
from hiir.platform.evaluation.strips import plot_strip


def resolve_device(name: str) -> torch.device:
    """`auto` is the first CUDA GPU if torch sees one, else the CPU; a named device must exist."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise HiirError(f"--device {name!r} is not a torch device ({exc}); use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise HiirError(f"--device {name}: torch {torch.__version__} sees no CUDA GPU; use --device cpu")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise HiirError(f"--device {name}: torch sees {torch.cuda.device_count()} CUDA GPU(s)")
    return device


@torch.no_grad()
def restore_array(model: nn.Module, lq: np.ndarray, *, tile: int = 0, overlap: int = 16,
                  self_ensemble: bool = False) -> np.ndarray:
    """uint8 HxWxC -> restored float HxWxC in [0, 1] (padding inside the model; tiles above `tile`)."""
    device = next(model.parameters()).device
    x = torch.from_numpy(np.array(lq, dtype=np.uint8)).to(device).permute(2, 0, 1)[None].float().div_(255)
    if tile and max(x.shape[-2:]) > tile:
        forward = lambda t: tiled_forward(model, t, tile=tile, overlap=overlap)  # noqa: E731
    else:
        forward = model
    out = ensemble(model, x, forward_fn=forward) if self_ensemble else forward(x)
    return out[0].permute(1, 2, 0).clamp_(0, 1).cpu().numpy()


@dataclass
class Scores:
    """What scoring val sets gives: the metrics (what MLflow logs), the headline PSNR of every image (what
    seed-noise verdicts pair by), and sample strips."""

    metrics: dict[str, float]
    per_image: dict[str, dict[str, float]] = field(default_factory=dict)  # set -> image name -> headline PSNR
    strips: list[tuple[str, np.ndarray]] = field(default_factory=list)


def evaluate_datasets(model: nn.Module, dataset_dirs: list[str], *, max_images: int = 0, tile: int = 0,
                      overlap: int = 16, self_ensemble: bool = False, samples: int = 0,
                      tasks: dict[str, str] | None = None, progress: bool = False,
                      shard: tuple[int, int] = (0, 1)) -> Scores:
    """Metrics per val set (`val/<set>/psnr|ssim|psnr_y|ssim_y`, `+` for self-ensemble) plus summaries.

    `val_psnr` is the mean headline PSNR over the sets, each set weighted alike (what studies rank by, fit
    and plot), and `val_mse` the same number as an MSE on [0,1] pixels, 10^(-val_psnr/10): not a mean MSE.
    `tasks` (set dir -> task, a mixture's per-task val sets) adds `val_task/<task>/psnr|ssim`: the
    mean over that task's sets (its levels), headline channel. `progress` shows a bar per set.

    `shard=(rank, world)` splits the work across a training run's ranks: each scores every world-th
    image from its rank on, and one all-gather per set gives every rank the metrics over all images
    (so every rank must call this alike), averaged in image order as a single process would.
    Only rank 0 draws sample strips.
    """
    def restore(lq: np.ndarray, scale: int) -> dict[str, np.ndarray]:
        variants = {"": restore_array(model, lq, tile=tile, overlap=overlap)}
        if self_ensemble:
            variants["+"] = restore_array(model, lq, tile=tile, overlap=overlap, self_ensemble=True)
        return variants

    return _score(restore, model.config.in_channels, dataset_dirs, max_images=max_images, samples=samples,
                  tasks=tasks, progress=progress, shard=shard)


def baseline_scores(dataset_dirs: list[str], *, max_images: int = 0, channels: int = 3) -> Scores:
    """The trivial restoration of the same images, scored the same way: MATLAB bicubic upsampling of the LQ
    image for SR sets (scale > 1), the LQ image itself (identity) for restoration sets."""
    def restore(lq: np.ndarray, scale: int) -> dict[str, np.ndarray]:
        return {"": imresize(lq, scale) / 255.0 if scale > 1 else lq / 255.0}

    return _score(restore, channels, dataset_dirs, max_images=max_images)


def baseline_name(scale: int) -> str:
    return "bicubic" if scale > 1 else "identity (the degraded input)"


def _score(restore: Callable[[np.ndarray, int], dict[str, np.ndarray]], channels: int, dataset_dirs: list[str], *,
           max_images: int = 0, samples: int = 0, tasks: dict[str, str] | None = None, progress: bool = False,
           shard: tuple[int, int] = (0, 1)) -> Scores:
    rank, world = shard
    results: dict[str, float] = {}
    per_image: dict[str, dict[str, float]] = {}
    headline, strips, per_task = [], [], {}
    for directory in dataset_dirs:
        manifest = load_manifest(directory, verify=False)
        name = dataset_name(directory)
        border, headline_key = sr_convention(manifest.scale, channels)
        rows: dict[str, list[tuple[int, str, float]]] = {}  # metric -> (image index, image name, value)
        total = min(manifest.rows("val"), max_images) if max_images else manifest.rows("val")
        images = tqdm(iter_val(directory), desc=name, total=total, unit="img", disable=not progress, leave=False)
        for i, (image, lq, gt) in enumerate(images):
            if max_images and i >= max_images:
                break
            if i % world != rank:
                continue
            variants = restore(lq, manifest.scale)
            for suffix, out in variants.items():
                for metric, value in shave_y_metrics(to_uint8(out), gt, border).items():
                    if gt.shape[-1] == 3 or not metric.endswith("_y"):  # grey sets have no Y of their own
                        rows.setdefault(metric + suffix, []).append((i, image, value))
            if rank == 0 and len(strips) < samples:
                strips.append((f"{name}_{image}", plot_strip(lq, to_uint8(variants[""]), gt, None)))
        if world > 1:
            rows = _gather_rows(rows, world)
        if not rows:
            raise HiirError(f"validation set {directory} has no images")
        for key, values in rows.items():
            results[f"val/{name}/{key}"] = float(np.mean([v for *_, v in sorted(values)]))
        per_image[name] = {image: value for _, image, value in sorted(rows[headline_key])}
        headline.append(results[f"val/{name}/{headline_key}"])
        if tasks and directory in tasks:
            ssim_key = headline_key.replace("psnr", "ssim")
            per_task.setdefault(tasks[directory], []).append((headline[-1], results[f"val/{name}/{ssim_key}"]))
    for task, values in per_task.items():
        results[f"val_task/{task}/psnr"] = float(np.mean([v[0] for v in values]))
        results[f"val_task/{task}/ssim"] = float(np.mean([v[1] for v in values]))
    psnrs = np.array(headline)
    results["val_psnr"] = float(psnrs.mean())
    results["val_mse"] = float(10 ** (-results["val_psnr"] / 10))  # one quantity: val_psnr in MSE units
    return Scores(results, per_image, strips)


def _gather_rows(rows: dict[str, list[tuple]], world: int) -> dict[str, list[tuple]]:
    parts: list[dict | None] = [None] * world
    dist.all_gather_object(parts, rows)
    merged: dict[str, list[tuple]] = {}
    for part in parts:
        for key, values in (part or {}).items():
            merged.setdefault(key, []).extend(values)
    return merged


def dataset_name(directory: str) -> str:
    return Path(str(directory).rstrip("/")).name


def load_exported(path: str | Path) -> nn.Module:
    """Rebuild a model from exported weights: `model.safetensors` + `model.json` (never a pickle)."""
    path = Path(path)
    weights = path / "model.safetensors" if path.is_dir() else path
    config = weights.with_name("model.json")
    if weights.suffix != ".safetensors":
        raise HiirError(f"{weights} is not a .safetensors file; hiir loads weights only from safetensors")
    if not weights.is_file() or not config.is_file():
        raise HiirError(f"expected {weights} and {config} (written by `hiir train` at the end of a run)")
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError) as exc:
        raise HiirError(f"{weights} is not a valid safetensors file ({exc})") from None
    fields = json.loads(config.read_text())
    cfg = HiIRConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()})
    model = build(cfg)
    model.load_state_dict(checkpoint_filter_fn(state, model))
    return model.eval()


def summarize(results: dict[str, Any]) -> list[dict[str, Any]]:
    """`val/<set>/<metric>` -> one row per set, for printing tables."""
    rows: dict[str, dict[str, Any]] = {}
    for key, value in results.items():
        parts = key.split("/")
        if len(parts) == 3 and parts[0] == "val":
            rows.setdefault(parts[1], {"dataset": parts[1]})[parts[2]] = value
    return list(rows.values())
