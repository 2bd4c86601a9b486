"""The trainer's construction, before any step: build the experiment and its data, check the
checkpoint to resume against the spec, then restore weights, EMA, wrappers (DDP or FSDP2), optimizer
and position. A sharded run's model is built on the meta device and gets its slices once sharded
(sharded_build.py). Nothing here writes to the run folder (resume.py claims it once every input is good).
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel

from madkit import rng
from madkit.build import build_experiment, describe_part
from madkit.engine import checkpoints, distributed
from madkit.engine.checkpoints import sharded as sharded_checkpoint
from madkit.engine.data import batches
from madkit.engine.data.training_data import training_data
from madkit.engine.distributed import fsdp
from madkit.engine.training import sharded_build
from madkit.engine.training.ema import EMA
from madkit.engine.training.init_from import initialize_from
from madkit.engine.training.model_setup import (
    LossModule,
    compile_blocks,
    compile_cache_dir,
    enable_activation_checkpointing,
)
from madkit.engine.training.optim import (
    LRSchedule,
    build_optimizer,
    check_trained_set,
    keeping_implementation,
    load_optimizer_state,
)
from madkit.engine.training.resume_changes import check_resume
from madkit.errors import DataError, UserError
from madkit.experiment_spec import with_current_defaults

# Sharded runs build the model on the meta device (sharded_build.py). False builds it whole on every
# rank and shards it afterwards, the way it was done before: kept for comparisons (tests, benchmarks).
build_on_meta = True


class TrainerSetup:
    """The part of ``Trainer`` (loop.py) that builds, checks and restores; its attributes are the Trainer's."""

    def _build_and_check(self, registry) -> dict[str, Any] | None:
        """Build the experiment and its data, find the checkpoint to resume; returns its state."""
        spec, env = self.spec, self.env
        self.init_program = None  # set when the model was built on the meta device (sharded runs)
        if self.sharded and build_on_meta:
            self.experiment, self.init_program = sharded_build.build(spec, registry, self.device, env.is_main)
        else:
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
        state = checkpoints.load_state(self.ckpt, "cpu")
        # a sharded checkpoint keeps its optimizer state with the weights, not in state.pt
        if "optimizer" not in state and not checkpoints.is_sharded(self.ckpt):
            # e.g. a checkpoint made by `madkit import-reference`
            raise checkpoints.CheckpointError(
                f"{self.ckpt} holds weights but no optimizer state, so training cannot resume from it; "
                "sample, evaluate or export it, start a new run from its weights (train.init_from), "
                "or train into another folder (--out)"
            )
        checkpoints.check_compatible(self.ckpt, self.model, self.loaded.raw, self.loaded.source, state.get("spec", {}))
        stored = with_current_defaults(state.get("spec", {}), registry)
        self.resume_changes = check_resume(self.ckpt, stored, self.loaded.raw, self.loaded.source, self.allow_changes)
        return state

    def _prepare_training(self, state: dict[str, Any] | None) -> None:
        """Weights, EMA, model options, DDP or sharding, optimizer and position; restored from ``state`` if given."""
        cfg, env = self.cfg, self.env
        # a sharded checkpoint is read after sharding, each rank reading only its slices
        from_shards = state is not None and checkpoints.is_sharded(self.ckpt)
        if self.init_program is None:  # built whole: its weights now
            self._whole_weights(state, from_shards)
        else:  # on the meta device: the EMA is a meta copy, and both get their slices once sharded
            self.model.train()
            self.ema = EMA(self.model, cfg.ema_decay, cfg.ema_warmup)
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
            if self.init_program is not None:
                self.init_source = sharded_build.materialise(self, state, from_shards)
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

    def _whole_weights(self, state: dict[str, Any] | None, from_shards: bool) -> None:
        """The weights of a model built whole (restored or loaded when asked), and its EMA copy."""
        cfg, env = self.cfg, self.env
        if state is not None and not from_shards:
            checkpoints.load_unwrapped(self.model, checkpoints.load_weights(self.ckpt, False, self.device))
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
            self.ema.load_state_dict(checkpoints.load_weights(self.ckpt, True, self.device), state["ema"]["updates"])

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
