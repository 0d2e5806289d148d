"""The training worker: one function, run on every rank by Ray Train's TorchTrainer.

It reads top to bottom like nanoGPT's train.py: unpack the config, build the model, engine and data,
resume, then one `while step < max_steps` loop (LR → forward → NaN check → backward → step → EMA →
log → eval/checkpoint/report), and return the final metrics.
"""
from __future__ import annotations

import dataclasses
import json
import os
import resource
import signal
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import ray
import ray.train
import torch
import torch.distributed as dist
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from hiir.data_prep.online import make_train_reader
from hiir.models import build
from hiir.platform import tracking
from hiir.platform.config import TrainConfig, load_config, val_tasks
from hiir.platform.errors import HiirError
from hiir.platform.evaluation.evaluate import evaluate_datasets
from hiir.platform.tracking import RESUMED_TAG, SKIPPED_TAG, WORKER_NODES_TAG, RunLogger
from hiir.platform.train.checkpoint import candidates, verify, write_integrity
from hiir.platform.train.ema import EMA
from hiir.platform.train.engine import all_ranks_finite, make_engine
from hiir.platform.train.runtime import process_started_at

FAULT_ENV = "HIIR_FAULT"  # test hook: "PHASE:RANK:STEP:MARKER_FILE[;...]" sends SIGKILL once each (tests)
FAULT_WAIT_S = 120.0  # how long the hook waits for Ray Train to register this worker's reports before it kills


def train_loop_per_worker(loop_config: dict[str, Any]) -> dict[str, Any]:
    """Returns {"metrics": the last report's metrics, "timeline": when each start-up phase ended (Unix
    seconds) and the seconds spent validating and checkpointing}, which `fit.fit_run` logs as `time/*`."""
    marks = {"started": process_started_at(), "loop": time.time()}  # the worker process, this call
    # DeepSpeed 0.19 calls torch.distributed APIs that torch 2.13 deprecates: noise, not a problem of ours.
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.distributed")

    # ---- config -----------------------------------------------------------------------------------
    cfg: TrainConfig = load_config(loop_config["config"])
    run_id, tracking_uri = loop_config.get("run_id"), loop_config.get("tracking_uri")
    spool_dir = Path(loop_config["spool_dir"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = torch.device(f"cuda:{ctx.get_local_rank()}") if cfg.scaling.use_gpu else torch.device("cpu")
    if device.type == "cpu":
        torch.set_num_threads(max(1, int(cfg.scaling.cpus_per_worker)))
    elif os.environ.get("DS_ACCELERATOR") == "cpu":  # passed on from a CPU-set-up shell (the Makefile's)
        os.environ["DS_ACCELERATOR"] = "cuda"
    torch.manual_seed(cfg.seed + rank)  # drop-path and the `random` mixer differ per rank, reproducibly

    # ---- model, engine, EMA, data -------------------------------------------------------------------
    model_cfg = cfg.resolved_model
    engine = make_engine(cfg, build(model_cfg).to(device), device, rank)
    ema = EMA(engine.module, cfg.optim.ema_decay, keep=rank == 0 and cfg.optim.ema_decay > 0,
              gathered=engine.gathered)
    marks["engine"] = time.time()
    reader = make_train_reader(cfg.data.train, degrade=cfg.data.degrade, mixture=cfg.data.mixture, rank=rank,
                               world_size=world, batch_size=cfg.data.batch_size, lq_patch=cfg.data.lq_patch,
                               seed=cfg.seed, augment=cfg.data.augment)  # one set, online, or a task mixture
    mix = {}  # samples per task since the last log (a mixture's batch composition, batch_frac/<task>)
    marks["data"] = time.time()
    logger = RunLogger(tracking_uri, run_id, spool_dir) if rank == 0 and run_id else None
    nodes = _worker_nodes(world)  # a collective: every rank takes part
    if logger:
        logger.tags({WORKER_NODES_TAG: nodes})
    if logger and cfg.tracking.system_metrics_s > 0:
        logger.start_system_metrics(cfg.tracking.system_metrics_s)
    loss_fn = _losses[cfg.optim.loss]
    marks["tracking"] = time.time()
    spent = {"validation_s": 0.0, "checkpoint_s": 0.0}

    # ---- resume --------------------------------------------------------------------------------------
    step, state = 0, {}
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:
        step, state, skipped_ckpts = _restore_latest_good(checkpoint, engine, ema)
        if logger:
            logger.tags({RESUMED_TAG: str(step), SKIPPED_TAG: ",".join(skipped_ckpts)})
    bad_in_a_row, skipped = state.get("bad_in_a_row", 0), state.get("skipped", 0)
    ema.updates = state.get("ema_updates", 0)
    since_log, since_eval = _StepSums(), _StepSums()  # reset at each log / at each eval
    final: dict[str, Any] = {}

    # ---- loop ----------------------------------------------------------------------------------------
    while step < cfg.optim.max_steps:
        _maybe_fault("step", rank, step)
        t0 = time.perf_counter()
        _seed_step(cfg.seed, rank, step, device)
        lq, gt = (_to_tensor(a, device) for a in reader.get_batch(step))
        if cfg.data.mixture:
            for task, n in reader.counts(step).items():
                mix[task] = mix.get(task, 0) + n
        t_data = time.perf_counter() - t0

        out = engine.forward(lq).float()
        loss = loss_fn(out, gt)
        if all_ranks_finite(loss):
            engine.backward(loss)
            grad_norm = engine.step()
            ema.update(engine.module)
            bad_in_a_row = 0
            for sums in (since_log, since_eval):
                sums.add(loss.item(), grad_norm, t_data, time.perf_counter() - t0, lq.shape[0] * world)
        else:
            engine.skip()
            bad_in_a_row, skipped = bad_in_a_row + 1, skipped + 1
            if bad_in_a_row > cfg.optim.max_bad_steps:
                raise HiirError(f"loss was NaN/inf for {bad_in_a_row} steps in a row (at step {step}); "
                                "lower optim.lr, raise optim.warmup_steps or check the data")
        step += 1

        if logger and (step % cfg.tracking.log_every == 0 or step == cfg.optim.max_steps):
            logger.metrics({**since_log.summary(), "step": step, "lr": engine.lr(), "skipped_steps": skipped,
                            "peak_mem_mb": _peak_mem_mb(device),
                            **{f"batch_frac/{t}": n / max(sum(mix.values()), 1) for t, n in mix.items()}}, step)
            since_log.reset()
            mix = {}

        if step % cfg.eval.every == 0 or step == cfg.optim.max_steps:
            metrics = {"step": step, "loss": since_eval.mean_loss(), "skipped_steps": skipped}
            since_eval.reset()
            t_eval = time.perf_counter()
            with tempfile.TemporaryDirectory(prefix="hiir-ckpt-") as tmp:
                tmp = Path(tmp)
                _maybe_fault("save", rank, step)
                engine.save(tmp, {"step": step, "bad_in_a_row": bad_in_a_row, "skipped": skipped,
                                   "ema_updates": ema.updates})
                t_val = time.perf_counter()
                weights = _eval_weights(cfg, ema, engine)  # all ranks: a ZeRO-3 gather is a collective
                _maybe_fault("validate", rank, step)
                model = _eval_model(model_cfg, weights, device, world)  # rank 0's weights, on every rank
                metrics.update(_validate(cfg, model, logger, final=step == cfg.optim.max_steps, shard=(rank, world)))
                spent["validation_s"] += time.perf_counter() - t_val
                if rank == 0:
                    _write_rank0_files(tmp, cfg, model_cfg, model, ema, step)
                del model
                if any(tmp.iterdir()):
                    write_integrity(tmp, rank, writers=world if cfg.engine.kind == "deepspeed" else 1)
                    if logger:
                        logger.metrics({k: v for k, v in metrics.items() if k not in ("step", "loss")}, step)
                has_files = any(tmp.iterdir())
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp) if has_files else None)
            spent["checkpoint_s"] += time.perf_counter() - t_eval
            final = metrics
    spent["checkpoint_s"] -= spent["validation_s"]

    if logger:
        logger.stop_system_metrics()
        logger.flush()
    return {"metrics": final, "timeline": {**marks, **spent, "ended": time.time()}}


# ---------------------------------------------------------------- helpers


def _charbonnier(out: torch.Tensor, gt: torch.Tensor, eps: float = 1e-3) -> torch.Tensor:
    return torch.sqrt((out - gt) ** 2 + eps**2).mean()


_losses = {"l1": F.l1_loss, "charbonnier": _charbonnier}


def _seed_step(seed: int, rank: int, step: int, device: torch.device) -> None:
    """Drop-path draws from the device's default generator, which no checkpoint holds. Seeding it from (seed,
    rank, step) before every step makes a step's draws a function of the step alone, like its batch: a run
    resumed from any checkpoint, whatever the validation cadence, draws what the uninterrupted run drew.
    (The generator itself, ~10 us a step; `torch.manual_seed` seeds every backend and costs ~110 us.)"""
    value = int(np.random.SeedSequence([seed, rank, step]).generate_state(1)[0])
    torch.default_generator.manual_seed(value)
    if device.type == "cuda":
        torch.cuda.default_generators[device.index or 0].manual_seed(value)


def _to_tensor(batch: np.ndarray, device: torch.device) -> torch.Tensor:
    """uint8 (B, H, W, C) -> float (B, C, H, W) in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(batch)).to(device).permute(0, 3, 1, 2).float().div_(255)


class _StepSums:
    """Running sums of the steps' loss, grad norm, data wait, step time and images, since the last reset."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.n = 0
        self.loss = self.grad = self.data = self.time = self.images = 0.0

    def add(self, loss, grad, t_data, t_step, images) -> None:
        self.n += 1
        self.loss += loss
        self.grad += grad
        self.data += t_data
        self.time += t_step
        self.images += images

    def summary(self) -> dict[str, float]:
        n = max(self.n, 1)
        return {"loss": self.loss / n, "grad_norm": self.grad / n, "step_time_s": self.time / n,
                "data_wait_frac": self.data / max(self.time, 1e-9), "images_per_s": self.images / max(self.time, 1e-9)}

    def mean_loss(self) -> float:
        return self.loss / max(self.n, 1)


def _worker_nodes(world: int) -> str:
    """Where the ranks run, "rank0=<Ray node id>,rank1=<id>,...", gathered from every rank once at start-up.
    (MLflow keeps tag values up to 8,000 characters: ~120 ranks.)"""
    nodes = [ray.get_runtime_context().get_node_id()] * world
    if world > 1:
        dist.all_gather_object(nodes, nodes[0])
    return ",".join(f"rank{r}={node}" for r, node in enumerate(nodes))


def _peak_mem_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def _eval_weights(cfg, ema, engine) -> dict[str, torch.Tensor] | None:
    """Rank 0 gets the weights to validate and export: the EMA, or the raw weights when it is off."""
    if cfg.optim.ema_decay > 0:
        return ema.state_dict() if ema.keep else None
    with engine.gathered():
        return {k: v.detach().float().cpu().clone() for k, v in engine.module.state_dict().items()}


def _eval_model(model_cfg, weights: dict[str, torch.Tensor] | None, device: torch.device, world: int):
    """A fresh fp32 copy on the training device (a GPU run validates on its GPUs). Rank 0 holds the
    weights (the EMA); it broadcasts them, so that every rank can score its share of the val images."""
    with torch.random.fork_rng(devices=[]):  # its throwaway init must not shift the training's random stream
        model = build(model_cfg)
    if weights is not None:
        model.load_state_dict(weights, strict=False)  # EMA holds parameters; buffers are recomputed
    model = model.to(device).eval()
    if world > 1:  # one flat collective, not one per tensor
        flat = torch.nn.utils.parameters_to_vector(model.parameters())
        dist.broadcast(flat, src=0)
        torch.nn.utils.vector_to_parameters(flat, model.parameters())
    return model


def _validate(cfg, model, logger, *, final: bool, shard: tuple[int, int]) -> dict[str, float]:
    scores = evaluate_datasets(model, cfg.data.val, tasks=val_tasks(cfg.data), max_images=cfg.eval.max_images,
                               tile=cfg.eval.tile, overlap=cfg.eval.tile_overlap,
                               self_ensemble=cfg.eval.self_ensemble and final,
                               samples=cfg.tracking.sample_images if final else 0, shard=shard)
    if logger and final:
        for name, strip in scores.strips:
            logger.image(strip, f"samples/{name}.png")
        logger.json_artifact(scores.per_image, tracking.VAL_IMAGES)  # the report pairs seeds by image
    return scores.metrics


def _write_rank0_files(tmp: Path, cfg, model_cfg, model, ema, step: int) -> None:
    """The weights and config travel in every checkpoint; the final one doubles as the export."""
    save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(tmp / "model.safetensors"))
    if ema.keep:
        save_file({k: v.contiguous() for k, v in ema.state_dict().items()}, str(tmp / "ema.safetensors"))
    (tmp / "model.json").write_text(json.dumps(dataclasses.asdict(model_cfg), indent=1))
    (tmp / "train_config.json").write_text(json.dumps(cfg.to_dict(), indent=1))
    (tmp / "meta.json").write_text(json.dumps({"step": step, "engine": cfg.engine.kind}))


def _restore_latest_good(checkpoint, engine, ema) -> tuple[int, dict[str, Any], list[str]]:
    """Load the newest checkpoint that verifies whole; every rank reaches the same verdict."""
    skipped = []
    for ckpt in candidates(checkpoint):
        with ckpt.as_directory() as d:
            try:
                verify(Path(d))
            except HiirError as exc:
                warnings.warn(f"{exc}; trying the previous checkpoint", stacklevel=1)
                skipped.append(Path(ckpt.path).name)
                continue
            state = engine.load(Path(d))
            if ema.keep and (Path(d) / "ema.safetensors").exists():
                ema.load_state_dict(load_file(str(Path(d) / "ema.safetensors")))
            return int(state["step"]), state, skipped
    raise HiirError(f"no usable checkpoint among {', '.join(skipped)}; start a new run name or repair storage")


def _maybe_fault(phase: str, rank: int, step: int) -> None:
    """Test hook: kill this worker for real, once, at a chosen phase/rank/step (never set in normal runs).

    Ray Train's controller takes a report in at its next poll of the workers, seconds after `report`
    returns; a kill before that loses the report, and resume falls back to the checkpoint before. So the
    hook first waits until every report of this worker is registered (and the run's snapshot written):
    a resume then starts from the last checkpoint reported before the kill."""
    faults = [f.split(":") for f in os.environ.get(FAULT_ENV, "").split(";") if f]
    marker = next((m for p, r, s, m in faults if (p, int(r), int(s)) == (phase, rank, step)), None)
    if marker is None or os.path.exists(marker):
        return

    t0 = time.monotonic()
    ray.train.get_all_reported_checkpoints(ray.train.CheckpointConsistencyMode.COMMITTED, timeout_s=FAULT_WAIT_S)
    if time.monotonic() - t0 >= FAULT_WAIT_S:  # it returns at the deadline without saying so
        raise RuntimeError(f"{FAULT_ENV}: Ray Train did not register this worker's reports in {FAULT_WAIT_S:g} s")
    Path(marker).write_text(f"killed {phase} rank {rank} step {step}\n")
    os.kill(os.getpid(), signal.SIGKILL)
