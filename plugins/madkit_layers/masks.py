"""The attention rule, defined once at block granularity, and its two backends' masks.

Every token carries a stream id and a block id:
    CONTEXT (class token), CLEAN (clean block b), NOISED (noised block j: shifted clean block j-1 plus
    the noisy latent of block j).
Patterns (what a layer's attention may see):
    "skip-causal"  clean q sees clean k with kb <= qb; noised q sees clean k with kb < qb and its own
                   noised block; every token sees the context. Clean never sees noised.
    "intra-block"  noised q sees only its own noised block (the paper's "MLP denoising" ablation);
                   clean and context tokens follow skip-causal (they only feed later layers).
    "causal"       single stream (no clean tower): noised q sees noised k with kb <= qb, and context.
The same ``allowed`` function builds the dense boolean mask for SDPA (CPU, and any device) and the
FlexAttention ``mask_mod`` (CUDA), so the two backends cannot disagree about the rule.
"""

from __future__ import annotations

import torch

CONTEXT, CLEAN, NOISED = 0, 1, 2
PATTERNS = ("skip-causal", "intra-block", "causal")


def allowed(pattern: str, qs, qb, ks, kb):
    """Elementwise rule on (stream, block) of queries and keys; works on broadcast tensors."""
    ctx_key = ks == CONTEXT
    clean_q, noised_q = qs == CLEAN, qs == NOISED
    same_noised = noised_q & (ks == NOISED) & (kb == qb)
    ctx_q_ctx_k = (qs == CONTEXT) & ctx_key
    clean_clean = clean_q & (ks == CLEAN) & (kb <= qb)
    clean_side = ctx_q_ctx_k | (clean_q & ctx_key) | clean_clean  # the same in every two-stream pattern
    if pattern == "skip-causal":
        return clean_side | (noised_q & ctx_key) | (noised_q & (ks == CLEAN) & (kb < qb)) | same_noised
    if pattern == "intra-block":
        return clean_side | same_noised
    if pattern == "causal":
        return ctx_q_ctx_k | (noised_q & ctx_key) | (noised_q & (ks == NOISED) & (kb <= qb))
    raise ValueError(f"unknown attention pattern {pattern!r}; known: {', '.join(PATTERNS)}")


def dense_mask(pattern: str, streams: torch.Tensor, blocks: torch.Tensor) -> torch.Tensor:
    """Bool [L, L] mask (True = may attend) for token streams/blocks [L]."""
    return allowed(pattern, streams[:, None], blocks[:, None], streams[None, :], blocks[None, :])


def flex_block_mask(pattern: str, streams, blocks, key_streams=None, key_blocks=None, batch_heads=(None, None)):
    """A FlexAttention BlockMask for the same rule (CUDA); skipped tiles cost nothing. Queries carry
    ``streams``/``blocks``, keys ``key_streams``/``key_blocks`` (default: the same tokens)."""
    from torch.nn.attention.flex_attention import create_block_mask

    key_streams = streams if key_streams is None else key_streams
    key_blocks = blocks if key_blocks is None else key_blocks

    def mask_mod(b, h, q, k):
        return allowed(pattern, streams[q], blocks[q], key_streams[k], key_blocks[k])

    lq, lk = streams.numel(), key_streams.numel()
    return create_block_mask(mask_mod, batch_heads[0], batch_heads[1], lq, lk, device=streams.device)


def allowed_fraction(pattern: str, streams: torch.Tensor, blocks: torch.Tensor) -> float:
    return dense_mask(pattern, streams, blocks).float().mean().item()


def block_table(pattern: str, num_blocks: int, two_streams: bool = True) -> torch.Tensor:
    """Block-level pattern [S, S] over the concatenated block sequence (clean 0..T-1, noised 0..T-1)."""
    t = torch.arange(num_blocks)
    if two_streams:
        streams = torch.cat([torch.full((num_blocks,), CLEAN), torch.full((num_blocks,), NOISED)])
        blocks = torch.cat([t, t])
    else:
        streams, blocks = torch.full((num_blocks,), NOISED), t
    return dense_mask(pattern, streams, blocks)
