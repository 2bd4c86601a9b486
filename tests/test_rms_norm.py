"""madkit's RMSNorm (closed-form backward) against torch's nn.RMSNorm: same forward bit for bit, same
gradients to float rounding, same state-dict keys; the composite path where the fast one does not apply."""

import pytest
import torch
from madkit_layers.rms_norm import RMSNorm
from torch import nn


def _pair(dim: int, eps: float):
    torch.manual_seed(0)
    ours, theirs = RMSNorm(dim, eps=eps), nn.RMSNorm(dim, eps=eps)
    with torch.no_grad():
        ours.weight.uniform_(0.5, 1.5)
    theirs.load_state_dict(ours.state_dict())
    return ours, theirs


# the pre-norm layout [n, L, d], and the q/k-norm layout: a strided view of the qkv projection
@pytest.mark.parametrize("strided", [False, True])
def test_matches_nn_rmsnorm_forward_and_gradients(strided):
    ours, theirs = _pair(32, 1e-6)
    base = torch.randn(3, 7, 4, 3 * 32) * 3
    x = base[..., 32:64] if strided else base[..., :32].contiguous()
    g = torch.randn(x.shape)
    results = []
    for norm in (ours, theirs):
        xi = x.clone().requires_grad_() if not strided else x.detach().requires_grad_()
        y = norm(xi)
        results.append((y, *torch.autograd.grad(y, (xi, norm.weight), g)))
    (y1, gx1, gw1), (y2, gx2, gw2) = results
    assert ours(x).grad_fn is not None and "RMSNormFunction" in type(y1.grad_fn).__name__
    assert torch.equal(y1, y2)
    torch.testing.assert_close(gx1, gx2, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(gw1, gw2, rtol=1e-5, atol=1e-5)


def test_only_input_or_only_weight_needs_gradient():
    ours, theirs = _pair(16, 1e-5)
    x = torch.randn(5, 16, requires_grad=True)
    ours.weight.requires_grad_(False)
    theirs.weight.requires_grad_(False)
    torch.testing.assert_close(torch.autograd.grad(ours(x).sum(), x)[0], torch.autograd.grad(theirs(x).sum(), x)[0])
    ours.weight.requires_grad_(True)
    theirs.weight.requires_grad_(True)
    x = x.detach()
    gw = [torch.autograd.grad((n(x) ** 2).sum(), n.weight)[0] for n in (ours, theirs)]
    torch.testing.assert_close(*gw)


@pytest.mark.filterwarnings("ignore:Mismatch dtype")
def test_composite_path_without_gradients_or_in_bf16():
    ours, theirs = _pair(16, 1e-5)
    x = torch.randn(4, 16)
    with torch.no_grad():
        assert torch.equal(ours(x), theirs(x))
    xb = x.bfloat16()
    assert torch.equal(ours(xb), theirs(xb))
    assert list(ours.state_dict()) == list(theirs.state_dict()) == ["weight"]


def test_fp32_input_under_bf16_autocast_matches():
    """The pre-norms see the fp32 residual stream inside bf16 autocast: same values and gradients."""
    ours, theirs = _pair(16, 1e-5)
    x = torch.randn(4, 16)
    outs = []
    for norm in (ours, theirs):
        xi = x.clone().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = norm(xi)
        outs.append((y, torch.autograd.grad(y.sum(), xi)[0]))
    assert outs[0][0].dtype == outs[1][0].dtype == torch.float32
    assert torch.equal(outs[0][0], outs[1][0])
    torch.testing.assert_close(outs[0][1], outs[1][1])
