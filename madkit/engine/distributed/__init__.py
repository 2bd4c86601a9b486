"""Several ranks: the process group and its collectives (process_group.py, re-exported here) and
FSDP2 sharding (fsdp.py). Evaluation over ranks is evaluation's (madkit.engine.evaluation.ranks)."""

from madkit.engine.distributed.process_group import (  # noqa: F401
    DistEnv,
    all_ranks_succeed,
    all_reduce_mean,
    barrier,
    broadcast_object,
    decide_on_main,
    gather_objects,
    resolve_device,
    setup,
    teardown,
    under_torchrun,
)
