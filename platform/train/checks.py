"""Pre-start checks: everything that can be known wrong before a worker starts fails here, in one line.

Datasets (demo sets built on first use, manifests and checksums verified, online sets given a pipeline),
storage (writable, with room for the checkpoints kept), and where the workers will run (a run the embedded
Ray can never hold; paths local to this node when the workers run on others). `model_stats` counts the
parameters and FLOPs on the meta device, so the largest preset costs nothing here.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import ray
import torch

from hiir.data_prep import DatasetError, build_demo, load_manifest
from hiir.data_prep.demo import DEGRADATION_SETS, DEMO_SETS
from hiir.data_prep.online import pipeline_scale, train_pipeline
from hiir.models import build
from hiir.models.inference import check_tiling
from hiir.models.summary import model_flops
from hiir.platform.config import TrainConfig
from hiir.platform.errors import ConfigError, HiirError
from hiir.platform.evaluation.evaluate import dataset_name
from hiir.platform.train.runtime import worker_resources

DEMO_PREFIX = "demo:"


def resolve_datasets(cfg: TrainConfig, workdir: Path, *, verify: bool = True) -> TrainConfig:
    """`demo:<name>` -> the built-in demo dataset (built on first use); every set verified up front,
    mixture entries included (an online set without a pipeline, or tasks of different scales, fail here).
    `verify=False` reads the manifests only, not every shard's sha256 (a study's trials: the study has
    verified them once, and the workers check each shard they read)."""
    refs = [cfg.data.train] * (not cfg.data.mixture) + list(cfg.data.val) + \
        [r for e in cfg.data.mixture for r in (e["dataset"], *e.get("val", []))]
    keys = list(dict.fromkeys(r[len(DEMO_PREFIX):] for r in refs if r.startswith(DEMO_PREFIX)))
    known = [*DEMO_SETS, *DEGRADATION_SETS]
    for key in keys:
        if key not in known:
            raise HiirError(f"unknown demo dataset {DEMO_PREFIX + key!r}; available: "
                            + ", ".join(DEMO_PREFIX + k for k in known))
    demos = build_demo(workdir / "data", keys=keys) if keys else {}

    def resolve(ref: str) -> str:
        if ref.startswith(DEMO_PREFIX):
            return str(demos[ref[len(DEMO_PREFIX):]])
        if "://" not in ref:
            ref = str(Path(ref).expanduser().resolve())
        load_manifest(ref, verify=verify)  # a missing shard or bad checksum fails here, not in a worker
        return ref

    mixture = [{**e, "dataset": resolve(e["dataset"]), "val": [resolve(v) for v in e.get("val", [])]}
               for e in cfg.data.mixture]
    train = cfg.data.train if mixture else resolve(cfg.data.train)
    if not mixture:
        _train_scale(train, cfg.data.degrade, "data.degrade")
    scales = {e["task"]: _train_scale(e["dataset"], e.get("degrade"), f"data.mixture[{i}].degrade")
              for i, e in enumerate(mixture)}
    if len(set(scales.values())) > 1:
        raise HiirError(f"the tasks of data.mixture must share one scale (one model), got {scales}")
    val = [resolve(v) for v in cfg.data.val]
    return cfg.with_values({"data.train": train, "data.val": val, "data.mixture": mixture})


def _train_scale(dataset: str, steps, where: str) -> int:
    """The SR factor a train set is made with (its pipeline's, else its manifest's); an HR-only set with no
    pipeline anywhere fails here, naming `where`."""
    try:
        pipeline, _ = train_pipeline(dataset, steps, where)
    except DatasetError as exc:
        raise HiirError(str(exc)) from None
    return pipeline_scale(pipeline) if pipeline else load_manifest(dataset, verify=False).scale


def synthetic_val_sets(cfg: TrainConfig) -> list[str]:
    """Names of the val sets that are synthetic stand-ins (tagged on the run; studies' reports say so)."""
    return [dataset_name(v) for v in cfg.data.val
            if load_manifest(v, verify=False).degradation.get("synthetic_stand_in")]


def check_storage(storage: str, need_bytes: int = 0) -> None:
    """An unwritable or full storage path fails now, with its name, not in a worker's first save."""
    if "://" in storage:
        return  # remote storage is checked by Ray's own filesystem layer at start
    path = Path(storage)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".hiir-write-check-") as f:
            f.write(b"\0" * 4096)
            f.flush()
            os.fsync(f.fileno())
    except OSError as exc:
        raise HiirError(f"storage path {path} is not usable: {exc.strerror or exc}") from None
    free = shutil.disk_usage(path).free
    if free < need_bytes:
        raise HiirError(f"storage path {path} has {free / 2**20:.1f} MiB free; the checkpoints this run keeps "
                        f"need about {need_bytes / 2**20:.1f} MiB")


def workers_leave_this_node(cfg: TrainConfig, nodes: list[dict], here: str) -> bool:
    """Whether Ray may place this run's workers off the driver's node: the cluster has other nodes, or
    this one cannot hold them (an autoscaling head with `--num-cpus=0`, or no GPU when they need one)."""
    alive = [n for n in nodes if n.get("Alive")]
    if any(n["NodeID"] != here for n in alive):
        return True
    local = next((n.get("Resources", {}) for n in alive if n["NodeID"] == here), {})
    return any(local.get(k, 0) < v * cfg.scaling.num_workers for k, v in worker_resources(cfg).items())


def check_fits_locally(cfg: TrainConfig, address: str | None, *, extra_cpu: float = 0.0,
                       total: dict[str, float] | None = None) -> None:
    """The embedded Ray cannot grow: a run it cannot hold would wait for resources forever. Say so now.
    (A cluster may autoscale, so there a run waits for its nodes.)"""
    if address:
        return
    if total is None:
        total = ray.cluster_resources()
    sc = cfg.scaling
    need = {k: v * sc.num_workers for k, v in worker_resources(cfg).items()}
    need["CPU"] += extra_cpu
    short = [f"{v:g} {k} (has {total.get(k, 0):g})" for k, v in need.items() if v > total.get(k, 0) + 1e-9]
    if short:
        fix = ("set scaling.use_gpu=false, or run on a machine with GPUs" if need.get("GPU", 0) > total.get("GPU", 0)
               else "lower scaling.num_workers or scaling.cpus_per_worker")
        raise HiirError(f"scaling.num_workers={sc.num_workers} x scaling.cpus_per_worker={sc.cpus_per_worker:g}"
                        f"{' with a GPU each' if sc.use_gpu else ''} needs {', '.join(short)} of the local Ray; {fix}")


def check_cluster_paths(cfg: TrainConfig, address: str | None, storage: list[str], tracking_uri: str, *,
                        nodes: list[dict] | None = None, here: str | None = None) -> None:
    """On a cluster whose workers run on other nodes, a path local to this node would scatter a run's
    checkpoints and MLflow records over the nodes' disks, and Ray Train would fail only at the first
    checkpoint a remote worker uploads, hours in. Refuse that now. The embedded Ray is one node."""
    if not address:
        return
    if nodes is None:
        nodes, here = ray.nodes(), ray.get_runtime_context().get_node_id()
    if not workers_leave_this_node(cfg, nodes, here or ""):
        return
    for path in storage:
        if "://" not in path:
            raise HiirError(f"storage {path} is a directory on this node, but the Ray cluster at {address} runs "
                            "the workers on other nodes; set HIIR_STORAGE to storage every node reaches "
                            "(s3://bucket/hiir, gs://bucket/hiir, or file:///mnt/shared/hiir on a shared mount)")
    if tracking_uri.startswith(("sqlite:", "file:", "/", ".", "~")):  # not a server (nor `databricks`)
        raise HiirError(f"MLflow store {tracking_uri} is a file on this node, but the Ray cluster at {address} "
                        "logs from workers on other nodes; run an MLflow server and pass --tracking-uri "
                        "http://HOST:5000 (or set MLFLOW_TRACKING_URI)")


def checkpoint_bytes(cfg: TrainConfig, num_params: int) -> int:
    """Disk the kept checkpoints need: fp32 weights, two Adam moments, EMA and export (~5 copies)
    per checkpoint, `keep` of them plus the one being written."""
    return 5 * 4 * num_params * (cfg.checkpoint.keep + 1)


def model_stats(cfg: TrainConfig) -> dict[str, float]:
    """Parameter count and training FLOPs per step (forward + backward ~ 3x forward, all workers)."""
    model_cfg = cfg.resolved_model
    with torch.device("meta"):  # counts without allocating, so the 110M preset costs nothing here
        model = build(model_cfg)
        p = cfg.data.lq_patch
        forward = model_flops(model, (1, model_cfg.in_channels, p, p))
    return {"model.num_params": model.num_params(),
            "flops_per_step": 3 * forward * cfg.data.batch_size * cfg.scaling.num_workers}


def apply_budget(cfg: TrainConfig, flops_per_step: float) -> TrainConfig:
    """With `budget.flops`, the run's step count: optim.max_steps = budget / FLOPs per step (rounded), so
    every model size gets the same compute. Without a budget, `cfg` as it is."""
    budget = cfg.budget.flops
    if budget is None:
        return cfg
    steps = round(budget / flops_per_step)
    if steps < 1 or cfg.optim.warmup_steps >= steps:
        too_few = "not one" if steps < 1 else f"not more than optim.warmup_steps={cfg.optim.warmup_steps}"
        raise HiirError(f"budget.flops={budget:.3g} buys {steps} steps of this model ({flops_per_step:.3g} FLOPs a "
                        f"step), {too_few}; "
                        "raise the budget, or lower data.batch_size or data.lq_patch")
    return cfg.with_values({"optim.max_steps": steps})


def check_patch(cfg: TrainConfig) -> None:
    """A training patch smaller than the model's largest group is reflect-padded up to it: several times the
    compute, and the largest groups hold mirror images of the patch where, at test time on whole images,
    they hold real distant tokens. Train and test would then see different models: refuse it. Validation
    tiles that do not line up with that group would fail at the first validation, hours in: refuse them now."""
    model = cfg.resolved_model
    multiple, patch = model.pad_multiple, cfg.data.lq_patch
    if cfg.eval.tile:
        try:
            check_tiling(multiple, cfg.eval.tile, cfg.eval.tile_overlap)
        except ValueError as exc:
            raise ConfigError(f"eval.tile / eval.tile_overlap: {exc}") from None
    if patch < multiple:
        largest = model.tree.pad  # the per-stage size it pads to: patch, or patch2 at tree depth 4
        raise ConfigError(f"data.lq_patch={patch} is smaller than the model's pad multiple {multiple} (its largest "
                          f"group, model.{largest}): every training patch would be reflect-padded to {multiple} px, "
                          f"{(multiple / patch) ** 2:.0f}x its area, with mirror images in the groups; use "
                          f"data.lq_patch >= {multiple}, or a smaller model.patch/model.patch2")


def crosses_patches(cfg: TrainConfig) -> bool:
    """Whether the run's model has any path for information across its P x P patch borders."""
    return cfg.resolved_model.crosses_patches
