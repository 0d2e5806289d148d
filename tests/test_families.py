"""Size families: the solver hits its targets, lands on the paper's shapes, builds, and the CLI prints it.

Counts are analytic (`count_params`); the meta-device builds here check them against the network.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from hiir.models import FAMILIES, PRESETS, build, count_params, parse_size, solve
from hiir.models.families import format_size
from hiir.platform.cli import cli
from hiir.platform.errors import HiirError

ROOT = Path(__file__).resolve().parents[1]
OVERRIDES = [{}, {"scale": 4}, {"scale": 3, "stage_conv": "conv1"}, {"layout": "v1"}, {"tree_depth": 2},
             {"attention": "cosine", "scale": 1}]


def _log_grid(lo: float, decades: int = 3, per_decade: int = 4) -> list[float]:
    return [lo * 10 ** (i / per_decade) for i in range(decades * per_decade + 1)]


def _meta_count(cfg) -> int:
    with torch.device("meta"):
        return build(cfg).num_params()


# ---------------------------------------------------------------------------------------------
# counting


@pytest.mark.parametrize("name", [n for n, cfg in PRESETS.items() if cfg.arch == "columnar"])
def test_count_params_is_exact_for_every_columnar_preset(name):
    cfg = PRESETS[name]  # every knob of the preset, at 2 stages x 3 layers (odd: v1's last layer is l1)
    short = cfg.replace(stages=2, layers_per_stage=3)
    assert count_params(short) == _meta_count(short)
    if cfg.dim * cfg.stages * cfg.layers_per_stage <= 180 * 36:  # at full depth where that is cheap
        assert count_params(cfg) == _meta_count(cfg)


@pytest.mark.parametrize("overrides", OVERRIDES + [{"layout": "v2", "tree_depth": 4, "qkv_bias": False}])
def test_count_params_is_exact_for_solved_configs(overrides):
    for family, target in (("tiny", "0.1M"), ("tiny", "3M"), ("b", "2M")):
        solved = solve(family, target, **overrides)
        assert solved.achieved == count_params(solved.config) == _meta_count(solved.config), (family, target)


# ---------------------------------------------------------------------------------------------
# the solver


@pytest.mark.parametrize("family, target",
                         [(f, t) for f, fam in FAMILIES.items() for t in _log_grid(fam.params_range[0])])
def test_solver_hits_its_target_within_5_percent_over_three_decades(family, target):
    solved = solve(family, target)
    assert abs(solved.error) <= 0.05, solved.row()
    assert solved.target == round(target) and solved.achieved == count_params(solved.config)


@pytest.mark.parametrize("family", FAMILIES)
def test_solver_within_5_percent_on_a_dense_grid_with_overrides(family):
    for overrides in OVERRIDES:
        lo, hi = FAMILIES[family].params_range
        lo *= 2 if overrides.get("scale", 2) > 2 else 1  # x3/x4 upsamplers are 2x x2's: tiny's floor moves up
        for i in range(61):
            solved = solve(family, lo * (hi / lo) ** (i / 60), **overrides)
            cfg = solved.config
            assert abs(solved.error) <= 0.05, (overrides, solved.row())
            assert 16 <= cfg.dim / cfg.heads <= 64 or (cfg.heads == 1 and cfg.dim <= 96), solved.row()
            assert cfg.dim % cfg.heads == 0 and (cfg.dim // 2) % cfg.heads == 0


def test_b_lands_on_the_paper_shapes_at_their_counts():
    def shape(name, **overrides):
        return solve("b", PRESETS[name].paper_params * 1e6, **overrides).config

    assert shape("b_x2_conv3") == PRESETS["b_x2_conv3"].replace(paper_params=None)  # C 180, 6x6, 6 heads
    assert shape("xl_x2") == PRESETS["xl_x2"].replace(paper_params=None)  # C 256, 12x12, 8 heads
    for name, overrides in [("l_x3_conv3", {"scale": 3}), ("l_x3_conv1", {"scale": 3, "stage_conv": "conv1"}),
                            ("l_x4_linear", {"scale": 4, "stage_conv": "linear"}),
                            ("b_x3_conv1", {"scale": 3, "stage_conv": "conv1"})]:
        assert shape(name, **overrides) == PRESETS[name].replace(paper_params=None), name
    # the family's own stage ends (conv3, x2) at L's count: L's depth, C next to 180
    cfg = shape("l_x3_conv1")
    assert (cfg.stages, cfg.layers_per_stage) == (12, 12) and abs(cfg.dim - 180) <= 8


def test_b_grows_by_width_then_depth_then_width():
    small, b, mid, l_, big = (solve("b", t).config for t in ("2M", "14.7M", "30M", "56M", "400M"))
    assert small.stages == b.stages == 6 and small.dim < b.dim == 180
    assert 6 < mid.stages < 12 and abs(mid.dim - 180) < 15
    assert l_.stages == big.stages == 12 and l_.dim == 180 < big.dim
    assert small.cpb_hidden < 512 and small.upsampler_dim <= 64 and b.cpb_hidden == big.cpb_hidden == 512
    assert {c.window for c in (small, b, big)} == {8} and {c.patch for c in (small, b, big)} == {64}


@pytest.mark.parametrize("target", ["0.05M", "0.2M", "1M"])
def test_tiny_family_builds_and_runs(target):
    solved = solve("tiny", target)
    model = build(solved.config).eval()
    assert model.num_params() == solved.achieved
    with torch.no_grad():
        out = model(torch.rand(1, 3, 12, 10))
    assert out.shape == (1, 3, 24, 20) and torch.isfinite(out).all()


def test_tiny_family_passes_its_anchor():
    # tiny_x2 itself runs 2 heads of 16; the family's rule gives one head of 32 (512 parameters fewer)
    cfg = solve("tiny", count_params(PRESETS["tiny_x2"])).config
    assert cfg == PRESETS["tiny_x2"].replace(heads=1)


def test_tiny_keeps_its_position_bias_and_upsampler_at_every_width():
    # fixed, so μP gives each of their tensors one role across a transfer study's widths (models/families.py)
    for target in ("0.05M", "0.119M", "0.4M", "5M"):
        cfg = solve("tiny", target).config
        assert (cfg.cpb_hidden, cfg.upsampler_dim) == (64, 32), target
    # the demo's sizes (studies/smoke.yaml): C 10, 28, 47, 72
    assert [solve("tiny", t).config.dim for t in ("0.05M", "0.1M", "0.2M", "0.4M")] == [10, 28, 47, 72]


@pytest.mark.parametrize("overrides", OVERRIDES)
def test_solved_configs_follow_their_familys_rule_and_no_other(overrides):
    for family, target in (("tiny", "0.1M"), ("tiny", "3M"), ("b", "2M"), ("b", "30M")):
        cfg = solve(family, target, **overrides).config
        assert [name for name, fam in FAMILIES.items() if fam.follows(cfg)] == [family], (family, target)
    assert not any(fam.follows(PRESETS["tiny_x2"]) for fam in FAMILIES.values())  # 2 heads of 16: a preset's own


def test_a_dozen_targets_solve_fast():
    start = time.perf_counter()
    for family, lo in (("b", 0.5e6), ("tiny", 0.1e6)):
        for target in _log_grid(lo, decades=3, per_decade=2)[:6]:
            solve(family, target, scale=4)
    assert time.perf_counter() - start < 2.0


def test_solver_refuses_what_it_cannot_do():
    with pytest.raises(ValueError, match=r"unknown family 'q'; families: b, tiny"):
        solve("q", "1M")
    with pytest.raises(ValueError, match="cannot reach 0.01M within 5%.*range is 0.05M to 50M"):
        solve("tiny", "0.01M")
    with pytest.raises(ValueError, match="dim, heads is set by the size rule"):
        solve("b", "30M", dim=64, heads=2)
    with pytest.raises(ValueError, match="unknown config field"):
        solve("b", "30M", scael=4)


# ---------------------------------------------------------------------------------------------
# parse_size


@pytest.mark.parametrize("text, count", [("30M", 30_000_000), ("0.05M", 50_000), ("500k", 500_000), ("500K", 500_000),
                                         ("1.2B", 1_200_000_000), ("2e6", 2_000_000), ("2E6", 2_000_000),
                                         (" 14.68 M ", 14_680_000), (".5m", 500_000), ("1_000", 1000),
                                         ("14736068", 14_736_068), (2e6, 2_000_000), (110_900_000, 110_900_000)])
def test_parse_size(text, count):
    assert parse_size(text) == count


@pytest.mark.parametrize("text", ["", "M", "abc", "-5M", "0", "0.0001", "5MB", "1e", "30 million", "nan", "inf"])
def test_parse_size_names_the_bad_value_in_one_line(text):
    with pytest.raises(ValueError) as info:
        parse_size(text)
    assert repr(text) in str(info.value) and "\n" not in str(info.value)


def test_format_size():
    assert [format_size(n) for n in (14_736_068, 119_331, 1.2e9, 999)] == ["14.74M", "0.1193M", "1.2B", "999"]


# ---------------------------------------------------------------------------------------------
# the CLI


def test_cli_prints_the_solved_shape_and_count():
    out = CliRunner().invoke(cli, ["models", "--family", "b", "--params", "30M", "--params", "110.9M"])
    assert out.exit_code == 0, out.output
    rows = [line.split() for line in out.output.splitlines() if line.startswith(("30M", "110.9M"))]
    for row, target in zip(rows, ("30M", "110.9M")):
        s = solve("b", target)
        c = s.config
        assert row[:11] == [target, format_size(s.achieved), f"{100 * s.error:+.2f}", str(c.dim),
                            f"{c.stages}x{c.layers_per_stage}", str(c.heads), str(c.dim // c.heads), str(c.window),
                            str(c.patch), str(c.cpb_hidden), str(c.upsampler_dim)]
    assert rows[1][3:6] == ["256", "12x12", "8"]
    assert out.output.startswith("family b: ")


def test_cli_json_carries_the_config():
    out = CliRunner().invoke(cli, ["models", "--family", "tiny", "--params", "0.2M", "--json"])
    assert out.exit_code == 0, out.output
    (row,) = json.loads(out.output)
    s = solve("tiny", "0.2M")
    assert (row["target"], row["achieved"], row["config"]["dim"]) == (200_000, s.achieved, s.config.dim)


@pytest.mark.parametrize("args, says", [(["--family", "b"], "--family and --params go together"),
                                        (["--params", "1M"], "--family and --params go together"),
                                        (["--family", "b", "--params", "3x"], "bad parameter count '3x'")])
def test_cli_misuse_is_a_usage_error(args, says):
    out = CliRunner().invoke(cli, ["models", *args])
    assert out.exit_code == 2 and says in out.output


def test_cli_unknown_family_is_one_line():
    out = subprocess.run([sys.executable, "-m", "hiir.platform.cli", "models", "--family", "q", "--params", "1M"],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 1
    assert out.stderr.strip().splitlines() == ["error: unknown family 'q'; families: b, tiny"]


def test_cli_unreachable_size_is_a_hiir_error():  # printed as one line by main(), as above
    out = CliRunner().invoke(cli, ["models", "--family", "tiny", "--params", "1k"])
    assert isinstance(out.exception, HiirError) and "\n" not in str(out.exception)
    assert "family 'tiny' cannot reach 1000 within 5%" in str(out.exception)
