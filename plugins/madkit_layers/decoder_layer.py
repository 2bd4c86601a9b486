"""The dual-stream decoder layer: pre-norm RMSNorm, qk-normed multi-head attention with 2D RoPE,
SwiGLU MLP, and two parameter sets ("towers") selected by stream.

Notation: n batch, L tokens, d width, h heads, e head dim (d = h * e).

Queries, keys and values are computed per tower on its own stream; the plan attends each tower's
queries to the keys the mask lets them read (``FullPlan.attend``), so nothing is concatenated along the
sequence or split back. Heads stay in [n, L, h, e] memory from the qkv projection to the output
projection: q and k are normed and rotated in that layout, SDPA keeps it for its output, and the
output projection reads it as [n, L, d] without a copy. ``shared_towers`` uses one parameter set for
both (the paper's ablation).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from madkit.interfaces import apply_rotary
from madkit_layers.attention import CachedPlan, FullPlan, attend
from madkit_layers.rms_norm import RMSNorm
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
        self.attn_norm = RMSNorm(width, eps=norm_eps)
        self.qkv = nn.Linear(width, 3 * width, bias=True)
        self.q_norm = RMSNorm(head_dim, eps=qk_norm_eps)
        self.k_norm = RMSNorm(head_dim, eps=qk_norm_eps)
        self.out = nn.Linear(width, width, bias=True)
        self.mlp_norm = RMSNorm(width, eps=norm_eps)
        self.gate = nn.Linear(width, mlp_hidden, bias=False)
        self.up = nn.Linear(width, mlp_hidden, bias=False)
        self.down = nn.Linear(mlp_hidden, width, bias=False)

    def qkv_heads(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
        """x [n, L, d], cos/sin [L, e] -> q, k, v [n, h, L, e] (memory [n, L, h, e]) with qk-norm and RoPE."""
        q, k, v = self._heads(self.qkv(self.attn_norm(x)), 3)
        return self._rotated(self.q_norm(q), cos, sin), self._rotated(self.k_norm(k), cos, sin), v.transpose(1, 2)

    def kv_heads(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
        """Keys and values only, from the k/v rows of the qkv projection: for a layer whose queries of
        this tower nobody reads (the last layer whose clean keys are read)."""
        d = self.qkv.in_features
        kv = F.linear(self.attn_norm(x), self.qkv.weight[d:], self.qkv.bias[d:])
        k, v = self._heads(kv, 2)
        return self._rotated(self.k_norm(k), cos, sin), v.transpose(1, 2)

    def _heads(self, projected: torch.Tensor, parts: int):
        """[n, L, parts * d] -> parts views [n, L, h, e]."""
        return projected.unflatten(-1, (parts, self.heads, -1)).unbind(dim=2)

    def _rotated(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """RoPE on [n, L, h, e] (cos/sin [L, e], broadcast over heads) -> [n, h, L, e] view."""
        return apply_rotary(x, cos.unsqueeze(1), sin.unsqueeze(1), self.rotate).transpose(1, 2)

    def finish(self, x: torch.Tensor, attn: torch.Tensor) -> torch.Tensor:
        """Residual attention output, then the residual SwiGLU MLP. attn [n, h, L, e]; a view of
        [n, L, h, e] memory (what SDPA returns for ``qkv_heads``' queries) is read without a copy."""
        x = x + self.out(attn.transpose(1, 2).flatten(2))
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
    # nobody, so only the clean keys/values are computed there (no clean queries, no clean attention).
    clean_output_needed: bool = True

    def dead_clean_parameters(self) -> list[nn.Parameter]:
        """Clean-tower parameters no computation reaches given ``clean_output_needed``."""
        if self.clean is self.noised or self.clean_output_needed:
            return []
        t = self.clean
        return [p for m in (t.q_norm, t.out, t.mlp_norm, t.gate, t.up, t.down) for p in m.parameters()]

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
        noised = self.noised.qkv_heads(xn, plan.noised.cos, plan.noised.sin)
        if xc is None or xc.shape[1] == 0:
            return xc, self.noised.finish(xn, plan.attend(self.pattern, None, noised)[1])
        cos, sin = plan.clean.cos, plan.clean.sin
        if not self.clean_output_needed:
            out_n = plan.attend(self.pattern, (None, *self.clean.kv_heads(xc, cos, sin)), noised)[1]
            return None, self.noised.finish(xn, out_n)
        out_c, out_n = plan.attend(self.pattern, self.clean.qkv_heads(xc, cos, sin), noised)
        return self.clean.finish(xc, out_c), self.noised.finish(xn, out_n)

    def _cached(self, xc, xn, plan: CachedPlan):
        lay = plan.layout
        if plan.stream == "clean":
            if not self.clean_output_needed:  # keys/values only: the last clean layer's queries are unused
                plan.keys_values(self._index, *self.clean.kv_heads(xc, lay.cos, lay.sin))
                return None, xn
            q, k, v = self.clean.qkv_heads(xc, lay.cos, lay.sin)
            keys, values = plan.keys_values(self._index, k, v)
            return self.clean.finish(xc, attend(q, keys, values)), xn
        q, k, v = self.noised.qkv_heads(xn, lay.cos, lay.sin)
        keys, values = (k, v) if self.pattern == "intra-block" else plan.keys_values(self._index, k, v)
        return xc, self.noised.finish(xn, attend(q, keys, values))

    # set by the model so a plan can address this layer's cache
    _index: int = 0
