"""The training loop: ``train(loaded_spec, registry, out) -> TrainResult``.

One optimizer step, on every rank:

    for each of this rank's micro-batches (B / world / micro of them):
        encode images -> latents; loss = model.loss(...) under autocast
        backward(loss * micro / (B / world))      # DDP averages over ranks: the global mean
        (DDP all-reduces only on the last micro-batch: no_sync on the others)
    unscale (fp16), clip the global grad norm, stop on a non-finite loss, AdamW step, EMA update

Everything a step draws comes from generators seeded by (seed, purpose, rank, step, micro) and the
data order is a function of (seed, images consumed), so a resumed run repeats exactly what an
uninterrupted run does. Rank 0 owns the run folder: metrics, sinks, sample grids and checkpoints.

``train.strategy`` chooses how ranks share the model: ``ddp`` (a whole copy each, DDP) or ``fsdp`` /
``hsdp`` (sharded with FSDP2, see fsdp.py; every rank then keeps its slice of the EMA, samples
together with the others and writes its slice of each checkpoint, see sharded_checkpoint.py).

Nothing is written before every input has been checked: a missing dataset or a checkpoint that
does not fit the spec stops the run with the run folder untouched.
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

from madkit.build import build_experiment
from madkit.engine import batches, checkpoint, distributed, fsdp, rng, sharded_checkpoint
from madkit.engine.console_log import ConsoleLog, console_log
from madkit.engine.ema import EMA
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
from madkit.engine.samples import sample_images, save_grid
from madkit.engine.threads import apply_threads
from madkit.engine.train_data import training_data
from madkit.experiment_spec import LoadedSpec, with_current_defaults


class NonFiniteLossError(RuntimeError):
    """The loss or the gradient norm became NaN/inf; the step was not applied."""


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
    loaded: LoadedSpec, registry, out: str | Path, stop_after: int | None = None, allow_changes: bool = False
) -> TrainResult:
    """Train the experiment ``loaded`` describes into the run folder ``out``.

    ``stop_after`` ends this invocation after that many optimizer steps in total (saving a
    checkpoint) while schedules still span ``train.steps``: for time-limited jobs that resume.
    ``allow_changes`` lets a resumed run continue with a spec whose training values differ from its
    checkpoint's (see madkit.engine.resume_changes). Under torchrun every rank calls this; rank 0 writes.
    """
    env = distributed.setup(loaded.spec.train.device, group_when_alone=fsdp.is_sharded(loaded.spec.train.strategy))
    try:
        with console_log(env.is_main) as console:
            return Trainer(loaded, registry, Path(out), env, allow_changes, console).run(stop_after)
    finally:
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
    ):
        spec, cfg = loaded.spec, loaded.spec.train
        self.loaded, self.spec, self.cfg, self.env = loaded, spec, cfg, env
        self.allow_changes, self.resume_changes = allow_changes, []
        self.init_source: Path | None = None  # the checkpoint train.init_from loaded weights from
        self.device = env.device
        self.sharded = fsdp.is_sharded(cfg.strategy)
        self.threads = apply_threads(cfg.threads)
        self.run_dir = RunDir(out)
        _configure_backends(cfg.deterministic, self.device)
        rng.seed_globals(spec.seed, env.rank)
        self.precision = resolve_precision(cfg.precision, self.device)
        self.plan = batches.BatchPlan.make(cfg.batch, cfg.micro_batch, env.world_size)
        self.versions = collect_versions(registry)
        state = self._build_and_check(registry)
        self._prepare_training(state)
        self.latest_ckpt: Path | None = self.ckpt
        self.latest_samples: Path | None = None

        # inputs are good: only now the run folder
        if env.is_main:
            self.run_dir.prepare(loaded.to_toml(), self.versions, self.step)
            if console is not None:
                console.attach(self.run_dir.log, " ".join(self.versions["command"]))
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
        self.data = training_data(self.experiment, self.codec, self.cfg, env, spec.seed, spec.log.progress)
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
        """The checkpoint to continue from (rank 0 decides; the others are told)."""
        own = checkpoint.latest_checkpoint(self.run_dir.root)
        resume = self.cfg.resume
        if resume == "never":
            if own is not None:
                raise ValueError(
                    f"train.resume = 'never', but {self.run_dir.root} already holds checkpoints (newest {own}); "
                    "training into it would mix two runs. Use another --out folder, or resume = 'auto'"
                )
            return None
        if own is not None or resume == "auto":
            return str(own) if own else None
        return str(checkpoint.resolve_checkpoint(resume))  # an explicit start for a fresh run folder

    # ------------------------------------------------------------------ loop
    def run(self, stop_after: int | None = None) -> TrainResult:
        cfg = self.cfg
        end = min(cfg.steps, stop_after) if stop_after else cfg.steps
        record: dict[str, Any] = {}
        try:
            if self.step >= end:
                self.reporter.say(f"{self.run_dir.root}: already trained to step {self.step}; nothing to do")
                grid = self.run_dir.sample_grid(self.step)
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
        cfg = self.cfg
        data = batches.micro_batches(
            self.data.dataset,
            self.plan,
            self.env.rank,
            self.consumed,
            self.spec.seed,
            cfg.num_workers,
            pin_memory=self.device.type == "cuda",
        )
        interval: dict[str, torch.Tensor] = {}
        interval_steps, tick, paused, record = 0, time.perf_counter(), 0.0, {}
        while self.step < end:
            lr = self.lr_schedule.apply(self.optimizer, self.step)
            terms = self._forward_backward(data)
            grad_norm = self._clip()
            self._stop_if_non_finite(terms, grad_norm)
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
            generator = rng.generator(self.spec.seed, "loss", self.env.rank, self.step, k, device=self.device)
            last = k == plan.accumulation - 1
            if self.sharded:
                fsdp.set_gradient_sync(self.model, last)
            sync = contextlib.nullcontext() if (last or not ddp) else self.loss_module.no_sync()
            with sync:
                with self.precision.autocast():
                    out = self.loss_module(latents, labels, generator)
                self.scaler.scale(out["loss"].float() * weight).backward()
            for name, value in out.items():
                terms[name] = terms.get(name, 0.0) + value.detach().float() * weight
        return terms

    def _clip(self) -> torch.Tensor:
        """Unscale (fp16), clip to ``grad_clip`` (0: measure only); the global norm before clipping."""
        self.scaler.unscale_(self.optimizer)
        limit = self.cfg.grad_clip if self.cfg.grad_clip > 0 else math.inf
        return fsdp.full_value(torch.nn.utils.clip_grad_norm_(self.params, limit))

    def _stop_if_non_finite(self, terms: dict[str, torch.Tensor], grad_norm: torch.Tensor) -> None:
        bad = ~torch.isfinite(terms["loss"])
        if self.precision.name != "fp16":  # with fp16 the scaler skips inf-gradient steps by design
            bad = bad | ~torch.isfinite(grad_norm)
        flag = bad.float().reshape(1)
        if self.env.distributed:  # every rank must stop together, or the others hang in a collective
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        if flag.item() == 0:
            return
        values = ", ".join(f"{k}={v.item():.6g}" for k, v in terms.items())
        last = checkpoint.latest_checkpoint(self.run_dir.root)
        kept = f"the last good checkpoint is {last}" if last else "no checkpoint had been written yet"
        raise NonFiniteLossError(
            f"step {self.step + 1}: non-finite loss on rank {self.env.rank} ({values}; grad norm "
            f"{grad_norm.item():.6g}); the step was not applied and {kept}. Try a lower train.lr, "
            "train.precision = 'fp32', or check the data"
        )

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
