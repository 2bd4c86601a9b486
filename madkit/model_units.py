"""The units a model is compiled and sharded by: its transformer blocks.

torch.compile (madkit.engine.training.model_setup) compiles each unit in place, and FSDP2
(madkit.engine.distributed.fsdp) makes each one a sharding unit, so both agree on what a block is.
"""

from __future__ import annotations

from torch import nn


def compile_targets(model: nn.Module) -> list[nn.Module]:
    """What to compile: the model's own choice (``compile_targets()``), else the members of its
    outermost ``nn.ModuleList``s (transformer blocks), else the model itself.

    Compiling blocks rather than the model keeps graphs small and reused across identical layers,
    and works although the trainer calls ``loss`` rather than ``forward``.
    """
    chosen = getattr(model, "compile_targets", None)
    if callable(chosen):
        return list(chosen())
    found: list[nn.Module] = []

    def visit(module: nn.Module) -> None:
        for child in module.children():
            if isinstance(child, nn.ModuleList):
                found.extend(child)  # blocks; do not descend into them
            else:
                visit(child)

    visit(model)
    return found or [model]
