"""What a study's submitted jobs run (``madkit study DIR --launcher local|slurm``): the callables
submitit pickles into the job folder and calls in every task of the job.

    TrainJob   one run: ``madkit run``'s trainer on the run folder, resuming from its newest
               checkpoint; when SLURM preempts the job or its time runs out, submitit calls
               ``checkpoint`` and requeues it, and the requeued job resumes the same way
    EvalJob    one setting's points: every run of it at every step count, the images split over
               the job's tasks as under ``torchrun ... madkit eval``

A job of K tasks (one per GPU, on one node or several) forms one torch.distributed group: each task
sets RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR and MASTER_PORT from the scheduler's
own variables (SLURM_PROCID, SLURM_NTASKS, ... read by submitit), which is what torchrun would have set.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import attrs


def join_job_group() -> int:
    """Set up this task: madkit's notes and progress in the job's log (the command line's verbosity:
    a job imports madkit as a library, which would say warnings only), and the torch.distributed
    variables (a no-op for a job of one task); returns the job's task count."""
    import os

    import submitit

    from madkit import logs

    logs.set_verbosity(logs.level_from_environment("info"))
    job = submitit.JobEnvironment()
    if job.num_tasks > 1:
        # submitit takes MASTER_PORT from the environment when set, and SLURM hands every job the
        # submitting shell's: two jobs sharing a node would then both listen on it
        os.environ.pop("MASTER_PORT", None)
        # overwrite: a job that submitit requeues, or one started from inside another job, holds stale values;
        # every task keeps all the node's GPUs visible and picks its own by LOCAL_RANK, as under torchrun
        submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False, overwrite=True)
    return job.num_tasks


@attrs.frozen
class TrainJob:
    """Train ``spec`` with ``sets`` (the run's seed among them) into ``run_dir``."""

    spec: str
    sets: tuple[str, ...]
    run_dir: str

    def __call__(self) -> dict[str, Any]:
        import submitit

        from madkit.engine.checkpoints import latest_checkpoint
        from madkit.engine.training import stopping
        from madkit.engine.training.loop import train
        from madkit.experiment_spec import load_spec
        from madkit.registry import Registry

        join_job_group()
        registry = Registry.load()
        loaded = load_spec(Path(self.spec), list(self.sets), registry)
        ckpt = latest_checkpoint(Path(self.run_dir))
        if ckpt is not None and int(ckpt.name) >= loaded.spec.train.steps:
            return {"run": self.run_dir, "step": int(ckpt.name)}  # a finished run is never trained again
        # the scheduler's warning (time limit, preemption) ends the step in progress and saves it; submitit's
        # own handler then requeues the job, which resumes from that step
        stopping.watch(submitit.JobEnvironment._usr_sig())
        try:
            result = train(loaded, registry, self.run_dir)
        except BaseException:
            stopping.release()
            raise
        if stopping.requested():
            stopping.hand_over()  # requeues and exits (rank 0); the other ranks return
        stopping.release()
        return {"run": self.run_dir, "step": result.step}

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        """Preempted or timed out: requeue the same job; it resumes from the run folder's newest checkpoint."""
        import submitit

        return submitit.helpers.DelayedSubmission(self, *args, **kwargs)


@attrs.frozen
class EvalJob:
    """Evaluate every run of ``runs`` at every step count of ``steps`` with ``request``
    (a madkit.engine.evaluation.points.Request); records land in each RUN/eval/ as ``madkit eval`` writes them."""

    request: Any
    runs: tuple[str, ...]
    steps: tuple[int, ...]
    device: str = "auto"
    threads: int = 0

    def __call__(self) -> list[dict[str, Any]]:
        from madkit.engine import distributed
        from madkit.engine.checkpoints.run_lock import run_folder_of, writing_into
        from madkit.engine.evaluation.points import Evaluator, load_run
        from madkit.engine.evaluation.ranks import evaluate_point
        from madkit.registry import Registry
        from madkit.threads import apply_threads

        join_job_group()
        apply_threads(self.threads)
        registry = Registry.load()
        evaluator = Evaluator(registry, self.request)
        env = distributed.setup(self.device)
        points = []
        try:
            for run_dir in self.runs:
                with writing_into(run_folder_of(run_dir), "madkit study (evaluation job)"):
                    run = load_run(run_dir, registry, self.request.use_ema, env.device)
                    for steps in self.steps:
                        record = evaluate_point(evaluator, run, steps, env)
                        if record is not None and env.is_main:
                            points.append({"run": run_dir, "steps": steps, **record["metric_values"]})
                    del run
            distributed.barrier(env)  # no rank tears the group down while rank 0 still merges
        finally:
            distributed.teardown(env)
        return points
