"""The training loop: ``train(loaded_spec, registry, out) -> TrainResult``.

One optimizer step, on every rank:

    for each of this rank's micro-batches (B / world / micro of them):
        encode images -> latents; loss = model.loss(..., one generator per example) under autocast
        backward(loss * micro / (B / world))      # DDP averages over ranks: the global mean
        (DDP all-reduces only on the last micro-batch: no_sync on the others)
    unscale (fp16), clip the global grad norm, health check (NaN, divergence), AdamW step, EMA update

Example i of a step's global batch draws its loss randomness from a generator seeded by
(seed, step, i), and the data order is a function of (seed, images consumed): a resumed run
repeats exactly what an uninterrupted run does, and one global batch gives the same gradient
however it is split into ranks and micro-batches. Rank 0 owns the run folder: metrics, sinks,
sample grids and checkpoints, under an exclusive lock held for the whole run (madkit.engine.checkpoints.run_lock).

``train.strategy`` chooses how ranks share the model: ``ddp`` (a whole copy each, DDP) or ``fsdp`` /
``hsdp`` (sharded with FSDP2, see distributed/fsdp.py; every rank then keeps its slice of the EMA,
samples together with the others and writes its slice of each checkpoint, see checkpoints/sharded.py).

Nothing is written before every input has been checked: a missing dataset, an unreadable first
batch or a checkpoint that does not fit the spec stops the run with the run folder untouched.
Damaged checkpoints are skipped and moved aside (madkit.engine.checkpoints.verify); the health
guard (madkit.engine.training.health) stops a diverging run before it saves.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from pathlib import Path
from typing import Any

import attrs
import torch
from torch.nn.parallel import DistributedDataParallel

from madkit import rng
from madkit.engine import distributed
from madkit.engine.checkpoints.run_folder import RunDir, collect_versions
from madkit.engine.checkpoints.run_lock import RunLock
from madkit.engine.data import batches
from madkit.engine.distributed import fsdp
from madkit.engine.training import stopping
from madkit.engine.training.console_log import ConsoleLog, console_log
from madkit.engine.training.health import HealthGuard
from madkit.engine.training.precision import resolve_precision
from madkit.engine.training.reporting import Reporter, build_sinks, memory_gb
from madkit.engine.training.resume import ResumeChoice
from madkit.engine.training.resume_changes import describe as describe_changes
from madkit.engine.training.sample_grids import sample_images, save_grid
from madkit.engine.training.saving import CheckpointSaving
from madkit.engine.training.setup import TrainerSetup
from madkit.threads import apply_threads
from madkit.experiment_spec import LoadedSpec


@attrs.frozen
class TrainResult:
    run_dir: Path
    step: int  # optimizer steps done
    checkpoint: Path | None  # the newest checkpoint
    samples: Path | None  # the newest sample grid (rank 0)
    metrics: dict[str, Any]  # the last metrics record


def train(
    loaded: LoadedSpec,
    registry,
    out: str | Path,
    stop_after: int | None = None,
    allow_changes: bool = False,
    from_step: int | None = None,
) -> TrainResult:
    """Train the experiment ``loaded`` describes into the run folder ``out``.

    ``stop_after`` ends this invocation after that many optimizer steps in total (saving a
    checkpoint) while schedules still span ``train.steps``: for time-limited jobs that resume.
    ``allow_changes`` lets a resumed run continue with a spec whose training values differ from its
    checkpoint's (see madkit.engine.training.resume_changes). ``from_step`` continues from the run folder's
    checkpoint of that step instead of its newest; the newer ones are moved to RUN/set-aside/.
    Under torchrun every rank calls this; rank 0 writes.
    """
    env = distributed.setup(loaded.spec.train.device, group_when_alone=fsdp.is_sharded(loaded.spec.train.strategy))
    lock = RunLock(out, "madkit run")  # taken by rank 0 only, for every rank
    try:
        with console_log(env.is_main) as console:
            return Trainer(loaded, registry, Path(out), env, allow_changes, console, lock, from_step).run(stop_after)
    finally:
        lock.release()
        distributed.teardown(env)


class Trainer(TrainerSetup, ResumeChoice, CheckpointSaving):
    """One training run on one rank. Construction checks every input, restores a checkpoint when
    resuming and only then prepares the run folder; ``run()`` trains.

    This file holds the steps, in the order they run. The Trainer's other jobs sit beside it, one
    file each, mixed in: building, checking and restoring (setup.py), choosing the checkpoint to
    resume and claiming the run folder (resume.py), writing checkpoints (saving.py)."""

    def __init__(
        self,
        loaded: LoadedSpec,
        registry,
        out: Path,
        env: distributed.DistEnv,
        allow_changes: bool = False,
        console: ConsoleLog | None = None,
        lock: RunLock | None = None,
        from_step: int | None = None,
    ):
        spec, cfg = loaded.spec, loaded.spec.train
        self.loaded, self.spec, self.cfg, self.env = loaded, spec, cfg, env
        self.allow_changes, self.resume_changes = allow_changes, []
        self.init_source: Path | None = None  # the checkpoint train.init_from loaded weights from
        self.registry, self.device, self.console = registry, env.device, console
        self.sharded = fsdp.is_sharded(cfg.strategy)
        self.threads = apply_threads(cfg.threads, "train.threads")
        self.run_dir = RunDir(out)
        self.lock = lock or RunLock(out, "madkit run")
        self.from_step = from_step
        self._set_aside: list[tuple[list[Path], str]] = []  # checkpoint folders to move away once the folder is ours
        _configure_backends(cfg.deterministic, self.device)
        rng.seed_globals(spec.seed, env.rank)
        self.precision = resolve_precision(cfg.precision, self.device)
        self.plan = batches.BatchPlan.make(cfg.batch, cfg.micro_batch, env.world_size)
        self.versions = collect_versions(registry)
        state = self._build_and_check(registry)
        self._prepare_training(state)
        self.guard = HealthGuard(cfg.health, env, self.run_dir.root, skip_inf_grads=self.precision.name == "fp16")
        self.guard.load_state_dict((state or {}).get("health_guard"))
        if from_step is not None:  # a new attempt from an older state: not judged by what led away from it
            self.guard.forget_recent()
        self.latest_ckpt: Path | None = self.ckpt
        self.latest_samples: Path | None = None
        self.data_stream = self._open_data_stream()

        # inputs are good: only now the run folder
        distributed.decide_on_main(env, self._claim_run_folder)
        sinks = build_sinks(spec.log.sinks, registry, self.run_dir.root, loaded.raw) if env.is_main else []
        self.reporter = Reporter(env.is_main, self.run_dir.metrics, sinks, cfg.steps, self.step, spec.log.progress)
        if self.resume_changes:
            self.reporter.say(f"resuming with changed values: {describe_changes(self.resume_changes)}")
        distributed.barrier(env)

    # ------------------------------------------------------------------ resume
    # ------------------------------------------------------------------ data
    # ------------------------------------------------------------------ loop
    def run(self, stop_after: int | None = None) -> TrainResult:
        cfg, self.stopped_early = self.cfg, False
        end = min(cfg.steps, stop_after) if stop_after else cfg.steps
        record: dict[str, Any] = {}
        try:
            if self.step >= end:
                self.reporter.say(f"{self.run_dir.root}: already trained to step {self.step}; nothing to do")
                self._draw_missing_grid(due=True)  # the last run's final grid
                grid = self.run_dir.sample_grid(self.step)
                self.latest_samples = grid if self.env.is_main and grid.is_file() else None
            else:
                self.reporter.say(self._banner(end))
                due = bool(self.ckpt) and bool(cfg.sample_every) and self.step % cfg.sample_every == 0
                self._draw_missing_grid(due=due)  # the resumed step's grid, due when the checkpoint was saved
                record = self._loop(end)
                self._save_checkpoint()  # before sampling: a kill while sampling loses nothing
                if not self.stopped_early:  # a scheduler's warning leaves no time for a grid
                    self._sample()
        finally:
            self.reporter.close()
        return TrainResult(self.run_dir.root, self.step, self.latest_ckpt, self.latest_samples, record)

    def _draw_missing_grid(self, due: bool) -> None:
        """A kill between a checkpoint and the sample grid of the same step lost that grid: draw it now,
        from the restored EMA weights and the same fixed noise (so it is the grid the run would have
        drawn). Every rank learns the decision from rank 0, since a sharded run samples collectively."""
        if not due:
            return
        grid = self.run_dir.sample_grid(self.step)
        if distributed.decide_on_main(self.env, lambda: not grid.is_file()):
            self.reporter.say(f"making the missing sample grid of step {self.step}")
            self._sample()

    def _banner(self, end: int) -> str:
        n_params = sum(p.numel() for p in self.model.parameters())
        if self.ckpt:
            source = f"resuming from {self.ckpt}"
        else:
            source = f"starting from the weights of {self.init_source}" if self.init_source else "starting fresh"
        return (
            f"{self.spec.name}: {self.model_kind} model, {n_params:,} parameters; {source} at step "
            f"{self.step}, training to step {end} of {self.cfg.steps} | global batch {self.plan.global_batch} = "
            f"{self.env.world_size} rank(s) x {self.plan.accumulation} x {self.plan.micro_batch}"
            f"{f' ({self.cfg.strategy})' if self.sharded else ''} | "
            f"{self.precision.name} on {self.device}, {self.threads}{self.compile_note} | run folder {self.run_dir.root}"
            + (f" | {self.data.note}" if self.data.note else "")
        )

    def _loop(self, end: int) -> dict[str, Any]:
        cfg, data = self.cfg, self.data_stream
        interval: dict[str, torch.Tensor] = {}
        interval_steps, tick, paused, record = 0, time.perf_counter(), 0.0, {}
        lr_scheduler = self.lr_schedule.lr_scheduler(self.optimizer, self.step)
        while self.step < end:
            lr = lr_scheduler.get_last_lr()[0]
            terms = self._forward_backward(data)
            grad_norm = self._clip()
            self.guard.after_step(self.step + 1, terms, grad_norm)  # raises before a bad step is applied
            self.scaler.step(self.optimizer)
            self.scaler.update()
            lr_scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
            if self.ema is not None:
                self.ema.update(self.model)
            self.step += 1
            self.consumed += self.plan.global_batch
            self.reporter.advance()

            for name, value in {**terms, "grad_norm": grad_norm}.items():
                interval[name] = interval.get(name, 0.0) + value.detach().float()
            interval_steps += 1
            if self.step % cfg.log_every == 0 or self.step == end:
                elapsed = time.perf_counter() - tick - paused
                record = self._record(interval, interval_steps, lr, elapsed)
                self.reporter.log(self.step, record)
                self.guard.check_weights(self.step, self.params)
                interval, interval_steps, tick, paused = {}, 0, time.perf_counter(), 0.0
            if stopping.stop_now(lambda ask: distributed.decide_on_main(self.env, ask)):
                self.reporter.say(f"stopping at step {self.step} as the scheduler asked; saving a checkpoint")
                self.stopped_early = True  # run() saves this step
                break
            pause_start = time.perf_counter()  # checkpoints and samples do not count against throughput
            if self.step % cfg.ckpt_every == 0 and self.step != end:
                self._save_checkpoint()
            if cfg.sample_every and self.step % cfg.sample_every == 0 and self.step != end:
                self._sample()
            paused += time.perf_counter() - pause_start
        return record

    def _forward_backward(self, data) -> dict[str, torch.Tensor]:
        """One optimizer step's micro-batches on this rank; returns its mean loss terms (detached)."""
        plan, ddp = self.plan, isinstance(self.loss_module, DistributedDataParallel)
        weight = plan.micro_batch / plan.per_rank  # DDP's mean over ranks completes micro / global
        terms: dict[str, torch.Tensor] = {}
        for k in range(plan.accumulation):
            images, labels = next(data)
            images = images.to(self.device, non_blocking=True)
            labels = labels.to(self.device, non_blocking=True) if self.experiment.num_classes else None
            if self.data.encoded:
                latents = images
            else:
                with torch.no_grad():
                    latents = self.codec.encode(images)
            # example i of the step's global batch draws from (seed, step, i), whichever rank and micro-batch has it
            indices = plan.example_indices(self.env.rank, k)
            generators = rng.indexed_generators(self.spec.seed, "loss", (self.step,), indices, self.device)
            last = k == plan.accumulation - 1
            if self.sharded:
                fsdp.set_gradient_sync(self.model, last)
            sync = contextlib.nullcontext() if (last or not ddp) else self.loss_module.no_sync()
            with sync:
                with self.precision.autocast():
                    out = self.loss_module(latents, labels, generators)
                self.scaler.scale(out["loss"].float() * weight).backward()
            for name, value in out.items():
                terms[name] = terms.get(name, 0.0) + value.detach().float() * weight
        return terms

    def _clip(self) -> torch.Tensor:
        """Unscale (fp16), clip to ``grad_clip`` (0: measure only); the global norm before clipping."""
        self.scaler.unscale_(self.optimizer)
        limit = self.cfg.grad_clip if self.cfg.grad_clip > 0 else math.inf
        return fsdp.full_value(torch.nn.utils.clip_grad_norm_(self.params, limit))

    def _record(self, interval: dict[str, torch.Tensor], steps: int, lr: float, elapsed: float) -> dict[str, Any]:
        names = sorted(interval)
        means = distributed.all_reduce_mean(self.env, torch.stack([interval[n] / steps for n in names]))
        values = dict(zip(names, means.tolist()))
        record: dict[str, Any] = {"loss": values.pop("loss")}
        grad_norm = values.pop("grad_norm")
        record.update({f"loss/{k}": v for k, v in values.items()})
        record.update(
            lr=lr,
            grad_norm=grad_norm,
            images_per_s=steps * self.plan.global_batch / max(elapsed, 1e-9),
            mem_gb=memory_gb(self.device),
        )
        if self.dataset_len:
            record["epoch"] = self.consumed / self.dataset_len
        return record

    # ------------------------------------------------------------------ outputs
    def _sample(self) -> None:
        """Rank 0: a fixed-noise grid from the EMA weights into samples/ and the sinks. In a sharded
        run every rank generates the same images (each block's EMA weights are gathered collectively)."""
        if not (self.env.is_main or self.sharded):
            return
        images = sample_images(
            self.ema.module,
            self.experiment.sampler,
            self.codec,
            num=self.cfg.sample_num,
            seed=self.spec.seed,
            num_classes=self.experiment.num_classes,
            batch=self.plan.micro_batch,
            steps=self.cfg.sample_steps or None,
            autocast=self.precision.autocast,
        )
        if not self.env.is_main:
            return
        path = self.run_dir.sample_grid(self.step)
        grid = save_grid(images, path)
        self.reporter.image(self.step, "samples", grid)
        self.latest_samples = path


def _configure_backends(deterministic: bool, device: torch.device) -> None:
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    elif device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.set_float32_matmul_precision("high")  # TF32 matmuls for whatever runs outside autocast
