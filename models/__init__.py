"""hiir.models: the Hi-IR network (arXiv 2411.18588, later Fractal-IR), rebuilt from the paper.

Public API
    HiIRConfig                  frozen dataclass, every study knob (see config.py); `per_stage(name)`
    PRESETS                     dict name -> HiIRConfig (paper count in `paper_params`)
    build(name_or_config, **overrides) -> nn.Module   (overrides via dataclasses.replace)
    WindowAttention(dim, heads, window, attention=...)          L1 flow
    DispersedAttention(dim, heads, window, patch, attention=..., mixer=...)   L2 flow
    checkpoint_filter_fn(state_dict, model=None)
    inference.tiled_forward(model, x, tile, overlap), inference.self_ensemble(model, x, forward_fn=None)
    summary.preset_table(flops=True), summary.model_flops(model, input_shape, backward=False)
    solve(family, params, **overrides) -> Solved(config, family, target, achieved, rule_note)
                                a size family plus a parameter count ("30M") gives a config
    FAMILIES                    dict name -> Family (base config + shape rule): b, tiny
    parse_size("0.05M") -> 50000; count_params(cfg) -> int (exact, analytic, nothing built)
    mup.param_groups(model, lr, wd), mup.ROLES/RULES   μP (`parametrization="mup"`): per-group LRs; roles from
                                shapes against the base model, the rule table; mup.MUP_RULES_VERSION
    coord_check.coord_check(family, widths) -> slopes of mean |activation| vs width (`hiir models --coord-check`)
    network: forward((B,C,h,w) in [0,1]) -> (B,C,h*s,w*s); .config, .num_params(),
             .no_weight_decay(), .set_grad_checkpointing(), .pad_multiple

Presets and parameter counts
    `hiir models` prints every preset's count beside the paper's (with GFLOPs and window/patch);
    tests/test_models.py holds each one to the paper's number.

Size families (families.py; each keeps window/patch, FFN ratio, stage ends and layout of its anchor)
    b     the paper's path: width at 6x6 up to B (C 180), depth 6x6 -> 12x12 at C ~180 (B -> L),
          width at 12x12 (L -> XL at C 256, and on). Below B the position-bias MLP hidden width
          (512 C/180) and the upsampler (min(C, 64)) shrink with C. Within 5% from 0.5M to 1B.
    tiny  around tiny_x2: width at 2x2 all the way; position-bias hidden 64 and upsampler 32 at
          every width (so each tensor keeps one μP role across widths). Within 5% from 0.05M to 50M.
    both  heads: head width nearest 32 (16..64, or one head up to C 96) among the divisors of
          gcd(C, C/2); any usable width, odd ones with one head; within 3% of the target, the
          width with the best heads wins. The head count is not monotone between C 48 and ~200.

Choices the paper leaves open (each one is a knob; default in brackets)
    - v3 unified layer: L1 qkv from x (q, k at C/2, v at C); L2 qkv computed from L1's output
      (no projection between), one output projection. 5C^2 + 2 position-bias MLPs per layer;
      with an FFN of ratio 3 plus a depthwise 3x3 this gives every count above within 0.41%.
    - window p = 8, patch P = 64 for B/L/XL (L2 groups (P/p)^2 = 64 tokens, like an L1
      window) [not stated in the paper]; tiny presets p = 4, P = 8.
    - position bias: Swin-V2 continuous MLP (hidden 512), per flow; attention `dot`.
    - stage ends conv1 for B/L, conv3 for B x2 and XL (the only choice that lands on 14.68M and
      110.90M); the body-end conv is the same type as the stage ends (SwinIR).
    - tree depth counts the levels of information flow (config.TREE_DEPTHS, where the reading and
      its arithmetic are written down): depth 2 = L1 + L2, no L3, so the conv FFN becomes a plain
      MLP at `mlp_ratio` 2 (the 2.48M the paper's depth-2 row removes is ~2.1 C^2 a layer: the
      whole conv FFN of ratio 3 against an MLP of ratio 2, not just its 3x3). On any preset,
      `tree_depth=2` is that model. Depth 4 on v1: odd layers run L2 then a second dispersed
      level L2b (tokens with the same offset in P1 x P1 blocks, grouped in P2 x P2 patches;
      P2 = 2P by default) with its own qkv/proj: -2.0% against 17.19M. Depth presets use
      P = 32, P2 = 64.
    - mixers in the L2 slot: `grid` uses groups of (P/p)^2 tokens spread image-wide (spacing
      H/g), so it costs the same as L2; `random` shuffles all positions then uses p x p windows,
      new permutation per forward in training (global torch RNG), fixed seed in eval;
      `shift` = p x p windows rolled by p/2 with SwinIR's -100 mask; `none` = p x p windows.
    - U-shape: Restormer widths 48/96/192/384, heads 1/2/4/8, layers 4/6/6 + latent 6, decoder
      mirrors the encoder, 4 refinement layers, conv1 stage ends, p = 8/8/8/4, P = 32/32/16/16.
    - columnar presets subtract DIV2K's RGB mean from the input and add it back (SwinIR, HAT, GRL; the
      paper is silent; `mean_shift`, a buffer, so counts are unchanged); res-post-norm; qkv bias.
"""
from .config import HiIRConfig
from .factory import build
from .families import FAMILIES, Solved, count_params, format_size, parse_size, solve
from .flows import DispersedAttention, WindowAttention
from .networks import HiIRColumnar, HiIRUNet, checkpoint_filter_fn
from .presets import PRESETS

__all__ = ["HiIRConfig", "PRESETS", "build", "checkpoint_filter_fn", "WindowAttention",
           "DispersedAttention", "HiIRColumnar", "HiIRUNet", "FAMILIES", "Solved", "solve", "format_size", "parse_size",
           "count_params"]
