"""``train.init_from``: start a fresh run from another run's weights, and nothing else.

Unlike resuming (``train.resume``), which restores the optimizer, the step, the schedules and the
random state, this only loads weights: the new run starts at step 0 with a fresh optimizer and its
own spec (another learning rate, dataset or step count, for fine-tuning). The weights are the
source's EMA weights, the ones sampling uses; the new run's EMA starts from them too. A run folder
that already holds checkpoints resumes from them instead, so rerunning a fine-tuning command continues it.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from madkit.engine import checkpoint


def initialize_from(model: nn.Module, source: str, spec_raw: dict, spec_source: str, device: torch.device) -> Path:
    """Load ``source``'s EMA weights (a run folder or a checkpoint folder) into ``model``; returns the
    checkpoint used. Shapes must match the model the current spec builds (``IncompatibleCheckpointError``)."""
    ckpt = checkpoint.resolve_checkpoint(source)
    stored = checkpoint.load_state(ckpt).get("spec", {})
    checkpoint.check_compatible(ckpt, model, spec_raw, spec_source, stored)
    checkpoint.load_unwrapped(model, checkpoint.load_weights(ckpt, True, device))
    return ckpt
