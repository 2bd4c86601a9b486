"""Attention plans: how one forward pass lays out its tokens and which backend computes attention.

Training (and uncached generation) runs "full" passes over [clean-tower tokens ; noised-tower tokens]
under the rule of ``masks.allowed``, with one of three backends:
    sdpa          dense boolean masks (one SDPA call per tower's queries);
    block-sparse  SDPA per group of query blocks over only the keys they may see (``block_sparse``):
                  the masked work is skipped; the CPU default;
    flex          FlexAttention block masks (compiled; tiles without an allowed pair are skipped);
                  the CUDA default.
Cached generation runs "clean" passes (new clean blocks attend the
cache and themselves, then are appended to it) and "noised" passes (a noised block attends the cache,
unless the layer is intra-block, and itself); neither needs a mask because the cache holds exactly
the keys the rule allows.

The cache is preallocated (capacity = every token a later query may read, plus one block) and written
in place: a noised block's keys go into the slots right after the committed tokens, so attending
"cache + own block" is one view of the buffer, with no concatenation of the whole cache per step."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F

from madkit_layers import block_sparse, masks


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
    """A masked pass over clean-tower tokens (may be empty) followed by noised-tower tokens.

    Each tower's queries attend in their own call, so nothing concatenates queries or splits outputs:
    clean queries read only clean keys (the rule never lets them see noised ones), noised queries read
    the clean and noised keys they may see. ``attend`` takes each tower's (q, k, v) and returns each
    tower's output; how it computes them is the backend's business (``prepare``): masks or block
    groups built once per (pattern, device, whether clean keys exist) and kept for every later layer
    and step.
    """

    clean: StreamLayout
    noised: StreamLayout
    backend: str = "auto"  # auto | sdpa | block-sparse | flex
    _prepared: dict = field(default_factory=dict)

    def attend(self, pattern: str, clean, noised):
        """clean: (q, k, v) of the clean tower, q None when its queries are not needed, or None;
        noised: (q, k, v); each [n, h, L, e]. Returns (clean output, None without clean queries;
        noised output), each [n, h, L, e]."""
        with_clean = clean is not None and clean[1].shape[2] > 0
        return self.prepare(pattern, noised[0].device, with_clean)(clean if with_clean else None, noised)

    def prepare(self, pattern: str, device: torch.device, with_clean: bool):
        key = (pattern, str(device), with_clean)
        if key not in self._prepared:
            self._prepared[key] = self._build(pattern, torch.device(device), with_clean)
        return self._prepared[key]

    def _build(self, pattern: str, device: torch.device, with_clean: bool):
        lc = self.clean.length if with_clean else 0
        streams = torch.cat([self.clean.streams[:lc], self.noised.streams])
        blocks = torch.cat([self.clean.blocks[:lc], self.noised.blocks])
        rows = masks.dense_mask(pattern, streams, blocks)  # [Lc + Ln, Lc + Ln] on the CPU
        backend = resolve_backend(self.backend, device)
        if backend == "block-sparse":
            clean_starts = block_sparse.segment_starts(self.clean.streams[:lc], self.clean.blocks[:lc])
            noised_starts = block_sparse.segment_starts(self.noised.streams, self.noised.blocks)
            return BlockSparseAttention(
                _groups(rows[:lc], clean_starts, lc, device), _groups(rows[lc:], noised_starts, lc, device)
            )
        noised_reads_clean = bool(rows[lc:, :lc].any())
        lo = 0 if noised_reads_clean else lc  # the noised call's first key
        ids = (streams, blocks)
        clean_mask = _backend_mask(backend, pattern, rows, ids, (0, lc), (0, lc), device) if lc else None
        noised_mask = _backend_mask(backend, pattern, rows, ids, (lc, rows.shape[0]), (lo, rows.shape[1]), device)
        return TwoCallAttention(clean_mask, noised_mask, noised_reads_clean)


class TwoCallAttention:
    """One call for the clean queries over the clean keys, one for the noised queries over the keys
    they may read ([clean ; noised], or noised only), each under its dense or FlexAttention mask."""

    def __init__(self, clean_mask, noised_mask, noised_reads_clean: bool):
        self.clean_mask, self.noised_mask, self.noised_reads_clean = clean_mask, noised_mask, noised_reads_clean

    def __call__(self, clean, noised):
        qn, kn, vn = noised
        out_c = None
        if clean is not None and clean[0] is not None:
            out_c = attend(*clean, self.clean_mask)
        if clean is not None and self.noised_reads_clean:
            kn, vn = torch.cat([clean[1], kn], dim=2), torch.cat([clean[2], vn], dim=2)
        return out_c, attend(qn, kn, vn, self.noised_mask)


class BlockSparseAttention:
    """Per tower, groups of query blocks over only the keys they may read (``block_sparse``)."""

    def __init__(self, clean_groups, noised_groups):
        self.clean_groups, self.noised_groups = clean_groups, noised_groups

    def __call__(self, clean, noised):
        clean_kv = (clean[1], clean[2]) if clean is not None else None
        out_c = None
        if clean is not None and clean[0] is not None:
            out_c = block_sparse.attend_groups(clean[0], clean_kv, None, self.clean_groups)
        out_n = block_sparse.attend_groups(noised[0], clean_kv, (noised[1], noised[2]), self.noised_groups)
        return out_c, out_n

    def pairs(self) -> int:
        return sum(g.pairs for g in self.clean_groups + self.noised_groups)


def _groups(rows: torch.Tensor, starts: list[int], clean_keys: int, device: torch.device):
    groups = block_sparse.build_groups(rows, starts, clean_keys, block_sparse.MIN_GROUP_TOKENS)
    return [g if g.mask is None else replace(g, mask=g.mask.to(device)) for g in groups]


def _backend_mask(backend, pattern, rows, ids, q_range, k_range, device):
    """("sdpa", bool mask) or ("flex", BlockMask) of the queries ``q_range`` over the keys ``k_range``
    of the token sequence whose dense mask is ``rows`` and (stream, block) ids are ``ids``."""
    (q0, q1), (k0, k1) = q_range, k_range
    if backend == "flex":
        streams, blocks = (t.to(device) for t in ids)
        return ("flex", masks.flex_block_mask(pattern, streams[q0:q1], blocks[q0:q1], streams[k0:k1], blocks[k0:k1]))
    return ("sdpa", rows[q0:q1, k0:k1].to(device))


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
        # FlexAttention has no backward on CPU; the block-sparse SDPA groups skip the masked work there
        return "flex" if device.type == "cuda" else "block-sparse"
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
