"""Exact analytic cost of a MADFormer: parameters, training FLOPs and sampling FLOPs per image.

FLOPs count multiply-adds as 2. Linear layers: 2 * in * out per token. Attention: 4 * d per allowed
(query, key) pair (scores and the weighted sum), counting only the pairs the mask allows. Embedder
FLOPs are measured with torch's FlopCounterMode on meta tensors (convolutions and matmuls), so they
follow torch's counting rules. Training = 3 x forward (backward ~ 2 x forward).
"""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode

from madkit_layers.masks import CLEAN, CONTEXT, NOISED, allowed


def _linear_flops_per_token(module: torch.nn.Module, tower_only=None) -> int:
    mods = tower_only if tower_only is not None else module
    return sum(2 * m.in_features * m.out_features for m in mods.modules() if isinstance(m, torch.nn.Linear))


def _clean_flops_per_token(layer) -> int:
    """The clean tower's linear FLOPs; only q/k/v in the last layer whose clean keys are read."""
    tower = layer.clean
    return _linear_flops_per_token(tower if layer.clean_output_needed else tower.qkv)


def _pairs(pattern: str, q_segments, k_segments) -> int:
    """Allowed pairs between segments [(stream, block, size)] under ``pattern``; block-granular rule."""
    if pattern == "none" or not q_segments or not k_segments:
        return 0
    qs, qb, qn = (torch.tensor(col) for col in zip(*q_segments))
    ks, kb, kn = (torch.tensor(col) for col in zip(*k_segments))
    ok = allowed(pattern, qs[:, None], qb[:, None], ks[None, :], kb[None, :])
    return int((ok.long() * qn[:, None] * kn[None, :]).sum())


def _embedder_flops(model, blocks: int, unembed: bool = True) -> int:
    """FLOPs of embedding (and unembedding) ``blocks`` blocks, measured on meta tensors."""
    emb = model.embedder
    device = model.boi.device  # meta for `madkit flops`: shapes only, no memory
    cells = torch.zeros(blocks, model.B, emb.cell_dim, device=device, dtype=model.boi.dtype)
    t = torch.zeros(blocks, device=device)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        tokens, aux = emb.embed(cells, t)
        if unembed:
            emb.unembed(tokens, t, aux)
    return counter.get_total_flops()


def _train_forward(model) -> tuple[int, int]:
    """(forward FLOPs per image, effective sequence length) of the training pass."""
    T, B, d = model.T, model.B, model.cfg.width
    ctx = [(CONTEXT, -1, 1)] if model.has_context else []
    tc = 0 if model.single_stream else T - 1
    clean = ctx + [(CLEAN, b, B) for b in range(tc)]
    noised = [(NOISED, j, B) for j in range(T)]
    clean_tokens = sum(s for _, _, s in clean)
    flops = 0
    for i, layer in enumerate(model.layers):
        with_clean = i <= model.last_clean_layer
        per_token = _linear_flops_per_token(getattr(layer, "noised", layer))
        seq_q = noised + (clean if with_clean else [])
        flops += per_token * T * B
        if with_clean:
            flops += _clean_flops_per_token(layer) * clean_tokens
        flops += 4 * d * _pairs(layer.pattern, seq_q, seq_q)
    # embed: T-1 clean blocks + T noisy blocks; unembed: T blocks (+ T for the hidden loss)
    embed_unembed = _embedder_flops(model, 1)
    embed_only = _embedder_flops(model, 1, unembed=False)
    hidden = model.cfg.hidden_loss_weight > 0
    flops += (T - 1) * embed_only + T * embed_unembed + (T * (embed_unembed - embed_only) if hidden else 0)
    if model.time is not None:
        flops += T * _linear_flops_per_token(model.time)
    return flops, clean_tokens + T * B


def _sample(model, steps: int, cached: bool) -> dict[str, int]:
    T, B, d = model.T, model.B, model.cfg.width
    c = 1 if model.has_context else 0
    n_ar, n_diff = model.first_diffusion, len(model.layers) - model.first_diffusion
    embed_unembed, embed_only = _embedder_flops(model, 1), _embedder_flops(model, 1, unembed=False)
    flops = layer_passes = 0
    for j in range(T):
        if cached:
            keys = c + j * B + B  # cache (context + clean blocks < j) + own block
            if j > 0 and not model.single_stream:  # clean pass for block j-1, once
                flops += embed_only
                for layer in model.layers[: model.last_clean_layer + 1]:
                    flops += _clean_flops_per_token(layer) * B + 4 * d * B * (c + j * B)
                    layer_passes += 1
            elif j > 0:
                flops += embed_only
            for layer in model.layers[:n_ar]:  # AR pass, once
                kv = B if layer.pattern == "intra-block" else keys
                flops += _linear_flops_per_token(layer.noised) * B + 4 * d * B * kv
                layer_passes += 1
            for layer in model.layers[n_ar:]:  # every step
                kv = 0 if layer.pattern == "none" else (B if layer.pattern == "intra-block" else keys)
                flops += steps * (_linear_flops_per_token(getattr(layer, "noised", layer)) * B + 4 * d * B * kv)
                layer_passes += steps
            flops += steps * embed_unembed
        else:
            # the reference path: the whole prefix through every layer at every step
            tc = 0 if model.single_stream else j
            seq = ([(CONTEXT, -1, 1)] if c else []) + [(CLEAN, b, B) for b in range(tc)] + [(NOISED, j, B)]
            per_step = (tc + 1) * embed_only + embed_unembed - embed_only
            for i, layer in enumerate(model.layers):
                with_clean = i <= model.last_clean_layer
                q = seq if with_clean else seq[-1:]
                tokens_clean = (c + tc * B) if with_clean else 0
                per_step += _linear_flops_per_token(getattr(layer, "noised", layer)) * B
                if with_clean and tokens_clean:
                    per_step += _clean_flops_per_token(layer) * tokens_clean
                per_step += 4 * d * _pairs(layer.pattern, q, q)
            flops += steps * per_step
            layer_passes += steps * len(model.layers)
        if model.time is not None:
            flops += steps * _linear_flops_per_token(model.time)
    return {"flops": flops, "layer_passes": layer_passes}


def model_cost(model, steps: int) -> dict:
    layers = sum(p.numel() for p in model.layers.parameters())
    emb = model.embedder
    breakdown = {"transformer": layers, "embedder": sum(p.numel() for p in emb.parameters()), "boi": model.boi.numel()}
    if hasattr(emb, "down"):
        breakdown.update(
            embedder_down=sum(p.numel() for p in emb.down.parameters()),
            embedder_up=sum(p.numel() for p in emb.up.parameters()),
        )
    fwd, eff_len = _train_forward(model)
    T, B = model.T, model.B
    # the nominal layout of the paper: clean blocks 0..T-1 then noised 0..T-1 (one stream if no clean tower)
    full = ([] if model.single_stream else [(CLEAN, b, B) for b in range(T)]) + [(NOISED, j, B) for j in range(T)]
    pattern = "causal" if model.single_stream else "skip-causal"
    nominal = sum(s for _, _, s in full)
    cached, uncached = _sample(model, steps, True), _sample(model, steps, False)
    return {
        "parameters": sum(p.numel() for p in model.parameters()),
        "parameters_breakdown": breakdown,
        "blocks": T,
        "tokens_per_block": B,
        "depth": len(model.layers),
        "diffusion_depth": len(model.layers) - model.first_diffusion,
        "train_sequence_length": nominal,
        "train_sequence_length_computed": eff_len,
        "attention_allowed_fraction": _pairs(pattern, full, full) / nominal**2,
        "train_forward_flops_per_image": fwd,
        "train_flops_per_image": 3 * fwd,
        "steps": steps,
        "nfe": steps * T,
        "layer_passes": cached["layer_passes"],
        "sample_flops_per_image": cached["flops"],
        "sample_flops_per_image_uncached": uncached["flops"],
        "layer_passes_uncached": uncached["layer_passes"],
    }
