"""hiir.models inference helpers, the preset summary and `hiir models`."""
from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from hiir.models import PRESETS, build
from hiir.models.inference import self_ensemble, tiled_forward
from hiir.models.summary import model_flops, preset_table


def test_tiled_matches_whole_image_away_from_tile_borders():
    torch.manual_seed(0)
    model = build("tiny_x2", stages=1, layers_per_stage=1).eval()  # receptive field < overlap/4
    x = torch.rand(1, 3, 144, 152)
    with torch.no_grad():
        whole = model(x)
    tiled = tiled_forward(model, x, tile=128, overlap=64)
    assert tiled.shape == whole.shape == (1, 3, 288, 304)
    torch.testing.assert_close(tiled, whole, atol=1e-5, rtol=0)


def test_tiled_deeper_model_stays_close():
    torch.manual_seed(0)
    model = build("tiny_x2").eval()
    x = torch.rand(1, 3, 40, 44)
    with torch.no_grad():
        whole = model(x)
    tiled = tiled_forward(model, x, tile=24, overlap=8)
    assert tiled.shape == whole.shape
    assert (tiled - whole).abs().mean() < 5e-3


def test_tiled_rejects_misaligned_tiles():
    with pytest.raises(ValueError, match="multiples of the model's pad multiple 8"):
        tiled_forward(build("tiny_x2"), torch.rand(1, 3, 16, 16), tile=20, overlap=4)


def test_self_ensemble_maps_every_transform_back():
    x = torch.rand(2, 3, 8, 12)
    torch.testing.assert_close(self_ensemble(None, x, forward_fn=lambda m, t: t), x)
    model = build("tiny_x2").eval()
    assert self_ensemble(model, x).shape == (2, 3, 16, 24)


def test_model_flops_counts_a_forward_and_backward():
    model = build("tiny_x2")
    fwd = model_flops(model, (1, 3, 16, 16))
    both = model_flops(model, (1, 3, 16, 16), backward=True)
    assert fwd > 0 and 2.5 * fwd < both < 5 * fwd


def test_preset_table_lists_every_preset():
    rows = preset_table(flops=False)
    assert [r["name"] for r in rows] == list(PRESETS)
    assert set(rows[0]) == {"name", "params_m", "paper_m", "diff_pct", "gflops", "flops_input", "window", "patch"}
    b = next(r for r in rows if r["name"] == "b_x2_conv3")
    assert b["paper_m"] == 14.68 and abs(b["diff_pct"]) < 1 and b["window"] == 8 and b["patch"] == 64
    unet = next(r for r in rows if r["name"] == "unet_deblur")
    assert unet["flops_input"] == "1x3x256x256"


def test_cli_models_json(monkeypatch):
    from hiir.platform.cli.models import models

    fake = [{"name": "tiny_x2", "params_m": 0.12, "paper_m": None, "diff_pct": None, "gflops": 0.99,
             "flops_input": "1x3x64x64", "window": 4, "patch": 8}]
    monkeypatch.setattr("hiir.platform.cli.models.preset_table", lambda flops=True: fake)
    result = CliRunner().invoke(models, ["--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == fake
    result = CliRunner().invoke(models, ["--no-flops"])
    assert result.exit_code == 0 and "tiny_x2" in result.output and "0.12" in result.output
