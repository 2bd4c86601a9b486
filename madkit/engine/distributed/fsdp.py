"""Sharded data parallelism (FSDP2): ``train.strategy = "fsdp"`` or ``"hsdp"``.

DDP keeps a whole copy of the weights, gradients and AdamW moments on every rank, so a model must fit
one device with all of them (16 bytes per parameter in fp32 before activations). FSDP2
(``torch.distributed.fsdp.fully_shard``) cuts every parameter, its gradient and its optimizer state
into one slice per rank; a block's full weights exist only while that block runs (all-gathered
before its forward and again before its backward, its gradients reduce-scattered after).

- ``fsdp``: one group of all ranks shards everything (a 1-D device mesh).
- ``hsdp``: hybrid sharding for several nodes: each group of ``train.shard_ranks`` ranks (by default
  the ranks of one node, torchrun's LOCAL_WORLD_SIZE) shards the model, and the groups are replicas
  whose gradients are all-reduced (a 2-D mesh, replicate x shard). Gathers then stay inside a node.

Units: every block the model names (``compile_targets``: the transformer layers) is one FSDP unit;
the root unit holds the rest (embedders, BOI, class and time embeddings). The trainer calls
``model.loss`` and sampling calls ``model.generate``, not ``forward``; both are registered as
forward methods so the root's parameters are gathered around them too.

Building: ``shard_model`` works on a model on the meta device too; a sharded run builds it there and
fills each rank's slices afterwards (training/sharded_build.py, materialise.py).

Names: FSDP2 replaces each parameter by a DTensor in place, so ``named_parameters`` and
``state_dict`` keep the bare model's names; checkpoints hold no wrapper prefix.

Precision. Weights and AdamW moments stay fp32 shards; gradients are reduced in fp32. With
``train.precision = "bf16"`` the blocks are gathered in bf16 (``train.fsdp_param_dtype = "auto"``,
half the communication) while the root stays fp32, so the embedders keep the fp32 time embedding
they compute on purpose. Autocast still runs as under DDP: forward inputs are not cast, so the
residual streams stay fp32. ``fsdp_param_dtype = "fp32"`` gathers fp32 and leaves all casting to
autocast (the numerics of DDP). fp16 needs a sharded gradient scaler and is refused: use bf16.
"""

from __future__ import annotations

import os

import torch
from torch import nn

from madkit.errors import ConfigError
from madkit.model_units import compile_targets

STRATEGIES = ("ddp", "fsdp", "hsdp")
PARAM_DTYPES = ("auto", "fp32", "bf16")


def is_sharded(strategy: str) -> bool:
    return strategy in ("fsdp", "hsdp")


def mesh_shape(strategy: str, world_size: int, shard_ranks: int) -> tuple[int, ...]:
    """(world,) for fsdp; (replicas, shard_ranks) for hsdp. ``shard_ranks`` 0: torchrun's ranks per node."""
    if strategy == "fsdp":
        return (world_size,)
    shard = shard_ranks or int(os.environ.get("LOCAL_WORLD_SIZE", world_size))
    if shard <= 0 or world_size % shard:
        raise ConfigError(
            f"train.shard_ranks = {shard} does not divide the {world_size} rank(s) into equal shard groups; "
            f"choose a divisor of {world_size} (usually the GPUs per node)"
        )
    return (world_size // shard, shard)


def device_mesh(strategy: str, world_size: int, shard_ranks: int, device: torch.device):
    from torch.distributed.device_mesh import init_device_mesh

    shape = mesh_shape(strategy, world_size, shard_ranks)
    names = ("shard",) if len(shape) == 1 else ("replicate", "shard")
    return init_device_mesh(device.type, shape, mesh_dim_names=names)


def block_policy(precision: str, param_dtype: str):
    """The mixed-precision policy of the blocks (see the module docstring)."""
    from torch.distributed.fsdp import MixedPrecisionPolicy

    if precision == "fp16":
        raise ConfigError("train.precision = 'fp16' is not supported with a sharded strategy; use 'bf16'")
    gather_bf16 = param_dtype == "bf16" or (param_dtype == "auto" and precision == "bf16")
    if gather_bf16 and precision != "bf16":
        raise ConfigError(
            f"train.fsdp_param_dtype = 'bf16' needs train.precision = 'bf16' (it is {precision!r}): the blocks' "
            "bf16 weights meet fp32 activations only under autocast"
        )
    return MixedPrecisionPolicy(
        param_dtype=torch.bfloat16 if gather_bf16 else None, reduce_dtype=torch.float32, cast_forward_inputs=False
    )


def shard_model(model: nn.Module, mesh, policy) -> int:
    """Shard ``model`` in place: each block, then the root. Returns the number of block units."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard, register_fsdp_forward_method

    blocks = [m for m in compile_targets(model) if m is not model]
    for block in blocks:
        fully_shard(block, mesh=mesh, mp_policy=policy)
    root_policy = MixedPrecisionPolicy(reduce_dtype=torch.float32, cast_forward_inputs=False)
    fully_shard(model, mesh=mesh, mp_policy=root_policy)
    for method in ("loss", "generate"):
        if callable(getattr(model, method, None)):
            register_fsdp_forward_method(model, method)
    return len(blocks)


@torch.no_grad()
def broadcast_from_rank0(model: nn.Module) -> None:
    """Give every rank rank 0's weights before sharding (what DDP does when it wraps): ranks seed
    their initialisation differently, and each keeps only its own slice of what it holds. Only for a
    model built whole (one whose construction cannot be replayed, see training/sharded_build.py)."""
    import torch.distributed as dist

    for tensor in [*model.parameters(), *model.buffers()]:
        dist.broadcast(tensor, src=0)


def set_gradient_sync(model: nn.Module, enabled: bool) -> None:
    """Accumulating micro-batches: reduce gradients only after the last one (DDP's ``no_sync``)."""
    model.set_requires_gradient_sync(enabled)


def full_value(t: torch.Tensor) -> torch.Tensor:
    """A plain tensor of a possibly distributed one (e.g. the global gradient norm FSDP returns)."""
    from torch.distributed.tensor import DTensor

    return t.full_tensor() if isinstance(t, DTensor) else t


def shard_for_training(model: nn.Module, ema: nn.Module | None, cfg, world_size: int, device, precision: str) -> None:
    """Shard the training model (blocks gathered per ``cfg.fsdp_param_dtype``) and, with the same
    mesh, its EMA copy (gathered in fp32: sampling reads it under autocast like the model)."""
    mesh = device_mesh(cfg.strategy, world_size, cfg.shard_ranks, torch.device(device))
    shard_model(model, mesh, block_policy(precision, cfg.fsdp_param_dtype))
    if ema is not None:
        shard_model(ema, mesh, block_policy(precision, "fp32"))
