"""A sharded model built on the meta device (deferred_init.py) gets its values: each rank allocates
its slices only and fills them, from the recorded initialisation or from whole saved tensors.

The values match an ordinary build on rank 0 (whose weights every rank of a sharded run starts
from): ``InitProgram.replay`` runs with the generator state rank 0 had when it built the model,
one full tensor at a time, and each rank keeps its slice. Buffers (RoPE tables) are not sharded:
every rank keeps all of them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch import nn

from madkit.engine.distributed.deferred_init import (
    InitProgram,
    default_generator,
    record,
)
from madkit.engine.distributed.process_group import DistEnv, broadcast_object


def record_build(build: Callable[[], object], model_of: Callable[[object], nn.Module], device: torch.device):
    """``(build(), program)`` with the model on the meta device; ``device``'s generator is then moved
    on by exactly the draws the model's initialisation makes (into memory freed at once), so every
    later draw on this rank is the one an ordinary build would have been followed by."""
    generator = default_generator(device)
    before, cpu = generator.get_state(), torch.get_rng_state()
    try:
        result, program = record(build, model_of)
    except BaseException:  # a build that stopped halfway must not leave the generators moved
        generator.set_state(before)
        torch.set_rng_state(cpu)
        raise
    program.replay(device, None)
    program.generator_state = before
    return result, program


class ShardFiller:
    """``filler(name, full)``: this rank's slice of a full tensor into the sharded parameter ``name``,
    or the whole of it into the buffer ``name``; names it does not hold (a tensor shared under two
    names is held under one) are ignored."""

    def __init__(self, model: nn.Module):
        self.params = dict(model.named_parameters())
        self.buffers = dict(model.named_buffers())
        self.saved = set(model.state_dict())  # the parameters and persistent buffers
        self.filled: set[str] = set()

    @torch.no_grad()
    def __call__(self, name: str, full: torch.Tensor) -> None:
        from torch.distributed.tensor import DTensor, distribute_tensor

        if name in self.params:
            param = self.params[name]
            if isinstance(param, DTensor):
                full = full.to(param.device)
                # src_data_rank=None: every rank holds the full tensor and cuts its own slice, no communication
                piece = distribute_tensor(full, param.device_mesh, param.placements, src_data_rank=None)
                param.to_local().copy_(piece.to_local())
            else:
                param.copy_(full)
        elif name in self.buffers:
            self.buffers[name].copy_(full)
        else:
            return
        self.filled.add(name)

    def unfilled(self) -> list[str]:
        return sorted((set(self.params) | set(self.buffers)) - self.filled)


def allocate(model: nn.Module, device: torch.device) -> ShardFiller:
    """Give the meta model's slices and buffers (uninitialised) memory on ``device``."""
    model.to_empty(device=device)
    return ShardFiller(model)


def initialise(program: InitProgram, filler: ShardFiller, env: DistEnv, device: torch.device) -> None:
    """Fill every slice and buffer with rank 0's initial values; this rank's generator is left as it was."""
    generator = default_generator(device)
    own = generator.get_state()
    generator.set_state(broadcast_object(env, program.generator_state))
    try:
        program.replay(device, filler)
    finally:
        generator.set_state(own)
    _check_complete(filler, "the recorded initialisation")


def compute_buffers(program: InitProgram, filler: ShardFiller, device: torch.device) -> None:
    """Only the buffers (the operations they depend on): the weights come from a checkpoint."""
    program.replay(device, filler, only=set(filler.buffers))


def fill_from(filler: ShardFiller, tensors: Mapping[str, torch.Tensor], source: str) -> None:
    """Every parameter and persistent buffer from whole tensors (a checkpoint's), strictly by name."""
    expected = filler.saved
    missing, unexpected = sorted(expected - set(tensors)), sorted(set(tensors) - expected)
    if missing or unexpected:
        raise RuntimeError(f"{source} does not fit the model: missing {missing[:3]}, unexpected {unexpected[:3]}")
    for name, tensor in tensors.items():
        filler(name, tensor)


@torch.no_grad()
def copy_slices(source: nn.Module, target: nn.Module) -> None:
    """``target``'s slices and buffers := ``source``'s (same names and sharding, e.g. the EMA copy of
    the model; cast to the target's dtype)."""
    from torch.distributed.tensor import DTensor

    def local(t: torch.Tensor) -> torch.Tensor:
        return t.to_local() if isinstance(t, DTensor) else t

    params = dict(source.named_parameters())
    for name, param in target.named_parameters():
        local(param).copy_(local(params[name]))
    copy_buffers(source, target)


@torch.no_grad()
def copy_buffers(source: nn.Module, target: nn.Module) -> None:
    buffers = dict(source.named_buffers())
    for name, buffer in target.named_buffers():
        buffer.copy_(buffers[name])


def _check_complete(filler: ShardFiller, what: str) -> None:
    left = filler.unfilled()
    if left:
        raise RuntimeError(f"{what} gave no value to {len(left)} tensor(s) of the model, e.g. {left[:3]}")
