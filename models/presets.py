"""Presets: plain data. Names spell out the knobs; the comment is the paper's parameter count.

Sizes (the configuration that reproduces every count the paper gives within 0.4%): B = C 180,
6 stages x 6 layers; L = C 180, 12 x 12; XL = C 256, 12 x 12 (conv3 stage ends, the only stage op
that lands at 110.90M).
Heads: 6 at C 180, 8 at C 256. Window p = 8 and patch P = 64, so an L2 group has
(P/p)^2 = 64 tokens, as many as an L1 window (the paper does not state p or P).
"""
from __future__ import annotations

from .config import HiIRConfig

# Columnar presets shift the input by DIV2K's RGB mean, as SwinIR, HAT and GRL do for classical SR (the paper does
# not say); without it, tiny models on the demo data were seen stuck 0.5-1 dB below bicubic with their output's
# DC level off on flat areas (bench/RESULTS.md, "the input's mean shift"). The field's default, False, keeps
# models exported before it existed as they were.
_B = HiIRConfig(dim=180, stages=6, layers_per_stage=6, heads=6, mean_shift=True)
_L = _B.replace(stages=12, layers_per_stage=12)
_XL = _L.replace(dim=256, heads=8, stage_conv="conv3")
# The depth table is built on v1; P = 32 and P2 = 64 keep depth 4 padded to 64 like the others.
_DEPTH = _B.replace(layout="v1", window=8, patch=32, patch2=64)
_TINY = HiIRConfig(dim=32, stages=2, layers_per_stage=2, heads=2, window=4, patch=8,
                   ffn_ratio=2.0, cpb_hidden=64, upsampler_dim=32, mean_shift=True)
# U-shape: Restormer's widths (48, 96, 192, 384) and heads (1, 2, 4, 8), 4 levels of Hi-IR stages.
_UNET = HiIRConfig(arch="unet", scale=1, dim=48, stages=4, layers_per_stage=(4, 6, 6, 6), heads=(1, 2, 4, 8),
                   refine_layers=4, window=(8, 8, 8, 4), patch=(32, 32, 16, 16))

PRESETS: dict[str, HiIRConfig] = {
    # Hi-IR-B (Table 3; the 110M answer; the permutation ablation)
    "b_x2_conv3": _B.replace(scale=2, stage_conv="conv3", paper_params=14.68),  # 14.68M
    "b_x3_conv1": _B.replace(scale=3, paper_params=15.87),  # 15.87M
    "b_x4_conv1": _B.replace(scale=4, paper_params=15.84),  # 15.84M
    "b_x2_conv3_nopermute": _B.replace(scale=2, stage_conv="conv3", mixer_l2="none"),  # w/o permutation
    # Hi-IR-L (Table 3)
    "l_x3_conv1": _L.replace(scale=3, paper_params=57.78),  # 57.78M
    "l_x4_conv1": _L.replace(scale=4, paper_params=57.74),  # 57.74M
    "l_x3_linear": _L.replace(scale=3, stage_conv="linear", paper_params=54.41),  # 54.41M
    "l_x4_linear": _L.replace(scale=4, stage_conv="linear", paper_params=54.37),  # 54.37M
    "l_x3_conv3": _L.replace(scale=3, stage_conv="conv3", paper_params=55.91),  # 55.91M
    "l_x4_conv3": _L.replace(scale=4, stage_conv="conv3", paper_params=55.88),  # 55.88M
    "l_x3_conv1_cosine": _L.replace(scale=3, attention="cosine"),  # Table 5, cosine row
    # Hi-IR-XL (answer to reviewer VDnP, Q5)
    "xl_x2": _XL.replace(scale=2, paper_params=110.90),  # 110.90M
    # Version 1/2/3 (answer to 99w8)
    "v1_x4": _B.replace(scale=4, layout="v1", paper_params=14.5),  # ~14.5M
    "v2_x4": _B.replace(scale=4, layout="v2", paper_params=19.37),  # ~19.37M
    "v3_x4": _B.replace(scale=4, layout="v3", paper_params=15.84),  # ~15.84M
    # tree depth 2/3/4, on v1 (depth table); they differ in tree_depth alone (depth 2: no L3, a plain MLP
    # at mlp_ratio 2 where L3's conv FFN was; config.TREE_DEPTHS)
    "depth2_x2": _DEPTH.replace(scale=2, tree_depth=2, paper_params=11.87),  # 11.87M
    "depth3_x2": _DEPTH.replace(scale=2, tree_depth=3, paper_params=14.35),  # 14.35M
    "depth4_x2": _DEPTH.replace(scale=2, tree_depth=4, paper_params=17.19),  # 17.19M
    "depth2_x4": _DEPTH.replace(scale=4, tree_depth=2, paper_params=12.02),  # 12.02M
    "depth3_x4": _DEPTH.replace(scale=4, tree_depth=3, paper_params=14.50),  # 14.50M
    "depth4_x4": _DEPTH.replace(scale=4, tree_depth=4, paper_params=17.34),  # 17.34M
    # U-shape (ShuffleFormer comparison on GoPro/HIDE)
    "unet_deblur": _UNET.replace(paper_params=22.33),  # 22.33M
    # tiny presets for tests and the smoke study (2 CPU cores)
    "tiny_x2": _TINY.replace(scale=2),
    "tiny_x4": _TINY.replace(scale=4),
    "small_x2": _TINY.replace(scale=2, dim=64, heads=4, stages=3),  # ~3.5x tiny_x2
    "tiny_denoise": _TINY.replace(scale=1),
    "tiny_unet": HiIRConfig(arch="unet", scale=1, dim=8, stages=4, layers_per_stage=(1, 1, 1, 2), heads=(1, 2, 2, 4),
                            refine_layers=1, window=(4, 4, 2, 2), patch=(8, 8, 4, 4), ffn_ratio=2.0,
                            cpb_hidden=32, stage_conv="linear"),
}
