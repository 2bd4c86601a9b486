"""The dual-stream decoder layer: pre-norm RMSNorm, qk-normed multi-head attention with 2D RoPE,
SwiGLU MLP, and two parameter sets ("towers") selected by stream.

Notation: n batch, L tokens, d width, h heads, e head dim (d = h * e).

Both streams share one attention call: queries, keys and values are computed per tower on the
contiguous clean and noised slices, concatenated along the sequence, attended under the mask, and
split back. ``shared_towers`` uses one parameter set for both (the paper's ablation).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from madkit.interfaces import apply_rotary
from madkit_layers.attention import CachedPlan, FullPlan, attend
from madkit_layers.rope import AxialRope


class Tower(nn.Module):
    """One parameter set: attention projections, qk-norms, norms and the SwiGLU MLP.

    ``norm_eps`` is the eps of the two pre-norms, ``qk_norm_eps`` that of the q/k norms; ``rotate`` is
    the RoPE kind's pairing of head dims (``RotaryEmbedding.rotate``)."""

    def __init__(
        self, width: int, heads: int, mlp_hidden: int, norm_eps: float = 1e-5, qk_norm_eps: float = 1e-5,
        rotate=AxialRope.rotate,
    ):
        super().__init__()
        self.heads = heads
        self.rotate = rotate
        head_dim = width // heads
        self.attn_norm = nn.RMSNorm(width, eps=norm_eps)
        self.qkv = nn.Linear(width, 3 * width, bias=True)
        self.q_norm = nn.RMSNorm(head_dim, eps=qk_norm_eps)
        self.k_norm = nn.RMSNorm(head_dim, eps=qk_norm_eps)
        self.out = nn.Linear(width, width, bias=True)
        self.mlp_norm = nn.RMSNorm(width, eps=norm_eps)
        self.gate = nn.Linear(width, mlp_hidden, bias=False)
        self.up = nn.Linear(width, mlp_hidden, bias=False)
        self.down = nn.Linear(mlp_hidden, width, bias=False)

    def qkv_heads(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
        """x [n, L, d] -> q, k, v [n, h, L, e] with qk-norm and RoPE applied."""
        q, k, v = rearrange(self.qkv(self.attn_norm(x)), "n l (three h e) -> three n h l e", three=3, h=self.heads)
        q = apply_rotary(self.q_norm(q), cos, sin, self.rotate)
        k = apply_rotary(self.k_norm(k), cos, sin, self.rotate)
        return q, k, v

    def finish(self, x: torch.Tensor, attn: torch.Tensor) -> torch.Tensor:
        """Residual attention output, then the residual SwiGLU MLP. attn [n, h, L, e]."""
        x = x + self.out(rearrange(attn, "n h l e -> n l (h e)"))
        y = self.mlp_norm(x)
        return x + self.down(F.silu(self.gate(y)) * self.up(y))


class DecoderLayer(nn.Module):
    """A transformer layer with a role ("ar" or "diffusion") and an attention pattern."""

    def __init__(
        self,
        width: int,
        heads: int,
        mlp_hidden: int,
        role: str,
        pattern: str,
        shared_towers: bool = False,
        norm_eps: float = 1e-5,
        qk_norm_eps: float = 1e-5,
        rotate=AxialRope.rotate,
    ):
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not divisible by heads {heads}")
        self.role, self.pattern = role, pattern
        tower = dict(norm_eps=norm_eps, qk_norm_eps=qk_norm_eps, rotate=rotate)
        self.clean = Tower(width, heads, mlp_hidden, **tower)
        self.noised = self.clean if shared_towers else Tower(width, heads, mlp_hidden, **tower)

    # Set by the model: False in the last layer whose clean keys are read. Its clean output would feed
    # nobody, so only the clean keys/values are computed there.
    clean_output_needed: bool = True

    def dead_clean_parameters(self) -> list[nn.Parameter]:
        """Clean-tower parameters no computation reaches given ``clean_output_needed``."""
        if self.clean is self.noised or self.clean_output_needed:
            return []
        t = self.clean
        return [p for m in (t.out, t.mlp_norm, t.gate, t.up, t.down) for p in m.parameters()]

    @property
    def attends_clean(self) -> bool:
        """Whether noised queries read clean-tower keys (clean blocks or the context) in this layer;
        the model runs the clean stream only as far as the last layer that does."""
        return self.pattern in ("skip-causal", "causal")

    def forward(self, xc: torch.Tensor | None, xn: torch.Tensor | None, plan, cond=None):
        if isinstance(plan, FullPlan):
            return self._full(xc, xn, plan)
        return self._cached(xc, xn, plan)

    def _full(self, xc, xn, plan: FullPlan):
        with_clean = xc is not None and xc.shape[1] > 0
        qn, kn, vn = self.noised.qkv_heads(xn, plan.noised.cos, plan.noised.sin)
        if with_clean:
            qc, kc, vc = self.clean.qkv_heads(xc, plan.clean.cos, plan.clean.sin)
            q, k, v = (torch.cat(pair, dim=2) for pair in ((qc, qn), (kc, kn), (vc, vn)))
        else:
            q, k, v = qn, kn, vn
        out = attend(q, k, v, plan.mask(self.pattern, xn.device, with_clean))
        if not with_clean:
            return xc, self.noised.finish(xn, out)
        lc = xc.shape[1]
        xc = self.clean.finish(xc, out[:, :, :lc]) if self.clean_output_needed else None
        return xc, self.noised.finish(xn, out[:, :, lc:])

    def _cached(self, xc, xn, plan: CachedPlan):
        lay = plan.layout
        if plan.stream == "clean":
            q, k, v = self.clean.qkv_heads(xc, lay.cos, lay.sin)
            keys, values = plan.keys_values(self._index, k, v)
            if not self.clean_output_needed:
                return None, xn
            return self.clean.finish(xc, attend(q, keys, values)), xn
        q, k, v = self.noised.qkv_heads(xn, lay.cos, lay.sin)
        keys, values = (k, v) if self.pattern == "intra-block" else plan.keys_values(self._index, k, v)
        return xc, self.noised.finish(xn, attend(q, keys, values))

    # set by the model so a plan can address this layer's cache
    _index: int = 0
