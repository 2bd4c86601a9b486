"""2D rotary position embedding over the token grid.

The head dimension is split in two halves: the first rotates with the token's row, the second with
its column (each half in rotate-half layout). Positions come from the partitioner, so a noised block
sits exactly where its clean block sits on the grid.
"""

from __future__ import annotations

import torch


def rope_angles(positions: torch.Tensor, head_dim: int, theta: float = 10000.0) -> tuple[torch.Tensor, torch.Tensor]:
    """positions [L, 2] (row, col) -> (cos, sin), each [L, head_dim] in fp32."""
    if head_dim % 4:
        raise ValueError(f"2D RoPE needs a head dimension divisible by 4, got {head_dim}")
    quarter = head_dim // 4
    freqs = theta ** (-torch.arange(quarter, dtype=torch.float64, device=positions.device) / quarter)
    pos = positions.to(torch.float64)
    row = pos[:, :1] * freqs  # [L, hd/4]
    col = pos[:, 1:] * freqs
    # rotate-half layout per axis: [r, r, c, c] chunks of size hd/4
    angles = torch.cat([row, row, col, col], dim=-1)
    return angles.cos().float(), angles.sin().float()


def _rotate_half_per_axis(x: torch.Tensor) -> torch.Tensor:
    q = x.shape[-1] // 4
    r1, r2, c1, c2 = x.split(q, dim=-1)
    return torch.cat([-r2, r1, -c2, c1], dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [n, heads, L, hd]; cos/sin [L, hd]."""
    dtype = x.dtype
    x32 = x.float()
    return (x32 * cos + _rotate_half_per_axis(x32) * sin).to(dtype)
