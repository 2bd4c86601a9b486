"""Layer kinds: configs that build one layer for the model. Each kind declares its role and pattern.

- ``ar``: runs once per block at generation; skip-causal attention.
- ``diffusion``: runs at every denoising step; skip-causal attention.
- ``local-diffusion``: a diffusion layer that attends only inside its own block.
- ``mlp``: attention-free adaLN MLP denoising layer (a per-token diffusion head).
The model passes its dims (width, heads, mlp_hidden, shared_towers) and its built RoPE; a kind may
override mlp_hidden. The decoder kinds own their RMSNorm eps values: ``norm_eps`` for the pre-norms
and ``qk_norm_eps`` for the q/k norms (the released MADFormer checkpoint was trained with 1e-6 there).
"""

from __future__ import annotations

import attrs

from madkit.validators import non_negative, positive
from madkit_layers.decoder_layer import DecoderLayer
from madkit_layers.mlp_layer import MlpDenoisingLayer


@attrs.frozen
class _DecoderKind:
    mlp_hidden: int = attrs.field(default=0, validator=non_negative)  # 0 = the model's mlp_hidden
    norm_eps: float = attrs.field(default=1e-5, validator=positive)  # the pre-attention and pre-MLP RMSNorms
    qk_norm_eps: float = attrs.field(default=1e-5, validator=positive)  # the per-head q/k RMSNorms
    role = "ar"
    pattern = "skip-causal"

    def build(
        self, width: int, heads: int, mlp_hidden: int, shared_towers: bool, single_stream: bool = False, rope=None
    ):
        pattern = self.pattern
        if single_stream:
            # no clean tower: AR layers are block-causal over the one stream, diffusion layers local
            pattern = "causal" if self.role == "ar" else "intra-block"
        numerics = dict(norm_eps=self.norm_eps, qk_norm_eps=self.qk_norm_eps)
        if rope is not None:
            numerics["rotate"] = rope.rotate
        return DecoderLayer(width, heads, self.mlp_hidden or mlp_hidden, self.role, pattern, shared_towers, **numerics)


@attrs.frozen
class ArLayerConfig(_DecoderKind):
    role = "ar"
    pattern = "skip-causal"


@attrs.frozen
class DiffusionLayerConfig(_DecoderKind):
    role = "diffusion"
    pattern = "skip-causal"


@attrs.frozen
class LocalDiffusionLayerConfig(_DecoderKind):
    role = "diffusion"
    pattern = "intra-block"


@attrs.frozen
class MlpLayerConfig:
    mlp_hidden: int = attrs.field(default=0, validator=non_negative)
    role = "diffusion"
    pattern = "none"

    def build(
        self, width: int, heads: int, mlp_hidden: int, shared_towers: bool, single_stream: bool = False, rope=None
    ):
        return MlpDenoisingLayer(width, self.mlp_hidden or mlp_hidden)  # attention-free: no positions
