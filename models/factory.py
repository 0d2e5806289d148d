"""`build`: a preset name or a config -> its network, with μP applied when the config asks for it.

μP needs the network at its base width (`mup.base_shapes`), so it is applied here, above the networks,
the presets and the size families, rather than inside a network's constructor.
"""
from __future__ import annotations

import difflib

from torch import nn

from .config import HiIRConfig
from .mup import parametrize
from .networks import NETWORKS
from .presets import PRESETS


def build(name_or_config: str | HiIRConfig, **overrides) -> nn.Module:
    """The network for a preset name or a config, with `overrides` applied by `dataclasses.replace`."""
    if isinstance(name_or_config, str):
        if name_or_config not in PRESETS:
            near = difflib.get_close_matches(name_or_config, PRESETS, n=5, cutoff=0.4)
            raise ValueError(f"unknown preset {name_or_config!r}; nearest: {', '.join(near) or 'none'} "
                             f"(all: {', '.join(PRESETS)})")
        config = PRESETS[name_or_config]
    else:
        config = name_or_config
    if overrides:
        config = config.replace(**overrides)
    model = NETWORKS[config.arch](config)
    if config.parametrization == "mup":  # rescales the standard init (the readout's too) and the attention logits
        parametrize(model)
    return model
