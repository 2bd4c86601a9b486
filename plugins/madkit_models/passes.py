"""The three passes of cached generation, and how they run: eagerly, compiled, or as a CUDA graph.

  clean pass   new clean tokens through the clean tower, their keys/values written into the cache;
  AR pass      block j's shifted input through the AR layers -> the condition (once per block);
  denoise      one denoising evaluation: embed x_t, the diffusion layers, unembed (every step).
Each takes a ``CachedPlan`` whose cache windows the session opened beforehand, so a pass reads no
Python-side cache state and has the same structure in every block.

``model.denoise_step`` (the spec key of the same name) chooses how they run:
  eager                plain PyTorch (the default);
  compiled             ``torch.compile`` of the three passes (fused norms, RoPE and elementwise chains;
                       any device). The cache windows' length is marked dynamic, so each pass compiles
                       once per model and batch size, not once per block;
  cuda-graph           the denoising step captured once per block as a CUDA graph and replayed, so a
                       step is one launch instead of hundreds (CUDA; elsewhere as eager);
  compiled+cuda-graph  both.
"""

from __future__ import annotations

import torch

from madkit_models.residual import full_precision

# how the diffusion tower's step runs while sampling (MadformerConfig.denoise_step)
DENOISE_STEPS = ("eager", "compiled", "cuda-graph", "compiled+cuda-graph")


def clean_pass(model, plan, x: torch.Tensor, first: int) -> torch.Tensor | None:
    """Clean tokens x [n, m, d] through clean-tower layers ``first``..; returns the hidden state entering
    the first diffusion layer if the pass reaches it (the reference's scheme recomputes from there)."""
    entering = None
    for i in range(first, model.last_clean_layer + 1):
        if i == model.first_diffusion:
            entering = x
        x, _ = model.layers[i](x, None, plan)
    return entering


def ar_pass(model, plan, x: torch.Tensor) -> torch.Tensor:
    """The block's noised-stream input [n, b, d] through the AR layers: the condition."""
    for i in range(model.first_diffusion):  # indexing: slicing a ModuleList builds a new module per call
        _, x = model.layers[i](None, x, plan)
    return x


def denoise(model, plan, cond: torch.Tensor, xt: torch.Tensor, mt: torch.Tensor) -> torch.Tensor:
    """One denoising evaluation of the plan's block: x_t [n, b, k], model time [n] -> output [n, b, k]."""
    tokens, aux = model.embed_blocks(xt[:, None], mt[:, None])
    tokens = tokens.flatten(1, 2)
    h = full_precision(tokens) if model.cfg.context == "clean" else cond + tokens
    adaln = model.adaln_condition(cond, mt[:, None])
    for i in range(model.first_diffusion, len(model.layers)):
        _, h = model.layers[i](None, h, plan, adaln)
    return model.unembed_blocks(h.unflatten(1, (1, model.B)), mt[:, None], aux)[:, 0]


class Passes:
    """The passes as one mode runs them; ``Passes.of(mode)`` shares compiled ones across sessions."""

    _compiled: Passes | None = None

    def __init__(self, clean, ar, step, graphed: bool, compiled: bool = False):
        self.clean, self.ar, self.step, self.graphed, self.compiled = clean, ar, step, graphed, compiled

    @classmethod
    def of(cls, mode: str) -> Passes:
        if mode not in DENOISE_STEPS:
            raise ValueError(f"denoise_step {mode!r} is not one of {', '.join(DENOISE_STEPS)}")
        graphed = mode.endswith("cuda-graph")
        if not mode.startswith("compiled"):
            return cls(clean_pass, ar_pass, denoise, graphed)
        if cls._compiled is None:  # torch keeps the compiled graphs on these objects: build them once
            cls._compiled = cls(torch.compile(clean_pass), torch.compile(ar_pass), torch.compile(denoise), False)
        compiled = cls._compiled
        return cls(compiled.clean, compiled.ar, compiled.step, graphed, compiled=True)

    def window(self, keys: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A cache window as the passes receive it: compiled passes treat its length as dynamic."""
        if self.compiled:
            for t in (keys, values):
                torch._dynamo.maybe_mark_dynamic(t, 2)
        return keys, values


class BlockSteps:
    """The denoising evaluations of one block: ``steps(xt, mt)`` once per sampler step.

    With ``passes.graphed`` on a CUDA device the first call runs normally (warm-up; a compiled step
    compiles there, outside any capture), the second captures the step reading static copies of
    x_t and the model time, and every later call copies its inputs in and replays the graph. The
    cache windows, the condition and the RoPE tables are fixed tensors for the whole block.
    """

    def __init__(self, passes: Passes, model, plan, cond: torch.Tensor):
        self.passes, self.model, self.plan, self.cond = passes, model, plan, cond
        self.graphed = passes.graphed and cond.device.type == "cuda"
        self.calls = 0
        self.graph: torch.cuda.CUDAGraph | None = None

    def __call__(self, xt: torch.Tensor, mt: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if not self.graphed or self.calls == 1:
            return self.passes.step(self.model, self.plan, self.cond, xt, mt)
        if self.graph is None:
            self._capture(xt, mt)
        else:
            self.static_xt.copy_(xt)
            self.static_mt.copy_(mt)
        self.graph.replay()
        return self.static_out.clone()  # the next replay overwrites static_out

    def _capture(self, xt: torch.Tensor, mt: torch.Tensor) -> None:
        """Record one step. Autocast's cached weight casts made by the warm-up call are read, not
        recast; they live as long as the autocast region around the generation, which outlives this
        graph (a session and its graphs live within one generate call)."""
        self.static_xt, self.static_mt = xt.clone(), mt.clone()
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.static_out = self.passes.step(self.model, self.plan, self.cond, self.static_xt, self.static_mt)
