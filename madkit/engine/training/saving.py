"""Saving a training checkpoint: every rank's RNG state and weight fingerprint gathered, the health
guard's last word, then rank 0 writes a whole checkpoint (or every rank its slices, when sharded).
"""

from __future__ import annotations

from pathlib import Path

import torch

from madkit import rng
from madkit.engine import checkpoints, distributed
from madkit.engine.checkpoints import sharded as sharded_checkpoint
from madkit.engine.data import batches
from madkit.engine.training.model_setup import weights_fingerprint


class DivergedRanksError(RuntimeError):
    """DDP ranks hold different weights (a bug: gradients or buffers were not synchronised)."""


class CheckpointSaving:
    """The part of ``Trainer`` (loop.py) that writes checkpoints."""

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
                checkpoints.save_checkpoint(
                    self.run_dir.root,
                    self.step,
                    checkpoints.unwrapped_state_dict(self.model),
                    self.ema.state_dict(),
                    state,
                    self.cfg.keep_ckpts,
                    metadata=self.guard.metadata(figures),
                    protect=protect,
                )
            )
        self.latest_ckpt = Path(distributed.broadcast_object(env, path))
        distributed.barrier(env)
