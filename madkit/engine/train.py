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
sample grids and checkpoints, under an exclusive lock held for the whole run (madkit.engine.run_lock).

``train.strategy`` chooses how ranks share the model: ``ddp`` (a whole copy each, DDP) or ``fsdp`` /
``hsdp`` (sharded with FSDP2, see fsdp.py; every rank then keeps its slice of the EMA, samples
together with the others and writes its slice of each checkpoint, see sharded_checkpoint.py).

Nothing is written before every input has been checked: a missing dataset, an unreadable first
batch or a checkpoint that does not fit the spec stops the run with the run folder untouched.
Damaged checkpoints are skipped and moved aside (madkit.engine.checkpoint_verify); the health
guard (madkit.engine.health) stops a diverging run before it saves.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import os
import time
from pathlib import Path
from typing import Any

import attrs
import torch
from torch.nn.parallel import DistributedDataParallel

from madkit.build import build_experiment, describe_part
from madkit.engine import batches, checkpoint, checkpoint_verify, distributed, fsdp, rng, sharded_checkpoint
from madkit.engine.console_log import ConsoleLog, console_log
from madkit.engine.ema import EMA
from madkit.engine.health import HealthGuard
from madkit.engine.init_from import initialize_from
from madkit.engine.logs import Reporter, build_sinks, memory_gb
from madkit.engine.model_setup import (
    LossModule,
    compile_blocks,
    compile_cache_dir,
    enable_activation_checkpointing,
    weights_fingerprint,
)
from madkit.engine.optim import (
    LRSchedule,
    build_optimizer,
    check_trained_set,
    keeping_implementation,
    load_optimizer_state,
)
from madkit.engine.precision import resolve_precision
from madkit.engine.resume_changes import check_resume
from madkit.engine.resume_changes import describe as describe_changes
from madkit.engine.run_dir import RunDir, collect_versions
from madkit.engine.run_lock import RunFolderBusyError, RunLock
from madkit.engine.samples import sample_images, save_grid
from madkit.engine.threads import apply_threads
from madkit.engine.train_data import training_data
from madkit.errors import ConfigError, DataError, UserError
from madkit.experiment_spec import LoadedSpec, with_current_defaults


class DivergedRanksError(RuntimeError):
    """DDP ranks hold different weights (a bug: gradients or buffers were not synchronised)."""


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
    checkpoint's (see madkit.engine.resume_changes). ``from_step`` continues from the run folder's
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


class Trainer:
    """One training run on one rank. Construction checks every input, restores a checkpoint when
    resuming and only then prepares the run folder; ``run()`` trains."""

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
        self.threads = apply_threads(cfg.threads)
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

    def _build_and_check(self, registry) -> dict[str, Any] | None:
        """Build the experiment and its data, find the checkpoint to resume; returns its state."""
        spec, env = self.spec, self.env
        self.experiment = build_experiment(spec, registry, device=str(self.device))
        self.model = self.experiment.model
        self.model_kind = registry.kind_of("model", spec.model)
        self.codec = self.experiment.codec.to(self.device)
        # a missing dataset raises here, with its data source's message
        self.data = self._reading_data(
            lambda: training_data(self.experiment, self.codec, self.cfg, env, spec.seed, spec.log.progress)
        )
        self.dataset_len = batches.dataset_length(self.data.dataset)
        ckpt = distributed.decide_on_main(env, self._resume_target)
        self.ckpt = Path(ckpt) if ckpt else None
        if self.ckpt is None:
            return None
        # on the CPU: RNG states must stay there, and the optimizer moves its state to the parameters
        state = checkpoint.load_state(self.ckpt, "cpu")
        # a sharded checkpoint keeps its optimizer state with the weights, not in state.pt
        if "optimizer" not in state and not checkpoint.is_sharded(self.ckpt):
            # e.g. a checkpoint made by `madkit import-reference`
            raise checkpoint.CheckpointError(
                f"{self.ckpt} holds weights but no optimizer state, so training cannot resume from it; "
                "sample, evaluate or export it, start a new run from its weights (train.init_from), "
                "or train into another folder (--out)"
            )
        checkpoint.check_compatible(self.ckpt, self.model, self.loaded.raw, self.loaded.source, state.get("spec", {}))
        stored = with_current_defaults(state.get("spec", {}), registry)
        self.resume_changes = check_resume(self.ckpt, stored, self.loaded.raw, self.loaded.source, self.allow_changes)
        return state

    def _prepare_training(self, state: dict[str, Any] | None) -> None:
        """Weights, EMA, model options, DDP or sharding, optimizer and position; restored from ``state`` if given."""
        cfg, env = self.cfg, self.env
        # a sharded checkpoint is read after sharding, each rank reading only its slices
        from_shards = state is not None and checkpoint.is_sharded(self.ckpt)
        if state is not None and not from_shards:
            checkpoint.load_unwrapped(self.model, checkpoint.load_weights(self.ckpt, False, self.device))
        elif state is None and cfg.init_from:
            self.init_source = initialize_from(
                self.model, cfg.init_from, self.loaded.raw, self.loaded.source, self.device
            )
        self.model.train()
        if self.sharded and env.distributed:  # DDP does this when it wraps; sharding would keep the mix
            fsdp.broadcast_from_rank0(self.model)
        # the EMA copies the model before compilation: a copy would otherwise call the original's graphs;
        # in a sharded run every rank keeps its slice of it
        self.ema = EMA(self.model, cfg.ema_decay, cfg.ema_warmup) if env.is_main or self.sharded else None
        if state is not None and self.ema is not None and not from_shards:
            self.ema.load_state_dict(checkpoint.load_weights(self.ckpt, True, self.device), state["ema"]["updates"])
        if cfg.activation_checkpointing:
            enable_activation_checkpointing(self.model, self.model_kind)
        self.compile_note = ""
        if cfg.compile:
            compile_blocks(self.model)
            # the first step compiles (minutes on a CPU, less on a GPU); later runs load the cache
            self.compile_note = f" | compiling blocks at the first step (cache {compile_cache_dir()})"
        self.loss_module: torch.nn.Module = LossModule(self.model, self.experiment.schedule)
        if self.sharded:
            ema = self.ema.module if self.ema is not None else None
            fsdp.shard_for_training(self.model, ema, cfg, env.world_size, self.device, self.precision.name)
        elif env.distributed:  # DDP broadcasts rank 0's weights: every rank starts identical
            self.loss_module = DistributedDataParallel(
                self.loss_module,
                device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=cfg.ddp_find_unused,
                gradient_as_bucket_view=True,
            )
        self.optimizer = build_optimizer(self.model, cfg)
        self.params = [p for g in self.optimizer.param_groups for p in g["params"]]
        self.lr_schedule = LRSchedule.from_config(cfg)
        self.scaler = self.precision.grad_scaler()
        self.step, self.consumed = 0, 0
        if state is None:
            return
        if from_shards:
            ema = self.ema.module if self.ema is not None else None
            with keeping_implementation(self.optimizer):
                sharded_checkpoint.load(self.ckpt, self.model, ema, self.optimizer, collective=self.sharded)
            if self.ema is not None:
                self.ema.updates = int(state["ema"]["updates"])
        elif self.sharded:
            check_trained_set(self.optimizer, state["optimizer"])
            with keeping_implementation(self.optimizer):
                sharded_checkpoint.load_whole_optimizer(self.model, self.optimizer, state["optimizer"])
        else:
            load_optimizer_state(self.optimizer, state["optimizer"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.step, self.consumed = int(state["step"]), int(state["data"]["consumed"])
        per_rank_rng = state.get("rng") or []
        if env.rank < len(per_rank_rng):  # a run resumed on more ranks seeds the new ones afresh
            rng.restore(per_rank_rng[env.rank])

    # ------------------------------------------------------------------ resume
    def _resume_target(self) -> str | None:
        """The checkpoint to continue from (rank 0 decides; the others are told).

        An existing run folder is locked first, so no other writer changes it from here on."""
        root = self.run_dir.root
        if root.is_dir():
            self.lock.acquire()
        resume = self.cfg.resume
        if resume == "never":
            if (own := checkpoint.latest_checkpoint(root)) is not None:
                raise ConfigError(
                    f"train.resume = 'never', but {root} already holds checkpoints (newest {own}); "
                    "training into it would mix two runs. Use another --out folder, or resume = 'auto'"
                )
            if self.from_step is not None:
                raise ConfigError("--from continues a run folder's checkpoint; it contradicts train.resume = 'never'")
            return None
        if self.from_step is not None:
            return str(self._from_step_target())
        own, damaged = checkpoint_verify.newest_verified(root)
        if damaged:
            checkpoint_verify.warn_skipped(damaged, own)
            self._set_aside.append(([folder for folder, _ in damaged], "damaged"))
        if own is not None or resume == "auto":
            return str(own) if own else None
        return str(checkpoint.resolve_checkpoint(resume))  # an explicit start for a fresh run folder

    def _from_step_target(self) -> Path:
        """``--from STEP``: that checkpoint, verified; every newer one is to be set aside."""
        root, step = self.run_dir.root, self.from_step
        target = root / checkpoint.CHECKPOINTS / checkpoint.step_dir_name(step)
        if not target.is_dir():
            steps = ", ".join(str(s) for s, _ in checkpoint.list_checkpoints(root)) or "none"
            raise ConfigError(f"--from {step}: {root} has no checkpoint of step {step} (its checkpoints: {steps})")
        checkpoint_verify.verify_checkpoint(target)
        newer = [p for p in (root / checkpoint.CHECKPOINTS).iterdir() if p.name.isdigit() and int(p.name) > step]
        self._set_aside.append((sorted(newer), f"after-step-{step}"))
        return target

    def _claim_run_folder(self) -> None:
        """Rank 0, once every input is checked: lock (creating) the run folder, move aside what this run
        will not trust, and write the spec, the versions and the metrics cut back to the resumed step."""
        root = self.run_dir.root
        if not self.lock.held:
            root.mkdir(parents=True, exist_ok=True)
            self.lock.acquire()
            if (appeared := checkpoint.latest_checkpoint(root)) is not None:
                raise RunFolderBusyError(
                    f"another run wrote {appeared} into {root} while this one was starting; nothing was changed; "
                    "run the same command again to continue from it"
                )
        for folders, why in self._set_aside:
            if (moved := checkpoint_verify.set_aside(root, folders, why)) is not None:
                names = ", ".join(p.name for p in folders)
                print(f"madkit: moved checkpoint(s) {names} to {moved}", flush=True)
        self.run_dir.prepare(self.loaded.to_toml(), self.versions, self.step)
        if self.console is not None:
            self.console.attach(self.run_dir.log, " ".join(self.versions["command"]))

    # ------------------------------------------------------------------ data
    def _reading_data(self, read):
        """``read()``, with a failure of the data source (not a madkit bug) reported as a ``DataError``
        that names the [data] kind: exit 2, no traceback."""
        try:
            return read()
        except UserError:
            raise
        except (OSError, ValueError, LookupError, TypeError) as exc:
            what = describe_part(self.registry, "data", self.spec.data)
            raise DataError(f"{what}: cannot read the training data: {type(exc).__name__}: {exc}") from exc

    def _open_data_stream(self):
        """This rank's endless micro-batches, with the first step's read already: a bad image, a broken
        shard or a missing package is reported (by every rank together) before the run folder is touched."""
        stream = batches.micro_batches(
            self.data.dataset,
            self.plan,
            self.env.rank,
            self.consumed,
            self.spec.seed,
            self.cfg.num_workers,
            pin_memory=self.device.type == "cuda",
        )
        if self.step >= self.cfg.steps:
            return stream
        first = distributed.all_ranks_succeed(
            self.env, lambda: self._reading_data(lambda: [next(stream) for _ in range(self.plan.accumulation)])
        )
        return itertools.chain(first, stream)

    # ------------------------------------------------------------------ loop
    def run(self, stop_after: int | None = None) -> TrainResult:
        cfg = self.cfg
        end = min(cfg.steps, stop_after) if stop_after else cfg.steps
        record: dict[str, Any] = {}
        try:
            if self.step >= end:
                self.reporter.say(f"{self.run_dir.root}: already trained to step {self.step}; nothing to do")
                grid = self.run_dir.sample_grid(self.step)
                if self.env.is_main and not grid.is_file():  # a kill while the last run drew it
                    self.reporter.say(f"making the missing sample grid of step {self.step}")
                    self._sample()
                self.latest_samples = grid if self.env.is_main and grid.is_file() else None
            else:
                self.reporter.say(self._banner(end))
                record = self._loop(end)
                self._save_checkpoint()  # before sampling: a kill while sampling loses nothing
                self._sample()
        finally:
            self.reporter.close()
        return TrainResult(self.run_dir.root, self.step, self.latest_ckpt, self.latest_samples, record)

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
        while self.step < end:
            lr = self.lr_schedule.apply(self.optimizer, self.step)
            terms = self._forward_backward(data)
            grad_norm = self._clip()
            self.guard.after_step(self.step + 1, terms, grad_norm)  # raises before a bad step is applied
            self.scaler.step(self.optimizer)
            self.scaler.update()
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
    def _save_checkpoint(self) -> None:
        """Collective: gathers every rank's RNG state and weight fingerprint; rank 0 writes (in a
        sharded run every rank writes its slices)."""
        env = self.env
        rngs = distributed.gather_objects(env, rng.capture())
        prints = None
        if not self.sharded:  # sharded ranks hold different slices by design
            prints = distributed.gather_objects(env, weights_fingerprint(self.model))
            if any(not torch.equal(prints[0], p) for p in prints[1:]):
                raise DivergedRanksError(
                    f"step {self.step}: DDP ranks hold different weights; refusing to checkpoint. "
                    "This is a bug in gradient synchronisation (or a model that updates parameters outside backward)"
                )
        figures, protect = self.guard.before_save(self.step, self.params)  # raises on a state unfit to save
        state = None
        if env.is_main:
            state = {
                "step": self.step,
                "lr_schedule": self.lr_schedule.state_dict(),
                "scaler": self.scaler.state_dict(),
                "data": batches.position(self.consumed, self.dataset_len),
                "rng": rngs,
                "ema": {"updates": self.ema.updates, "decay": self.ema.decay, "warmup": self.ema.warmup},
                "world_size": env.world_size,
                "strategy": self.cfg.strategy,
                "spec": self.loaded.raw,
                "versions": self.versions,
                "health": figures,
                "health_guard": self.guard.state_dict(),
            }
        path = None
        if self.sharded:
            path = str(
                sharded_checkpoint.save(
                    self.run_dir.root,
                    self.step,
                    env,
                    self.model,
                    self.ema.module,
                    self.optimizer,
                    state,
                    self.cfg.keep_ckpts,
                    protect,
                )
            )
        elif env.is_main:
            state.update(optimizer=self.optimizer.state_dict(), rank_fingerprints=prints)
            path = str(
                checkpoint.save_checkpoint(
                    self.run_dir.root,
                    self.step,
                    checkpoint.unwrapped_state_dict(self.model),
                    self.ema.state_dict(),
                    state,
                    self.cfg.keep_ckpts,
                    metadata=self.guard.metadata(figures),
                    protect=protect,
                )
            )
        self.latest_ckpt = Path(distributed.broadcast_object(env, path))
        distributed.barrier(env)

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
