"""Broadcasting per-sample timestep coefficients over data with trailing dims."""

from __future__ import annotations

import torch


def expand_left(coef: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """View ``coef`` (shaped like the timesteps) so it broadcasts from the LEFT over ``x``.

    Timesteps index the leading dims of the data: t [n] for x [n, c, h, w], or t [n, t] (one
    timestep per block) for x [n, t, b, c]. Plain torch broadcasting aligns from the right, which
    would silently pair the block axis with the channel axis, so we append singleton dims instead.
    A 0-d ``coef`` (one timestep for the whole batch, as in a sampling loop) broadcasts everywhere.
    """
    if coef.ndim > x.ndim or any(a not in (1, b) for a, b in zip(coef.shape, x.shape)):
        raise ValueError(
            f"timesteps of shape {tuple(coef.shape)} do not match the leading dims of data of shape "
            f"{tuple(x.shape)}; pass one timestep per leading element, e.g. t [n] or [n, t] for x [n, t, b, c]"
        )
    return coef.reshape(*coef.shape, *([1] * (x.ndim - coef.ndim)))


def check_pair(x0: torch.Tensor, noise: torch.Tensor) -> None:
    """Clean data and noise must have the same shape: broadcasting them would hide a bug."""
    if x0.shape != noise.shape:
        raise ValueError(f"x0 {tuple(x0.shape)} and noise {tuple(noise.shape)} must have the same shape")
