"""Block-by-block generation with a KV cache.

Per block j (notation as in madformer.py):
  1. clean pass, once: clean block j-1 runs through the clean tower (layers up to the last one whose
     noised queries read clean keys); its keys/values are written into each layer's cache;
  2. AR pass, once: the shifted input (BOI, or clean block j-1 placed at block j) runs through the AR
     layers attending the cache -> the condition;
  3. denoising loop: each step embeds x_t, adds the condition and runs only the diffusion layers on the
     B noisy tokens, attending the cached clean keys.
The reference recomputes the clean stream in the diffusion layers at every step; here it is computed
once per block (``recompute_clean=True`` does it the reference's way, for benchmarks). ``use_cache=False``
recomputes even more, the whole prefix through every layer at every step, as the plain definition of
the model; it is kept for testing and benchmarking, and all paths give the same images.

Everything a step needs is laid out once per block: the block's plan (RoPE tables, cache windows), the
condition, and how the passes run (eager, compiled, a CUDA graph: see passes.py).
Classifier-free guidance runs the conditional and unconditional rows as one batch of 2n (or as two
batches of n with ``batch_guidance=False``; both give the same images).
"""

from __future__ import annotations

import torch
from madkit_layers.attention import CachedPlan, LayerCache
from madkit_layers.masks import CLEAN, NOISED

from madkit import per_example
from madkit_models.passes import BlockSteps, Passes, clean_pass
from madkit_models.residual import full_precision


class BlockwiseSession:
    """Cached state while one batch is generated block by block.

    The KV cache is allocated here, once: per layer that ever attends it, [batch, heads, capacity, hd]
    where capacity counts every token a later query may read (the context, T - 1 clean blocks or T noised
    AR blocks) plus one block. Each pass opens its windows on it (``CachedPlan``) and commits what later
    passes must see.
    """

    def __init__(self, model, ctx: torch.Tensor | None, batch: int, passes: Passes | None = None):
        self.model, self.batch = model, batch
        self.passes = passes or Passes.of("eager")
        context = 0 if ctx is None else ctx.shape[1]
        capacity = context + model.T * model.B
        layer = next(layer for layer in model.layers if hasattr(layer, "noised"))
        heads = layer.noised.heads
        dtype, device = _key_dtype(model, layer), model.boi.device
        self.caches = {
            i: LayerCache(batch, heads, capacity, model.cfg.width // heads, dtype, device) for i in _cache_readers(model)
        }
        self.clean_tokens: list[torch.Tensor] = []  # [n, 1, b, d] per generated block
        self.plan: CachedPlan | None = None  # the noised plan of block ``self.block``
        self.block = -1
        self._last_clean = None  # what recompute_clean_block needs
        if ctx is not None:  # once per session, one token: not worth a compiled variant
            self._clean_pass(full_precision(ctx), model.context_layout(), clean_pass=clean_pass)

    def _windows(self, layers, m: int) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
        return {i: self.passes.window(*self.caches[i].window(m)) for i in layers if i in self.caches}

    def _clean_pass(self, x: torch.Tensor, layout, first: int = 0, clean_pass=None) -> torch.Tensor | None:
        """Clean tokens x [n, m, d] through clean-tower layers ``first``.. into the cache."""
        layers = range(first, self.model.last_clean_layer + 1)
        plan = CachedPlan("clean", layout, self._windows(layers, x.shape[1]))
        entering = (clean_pass or self.passes.clean)(self.model, plan, x, first)
        for i in plan.windows:
            self.caches[i].commit(x.shape[1])
        return entering

    def add_clean_block(self, cells: torch.Tensor, mt: torch.Tensor) -> None:
        """Block j = len(self.clean_tokens) is final: cells [n, b, k]; mt [n] the model time of its last
        denoising step (what a "twin" clean timestep embeds it with)."""
        m = self.model
        j = len(self.clean_tokens)
        tokens, _ = m.embed_blocks(cells[:, None], m.clean_model_time(mt[:, None]))
        self.clean_tokens.append(tokens)
        if not m.single_stream:
            layout = m.layout(CLEAN, [j])
            self._last_clean = (self._clean_pass(full_precision(tokens.flatten(1, 2)), layout), layout)

    def recompute_clean_block(self) -> None:
        """The reference's scheme: the newest clean block's keys/values in the diffusion layers are
        computed again (into the same cache slots), as the reference does at every denoising step."""
        if self._last_clean is None or self._last_clean[0] is None:
            return  # no clean block yet, or no diffusion layer reads clean keys
        entering, layout = self._last_clean
        m = self.model
        for i in range(m.first_diffusion, m.last_clean_layer + 1):
            self.caches[i].rewind(m.B)
        self._clean_pass(entering, layout, first=m.first_diffusion)

    def condition(self, j: int) -> torch.Tensor:
        """AR pass for block j (clean blocks < j must have been added): condition [n, b, d]. Lays out
        block j's plan, which every denoising step of the block reuses."""
        m = self.model
        if j == 0:
            # no gradient in generation; contiguous like the clean tokens of later blocks (one compiled graph)
            x = m.boi.detach().expand(self.batch, -1, -1).contiguous()
        else:
            x = full_precision(self.clean_tokens[j - 1].flatten(1, 2))  # as in training
        self.plan = CachedPlan("noised", m.layout(NOISED, [j]), self._windows(self.caches, m.B))
        self.block = j
        cond = self.passes.ar(m, self.plan, x)
        if m.single_stream:  # later blocks' AR layers attend this block's noised keys
            for i in self.plan.windows:
                self.caches[i].commit(m.B)
        return cond

    def predict(self, cond: torch.Tensor, j: int, xt: torch.Tensor, mt: torch.Tensor) -> torch.Tensor:
        """One denoising evaluation for block j: xt [n, b, k], model time mt [n] -> output [n, b, k]."""
        if j != self.block:
            raise ValueError(f"predict for block {j} needs condition({j}) first (the session is at block {self.block})")
        return self.passes.step(self.model, self.plan, cond, xt, mt)


def _cache_readers(model) -> list[int]:
    """Layers whose attention reads cached keys: every layer the clean stream runs through, and in
    one-stream models the block-causal AR layers."""
    return [
        i
        for i, layer in enumerate(model.layers)
        if i <= model.last_clean_layer or (model.single_stream and getattr(layer, "pattern", "") == "causal")
    ]


def _key_dtype(model, layer) -> torch.dtype:
    """The dtype keys come out in under the current autocast state, which the cache then stores: an
    empty pass through one layer's projections decides it exactly."""
    lay = model.layout(NOISED, [0])
    x = full_precision(model.boi.detach()[None, :0])
    sharded = hasattr(layer, "unshard")  # an FSDP2 unit: gather its parameters for the probe (every rank)
    if sharded:
        layer.unshard()
    try:
        _, k, _ = layer.noised.qkv_heads(x, lay.cos[:0], lay.sin[:0])
    finally:
        if sharded:
            layer.reshard()
    return k.dtype


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
    # never FlexAttention: every block has another sequence length, which would compile it again per block
    backend = "sdpa" if model.cfg.attention == "sdpa" else "block-sparse"
    out, _ = model.trunk(
        ctx, clean_tokens[:, :tc], noised_in, ids, xt_tokens.expand(-1, reps, -1, -1), mt[:, None].expand(-1, reps),
        backend=backend,
    )
    return model.unembed_blocks(out[:, -1:], mt[:, None], aux)[:, 0]


class CachedBlocks:
    """Predictions for one batch of rows (n images, or 2n with batched guidance) through a session."""

    def __init__(self, model, ctx, n: int, repeats: int, passes: Passes, recompute_clean: bool = False):
        self.repeats, self.recompute = repeats, recompute_clean
        self.session = BlockwiseSession(model, ctx, n * repeats, passes)
        self.steps: BlockSteps | None = None

    def begin(self, j: int, previous: tuple[torch.Tensor, torch.Tensor] | None) -> None:
        """Block j starts; ``previous``: block j-1's cells [n, b, k] and its last step's model time [1]."""
        session = self.session
        if previous is not None:
            cells, mt = previous
            session.add_clean_block(_repeat_rows(cells, self.repeats), mt.expand(session.batch))
        cond = session.condition(j)
        self.steps = None  # the previous block's step (and its CUDA graph) is released first
        self.steps = BlockSteps(session.passes, session.model, session.plan, cond)

    def __call__(self, xt: torch.Tensor, mt: torch.Tensor) -> torch.Tensor:
        xt = _repeat_rows(xt, self.repeats)
        if self.recompute and self.steps.calls:  # the first step reads what add_clean_block computed
            self.session.recompute_clean_block()
        return self.steps(xt, mt.expand(xt.shape[0]))


def _repeat_rows(x: torch.Tensor, repeats: int) -> torch.Tensor:
    """[n, ...] -> [repeats * n, ...]: the same images for the conditional and unconditional rows."""
    return x.repeat(repeats, *([1] * (x.dim() - 1))) if repeats > 1 else x


class UncachedBlocks:
    """Predictions through the whole prefix at every step (the plain definition of the model)."""

    def __init__(self, model, ctx, repeats: int):
        self.model, self.ctx, self.repeats = model, ctx, repeats
        self.prefix: list[torch.Tensor] = []
        self.finals: list[torch.Tensor] = []  # the model time [1] of each clean block's last step
        self.j = 0

    def begin(self, j: int, previous: tuple[torch.Tensor, torch.Tensor] | None) -> None:
        if previous is not None:
            cells, mt = previous
            self.prefix.append(_repeat_rows(cells, self.repeats))
            self.finals.append(mt)
        self.j = j

    def __call__(self, xt: torch.Tensor, mt: torch.Tensor) -> torch.Tensor:
        xt = _repeat_rows(xt, self.repeats)
        rows = xt.shape[0]
        clean_mt = torch.stack(self.finals, 1).expand(rows, -1) if self.finals else None
        return uncached_predict(self.model, self.ctx, self.prefix, self.j, xt, mt.expand(rows), clean_mt)


@torch.no_grad()
def generate_blocks(
    model,
    sampler,
    generators,
    labels=None,
    steps=None,
    guidance=None,
    use_cache=True,
    batch_guidance: bool = True,
    recompute_clean: bool = False,
    prefix: torch.Tensor | None = None,
    observer=None,
):
    """Blocks [n, t, b, k] of n = len(generators) new images.

    ``prefix`` [n, K, b, k]: the first K blocks, already finished (completion). They enter every
    later block's condition exactly as generated blocks do (with the model time of a loop's last
    step), and no noise is drawn for them, so the generators' first draw goes to block K.
    ``observer``: a ``madkit.interfaces.GenerationObserver``, told about each finished block (and
    each step's clean-sample estimate, if it ``wants_steps``)."""
    steps = sampler.steps if steps is None else steps
    guidance = sampler.guidance if guidance is None else guidance
    device = model.boi.device
    n = len(generators)
    use_cfg = model.class_embed is not None and guidance != 1.0
    ctx = model.context_tokens(labels.to(device) if labels is not None else None)
    contexts = [ctx]
    if use_cfg:
        null = model.class_embed(torch.full((n,), model.num_classes, device=device, dtype=torch.long))[:, None, :]
        contexts = [torch.cat([ctx, null])] if batch_guidance else [ctx, null]
    repeats = 2 if use_cfg and batch_guidance else 1
    passes = Passes.of(model.denoise_step)
    branches = [
        CachedBlocks(model, c, n, repeats, passes, recompute_clean) if use_cache else UncachedBlocks(model, c, repeats)
        for c in contexts
    ]
    kept = _checked_prefix(model, prefix, n, device)
    blocks: list[torch.Tensor] = []
    finals: list[torch.Tensor] = []  # per block: the model time [1] of its loop's last step
    watch = _Watch(model, observer, n, device)
    for j in range(model.T):
        for branch in branches:
            branch.begin(j, (blocks[j - 1], finals[j - 1]) if j else None)
        run = sampler.start(steps, device)
        if j < len(kept):
            blocks.append(kept[j].float())
            finals.append(run.model_time(run.timesteps[-1]).to(device).float().reshape(1))
            watch.finished(j, blocks[j])
            continue
        # one draw per image from its own generator: images do not depend on batch composition
        x = per_example.randn(generators, (model.B, model.embedder.cell_dim), device)
        x = x * sampler.init_noise_sigma
        for s, t in enumerate(run.timesteps):
            x_in = run.scale_input(x, t)
            mt = run.model_time(t).to(device).float().reshape(1)
            outs = [branch(x_in, mt) for branch in branches]
            if use_cfg:
                cond, uncond = outs[0].chunk(2) if batch_guidance else outs
                out = sampler.apply_guidance(cond, uncond, scale=guidance)
            else:
                out = outs[0]
            if watch.steps:
                watch.step(j, s, sampler.denoised(out.float(), x_in, t))
            x = run.step(out.float(), t, x, generators)
        blocks.append(x)
        finals.append(mt)
        watch.finished(j, x)
    return torch.stack(blocks, dim=1)


def _checked_prefix(model, prefix: torch.Tensor | None, n: int, device) -> list[torch.Tensor]:
    if prefix is None:
        return []
    if prefix.dim() != 4 or prefix.shape[0] != n or prefix.shape[2:] != (model.B, model.embedder.cell_dim):
        raise ValueError(
            f"prefix must be [n={n}, K, b={model.B}, k={model.embedder.cell_dim}] blocks, got {tuple(prefix.shape)}"
        )
    if prefix.shape[1] >= model.T:
        raise ValueError(f"a prefix of {prefix.shape[1]} blocks leaves none of the {model.T} to generate")
    return list(prefix.to(device).unbind(1))


class _Watch:
    """Hands an observer merged latents: the finished blocks, zeros in the rest."""

    def __init__(self, model, observer, n: int, device):
        self.model, self.observer = model, observer
        self.steps = observer is not None and observer.wants_steps
        self.canvas = None if observer is None else torch.zeros(n, model.T, model.B, model.embedder.cell_dim, device=device)

    def finished(self, j: int, block: torch.Tensor) -> None:
        if self.observer is not None:
            self.canvas[:, j] = block
            self.observer.block_finished(j, self.model.from_blocks(self.canvas.clone()))

    def step(self, j: int, s: int, estimate: torch.Tensor | None) -> None:
        if estimate is None:
            raise ValueError("this sampler cannot give a clean-sample estimate per step (Sampler.denoised)")
        canvas = self.canvas.clone()
        canvas[:, j] = estimate[: canvas.shape[0]]
        self.observer.step(j, s, self.model.from_blocks(canvas))


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
