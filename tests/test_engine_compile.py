"""`engine.compile: true`: a one-layer tiny model trains a few steps through torch.compile on CPU, under the DDP
engine and the DeepSpeed engine, with the same outputs as eager and the same parameter names.

Compiling takes minutes on 2 shared cores (inductor's C++ build), so the test is `slow`."""
from __future__ import annotations

import pytest

SCRIPT = """
import torch, torch.nn.functional as F
from hiir.models import build
from hiir.platform.config import load_config
from hiir.platform.train.engine import make_engine

x, y = torch.rand(2, 3, 16, 16), torch.rand(2, 3, 32, 32)
for kind in ("ddp", "deepspeed"):
    # One stage of one layer: every layer is its own stretch of graph, and one proves what two would.
    cfg = load_config({"model": {"preset": "tiny_x2", "stages": 1, "layers_per_stage": 1},
                       "data": {"batch_size": 2, "lq_patch": 16},
                       "engine": {"kind": kind, "zero_stage": 2, "compile": True}})
    torch.manual_seed(0)
    eager = build(cfg.resolved_model)
    model = build(cfg.resolved_model)
    model.load_state_dict(eager.state_dict())
    engine = make_engine(cfg, model, torch.device("cpu"), 0)
    before = {k: v.clone() for k, v in engine.module.state_dict().items()}
    losses = []
    for step in range(3):
        out = engine.forward(x)
        if step == 0:
            torch.testing.assert_close(out, eager(x), rtol=1e-4, atol=1e-5)
        loss = F.l1_loss(out, y)
        engine.backward(loss)
        engine.step()
        losses.append(loss.item())
    after = engine.module.state_dict()
    assert list(after) == list(eager.state_dict()), "parameter names changed"
    assert all(torch.isfinite(torch.tensor(losses))), losses
    assert any(not torch.equal(before[k], after[k]) for k in before), "no parameter moved"
    print(kind, "ok", losses)
"""


@pytest.mark.slow
def test_tiny_preset_trains_with_compile_under_ddp_and_deepspeed(run_in_one_process_world):
    out = run_in_one_process_world(SCRIPT, timeout=1800)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
    lines = out.stdout.strip().splitlines()
    assert any(line.startswith("ddp ok") for line in lines) and any(line.startswith("deepspeed ok") for line in lines)
