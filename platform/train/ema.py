"""Exponential moving average of the weights (BasicSR's `net_g_ema`, decay 0.999).

Early on, the decay is warmed up as in timm's ModelEmaV3: min(decay, (1 + n) / (10 + n)) after n
updates, so a short run's EMA is not stuck near the random initialisation.

The shadow lives on rank 0 only, in fp32 on the parameters' device (one fused `_foreach_lerp_` per
step, no host copy), and moves to the CPU only when saved. Under ZeRO-3 each parameter is a shard, so the
engine supplies a `gathered()` context that materialises full parameters on every rank (a collective:
all ranks enter it) before rank 0 reads them.
"""
from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext

import torch
from torch import nn


class EMA:
    def __init__(self, module: nn.Module, decay: float, *, keep: bool,
                 gathered: Callable[[], AbstractContextManager] = nullcontext) -> None:
        self.decay, self.keep, self.gathered = decay, keep, gathered
        self.shadow: dict[str, torch.Tensor] = {}
        self.updates = 0
        if decay <= 0:
            return  # EMA off on every rank alike: no gather at all
        # The engines keep these parameter objects for the whole run (ZeRO repoints their data, and gathers
        # under ZeRO-3 fill them in place): listed once, not by walking the module tree at every step.
        self._module, self._params = module, [p for _, p in _params(module)]
        with self.gathered():
            if keep:
                self.shadow = {k: v.detach().float().clone() for k, v in _params(module)}
        self._targets = list(self.shadow.values())

    @torch.no_grad()
    def update(self, module: nn.Module) -> None:
        if self.decay <= 0:
            return
        with self.gathered():  # every rank enters: the gather is a collective
            if not self.keep:
                return
            self.updates += 1
            decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
            params = self._params if module is self._module else [p for _, p in _params(module)]
            if any(p.dtype != torch.float32 for p in params):
                params = [p.float() for p in params]
            torch._foreach_lerp_(self._targets, params, 1.0 - decay)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v.cpu() for k, v in self.shadow.items()}  # `updates` travels in the checkpoint's client state

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        missing = set(self.shadow) - set(state)
        if self.keep and missing:
            raise KeyError(f"EMA state lacks {sorted(missing)[:3]}")
        if self.keep:
            self.shadow = {k: state[k].to(v.device, torch.float32).clone() for k, v in self.shadow.items()}
            self._targets = list(self.shadow.values())


def _params(module: nn.Module):
    # Buffers are recomputable (persistent=False) or tracked exactly; only parameters are averaged.
    return [(k, v) for k, v in module.named_parameters()]
