"""One evaluation point, in one process or split over the ranks of ``torchrun``.

Under ``torchrun --nproc_per_node=K -m madkit eval ...`` rank r generates and embeds every K-th image
starting at r: the ``--shard r/K`` mechanism, which stores its features in
``RUN/eval/<name>.parts/shard-r-of-K.pt`` (kept, so a rerun after a crash regenerates only what is
missing). Every rank then reports success or its error, and rank 0 merges the parts into the record.
Image i comes from the seed pair (seed, i) whichever rank makes it, so the record's images and
metrics equal a single process's for the same seeds. The run folder must be on a file system every
rank sees, as training's checkpoints already require.
"""

from __future__ import annotations

from typing import Any

from madkit.engine.distributed import DistEnv, decide_on_main, gather_objects
from madkit.engine.evaluation.points import Evaluator, LoadedRun


def evaluate_point(
    evaluator: Evaluator,
    run: LoadedRun,
    steps: int | None,
    env: DistEnv,
    name: str | None = None,
    force: bool = False,
    shard: tuple[int, int] = (0, 1),
) -> dict[str, Any] | None:
    """The point's record (on every rank when it was already up to date, else on rank 0; None on the others).
    ``shard``: a single process's own share of the images (``--shard i/k``); under torchrun the ranks split them."""
    if not env.distributed:
        return evaluator.evaluate(run, steps, shard=shard, name=name, force=force)
    shard = (env.rank, env.world_size)
    # rank 0 builds the extractor first: a proxy that is not cached yet is trained once and cached,
    # then loaded by the others, so every rank embeds with the very same weights
    def build_extractor() -> None:
        evaluator.extractor(run)

    decide_on_main(env, build_extractor)
    record, error = None, None
    try:
        record = evaluator.evaluate(run, steps, shard=shard, name=name, force=force, merge=False)
    except Exception as exc:  # noqa: BLE001  (re-raised below, once every rank knows)
        error = exc
    failures = [f for f in gather_objects(env, None if error is None else f"rank {env.rank}: {error}") if f]
    if error is not None:
        raise error
    if failures:
        raise RuntimeError("; ".join(failures))
    if record is not None or not env.is_main:
        return record  # up to date already (every rank read the same file), or another rank merges
    return evaluator.evaluate(run, steps, shard=shard, name=name, force=force)  # its own part is reused
