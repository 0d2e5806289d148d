"""μP: each parameter's role and multipliers come from its shape against the base model's (two families);
the init is the standard draw rescaled, readouts to std ~ 1/fan_in; at the base width μP is the standard model,
its LRs and its losses (DDP and ZeRO-2); `standard` is today's model and optimizer, unchanged; the coordinate
check is flat under μP and grows under standard (through the CLI, which saves its slopes); DeepSpeed ZeRO-2 and
DDP resume a μP run with the same groups and the same losses (the bare engines in one subprocess: no Ray)."""
from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner

from hiir.models import FAMILIES, PRESETS, build, solve
from hiir.models.flows import DotSimilarity
from hiir.models.mup import MUP_RULES_VERSION, base_config, describe_groups, param_groups, roles, scalings
from hiir.platform import tracking
from hiir.platform.cli import cli
from hiir.platform.config import load_config
from hiir.platform.errors import HiirError
from hiir.platform.train.engine import _param_groups, make_engine
from hiir.platform.train.fit import _start_mlflow_run

LR, WD, BASE = 1e-3, 0.1, 32


def _tiny(width_params: str, **overrides):
    """A tiny-family config at a parameter count (0.063M is C 16, 0.119M C 32, 0.327M C 64)."""
    return solve("tiny", width_params, **overrides).config


def _at(family: str, width: int, base: int):
    fam = FAMILIES[family]
    return fam.shape(fam.base, width, fam.depths[0]).replace(parametrization="mup", mup_base_dim=base)


def _meta(cfg):
    with torch.device("meta"):
        return build(cfg)


def _by_name(model, groups) -> dict[str, dict]:
    name_of = {id(p): n for n, p in model.named_parameters()}
    return {name_of[id(p)]: {k: v for k, v in g.items() if k != "params"} for g in groups for p in g["params"]}


# (family, width, base width) -> parameters (name suffix) and the role their shapes give them there
EXPECTED = {
    ("tiny", 64, 32): {"l1.qkv.weight": "hidden", "proj.weight": "hidden", "ffn.fc1.weight": "hidden",
                       "ffn.fc2.weight": "hidden", "stage_conv.body.0.weight": "hidden", "conv_first.weight": "input",
                       "ffn.dwconv.weight": "input", "norm_attn.weight": "input", "l1.qkv.bias": "input",
                       "l1.cpb.mlp.2.weight": "input",  # hidden 64 -> heads 1 -> 2
                       "l1.cpb.mlp.0.weight": "standard", "head.conv_before.0.weight": "readout",
                       "head.conv_before.0.bias": "standard", "head.upsample.0.weight": "standard",
                       "head.conv_last.weight": "standard"},
    ("b", 90, 180): {"l1.qkv.weight": "hidden", "conv_first.weight": "input", "ffn.dwconv.weight": "input",
                     "l1.cpb.mlp.0.weight": "input",     # 2 -> cpb hidden 256 (512 at B)
                     "l1.cpb.mlp.2.weight": "hidden",    # 256 -> 3 heads (512 -> 6 at B)
                     "head.conv_before.0.weight": "readout", "head.upsample.0.weight": "standard"},  # upsampler 64
    ("b", 256, 180): {"l1.qkv.weight": "hidden", "stage_conv.body.0.weight": "hidden", "conv_first.weight": "input",
                      "l1.cpb.mlp.0.weight": "standard", "l1.cpb.mlp.2.weight": "input",  # 512 -> 8 heads (6 at B)
                      "head.conv_before.0.weight": "readout", "head.conv_last.weight": "standard"},
}


@pytest.mark.parametrize("family, width, base", list(EXPECTED))
def test_every_parameters_role_and_multipliers_come_from_its_shapes(family, width, base):
    """Two widths built independently: each parameter's role is what its fan-in (dims 1..) and fan-out (dim 0)
    do between them, its LR multiplier its own fan-in ratio's inverse for hidden and readout, 1 otherwise."""
    model, at_base = _meta(_at(family, width, base)), _meta(_at(family, base, base))
    assert base_config(model.config) == at_base.config
    base_shapes = {n: p.shape for n, p in at_base.named_parameters()}
    groups = _by_name(model, param_groups(model, LR, WD))
    named = dict(model.named_parameters())
    assert set(groups) == set(named) == set(base_shapes)  # every parameter in exactly one group
    expected_roles = {}
    for name, p in named.items():
        shape, b = p.shape, base_shapes[name]
        fan_in, base_in = (math.prod(shape[1:]), math.prod(b[1:])) if p.ndim >= 2 else (1, 1)
        in_moves, out_moves = fan_in != base_in, shape[:1] != b[:1]
        expected_roles[name] = {(True, True): "hidden", (True, False): "readout", (False, True): "input",
                                (False, False): "standard"}[in_moves, out_moves]
        scale = base_in / fan_in if in_moves else 1.0
        assert groups[name]["lr"] == pytest.approx(LR * scale) and groups[name]["lr_scale"] == pytest.approx(scale)
        if groups[name]["weight_decay"]:  # decoupled decay: lr * wd stays the standard one
            assert groups[name]["lr"] * groups[name]["weight_decay"] == pytest.approx(LR * WD), name
    assert roles(model) == expected_roles
    for suffix, role in EXPECTED[family, width, base].items():  # what the shapes mean, named
        hits = [n for n in named if n.endswith(suffix)]
        assert hits and {expected_roles[n] for n in hits} == {role}, (suffix, role)
    assert {r["role"] for r in describe_groups(model)} >= {"hidden", "readout", "input"}


def test_the_engine_gets_the_groups_and_reports_the_base_lr():
    train = load_config({"model": {"family": "tiny", "params": "0.327M", "parametrization": "mup",
                                   "mup_base_dim": BASE},
                         "optim": {"lr": LR, "weight_decay": WD, "warmup_steps": 0}, "engine": {"kind": "ddp"}})
    assert train.resolved_model.dim == 64
    engine = make_engine(train, build(train.resolved_model), torch.device("cpu"), 0)
    # decayed x1 (the input conv, L3's depthwise, the fixed upsampler and position-bias MLP), decayed x1/2 (hidden,
    # readout), not decayed x1 (biases, norms)
    assert [g["lr"] for g in engine.optimizer.param_groups] == pytest.approx([LR, LR / 2, LR])
    assert [g["weight_decay"] for g in engine.optimizer.param_groups] == pytest.approx([WD, 2 * WD, 0.0])
    assert engine.lr() == pytest.approx(LR)


def test_mup_init_is_the_standard_draw_rescaled_readout_std_1_over_fan_in():
    draws = {}
    for target in ("0.119M", "0.327M"):
        std_cfg = _tiny(target)
        torch.manual_seed(0)
        std = build(std_cfg)
        torch.manual_seed(0)
        mup = build(std_cfg.replace(parametrization="mup", mup_base_dim=BASE))
        sd_std, sd_mup = std.state_dict(), mup.state_dict()
        for name, s in scalings(mup).items():
            assert torch.allclose(sd_mup[name], sd_std[name] * s.init, rtol=1e-6, atol=0), (name, s)
        draws[std_cfg.dim] = sd_mup
    # against the base width, C 64 doubles every fan-in that moves: the table's stds, measured on the weights
    ratio = {n: draws[64][n].std().item() / draws[32][n].std().item()
             for n in ("head.conv_before.0.weight", "stages.0.layers.0.l1.qkv.weight", "stage_conv.body.0.weight")}
    assert ratio["head.conv_before.0.weight"] == pytest.approx(0.5, rel=0.05)  # readout: std ~ 1/fan_in
    assert ratio["stages.0.layers.0.l1.qkv.weight"] == pytest.approx(2**-0.5, rel=0.05)  # hidden Linear
    assert ratio["stage_conv.body.0.weight"] == pytest.approx(2**-0.5, rel=0.05)  # hidden conv (as PyTorch's)
    def biases(sd):  # the stage-end convs' biases keep the base model's std (PyTorch's would shrink by 1/sqrt 2)
        return torch.cat([v for k, v in sd.items() if k.endswith("stage_conv.body.0.bias")])

    assert biases(draws[64]).std().item() / biases(draws[32]).std().item() == pytest.approx(1.0, rel=0.15)


def test_dot_attention_scale_is_sqrt_d_base_over_d():
    for width, scale in ((16, 16**0.5 / 8), (32, None), (64, None)):  # q/k head width 8, 16, 16 (2 heads); base 16
        model = _meta(_at("tiny", width, BASE))
        dots = [m for m in model.modules() if isinstance(m, DotSimilarity)]
        assert dots and {d.scale for d in dots} == {scale}, width


def test_at_the_base_width_mup_is_the_standard_model_with_its_lrs():
    for cfg in (_tiny("0.119M"), PRESETS["tiny_x2"], _tiny("0.119M", attention="cosine", scale=4)):
        torch.manual_seed(0)
        std = build(cfg)
        torch.manual_seed(0)
        mup = build(cfg.replace(parametrization="mup", mup_base_dim=cfg.dim))
        assert all(torch.equal(a, b) for a, b in zip(std.state_dict().values(), mup.state_dict().values()))
        assert set(roles(mup).values()) == {"standard"}
        assert all(m.scale is None for m in mup.modules() if isinstance(m, DotSimilarity))
        std_lr = {n: {"lr": LR, "weight_decay": g["weight_decay"]}
                  for n, g in _by_name(std, _param_groups(std, WD, LR)).items()}
        mup_lr = {n: {"lr": g["lr"], "weight_decay": g["weight_decay"]}
                  for n, g in _by_name(mup, _param_groups(mup, WD, LR)).items()}
        assert mup_lr == std_lr


def test_a_mup_run_is_tagged_with_its_rules_version(tmp_path):
    """What --transfer-from reads to refuse LRs made under other μP rules (tests/test_transfer.py)."""
    uri = tracking.default_tracking_uri(tmp_path)
    for parametrization in ("mup", "standard"):
        cfg = load_config({"name": parametrization, "model": {"preset": "tiny_x2", "parametrization": parametrization}})
        run = tracking.Store(uri).get_run(_start_mlflow_run(cfg, uri, tmp_path, None, {}, {}))
        assert run.data.tags.get(tracking.MUP_RULES_TAG) == (str(MUP_RULES_VERSION) if parametrization == "mup"
                                                              else None)


BASE_WIDTH_SCRIPT = """
import json, torch, torch.nn.functional as F
from hiir.models import build
from hiir.platform.config import load_config
from hiir.platform.train.engine import make_engine

def losses(kind, parametrization):
    cfg = load_config({"model": {"family": "tiny", "params": "0.119M", "parametrization": parametrization,
                                 "mup_base_dim": 32},
                       "data": {"batch_size": 2, "lq_patch": 8},
                       "optim": {"lr": 2e-3, "weight_decay": 0.01, "warmup_steps": 3, "max_steps": 20},
                       "engine": {"kind": kind, "zero_stage": 2}})
    torch.manual_seed(0)
    e = make_engine(cfg, build(cfg.resolved_model), torch.device("cpu"), 0)
    out = []
    for i in range(20):
        g = torch.Generator().manual_seed(i)
        x, y = torch.rand(2, 3, 8, 8, generator=g), torch.rand(2, 3, 16, 16, generator=g)
        loss = F.l1_loss(e.forward(x).float(), y)
        e.backward(loss)
        e.step()
        out.append(loss.item())
    return {"losses": out, "group_lrs": [g["lr"] for g in e.scheduler.optimizer.param_groups]}

print("RESULT " + json.dumps({k: {p: losses(k, p) for p in ("standard", "mup")} for k in ("ddp", "deepspeed")}))
"""


def test_at_the_base_width_mup_trains_as_standard_on_ddp_and_zero2(run_in_one_process_world):
    proc = run_in_one_process_world(BASE_WIDTH_SCRIPT, timeout=300, OMP_NUM_THREADS="1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))
    for kind, r in json.loads(line[len("RESULT "):]).items():
        assert r["mup"]["losses"] == pytest.approx(r["standard"]["losses"], rel=1e-6, abs=0), kind
        assert r["mup"]["group_lrs"] == pytest.approx(r["standard"]["group_lrs"]), kind
        assert r["standard"]["losses"][-1] < r["standard"]["losses"][0], kind  # it trains


def test_standard_is_todays_model_and_optimizer():
    """With the field absent or `standard`: the same init, the two groups of before (decayed, then not, in
    parameter order, no per-group LR), and the engine's steps equal a plain AdamW loop over those groups."""
    raw = {"model": {"preset": "tiny_x2"}, "data": {"batch_size": 2, "lq_patch": 16},
           "optim": {"lr": 2e-3, "weight_decay": WD, "warmup_steps": 0, "schedule": "constant", "grad_clip": 0.0},
           "engine": {"kind": "ddp"}}
    explicit = load_config({**raw, "model": {"preset": "tiny_x2", "parametrization": "standard"}})
    absent = load_config(raw)
    assert absent.resolved_model == explicit.resolved_model
    torch.manual_seed(0)
    model = build(absent.resolved_model)
    torch.manual_seed(0)
    twin = build(explicit.resolved_model)
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
    plain = build(absent.resolved_model)
    opt = torch.optim.AdamW([{"params": [p for n, p in plain.named_parameters() if p.ndim > 1 and n not in skip],
                              "weight_decay": WD},
                             {"params": [p for n, p in plain.named_parameters() if p.ndim <= 1 or n in skip],
                              "weight_decay": 0.0}], lr=2e-3, betas=(0.9, 0.99), fused=True)
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


@pytest.mark.slow
def test_coord_check_cli_saves_slopes_flat_under_mup_and_growing_under_standard(tmp_path):
    out = tmp_path / "cc"  # the check's defaults: tiny's widths 16, 32, 64, 128, 10 steps, 4 seeds
    result = CliRunner().invoke(cli, ["models", "--coord-check", "tiny", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "μP flat" in result.output and "standard grows" in result.output
    data = json.loads((out / "coord_check.json").read_text())
    assert (out / "coord_check.png").stat().st_size > 10_000
    assert data["widths"] == [16, 32, 64, 128] and data["steps"] == 10 and data["seeds"] == 4
    mup = {k: v["slope"] for k, v in data["parametrizations"]["mup"]["kinds"].items()}
    std = {k: v["slope"] for k, v in data["parametrizations"]["standard"]["kinds"].items()}
    assert {"cpb_hidden", "cpb_logits", "readout", "upsampler", "output"} <= set(mup)  # every kind of layer
    # measured at these settings: μP within ±0.21 (position-bias logits -0.21, upsampler -0.20), standard median ~1.0
    assert max(abs(s) for s in mup.values()) <= 0.25, mup
    assert data["summary"]["standard"]["median_slope"] > 0.6, std
    for kind in ("qkv", "proj", "fc1", "fc2", "readout"):  # the hidden layers and the readout, one by one
        assert std[kind] > 0.7, (kind, std[kind])
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
    return make_engine(cfg, build(cfg.resolved_model), torch.device("cpu"), 0)

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
        # tiny_x2 is C 32 at base 16 (every fan-in that moves doubles): LR multipliers 1 and 1/2
        assert sorted({g["lr_scale"] for g in r["saved"]}) == [0.5, 1.0], kind
        assert r["restored"] == r["saved"], kind                       # the same groups, LRs mid-schedule
        assert r["stored_scales"] == [g["lr_scale"] for g in r["saved"]], kind  # and the checkpoint holds them
        assert r["resumed"] == pytest.approx(r["ref"], rel=1e-5), kind  # the same loss curve
        assert r["lr"][0] == pytest.approx(r["lr"][1]) and r["lr"][0] <= 2e-3, kind
        assert r["ref"][-1] < r["first"][0], kind  # it trains
