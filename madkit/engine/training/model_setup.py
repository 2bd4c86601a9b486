"""Preparing a built model for training: activation checkpointing, compilation, the DDP-facing wrapper.

DDP synchronises gradients only for computation that enters through its ``forward`` (that is
where it arms its reducer). ``GenerativeModel.loss`` is a method, not ``forward``, so the trainer
wraps the model in ``LossModule`` whose forward calls ``loss``; DDP wraps that. The bare model
stays reachable for saving, the EMA and sampling, so its parameter names never carry ``module.``.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from madkit.cache import cache_root
from madkit.errors import ConfigError
from madkit.interfaces import GenerativeModel, NoiseSchedule
from madkit.model_units import compile_targets


class LossModule(nn.Module):
    """forward(latents, labels, generators) -> the model's loss dict (what DDP wraps)."""

    def __init__(self, model: GenerativeModel, schedule: NoiseSchedule):
        super().__init__()
        self.model = model
        self.schedule = schedule

    def forward(
        self, latents: torch.Tensor, labels: torch.Tensor | None, generators: list[torch.Generator]
    ) -> dict[str, torch.Tensor]:
        out = self.model.loss(latents, labels, self.schedule, generators)
        if not isinstance(out, dict) or "loss" not in out:
            raise TypeError(
                f"{type(self.model).__name__}.loss must return a dict with key 'loss' (the optimised "
                f"scalar) and optional other terms, got {type(out).__name__}"
            )
        return out


def enable_activation_checkpointing(model: nn.Module, model_kind: str) -> None:
    """Ask the model to recompute activations in backward (it knows its own block boundaries)."""
    setter = getattr(model, "set_activation_checkpointing", None)
    if not callable(setter):
        raise ConfigError(  # a spec setting the model cannot honour: exit 2
            f"train.activation_checkpointing = true, but the {model_kind!r} model has no "
            "set_activation_checkpointing(enabled) method; set it to false or add the method to the model"
        )
    setter(True)


def compile_cache_dir() -> Path:
    """Where torch.compile keeps what it built, so the next run of the same model loads it instead of
    compiling again (inductor's FX graph and AOTAutograd caches, and the generated kernels):
    ``$TORCHINDUCTOR_CACHE_DIR`` when the user set it, else ``inductor/`` in madkit's cache folder
    (``madkit.cache``) rather than inductor's default under /tmp, which a reboot empties."""
    chosen = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    if chosen and not _inductor_default(chosen):
        return Path(chosen)
    path = cache_root() / "inductor"
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(path)  # inductor reads it whenever it needs the folder
    try:  # and forgets any folder it resolved before (importing diffusers already makes it do so)
        from torch._inductor.utils import clear_caches
    except ImportError:
        return path
    clear_caches()
    return path


def _inductor_default(path: str) -> bool:
    """Whether ``path`` is the folder inductor chose itself (it writes its choice into the environment)."""
    try:
        from torch._inductor.runtime.cache_dir_utils import default_cache_dir
    except ImportError:
        return False
    return os.path.abspath(path) == os.path.abspath(default_cache_dir())


def compile_blocks(model: nn.Module) -> int:
    """``Module.compile()`` each target in place (names stay free of ``_orig_mod``); returns how many.

    Regional compilation: each block is one graph (forward and backward), identical blocks share it,
    and compiled artifacts persist across runs in ``compile_cache_dir()``."""
    compile_cache_dir()
    targets = compile_targets(model)
    for module in targets:
        module.compile()
    return len(targets)


@torch.no_grad()
def weights_fingerprint(model: nn.Module) -> torch.Tensor:
    """float64 [2 * num_params]: sum and sum of squares of every parameter, for comparing ranks.

    Equal weights give bit-identical fingerprints (same reduction on the same device type); any
    divergence between DDP ranks shows up.
    """
    parts = []
    for p in model.parameters():
        p64 = p.detach().double()
        parts.append(torch.stack((p64.sum(), (p64 * p64).sum())))
    return torch.cat(parts).cpu() if parts else torch.zeros(0, dtype=torch.float64)
