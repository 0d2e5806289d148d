"""Engines behind one small interface: DeepSpeed ZeRO 0-3, or plain DDP.

The training loop never asks which engine it has. `deepspeed` is imported only inside its engine,
so the driver and the CLI never pay for it.

`engine.compile: true` runs the training forward through `torch.compile` (off by default: on CPU it paid
1.10x on `b_x2_conv3` after ~5 minutes of compiling). DeepSpeed compiles its module in place
(`DeepSpeedEngine.compile`); DDP compiles its wrapper, so that DDP's optimizer splits the graph at the
gradient buckets. Parameter names, checkpoints and the EMA are the same either way; validation builds
its own eager copy.

Checkpoint layout (one directory per report, merged by Ray across ranks):
- DeepSpeed: every rank writes its shard (`state/…`, DeepSpeed's own layout);
- DDP: rank 0 writes `model.safetensors` and `optim.pt` (loaded with `weights_only=True`).
"""
from __future__ import annotations

import json
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file
from torch import nn

from hiir.models.mup import param_groups
from hiir.platform.config import TrainConfig
from hiir.platform.train.schedule import lr_factor

DS_TAG = "state"


class Engine:
    """What the loop needs: forward, backward, step, skip, save/load, the bare module, a gather context."""

    module: nn.Module
    rank: int

    def forward(self, x: torch.Tensor) -> torch.Tensor: ...
    def backward(self, loss: torch.Tensor) -> None: ...
    def step(self) -> float: ...            # returns the global grad norm before clipping
    def skip(self) -> None: ...             # drop this step's update but keep the schedule moving
    def lr(self) -> float: ...
    def save(self, directory: Path, client_state: dict[str, Any]) -> None: ...
    def load(self, directory: Path) -> dict[str, Any]: ...

    def gathered(self) -> AbstractContextManager:
        return nullcontext()

    @property
    def is_rank0(self) -> bool:
        return self.rank == 0


def make_engine(cfg: TrainConfig, model: nn.Module, device: torch.device, rank: int) -> Engine:
    optimizer = make_optimizer(cfg, model)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, cfg.optim))
    bf16 = cfg.engine.precision == "bf16" or (cfg.engine.precision == "auto" and device.type == "cuda"
                                              and torch.cuda.is_bf16_supported())  # pre-Ampere: fp32
    engines = {"deepspeed": DeepSpeedEngine, "ddp": DDPEngine}
    return engines[cfg.engine.kind](cfg, model, optimizer, scheduler, device, rank, bf16)


def make_optimizer(cfg: TrainConfig, model: nn.Module, *, fused: bool = True) -> torch.optim.AdamW:
    """torch's AdamW on the model's parameter groups, fused: one kernel for every tensor. Unfused, AdamW on a
    CPU loops over the tensors in Python (torch has no CPU foreach default): ~4.5 ms a step for the demo's
    104 tensors, ~1 ms fused (bench/RESULTS.md, "fused AdamW"). The same update up to float rounding.
    (`fused=False` is torch's default, which `bench/optimizer_step.py` compares against.)"""
    return torch.optim.AdamW(_param_groups(model, cfg.optim.weight_decay, cfg.optim.lr), lr=cfg.optim.lr,
                             betas=cfg.optim.betas, fused=fused)


def _param_groups(model: nn.Module, weight_decay: float, lr: float) -> list[dict]:
    """Decayed and not decayed; under μP also split by learning-rate multiplier (`hiir.models.mup`), each
    group with its own `lr`, which the LR schedule scales (LambdaLR scales every group's initial lr)."""
    if getattr(getattr(model, "config", None), "parametrization", "standard") == "mup":
        return param_groups(model, lr, weight_decay)
    skip = model.no_weight_decay() if hasattr(model, "no_weight_decay") else set()
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if p.ndim <= 1 or name in skip else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def deepspeed_config(cfg: TrainConfig, bf16: bool) -> dict[str, Any]:
    """Generated from our config; the optimizer is the client torch AdamW (no JIT-compiled op). ZeRO 1-3 clip
    the gradients they partition; at stage 0 `DeepSpeedEngine.step` clips the whole ones (see there)."""
    zero: dict[str, Any] = {"stage": cfg.engine.zero_stage}
    if cfg.engine.zero_stage == 3 and not cfg.scaling.use_gpu:
        # On CPU (the tests' tiny models) partition even tiny tensors, so that every gather path runs. On
        # GPUs keep DeepSpeed's default (1e5): most of Hi-IR's ~3,000 tensors are smaller, and gathering
        # each one per step would cost thousands of small collectives.
        zero["stage3_param_persistence_threshold"] = 0
    return {
        "train_micro_batch_size_per_gpu": cfg.data.batch_size,
        "gradient_accumulation_steps": 1,
        "gradient_clipping": cfg.optim.grad_clip if cfg.engine.zero_stage > 0 else 0.0,
        "zero_optimization": zero,
        # bf16 as torch autocast, as the DDP engine does: fp32 weights, residual stream and loss, matmuls
        # and convs in bf16. DeepSpeed's "bf16" mode would cast the whole network and its input to bf16,
        # whose 8-bit mantissa is one grey level near white: too coarse for restoration residuals.
        "torch_autocast": {"enabled": bf16, "dtype": "bfloat16"},
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }


class DeepSpeedEngine(Engine):
    def __init__(self, cfg, model, optimizer, scheduler, device, rank, bf16):
        import deepspeed  # seconds to import, and it picks its accelerator then: only in a worker that uses it

        self._ds = deepspeed
        self.stage = cfg.engine.zero_stage
        self.engine, _, _, self.scheduler = deepspeed.initialize(
            model=model, optimizer=optimizer, lr_scheduler=scheduler, config=deepspeed_config(cfg, bf16))
        if cfg.engine.compile:
            self.engine.compile()  # the module in place, with the accelerator's backend (inductor)
        self.module, self.rank = self.engine.module, rank
        self.grad_clip, self.params = cfg.optim.grad_clip, list(self.module.parameters())
        if self.stage == 0 and dist.get_world_size() == 1:
            # Stage 0 averages the gradients over the ranks after each backward: with one rank there is
            # nothing to average, and the flatten, gloo call and copy back cost a small model ~5% a step.
            self.engine.enable_backward_allreduce = False

    def forward(self, x):
        return self.engine(x)

    def backward(self, loss):
        self.engine.backward(loss)

    def step(self):
        if self.stage == 0:
            # The gradients are whole and equal on every rank (averaged in backward): clip them as DDP does,
            # in one fused pass. DeepSpeed's own stage-0 clip takes a norm per tensor and an all-reduce, and
            # keeps the norm to itself (`get_global_grad_norm` is None without a ZeRO optimizer).
            norm = torch.nn.utils.clip_grad_norm_(self.params, self.grad_clip if self.grad_clip > 0 else float("inf"),
                                                  foreach=True)
            self.engine.step()  # also steps the LR scheduler
            return float(norm)
        self.engine.step()
        norm = self.engine.get_global_grad_norm()
        return float(norm) if norm is not None else 0.0

    def skip(self):
        self.scheduler.step()

    def lr(self):
        return base_lr(self.scheduler)

    def save(self, directory, client_state):
        self.engine.save_checkpoint(str(directory), tag=DS_TAG, client_state=client_state)

    def load(self, directory):
        path, client_state = self.engine.load_checkpoint(str(directory), tag=DS_TAG)
        if path is None:
            raise FileNotFoundError(f"no DeepSpeed checkpoint under {directory}")
        return client_state or {}

    def gathered(self):
        if self.stage != 3:
            return nullcontext()
        return self._ds.zero.GatheredParameters(list(self.module.parameters()), modifier_rank=None)


class DDPEngine(Engine):
    def __init__(self, cfg, model, optimizer, scheduler, device, rank, bf16):
        self.module, self.rank, self.device = model, rank, device
        distributed = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        ids = [device.index] if device.type == "cuda" else None
        # The buffers are constant (position-bias tables, rebuilt from the config), so never re-broadcast them.
        self.wrapped = (nn.parallel.DistributedDataParallel(model, device_ids=ids, broadcast_buffers=False)
                        if distributed else model)
        if cfg.engine.compile:  # the training forward only: `module` stays eager, its names unchanged
            self.wrapped = torch.compile(self.wrapped)
        self.optimizer, self.scheduler, self.grad_clip = optimizer, scheduler, cfg.optim.grad_clip
        self.autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)

    def forward(self, x):
        with self.autocast:
            return self.wrapped(x)

    def backward(self, loss):
        loss.backward()

    def step(self):
        clip = self.grad_clip if self.grad_clip > 0 else float("inf")
        norm = torch.nn.utils.clip_grad_norm_(self.module.parameters(), clip)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(norm)

    def skip(self):
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()

    def lr(self):
        return base_lr(self.scheduler)

    def save(self, directory, client_state):
        if not self.is_rank0:
            return  # DDP replicas are identical: rank 0 writes, the others report no checkpoint
        save_file({k: v.contiguous() for k, v in self.module.state_dict().items()},
                  str(directory / "model.safetensors"))
        torch.save({"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict()},
                   directory / "optim.pt")
        (directory / "client_state.json").write_text(json.dumps(client_state))

    def load(self, directory):
        self.module.load_state_dict(load_file(str(directory / "model.safetensors"), device=str(self.device)))
        # On the CPU: load_state_dict moves AdamW's moments to the parameters' device but leaves `step`
        # where it was loaded, and a `step` on a GPU costs a host sync per tensor at every step.
        state = torch.load(directory / "optim.pt", map_location="cpu", weights_only=True)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        return json.loads((directory / "client_state.json").read_text())


def base_lr(scheduler) -> float:
    """The schedule's current `optim.lr` value: the first group's LR over its μP multiplier (1 if none)."""
    return float(scheduler.get_last_lr()[0]) / scheduler.optimizer.param_groups[0].get("lr_scale", 1.0)


def all_ranks_finite(loss: torch.Tensor) -> bool:
    """True only if the loss is finite on every rank, so all ranks skip or step together."""
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return bool(torch.isfinite(loss).all())
    ok = torch.isfinite(loss).all().float().reshape(1)
    dist.all_reduce(ok, op=dist.ReduceOp.MIN)
    return bool(ok.item() > 0)
