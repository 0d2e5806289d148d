"""Attention against a computation written out by hand, and L2 as a permutation of tokens, not a gather."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from hiir.models.flows import FlowAttention, Window, disperse, undisperse


def _by_hand(x: torch.Tensor, attn: FlowAttention, cosine: bool) -> torch.Tensor:
    """One p x p window (all of `x`), heads laid out as [q | k | v] per head in the qkv projection."""
    heads, dq = attn.heads, attn.dq
    tokens = x.reshape(-1, x.shape[-1])                         # L, C
    qkv = tokens @ attn.qkv.weight.T + attn.qkv.bias            # L, heads * (2 dq + dv)
    outs = []
    for h, chunk in enumerate(qkv.chunk(heads, dim=-1)):
        q, k, v = chunk[:, :dq], chunk[:, dq:2 * dq], chunk[:, 2 * dq:]
        if cosine:
            scale = math.exp(min(attn.sim.logit_scale[h].item(), math.log(100.0)))
            logits = scale * (q / q.norm(dim=-1, keepdim=True)) @ (k / k.norm(dim=-1, keepdim=True)).T
        else:
            logits = q @ k.T / math.sqrt(dq)
        logits = logits + 8.0                                   # the position bias: 16 * sigmoid(0)
        outs.append(torch.softmax(logits, dim=-1) @ v)
    out = torch.cat(outs, dim=-1) @ attn.proj.weight.T + attn.proj.bias
    return out.reshape(x.shape)


@pytest.mark.parametrize("kind", ["cosine", "dot"])
def test_attention_equals_the_hand_computation(kind):
    torch.manual_seed(0)
    attn = FlowAttention(8, 2, Window(4), attention=kind, cpb_hidden=16).double().eval()
    with torch.no_grad():
        attn.cpb.mlp[-1].weight.zero_()  # a constant bias (8): the position bias adds nothing per pair
        if kind == "cosine":             # one head's scale under the clamp, one above it
            attn.sim.logit_scale.copy_(torch.tensor([math.log(5.0), math.log(400.0)]).reshape(2, 1, 1))
    x = torch.randn(1, 4, 4, 8, dtype=torch.float64)
    torch.testing.assert_close(attn(x), _by_hand(x, attn, cosine=kind == "cosine"), rtol=1e-10, atol=1e-10)


def test_cosine_logits_are_bounded_by_the_clamped_scale():
    """cos in [-1, 1] times a scale clamped at 100: the softmax can never see logits beyond +-100."""
    torch.manual_seed(0)
    attn = FlowAttention(8, 2, Window(4), attention="cosine", cpb_hidden=16).double()
    with torch.no_grad():
        attn.sim.logit_scale.fill_(math.log(1e6))
    q, k, _ = attn.sim(torch.randn(3, 2, 16, 4, dtype=torch.float64) * 50,
                       torch.randn(3, 2, 16, 4, dtype=torch.float64))
    assert (q @ k.transpose(-1, -2)).abs().max() <= 100.0 + 1e-9


@pytest.mark.parametrize("window, patch, size", [(4, 8, 8), (2, 8, 16), (4, 16, 32)])
def test_disperse_is_a_permutation_not_a_gather(window, patch, size):
    """Every token lands in exactly one group, at the place the paper's rule gives; the inverse restores
    the input; and the partition runs only views, permutes and one copy (no index/gather kernel)."""
    H = W = size
    x = torch.arange(H * W, dtype=torch.float32).reshape(1, H, W, 1)
    ops: list[str] = []

    class Record(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            ops.append(func.overloadpacket.__name__)
            return func(*args, **(kwargs or {}))

    with Record():
        d = disperse(x, window, patch)
    d = d[:, 0, :, 0]                                              # (groups, (P/p)^2)
    assert sorted(d.flatten().tolist()) == list(range(H * W))     # a bijection: nothing repeated or lost
    g = patch // window
    for i in range(H):
        for j in range(W):  # token (i, j): patch (i // P, j // P), group by offset (i % p, j % p)
            nh, nw = i // patch, j // patch
            group = ((nh * (W // patch) + nw) * window + (i % window)) * window + (j % window)
            pos = ((i % patch) // window) * g + (j % patch) // window
            assert d[group, pos].item() == i * W + j
    assert not {"index", "index_select", "gather", "take", "index_put"} & set(ops), ops
    assert torch.equal(undisperse(disperse(x, window, patch), 1, H, W, window), x)


def test_dispersed_groups_keep_the_window_offset_and_cross_windows():
    """Within one P x P patch, a group holds one token of each p x p window, all at the same offset."""
    x = torch.arange(64, dtype=torch.float32).reshape(1, 8, 8, 1)
    d = disperse(x, 4, 8)[:, 0, :, 0]
    for group in d:
        rows, cols = (group // 8).long(), (group % 8).long()
        assert len({(int(r) % 4, int(c) % 4) for r, c in zip(rows, cols)}) == 1  # one offset
        assert len({(int(r) // 4, int(c) // 4) for r, c in zip(rows, cols)}) == 4  # four windows
    assert F.mse_loss(d.sort(dim=1).values, d).item() == 0.0  # tokens in raster order inside the group
