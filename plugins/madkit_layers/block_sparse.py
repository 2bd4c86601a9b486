"""Block-sparse attention with SDPA: each group of query blocks attends only the keys it may see.

The mask rule allows whole blocks (``masks.allowed``), so most of the dense [queries, keys] mask is
empty: at the FFHQ geometry the skip-causal pattern allows 27% of the pairs. A dense masked SDPA call
computes them all. Here the queries of one side (clean or noised tower) are cut into groups of whole
blocks; a group attends the union of its rows' allowed keys, gathered as contiguous pieces of the
clean and noised key tensors, with the mask restricted to that rectangle (or no mask when it is all
allowed). With groups of one block the executed pairs are exactly the allowed ones. Small blocks make
many small calls whose overhead outweighs the saved work, so consecutive blocks are grouped until a
group holds at least ``min_tokens`` queries (a measured trade-off, see docs/performance.md).

Everything is derived from the dense mask on the CPU, once per plan; the call itself only slices,
gathers and runs SDPA, so it is also traceable by torch.compile and works on the meta device (where
FlopCounterMode counts the executed FLOPs).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

# a group is closed once it holds this many queries (medians of benchmarks/compare_train.py on a CPU)
MIN_GROUP_TOKENS = 64

CLEAN_KEYS, NOISED_KEYS = 0, 1


@dataclass(frozen=True)
class Group:
    """Queries [q0, q1) of one side attend the concatenation of ``pieces`` under ``mask``."""

    q0: int
    q1: int
    pieces: tuple[tuple[int, int, int], ...]  # (CLEAN_KEYS | NOISED_KEYS, start, stop)
    mask: torch.Tensor | None  # bool [q1 - q0, keys]; None = every pair allowed
    keys: int

    @property
    def pairs(self) -> int:
        """(query, key) pairs this group computes."""
        return (self.q1 - self.q0) * self.keys


def segment_starts(streams: torch.Tensor, blocks: torch.Tensor) -> list[int]:
    """Offsets where the (stream, block) id changes: the starts of the blocks of a token sequence."""
    if streams.numel() == 0:
        return []
    change = (streams[1:] != streams[:-1]) | (blocks[1:] != blocks[:-1])
    return [0, *(torch.nonzero(change).flatten() + 1).tolist()]


def build_groups(rows: torch.Tensor, starts: list[int], clean_keys: int, min_tokens: int) -> list[Group]:
    """Groups for one side. rows: bool [Lq, clean_keys + noised keys], the dense mask of its queries;
    starts: the block starts of those queries (``segment_starts``)."""
    lq = rows.shape[0]
    bounds = [*starts, lq]
    groups, q0 = [], 0
    for end in bounds[1:]:
        if end - q0 < min_tokens and end < lq:
            continue  # keep adding whole blocks
        groups.append(_group(rows, q0, end, clean_keys))
        q0 = end
    return groups


def _group(rows: torch.Tensor, q0: int, q1: int, clean_keys: int) -> Group:
    block = rows[q0:q1]
    cols = torch.nonzero(block.any(dim=0)).flatten()
    pieces = []
    for start, stop in _runs(cols.tolist()):
        if start < clean_keys:  # a run may cross from the clean keys into the noised ones
            pieces.append((CLEAN_KEYS, start, min(stop, clean_keys)))
        if stop > clean_keys:
            pieces.append((NOISED_KEYS, max(start, clean_keys) - clean_keys, stop - clean_keys))
    sub = block[:, cols]
    return Group(q0, q1, tuple(pieces), None if bool(sub.all()) else sub, int(cols.numel()))


def _runs(indices: list[int]) -> list[tuple[int, int]]:
    """Sorted indices -> maximal [start, stop) runs of consecutive ones."""
    runs: list[tuple[int, int]] = []
    for i in indices:
        if runs and runs[-1][1] == i:
            runs[-1] = (runs[-1][0], i + 1)
        else:
            runs.append((i, i + 1))
    return runs


def attend_groups(
    q: torch.Tensor, clean_kv: tuple[torch.Tensor, torch.Tensor] | None, noised_kv, groups: list[Group]
) -> torch.Tensor:
    """q [n, h, Lq, e]; clean_kv / noised_kv: (k, v) [n, h, L, e] (clean may be None when no group
    reads it). Returns [n, h, Lq, e] whose memory is [n, Lq, h, e] when SDPA's outputs are (queries
    laid out that way), so the output projection flattens it without a copy."""
    sources = (clean_kv, noised_kv)
    gathered: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}
    outs = []
    for g in groups:
        kv = gathered.get(g.pieces)
        if kv is None:
            kv = gathered[g.pieces] = _gather(sources, g.pieces)
        out = F.scaled_dot_product_attention(q[:, :, g.q0 : g.q1], kv[0], kv[1], attn_mask=g.mask)
        outs.append(out.transpose(1, 2))
    merged = outs[0] if len(outs) == 1 else torch.cat(outs, dim=1)
    return merged.transpose(1, 2)


def _gather(sources, pieces) -> tuple[torch.Tensor, torch.Tensor]:
    """Keys and values of ``pieces``: a view when there is one piece, else one concatenation."""
    ks = [sources[src][0][:, :, a:b] for src, a, b in pieces]
    vs = [sources[src][1][:, :, a:b] for src, a, b in pieces]
    if len(pieces) == 1:
        return ks[0], vs[0]
    return torch.cat(ks, dim=2), torch.cat(vs, dim=2)


def tile_pairs(rows: torch.Tensor, tile: int = 128) -> int:
    """Pairs a tiled kernel (FlexAttention's BlockMask) computes for the dense mask ``rows``: every
    tile x tile square holding at least one allowed pair, clipped to the sequence lengths."""
    lq, lk = rows.shape
    pq, pk = -lq % tile, -lk % tile
    padded = F.pad(rows, (0, pk, 0, pq))
    active = padded.view((lq + pq) // tile, tile, (lk + pk) // tile, tile).any(dim=3).any(dim=1)
    q_sizes = torch.full(((lq + pq) // tile,), tile)
    q_sizes[-1] = lq - tile * (q_sizes.numel() - 1)
    k_sizes = torch.full(((lk + pk) // tile,), tile)
    k_sizes[-1] = lk - tile * (k_sizes.numel() - 1)
    return int((active.long() * q_sizes[:, None] * k_sizes[None, :]).sum())
