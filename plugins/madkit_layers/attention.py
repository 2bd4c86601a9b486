"""Attention plans: how one forward pass lays out its tokens and which backend computes attention.

Training (and uncached generation) runs "full" passes over [clean-tower tokens ; noised-tower tokens]
with a mask from ``masks.allowed``. Cached generation runs "clean" passes (new clean blocks attend the
cache and themselves, then are appended to it) and "noised" passes (a noised block attends the cache,
unless the layer is intra-block, and itself); neither needs a mask because the cache holds exactly
the keys the rule allows.

The cache is preallocated (capacity = every token a later query may read, plus one block) and written
in place: a noised block's keys go into the slots right after the committed tokens, so attending
"cache + own block" is one view of the buffer, with no concatenation of the whole cache per step."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from madkit_layers import masks


class LayerCache:
    """Keys/values [n, heads, capacity, hd] of one layer, allocated once and written in place.

    ``length`` tokens are committed (the context, finished clean blocks, and in one-stream models the
    noised AR blocks). A pass of m tokens opens a window, the view of the first length + m slots, writes
    its own keys into the last m and attends the whole window; ``commit`` keeps them for later passes.
    """

    def __init__(self, batch: int, heads: int, capacity: int, head_dim: int, dtype: torch.dtype, device):
        self.capacity = capacity
        self.length = 0
        # one slot more than is ever written: a full window would be contiguous and the others not, and a
        # compiled pass would compile again for that one layout
        self.k = torch.empty(batch, heads, capacity + 1, head_dim, dtype=dtype, device=device)
        self.v = torch.empty_like(self.k)

    def window(self, m: int) -> tuple[torch.Tensor, torch.Tensor]:
        end = self.length + m
        if end > self.capacity:
            raise RuntimeError(f"KV cache overflow: {end} tokens for a capacity of {self.capacity}")
        return self.k[:, :, :end], self.v[:, :, :end]

    def commit(self, m: int) -> None:
        self.length += m

    def rewind(self, m: int) -> None:
        """Forget the last m committed tokens (they are about to be written again)."""
        self.length -= m


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
    """A pass in cached generation: ``stream`` is "clean" (new clean tokens, appended to the cache) or
    "noised" (one block: its AR pass and every denoising step reuse the plan).

    ``windows`` maps a layer index to the cache window the pass attends, opened before the pass (see
    ``LayerCache``); a layer only writes its own keys/values into the window's tail, so a pass reads no
    Python-side cache state: a compiled pass does not recompile per block, and a CUDA graph replays the
    same addresses.
    """

    stream: str
    layout: StreamLayout
    windows: dict[int, tuple[torch.Tensor, torch.Tensor]]

    def keys_values(self, index: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys/values layer ``index`` attends: the cache window with its own k/v [n, h, m, hd] written in."""
        keys, values = self.windows[index]
        start = keys.shape[2] - k.shape[2]
        keys[:, :, start:] = k
        values[:, :, start:] = v
        return keys, values


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
