"""Attention plans: how one forward pass lays out its tokens and which backend computes attention.

Training (and uncached generation) runs "full" passes over [clean-tower tokens ; noised-tower tokens]
with a mask from ``masks.allowed``. Cached generation runs "clean" passes (new clean blocks attend the
cache and themselves, then are appended to it) and "noised" passes (a noised block attends the cache,
unless the layer is intra-block, and itself); neither needs a mask because the cache holds exactly
the keys the rule allows.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from madkit_layers import masks


@dataclass
class LayerCache:
    """Keys/values [n, heads, L, hd] of the tokens later queries may attend (context + clean blocks)."""

    k: torch.Tensor | None = None
    v: torch.Tensor | None = None

    def append(self, k: torch.Tensor, v: torch.Tensor) -> None:
        self.k = k if self.k is None else torch.cat([self.k, k], dim=2)
        self.v = v if self.v is None else torch.cat([self.v, v], dim=2)

    def with_new(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.k is None:
            return k, v
        return torch.cat([self.k, k], dim=2), torch.cat([self.v, v], dim=2)


@dataclass
class StreamLayout:
    """Per-token stream and block ids plus RoPE tables for one segment of the sequence."""

    streams: torch.Tensor  # [L] long
    blocks: torch.Tensor  # [L] long
    cos: torch.Tensor  # [L, hd]
    sin: torch.Tensor

    @property
    def length(self) -> int:
        return self.streams.numel()


@dataclass
class FullPlan:
    """A masked pass over clean-tower tokens (may be empty) followed by noised-tower tokens."""

    clean: StreamLayout
    noised: StreamLayout
    backend: str = "auto"  # auto | sdpa | flex
    _masks: dict = field(default_factory=dict)

    def mask(self, pattern: str, device: torch.device, with_clean: bool):
        key = (pattern, with_clean)
        if key not in self._masks:
            streams = torch.cat([self.clean.streams, self.noised.streams]) if with_clean else self.noised.streams
            blocks = torch.cat([self.clean.blocks, self.noised.blocks]) if with_clean else self.noised.blocks
            streams, blocks = streams.to(device), blocks.to(device)
            if resolve_backend(self.backend, device) == "flex":
                self._masks[key] = ("flex", masks.flex_block_mask(pattern, streams, blocks))
            else:
                self._masks[key] = ("sdpa", masks.dense_mask(pattern, streams, blocks))
        return self._masks[key]


@dataclass
class CachedPlan:
    """A pass in cached generation: ``stream`` is "clean" (append to cache) or "noised"."""

    stream: str
    layout: StreamLayout
    caches: list[LayerCache]
    append_noised: bool = False  # single-stream models cache their noised AR keys


def resolve_backend(backend: str, device: torch.device) -> str:
    if backend == "auto":
        # FlexAttention has no backward on CPU (torch 2.14); dense SDPA is also faster there.
        return "flex" if device.type == "cuda" else "sdpa"
    return backend


_FLEX = None


def _flex_attention():
    global _FLEX
    if _FLEX is None:
        from torch.nn.attention.flex_attention import flex_attention

        # compiled flex is the block-sparse kernel; eager flex materialises scores (tests only)
        _FLEX = torch.compile(flex_attention, dynamic=False) if torch.cuda.is_available() else flex_attention
    return _FLEX


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask=None) -> torch.Tensor:
    """q [n, h, Lq, hd], k/v [n, h, Lk, hd]; mask None, ("sdpa", bool [Lq, Lk]) or ("flex", BlockMask)."""
    if mask is None:
        return F.scaled_dot_product_attention(q, k, v)
    kind, m = mask
    if kind == "flex":
        return _flex_attention()(q, k, v, block_mask=m)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=m)
