"""The generative model the engine trains and samples from, and its reference checkpoint layout."""

from __future__ import annotations

from typing import Any

import attrs
import torch
from torch import nn

from madkit.interfaces.diffusion import NoiseSchedule, Sampler


@attrs.frozen
class ReferenceLayout:
    """How a model's weights appear in the MADFormer authors' released checkpoint (``madkit import-reference``).

    ``tensors`` maps each reference tensor name to (this model's state-dict name, the tensor's shape in
    the reference file); a tensor is only ever reshaped (same values in the same order), never
    transposed or split. ``args`` maps training arguments the reference stores (``args.diff_depth``,
    ...) to (the value this model implies, the spec key it comes from), so a file trained with another
    geometry is refused by name.
    """

    tensors: dict[str, tuple[str, tuple[int, ...]]]
    args: dict[str, tuple[Any, str]]


class GenerationObserver:
    """Watches a generation as it happens. Latents are [n, c, h, w] on the model's device, the
    finished blocks in place and zeros in the others; an observer must not modify them."""

    wants_steps: bool = False  # True: also call ``step`` (it costs a merge per denoising step)

    def block_finished(self, block: int, latents: torch.Tensor) -> None:
        """Block ``block`` (in generation order) is final; ``latents`` holds blocks 0..block."""

    def step(self, block: int, step: int, latents: torch.Tensor) -> None:
        """After denoising step ``step`` of block ``block``: ``latents`` holds the finished blocks and,
        in block ``block``, the sampler's current clean-sample estimate."""


class GenerativeModel(nn.Module):
    """What the engine trains and samples from. Built with ``latent_shape=(c, h, w)`` and
    ``num_classes``. Implementations live in plugins (e.g. ``madformer``).

    Optional methods the trainer uses: ``set_activation_checkpointing(enabled)``,
    ``no_weight_decay() -> set of names`` and ``compile_targets() -> modules`` (by default the members
    of the outermost ``nn.ModuleList``s): the blocks ``train.compile`` compiles and that a sharded
    strategy (``train.strategy = "fsdp"``) makes one FSDP unit each. A sharded block's weights are
    gathered only when the block is called as a module (``block(...)``), so ``loss`` and
    ``generate`` must not call a block's other methods or read its parameters directly.
    """

    @property
    def class_conditional(self) -> bool:
        """Whether ``generate`` uses labels, and so classifier-free guidance (data with labels does not
        make a model conditional: its config must ask for it)."""
        return False

    def loss(
        self,
        latents: torch.Tensor,
        labels: torch.Tensor | None,
        schedule: NoiseSchedule,
        generators: list[torch.Generator],
    ) -> dict[str, torch.Tensor]:
        """Training losses for a batch of clean latents [n, c, h, w]; key ``loss`` is what is optimised.

        ``generators`` holds one generator per example (len n), seeded by the trainer from (seed,
        step, the example's position in the global batch). Every random draw for example i (its
        timesteps, its noise, its label dropout) must come from ``generators[i]`` and nothing else
        (``madkit.per_example`` stacks such draws), and the returned terms must be means over the
        examples. Then one global batch trains on the same randomness, and gives the same gradient,
        however the trainer splits it into ranks and micro-batches, and a resumed run draws exactly
        what an uninterrupted one would.
        """
        raise NotImplementedError

    def generate(
        self,
        sampler: Sampler,
        generators: list[torch.Generator],
        labels: torch.Tensor | None = None,
        steps: int | None = None,
        guidance: float | None = None,
        use_cache: bool = True,
        prefix: torch.Tensor | None = None,
        keep: int = 0,
        observer: GenerationObserver | None = None,
    ) -> torch.Tensor:
        """Latents [n, c, h, w] for n = len(generators); image i's randomness comes from generators[i].

        Completion (optional for a model, needs ``block_index``): the first ``keep`` blocks of the
        latents ``prefix`` [n, c, h, w] are taken as finished, exactly, and only the later blocks are
        generated, conditioned on them; no noise is drawn for the kept blocks. ``observer`` (optional)
        is told about each finished block and, if it asks, each denoising step (a trace, a demo).
        The engine passes ``prefix``, ``keep`` and ``observer`` only when they are used, so a model
        without them still samples."""
        raise NotImplementedError

    def block_index(self) -> torch.Tensor:
        """[h, w] long: for each latent cell, the position in generation order of the block it belongs
        to (0 first). Completion keeps the cells with index < K; a trace greys the unfinished ones."""
        raise NotImplementedError(f"{type(self).__name__} does not say how it orders its blocks")

    def compute_cost(self, steps: int) -> dict[str, Any]:
        """Parameters, training FLOPs per image and sampling cost for ``steps`` denoising steps."""
        raise NotImplementedError

    def reference_layout(self) -> ReferenceLayout:
        """This model's weights under the released reference checkpoint's names. Raise
        NotImplementedError (with the reason) when the model has no counterpart there."""
        raise NotImplementedError(f"{type(self).__name__} has no counterpart in the released reference checkpoint")
