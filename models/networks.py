"""The Hi-IR networks: columnar (SR, denoise/JPEG) and U-shaped (the other tasks).

Both take float images (B, C, h, w) in [0, 1] of any size, pad (reflect) to `pad_multiple`,
run the body on tokens (B, H, W, C) and crop back; they return (B, C, h*scale, w*scale).
"""
from __future__ import annotations

import re

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from .config import HiIRConfig
from .flows import to_nchw, to_nhwc
from .layer import LayerSpec, make_layer

DIV2K_RGB_MEAN = (0.4488, 0.4371, 0.4040)  # SwinIR's input shift for colour images (`mean_shift`)

# ---------------------------------------------------------------------------------------------
# helpers


def pad_reflect(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """(B, C, h, w) -> (B, C, H, W) with H, W the next multiples; reflect, repeated when the
    pad is larger than the image (reflect needs pad < size)."""
    while (x.shape[-2] % multiple) or (x.shape[-1] % multiple):
        ph = min(-x.shape[-2] % multiple, x.shape[-2] - 1)
        pw = min(-x.shape[-1] % multiple, x.shape[-1] - 1)
        mode = "reflect" if min(x.shape[-2:]) > 1 else "replicate"
        x = F.pad(x, (0, pw, 0, ph), mode=mode)
    return x


class Conv(nn.Module):
    """A conv stack applied to tokens: (B, H, W, C) -> NCHW -> convs -> (B, H, W, C')."""

    def __init__(self, *layers: nn.Module):
        super().__init__()
        self.body = nn.Sequential(*layers)

    def forward(self, x):
        return to_nhwc(self.body(to_nchw(x)))


STAGE_CONVS = {
    "conv1": lambda c: Conv(nn.Conv2d(c, c, 3, padding=1)),
    "conv3": lambda c: Conv(nn.Conv2d(c, c // 4, 3, padding=1), nn.LeakyReLU(0.2, inplace=True),
                            nn.Conv2d(c // 4, c // 4, 1), nn.LeakyReLU(0.2, inplace=True),
                            nn.Conv2d(c // 4, c, 3, padding=1)),
    "linear": lambda c: nn.Linear(c, c),
}


def make_stage_conv(kind: str, dim: int) -> nn.Module:
    if kind not in STAGE_CONVS:
        raise ValueError(f"stage_conv={kind!r} is not one of {', '.join(STAGE_CONVS)}")
    return STAGE_CONVS[kind](dim)


# ---------------------------------------------------------------------------------------------
# modules


class HiIRStage(nn.Module):
    """Layers, then the stage-end op, with a residual around the stage. (B,H,W,C) -> same."""

    def __init__(self, layers: list[nn.Module], stage_conv: nn.Module):
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.stage_conv = stage_conv
        self.grad_checkpointing = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x
        for layer in self.layers:
            use_ckpt = self.grad_checkpointing and torch.is_grad_enabled()
            y = checkpoint(layer, y, use_reentrant=False) if use_ckpt else layer(y)
        return x + self.stage_conv(y)


class PixelShuffleHead(nn.Module):
    """SwinIR's upsampler: conv to 64, LeakyReLU, x2/x3/x4 pixel shuffle, conv to the image."""

    def __init__(self, dim: int, out_channels: int, scale: int, width: int = 64):
        super().__init__()
        steps = {2: [2], 3: [3], 4: [2, 2]}[scale]
        ups = [m for s in steps for m in (nn.Conv2d(width, s * s * width, 3, padding=1), nn.PixelShuffle(s))]
        self.conv_before = nn.Sequential(nn.Conv2d(dim, width, 3, padding=1), nn.LeakyReLU(0.2, inplace=True))
        self.upsample = nn.Sequential(*ups)
        self.conv_last = nn.Conv2d(width, out_channels, 3, padding=1)

    def forward(self, feat: torch.Tensor, image: torch.Tensor) -> torch.Tensor:  # feat NCHW
        return self.conv_last(self.upsample(self.conv_before(feat)))


class ResidualHead(nn.Module):
    """No upsampler (denoise/JPEG, and the U-shape): conv to the image plus a global residual."""

    def __init__(self, dim: int, out_channels: int, scale: int = 1, width: int = 64):
        super().__init__()
        self.conv_last = nn.Conv2d(dim, out_channels, 3, padding=1)

    def forward(self, feat: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        return image + self.conv_last(feat)


HEADS = {1: ResidualHead, 2: PixelShuffleHead, 3: PixelShuffleHead, 4: PixelShuffleHead}


def pixel_shuffle_params(dim: int, out_channels: int, scale: int, width: int) -> int:
    """Parameters of the pixel-shuffle head `HEADS[scale]` builds at these sizes, counted on the built module
    (meta device); 0 at scale 1, which has none. What a size axis grows is the rest, the body: the input conv,
    the stages and the body-end norm and conv (Kaplan et al. leave out embeddings for the same reason)."""
    if scale == 1:
        return 0
    with torch.device("meta"):
        return sum(p.numel() for p in HEADS[scale](dim, out_channels, scale, width).parameters())


class _Network(nn.Module):
    """Shared plumbing: padding, the trainer hooks, parameter counting."""

    config: HiIRConfig

    @property
    def pad_multiple(self) -> int:
        return self.config.pad_multiple

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) in [0, 1] -> (B, C, h*scale, w*scale)."""
        h, w = x.shape[-2:]
        out = self.forward_features(pad_reflect(x, self.pad_multiple))
        s = self.config.scale
        return out[..., : h * s, : w * s]

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def no_weight_decay(self) -> set[str]:
        """Names of parameters to keep out of weight decay: biases, norms, position-bias MLPs, logit scales."""
        return {n for n, p in self.named_parameters()
                if p.ndim <= 1 or ".cpb." in n or n.endswith("logit_scale")}

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        for m in self.modules():
            if isinstance(m, HiIRStage):
                m.grad_checkpointing = enable


def _specs(cfg: HiIRConfig, plan: list[tuple[int, int]]) -> list[list[LayerSpec]]:
    """One LayerSpec per layer for each (level, layers) in `plan`; the level picks width, heads,
    window and patches. Drop-path rises linearly over all layers; each layer gets its own seed."""
    total = sum(n for _, n in plan)
    rates = [cfg.drop_path * i / max(total - 1, 1) for i in range(total)]
    knobs = {k: cfg.per_stage(k) for k in ("heads", "window", "patch", "patch2")}
    out, seen = [], 0
    for level, n in plan:
        common = dict(dim=cfg.stage_dims()[level], **{k: v[level] for k, v in knobs.items()},
                      tree_depth=cfg.tree_depth, mixer_l2=cfg.mixer_l2, attention=cfg.attention,
                      ffn_ratio=cfg.ffn_ratio, mlp_ratio=cfg.mlp_ratio, norm=cfg.norm, cpb_hidden=cfg.cpb_hidden,
                      qkv_bias=cfg.qkv_bias)
        out.append([LayerSpec(**common, drop_path=rates[seen + i], seed=cfg.random_seed + seen + i) for i in range(n)])
        seen += n
    return out


def _stage(cfg: HiIRConfig, specs: list[LayerSpec]) -> HiIRStage:
    layers = [make_layer(cfg.layout, spec, i) for i, spec in enumerate(specs)]
    return HiIRStage(layers, make_stage_conv(cfg.stage_conv, specs[0].dim))


def _init_weights(m: nn.Module) -> None:
    if any(p.is_meta for p in m.parameters(recurse=False)):  # meta: counting only, nothing to fill
        return
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


class HiIRColumnar(_Network):
    """Columnar Hi-IR for SR (x2/x3/x4) or, at scale 1, denoising/JPEG.

    (input - mean) -> conv3x3 -> stages (each: layers, stage conv, residual) -> LN -> stage conv -> long skip
    -> pixel-shuffle upsampler (or a conv plus a global residual at scale 1) -> + mean. The mean is DIV2K's
    RGB mean with `mean_shift` (the presets), else 0.
    """

    def __init__(self, config: HiIRConfig):
        super().__init__()
        self.config = cfg = config
        self.conv_first = nn.Conv2d(cfg.in_channels, cfg.dim, 3, padding=1)
        plan = list(enumerate(cfg.per_stage("layers_per_stage")))
        self.stages = nn.ModuleList(_stage(cfg, specs) for specs in _specs(cfg, plan))
        self.norm = nn.LayerNorm(cfg.dim)
        self.stage_conv = make_stage_conv(cfg.stage_conv, cfg.dim)
        self.head = HEADS[cfg.scale](cfg.dim, cfg.in_channels, cfg.scale, cfg.upsampler_dim)
        # a buffer, not a parameter: counts and saved weights are the same with and without the shift
        mean = DIV2K_RGB_MEAN if cfg.mean_shift and cfg.in_channels == 3 else (0.0,) * cfg.in_channels
        self.register_buffer("input_mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.apply(_init_weights)  # μP rescales this init afterwards, in `factory.build`

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Padded (B, C, H, W) -> (B, C, H*scale, W*scale)."""
        x = x - self.input_mean
        shallow = to_nhwc(self.conv_first(x))  # B, H, W, C
        y = shallow
        for stage in self.stages:
            y = stage(y)
        y = self.stage_conv(self.norm(y)) + shallow
        return self.head(to_nchw(y), x) + self.input_mean


class HiIRUNet(_Network):
    """U-shaped Hi-IR (Restormer-like, 4 levels) for deblurring, deraining, dehazing, denoising
    and all-in-one. Widths C, 2C, 4C, 8C; pixel-unshuffle down, pixel-shuffle up, skip concat
    plus a 1x1 reduce; a refinement stage at level 1; a global residual."""

    def __init__(self, config: HiIRConfig):
        super().__init__()
        self.config = cfg = config
        dims, blocks = cfg.stage_dims(), cfg.per_stage("layers_per_stage")
        # encoder levels 0..3 (3 = latent), decoder levels 2..0, refinement at level 0
        plan = [(lv, blocks[lv]) for lv in (0, 1, 2, 3, 2, 1, 0)] + [(0, cfg.refine_layers)]
        specs = _specs(cfg, plan)
        self.conv_first = nn.Conv2d(cfg.in_channels, dims[0], 3, padding=1)
        self.encoders = nn.ModuleList(_stage(cfg, sp) for sp in specs[:3])
        self.downs = nn.ModuleList(Conv(nn.Conv2d(c, c // 2, 3, padding=1, bias=False), nn.PixelUnshuffle(2))
                                   for c in dims[:3])
        self.latent = _stage(cfg, specs[3])
        self.ups = nn.ModuleList(Conv(nn.Conv2d(c, 2 * c, 3, padding=1, bias=False), nn.PixelShuffle(2))
                                 for c in dims[:0:-1])  # 8C -> 4C, 4C -> 2C, 2C -> C
        self.reduces = nn.ModuleList(nn.Linear(2 * c, c, bias=False) for c in dims[2::-1])
        self.decoders = nn.ModuleList(_stage(cfg, sp) for sp in specs[4:7])
        self.refine = _stage(cfg, specs[7])
        self.head = ResidualHead(dims[0], cfg.in_channels)
        self.apply(_init_weights)  # μP rescales this init afterwards, in `factory.build`

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Padded (B, C, H, W) -> (B, C, H, W)."""
        y = to_nhwc(self.conv_first(x))  # B, H, W, C
        skips = []
        for encoder, down in zip(self.encoders, self.downs):
            y = encoder(y)
            skips.append(y)
            y = down(y)  # B, H/2, W/2, 2C
        y = self.latent(y)
        for up, reduce, decoder, skip in zip(self.ups, self.reduces, self.decoders, reversed(skips)):
            y = decoder(reduce(torch.cat([up(y), skip], dim=-1)))
        return self.head(to_nchw(self.refine(y)), x)


NETWORKS = {"columnar": HiIRColumnar, "unet": HiIRUNet}


def checkpoint_filter_fn(state_dict: dict, model: nn.Module | None = None) -> dict:
    """Adapt a saved state dict to a fresh `build(...)`: unwrap a top-level 'params_ema' /
    'params' / 'state_dict' / 'model' entry, strip 'module.' (DDP/DeepSpeed) and '_orig_mod.'
    (torch.compile) prefixes, and drop recomputable (non-persistent) buffers."""
    for key in ("params_ema", "params", "state_dict", "model"):
        if isinstance(state_dict.get(key), dict):
            state_dict = state_dict[key]
            break
    out = {re.sub(r"^((module|_orig_mod)\.)+", "", k): v for k, v in state_dict.items()}
    out = {k.replace("._orig_mod.", ".").replace(".module.", "."): v for k, v in out.items()}
    drop = ("coords_table", "index")
    if model is not None:
        keep = set(model.state_dict())
        return {k: v for k, v in out.items() if k in keep or not k.endswith(drop)}
    return {k: v for k, v in out.items() if not k.endswith(drop)}
