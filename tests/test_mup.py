"""μP: the parameter groups' learning rates follow the width as `models/mup.py` states; the init is
the standard one rescaled; `standard` is today's model and optimizer, unchanged; the coordinate check is flat
under μP and grows under standard (through the CLI, which saves its slopes); DeepSpeed ZeRO-2 and DDP resume a
μP run with the same groups and the same losses (the bare engines in one subprocess: no Ray)."""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner

from hiir.models import build, solve
from hiir.models.flows import DotSimilarity
from hiir.models.mup import RULES, describe_groups, param_groups, roles
from hiir.platform.cli import cli
from hiir.platform.config import load_config
from hiir.platform.errors import HiirError
from hiir.platform.train.engine import _param_groups, make_engine

LR, WD, BASE = 1e-3, 0.1, 32


def _tiny(width_params: str, **overrides):
    """A tiny-family config at a parameter count (0.119M is C 32, 0.46M is C 64)."""
    return solve("tiny", width_params, **overrides).config


def _by_name(model, groups) -> dict[str, dict]:
    name_of = {id(p): n for n, p in model.named_parameters()}
    return {name_of[id(p)]: {k: v for k, v in g.items() if k != "params"} for g in groups for p in g["params"]}


def test_each_groups_lr_scales_with_width_as_stated():
    per_width = {}
    for target, width in (("0.119M", 32), ("0.46M", 64)):
        cfg = _tiny(target, parametrization="mup", mup_base_dim=BASE)
        assert cfg.dim == width
        model = build(cfg)
        groups = _by_name(model, param_groups(model, LR, WD))
        assert set(groups) == {n for n, _ in model.named_parameters()}  # every parameter in exactly one group
        for name, role in roles(model).items():
            scale = (width / BASE) ** RULES[role].lr  # 1/m for hidden and readout, 1 for the rest
            assert groups[name]["lr"] == pytest.approx(LR * scale), name
            assert groups[name]["lr_scale"] == pytest.approx(scale), name
            if groups[name]["weight_decay"]:  # decoupled decay: lr * wd stays the standard one
                assert groups[name]["lr"] * groups[name]["weight_decay"] == pytest.approx(LR * WD), name
        per_width[width] = (groups, {r["role"]: r["lr_x"] for r in describe_groups(model)}, roles(model))
    (g32, d32, r32), (g64, d64, r64) = per_width[32], per_width[64]
    assert r32 == r64  # the same parameter names in the same roles at both widths
    for name, role in r32.items():  # doubling the width halves hidden and readout LRs, keeps the others
        ratio = g64[name]["lr"] / g32[name]["lr"]
        assert ratio == pytest.approx(0.5 if role in ("hidden", "readout") else 1.0), (name, role)
    assert d32 == {r: 1.0 for r in d32} and d64 == {r: 0.5 if r in ("hidden", "readout") else 1.0 for r in d64}
    assert {"input", "hidden", "readout", "vector", "fixed"} == set(d64)

    # The engine hands the same groups to AdamW, and reports the schedule's optim.lr, not a group's.
    train = load_config({"model": {"family": "tiny", "params": "0.46M", "parametrization": "mup", "mup_base_dim": BASE},
                         "optim": {"lr": LR, "weight_decay": WD, "warmup_steps": 0}, "engine": {"kind": "ddp"}})
    engine = make_engine(train, build(train.model_config()), torch.device("cpu"), 0)
    # decayed x1 (the input conv, L3's depthwise), decayed x1/m (hidden, readout), not decayed x1 (biases, norms)
    assert [g["lr"] for g in engine.optimizer.param_groups] == pytest.approx([LR, LR / 2, LR])
    assert [g["weight_decay"] for g in engine.optimizer.param_groups] == pytest.approx([WD, 2 * WD, 0.0])
    assert engine.lr() == pytest.approx(LR)


def test_mup_init_is_the_standard_draw_rescaled_and_equal_at_the_base_width():
    for target, m in (("0.119M", 1), ("0.46M", 2)):
        std_cfg = _tiny(target)
        torch.manual_seed(0)
        std = build(std_cfg)
        torch.manual_seed(0)
        mup = build(std_cfg.replace(parametrization="mup", mup_base_dim=BASE))
        sd_std, sd_mup = std.state_dict(), mup.state_dict()
        for name, role in roles(mup).items():
            rule = RULES[role]
            rescaled = rule.init and (sd_std[name].ndim == 2 or not rule.init_linear_only)
            expected = sd_std[name] * (m**rule.init if rescaled else 1.0)
            assert torch.allclose(sd_mup[name], expected, rtol=1e-6, atol=0), (name, role)
        if m == 2:  # not vacuous: hidden Linear weights and the readout did move
            assert not torch.equal(sd_std["head.conv_before.0.weight"], sd_mup["head.conv_before.0.weight"])
        dots = [mod for mod in mup.modules() if isinstance(mod, DotSimilarity)]
        assert dots and all(d.per_dim for d in dots)  # logits q.k / d
        assert not any(d.per_dim for d in std.modules() if isinstance(d, DotSimilarity))


def test_standard_is_todays_model_and_optimizer():
    """With the field absent or `standard`: the same init, the two groups of before (decayed, then not, in
    parameter order, no per-group LR), and the engine's steps equal a plain AdamW loop over those groups."""
    raw = {"model": {"preset": "tiny_x2"}, "data": {"batch_size": 2, "lq_patch": 16},
           "optim": {"lr": 2e-3, "weight_decay": WD, "warmup_steps": 0, "schedule": "constant", "grad_clip": 0.0},
           "engine": {"kind": "ddp"}}
    explicit = load_config({**raw, "model": {"preset": "tiny_x2", "parametrization": "standard"}})
    absent = load_config(raw)
    assert absent.model_config() == explicit.model_config()
    torch.manual_seed(0)
    model = build(absent.model_config())
    torch.manual_seed(0)
    twin = build(explicit.model_config())
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), twin.state_dict().values()))

    groups = _param_groups(model, WD, 2e-3)
    skip = model.no_weight_decay()
    decay = [p for n, p in model.named_parameters() if p.ndim > 1 and n not in skip]
    no_decay = [p for n, p in model.named_parameters() if p.ndim <= 1 or n in skip]
    assert [set(g) for g in groups] == [{"params", "weight_decay"}] * 2
    assert [[id(p) for p in g["params"]] for g in groups] == [[id(p) for p in decay], [id(p) for p in no_decay]]
    assert [g["weight_decay"] for g in groups] == [WD, 0.0]

    engine = make_engine(explicit, twin, torch.device("cpu"), 0)
    torch.manual_seed(0)
    plain = build(absent.model_config())
    opt = torch.optim.AdamW([{"params": [p for n, p in plain.named_parameters() if p.ndim > 1 and n not in skip],
                              "weight_decay": WD},
                             {"params": [p for n, p in plain.named_parameters() if p.ndim <= 1 or n in skip],
                              "weight_decay": 0.0}], lr=2e-3, betas=(0.9, 0.99))
    g = torch.Generator().manual_seed(1)
    for _ in range(3):
        x, y = torch.rand(2, 3, 16, 16, generator=g), torch.rand(2, 3, 32, 32, generator=g)
        loss = F.l1_loss(engine.forward(x).float(), y)
        engine.backward(loss)
        engine.step()
        ref = F.l1_loss(plain(x), y)
        ref.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        assert loss.item() == ref.item()
    assert all(torch.equal(a, b) for a, b in zip(twin.state_dict().values(), plain.state_dict().values()))


def test_coord_check_cli_saves_slopes_flat_under_mup_and_growing_under_standard(tmp_path):
    out = tmp_path / "cc"
    args = ["models", "--coord-check", "tiny", *[f"--widths={w}" for w in (16, 32, 64, 128)], "--steps", "10",
            "--seeds", "1", "--out", str(out)]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert "μP flat" in result.output and "standard grows" in result.output
    data = json.loads((out / "coord_check.json").read_text())
    assert (out / "coord_check.png").stat().st_size > 10_000
    assert data["widths"] == [16, 32, 64, 128]
    mup = {k: v["slope"] for k, v in data["parametrizations"]["mup"]["kinds"].items()}
    std = {k: v["slope"] for k, v in data["parametrizations"]["standard"]["kinds"].items()}
    # measured at these settings: μP within ±0.35 (the readout still settling), standard median 0.8-1.0
    assert max(abs(s) for s in mup.values()) < 0.5, mup
    assert data["summary"]["standard"]["median_slope"] > 0.6, std
    for kind in ("qkv", "proj", "fc1", "fc2", "readout"):  # the hidden layers and the readout, one by one
        assert std[kind] > 0.7 and abs(mup[kind]) < 0.4, (kind, std[kind], mup[kind])
    assert abs(std["norm"]) < 0.1 and abs(std["input"]) < 0.1  # what no parametrization changes stays flat


def test_unknown_family_is_one_line():
    result = CliRunner().invoke(cli, ["models", "--coord-check", "nope"])
    assert isinstance(result.exception, HiirError)  # main() prints it as one line, exit code 1
    assert str(result.exception) == "--coord-check nope: unknown family 'nope'; families: b, tiny"


RESUME_SCRIPT = """
import glob, json, tempfile, torch, torch.nn.functional as F
from pathlib import Path
from hiir.models import build
from hiir.platform.config import load_config
from hiir.platform.errors import HiirError
from hiir.platform.train.engine import make_engine

def engine(kind):
    cfg = load_config({"model": {"preset": "tiny_x2", "parametrization": "mup", "mup_base_dim": 16},
                       "data": {"batch_size": 2, "lq_patch": 16},
                       "optim": {"lr": 2e-3, "weight_decay": 0.01, "warmup_steps": 3, "max_steps": 9},
                       "engine": {"kind": kind, "zero_stage": 2}})
    torch.manual_seed(0)
    return make_engine(cfg, build(cfg.model_config()), torch.device("cpu"), 0)

def groups(e):
    return [{"n": sum(p.numel() for p in g["params"]), **{k: g[k] for k in ("lr", "weight_decay", "lr_scale")}}
            for g in e.scheduler.optimizer.param_groups]

def step(e, i):
    g = torch.Generator().manual_seed(i)
    x, y = torch.rand(2, 3, 16, 16, generator=g), torch.rand(2, 3, 32, 32, generator=g)
    loss = F.l1_loss(e.forward(x).float(), y)
    e.backward(loss)
    e.step()
    return loss.item()

out = {}
for kind in ("deepspeed", "ddp"):
    e = engine(kind)
    first = [step(e, i) for i in range(4)]
    with tempfile.TemporaryDirectory() as d:
        e.save(Path(d), {"step": 4})
        saved = groups(e)
        if kind == "deepspeed":
            sd = torch.load(glob.glob(f"{d}/state/*optim_states.pt")[0], weights_only=False)["optimizer_state_dict"]
            stored = sd["base_optimizer_state"]["param_groups"]
        else:
            stored = torch.load(f"{d}/optim.pt", weights_only=True)["optimizer"]["param_groups"]
        ref = [step(e, i) for i in range(4, 8)]
        again = engine(kind)
        again.load(Path(d))
        restored = groups(again)
        resumed = [step(again, i) for i in range(4, 8)]
    out[kind] = {"saved": saved, "restored": restored, "stored_scales": [g.get("lr_scale") for g in stored],
                 "ref": ref, "resumed": resumed, "first": first, "lr": [e.lr(), again.lr()]}
print("RESULT " + json.dumps(out))
"""


def test_zero2_and_ddp_resume_a_mup_run_with_its_groups_and_losses(run_in_one_process_world):
    proc = run_in_one_process_world(RESUME_SCRIPT, timeout=300, OMP_NUM_THREADS="1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))
    for kind, r in json.loads(line[len("RESULT "):]).items():
        # tiny_x2 is C 32 at base 16 (m = 2): groups of LR multiplier 1 and 1/2, decayed and not
        assert sorted({g["lr_scale"] for g in r["saved"]}) == [0.5, 1.0], kind
        assert r["restored"] == r["saved"], kind                       # the same groups, LRs mid-schedule
        assert r["stored_scales"] == [g["lr_scale"] for g in r["saved"]], kind  # and the checkpoint holds them
        assert r["resumed"] == pytest.approx(r["ref"], rel=1e-5), kind  # the same loss curve
        assert r["lr"][0] == pytest.approx(r["lr"][1]) and r["lr"][0] <= 2e-3, kind
        assert r["ref"][-1] < r["first"][0], kind  # it trains
