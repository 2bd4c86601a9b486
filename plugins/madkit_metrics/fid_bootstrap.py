"""How much an FID estimate would move with another draw of generated images: a bootstrap over them.

Why resample the generated images rather than generate again with other seeds: both measure the same
thing (the noise of a finite generated set against a fixed reference), but the bootstrap reuses the
features already computed, so it costs no generation and no extractor pass. The reference is held
fixed: every model of a comparison is measured against the same reference, so its own finite-sample
noise does not separate them. A replicate resamples n of the n images with replacement; the spread
of the replicates' FIDs estimates the standard deviation of the FID over repeated draws (tested
against independent draws on Gaussian features). Replicates sit above the point estimate (a resample
repeats images, so it looks less diverse); only their spread is reported.

Each replicate is cheap. With R the symmetric square root of the reference covariance (computed
once), tr sqrt(S_g S_r) = tr sqrt(R S_g R), and R S_g R is the covariance of the features mapped
through R: resampling is a weight per image, so a replicate costs one Gram matrix of the drawn
images and one symmetric eigenvalue problem, [f, f] or [m, m] for the m distinct images drawn
(about 0.63 n), whichever is smaller; on the GPU when there is one.
"""

from __future__ import annotations

import numpy as np
import torch


class FrechetResampler:
    """FID of the generated features under any weighting of the images (a bootstrap draw, or all ones)."""

    def __init__(self, features: torch.Tensor, mu_ref: np.ndarray, sigma_ref: np.ndarray, device: str | None = None):
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        x = features.to(device=device, dtype=torch.float64)
        self.n = len(x)
        if self.n < 2:
            raise ValueError(f"the FID bootstrap needs at least 2 generated images, got {self.n}")
        mu_r = torch.as_tensor(mu_ref, dtype=torch.float64, device=device)
        sigma_r = torch.as_tensor(sigma_ref, dtype=torch.float64, device=device)
        values, vectors = torch.linalg.eigh((sigma_r + sigma_r.T) / 2)
        root = (vectors * values.clamp(min=0).sqrt()) @ vectors.T
        mean = x.mean(0)
        self.centred = x - mean
        self.mapped = self.centred @ root  # features through R: their covariance is R S_g R
        self.root = root
        self.squared_norms = (self.centred**2).sum(1)  # |x_i - mean|^2, for tr(S_g)
        self.offset = mean - mu_r
        self.trace_ref = torch.trace(sigma_r)

    def fid(self, weights: torch.Tensor) -> float:
        """FID of the images repeated ``weights[i]`` times each (weights sum to n)."""
        n = self.n
        w = weights.to(device=self.centred.device, dtype=torch.float64)
        shift = (w @ self.centred) / n  # the weighted mean minus the full-sample mean
        drawn = w > 0
        # rows of z: the drawn images' mapped features about their weighted mean, scaled by sqrt(weight);
        # z^T z / (n - 1) is R S_g R, and z z^T has the same nonzero eigenvalues: take the smaller one
        z = (self.mapped[drawn] - shift @ self.root) * w[drawn].sqrt()[:, None]
        gram = z @ z.T if len(z) < z.shape[1] else z.T @ z
        trace_sqrt = torch.linalg.eigvalsh(gram / (n - 1)).clamp(min=0).sqrt().sum()
        trace_gen = ((w @ self.squared_norms) - n * (shift @ shift)) / (n - 1)
        mean_term = ((self.offset + shift) ** 2).sum()
        return float(mean_term + trace_gen + self.trace_ref - 2 * trace_sqrt)

    def bootstrap(self, replicates: int, seed: int) -> np.ndarray:
        """``replicates`` FIDs, each of n images drawn with replacement (seeded: the same draws every time)."""
        generator = torch.Generator().manual_seed(seed)
        out = np.empty(replicates)
        for r in range(replicates):
            drawn = torch.randint(self.n, (self.n,), generator=generator)
            out[r] = self.fid(torch.bincount(drawn, minlength=self.n))
        return out
