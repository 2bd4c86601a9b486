"""RMSNorm with a hand-written backward for eager fp32 training on the CPU.

Torch has no fused RMSNorm kernel on the CPU: ``nn.RMSNorm`` runs the composite formula, and autograd
differentiates it op by op (pow, mean, add, rsqrt, two multiplies), about twice the elementwise passes
the closed-form gradient needs. ``RMSNorm`` keeps ``nn.RMSNorm``'s parameters, state-dict keys and
forward numbers (the same ops in the same order, bit-equal) and supplies that closed-form backward:

    xhat = x * rstd,   rstd = 1 / sqrt(mean(x^2) + eps),   y = xhat * w
    dw = sum over rows of g * xhat
    dx = rstd * (g * w - xhat * mean(g * w * xhat))

It takes this path only where it pays and is exact: eager, on the CPU (CUDA has a fused kernel), fp32
input and weight, gradients wanted. Under torch.compile inductor fuses the composite formula and
derives its own backward; bf16 inputs (autocast) and no-grad calls keep ``F.rms_norm`` as well.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class _RMSNormFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        rstd = torch.rsqrt(x.pow(2).mean(-1, keepdim=True).add_(eps))
        xhat = x * rstd
        ctx.save_for_backward(xhat, rstd, weight)
        return xhat * weight

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        xhat, rstd, weight = ctx.saved_tensors
        grad_weight = (grad * xhat).flatten(0, -2).sum(0) if ctx.needs_input_grad[1] else None
        grad_x = None
        if ctx.needs_input_grad[0]:
            scaled = grad * weight
            grad_x = scaled.sub_(xhat * (scaled * xhat).mean(-1, keepdim=True)).mul_(rstd)
        return grad_x, grad_weight, None


class RMSNorm(nn.RMSNorm):
    """``nn.RMSNorm`` over the last dim with an elementwise weight, faster to train eagerly (module doc)."""

    def __init__(self, dim: int, eps: float):
        super().__init__(dim, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        fast = x.device.type == "cpu" and x.dtype == w.dtype == torch.float32 and not torch.compiler.is_compiling()
        if fast and torch.is_grad_enabled() and (x.requires_grad or w.requires_grad):
            return _RMSNormFunction.apply(x, w, self.eps)
        return F.rms_norm(x, self.normalized_shape, w, self.eps)
