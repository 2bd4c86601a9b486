"""The model of a sharded run (``train.strategy = "fsdp"`` / ``"hsdp"``): built on the meta device,
sharded there, then each rank allocates and fills only its own slices.

An ordinary build would make every rank hold the whole model and its whole EMA copy before sharding
(16 bytes per parameter in fp32 at the peak; 21 GB for the 1.3 B FFHQ model), which is what stops a
large model from fitting a GPU with room for activations. With the meta build a rank's peak is its
slices plus one full tensor at a time (docs/performance.md has the measured figures).

The slices get exactly the values an ordinary build would have given them (rank 0's: every rank of a
sharded run starts from rank 0's weights): madkit.engine.distributed.deferred_init records the
construction and replays it on the device with rank 0's generator state, tensor by tensor. Every
rank's generator also ends where an ordinary build would have left it. Resuming reads the weights
from the checkpoint instead: only the buffers (RoPE tables) are computed.

A model whose construction cannot be replayed (it changes which memory a tensor is, or reads a
value on the meta device) is built whole as before, with a note saying so.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from madkit.build import Experiment, build_experiment
from madkit.engine import checkpoints
from madkit.engine.distributed import materialise as slices
from madkit.engine.distributed.deferred_init import DeferredInitError, InitProgram
from madkit.engine.training.init_from import initialize_from
from madkit.logs import get_logger

logger = get_logger(__name__)


def build(spec, registry, device: torch.device, is_main: bool) -> tuple[Experiment, InitProgram | None]:
    """The experiment with its model on the meta device and the program that initialises it, or
    (built whole on ``device``, None) when the construction cannot be replayed."""
    try:
        return slices.record_build(lambda: build_experiment(spec, registry, meta=True), lambda e: e.model, device)
    except Exception as exc:
        # build_part reports a plugin's failure as a PluginBuildError caused by it
        cause = exc if isinstance(exc, DeferredInitError) else exc.__cause__
        if not isinstance(cause, DeferredInitError):
            raise
        if is_main:
            logger.warning(f"note: building the whole model on every rank before sharding ({cause})")
        return build_experiment(spec, registry, device=str(device)), None


def materialise(trainer, state: dict[str, Any] | None, from_shards: bool) -> Path | None:
    """Give the trainer's sharded meta model and EMA their slices: from the checkpoint to resume
    (whole tensors; a sharded checkpoint is read later, collectively), from ``train.init_from``, or
    from the recorded initialisation. Returns the ``init_from`` source used, if any."""
    device, program, ema = trainer.device, trainer.init_program, trainer.ema
    model_slices = slices.allocate(trainer.model, device)
    if ema is not None:
        slices.allocate(ema.module, device)
    init_source = None
    if state is not None:
        slices.compute_buffers(program, model_slices, device)
        if ema is not None:
            slices.copy_buffers(trainer.model, ema.module)
        if from_shards:
            return None
        slices.fill_from(model_slices, checkpoints.load_weights(trainer.ckpt, False, "cpu"), str(trainer.ckpt))
        if ema is not None:
            ema_slices = slices.ShardFiller(ema.module)
            slices.fill_from(ema_slices, checkpoints.load_weights(trainer.ckpt, True, "cpu"), str(trainer.ckpt))
            ema.updates = int(state["ema"]["updates"])
        return None
    if trainer.cfg.init_from:
        slices.compute_buffers(program, model_slices, device)
        loaded = trainer.loaded
        init_source = initialize_from(
            trainer.model, trainer.cfg.init_from, loaded.raw, loaded.source, torch.device("cpu"),
            load=lambda _model, weights: slices.fill_from(model_slices, weights, trainer.cfg.init_from),
        )
    else:
        slices.initialise(program, model_slices, trainer.env, device)
    if ema is not None:
        slices.copy_slices(trainer.model, ema.module)  # the EMA starts as a copy of the model
    return init_source
