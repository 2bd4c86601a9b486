"""The residual stream's precision, shared by the training passes and the cached sampler."""

from __future__ import annotations

import torch


def full_precision(x: torch.Tensor) -> torch.Tensor:
    """Residual streams stay at least fp32 under autocast (bf16 residual additions over 28 layers
    round away the small updates); only the matmuls inside the layers run in low precision."""
    return x.float() if x.dtype in (torch.bfloat16, torch.float16) else x
