"""hiir.models: parameter counts vs the paper, token groups of every flow, shapes, knobs.

Big presets are built on the meta device; everything that runs is tiny (2 CPU cores).
"""
from __future__ import annotations

import dataclasses

import pytest
import torch

from hiir.models import (
    PRESETS,
    DispersedAttention,
    HiIRConfig,
    WindowAttention,
    build,
    checkpoint_filter_fn,
    count_params,
)
from hiir.models.config import TREE_DEPTHS
from hiir.models.flows import (
    MIXERS,
    Disperse,
    FlowAttention,
    Mlp,
    disperse,
    make_mixer,
    undisperse,
    window_merge,
    window_partition,
)
from hiir.models.layer import LayerSpec, UnifiedLayer

# ---------------------------------------------------------------------------------------------
# parameter counts (meta device)

PAPER = {name: cfg for name, cfg in PRESETS.items() if cfg.paper_params is not None}


def _tolerance(name: str) -> float:
    return 0.10 if name.startswith("depth") else 0.03 if name.startswith("unet") else 0.01


@pytest.mark.parametrize("name", sorted(PAPER))
def test_param_count_matches_paper(name):
    with torch.device("meta"):
        model = build(name)
    got, want = model.num_params() / 1e6, PAPER[name].paper_params
    assert abs(got / want - 1) <= _tolerance(name), f"{name}: {got:.3f}M vs paper {want}M"


def test_headline_presets_are_there():
    for name in ("b_x2_conv3", "b_x3_conv1", "b_x4_conv1", "l_x3_conv1", "l_x3_linear", "l_x3_conv3",
                 "xl_x2", "v1_x4", "v2_x4", "v3_x4", "depth2_x2", "depth3_x2", "depth4_x2", "unet_deblur",
                 "tiny_x2", "tiny_x4", "small_x2", "tiny_denoise", "tiny_unet"):
        assert name in PRESETS


def test_tiny_sizes():
    n = {k: build(k).num_params() for k in ("tiny_x2", "small_x2")}
    assert 0.1e6 <= n["tiny_x2"] <= 0.3e6
    assert 3 <= n["small_x2"] / n["tiny_x2"] <= 4


# ---------------------------------------------------------------------------------------------
# partitions: round trips and token groups (gradient probes)


def test_partition_round_trips():
    x = torch.randn(2, 16, 24, 12)
    w = window_partition(x, 4, heads=3)
    assert w.shape == (2 * 4 * 6, 3, 16, 4)
    assert torch.equal(window_merge(w, 2, 16, 24), x)
    d = disperse(x, 4, 8, heads=3)
    assert d.shape == (2 * 2 * 3 * 16, 3, 4, 4)
    assert torch.equal(undisperse(d, 2, 16, 24, 4), x)
    for name in MIXERS:
        part = make_mixer(name, 4, 8, seed=1).eval()
        groups, ctx = part.split(x, 3)
        assert torch.equal(part.merge(groups, ctx), x), name


def _group_of(attn: torch.nn.Module, H: int, W: int, i: int, j: int) -> set[tuple[int, int]]:
    """The input tokens that the output at (i, j) depends on (non-zero gradient)."""
    torch.manual_seed(0)
    x = torch.randn(1, H, W, attn.qkv.in_features, dtype=torch.float64, requires_grad=True)
    attn(x)[0, i, j].sum().backward()
    nz = (x.grad[0].abs().sum(-1) > 1e-10).nonzero().tolist()
    return {tuple(t) for t in nz}


def _attn(partition, dim=8, heads=2):
    return FlowAttention(dim, heads, partition, cpb_hidden=16).double().eval()


@pytest.mark.parametrize("i,j", [(0, 0), (5, 10), (15, 15)])
def test_l1_attends_its_window(i, j):
    attn = WindowAttention(8, 2, 4, cpb_hidden=16).double()
    want = {(a, b) for a in range(16) for b in range(16) if (a // 4, b // 4) == (i // 4, j // 4)}
    assert _group_of(attn, 16, 16, i, j) == want


@pytest.mark.parametrize("i,j", [(0, 0), (5, 10), (13, 7)])
def test_l2_attends_its_dispersed_group(i, j):
    attn = DispersedAttention(8, 2, window=4, patch=8, cpb_hidden=16).double()
    want = {(a, b) for a in range(16) for b in range(16)
            if (a // 8, b // 8) == (i // 8, j // 8) and (a % 4, b % 4) == (i % 4, j % 4)}
    assert _group_of(attn, 16, 16, i, j) == want
    assert len(want) == (8 // 4) ** 2


def test_second_dispersed_level_groups_same_offset_in_p1_blocks():
    attn = _attn(Disperse(8, 16))  # depth 4: P1 = 8 blocks inside P2 = 16 patches
    i, j = 3, 12
    want = {(a, b) for a in range(32) for b in range(32)
            if (a // 16, b // 16) == (i // 16, j // 16) and (a % 8, b % 8) == (i % 8, j % 8)}
    assert _group_of(attn, 32, 32, i, j) == want


def test_grid_attends_an_image_wide_group():
    attn = DispersedAttention(8, 2, window=4, patch=8, mixer="grid", cpb_hidden=16).double()
    i, j = 5, 10  # g = 2: groups spaced H/2 = 8 apart across the whole 16 x 16 image
    want = {(a, b) for a in range(16) for b in range(16) if (a % 8, b % 8) == (i % 8, j % 8)}
    assert _group_of(attn, 16, 16, i, j) == want
    # on a bigger image the same group spreads further: not bounded by P
    assert max(a for a, _ in _group_of(attn, 32, 32, 0, 0)) == 16


def test_shift_attends_its_shifted_window_with_mask():
    attn = DispersedAttention(8, 2, window=4, patch=8, mixer="shift", cpb_hidden=16).double()
    # interior token: the window shifted by p/2 = 2, rows and cols 2..5
    assert _group_of(attn, 16, 16, 5, 5) == {(a, b) for a in range(2, 6) for b in range(2, 6)}
    # corner token: its rolled window wraps around, and the mask keeps only its own region
    assert _group_of(attn, 16, 16, 0, 0) == {(a, b) for a in range(2) for b in range(2)}


def test_none_mixer_is_the_l1_window():
    attn = DispersedAttention(8, 2, window=4, patch=8, mixer="none", cpb_hidden=16).double()
    assert _group_of(attn, 16, 16, 5, 10) == {(a, b) for a in range(4, 8) for b in range(8, 12)}


def test_random_mixer_groups_p2_random_tokens_fixed_in_eval():
    attn = DispersedAttention(8, 2, window=4, patch=8, mixer="random", seed=3, cpb_hidden=16).double().eval()
    group = _group_of(attn, 16, 16, 5, 10)
    assert len(group) == 16 and group == _group_of(attn, 16, 16, 5, 10)
    assert group != {(a, b) for a in range(4, 8) for b in range(8, 12)}


def test_unified_layer_spreads_over_the_whole_patch():
    spec = LayerSpec(dim=8, heads=2, window=4, patch=8, patch2=16, cpb_hidden=16)
    layer = UnifiedLayer(spec, ("l1", "l2")).double()
    x = torch.randn(1, 16, 16, 8, dtype=torch.float64, requires_grad=True)
    layer.attn(x)[0, 5, 10].sum().backward()
    got = {tuple(t) for t in (x.grad[0].abs().sum(-1) > 1e-10).nonzero().tolist()}
    assert got == {(a, b) for a in range(8) for b in range(8, 16)}  # L1 then L2 = the P x P patch


# ---------------------------------------------------------------------------------------------
# networks: shapes, determinism, every knob


@pytest.mark.parametrize("scale", [1, 2, 3, 4])
def test_any_size_output_shape(scale):
    model = build("tiny_x2", scale=scale).eval()
    with torch.no_grad():
        assert model(torch.rand(1, 3, 37, 53)).shape == (1, 3, 37 * scale, 53 * scale)
    assert model.pad_multiple == 8


def test_unet_and_grey_shapes():
    with torch.no_grad():
        assert build("tiny_unet").eval()(torch.rand(1, 3, 37, 53)).shape == (1, 3, 37, 53)
        assert build("tiny_x2", in_channels=1).eval()(torch.rand(2, 1, 5, 7)).shape == (2, 1, 10, 14)


def test_equal_seeds_give_equal_results():
    outs = []
    for _ in range(2):
        torch.manual_seed(7)
        model = build("tiny_x2", mixer_l2="random", drop_path=0.1).train()
        x = torch.rand(2, 3, 16, 16)
        outs.append(model(x))
    assert torch.equal(*outs)


def test_random_mixer_changes_between_training_steps_not_in_eval():
    torch.manual_seed(0)
    model = build("tiny_x2", mixer_l2="random")
    x = torch.rand(1, 3, 16, 16)
    with torch.no_grad():
        assert not torch.allclose(model.train()(x), model(x))
        assert torch.equal(model.eval()(x), model(x))


def _shrink(cfg: HiIRConfig) -> HiIRConfig:
    """The same knobs at a size that runs in milliseconds."""
    small = dict(window=2, patch=4, patch2=8 if cfg.patch2 is not None or cfg.tree_depth == 4 else None,
                 cpb_hidden=16, paper_params=None)
    if cfg.arch == "unet":
        return cfg.replace(dim=8, layers_per_stage=1, refine_layers=1, heads=(1, 2, 2, 4), **small)
    return cfg.replace(dim=16, stages=2, layers_per_stage=2, heads=2, upsampler_dim=8, **small)


def _fit_step(cfg: HiIRConfig, size: int = 12):
    torch.manual_seed(0)
    model = build(cfg).train()
    x = torch.rand(2, cfg.in_channels, size, size)
    out = model(x)
    assert out.shape == (2, cfg.in_channels, size * cfg.scale, size * cfg.scale)
    out.square().mean().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, f"{name} got no gradient"
        assert torch.isfinite(p.grad).all(), f"{name} has a non-finite gradient"
    return model


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_knob_combination_backpropagates(name):
    _fit_step(_shrink(PRESETS[name]))


KNOBS = [("layout", v) for v in ("v1", "v2", "v3")] + [("tree_depth", v) for v in (2, 3, 4)] + \
        [("mixer_l2", v) for v in MIXERS] + [("attention", "cosine"), ("norm", "pre")] + \
        [("stage_conv", v) for v in ("conv1", "conv3", "linear")]


@pytest.mark.parametrize("knob,value", KNOBS)
def test_every_knob_value_backpropagates(knob, value):
    cfg = _shrink(PRESETS["tiny_x2"]).replace(**{knob: value})
    _fit_step(cfg)
    if knob == "mixer_l2":  # also on the v1 layout, where L2 is its own layer
        _fit_step(cfg.replace(layout="v1"))


def test_grad_checkpointing_gives_the_same_gradients():
    grads = []
    for ckpt in (False, True):
        torch.manual_seed(0)
        model = build("tiny_x2", mixer_l2="random")
        model.set_grad_checkpointing(ckpt)
        torch.manual_seed(1)
        model(torch.rand(1, 3, 16, 16)).sum().backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    torch.testing.assert_close(grads[0], grads[1])


def test_no_weight_decay_names_biases_norms_and_position_bias():
    model = build("tiny_x2", attention="cosine")
    names = model.no_weight_decay()
    params = dict(model.named_parameters())
    assert names <= set(params)
    assert any(n.endswith("logit_scale") for n in names) and any(".cpb." in n for n in names)
    assert all(params[n].ndim >= 2 for n in set(params) - names)


def test_state_dict_names_are_stable():
    keys = set(build("tiny_x2").state_dict())
    assert "stages.0.layers.0.l1.qkv.weight" in keys and "stages.0.layers.0.l2.qkv.weight" in keys
    assert "stages.0.layers.0.ffn.dwconv.weight" in keys and "stages.0.stage_conv.body.0.weight" in keys
    assert not any(k.endswith(("coords_table", ".index")) for k in keys)  # recomputable buffers
    v1 = set(build("tiny_x2", layout="v1").state_dict())
    assert "stages.0.layers.0.l1.qkv.weight" in v1 and "stages.0.layers.1.l2.qkv.weight" in v1


@pytest.mark.parametrize("preset", ["tiny_x2", "tiny_x4", "tiny_denoise"])
def test_mean_shift_is_the_same_network_on_a_shifted_image(preset):
    """The columnar presets shift by DIV2K's RGB mean (SwinIR): with equal weights, the shifted model on x is the
    unshifted model on x - mean, plus the mean; the shift is a buffer, so counts and saved weights are unchanged."""
    from hiir.models.networks import DIV2K_RGB_MEAN

    assert PRESETS[preset].mean_shift and not HiIRConfig().mean_shift  # old exports' configs lack it: no shift
    shifted, plain = build(preset).eval(), build(preset, mean_shift=False).eval()
    plain.load_state_dict(shifted.state_dict())
    assert set(shifted.state_dict()) == set(plain.state_dict()) and shifted.num_params() == plain.num_params()
    mean = torch.tensor(DIV2K_RGB_MEAN).view(1, 3, 1, 1)
    x = torch.rand(1, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(shifted(x), plain(x - mean) + mean, rtol=1e-5, atol=1e-5)
        assert not torch.allclose(shifted(x), plain(x), atol=1e-3)
    grey = build(preset, in_channels=1).eval()  # SwinIR shifts colour images only
    assert not grey.input_mean.any()


def test_checkpoint_filter_fn_unwraps_prefixes():
    torch.manual_seed(0)
    src = build("tiny_x2")
    wrapped = {"params_ema": {f"module._orig_mod.{k}": v for k, v in src.state_dict().items()}}
    dst = build("tiny_x2")
    dst.load_state_dict(checkpoint_filter_fn(wrapped, dst))
    x = torch.rand(1, 3, 8, 8)
    with torch.no_grad():
        assert torch.equal(src.eval()(x), dst.eval()(x))
    assert set(checkpoint_filter_fn({"state_dict": src.state_dict()})) == set(src.state_dict())


# ---------------------------------------------------------------------------------------------
# tree depth: one knob, one model (config.TREE_DEPTHS)


def _meta_state(cfg: HiIRConfig) -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):
        return {k: tuple(v.shape) for k, v in build(cfg).state_dict().items()}


def test_tree_depth_counts_the_levels_of_information_flow():
    assert {d: TREE_DEPTHS[d].levels for d in TREE_DEPTHS} == {
        2: ("l1", "l2"), 3: ("l1", "l2", "l3"), 4: ("l1", "l2", "l2b", "l3")}
    assert all(len(tree.levels) == depth for depth, tree in TREE_DEPTHS.items())


@pytest.mark.parametrize("scale", [2, 4])
def test_tree_depth_knob_on_b_builds_the_depth2_preset(scale):
    """`tree_depth: 2` on B (on v1, the depth table's layout) is the depth2 preset: the same parameters,
    name by name and shape by shape; the depth presets differ in tree_depth alone."""
    preset = PRESETS[f"depth2_x{scale}"]
    knob = PRESETS["b_x4_conv1"].replace(scale=scale, layout="v1", tree_depth=2)
    assert _meta_state(knob) == _meta_state(preset)
    assert count_params(knob) == count_params(preset)
    assert preset == PRESETS[f"depth3_x{scale}"].replace(tree_depth=2, paper_params=preset.paper_params)


def test_depth2_removes_the_conv_ffn_as_the_paper_counts():
    """The paper's depth-2 row is 2.48M under depth 3. Replacing the ratio-3 conv FFN by a ratio-2 MLP
    removes ~2.1 C^2 a layer (2.53M here); dropping only the depthwise 3x3 would remove ~0.2M."""
    removed = count_params(PRESETS["depth3_x2"]) - count_params(PRESETS["depth2_x2"])
    assert abs(removed / 2.48e6 - 1) < 0.05, removed
    only_dwconv = count_params(PRESETS["depth3_x2"]) - count_params(PRESETS["depth3_x2"].replace(tree_depth=2,
                                                                                                  mlp_ratio=3.0))
    assert only_dwconv < 0.25e6


def test_depth2_ffn_is_a_plain_mlp_at_mlp_ratio():
    for ratio in (2.0, 3.0):
        model = build("tiny_x2", tree_depth=2, mlp_ratio=ratio, ffn_ratio=5.0)  # ffn_ratio: L3's, unused here
        ffns = [layer.ffn for stage in model.stages for layer in stage.layers]
        assert ffns and all(isinstance(f, Mlp) and f.fc1.out_features == int(32 * ratio) for f in ffns)
        assert not any(isinstance(m, torch.nn.Conv2d) and m.groups > 1 for m in model.modules())
        assert not any("dwconv" in name for name in model.state_dict())
    deep = build("tiny_x2", tree_depth=3, mlp_ratio=5.0)  # and the conv FFN ignores mlp_ratio
    assert all(layer.ffn.fc1.out_features == int(32 * 2.0) and layer.ffn.dwconv.groups == 64
               for stage in deep.stages for layer in stage.layers)


def _input_reach(cfg: HiIRConfig, size: int = 32, at: int = 11) -> set[tuple[int, int]]:
    """The input pixels that the output at LR position (at, at) depends on (non-zero gradient)."""
    torch.manual_seed(0)
    model = build(cfg).double().eval()
    x = torch.rand(1, cfg.in_channels, size, size, dtype=torch.float64, requires_grad=True)
    model(x)[0, :, at * cfg.scale, at * cfg.scale].sum().backward()
    return {tuple(t) for t in (x.grad[0].abs().sum(0) > 0).nonzero().tolist()}


@pytest.mark.parametrize("preset,overrides,crosses", [
    ("tiny_x2", dict(tree_depth=2, stage_conv="linear"), False),
    ("tiny_denoise", dict(tree_depth=2, stage_conv="linear"), False),
    ("tiny_x2", dict(tree_depth=2, stage_conv="linear", layout="v1", mixer_l2="none"), False),
    ("tiny_x2", dict(tree_depth=3, stage_conv="linear"), True),
    ("tiny_x2", dict(tree_depth=4, stage_conv="linear"), True),
    ("tiny_x2", dict(tree_depth=2, stage_conv="conv1"), True),
    ("tiny_x2", dict(tree_depth=2, stage_conv="linear", mixer_l2="shift"), True),
    ("tiny_x2", dict(tree_depth=2, stage_conv="linear", mixer_l2="grid"), True),
    ("tiny_x2", dict(tree_depth=2, stage_conv="linear", mixer_l2="random"), True),
])
def test_crosses_patches_matches_a_gradient_probe(preset, overrides, crosses):
    """An output pixel inside the P x P patch rows/cols 8..15 (P = 8): without a path across patch
    borders it depends on its own patch and the 1-px border of the shallow 3x3 conv, nothing else."""
    cfg = PRESETS[preset].replace(**overrides)
    reach = _input_reach(cfg)
    patch = {(a, b) for a in range(7, 17) for b in range(7, 17)}  # rows/cols 8..15, plus 1 px
    assert cfg.crosses_patches == crosses
    assert (not reach <= patch) == crosses, sorted(reach - patch)[:5]
    if overrides.get("mixer_l2", "permute") == "permute" and not crosses:  # L1 + L2 span the whole patch
        assert reach == patch


# ---------------------------------------------------------------------------------------------
# config and build errors


@pytest.mark.parametrize("overrides,message", [
    (dict(layout="v4"), "layout='v4' is not one of v1, v2, v3"),
    (dict(patch=12, window=8), "patch=12 must be a multiple of window=8"),
    (dict(mixer_l2="swap"), "mixer_l2='swap' is not one of permute, none, shift, grid, random"),
    (dict(scale=5), "scale=5 is not one of 1, 2, 3, 4"),
    (dict(heads=(2, 2, 2)), "heads=(2, 2, 2) must have one entry per stage"),
    (dict(tree_depth=4, patch2=12), "patch2=12 must be a multiple of patch=8"),
    (dict(window_size=8), "window_size (nearest: window"),
])
def test_config_errors_name_the_field(overrides, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        PRESETS["tiny_x2"].replace(**overrides)


def test_unknown_preset_lists_nearest():
    with pytest.raises(ValueError, match="b_x2_conv3"):
        build("b_x2_conv")


def test_per_stage_tuples_and_overrides():
    cfg = PRESETS["tiny_x2"].replace(heads=(2, 4), window=(4, 2))
    assert cfg.per_stage("heads") == (2, 4) and cfg.per_stage("patch") == (8, 8)
    model = build("tiny_x2", heads=(2, 4))
    assert model.config.heads == (2, 4) and dataclasses.is_dataclass(model.config)

