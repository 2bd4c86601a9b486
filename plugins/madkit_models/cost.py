"""Exact analytic cost of a MADFormer: parameters, training FLOPs and sampling FLOPs per image.

FLOPs count multiply-adds as 2. Linear layers: 2 * in * out per token. Attention: 4 * d per allowed
(query, key) pair (scores and the weighted sum), counting only the pairs the mask allows, in closed
form (tests check the closed forms against the mask itself). Embedder FLOPs are measured with torch's
FlopCounterMode on the model's device (meta for ``madkit flops``: shapes only), so they follow torch's
counting rules (convolutions and matmuls). Training = 3 x forward (backward ~ 2 x forward).

A sequence is described as: c context tokens, clean blocks 0..tc-1 and noised blocks lo..hi-1, all
blocks of B tokens; ``with_clean`` says whether the layer computes the context and clean tokens.
"""

from __future__ import annotations

from functools import lru_cache

import torch
from madkit_layers.masks import CLEAN, NOISED, allowed
from torch.utils.flop_counter import FlopCounterMode


def linear_flops_per_token(module: torch.nn.Module) -> int:
    return sum(2 * m.in_features * m.out_features for m in module.modules() if isinstance(m, torch.nn.Linear))


def attention_pairs(
    pattern: str, B: int, c: int, tc: int, lo: int, hi: int, with_clean: bool, clean_queries: bool = True
) -> int:
    """Allowed (query, key) pairs of one layer over the sequence described in the module docstring;
    ``clean_queries`` False: the clean tokens are keys only (the last layer whose clean keys are read)."""
    if pattern == "none":
        return 0
    n = hi - lo
    c_, tc_ = (c, tc) if with_clean else (0, 0)
    # context queries see the context; clean block a sees the context and clean blocks <= a
    clean_side = c_ * c_ + B * c_ * tc_ + B * B * tc_ * (tc_ + 1) // 2 if clean_queries else 0
    if pattern == "intra-block":
        return clean_side + n * B * B
    if pattern == "skip-causal":
        # noised block j sees the context, clean blocks < j (all present: j <= tc) and itself
        sum_j = (lo + hi - 1) * n // 2 if with_clean else 0
        return clean_side + B * c_ * n + B * B * sum_j + n * B * B
    if pattern == "causal":
        # one stream: noised block j sees the context and noised blocks lo..j
        return (c_ * c_ if clean_queries else 0) + B * c_ * n + B * B * n * (n + 1) // 2
    raise ValueError(f"unknown attention pattern {pattern!r}")


def mask_pairs(pattern: str, streams: list[int], blocks: list[int], sizes: list[int], noised_queries_only=False) -> int:
    """The same count from the mask rule itself, over segments (for cross-checks and small layouts)."""
    s, b, n = torch.tensor(streams), torch.tensor(blocks), torch.tensor(sizes)
    ok = allowed(pattern, s[:, None], b[:, None], s[None, :], b[None, :])
    if noised_queries_only:
        ok &= (s == NOISED)[:, None]
    return int((ok.long() * n[:, None] * n[None, :]).sum())


class CostModel:
    """Per-layer FLOPs of one model, computed once."""

    def __init__(self, model):
        self.m = model
        self.T, self.B, self.d = model.T, model.B, model.cfg.width
        self.c = 1 if model.has_context else 0
        self.n_ar = model.first_diffusion
        self.noised = [linear_flops_per_token(getattr(layer, "noised", layer)) for layer in model.layers]
        self.clean = [_clean_flops_per_token(layer) for layer in model.layers]
        self.clean_queries = [getattr(layer, "clean_output_needed", False) for layer in model.layers]
        self.patterns = [layer.pattern for layer in model.layers]
        self.embed = self._embedder_flops(unembed=False)
        self.embed_unembed = self._embedder_flops(unembed=True)
        self.time = linear_flops_per_token(model.time) if model.time is not None else 0

    def _embedder_flops(self, unembed: bool) -> int:
        m = self.m
        device = m.boi.device
        cells = torch.zeros(1, m.B, m.embedder.cell_dim, device=device, dtype=m.boi.dtype)
        t = torch.zeros(1, device=device)
        counter = FlopCounterMode(display=False)
        with counter, torch.no_grad():
            tokens, aux = m.embedder.embed(cells, t)
            if unembed:
                m.embedder.unembed(tokens, t, aux)
        return counter.get_total_flops()

    def layer(self, i: int, tc: int, lo: int, hi: int) -> int:
        """FLOPs of layer i over context + clean 0..tc-1 (if it runs them) + noised lo..hi-1."""
        clean_tokens = (self.c + tc * self.B) if i <= self.m.last_clean_layer else 0
        return self.noised[i] * (hi - lo) * self.B + self.clean[i] * clean_tokens + self.attention(i, tc, lo, hi)

    def attention(self, i: int, tc: int, lo: int, hi: int) -> int:
        """Attention FLOPs of layer i over the same sequence: only the pairs the mask allows."""
        with_clean = i <= self.m.last_clean_layer
        pairs = attention_pairs(self.patterns[i], self.B, self.c, tc, lo, hi, with_clean, self.clean_queries[i])
        return 4 * self.d * pairs

    def train_attention_forward(self) -> int:
        """Useful attention FLOPs of one training forward pass per image."""
        tc = 0 if self.m.single_stream else self.T - 1
        return sum(self.attention(i, tc, 0, self.T) for i in range(len(self.patterns)))

    def train_forward(self) -> tuple[int, int]:
        T, B = self.T, self.B
        tc = 0 if self.m.single_stream else T - 1
        flops = sum(self.layer(i, tc, 0, T) for i in range(len(self.patterns)))
        hidden = self.m.cfg.hidden_loss_weight > 0
        unembed = self.embed_unembed - self.embed
        flops += (T - 1) * self.embed + T * self.embed_unembed + (T * unembed if hidden else 0) + T * self.time
        return flops, self.c + tc * B + T * B

    def sample_cached(self, steps: int) -> tuple[int, int]:
        m, B, d, c = self.m, self.B, self.d, self.c
        flops = passes = 0
        clean_attends = self.clean_queries  # the last clean-reading layer computes only clean keys/values
        for i in range(m.last_clean_layer + 1 if c else 0):  # the context token's clean pass, once
            flops += self.clean[i] * c + (4 * d * c * c if clean_attends[i] else 0)
        for j in range(self.T):
            keys = c + j * B + B  # the cache (context + clean or noised blocks < j) and the own block
            if j > 0:
                flops += self.embed  # clean block j-1 is embedded once
                if not m.single_stream:  # its clean pass, once
                    for i in range(m.last_clean_layer + 1):
                        flops += self.clean[i] * B + (4 * d * B * (c + j * B) if clean_attends[i] else 0)
                        passes += 1
            for i in range(self.n_ar):  # AR pass, once
                kv = B if self.patterns[i] == "intra-block" else keys
                flops += self.noised[i] * B + 4 * d * B * kv
                passes += 1
            for i in range(self.n_ar, len(self.patterns)):  # diffusion layers, every step
                pattern = self.patterns[i]
                kv = 0 if pattern == "none" else B if pattern in ("intra-block",) or m.single_stream else keys
                flops += steps * (self.noised[i] * B + 4 * d * B * kv)
                passes += steps
            flops += steps * (self.embed_unembed + self.time)
        return flops, passes

    def sample_uncached(self, steps: int) -> tuple[int, int]:
        """The reference path: the whole prefix through every layer at every step."""
        m = self.m
        flops = 0
        for j in range(self.T):
            tc, lo = (0, 0) if m.single_stream else (j, j)
            embeds = (j if j else 0) * self.embed + self.embed_unembed
            per_step = embeds + self.time + sum(self.layer(i, tc, lo, j + 1) for i in range(len(self.patterns)))
            flops += steps * per_step
        return flops, steps * self.T * len(self.patterns)


def _clean_flops_per_token(layer) -> int:
    if not hasattr(layer, "clean"):
        return 0
    if layer.clean_output_needed:
        return linear_flops_per_token(layer.clean)
    return linear_flops_per_token(layer.clean.qkv) * 2 // 3  # only the k/v rows of the projection run


@lru_cache(maxsize=None)
def _nominal_fraction(T: int, two_streams: bool) -> float:
    """Allowed fraction of the paper's nominal layout (clean 0..T-1, noised 0..T-1), per block."""
    if two_streams:
        pairs = attention_pairs("skip-causal", 1, 0, T, 0, T, True)
        return pairs / (2 * T) ** 2
    return attention_pairs("causal", 1, 0, 0, 0, T, True) / T**2


def model_cost(model, steps: int) -> dict:
    cost = CostModel(model)
    emb = model.embedder
    breakdown = {
        "transformer": sum(p.numel() for p in model.layers.parameters()),
        "embedder": sum(p.numel() for p in emb.parameters()),
        "boi": model.boi.numel(),
    }
    if hasattr(emb, "down"):
        breakdown.update(
            embedder_down=sum(p.numel() for p in emb.down.parameters()),
            embedder_up=sum(p.numel() for p in emb.up.parameters()),
        )
    fwd, computed_len = cost.train_forward()
    cached, passes = cost.sample_cached(steps)
    uncached, passes_uncached = cost.sample_uncached(steps)
    T, B = model.T, model.B
    return {
        "parameters": sum(p.numel() for p in model.parameters()),
        "parameters_breakdown": breakdown,
        "blocks": T,
        "tokens_per_block": B,
        "depth": len(model.layers),
        "diffusion_depth": len(model.layers) - model.first_diffusion,
        # the paper's layout (clean 0..T-1 + noised 0..T-1); "computed" drops what nobody attends
        "train_sequence_length": (1 if model.single_stream else 2) * T * B,
        "train_sequence_length_computed": computed_len,
        "attention_allowed_fraction": _nominal_fraction(T, not model.single_stream),
        "train_forward_flops_per_image": fwd,
        "train_flops_per_image": 3 * fwd,
        "steps": steps,
        "nfe": steps * T,
        "layer_passes": passes,
        "sample_flops_per_image": cached,
        "layer_passes_uncached": passes_uncached,
        "sample_flops_per_image_uncached": uncached,
    }


__all__ = ["attention_pairs", "mask_pairs", "model_cost", "CLEAN", "NOISED"]
