"""The memory-bound ops of a training step get their tensors in the layout they want.

GELU, softmax and the norms (forward and backward) take contiguous tensors: on a strided or
channels-first view each costs several times over (gelu_backward about 14x on one core). The check
runs on the training step itself, so a convolution backend that hands back channels-first gradients
fails it on the machine where that happens.
"""
from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from hiir.models import build

ELEMENTWISE = {"gelu", "gelu_backward", "_softmax", "_softmax_backward_data",
               "native_layer_norm", "native_layer_norm_backward"}


class _Strided(TorchDispatchMode):
    """Records every memory-bound op that gets a tensor that is not contiguous."""

    def __init__(self):
        super().__init__()
        self.found: list[tuple[str, list]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        tensors = [a for a in args if isinstance(a, torch.Tensor) and a.numel() > 1]
        if name in ELEMENTWISE and not all(t.is_contiguous() for t in tensors):
            self.found.append((name, [(tuple(t.shape), t.stride()) for t in tensors]))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("overrides", [{}, dict(layout="v1", mixer_l2="shift"), dict(tree_depth=2, layout="v2")],
                         ids=["v3_permute", "v1_shift", "depth2_v2"])
def test_training_step_feeds_memory_bound_ops_contiguous_tensors(overrides):
    torch.manual_seed(0)
    model = build("tiny_x2", **overrides)
    x = torch.rand(2, 3, 16, 16)
    with _Strided() as record:
        (model(x) - 0.5).abs().mean().backward()
    assert not record.found, record.found[:5]
