"""Several ranks: the process group and its collectives (process_group.py, re-exported here),
FSDP2 sharding (fsdp.py), and a sharded model built without memory: deferred_init.py records a
construction on the meta device and replays it tensor by tensor, materialise.py fills each rank's
slices from that replay or from whole tensors. Evaluation over ranks is evaluation's
(madkit.engine.evaluation.ranks)."""

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
