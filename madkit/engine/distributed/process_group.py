"""Process-group setup for ``torchrun`` and the few collectives the trainer needs.

A plain ``madkit run`` is one process (world size 1) and never touches torch.distributed. Under
``torchrun --nproc_per_node=K -m madkit run SPEC`` the environment names RANK, WORLD_SIZE and
LOCAL_RANK; we join the group with nccl on CUDA and gloo on CPU, one device per local rank.
Every helper here is a no-op (or the identity) in a single process.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Callable
from typing import Any

import attrs
import torch
import torch.distributed as dist

from madkit.errors import ConfigError


@attrs.frozen
class DistEnv:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    owns_group: bool = False  # we initialised the process group, so we tear it down

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def resolve_device(preference: str, local_rank: int = 0) -> torch.device:
    """``train.device``: auto (CUDA when present), cpu, cuda or cuda:N (one process per device)."""
    if preference == "auto":
        preference = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(preference)
    except RuntimeError:
        raise ConfigError(f"train.device: {preference!r} is not a device; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("train.device asks for CUDA but torch sees no CUDA device; use 'auto' or 'cpu'")
        # under torchrun each process takes the device of its local rank, whatever index was named
        index = local_rank if under_torchrun() else (device.index or 0)
        if index >= torch.cuda.device_count():
            raise ConfigError(f"local rank {local_rank} needs cuda:{index} but only {torch.cuda.device_count()} exist")
        device = torch.device("cuda", index)
        torch.cuda.set_device(device)
    return device


def under_torchrun() -> bool:
    """Whether torchrun (or another launcher setting WORLD_SIZE) started more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def setup(device_preference: str, group_when_alone: bool = False) -> DistEnv:
    """Join the torchrun process group when launched by torchrun; otherwise a single process.

    ``group_when_alone``: a single process still forms a group of one rank (FSDP needs a device
    mesh, and a sharded run on one rank then runs the same code as on many)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_preference, local_rank)
    if world <= 1 and not group_when_alone:
        return DistEnv(0, 1, 0, device)
    owns = False
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        kwargs: dict[str, Any] = {"device_id": device} if device.type == "cuda" else {}
        if world <= 1:  # no torchrun rendezvous to join: an in-memory store for one rank
            kwargs.update(store=dist.HashStore(), rank=0, world_size=1)
        # Rank 0 may encode a whole dataset into the latent cache while the others wait in a
        # collective: NCCL's default 10-minute watchdog would kill every cold-cache run.
        minutes = float(os.environ.get("MADKIT_DIST_TIMEOUT_MINUTES", 6 * 60))
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(minutes=minutes), **kwargs)
        owns = True
    return DistEnv(dist.get_rank(), dist.get_world_size(), local_rank, device, owns)


def teardown(env: DistEnv) -> None:
    if env.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def barrier(env: DistEnv) -> None:
    if env.distributed:
        dist.barrier()


def broadcast_object(env: DistEnv, obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank."""
    if not env.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def decide_on_main(env: DistEnv, decide: Callable[[], Any]) -> Any:
    """Run ``decide()`` on rank 0 and hand its result to every rank.

    If it raises, rank 0 re-raises and every other rank raises a RuntimeError with its message,
    so no rank is left waiting in a collective for an answer that will never come.
    """
    result, error = None, None
    if env.is_main:
        try:
            result = decide()
        except Exception as exc:  # noqa: BLE001  (re-raised below, after the other ranks are told)
            error = exc
    outcome = broadcast_object(env, (result, None if error is None else f"{type(error).__name__}: {error}"))
    if error is not None:
        raise error
    if outcome[1] is not None:
        raise RuntimeError(f"rank 0 failed: {outcome[1]}")
    return outcome[0]


def all_ranks_succeed(env: DistEnv, work: Callable[[], Any]) -> Any:
    """Run ``work()`` on every rank; if it raises on any rank, it raises on every rank (its own error
    where it failed, a RuntimeError naming the failed rank elsewhere), so none goes on alone."""
    result, error = None, None
    try:
        result = work()
    except Exception as exc:  # noqa: BLE001  (re-raised below, after every rank has reported)
        error = exc
    reports = gather_objects(env, None if error is None else f"{type(error).__name__}: {error}")
    if error is not None:
        raise error
    failed = [(rank, report) for rank, report in enumerate(reports) if report is not None]
    if failed:
        raise RuntimeError(f"rank {failed[0][0]} failed: {failed[0][1]}")
    return result


def gather_objects(env: DistEnv, obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order, on every rank."""
    if not env.distributed:
        return [obj]
    out: list[Any] = [None] * env.world_size
    dist.all_gather_object(out, obj)
    return out


def all_reduce_mean(env: DistEnv, values: torch.Tensor) -> torch.Tensor:
    """Mean over ranks of a tensor (returns a new tensor; the input is untouched)."""
    if not env.distributed:
        return values
    out = values.detach().clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out / env.world_size
