"""The fast paths of hiir.models keep the numerics: outputs and gradients of tiny networks
equal a reference saved before the speed work, for fixed weights and input; the eval-mode
position-bias cache follows the weights; the shifted-window mask cache is shared and bounded.

The reference is `tests/data/model_reference.safetensors`. It was written once, by the code before
the changes, with `HIIR_WRITE_REFERENCE=1 .venv/bin/python -m pytest tests/test_model_speed_paths.py`;
only rewrite it for a change that is meant to alter the numerics.
"""
from __future__ import annotations

import math
import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from hiir.models import build
from hiir.models.flows import ContinuousPositionBias, ShiftedWindow, attend, shift_mask

REFERENCE = Path(__file__).parent / "data" / "model_reference.safetensors"

# Every partition, FFN, similarity, norm placement and layout the fast paths touch. The reference predates the
# input's mean shift, a change of numerics outside the fast paths: the columnar cases build without it
# (tests/test_models.py checks the shift itself).
CASES = {
    "v3_permute": ("tiny_x2", dict(mean_shift=False)),
    "v1_shift": ("tiny_x2", dict(layout="v1", mixer_l2="shift", mean_shift=False)),
    "v2_cosine_pre_grid": ("tiny_x2", dict(layout="v2", attention="cosine", norm="pre", mixer_l2="grid",
                                           mean_shift=False)),
    "depth4": ("tiny_x2", dict(tree_depth=4, mean_shift=False)),
    "depth2_none_v1": ("tiny_x2", dict(tree_depth=2, mixer_l2="none", layout="v1", ffn_ratio=2.0, mean_shift=False)),
    "random_x4_conv3": ("tiny_x4", dict(mixer_l2="random", stage_conv="conv3", mean_shift=False)),
    "unet": ("tiny_unet", {}),
}
SHAPE = (2, 3, 8, 16)


def _fill(model: nn.Module) -> None:
    """Weights from a fixed generator, by parameter name: independent of construction order and init."""
    g = torch.Generator().manual_seed(0)
    norms = {f"{n}.weight" for n, m in model.named_modules() if isinstance(m, nn.LayerNorm)}
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            noise = torch.randn(p.shape, generator=g)
            if name in norms:
                p.copy_(1 + 0.1 * noise)
            elif name.endswith("logit_scale"):
                p.copy_(math.log(10.0) + 0.1 * noise)
            elif p.ndim >= 2:
                p.copy_(0.5 * noise / math.sqrt(p[0].numel()))
            else:
                p.copy_(0.1 * noise)


def _run(preset: str, overrides: dict) -> dict[str, torch.Tensor]:
    """Train-mode output, input gradient and per-parameter gradient norms (sorted by name), and the
    eval-mode output twice (the second one through any eval cache). One thread: on 2 shared cores,
    tiny ops spend most of their time in OpenMP barriers."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = build(preset, **overrides)
        _fill(model)
        g = torch.Generator().manual_seed(1)
        x = torch.rand(SHAPE, generator=g).requires_grad_(True)
        torch.manual_seed(2)  # the random mixer's training permutation
        out = model.train()(x)
        weight = torch.randn(out.shape, generator=g)
        (out * weight).sum().backward()
        grads = torch.stack([p.grad.norm() for _, p in sorted(model.named_parameters())])
        with torch.no_grad():
            model.eval()
            first, second = model(x), model(x)
    finally:
        torch.set_num_threads(threads)
    return {"out_train": out.detach(), "grad_x": x.grad, "grad_norms": grads, "out_eval": first,
            "out_eval_again": second}


def _reference() -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(REFERENCE))


STORED = ("out_train", "grad_x", "grad_norms")  # plus out_eval where it differs (the random mixer)

if os.environ.get("HIIR_WRITE_REFERENCE") == "1":  # pragma: no cover - run once, by hand
    from safetensors.torch import save_file

    tensors = {}
    for case, (preset, ov) in CASES.items():
        run = _run(preset, ov)
        keep = STORED + (("out_eval",) if not torch.equal(run["out_eval"], run["out_train"]) else ())
        tensors.update({f"{case}.{k}": run[k].contiguous() for k in keep})
    save_file(tensors, str(REFERENCE))


@pytest.mark.parametrize("case", sorted(CASES))
def test_outputs_and_gradients_match_the_reference(case):
    ref = _reference()
    got = _run(*CASES[case])
    for key in STORED + ("out_eval",):
        want = ref.get(f"{case}.{key}", ref[f"{case}.out_train"])  # eval = train without the random mixer
        torch.testing.assert_close(got[key], want, rtol=1e-4, atol=1e-5, msg=lambda m, key=key: f"{case}.{key}: {m}")
    assert torch.equal(got["out_eval_again"], got["out_eval"])  # a cached eval path gives the same


# ---------------------------------------------------------------------------------------------
# the written-out attention, the eval position-bias cache, the shared shift-mask cache


@pytest.mark.parametrize("groups", [1, 4])
def test_written_out_attention_matches_sdpa_with_gradients(groups):
    torch.manual_seed(0)
    N, h, L = 2 * groups, 3, 16
    q, k = torch.randn(N, h, L, 4, requires_grad=True), torch.randn(N, h, L, 4, requires_grad=True)
    v = torch.randn(N, h, L, 8, requires_grad=True)
    bias = torch.randn(groups, h, L, L, requires_grad=True)
    out = attend(q, k, v, bias)  # CPU, q/k narrower than v: written out
    want = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.repeat(N // groups, 1, 1, 1))
    torch.testing.assert_close(out, want)
    g = torch.randn_like(out)
    grads = torch.autograd.grad(out, (q, k, v, bias), g)
    wants = torch.autograd.grad(want, (q, k, v, bias), g)
    for got, ref in zip(grads, wants):
        torch.testing.assert_close(got, ref)


def test_eval_position_bias_is_computed_once_and_follows_the_weights(monkeypatch):
    torch.manual_seed(0)
    model = build("tiny_x2").eval()
    calls = []
    original = ContinuousPositionBias.compute
    monkeypatch.setattr(ContinuousPositionBias, "compute", lambda self: calls.append(1) or original(self))
    n_cpb = sum(isinstance(m, ContinuousPositionBias) for m in model.modules())
    x = torch.rand(1, 3, 8, 8)
    with torch.no_grad():
        first = model(x)
        assert len(calls) == n_cpb
        assert torch.equal(model(x), first) and len(calls) == n_cpb  # cached
        cpb = model.stages[0].layers[0].l1.cpb
        cpb.mlp[2].weight.mul_(2.0)  # an in-place change (an optimizer step, load_state_dict)
        changed = model(x)
        assert len(calls) == n_cpb + 1
    fresh = build("tiny_x2").eval()
    fresh.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert torch.equal(changed, fresh(x))
        model.load_state_dict(build("tiny_x2").state_dict())  # new weights: every bias recomputed
        model(x)
    assert len(calls) == 3 * n_cpb + 1
    model.train()  # training never uses the cache, and train() empties it
    assert all(m._cached is None for m in model.modules() if isinstance(m, ContinuousPositionBias))
    model(x).sum().backward()
    assert cpb.mlp[2].weight.grad is not None


def test_shift_masks_are_shared_by_all_layers_and_bounded():
    shift_mask.cache_clear()
    torch.manual_seed(0)
    model = build("tiny_x2", layout="v1", mixer_l2="shift").eval()
    shifted = [m for m in model.modules() if isinstance(m, ShiftedWindow)]
    assert len(shifted) >= 2 and not any(hasattr(m, "_masks") for m in shifted)
    with torch.no_grad():
        for side in (8, 16, 24, 32, 40, 48):  # whole-image validation meets many sizes
            model(torch.rand(1, 3, side, side))
    info = shift_mask.cache_info()
    assert info.currsize == info.maxsize == 4  # one mask per size for all layers, the last 4 sizes
    assert shifted[0].mask(48, 48, "cpu", torch.float32) is shifted[-1].mask(48, 48, "cpu", torch.float32)
    assert shift_mask.cache_info().misses == 6


# ---------------------------------------------------------------------------------------------
# the SwinIR-classical comparator of bench/model_step.py


def _swinir():
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    from swinir import SwinIR

    return SwinIR


def test_swinir_comparator_has_the_published_size_and_shapes():
    SwinIR = _swinir()
    with torch.device("meta"):
        assert SwinIR().num_params() == 11_752_487  # classical x2: 11.75M
    torch.manual_seed(0)
    small = SwinIR(dim=12, depths=(2, 2), heads=2, window=4)
    assert small(torch.rand(2, 3, 13, 17)).shape == (2, 3, 26, 34)


def test_swinir_shifted_layer_attends_its_masked_shifted_window():
    SwinIR = _swinir()
    from swinir import SwinAttention

    torch.manual_seed(0)
    attn = SwinAttention(8, 2, window=4, shift=2).double()
    x = torch.randn(1, 16, 16, 8, dtype=torch.float64, requires_grad=True)

    def group(i, j):
        x.grad = None
        attn(x)[0, i, j].sum().backward()
        return {tuple(t) for t in (x.grad[0].abs().sum(-1) > 1e-10).nonzero().tolist()}

    assert group(5, 5) == {(a, b) for a in range(2, 6) for b in range(2, 6)}  # the window shifted by 2
    assert group(0, 0) == {(a, b) for a in range(2) for b in range(2)}  # wrapped, and masked to its region
    assert SwinIR  # the module imported from bench/
