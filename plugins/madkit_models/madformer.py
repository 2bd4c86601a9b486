"""MADFormer: mixed autoregressive and diffusion transformer over spatial blocks.

Notation: n batch, t blocks (T), b tokens per block (B), d width, k = cell_dim (latent values per token).

Training sequence (teacher forcing, next-block prediction):
    [context?] [clean blocks 0..T-2]            clean tower
    [BOI, clean blocks 0..T-2] at blocks 0..T-1  noised tower (the clean stream shifted by one block)
The last clean block is dropped: only it would attend to itself, so computing it is wasted work
(with T = 1 the clean stream is empty). The AR layers (first N - D) turn the noised stream into the
condition; at the first diffusion layer the embedded noisy block x_t (own timestep per block) is added
to it, and the diffusion layers run on; the noised output is unembedded into the prediction per block.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from madkit_layers.attention import FullPlan, StreamLayout
from madkit_layers.masks import CLEAN, CONTEXT, NOISED
from torch import nn
from torch.utils.checkpoint import checkpoint

from madkit import per_example
from madkit.interfaces import GenerativeModel, NoiseSchedule
from madkit_models.embedder_base import TimestepEmbedder
from madkit_models.residual import full_precision


class MADFormer(GenerativeModel):
    def __init__(self, cfg, latent_shape: tuple[int, int, int], num_classes: int, registry):
        super().__init__()
        self.cfg, self.latent_shape, self.num_classes = cfg, latent_shape, num_classes
        c, h, w = latent_shape
        self.cell = cfg.embedder.cell
        self.partitioner = cfg.partitioner.build(grid=cfg.token_grid(latent_shape))
        self.T, self.B = self.partitioner.num_blocks, self.partitioner.block_size
        d = cfg.width
        self.embedder = cfg.embedder.build(latent_channels=c, width=d, block_shape=self.partitioner.block_shape)
        self.boi = nn.Parameter(torch.zeros(self.B, d))
        self.single_stream = cfg.context == "condition"
        head_dim = d // cfg.heads
        self.rope = cfg.rope_config(registry).build(grid=self.partitioner.grid, head_dim=head_dim)
        ar_cfg, diff_cfg = cfg.layer_configs(registry)
        n_ar = cfg.depth - cfg.diffusion_depth
        dims = dict(width=d, heads=cfg.heads, mlp_hidden=cfg.mlp_hidden, shared_towers=cfg.shared_towers, rope=self.rope)
        self.layers = nn.ModuleList(
            [ar_cfg.build(**dims, single_stream=self.single_stream) for _ in range(n_ar)]
            + [diff_cfg.build(**dims, single_stream=self.single_stream) for _ in range(cfg.diffusion_depth)]
        )
        for i, layer in enumerate(self.layers):
            layer._index = i
        self.first_diffusion = n_ar
        self.class_embed = nn.Embedding(num_classes + 1, d) if cfg.conditioning == "class" else None
        self.has_context = self.class_embed is not None
        # The clean tower runs only up to the last layer whose noised queries read it; a single-stream
        # model without a context token has no clean-tower tokens at all.
        has_clean = self.has_context or not self.single_stream
        readers = [i for i, layer in enumerate(self.layers) if layer.attends_clean]
        self.last_clean_layer = max(readers, default=-1) if has_clean else -1
        self._freeze_dead_parameters()
        needs_time = any(getattr(l, "pattern", "") == "none" for l in self.layers)
        self.time = TimestepEmbedder(d) if needs_time else None
        # the partitioner's index tables live on the CPU when the model is built on the meta device
        cos, sin = self.rope.tables(self.partitioner.positions.flatten(0, 1).to(self.boi.device))
        self.register_buffer("rope_cos", cos.view(self.T, self.B, head_dim), persistent=False)
        self.register_buffer("rope_sin", sin.view(self.T, self.B, head_dim), persistent=False)
        self.activation_checkpointing = False
        self.denoise_step = cfg.denoise_step  # how cached generation runs its passes (passes.py); settable
        self._plans: dict[tuple, FullPlan] = {}
        self.reset_parameters()

    def _freeze_dead_parameters(self) -> None:
        """Parameters no computation reaches keep the released architecture's shapes (and parameter
        count) but never train: requires_grad=False keeps them out of DDP's reducer and the optimizer."""
        for i, layer in enumerate(self.layers):
            if not hasattr(layer, "clean"):
                continue
            layer.clean_output_needed = i < self.last_clean_layer
            dead = layer.dead_clean_parameters()
            if i > self.last_clean_layer and layer.clean is not layer.noised:
                dead = list(layer.clean.parameters())
            for p in dead:
                p.requires_grad_(False)

    # ------------------------------------------------------------------ init and utilities
    def reset_parameters(self) -> None:
        # also on the meta device: a sharded run records these calls there and replays them on its
        # device (madkit.engine.distributed.deferred_init), so they must run in the same order
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        for layer in self.layers:  # keep the adaLN-zero start of mlp layers
            if hasattr(layer, "ada"):
                nn.init.zeros_(layer.ada[1].weight)
                nn.init.zeros_(layer.ada[1].bias)
        nn.init.normal_(self.boi, std=self.cfg.init_std)
        if self.class_embed is not None:
            nn.init.normal_(self.class_embed.weight, std=self.cfg.init_std)

    def set_activation_checkpointing(self, enabled: bool) -> None:
        self.activation_checkpointing = enabled

    def to_blocks(self, latents: torch.Tensor) -> torch.Tensor:
        """[n, c, h, w] -> [n, t, b, k]."""
        grid = rearrange(latents, "n c (h p) (w q) -> n (c p q) h w", p=self.cell, q=self.cell)
        return self.partitioner.partition(grid)

    def from_blocks(self, blocks: torch.Tensor) -> torch.Tensor:
        """[n, t, b, k] -> [n, c, h, w]."""
        grid = self.partitioner.merge(blocks)
        return rearrange(grid, "n (c p q) h w -> n c (h p) (w q)", p=self.cell, q=self.cell)

    def layout(self, stream: int, block_ids: list[int]) -> StreamLayout:
        """Stream/block ids (on the CPU: plans are derived from their values) and RoPE tables (on the
        model's device) of the given blocks, block-major."""
        ids = torch.tensor(block_ids, dtype=torch.long)
        table = ids.to(self.rope_cos.device)
        return StreamLayout(
            streams=torch.full((len(block_ids) * self.B,), stream, dtype=torch.long),
            blocks=ids.repeat_interleave(self.B),
            cos=self.rope_cos[table].flatten(0, 1),
            sin=self.rope_sin[table].flatten(0, 1),
        )

    def context_layout(self) -> StreamLayout:
        dev, hd = self.rope_cos.device, self.rope_cos.shape[-1]
        zero = torch.zeros(1, dtype=torch.long)
        # the context token sits at no grid position: angle 0 (identity rotation)
        return StreamLayout(zero + CONTEXT, zero - 1, torch.ones(1, hd, device=dev), torch.zeros(1, hd, device=dev))

    def context_tokens(self, labels: torch.Tensor | None, dropped: torch.Tensor | None = None) -> torch.Tensor | None:
        """[n, 1, d] class tokens; where bool ``dropped`` [n] is set, the null class (= num_classes):
        label dropout, which teaches the unconditional model classifier-free guidance needs."""
        if self.class_embed is None:
            return None
        if labels is None:
            raise ValueError("this model is class-conditional: pass labels")
        labels = labels.long()
        if dropped is not None:
            labels = torch.where(dropped.to(labels.device), torch.full_like(labels, self.num_classes), labels)
        return self.class_embed(labels)[:, None, :]

    def embed_blocks(self, cells: torch.Tensor, mt: torch.Tensor):
        """cells [n, t, b, k], model time mt [n, t] -> tokens [n, t, b, d] and aux."""
        n, t = cells.shape[:2]
        tokens, aux = self.embedder.embed(cells.flatten(0, 1), mt.flatten())
        return tokens.unflatten(0, (n, t)), aux

    def unembed_blocks(self, tokens: torch.Tensor, mt: torch.Tensor, aux) -> torch.Tensor:
        n, t = tokens.shape[:2]
        return self.embedder.unembed(tokens.flatten(0, 1), mt.flatten(), aux).unflatten(0, (n, t))

    def clean_model_time(self, mt: torch.Tensor) -> torch.Tensor:
        """What a clean block's embedding gets, given the model time of the block's own denoising
        (its noised twin's in training, its loop's last step in sampling): zero, or that time itself."""
        return mt if self.cfg.clean_timestep == "twin" else torch.zeros_like(mt)

    def shifted(self, clean_tokens: torch.Tensor, block_ids: list[int]) -> torch.Tensor:
        """Noised-stream inputs for ``block_ids``: BOI for block 0, else the clean tokens of block j-1.

        ``clean_tokens`` [n, >= max(j), b, d] holds clean blocks 0, 1, ... in order."""
        n = clean_tokens.shape[0]
        boi = self.boi.to(clean_tokens.dtype).expand(n, 1, -1, -1)
        parts = [boi if j == 0 else clean_tokens[:, j - 1 : j] for j in block_ids]
        return torch.cat(parts, dim=1)

    # ------------------------------------------------------------------ the masked full pass
    def trunk(self, ctx, clean_tokens, noised_in, noised_ids, xt_tokens, mt, backend: str | None = None):
        """Run all layers over [ctx, clean blocks 0..len-1 ; noised blocks ``noised_ids``].

        clean_tokens [n, tc, b, d]; noised_in, xt_tokens [n, tn, b, d]; mt [n, tn]. ``backend`` overrides
        the spec's attention backend (uncached generation avoids FlexAttention, which compiles per layout).
        Returns (noised output [n, tn, b, d], condition [n, tn, b, d]).
        """
        n, tn = noised_in.shape[:2]
        tc = 0 if self.single_stream else clean_tokens.shape[1]
        parts = ([ctx] if ctx is not None else []) + ([clean_tokens.flatten(1, 2)] if tc else [])
        # the residual streams stay fp32 under autocast: only the matmuls run in bf16
        xc = full_precision(torch.cat(parts, dim=1)) if parts else None
        plan = self._full_plan(noised_ids, ctx is not None, tc, backend)
        xn = full_precision(noised_in.flatten(1, 2))
        cond = adaln = None
        for i, layer in enumerate(self.layers):
            if i == self.first_diffusion:
                cond = xn
                xt = xt_tokens.flatten(1, 2)
                xn = xt if self.cfg.context == "clean" else xn + xt
                adaln = self.adaln_condition(cond, mt)
            xc_in = xc if i <= self.last_clean_layer else None
            if self.activation_checkpointing and self.training:
                xc, xn = checkpoint(layer, xc_in, xn, plan, adaln, use_reentrant=False)
            else:
                xc, xn = layer(xc_in, xn, plan, adaln)
        return xn.unflatten(1, (tn, self.B)), cond.unflatten(1, (tn, self.B))

    def _full_plan(self, noised_ids: list[int], has_ctx: bool, tc: int, backend: str | None = None) -> FullPlan:
        """The plan of a pass over [context?, clean blocks 0..tc-1 ; noised blocks ``noised_ids``], with
        its layouts, masks and block groups, built once and reused while the layout repeats: every
        training step has the same one, and a FlexAttention block mask over ~8k tokens is not free.
        ``backend`` overrides the spec's attention backend."""
        backend = backend or self.cfg.attention
        key = (tc, tuple(noised_ids), has_ctx, str(self.rope_cos.device), backend)
        plan = self._plans.get(key)
        if plan is None:
            if len(self._plans) >= 64:  # uncached generation walks through T layouts
                self._plans.clear()
            layouts = [self.context_layout()] if has_ctx else []
            layouts += [self.layout(CLEAN, list(range(tc)))] if tc else []
            clean = _concat_layouts(layouts) if layouts else _empty_layout(self.rope_cos)
            plan = self._plans[key] = FullPlan(clean, self.layout(NOISED, noised_ids), backend)
            self._prepare_attention(plan, has_ctx or tc > 0)
        return plan

    def training_plan(self) -> FullPlan:
        """The plan a training pass uses (its layouts, masks and block groups)."""
        tc = 0 if self.single_stream else self.T - 1
        return self._full_plan(list(range(self.T)), self.has_context, tc)

    def _prepare_attention(self, plan: FullPlan, has_clean: bool) -> None:
        """Build every layer's attention (masks, block groups) before the layers run: a compiled layer
        then only reads them, instead of tracing their construction and breaking its graph."""
        for i, layer in enumerate(self.layers):
            if getattr(layer, "pattern", "none") != "none":
                plan.prepare(layer.pattern, self.rope_cos.device, has_clean and i <= self.last_clean_layer)

    def adaln_condition(self, cond: torch.Tensor, mt: torch.Tensor) -> torch.Tensor | None:
        """cond [n, L, d] + timestep embedding per token, for attention-free (mlp) layers only."""
        if self.time is None:
            return None
        n, tn = mt.shape
        temb = self.time(mt.flatten()).unflatten(0, (n, tn)).repeat_interleave(self.B, dim=1)
        return cond + temb.to(cond.dtype)

    # ------------------------------------------------------------------ training
    def forward_blocks(self, x0: torch.Tensor, xt: torch.Tensor, mt: torch.Tensor, labels=None, dropped=None):
        """Teacher-forced predictions for all blocks. x0, xt [n, t, b, k]; mt [n, t] model time;
        ``dropped`` [n] marks the examples whose label is replaced by the null class.

        Returns (prediction [n, t, b, k], condition [n, t, b, d], aux of the x_t embedding)."""
        n, need = x0.shape[0], self.T - 1  # clean blocks 0..T-2 feed both streams
        tc = 0 if self.single_stream else need
        if need:
            clean_tokens, _ = self.embed_blocks(x0[:, :need], self.clean_model_time(mt[:, :need]))
        else:
            clean_tokens = x0.new_zeros(n, 0, self.B, self.cfg.width)
        noised_in = self.shifted(clean_tokens, list(range(self.T)))
        xt_tokens, aux = self.embed_blocks(xt, mt)
        ctx = self.context_tokens(labels, dropped)
        out, cond = self.trunk(ctx, clean_tokens[:, :tc], noised_in, list(range(self.T)), xt_tokens, mt)
        return self.unembed_blocks(out, mt, aux), cond, aux

    def loss(self, latents, labels, schedule: NoiseSchedule, generators):
        x0 = self.to_blocks(latents)
        # example i draws from generators[i] alone, always in this order: split-invariant, resumable
        t = per_example.timesteps(schedule, generators, (self.T,), x0.device)  # [n, t]: one timestep per block
        noise = per_example.randn(generators, x0.shape[1:], x0.device, x0.dtype)
        dropped = None
        if self.training and self.class_embed is not None and self.cfg.label_dropout > 0:
            dropped = per_example.rand(generators, (), x0.device) < self.cfg.label_dropout
        xt = schedule.add_noise(x0, noise, t)
        mt = schedule.model_time(t)
        pred, cond, aux = self.forward_blocks(x0, xt, mt, labels, dropped)
        err = (pred.float() - schedule.target(x0, noise, t).float()).pow(2).mean(dim=(2, 3))  # [n, t]
        weight = schedule.loss_weight(t)
        image = (err * weight).mean() if weight is not None else err.mean()
        losses = {"image": image}
        total = image
        if self.cfg.hidden_loss_weight > 0:
            skips = aux if self.cfg.hidden_loss_skips == "noisy" else self.embedder.blank_aux(aux)
            hmt = mt if self.cfg.hidden_loss_skips == "noisy" else torch.zeros_like(mt)
            hidden_pred = self.unembed_blocks(cond, hmt, skips)
            hidden = F.mse_loss(hidden_pred.float(), x0.float())
            losses["hidden"] = hidden
            total = total + self.cfg.hidden_loss_weight * hidden
        losses["loss"] = total
        return losses

    # ------------------------------------------------------------------ generation and cost
    @property
    def class_conditional(self) -> bool:
        return self.class_embed is not None

    def generate(self, sampler, generators, labels=None, steps=None, guidance=None, use_cache=True, prefix=None,
                 keep=0, observer=None):
        from madkit_models.blockwise import generate_blocks

        kept = self.to_blocks(prefix.float())[:, :keep] if prefix is not None and keep else None
        blocks = generate_blocks(
            self, sampler, generators, labels, steps, guidance, use_cache, prefix=kept, observer=observer
        )
        return self.from_blocks(blocks)

    def block_index(self) -> torch.Tensor:
        """Which block (in generation order) each latent cell belongs to: block numbers merged back."""
        ids = torch.arange(self.T, dtype=torch.float32)[None, :, None, None]
        merged = self.from_blocks(ids.expand(1, self.T, self.B, self.embedder.cell_dim))
        return merged[0, 0].round().long()

    def compute_cost(self, steps: int):
        from madkit_models.cost import model_cost

        return model_cost(self, steps)

    def reference_layout(self):
        from madkit_models.reference_layout import reference_layout

        return reference_layout(self)


def _concat_layouts(layouts: list[StreamLayout]) -> StreamLayout:
    return StreamLayout(*(torch.cat([getattr(l, f) for l in layouts]) for f in ("streams", "blocks", "cos", "sin")))


def _empty_layout(like: torch.Tensor) -> StreamLayout:
    hd, dev = like.shape[-1], like.device
    empty = torch.zeros(0, dtype=torch.long)
    return StreamLayout(empty, empty, torch.zeros(0, hd, device=dev), torch.zeros(0, hd, device=dev))
