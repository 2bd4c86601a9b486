"""Block-by-block generation with a KV cache.

Per block j (notation as in madformer.py):
  1. clean pass, once: clean block j-1 runs through the clean tower (layers up to the last one whose
     noised queries read clean keys); its keys/values are appended to each layer's cache;
  2. AR pass, once: the shifted input (BOI, or clean block j-1 placed at block j) runs through the AR
     layers attending the cache -> the condition;
  3. denoising loop: each step embeds x_t, adds the condition and runs only the diffusion layers on the
     B noisy tokens, attending the cached clean keys.
The reference recomputes the clean stream in the diffusion layers at every step; here it is computed
once per block. ``use_cache=False`` recomputes even more, the whole prefix through every layer at
every step, as the plain definition of the model; it is kept for testing and benchmarking, and both
paths give the same images.
"""

from __future__ import annotations

import torch

from madkit_layers.attention import CachedPlan, LayerCache
from madkit_layers.masks import CLEAN, NOISED
from madkit_models.madformer import full_precision


class BlockwiseSession:
    """Cached state while one batch is generated block by block."""

    def __init__(self, model, ctx: torch.Tensor | None, batch: int):
        self.model, self.batch = model, batch
        self.caches = [LayerCache() for _ in model.layers]
        self.clean_tokens: list[torch.Tensor] = []  # [n, 1, b, d] per generated block
        if ctx is not None:
            self._clean_pass(full_precision(ctx), model.context_layout())

    def _clean_pass(self, x: torch.Tensor, layout) -> None:
        plan = CachedPlan("clean", layout, self.caches)
        for layer in self.model.layers[: self.model.last_clean_layer + 1]:
            x, _ = layer(x, None, plan)

    def add_clean_block(self, cells: torch.Tensor, mt: torch.Tensor) -> None:
        """Block j = len(self.clean_tokens) is final: cells [n, b, k]; mt [n] the model time of its last
        denoising step (what a "twin" clean timestep embeds it with)."""
        m = self.model
        j = len(self.clean_tokens)
        tokens, _ = m.embed_blocks(cells[:, None], m.clean_model_time(mt[:, None]))
        self.clean_tokens.append(tokens)
        if not m.single_stream:
            self._clean_pass(full_precision(tokens.flatten(1, 2)), m.layout(CLEAN, [j]))

    def condition(self, j: int) -> torch.Tensor:
        """AR pass for block j (clean blocks < j must have been added): condition [n, b, d]."""
        m = self.model
        if j == 0:
            x = m.boi.detach().expand(self.batch, -1, -1)  # generation never needs its gradient
        else:
            x = full_precision(self.clean_tokens[j - 1].flatten(1, 2))  # as in training
        plan = CachedPlan("noised", m.layout(NOISED, [j]), self.caches, append_noised=m.single_stream)
        for layer in m.layers[: m.first_diffusion]:
            _, x = layer(None, x, plan)
        return x

    def predict(self, cond: torch.Tensor, j: int, xt: torch.Tensor, mt: torch.Tensor) -> torch.Tensor:
        """One denoising evaluation for block j: xt [n, b, k], model time mt [n] -> output [n, b, k]."""
        m = self.model
        tokens, aux = m.embed_blocks(xt[:, None], mt[:, None])
        h = full_precision(tokens.flatten(1, 2)) if m.cfg.context == "clean" else cond + tokens.flatten(1, 2)
        adaln = m.adaln_condition(cond, mt[:, None])
        plan = CachedPlan("noised", m.layout(NOISED, [j]), self.caches)
        for layer in m.layers[m.first_diffusion :]:
            _, h = layer(None, h, plan, adaln)
        return m.unembed_blocks(h.unflatten(1, (1, m.B)), mt[:, None], aux)[:, 0]


def uncached_predict(model, ctx, clean_blocks: list[torch.Tensor], j: int, xt: torch.Tensor, mt: torch.Tensor,
                     clean_mt: torch.Tensor | None = None):
    """The reference path: the whole prefix (clean blocks < j and block j) recomputed for one step.
    clean_mt [n, j]: the model time of each clean block's last denoising step."""
    n = xt.shape[0]
    if clean_blocks:
        clean = torch.stack(clean_blocks, dim=1)
        times = torch.zeros(n, j, device=xt.device) if clean_mt is None else clean_mt
        clean_tokens, _ = model.embed_blocks(clean, model.clean_model_time(times))
    else:
        clean_tokens = xt.new_zeros(n, 0, model.B, model.cfg.width)
    # One stream: block j's AR layers attend the earlier noised blocks, so they join the sequence; the
    # diffusion layers are intra-block there, so what noise those earlier blocks carry does not matter.
    ids = list(range(j + 1)) if model.single_stream else [j]
    noised_in = model.shifted(clean_tokens, ids)
    xt_tokens, aux = model.embed_blocks(xt[:, None], mt[:, None])
    reps = len(ids)
    tc = 0 if model.single_stream else j
    out, _ = model.trunk(
        ctx, clean_tokens[:, :tc], noised_in, ids, xt_tokens.expand(-1, reps, -1, -1), mt[:, None].expand(-1, reps)
    )
    return model.unembed_blocks(out[:, -1:], mt[:, None], aux)[:, 0]


def per_image_noise(generators: list[torch.Generator], shape: tuple[int, ...], device, dtype) -> torch.Tensor:
    """One draw per image from its own generator: images do not depend on batch composition."""
    return torch.stack([torch.randn(shape, generator=g, device=g.device, dtype=dtype) for g in generators]).to(device)


@torch.no_grad()
def generate_blocks(model, sampler, generators, labels=None, steps=None, guidance=None, use_cache=True):
    """Blocks [n, t, b, k] of n = len(generators) new images."""
    steps = sampler.steps if steps is None else steps
    guidance = sampler.guidance if guidance is None else guidance
    device = model.boi.device
    n = len(generators)
    use_cfg = model.class_embed is not None and guidance != 1.0
    ctx = model.context_tokens(labels.to(device) if labels is not None else None)
    if use_cfg:
        null = torch.full((n,), model.num_classes, device=device, dtype=torch.long)
        ctx = torch.cat([ctx, model.class_embed(null)[:, None, :]])
    batch = 2 * n if use_cfg else n
    session = BlockwiseSession(model, ctx, batch) if use_cache else None
    blocks: list[torch.Tensor] = []
    finals: list[torch.Tensor] = []  # per block: the model time [batch] of its loop's last step
    for j in range(model.T):
        if session is not None:
            if j > 0:
                prev = blocks[j - 1]
                session.add_clean_block(torch.cat([prev, prev]) if use_cfg else prev, finals[j - 1])
            cond = session.condition(j)
        run = sampler.start(steps, device)
        x = per_image_noise(generators, (model.B, model.embedder.cell_dim), device, torch.float32)
        x = x * sampler.init_noise_sigma
        for t in run.timesteps:
            x_in = run.scale_input(x, t)
            mt = run.model_time(t).to(device).float().reshape(-1).expand(batch)
            x_in = torch.cat([x_in, x_in]) if use_cfg else x_in
            if session is not None:
                out = session.predict(cond, j, x_in, mt)
            else:
                prefix = [torch.cat([b, b]) if use_cfg else b for b in blocks]
                out = uncached_predict(model, ctx, prefix, j, x_in, mt, torch.stack(finals, 1) if finals else None)
            if use_cfg:
                out = sampler.apply_guidance(*out.chunk(2), scale=guidance)
            x = run.step(out.float(), t, x, generators)
        blocks.append(x)
        finals.append(mt)
    return torch.stack(blocks, dim=1)


@torch.no_grad()
def cached_teacher_forced(model, x0: torch.Tensor, xt: torch.Tensor, mt: torch.Tensor, labels=None):
    """Per-block predictions of the cached path with gold clean blocks: equals ``forward_blocks``."""
    session = BlockwiseSession(model, model.context_tokens(labels), x0.shape[0])
    preds = []
    for j in range(model.T):
        if j > 0:
            session.add_clean_block(x0[:, j - 1], mt[:, j - 1])
        preds.append(session.predict(session.condition(j), j, xt[:, j], mt[:, j]))
    return torch.stack(preds, dim=1)
