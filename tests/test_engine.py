"""Engine and EMA choices that differ between a CPU and a GPU run, checked without a GPU."""
from __future__ import annotations

from contextlib import contextmanager

import torch

from hiir.models import build
from hiir.platform.config import load_config
from hiir.platform.train.ema import EMA
from hiir.platform.train.engine import deepspeed_config


def _zero3(use_gpu: bool) -> dict:
    cfg = load_config({"engine": {"kind": "deepspeed", "zero_stage": 3}, "scaling": {"use_gpu": use_gpu}})
    return deepspeed_config(cfg, bf16=use_gpu)["zero_optimization"]


def test_zero3_partitions_every_tensor_on_cpu_but_keeps_deepspeeds_default_on_gpu():
    assert _zero3(use_gpu=False)["stage3_param_persistence_threshold"] == 0
    assert "stage3_param_persistence_threshold" not in _zero3(use_gpu=True)


def test_ema_off_never_enters_the_gather_collective():
    entered = []

    @contextmanager
    def gathered():
        entered.append(1)
        yield

    model = build("tiny_x2")
    for decay, keep, expected in ((0.0, False, 0), (0.0, True, 0), (0.999, False, 3), (0.999, True, 3)):
        entered.clear()
        ema = EMA(model, decay, keep=keep, gathered=gathered)
        ema.update(model)
        ema.update(model)
        assert len(entered) == expected, (decay, keep)  # every rank alike: the init snapshot + each update
        assert bool(ema.shadow) == (keep and decay > 0)


def test_ema_follows_the_weights_with_warmed_up_decay():
    model = build("tiny_x2")
    ema = EMA(model, 0.999, keep=True)
    before = {k: v.clone() for k, v in ema.shadow.items()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    ema.update(model)  # decay min(0.999, 2/11): the shadow moves 9/11 of the way
    name, p = next(iter(model.named_parameters()))
    assert torch.allclose(ema.shadow[name], before[name] + 9 / 11, atol=1e-6)
    assert ema.state_dict()[name].device.type == "cpu"


DS_BF16_SCRIPT = """
import torch, torch.nn.functional as F
from hiir.models import build
from hiir.platform.config import load_config
from hiir.platform.train.engine import make_engine
cfg = load_config({"model": {"preset": "tiny_x2"}, "data": {"batch_size": 2, "lq_patch": 16},
                   "engine": {"kind": "deepspeed", "zero_stage": 2, "precision": "bf16"}})
engine = make_engine(cfg, build(cfg.resolved_model), torch.device("cpu"), 0)
seen = set()
for m in engine.module.modules():
    if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d)):
        m.register_forward_hook(lambda m, i, o: seen.add(str(o.dtype)))
out = engine.forward(torch.rand(2, 3, 16, 16))
engine.backward(out.float().mean())
engine.step()
print(sorted(seen), sorted({str(p.dtype) for p in engine.module.parameters()}))
"""


def test_deepspeed_bf16_is_autocast_like_ddp(run_in_one_process_world):
    # matmuls and convs in bf16, the weights (and so the residual adds, norms and softmax) in fp32
    out = run_in_one_process_world(DS_BF16_SCRIPT, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().splitlines()[-1] == "['torch.bfloat16'] ['torch.float32']"


DS_STAGE0_SCRIPT = """
import torch, torch.nn.functional as F
from hiir.models import build
from hiir.platform.config import load_config
from hiir.platform.train.engine import make_engine
runs = {}
for stage in (0, 2):
    cfg = load_config({"model": {"preset": "tiny_x2"}, "data": {"batch_size": 2, "lq_patch": 16},
                       "optim": {"lr": 1e-3, "grad_clip": 0.05}, "engine": {"kind": "deepspeed", "zero_stage": stage}})
    torch.manual_seed(0)
    engine = make_engine(cfg, build(cfg.resolved_model), torch.device("cpu"), 0)
    g, norms = torch.Generator().manual_seed(1), []
    for _ in range(3):
        x, y = torch.rand(2, 3, 16, 16, generator=g), torch.rand(2, 3, 32, 32, generator=g)
        engine.backward(F.l1_loss(engine.forward(x).float(), y))
        norms.append(engine.step())
    runs[stage] = norms, torch.cat([p.detach().flatten() for p in engine.module.parameters()])
(n0, w0), (n2, w2) = runs[0], runs[2]
print(min(n0), max(abs(a - b) / b for a, b in zip(n0, n2)), float((w0 - w2).abs().max()))
"""


def test_deepspeed_stage0_clips_and_steps_as_zero2_does(run_in_one_process_world):
    # Stage 0 (the demo's: one worker has nothing to shard) clips the whole gradients itself and reports
    # their norm; ZeRO-2 clips its partitions. Same norms, clipping active, same weights after 3 steps.
    out = run_in_one_process_world(DS_STAGE0_SCRIPT, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    smallest, norm_gap, weight_gap = map(float, out.stdout.strip().splitlines()[-1].split())
    assert smallest > 0.05  # above optim.grad_clip: every step was clipped
    assert norm_gap < 1e-4 and weight_gap < 1e-5
